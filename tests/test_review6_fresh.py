"""A new user's review of multi-process training (``python -m train --coordinator ...``): what a
process does when the others never come, were started with other flags, another --workdir, or
stop mid-run; the port of process 0 already taken; the JSON line alone on stdout."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from puts_jax.checks import InputError
from train import main as train_main
from train import processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _argv(sim_logs, workdir, *extra):
    return ["--config", "tiny", "--logs", sim_logs["train"], "--heldout", sim_logs["heldout"],
            "--workdir", str(workdir), *extra]


def test_process_0_on_a_port_in_use_is_one_line_naming_the_port(sim_logs, tmp_path, capsys):
    # before: JAX's coordinator segfaulted (exit 139) after 'Failed to add port to server'
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        port = s.getsockname()[1]
        argv = _argv(sim_logs, tmp_path / "w", "--coordinator", f"127.0.0.1:{port}",
                     "--num-processes", "2", "--process-id", "0")
        assert train_main.main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"python -m train: error: --coordinator: port {port} is in use on this machine, where "
        "process 0 listens: choose a free port (the same --coordinator for every process)")
    assert not (tmp_path / "w").exists()


def test_join_timeout_below_one_second_is_refused(sim_logs, tmp_path, capsys):
    argv = _argv(sim_logs, tmp_path / "w", "--coordinator", "127.0.0.1:1", "--num-processes", "2",
                 "--process-id", "1", "--join-timeout", "0")
    assert train_main.main(argv) == 2
    assert capsys.readouterr().err.strip() == \
        "python -m train: error: --join-timeout: must be >= 1 second, got 0"


def _fake_processes(monkeypatch, tmp_path, configs, inputs, workdirs):
    """check_processes_agree as process 0 of len(configs) processes, the others' vectors
    computed by the same code (each its config, inputs and workdir)."""
    import jax

    vecs, calls = [], []

    def gather(vec):
        calls.append(vec)
        if len(calls) == 1:  # the fingerprints: process 0's (this call) and the others'
            token = int(vec[-1])
            rows = [vec]
            for cfg, inp in zip(configs[1:], inputs[1:]):
                keys = sorted(cfg)
                rows.append(np.array([processes._h32(cfg[k]) for k in keys]
                                     + [processes._h32([inp[r]["size"], inp[r]["sha256"]])
                                        for r in sorted(inp)] + [0], np.int32))
            vecs.append(token)
            return np.stack(rows)
        seen = []  # the second gather: whether each process's --workdir holds process 0's token
        for w in workdirs:
            p = os.path.join(w, processes.TOKEN_FILE)
            seen.append(int(os.path.exists(p) and int(open(p).read()) == vecs[0]))
        return np.array(seen, np.int32)[:, None]

    monkeypatch.setattr(processes, "_gather", gather)
    monkeypatch.setattr(jax, "process_count", lambda: len(configs))
    monkeypatch.setattr(jax, "process_index", lambda: 0)


def _inputs(sha="a"):
    return {"logs": {"size": 10, "sha256": sha}, "heldout": {"size": 5, "sha256": "h"}}


def test_processes_started_alike_pass(monkeypatch, tmp_path):
    cfg = {"seed": 0, "epochs": 1, "batch_size": 64}
    _fake_processes(monkeypatch, tmp_path, [cfg, dict(cfg)], [_inputs(), _inputs()],
                    [str(tmp_path), str(tmp_path)])
    processes.check_processes_agree(cfg, _inputs(), str(tmp_path))


def test_processes_with_other_epochs_logs_or_workdir_are_refused_naming_them(monkeypatch,
                                                                            tmp_path):
    # before: process 1 with --epochs 2 trained on; at process 0's first checkpoint both hung
    # without a word (2 processes, tiny: metrics stopped at step 1172 for 5 minutes and more)
    cfg = {"seed": 0, "epochs": 1, "batch_size": 64}
    other = tmp_path / "other"
    other.mkdir()
    _fake_processes(monkeypatch, tmp_path, [cfg, {**cfg, "epochs": 2}, cfg],
                    [_inputs(), _inputs(), _inputs("b")],
                    [str(tmp_path), str(tmp_path), str(other)])
    with pytest.raises(InputError) as err:
        processes.check_processes_agree(cfg, _inputs(), str(tmp_path))
    assert str(err.value) == (
        "--epochs: the 3 processes were not started alike: --epochs differs from process 0's "
        "on process 1; --logs differs from process 0's on process 2; --workdir differs from "
        "process 0's on process 2 (not the folder process 0 writes in: every process needs the "
        "same --workdir, on a shared file system); start every process with the same command, "
        "only --process-id changing")


def test_one_process_alone_is_a_no_op(tmp_path):
    processes.check_processes_agree({"seed": 0}, _inputs(), str(tmp_path))
    assert not (tmp_path / processes.TOKEN_FILE).exists()


# --- subprocess runs: real processes joined through jax.distributed (slow) -------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(sim_logs, workdir, port, pid, *extra, procs=2):
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PYTHONPATH": ROOT}
    return subprocess.Popen(
        [sys.executable, "-m", "train", *_argv(sim_logs, workdir, "--coordinator",
                                               f"127.0.0.1:{port}", "--num-processes",
                                               str(procs), "--process-id", str(pid), *extra)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_process_whose_peers_never_come_stops_after_join_timeout(sim_logs, tmp_path):
    # before: silent for 300 s, then SIGABRT (exit 134) with a C++ stack trace
    p = _start(sim_logs, tmp_path / "w", _free_port(), 1, "--join-timeout", "3")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("python -m train: process 1 of 2: joining at 127.0.0.1:")
    assert lines[-1].startswith("python -m train: error: --coordinator: process 1: not all 2 "
                                "processes joined at 127.0.0.1:")
    assert "within 3 s (--join-timeout)" in lines[-1]
    assert out == ""


@pytest.mark.slow
def test_ctrl_c_while_joining_ends_the_wait_at_once(sim_logs, tmp_path):
    # before: Python raises KeyboardInterrupt only once JAX returns: the wait went on to the
    # join timeout (300 s, then SIGABRT)
    p = _start(sim_logs, tmp_path / "w", _free_port(), 0, "--join-timeout", "200")
    first = p.stderr.readline()
    assert first.startswith("python -m train: process 0 of 2: joining at 127.0.0.1:")
    time.sleep(1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)  # far below the 200 s join timeout
    assert p.returncode == 130, err
    assert err.strip() == "python -m train: interrupted"


@pytest.mark.slow
def test_processes_with_other_seeds_both_stop_with_the_same_line(sim_logs, tmp_path):
    port = _free_port()
    ps = [_start(sim_logs, tmp_path / "w", port, 0),
          _start(sim_logs, tmp_path / "w", port, 1, "--seed", "7")]
    outs = [p.communicate(timeout=300) for p in ps]
    for p, (out, err) in zip(ps, outs):
        assert p.returncode == 2, err
        assert out == ""  # gloo's '[Gloo] Rank I is connected' line goes to stderr
        assert err.strip().splitlines()[-1] == (
            "python -m train: error: --seed: the 2 processes were not started alike: --seed "
            "differs from process 0's on process 1; start every process with the same command, "
            "only --process-id changing")
    assert not (tmp_path / "w" / "config.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_of_one_process_stops_the_other_with_one_line_and_both_resume(sim_logs,
                                                                             tmp_path, sig):
    # SIGTERM: JAX's preemption notifier held it and the process trained on; it now stops as
    # Ctrl-C does (train.main._distributed), and the peer exits at once (train/__main__.py)
    # before: the other process printed a JaxRuntimeError traceback, then hung in JAX's
    # shutdown barrier (minutes)
    port = _free_port()
    argv = ("--epochs", "200")  # 600 rows, batch 64: about 10 steps an epoch
    ps = [_start(sim_logs, tmp_path / "w", port, i, *argv) for i in range(2)]
    metrics = tmp_path / "w" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.exists() or
                                      len(metrics.read_text().splitlines()) < 20):
        time.sleep(0.1)
    ps[1].send_signal(sig)
    (out0, err0), (out1, err1) = [p.communicate(timeout=120) for p in ps]
    assert ps[1].returncode == 130, err1
    assert ps[0].returncode == 1, err0
    assert err0.strip().splitlines()[-1].startswith(
        "python -m train: error: process 0: another process of the run stopped (")
    assert err0.strip().endswith("committed checkpoints stay: rerun every process with the "
                                 "same command to resume")
    port = _free_port()
    ps = [_start(sim_logs, tmp_path / "w", port, i, *argv) for i in range(2)]
    for p in ps:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert json.loads(out)["final_step"] > 20  # stdout: the JSON line alone
