"""Fresh-user review, fourth pass: each finding as a value test (exit status, the exact line,
nothing written). A full disk (or a read-only file system, no permission) while a command
writes its output is one line naming the output's flag and path, with nothing of the output left
behind; a model folder whose parameters do not fit its spec.json (or a registry version's) is
one line naming --model (--policy) and the shapes; a file of another context width than the
model's says both widths once instead of listing every row; SIGTERM ends ``simulate`` (any
command) as Ctrl-C does, its staging folder removed (exit 143); the console script shows no
library (orbax/absl) logs before a one-line error; a value that starts like a negative number
(``--lam -0.5,1.5``) reaches the command's own check instead of argparse's "expected one
argument"."""

import errno
import json
import importlib.util
import os
import shutil
import signal
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from puts_jax import cli, cli_checks, report
from puts_jax.cli_checks import ArgumentParser
from puts_jax.data import obd
from puts_jax.data import simulator as sim
from conftest import cli_error, snapshot, tiny_cli_world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny world (data, an untrained model, a 3-point frontier) and a registry with v0001."""
    d = tmp_path_factory.mktemp("review4")
    tiny_cli_world(d, halves=False)
    assert cli.main(["policy", "publish", "--registry", str(d / "reg"), "--model",
                     str(d / "model"), "--frontier", str(d / "frontier" / "frontier.json"),
                     "--logs", str(d / "data" / "logs.parquet"), "--point", "0",
                     "--reason", "test"]) == 0
    return d


# ----------------------------------------------------------------------------- 5. negative values

@pytest.mark.parametrize("argv, msg", [
    (["policy", "set-lambda", "--registry", "{reg}", "--lam", "-0.5,1.5", "--reason", "x"],
     "--lam: coefficients must be non-negative; index 0 (-0.5)"),
    (["plan", "--actions", "4", "--share", "0.1", "--requests-per-day", "1000", "--base-rate",
      "0.1", "--days", "-1,7"],
     "--days: every day count must be > 0 and at most 36,500 (100 years), got [-1.0]"),
    (["plan", "--actions", "4", "--share", "-1e-3", "--requests-per-day", "1000", "--base-rate",
      "0.1"], "--share: exploration share must be in (0, 1], got -0.001"),
    (["simulate", "--out", "{tmp}/sim", "--miscalibration", "-inf"],
     "--miscalibration: must be finite and >= 0, got -inf"),
    (["simulate", "--out", "{tmp}/sim", "--miscalibration", "-.5"],
     "--miscalibration: must be finite and >= 0, got -0.5"),
])
def test_a_value_starting_with_minus_reaches_the_flags_own_check(run, tmp_path, capsys, argv,
                                                                  msg):
    before = sorted(os.listdir(run / "reg"))
    capsys.readouterr()
    assert cli.main([a.format(reg=run / "reg", tmp=tmp_path) for a in argv]) == 2
    assert cli_error(capsys) == msg
    assert not (tmp_path / "sim").exists() and sorted(os.listdir(run / "reg")) == before


def test_an_option_after_an_option_is_still_a_missing_value(capsys):
    p = ArgumentParser(prog="p")
    p.add_argument("--lam")
    p.add_argument("--x", action="store_true")
    assert p.parse_args(["--lam", "-0.5,1.5"]).lam == "-0.5,1.5"
    assert p.parse_args(["--lam", "-inf"]).lam == "-inf"
    with pytest.raises(SystemExit):
        p.parse_args(["--lam", "--x"])
    assert "argument --lam: expected one argument" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 1. a full disk

def _full_disk(monkeypatch, target, name, code=errno.ENOSPC, filename=None):
    """``target.name`` raises OSError(code) as a full disk (read-only file system, ...) does."""
    def fail(*a, **k):
        raise OSError(code, os.strerror(code), *([filename] if filename else []))
    monkeypatch.setattr(target, name, fail)


def _score(run, out):
    return cli.main(["score", "--policy", str(run / "reg"), "--requests",
                     str(run / "data" / "requests.parquet"), "--out", str(out)])


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_score_on_a_full_disk_names_out_and_keeps_the_old_file(run, tmp_path, capsys,
                                                               monkeypatch, code):
    out = tmp_path / "scored.parquet"
    out.write_bytes(b"old scores")
    _full_disk(monkeypatch, pq.ParquetWriter, "write_table", code)  # Arrow: no file named
    capsys.readouterr()
    assert _score(run, out) == 2
    assert cli_error(capsys) == f"--out: cannot write {out} ({os.strerror(code)}); nothing written"
    assert snapshot(tmp_path) == {"scored.parquet": b"old scores"}  # no temp file left


def test_sweep_on_a_full_disk_names_out_and_keeps_the_old_frontier(run, tmp_path, capsys,
                                                                   monkeypatch):
    out = tmp_path / "frontier"
    shutil.copytree(run / "frontier", out)
    before = snapshot(out)
    stage = os.path.join(str(out), ".frontier-staging", "frontier.json")
    _full_disk(monkeypatch, report, "atomic_write_bytes", filename=stage)
    capsys.readouterr()
    assert cli.main(["sweep", "--model", str(run / "model"), "--logs",
                     str(run / "data" / "evaluation.parquet"), "--out", str(out),
                     "--n-lambdas", "3", "--bootstrap", "0", "--no-halves"]) == 2
    assert cli_error(capsys) == (f"--out: cannot write {out} (No space left on device); "
                                 "nothing written")
    assert snapshot(out) == before


SIM = ["--preset", "tiny", "--n-logs", "300", "--n-heldout", "100", "--n-evaluation", "200",
       "--n-eval", "50", "--n-requests", "20"]


def test_simulate_on_a_full_disk_names_out_and_leaves_no_folder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "new" / "sim"
    _full_disk(monkeypatch, sim.logs, "write_requests")  # after two logs were written
    assert cli.main(["simulate", "--out", str(out), *SIM]) == 2
    assert cli_error(capsys) == (f"--out: cannot write {out} (No space left on device); "
                                 "nothing written")
    assert os.listdir(tmp_path) == []  # the staging folder and the folders made are gone


def test_data_obd_writes_its_three_files_as_one_set(tmp_path, capsys, monkeypatch):
    if importlib.util.find_spec("obp") is None:  # its sample is read, never imported
        pytest.skip("the obp package (the Open Bandit Dataset sample) is not installed")
    out = tmp_path / "obd"
    out.mkdir()
    (out / "logs.parquet").write_bytes(b"old log")
    _full_disk(monkeypatch, obd.logs, "write_requests")  # after the new log was written
    assert cli.main(["data", "obd", "--out", str(out)]) == 2
    assert cli_error(capsys) == (f"--out: cannot write {out} (No space left on device); "
                                 "nothing written")
    assert snapshot(out) == {"logs.parquet": b"old log"}  # not the new log beside no requests


def test_data_split_on_a_full_disk_names_both_outputs(run, tmp_path, capsys, monkeypatch):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    _full_disk(monkeypatch, pq, "write_table")
    assert cli.main(["data", "split", "--logs", str(run / "data" / "logs.parquet"),
                     "--out-a", str(a), "--out-b", str(b)]) == 2
    assert cli_error(capsys) == (f"--out-a / --out-b: cannot write {a} / {b} (No space left on "
                                 "device); nothing written")
    assert os.listdir(tmp_path) == []


def test_an_error_on_a_file_that_is_no_output_is_not_blamed_on_out(run, tmp_path, capsys,
                                                                   monkeypatch):
    elsewhere = str(tmp_path / "cache" / "x")
    _full_disk(monkeypatch, pq.ParquetWriter, "write_table", filename=elsewhere)
    assert _score(run, tmp_path / "out" / "scored.parquet") == 2
    assert cli_error(capsys) == f"OSError: [Errno 28] No space left on device: '{elsewhere}'"
    assert os.listdir(tmp_path) == []


def test_write_error_names_the_registry_and_not_an_input():
    args = cli.build_parser().parse_args(["policy", "set-lambda", "--registry", "/r", "--lam",
                                          "1,0", "--reason", "x"])
    assert cli_checks.write_error(OSError(errno.ENOSPC, "x"), args) == (
        "--registry: cannot write /r (No space left on device); no new version (CURRENT "
        "unchanged)")
    assert cli_checks.write_error(OSError(errno.EIO, "x"), args) is None
    args = cli.build_parser().parse_args(["score", "--policy", "/r", "--requests", "/d/req",
                                          "--out", "/d/out"])
    assert cli_checks.write_error(OSError(errno.EACCES, "x", "/d/req"), args) is None
    assert cli_checks.write_error(OSError(errno.EACCES, "x", "/d/.tmp-out-1"), args) == (
        "--out: cannot write /d/out (Permission denied); nothing written")
    args = cli.build_parser().parse_args(["report", "--frontier", "/f/frontier.json"])
    assert cli_checks.write_error(OSError(errno.EROFS, "x"), args) == (
        "--frontier: cannot write /f/frontier.json (Read-only file system); nothing written")


# ----------------------------------------------------------------------------- 2. swapped params

@pytest.fixture(scope="module")
def swapped(run):
    """``run/swapped``: the model's spec.json with the params of a model reading 3 more context
    features (tower kernel float32[D + 3, 16] where spec.json's model reads float32[D, 16]);
    ``run/other_spec``: the reverse (the wide model's spec.json, this model's params); and
    ``run/reg_swapped``: the registry with v0001's params swapped the same way."""
    from flax import nnx

    from puts_jax import model_io
    from puts_jax.config import QNetConfig
    from puts_jax.data import logs
    from puts_jax.qnet import QNetwork

    model, _ = model_io.load_model(str(run / "model"))
    meta = logs.read_meta(str(run / "data" / "logs.parquet"))
    wide = QNetwork(QNetConfig.tiny(), model.context_dim + 3, meta.action_set.n_actions,
                    meta.reward_kinds, rngs=nnx.Rngs(1))
    model_io.save_model(str(run / "wide"), wide)
    shutil.copytree(run / "model", run / "swapped")
    shutil.rmtree(run / "swapped" / "params")
    shutil.copytree(run / "wide" / "params", run / "swapped" / "params")
    shutil.copytree(run / "wide", run / "other_spec")
    shutil.rmtree(run / "other_spec" / "params")
    shutil.copytree(run / "model" / "params", run / "other_spec" / "params")
    shutil.copytree(run / "reg", run / "reg_swapped")
    shutil.rmtree(run / "reg_swapped" / "v0001" / "params")
    shutil.copytree(run / "wide" / "params", run / "reg_swapped" / "v0001" / "params")
    return model.context_dim


def _mismatch(flag, folder, params, saved, expected):
    return (f"{flag} {folder}: params: saved parameters do not fit the model (1 path of "
            f"{params}); nothing restored: ['tower'][0]['kernel']: saved float32[{saved}, 16], "
            f"expected float32[{expected}, 16]")


@pytest.mark.parametrize("cmd", ["sweep", "truth", "policy publish"])
def test_a_model_with_swapped_params_is_one_line_naming_model_and_the_shapes(
        run, swapped, tmp_path, capsys, cmd):
    D, data = swapped, run / "data"
    argv = {"sweep": ["sweep", "--logs", str(data / "evaluation.parquet"), "--out",
                      str(tmp_path / "out"), "--n-lambdas", "3", "--bootstrap", "0"],
            "truth": ["truth", "--data", str(data), "--frontier",
                      str(run / "frontier" / "frontier.json")],
            "policy publish": ["policy", "publish", "--registry", str(tmp_path / "out"),
                               "--frontier", str(run / "frontier" / "frontier.json"), "--logs",
                               str(data / "logs.parquet"), "--point", "0", "--reason", "x"]}[cmd]
    for name, saved, expected in (("swapped", D + 3, D), ("other_spec", D, D + 3)):
        capsys.readouterr()
        assert cli.main([*argv, "--model", str(run / name)]) == 2
        assert cli_error(capsys) == _mismatch("--model", run / name, run / name / "params",
                                              saved, expected)
        assert os.listdir(tmp_path) == []


def test_a_registry_version_with_swapped_params_names_policy_and_the_shapes(run, swapped,
                                                                            tmp_path, capsys):
    D = swapped
    capsys.readouterr()
    assert cli.main(["score", "--policy", str(run / "reg_swapped"), "--requests",
                     str(run / "data" / "requests.parquet"), "--out",
                     str(tmp_path / "s.parquet")]) == 2
    assert cli_error(capsys) == _mismatch("--policy", run / "reg_swapped",
                                          run / "reg_swapped" / "v0001" / "params", D + 3, D)
    assert os.listdir(tmp_path) == []


def test_a_model_whose_params_hash_differs_from_spec_json_names_model(run, tmp_path, capsys):
    import json

    from puts_jax import model_io

    model = tmp_path / "model"
    shutil.copytree(run / "model", model)
    spec = json.loads((model / "spec.json").read_text())
    real, spec["params_hash"] = spec["params_hash"], "0" * 16
    (model / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(cli_checks.InputError) as err:
        model_io.load_model(str(model))
    assert (err.value.field, err.value.source) == ("params_hash", str(model))
    assert cli.main(["sweep", "--model", str(model), "--logs",
                     str(run / "data" / "evaluation.parquet"), "--out", str(tmp_path / "f"),
                     "--n-lambdas", "3", "--bootstrap", "0"]) == 2
    assert cli_error(capsys) == (
        f"--model {model}: params_hash: the restored parameters of {model} hash to {real}, "
        f"spec.json records {'0' * 16} (its params folder was replaced or changed after the "
        "save)")
    assert not (tmp_path / "f").exists()


# ----------------------------------------------------------------------------- 3. other widths

def _requests_with(run, path, context, ids=None):
    """A request set of the world's outcomes, with ``context`` (f32[B, D']) and optional
    ``context_ids``."""
    import numpy as np

    from puts_jax.data import logs

    meta = logs.read_meta(str(run / "data" / "requests.parquet"))
    B, K = len(context), meta.action_set.n_outcomes
    logs.write_requests(str(path), meta, request_id=np.arange(B), context=context,
                        preds=np.ones((B, 3, K), np.float32),
                        **({} if ids is None else {"context_ids": ids}))
    return path


def _score_requests(run, requests, out):
    return cli.main(["score", "--policy", str(run / "reg"), "--requests", str(requests),
                     "--out", str(out)])


def test_a_request_set_of_another_context_width_names_both_widths_not_every_row(
        run, swapped, tmp_path, capsys):
    import numpy as np

    D = swapped
    req = _requests_with(run, tmp_path / "wide.parquet", np.zeros((40, D + 60), np.float32))
    capsys.readouterr()
    assert _score_requests(run, req, tmp_path / "s.parquet") == 2
    assert cli_error(capsys) == f"{req}: context: {D + 60} features a row; the model reads {D}"
    # the log side (sweep): a model reading D + 3 on the world's D-wide evaluation log
    assert cli.main(["sweep", "--model", str(run / "wide"), "--logs",
                     str(run / "data" / "evaluation.parquet"), "--out", str(tmp_path / "f"),
                     "--n-lambdas", "3", "--bootstrap", "0"]) == 2
    assert cli_error(capsys) == (f"{run / 'data' / 'evaluation.parquet'}: context: {D} features "
                                 f"a row; the model reads {D + 3}")
    assert sorted(os.listdir(tmp_path)) == ["wide.parquet"]


def test_rows_of_mixed_widths_are_still_named_by_row(run, swapped, tmp_path, capsys):
    from puts_jax.data import logs

    D = swapped
    meta = logs.read_meta(str(run / "data" / "requests.parquet"))
    K = meta.action_set.n_outcomes
    table = pa.table({"request_id": pa.array([0, 1, 2], pa.int64()),
                      "context": pa.array([[0.0] * D, [0.0] * (D + 1), [0.0] * D],
                                          pa.list_(pa.float32())),
                      "preds": pa.array([[[1.0] * K]] * 3, pa.list_(pa.list_(pa.float32())))},
                     metadata=pq.read_schema(str(run / "data" / "requests.parquet")).metadata)
    pq.write_table(table, str(tmp_path / "mixed.parquet"))
    capsys.readouterr()
    assert _score_requests(run, tmp_path / "mixed.parquet", tmp_path / "s.parquet") == 2
    assert cli_error(capsys) == (f"{tmp_path / 'mixed.parquet'}: context: expected length {D} "
                                 "at rows [1]")


def test_check_model_width_names_context_ids_columns():
    from puts_jax.data import logs

    t = pa.table({"context_ids": pa.array([[1, 2, 3]] * 4, pa.list_(pa.int64()))})
    with pytest.raises(cli_checks.InputError,
                       match=r"^context_ids: 3 ids a row; the model embeds 2 id columns$"):
        logs._check_model_width(t, "context_ids", 2)
    logs._check_model_width(t, "context_ids", 3)  # the model's width: nothing to say
    logs._check_model_width(t, "context_ids", None)  # no model: the file sets the width


# ----------------------------------------------------------------------------- 4. SIGTERM

def _simulate(out, seed):
    return cli.main(["simulate", "--out", str(out), "--seed", str(seed), *SIM])


@pytest.fixture(scope="module")
def seed1(tmp_path_factory):
    """A folder holding the simulated seed-1 set, and its snapshot."""
    out = tmp_path_factory.mktemp("seed1") / "sim"
    assert _simulate(out, 1) == 0
    return out, snapshot(out)


@pytest.fixture
def old(seed1, tmp_path):
    out = tmp_path / "sim"
    shutil.copytree(seed1[0], out)
    return out


def test_sigterm_while_simulate_writes_removes_its_staging_and_keeps_the_old_set(
        seed1, old, capsys, monkeypatch):
    real, calls = sim.logs.write_log, []

    def write_then_term(*a, **k):
        calls.append(1)
        real(*a, **k)
        if len(calls) == 2:  # logs and heldout are staged; evaluation is not
            signal.raise_signal(signal.SIGTERM)
    monkeypatch.setattr(sim.logs, "write_log", write_then_term)
    capsys.readouterr()
    assert _simulate(old, 2) == 143
    assert capsys.readouterr().err == "puts-jax: terminated\n"
    assert len(calls) == 2 and snapshot(old) == seed1[1]  # no .simulate-staging, old files
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_during_the_move_is_held_until_the_new_set_is_in(seed1, old, capsys,
                                                                 monkeypatch):
    real, sent = os.replace, []

    def replace(src, dst):
        moving_in = (os.path.basename(os.path.dirname(os.fspath(src))) == sim.STAGING
                     and os.path.dirname(os.fspath(dst)) == str(old))
        if moving_in and not sent:
            sent.append(1)
            signal.raise_signal(signal.SIGTERM)  # committed; before the first file moves in
        real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    assert _simulate(old, 2) == 143
    monkeypatch.setattr(os, "replace", real)
    assert sent and sim.STAGING not in os.listdir(old)
    new = snapshot(old)
    assert sorted(new) == sorted(seed1[1])
    assert all(new[k] != seed1[1][k] for k in ("logs.parquet", "evaluation.parquet"))


def test_the_console_script_ends_143_on_sigterm_with_no_staging_left(tmp_path):
    out = tmp_path / "sim"
    code = ("import os, signal, sys\n"
            "from puts_jax.data import logs\n"
            "real = logs.write_log\n"
            "def write(*a, **k):\n"
            "    real(*a, **k)\n"
            "    os.kill(os.getpid(), signal.SIGTERM)  # as 'kill PID' does\n"
            "logs.write_log = write\n"
            "import puts_jax_entry\n"
            f"sys.argv = ['puts-jax', 'simulate', '--out', {str(out)!r}, *{SIM!r}]\n"
            "sys.exit(puts_jax_entry.main())\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert (done.returncode, done.stderr) == (143, "puts-jax: terminated\n")
    assert os.listdir(tmp_path) == []  # no staging folder, no --out folder it made


# ----------------------------------------------------------------------------- 6. library logs

def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_publish_on_a_full_disk_shows_its_one_line_without_orbaxs_logs(run, tmp_path):
    """orbax logs a save that fails on a full disk at ERROR with tracebacks (5 records, 246
    lines before the error line, measured on a full tmpfs); the console script holds them and
    drops them when the command ends with its own error line."""
    reg = tmp_path / "reg"
    argv = ["puts-jax", "policy", "publish", "--registry", str(reg), "--model",
            str(run / "model"), "--frontier", str(run / "frontier" / "frontier.json"),
            "--logs", str(run / "data" / "logs.parquet"), "--point", "0", "--reason", "x"]
    code = ("import errno, os, sys\n"
            "from absl import logging as absl_logging\n"
            "from puts_jax import model_io\n"
            "def full(path, model):\n"
            "    os.makedirs(path)\n"
            "    try:\n"
            "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
            "    except OSError:\n"
            "        for _ in range(5):  # as orbax's writer threads log it\n"
            "            absl_logging.exception('Failed to write metadata path=%s', path)\n"
            "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
            "model_io.save_params = full\n"
            "import puts_jax_entry\n"
            f"sys.argv = {argv!r}\n"
            "sys.exit(puts_jax_entry.main())\n")
    done = _python(code)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"puts-jax: error: --registry: cannot write {reg} (No space left on "
                           "device); no new version (CURRENT unchanged)\n")
    assert [n for n in os.listdir(reg) if n != ".lock"] == []  # no version, no CURRENT


def test_held_library_logs_are_shown_after_success_and_dropped_after_an_error():
    done = _python("import sys, puts_jax_entry\n"
                   "from absl import logging as absl_logging\n"
                   "held = puts_jax_entry.HeldLogs()\n"
                   "absl_logging.warning('kept')\n"
                   "print('the command', file=sys.stderr, flush=True)\n"
                   "held.finish(True)  # exit status 0\n"
                   "absl_logging.warning('after')\n"
                   "held = puts_jax_entry.HeldLogs()\n"
                   "absl_logging.error('dropped')\n"
                   "held.finish(False)  # an error line was printed\n"
                   "absl_logging.error('a late thread')\n")
    assert (done.returncode, done.stderr) == (
        0, "the command\nWARNING:absl:kept\nWARNING:absl:after\n")


def test_select_on_a_full_disk_leaves_the_frontier_unmarked(run, tmp_path, capsys, monkeypatch):
    """policy select --out writes the selection before it marks the frontier: a selection that
    cannot be written leaves frontier.json/.png/.html as they were."""
    from puts_jax import action_set

    fr = tmp_path / "frontier"
    shutil.copytree(run / "frontier", fr)
    doc = json.loads((fr / "frontier.json").read_text())
    doc["operating_point"] = None  # run's publish marked v0001 there
    doc.pop("selected_point", None)
    (fr / "frontier.json").write_text(json.dumps(doc))
    before = snapshot(fr)
    real, sel = action_set.atomic_write_text, str(tmp_path / "sel.json")

    def full_for_the_selection(path, *a, **k):  # the frontier's own writes still succeed
        if str(path) == sel:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, *a, **k)

    monkeypatch.setattr(action_set, "atomic_write_text", full_for_the_selection)
    capsys.readouterr()
    assert cli.main(["policy", "select", "--frontier", str(fr / "frontier.json"), "--maximize",
                     "session_success", "--out", str(tmp_path / "sel.json")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"puts-jax: error: --out: cannot write {tmp_path / 'sel.json'} (No space "
                    "left on device); the selection is not written")
    assert snapshot(fr) == before and not (tmp_path / "sel.json").exists()
