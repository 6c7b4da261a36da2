"""Fresh-user review, second pass: numbers out of range and unusable paths are one
``puts-jax: error: --flag: ...`` line (exit status 2) before any work, never a traceback, a
numpy warning or a file written: --seed beyond 32 bits or negative, simulate sizes that would
not fit in memory, an empty path, an output folder that takes no files (checked before the
sweep computes anything), a corrupt truth.npz, ``data obd --grid-steps`` and every number of
``plan``."""

import errno
import os
import re
import shutil
import warnings

import numpy as np
import pytest

from puts_jax import cli, cli_checks, planning, sweep_job
from puts_jax.checks import InputError
from puts_jax.data import obd
from puts_jax.data import simulator as sim
from conftest import cli_error as _err, no_work as _no_work, snapshot, tiny_cli_world


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny simulated world, an untrained model and its 3-point frontier."""
    d = tmp_path_factory.mktemp("cli_bounds")
    tiny_cli_world(d, halves=False)
    return d




def _sweep_args(d, out, *extra):
    return ["sweep", "--model", str(d / "model"), "--logs", str(d / "data" / "evaluation.parquet"),
            "--out", str(out), "--n-lambdas", "3", "--bootstrap", "0", "--no-halves", *extra]


# ----------------------------------------------------------------------------- --seed

TOO_BIG = "must be <= 4294967295 (the 32 bits of a JAX key; one range for every command's --seed)"


@pytest.mark.parametrize("seed, msg", [(str(2**70), f"{TOO_BIG}, got {2**70}"),
                                       (str(2**32), f"{TOO_BIG}, got {2**32}"),
                                       ("-1", "must be >= 0, got -1")])
@pytest.mark.parametrize("cmd", ["simulate", "sweep"])
def test_a_seed_out_of_range_is_named_before_any_work(run, capsys, monkeypatch, tmp_path, cmd,
                                                      seed, msg):
    _no_work(monkeypatch, sweep_job, "run_sweep")
    _no_work(monkeypatch, sim, "write_simulation")
    out = tmp_path / "out"
    args = (["simulate", "--preset", "tiny", "--out", str(out)] if cmd == "simulate"
            else _sweep_args(run, out))
    assert cli.main([*args, "--seed", seed]) == 2
    assert _err(capsys) == f"--seed: {msg}"
    assert not out.exists()


def test_the_sweep_library_refuses_a_seed_a_jax_key_would_truncate(run):
    # jax.random.key(2**32) draws what key(0) draws (x64 off); 2**70 raised OverflowError late
    for seed, msg in ((2**32, f"<= 4294967295 (the 32 bits of a JAX key), got {2**32}"),
                      (-1, ">= 0, got -1")):
        with pytest.raises(InputError, match=f"^{re.escape(f'seed: must be {msg}')}$"):
            sweep_job.run_sweep(str(run / "model"), str(run / "data" / "evaluation.parquet"),
                                str(run / "nope"), n_lambdas=3, bootstrap=10, seed=seed)
    assert not (run / "nope").exists()


# ----------------------------------------------------------------------------- simulate sizes

def test_a_simulate_size_that_cannot_fit_in_memory_is_refused_with_the_bound(capsys, tmp_path):
    out = tmp_path / "sim"
    assert cli.main(["simulate", "--preset", "tiny", "--out", str(out), "--n-logs",
                     str(10**15)]) == 2
    per = sim.row_bytes(sim.SimConfig.tiny())["n_logs"]
    most = sim.MAX_FILE_BYTES // per
    assert (per, most) == (220, 156_180_628)  # 5 x (4 D + 28) bytes, D = 4
    assert _err(capsys) == (f"--n-logs: at most {most:,} rows with this preset, got "
                            f"1,000,000,000,000,000 (a file is built in memory before it is "
                            f"written, about 220 bytes a row: 2.05e+08 GiB, over the 32 GiB a "
                            f"file may take; nothing written)")
    assert cli.main(["simulate", "--out", str(out), "--n-requests", "6000000"]) == 2
    assert _err(capsys).startswith("--n-requests: at most 5,402,474 rows with this preset, got "
                                   "6,000,000 (a file is built in memory before it is written, "
                                   "about 6,360 bytes a row: 35.5 GiB")
    assert not out.exists()
    with pytest.raises(InputError, match=r"^n_eval: at most 57,266,230 rows"):
        sim.write_simulation(str(out), sim.SimConfig.tiny(), 10, 10, 57_266_231, 10, 0)
    sizes = sim.row_bytes(sim.SimConfig.default(), slate_matching=True)
    assert sizes["n_logs"] == 5 * (4 * 16 + 28 + 36 + 4 * 50 * 4)  # + consistent[A] + preds


# ----------------------------------------------------------------------------- empty paths

def _empty_path_commands(d):
    model, ev = str(d / "model"), str(d / "data" / "evaluation.parquet")
    frontier = str(d / "frontier" / "frontier.json")
    return {
        "simulate": (["simulate", "--preset", "tiny", "--out", ""], "--out"),
        "sweep": (["sweep", "--model", model, "--logs", ev, "--out", ""], "--out"),
        "report": (["report", "--frontier", frontier, "--out", ""], "--out"),
        "score": (["score", "--policy", str(d / "reg"), "--requests",
                   str(d / "data" / "requests.parquet"), "--out", ""], "--out"),
        "data obd": (["data", "obd", "--out", ""], "--out"),
        "data split": (["data", "split", "--logs", ev, "--out-a", "", "--out-b",
                        str(d / "b.parquet")], "--out-a"),
        "sweep --logs": (["sweep", "--model", model, "--logs", "", "--out", "x"], "--logs"),
        "policy publish": (["policy", "publish", "--registry", "", "--model", model,
                            "--frontier", frontier, "--logs", ev, "--point", "0", "--reason",
                            "x"], "--registry"),
    }


@pytest.mark.parametrize("cmd", ["simulate", "sweep", "report", "score", "data obd",
                                 "data split", "sweep --logs", "policy publish"])
def test_an_empty_path_is_named_and_nothing_is_written_in_the_working_folder(
        run, capsys, monkeypatch, tmp_path, cmd):
    monkeypatch.chdir(tmp_path)  # "" once read as the working folder
    before = snapshot(run)
    args, flag = _empty_path_commands(run)[cmd]
    assert cli.main(args) == 2
    assert _err(capsys) == f"{flag}: an empty path (nothing written)"
    assert os.listdir(tmp_path) == [] and snapshot(run) == before


# ----------------------------------------------------------------------------- unwritable --out

def _read_only(monkeypatch):
    """Emulate a read-only file system for the output checks (root writes anywhere else)."""
    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(cli_checks.tempfile, "mkstemp", refuse)


@pytest.mark.parametrize("sub", ["", "new/sub"])
def test_a_sweep_into_a_read_only_out_fails_before_any_work(run, capsys, monkeypatch, sub):
    out = run / "frontier" / sub if sub else run / "frontier"
    before = snapshot(run / "frontier")
    _no_work(monkeypatch, sweep_job, "run_sweep")
    _read_only(monkeypatch)
    assert cli.main(_sweep_args(run, out)) == 2
    assert _err(capsys) == (f"--out: cannot create a file in {out} (Read-only file system); "
                            "nothing written")
    assert snapshot(run / "frontier") == before


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
@pytest.mark.parametrize("cmd", ["sweep", "simulate"])
def test_an_out_in_proc_is_named_before_any_work(run, capsys, monkeypatch, cmd):
    _no_work(monkeypatch, sweep_job, "run_sweep")
    _no_work(monkeypatch, sim, "write_simulation")
    args = (_sweep_args(run, "/proc/puts_frontier") if cmd == "sweep"
            else ["simulate", "--preset", "tiny", "--out", "/proc/puts_sim"])
    assert cli.main(args) == 2
    err = _err(capsys)
    assert err.startswith(f"--out: cannot create a file in /proc/puts_") and "nothing written" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_sweep_into_a_folder_without_write_permission_fails_before_any_work(
        run, capsys, monkeypatch, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    _no_work(monkeypatch, sweep_job, "run_sweep")
    try:
        assert cli.main(_sweep_args(run, out)) == 2
        assert _err(capsys) == (f"--out: cannot create a file in {out} (Permission denied); "
                                "nothing written")
        assert os.listdir(out) == []
    finally:
        out.chmod(0o755)


# ----------------------------------------------------------------------------- truth.npz

def _truth_data(run, tmp_path, content: bytes | None = None, drop: str | None = None):
    """A copy of the simulator output whose truth.npz holds ``content`` or lacks ``drop``."""
    data = tmp_path / "data"
    shutil.copytree(run / "data", data)
    if content is not None:
        (data / "truth.npz").write_bytes(content)
    if drop is not None:
        with np.load(run / "data" / "truth.npz") as z:
            arrays = {k: z[k] for k in z.files if k != drop}
        with open(data / "truth.npz", "wb") as f:
            np.savez(f, **arrays)
    return data


@pytest.mark.parametrize("case, why", [
    ("text", "not a zip archive, as every .npz is)"),
    ("truncated", "not a zip archive, as every .npz is)"),  # its central directory is gone
    ("bad entry", "BadZipFile: "),
    ("no value_bayes", "no value_bayes"),
])
def test_a_corrupt_truth_file_names_data(run, capsys, tmp_path, case, why):
    whole = (run / "data" / "truth.npz").read_bytes()
    at = whole.index(b"true_values.npy") + 200  # inside that array's compressed bytes
    content = {"text": b"not a truth file\n", "truncated": whole[:len(whole) // 2],
               "bad entry": whole[:at] + bytes(64) + whole[at + 64:]}.get(case)
    data = _truth_data(run, tmp_path, content, drop="value_bayes" if content is None else None)
    before = snapshot(data)
    assert cli.main(["truth", "--data", str(data), "--model", str(run / "model"),
                     "--frontier", str(run / "frontier" / "frontier.json")]) == 2
    err = _err(capsys)
    assert err.startswith(f"--data: {data / 'truth.npz'} is not a readable truth file of "
                          f"simulate ({why}"), err
    assert err.endswith(f"; 'puts-jax simulate --out {data}' writes a new data set")
    assert snapshot(data) == before


# ----------------------------------------------------------------------------- data obd

@pytest.mark.parametrize("steps", ["0", "-3", "15", "100000"])
def test_obd_grid_steps_is_bounded_before_reading_anything(capsys, monkeypatch, tmp_path, steps):
    _no_work(monkeypatch, obd, "read_obd")
    assert cli.main(["data", "obd", "--out", str(tmp_path / "obd"), "--grid-steps", steps]) == 2
    assert _err(capsys) == (f"--grid-steps: must be in [1, 14] (the grid has (steps + 1)(steps "
                            f"+ 2)/2 actions: 14 gives 120), got {steps}")
    assert not (tmp_path / "obd").exists()
    obd.check_grid_steps(14)  # the bound itself is accepted: 120 actions <= the unrolled 128


# ----------------------------------------------------------------------------- plan

PLAN = ["plan", "--actions", "36", "--share", "0.05", "--requests-per-day", "2e6",
        "--base-rate", "0.4"]


@pytest.mark.parametrize("flag, value, msg", [
    ("--requests-per-day", "inf", "must be > 0 and at most 1e+11, got inf"),
    ("--requests-per-day", "nan", "must be > 0 and at most 1e+11, got nan"),
    ("--requests-per-day", "1e300", "must be > 0 and at most 1e+11, got 1e+300"),
    ("--share", "nan", "exploration share must be in (0, 1], got nan"),
    ("--share", "inf", "exploration share must be in (0, 1], got inf"),
    ("--base-rate", "nan", "a binary reward rate must be in (0, 1), got nan"),
    ("--days", "1,inf", "every day count must be > 0 and at most 36,500 (100 years), got [inf]"),
    ("--days", "nan", "every day count must be > 0 and at most 36,500 (100 years), got [nan]"),
    ("--max-days", "inf", "must be > 0 and at most 36,500 (100 years), got inf"),
    ("--max-days", "1e9", "must be > 0 and at most 36,500 (100 years), got 1000000000.0"),
    ("--actions", str(10**30), f"must be an integer in [2, 1,000,000] (uniform exploration over "
                               f"more actions matches a point on under one logged row in a "
                               f"million), got {10**30}"),
    ("--agreement", "nan", "must be in [0, 1), got nan"),
    ("--alpha", "nan", "must be in (0, 1), at least 1e-12 from either end, got nan"),
    ("--alpha", "1e-300", "must be in (0, 1), at least 1e-12 from either end, got 1e-300"),
    ("--power", "1", "must be in (0, 1), at least 1e-12 from either end, got 1.0"),
    ("--reward-var", "inf", "must be finite, >= 0 and at most 1e+18 (rescale the reward), got "
                            "inf"),
    ("--lift", "0", "must be a relative lift in (0, 1e+06], e.g. 0.03 for +3%, got 0.0"),
    ("--lift", "-0.1", "must be a relative lift in (0, 1e+06], e.g. 0.03 for +3%, got -0.1"),
    ("--lift", "nan", "must be a relative lift in (0, 1e+06], e.g. 0.03 for +3%, got nan"),
    ("--lift", "1e308", "must be a relative lift in (0, 1e+06], e.g. 0.03 for +3%, got 1e+308"),
])
def test_every_plan_number_is_checked_and_named(capsys, flag, value, msg):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main([*PLAN, flag, value]) == 2
    assert _err(capsys) == f"{flag}: {msg}"
    assert caught == []  # no numpy RuntimeWarning (--lift 0 divided by zero)
    assert capsys.readouterr().out == ""


def test_plan_numbers_of_a_real_valued_reward(capsys):
    real = ["plan", "--actions", "36", "--share", "0.05", "--requests-per-day", "2e6",
            "--reward-var", "1"]
    assert cli.main([*real, "--base-rate", "1e300"]) == 2
    assert _err(capsys) == ("--base-rate: must be finite and at most 1e+09 in size (rescale the "
                            "reward), got 1e+300")
    assert cli.main([*real, "--base-rate", "-2", "--lift", "0.1"]) == 2
    assert _err(capsys) == "--lift: is relative to --base-rate, which must then be > 0, got -2.0"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main([*real, "--base-rate", "1e9", "--reward-var", "1e18",
                         "--actions", str(10**6), "--days", "36500", "--lift", "1e6"]) == 0
    assert caught == [] and "lift" in capsys.readouterr().out


def test_the_plan_bounds_themselves_are_accepted(capsys):
    p = planning.plan(planning.MAX_ACTIONS, 1.0, planning.MAX_REQUESTS_PER_DAY, 0.5,
                      [planning.MAX_DAYS], alpha=planning.MIN_TAIL, power=1 - planning.MIN_TAIL)
    assert np.isfinite(p.hw_ips).all() and p.rows[0] == 3.65e15 < 2.0 ** 53
    assert cli.main([*PLAN, "--lift", "0.03", "--max-days", "36500"]) == 0
    out = capsys.readouterr().out
    assert "36500" in out and "a +3% lift" in out


@pytest.mark.parametrize("flag", ["--frontier", "--logs"])
def test_a_half_moved_set_that_cannot_be_settled_is_named(tmp_path, monkeypatch, flag):
    """A read-only folder holding a set a kill left half moved: the reader refuses, naming the
    flag and the folder, instead of reading a possibly mixed set."""
    from puts_jax import report
    from puts_jax.data import logs

    def read_only(folder):
        raise PermissionError(13, "Permission denied", folder)
    (tmp_path / logs.SPLIT_STAGING).mkdir()
    path = str(tmp_path / "x")
    with pytest.raises(cli_checks.UsageError) as e:
        if flag == "--frontier":
            monkeypatch.setattr(report, "recover_frontier", read_only)
            cli_checks.read_frontier(path)
        else:
            monkeypatch.setattr(logs, "recover_split", read_only)
            cli_checks.settle_split(path)
    what, redo = (("a killed sweep left the frontier set", "re-run the sweep")
                  if flag == "--frontier" else
                  ("a killed 'data split' left its pair", "re-run the split"))
    assert str(e.value) == (f"{flag}: {what} in {tmp_path} half moved and it could not be "
                            f"settled ([Errno 13] Permission denied: '{tmp_path}'); run the "
                            f"command again where that folder is writable, or {redo}")
