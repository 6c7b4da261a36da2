"""python -m train on a workdir or inputs it cannot use: resuming with another config, a workdir
that is a file, missing input files, a held-out log of another context width, Ctrl-C. Each stops
with one 'error:' line (or the interrupt line) and nothing already written is lost."""

import json
import os
import shutil
import signal

import numpy as np
import pyarrow.parquet as pq
import pytest

from puts_jax import model_io
from puts_jax.data import logs, simulator as sim
from train import TrainConfig, input as input_lib, load_selected, publish
import train.main as main_mod
from train.main import main as cli_main


def _cli(capsys, sim_logs, workdir, *flags, logs_path=None, heldout=None):
    rc = cli_main(["--logs", logs_path or sim_logs["train"], "--heldout",
                   heldout or sim_logs["heldout"], "--workdir", str(workdir), *flags])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _snapshot(wd) -> dict:
    """Every file under ``wd`` -> its bytes."""
    out = {}
    for root, _, files in os.walk(wd):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, wd)] = open(p, "rb").read()
    return out


# ----------------------------------------------------------------------------- 1. config on resume

@pytest.fixture(scope="module")
def finished(sim_logs, tmp_path_factory):
    """A finished tiny run (seed 0, 1 epoch = 10 steps) and its printed result."""
    wd = tmp_path_factory.mktemp("finished") / "wd"
    rc = cli_main(["--config", "tiny", "--epochs", "1", "--logs", sim_logs["train"],
                   "--heldout", sim_logs["heldout"], "--workdir", str(wd)])
    assert rc == 0
    return wd


def test_the_effective_config_is_recorded_at_the_start(finished):
    rec = json.loads((finished / "config.json").read_text())
    assert rec == TrainConfig.tiny().to_dict() | {"epochs": 1}
    assert rec["qnet"]["hidden"] == [16] and rec["seed"] == 0
    assert json.loads((finished / "selected.json").read_text())["config"] == rec


@pytest.mark.parametrize("flags, diff", [
    (["--config", "tiny", "--epochs", "1", "--seed", "7"], "(seed: saved 0, given 7)"),
    (["--config", "tiny", "--epochs", "2"], "(epochs: saved 1, given 2)"),
    (["--config", "tiny"], "(epochs: saved 1, given 2)"),  # the preset's 2 epochs
    (["--config", "default", "--epochs", "1"],
     "(qnet.hidden: saved [16], given [64, 64]; batch_size: saved 64, given 4096; "
     "learning_rate: saved 0.01, given 0.03; "),
])
def test_resuming_with_another_config_is_refused_naming_the_fields(
        finished, sim_logs, capsys, flags, diff):
    before = _snapshot(finished)
    rc, out, err = _cli(capsys, sim_logs, finished, *flags)
    assert rc == 2 and out == ""
    assert err.startswith(f"python -m train: error: --workdir {finished}: config: differs from "
                          f"the config the run in {finished} was trained with {diff}")
    assert "Train in a new --workdir" in err and len(err.strip().splitlines()) == 1
    assert _snapshot(finished) == before  # nothing written, nothing lost


def test_the_same_config_resumes_and_an_old_workdir_is_checked_then_recorded(
        finished, sim_logs, capsys, tmp_path):
    same = ["--config", "tiny", "--epochs", "1"]
    rc, out, _ = _cli(capsys, sim_logs, finished, *same)
    assert rc == 0 and json.loads(out)["final_step"] == 10
    # A workdir from before config.json: checked against selected.json's config, then recorded.
    old = tmp_path / "old"
    shutil.copytree(finished, old)
    rec = (old / "config.json").read_bytes()
    (old / "config.json").unlink()
    rc, _, err = _cli(capsys, sim_logs, old, *same, "--seed", "3")
    assert rc == 2 and "(seed: saved 0, given 3)" in err
    assert not (old / "config.json").exists()
    assert _cli(capsys, sim_logs, old, *same)[0] == 0
    assert (old / "config.json").read_bytes() == rec


# ----------------------------------------------------------------------------- 2. paths

def test_a_workdir_that_is_a_file_is_refused_before_anything_else(sim_logs, tmp_path, capsys,
                                                                  monkeypatch):
    path = tmp_path / "wd"
    path.write_text("keep me")
    monkeypatch.setattr(main_mod, "train_and_evaluate", lambda *a, **k: pytest.fail("ran"))
    rc, out, err = _cli(capsys, sim_logs, path, "--config", "tiny")
    assert rc == 2 and out == ""
    assert err == f"python -m train: error: --workdir: {path} is a file\n"
    assert path.read_text() == "keep me"


@pytest.mark.parametrize("role", ["logs", "heldout"])
def test_bad_input_files_are_named_and_leave_no_workdir_behind(sim_logs, tmp_path, capsys, role):
    wd = tmp_path / "new" / "wd"
    kw = "logs_path" if role == "logs" else "heldout"
    missing = str(tmp_path / "nope.parquet")
    rc, _, err = _cli(capsys, sim_logs, wd, "--config", "tiny", **{kw: missing})
    assert rc == 2 and err == f"python -m train: error: --{role}: no such file {missing}\n"
    text = tmp_path / "text.parquet"
    text.write_text("request_id,context\n")
    rc, _, err = _cli(capsys, sim_logs, wd, "--config", "tiny", **{kw: str(text)})
    assert rc == 2 and err.startswith(f"python -m train: error: --{role} {text}: file: not a "
                                      "readable Parquet file (")
    assert len(err.strip().splitlines()) == 1
    nocol = str(tmp_path / "nocol.parquet")  # Parquet, but without the rewards column
    pq.write_table(pq.read_table(sim_logs["train"]).drop(["rewards"]), nocol)
    rc, _, err = _cli(capsys, sim_logs, wd, "--config", "tiny", **{kw: nocol})
    assert rc == 2 and err.startswith(f"python -m train: error: --{role} {nocol}: ")
    assert not (tmp_path / "new").exists()  # nothing created for a run that cannot start


# ----------------------------------------------------------------------------- 3. context widths

@pytest.mark.parametrize("change, message", [
    (lambda log: {"context": log["context"][:, :2].copy()},
     "context: expected length 4 (as in --logs), got length 2"),
    (lambda log: {"context_ids": np.zeros((len(log["action"]), 3), np.int64)},
     "context_ids: expected none (as in --logs), got length 3"),
])
def test_a_heldout_log_of_another_context_width_is_refused(sim_logs, tmp_path, capsys, change,
                                                          message):
    world = sim.make_world(sim.SimConfig.tiny())
    log = sim.simulate_log(world, 300, 3)
    assert log["context"].shape[1] == 4
    other = str(tmp_path / "other.parquet")
    logs.write_log(other, **{**log, **change(log)})
    wd = tmp_path / "wd"
    rc, out, err = _cli(capsys, sim_logs, wd, "--config", "tiny", heldout=other)
    assert rc == 2 and out == ""
    assert err == f"python -m train: error: --heldout {other}: {message}\n"
    assert not wd.exists()


# ----------------------------------------------------------------------------- 4. Ctrl-C

def _ctrl_c_at(monkeypatch, module, name, n):
    """Wrap ``module.name`` so that its n-th call first sends this process a real SIGINT."""
    real, calls = getattr(module, name), []

    def wrapped(*a, **k):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)
    monkeypatch.setattr(module, name, wrapped)


def _leftovers(wd) -> list[str]:
    return [os.path.join(r, f) for r, dirs, files in os.walk(wd) for f in dirs + files
            if "tmp" in f]


def test_ctrl_c_during_training_is_one_line_and_the_same_command_resumes(
        finished, sim_logs, tmp_path, capsys, monkeypatch):
    wd = tmp_path / "wd"
    flags = ["--config", "tiny", "--epochs", "1"]
    # 10 steps: evaluations and checkpoints every ceil(10 / 4) = 3 steps and at the last
    _ctrl_c_at(monkeypatch, input_lib, "to_train_batch", 7)  # during step 7 (saved: 3, 6)
    rc, out, err = _cli(capsys, sim_logs, wd, *flags)
    assert rc == 130 and out == ""
    assert err == "python -m train: interrupted (resume with the same command)\n"
    assert sorted(os.listdir(wd / "checkpoints")) == ["3", "6"] and not _leftovers(wd)
    # an interrupted run exports nothing that looks final: only the provisional best_so_far
    assert not (wd / "selected_model").exists() and not (wd / "selected.json").exists()
    assert model_io.load_model(str(wd / "best_so_far"))[1]["extra"]["provisional"] is True
    monkeypatch.undo()
    rc, out, _ = _cli(capsys, sim_logs, wd, *flags)
    assert rc == 0 and json.loads(out)["final_step"] == 10
    # the resumed run selected and exported what the uninterrupted one did
    assert (wd / "selected.json").read_text() == (finished / "selected.json").read_text()


def test_ctrl_c_during_the_best_so_far_save_lets_it_complete(finished, sim_logs, tmp_path,
                                                             capsys, monkeypatch):
    wd = tmp_path / "wd"
    _ctrl_c_at(monkeypatch, publish.model_io, "save_model", 1)  # the first evaluation, step 3
    rc, _, err = _cli(capsys, sim_logs, wd, "--config", "tiny", "--epochs", "1")
    assert rc == 130 and err == "python -m train: interrupted (resume with the same command)\n"
    model, info = model_io.load_model(str(wd / "best_so_far"))  # the save completed
    assert info["extra"]["step"] == 3 and info["params_hash"] == model_io.params_hash(model)
    assert not _leftovers(wd) and os.listdir(wd / "checkpoints") == []
    assert not (wd / "selected_model").exists() and not (wd / "selected.json").exists()
    with pytest.raises(FileNotFoundError, match="has not finished"):
        load_selected(str(wd))
    monkeypatch.undo()
    rc, out, _ = _cli(capsys, sim_logs, wd, "--config", "tiny", "--epochs", "1")
    assert rc == 0 and json.loads(out)["final_step"] == 10
    assert (wd / "selected.json").read_text() == (finished / "selected.json").read_text()


def test_a_torn_last_metrics_line_is_dropped_on_resume_and_a_damaged_one_named(tmp_path):
    """A full disk cut metrics.jsonl's last append short; every resume then failed with a bare
    JSONDecodeError. The torn last line is dropped; a damaged line before it is named."""
    import json

    import pytest

    from train.metrics import METRICS_FILE, MetricsWriter

    path = tmp_path / METRICS_FILE
    good = [json.dumps({"step": s, "loss": 0.5}) + "\n" for s in (1, 2, 3)]
    path.write_text("".join(good) + '{"step": 4, "lo')
    MetricsWriter(str(tmp_path)).truncate_after(3)
    assert path.read_text() == "".join(good)
    path.write_text("".join(good) + '{"step": 4}')  # parses, but no newline: torn too
    MetricsWriter(str(tmp_path)).truncate_after(10)
    assert path.read_text() == "".join(good)
    path.write_text(good[0] + "garbage\n" + good[1])
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not a JSON record"):
        MetricsWriter(str(tmp_path)).truncate_after(10)
