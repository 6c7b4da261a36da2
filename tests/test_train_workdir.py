"""python -m train and its workdir: nothing to select is an error, the selected model is
published whole at the end (and redone after an interrupted export), one train at a time, flag
values that would overflow are named, and the tiny preset's cadence scales with the run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from puts_jax import model_io
from puts_jax.data import logs, simulator as sim
from train import TrainConfig, load_selected, publish, selection
from train.main import main as cli_main
from train.workdir_lock import LOCK_FILE

FLAGS = ["--config", "tiny", "--epochs", "1"]  # 600 rows / 64: 10 steps, evaluations at 3 6 9 10


def _cli(capsys, sim_logs, workdir, *flags, heldout=None):
    rc = cli_main(["--logs", sim_logs["train"], "--heldout", heldout or sim_logs["heldout"],
                   "--workdir", str(workdir), *(flags or FLAGS)])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def finished(sim_logs, tmp_path_factory):
    """A finished tiny run (seed 0, 1 epoch) into a fresh workdir."""
    wd = tmp_path_factory.mktemp("finished") / "wd"
    assert cli_main(["--logs", sim_logs["train"], "--heldout", sim_logs["heldout"],
                     "--workdir", str(wd), *FLAGS]) == 0
    return wd


# ----------------------------------------------------------------------------- 1. nothing to select

def test_a_heldout_log_that_matches_no_action_is_refused_before_training(sim_logs, tmp_path,
                                                                        capsys):
    world = sim.make_world(sim.SimConfig.tiny())
    log = sim.simulate_log(world, 50, 5)
    log["action"] = np.full_like(log["action"], logs.OUTSIDE_ACTION)  # slot-level, never matched
    log["consistent"] = np.zeros((50, logs.read_meta(sim_logs["train"]).action_set.n_actions),
                                 bool)
    path = str(tmp_path / "unmatched.parquet")
    logs.write_log(path, **log)
    rc, out, err = _cli(capsys, sim_logs, tmp_path / "wd", heldout=path)
    assert rc == 2 and out == ""
    assert err == (f"python -m train: error: --heldout {path}: consistent: no row matches any "
                   "action of the action set: no policy can be estimated on this log, so no "
                   "checkpoint could be selected\n")
    assert not (tmp_path / "wd").exists()


def test_no_evaluation_with_a_value_fails_naming_the_heldout_and_exports_nothing(
        sim_logs, tmp_path, capsys, monkeypatch):
    real = selection.HeldoutEvaluator.__call__
    monkeypatch.setattr(selection.HeldoutEvaluator, "__call__",
                        lambda self, g, p: {**real(self, g, p), "value": None})  # SNIPS undefined
    wd = tmp_path / "wd"
    rc, out, err = _cli(capsys, sim_logs, wd)
    assert rc == 2 and out == ""  # was: exit 0, a summary of nulls, no selected_model
    assert err == (f"python -m train: error: --heldout {sim_logs['heldout']}: selection: no "
                   "checkpoint could be evaluated: the held-out SNIPS of session_success at the "
                   "selection lambda [1.0, 0.0] is undefined (no held-out row matches the greedy "
                   "policy's actions) at every evaluation (steps 3, 6, 9, 10); nothing is "
                   "selected or exported. Use a larger held-out log, in a new --workdir\n")
    assert not (wd / "selected_model").exists() and not (wd / "selected.json").exists()
    assert not (wd / "best_so_far").exists()
    assert sorted(os.listdir(wd / "checkpoints")) == ["10", "9"]  # the training is kept
    assert _cli(capsys, sim_logs, wd)[0] == 2  # the same command says so again


# ----------------------------------------------------------------------------- 2. the export

class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (no except/finally of the code under test
    catches a BaseException it does not know)."""


class _OsKilledAt:
    """``os`` for ``train.publish``, whose function ``name`` raises _Killed at its n-th call."""

    def __init__(self, name: str, n: int):
        self.name, self.n, self.calls = name, n, 0

    def __getattr__(self, attr):
        real = getattr(os, attr)
        if attr != self.name:
            return real

        def wrapped(*a, **k):
            self.calls += 1
            if self.calls == self.n:
                raise _Killed(f"{self.name} #{self.n}")
            return real(*a, **k)
        return wrapped


def _expected(finished):
    return (finished / "selected.json").read_text(), model_io.load_model(
        str(finished / "selected_model"))[1]["params_hash"]


def _kill_at_the_stage_fsync(monkeypatch):
    real = publish.fsync_tree

    def fsync_tree(path):
        if path.endswith(publish.STAGE):
            raise _Killed("fsync of the stage")
        real(path)
    monkeypatch.setattr(publish, "fsync_tree", fsync_tree)


@pytest.mark.parametrize("call, n, left", [
    ("fsync", 1, set()),  # the stage is written, not yet durable: nothing moved in
    ("replace", 1, set()),  # the staged model's rename: nothing moved in yet
    ("replace", 2, {"selected_model"}),  # selected.json's rename: the model is in, the marker not
])
def test_a_killed_first_export_is_never_read_as_finished_and_is_redone(
        finished, sim_logs, tmp_path, capsys, monkeypatch, call, n, left):
    text, digest = _expected(finished)
    wd = tmp_path / "wd"
    if call == "fsync":
        _kill_at_the_stage_fsync(monkeypatch)
    else:
        monkeypatch.setattr(publish, "os", _OsKilledAt(call, n))
    with pytest.raises(_Killed):
        _cli(capsys, sim_logs, wd)
    monkeypatch.undo()
    assert {"selected_model", "selected.json"} & set(os.listdir(wd)) == left
    assert (wd / publish.STAGE).is_dir()  # what the killed export left
    with pytest.raises(FileNotFoundError, match="has not finished"):
        load_selected(str(wd))  # selected.json is the marker of a finished export
    if left:  # a model that is there is whole: the final one, fsynced before its rename
        assert model_io.load_model(str(wd / "selected_model"))[1]["params_hash"] == digest
    rc, out, _ = _cli(capsys, sim_logs, wd)  # the same command: nothing to train, export redone
    assert rc == 0 and json.loads(out)["final_step"] == 10
    assert (wd / "selected.json").read_text() == text
    model, info = load_selected(str(wd))
    assert info["params_hash"] == model_io.params_hash(model) == digest
    assert sorted(f for f in os.listdir(wd) if "tmp" in f or f.startswith(".")) == []


def test_a_killed_re_export_leaves_a_readable_model_at_every_point(finished, sim_logs, tmp_path,
                                                                  capsys, monkeypatch):
    import shutil

    text, digest = _expected(finished)
    for n in (1, 2, 3):  # before the old model moves aside, between the renames, before the marker
        wd = tmp_path / f"wd{n}"
        shutil.copytree(finished, wd)
        monkeypatch.setattr(publish, "os", _OsKilledAt("replace", n))
        with pytest.raises(_Killed):
            _cli(capsys, sim_logs, wd)
        monkeypatch.undo()
        # what --model reads (model_io.model_folder: the folder, or DIR.tmp-old between renames)
        assert model_io.load_model(str(wd / "selected_model"))[1]["params_hash"] == digest, n
        assert _cli(capsys, sim_logs, wd)[0] == 0
        assert (wd / "selected.json").read_text() == text
        assert not (wd / publish.STAGE).exists()
        assert not (wd / ("selected_model" + model_io.OLD_SUFFIX)).exists()


def test_a_model_that_selected_json_does_not_describe_is_refused(finished, tmp_path):
    import shutil

    wd = tmp_path / "wd"
    shutil.copytree(finished, wd)
    doc = json.loads((wd / "selected.json").read_text())
    (wd / "selected.json").write_text(json.dumps({**doc, "params_hash": "0" * 16}))
    with pytest.raises(ValueError, match="an export was interrupted; rerun the same train"):
        load_selected(str(wd))


# ----------------------------------------------------------------------------- 3. one at a time

def test_a_second_train_in_a_workdir_in_use_is_refused_and_writes_nothing(
        finished, sim_logs, tmp_path, capsys):
    import shutil

    from conftest import snapshot

    wd = tmp_path / "wd"
    shutil.copytree(finished, wd)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(wd / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nos.ftruncate(fd, 0)\n"
         "os.write(fd, b'%d\\n' % os.getpid())\nprint('locked', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(wd)
        rc, out, err = _cli(capsys, sim_logs, wd)
        assert rc == 2 and out == ""
        assert err == (f"python -m train: error: --workdir: {wd} is in use by another train "
                       f"(pid {holder.pid}); wait for it to finish, or train in another "
                       "--workdir\n")
        assert snapshot(wd) == before  # metrics.jsonl, checkpoints, the export: untouched
    finally:
        holder.kill()
        holder.wait()
    assert _cli(capsys, sim_logs, wd)[0] == 0  # a killed holder leaves no stale lock
    assert (wd / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_the_lock_is_released_when_a_run_fails(sim_logs, tmp_path, capsys, monkeypatch):
    from train.workdir_lock import WorkdirLock

    monkeypatch.setattr(selection.HeldoutEvaluator, "__call__",
                        lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    wd = tmp_path / "wd"
    assert _cli(capsys, sim_logs, wd)[0] == 2
    WorkdirLock(str(wd)).acquire().release()  # free again


# ----------------------------------------------------------------------------- 4. flag values

@pytest.mark.parametrize("flags, msg", [
    (["--seed", str(2**70)], f"--seed: must be <= 4294967295 (the 32 bits of a JAX key), got "
                             f"{2**70}"),
    (["--seed", str(2**32)], "--seed: must be <= 4294967295 (the 32 bits of a JAX key), got "
                             "4294967296"),
    (["--seed", "-5"], "--seed: must be >= 0, got -5"),
    (["--epochs", str(2**70)], f"--epochs: must be <= 2147483647, got {2**70}"),
    (["--epochs", str(2**31 - 1)], "--epochs: 2147483647 epochs of 10 steps exceed 2147483647 "
                                   "steps"),
])
def test_out_of_range_numbers_name_the_flag(sim_logs, tmp_path, capsys, flags, msg):
    wd = tmp_path / "wd"
    rc, out, err = _cli(capsys, sim_logs, wd, "--config", "tiny", *flags)
    assert rc == 2 and out == "" and err == f"python -m train: error: {msg}\n"
    assert not wd.exists()


@pytest.mark.parametrize("flag", ["--workdir", "--logs", "--heldout"])
def test_an_empty_path_is_named(sim_logs, tmp_path, capsys, flag):
    args = {"--logs": sim_logs["train"], "--heldout": sim_logs["heldout"],
            "--workdir": str(tmp_path / "wd"), flag: ""}
    rc = cli_main(["--config", "tiny", *[x for kv in args.items() for x in kv]])
    assert rc == 2 and capsys.readouterr().err == f"python -m train: error: {flag}: empty path\n"
    assert os.listdir(tmp_path) == []


def test_the_largest_seed_is_accepted_and_differs_from_seed_0():
    import jax

    # the trainer's key is jax.random.key(cfg.seed) (train.state.init_state)
    key = lambda s: np.asarray(jax.random.key_data(jax.random.key(s)))  # noqa: E731
    assert TrainConfig(seed=2**32 - 1).seed == 2**32 - 1
    assert not np.array_equal(key(2**32 - 1), key(0))
    np.testing.assert_array_equal(key(2**32), key(0))  # why 2**32 is refused: it aliases seed 0


# ----------------------------------------------------------------------------- 5. cadence

@pytest.mark.parametrize("every, total, interval", [
    (0, 9376, 2344),  # simulate --preset tiny: 300k rows, 64 a batch, 2 epochs
    (0, 10, 3), (0, 4, 1), (0, 1, 1), (5, 100, 5), (250, 10, 250),
])
def test_the_interval_is_the_field_or_a_quarter_of_the_run(every, total, interval):
    assert TrainConfig.tiny().interval(every, total) == interval


def test_tiny_evaluates_and_checkpoints_four_times_a_run(finished):
    recs = [json.loads(line) for line in open(finished / "metrics.jsonl")]
    assert [r["step"] for r in recs if "heldout" in r] == [3, 6, 9, 10]
    assert sorted(os.listdir(finished / "checkpoints")) == ["10", "9"]  # keep=2
    assert TrainConfig.tiny().eval_every == TrainConfig.tiny().checkpoint_every == 0


@pytest.mark.slow
def test_tiny_on_the_tiny_simulated_data_evaluates_four_times(tmp_path):
    """The tiny preset on ``simulate --preset tiny`` data evaluates the held-out log 4 times in
    its 9,376 steps (was every 4 steps: 2,344 evaluations of 100k rows). Measured on the 2-core
    VM, one core, others' jobs alongside: 11 min 44 s before, 26-36 s after (a time, so it is
    in the session note, not asserted here)."""
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device, as a user runs it
    puts_jax = os.path.join(os.path.dirname(sys.executable), "puts-jax")
    subprocess.run([puts_jax, "simulate", "--preset", "tiny", "--out",
                    str(tmp_path / "data")], check=True, env=env, capture_output=True)
    run = subprocess.run([sys.executable, "-m", "train", "--config", "tiny", "--logs",
                          str(tmp_path / "data" / "logs.parquet"), "--heldout",
                          str(tmp_path / "data" / "heldout.parquet"), "--workdir",
                          str(tmp_path / "wd")], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["final_step"] == 9376
    recs = [json.loads(line) for line in open(tmp_path / "wd" / "metrics.jsonl")]
    assert [r["step"] for r in recs if "heldout" in r] == [2344, 4688, 7032, 9376]


def test_a_reward_too_large_for_the_loss_is_named_with_its_row(sim_logs, tmp_path, capsys):
    """A count reward of 1e30 is finite (the reader accepts it) but overflows the f32 loss:
    python -m train ends with one line naming --logs, the step, the loss term, and per objective
    the row of the largest |reward|, not a NonFiniteLossError traceback."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from puts_jax.data import logs
    from train import main as train_main
    from train.metrics import NonFiniteLossError

    meta = logs.read_meta(sim_logs["train"])
    tab = pq.read_table(sim_logs["train"])
    col = tab.column("rewards").combine_chunks()
    rewards = np.asarray(col.flatten(), np.float32).reshape(len(col), -1).copy()
    rewards[7, 1] = 1e30
    new = pa.FixedSizeListArray.from_arrays(pa.array(rewards.reshape(-1), pa.float32()),
                                            rewards.shape[1])
    path = str(tmp_path / "huge.parquet")
    pq.write_table(tab.set_column(tab.schema.get_field_index("rewards"),
                                  tab.schema.field("rewards").with_type(new.type), new), path)
    err = NonFiniteLossError(222, {"loss": float("inf"), "loss/clicks": float("inf"),
                                   "loss/session_success": 0.5})
    msg = train_main._non_finite_message(err, path)
    names = meta.reward_names
    assert msg.startswith("the training loss became non-finite at step 222 (loss, loss/clicks): "
                          "rewards this large overflow the loss in float32; largest |reward| "
                          f"per objective: {names[0]} 1 at row ")
    assert msg.endswith(f"{names[1]} 1e+30 at row 7")


def test_workdir_errors_name_the_flag(sim_logs, tmp_path, monkeypatch, capsys):
    """A --workdir that cannot be written is refused by name before any work, and an OSError
    on a file under --workdir during the run (a full disk) names the flag too."""
    import argparse
    import os

    from train import main as train_main

    real = os.access
    ro = str(tmp_path)
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == ro else real(p, m))
    argv = ["--config", "tiny", "--logs", sim_logs["train"], "--heldout", sim_logs["heldout"],
            "--workdir", str(tmp_path / "tr")]
    assert train_main.main(argv) == 2
    assert capsys.readouterr().err == f"python -m train: error: --workdir: cannot write in {ro}\n"
    monkeypatch.setattr(os, "access", real)
    args = argparse.Namespace(workdir=str(tmp_path / "tr"), logs=sim_logs["train"],
                              heldout=sim_logs["heldout"])
    err = OSError(28, "No space left on device", str(tmp_path / "tr" / "metrics.jsonl"))
    assert train_main._flag_of_path(err, args) == "--workdir: "
    assert train_main._flag_of_path(OSError(28, "x", "/elsewhere"), args) == ""


def test_heldout_checks_before_training(sim_logs, tmp_path, capsys, monkeypatch):
    """--heldout equal to --logs warns (selection on training rows is optimistic); an empty
    --heldout says it has no rows (was 'no row matches any action')."""
    import numpy as np

    from puts_jax.checks import InputError
    from train import loop
    from train import main as train_main

    monkeypatch.setattr(train_main, "_run", lambda args: {})
    argv = ["--config", "tiny", "--logs", sim_logs["train"], "--heldout", sim_logs["train"],
            "--workdir", str(tmp_path / "tr")]
    assert train_main.main(argv) == 0
    assert capsys.readouterr().err.startswith(
        "python -m train: warning: --heldout is the same file as --logs: checkpoints are then "
        "selected on the rows they were trained on")

    class Chunk:
        consistent = np.zeros((0, 4), bool)

    with pytest.raises(InputError, match="the log has no rows"):
        loop._check_estimable([Chunk()], "h.parquet")
