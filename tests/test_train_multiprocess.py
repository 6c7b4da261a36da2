"""Multi-process training (``python -m train --coordinator ... --num-processes P --process-id I``):
each process takes its slice of the same global batches, so P processes train the parameters one
process with P devices trains (DESIGN.md section 6: multi-host through ``jax.distributed``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from train import input as input_lib
from train import main as train_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _arrays(n: int) -> input_lib.LogArrays:
    return input_lib.LogArrays(
        context=np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32),
        context_ids=None, action=np.arange(n, dtype=np.int32) % 4,
        rewards=np.ones((n, 2), np.float32))


def test_shards_are_slices_of_the_one_process_global_batches():
    n, B, P, epochs = 23, 3, 2, 2  # 23 rows, global batch 6: the last batch of an epoch is short
    whole = input_lib.BatchSource(_arrays(n), B * P, epochs, seed=5)
    shards = [input_lib.BatchSource(_arrays(n), B, epochs, 5, i, P) for i in range(P)]
    assert len(whole) == len(shards[0]) == len(shards[1]) == epochs * 4
    for step in range(len(whole)):
        joined = np.concatenate([s[step]["row"] for s in shards])
        np.testing.assert_array_equal(joined, whole[step]["row"])
        for key in ("context", "action", "rewards", "valid"):
            np.testing.assert_array_equal(
                np.concatenate([s[step][key] for s in shards]), whole[step][key])
    for e in range(epochs):  # each epoch still visits every row once
        rows = np.concatenate([whole[i]["row"] for i in range(4 * e, 4 * e + 4)])
        assert sorted(rows[rows >= 0]) == list(range(n))


@pytest.mark.parametrize("extra, message", [
    (["--num-processes", "2"], "--num-processes: multi-process training needs --coordinator, "
                               "--process-id as well"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
     "--process-id: must be in [0, 1] (--num-processes 2), got 2"),
    (["--coordinator", "h", "--num-processes", "2", "--process-id", "0"],
     "--coordinator: expected HOST:PORT, got 'h'"),
    (["--coordinator", "h:1", "--num-processes", "0", "--process-id", "0"],
     "--num-processes: must be >= 1, got 0"),
])
def test_distributed_flags_that_do_not_fit_are_one_line_naming_the_flag(sim_logs, tmp_path,
                                                                        capsys, extra, message):
    argv = ["--config", "tiny", "--logs", sim_logs["train"], "--heldout", sim_logs["heldout"],
            "--workdir", str(tmp_path / "w"), *extra]
    assert train_main.main(argv) == 2
    assert capsys.readouterr().err.strip() == f"python -m train: error: {message}"
    assert not (tmp_path / "w").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(data, workdir, *, procs: int = 0, env_extra=None, kill_after_checkpoint=False):
    """Run ``python -m train`` (tiny, one epoch): ``procs`` processes, or one (procs=0)."""
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PYTHONPATH": ROOT,
           **(env_extra or {})}
    args = [sys.executable, "-m", "train", "--config", "tiny", "--epochs", "1",
            "--logs", str(data / "logs.parquet"), "--heldout", str(data / "heldout.parquet"),
            "--workdir", str(workdir)]
    if not procs:
        return [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)]
    port = _free_port()
    return [subprocess.Popen([*args, "--coordinator", f"127.0.0.1:{port}", "--num-processes",
                              str(procs), "--process-id", str(i)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for i in range(procs)]


def _wait(ps, timeout=300):
    outs = [p.communicate(timeout=timeout) for p in ps]
    for p, (out, err) in zip(ps, outs):
        assert p.returncode == 0, err.decode()[-3000:]
    return outs


@pytest.mark.slow
def test_two_processes_train_what_one_process_with_two_devices_trains(tmp_path):
    from puts_jax import cli

    data = tmp_path / "data"
    assert cli.main(["simulate", "--out", str(data), "--preset", "tiny", "--n-logs", "30000",
                     "--n-heldout", "20000", "--n-evaluation", "1000", "--n-eval", "1000",
                     "--n-requests", "10"]) == 0
    _wait(_train(data, tmp_path / "one", env_extra={
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}))
    _wait(_train(data, tmp_path / "two", procs=2))
    # both killed once the first checkpoint is committed, then the same commands again
    ps = _train(data, tmp_path / "resumed", procs=2)
    ckpts = tmp_path / "resumed" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpts.exists() and any(
            p.name.isdigit() for p in ckpts.iterdir())):
        time.sleep(0.2)
    for p in ps:
        p.kill()
        p.wait()
    _wait(_train(data, tmp_path / "resumed", procs=2))

    def selected(name):
        return json.loads((tmp_path / name / "selected.json").read_text())

    def training_metrics(name):  # the train-step lines (held-out DR moves by float32 sums)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [line for line in lines if '"heldout"' not in line]

    assert selected("two")["params_hash"] == selected("one")["params_hash"]
    assert selected("two")["step"] == selected("one")["step"]
    assert training_metrics("two") == training_metrics("one")
    assert (tmp_path / "resumed" / "metrics.jsonl").read_text() == \
        (tmp_path / "two" / "metrics.jsonl").read_text()
    assert selected("resumed")["params_hash"] == selected("two")["params_hash"]
