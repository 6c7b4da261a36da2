"""``write_simulation`` is all or nothing: after Ctrl-C or a failure at any point the output
folder holds the whole previous data set (byte for byte) or the whole new one, never a mix; a
staging folder left by a killed run is finished or removed by the next run. Bad sizes and seeds
stop with one error naming the argument (the flag, through ``puts-jax simulate`` and
``python -m train``), before anything is written."""

import os
import signal

import pytest

from puts_jax import cli
from puts_jax.checks import InputError
from puts_jax.data import simulator as sim
from conftest import snapshot
from train.main import main as train_main

SIZES = dict(n_logs=300, n_heldout=100, n_eval=50, n_requests=20, n_evaluation=200)
NAMES = ["evaluation.parquet", "heldout.parquet", "logs.parquet", "requests.parquet",
         "truth.npz"]


def _write(out, seed, **kw):
    return sim.write_simulation(str(out), sim.SimConfig.tiny(), seed=seed, **{**SIZES, **kw})


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """The complete seed-1 and seed-2 sets, each written once into its own folder."""
    d = tmp_path_factory.mktemp("sets")
    _write(d / "seed1", 1)
    _write(d / "seed2", 2)
    return {1: snapshot(d / "seed1"), 2: snapshot(d / "seed2")}


@pytest.fixture
def old(sets, tmp_path):
    """An output folder holding the seed-1 set."""
    out = tmp_path / "sim"
    _write(out, 1)
    assert snapshot(out) == sets[1]
    return out


def test_a_complete_set_has_the_five_files_and_no_staging_left(sets, old):
    assert sorted(sets[1]) == NAMES and sorted(os.listdir(old)) == NAMES
    assert sets[1]["logs.parquet"] != sets[2]["logs.parquet"]
    assert sets[1]["evaluation.parquet"] != sets[2]["evaluation.parquet"]


def _raise_on_call(monkeypatch, target, name, nth, exc):
    """Make ``target.name`` raise ``exc`` on its ``nth`` call (1-based), after the earlier calls
    wrote their files."""
    real, calls = getattr(target, name), []

    def fake(*a, **kw):
        calls.append(1)
        if len(calls) == nth:
            raise exc
        return real(*a, **kw)
    monkeypatch.setattr(target, name, fake)
    return calls


# The writers in call order: logs, heldout (write_log 1, 2), requests, truth, evaluation (3).
WRITERS = [(sim.logs, "write_log", 1), (sim.logs, "write_log", 2),
           (sim.logs, "write_requests", 1), (sim, "_atomic_write_npz", 1),
           (sim.logs, "write_log", 3)]


@pytest.mark.parametrize("target, name, nth", WRITERS)
@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_an_interrupt_or_failure_while_writing_keeps_the_old_set_byte_identical(
        sets, old, monkeypatch, target, name, nth, exc):
    calls = _raise_on_call(monkeypatch, target, name, nth, exc)
    with pytest.raises(type(exc)):
        _write(old, 2)
    assert len(calls) == nth
    assert snapshot(old) == sets[1]  # every old file intact, nothing of seed 2, no staging


def _moving_in(out):
    """True for an ``os.replace`` call that moves a staged file into ``out``."""
    stage = os.path.join(str(out), sim.STAGING)
    return lambda src, dst: (os.path.dirname(os.fspath(src)) == stage
                             and os.path.dirname(os.fspath(dst)) == str(out))


def test_ctrl_c_during_the_move_is_held_until_the_new_set_is_in(sets, old, monkeypatch):
    real, moving, sent = os.replace, _moving_in(old), []

    def replace(src, dst):
        if moving(src, dst) and not sent:
            sent.append(1)
            signal.raise_signal(signal.SIGINT)  # Ctrl-C after the first move
        real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        _write(old, 2)
    assert sent and snapshot(old) == sets[2]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_move_that_fails_midway_is_named_and_finished_by_the_next_run(sets, old, monkeypatch):
    real, moving, moved = os.replace, _moving_in(old), []

    def replace(src, dst):
        if moving(src, dst):
            if len(moved) == 2:
                raise OSError(5, "Input/output error")
            moved.append(os.path.basename(dst))
        real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match=rf"^out: moving the new data set into {old} failed at "
                                      rf"requests.parquet \(\[Errno 5\] Input/output error\); "
                                      rf"the rest waits in {old}/{sim.STAGING}, and the next "
                                      rf"simulate into {old} moves it in first$"):
        _write(old, 2)
    monkeypatch.setattr(os, "replace", real)
    assert moved == ["logs.parquet", "heldout.parquet"]
    assert sim.recover_staging(str(old)) == "completed"
    assert snapshot(old) == sets[2]
    assert sim.recover_staging(str(old)) is None


def test_a_partial_staging_folder_is_removed_and_the_next_run_writes_over_it(sets, old):
    stage = old / sim.STAGING
    stage.mkdir()
    (stage / "logs.parquet").write_bytes(b"half a file")
    (stage / ".tmp-abc.parquet").write_bytes(b"x")
    assert sim.recover_staging(str(old)) == "removed"
    assert snapshot(old) == sets[1]
    stage.mkdir()
    (stage / "logs.parquet").write_bytes(b"half a file")
    paths = _write(old, 2)  # recovers first, then writes the new set
    assert sorted(paths) == ["evaluation", "heldout", "logs", "requests", "truth"]
    assert paths["truth"] == os.path.join(str(old), "truth.npz")
    assert snapshot(old) == sets[2]


def test_other_files_in_the_folder_are_kept(sets, old):
    (old / "notes.txt").write_text("mine")
    _write(old, 2)
    assert snapshot(old) == {**sets[2], "notes.txt": b"mine"}


def test_cli_ctrl_c_exits_130_and_keeps_the_old_set(sets, old, monkeypatch, capsys):
    _raise_on_call(monkeypatch, sim.logs, "write_log", 2, KeyboardInterrupt())
    assert cli.main(["simulate", "--out", str(old), "--preset", "tiny", "--seed", "2",
                     "--n-logs", "300", "--n-heldout", "100", "--n-eval", "50",
                     "--n-requests", "20", "--n-evaluation", "200"]) == 130
    assert capsys.readouterr().err == "puts-jax: interrupted\n"
    assert snapshot(old) == sets[1]


# ----------------------------------------------------------------------------- error texts

@pytest.mark.parametrize("kw, msg", [
    (dict(n_logs=0), "n_logs: must be >= 1, got 0"),
    (dict(n_heldout=-3), "n_heldout: must be >= 1, got -3"),
    (dict(n_eval=0), "n_eval: must be >= 1, got 0"),
    (dict(n_requests=0), "n_requests: must be >= 1, got 0"),
    (dict(n_evaluation=0), "n_evaluation: must be >= 1, got 0"),
    (dict(seed=-1), "seed: must be >= 0, got -1"),
])
def test_bad_sizes_and_seeds_name_the_argument_and_write_nothing(tmp_path, kw, msg):
    with pytest.raises(InputError, match=f"^{msg}$"):
        _write(tmp_path / "sim", **{"seed": 0, **kw})
    assert not (tmp_path / "sim").exists()


def test_an_out_that_is_a_file_or_holds_a_folder_in_a_files_place_is_named(old, sets, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match=f"^out: {f} is a file, not a folder$"):
        _write(f, 2)
    os.remove(old / "truth.npz")
    (old / "truth.npz").mkdir()
    with pytest.raises(InputError, match=f"^out: {old}/truth.npz is a folder; the data set "
                                         f"writes a file there \\(nothing written\\)$"):
        _write(old, 2)
    assert snapshot(old) == {k: v for k, v in sets[1].items() if k != "truth.npz"}


@pytest.mark.parametrize("flag, value, msg", [
    ("--n-logs", "0", "--n-logs: must be >= 1, got 0"),
    ("--n-heldout", "0", "--n-heldout: must be >= 1, got 0"),
    ("--n-eval", "-1", "--n-eval: must be >= 1, got -1"),
    ("--n-requests", "0", "--n-requests: must be >= 1, got 0"),
    ("--n-evaluation", "0", "--n-evaluation: must be >= 1, got 0"),
    ("--seed", "-1", "--seed: must be >= 0, got -1"),
    ("--miscalibration", "-1", "--miscalibration: must be finite and >= 0, got -1.0"),
])
def test_cli_bad_numbers_name_the_flag(tmp_path, capsys, flag, value, msg):
    out = tmp_path / "sim"
    assert cli.main(["simulate", "--out", str(out), "--preset", "tiny", flag, value]) == 2
    assert capsys.readouterr().err == f"puts-jax: error: {msg}\n"
    assert not out.exists()


@pytest.mark.parametrize("flag, value, msg", [
    ("--epochs", "0", "--epochs: must be >= 1, got 0"),
    ("--epochs", "-2", "--epochs: must be >= 1, got -2"),
    ("--seed", "-1", "--seed: must be >= 0, got -1"),
])
def test_train_bad_numbers_name_the_flag(sim_logs, tmp_path, capsys, flag, value, msg):
    wd = tmp_path / "wd"
    assert train_main(["--config", "tiny", "--logs", sim_logs["train"], "--heldout",
                       sim_logs["heldout"], "--workdir", str(wd), flag, value]) == 2
    err = capsys.readouterr().err
    assert err == f"python -m train: error: {msg}\n"
    assert not wd.exists()
