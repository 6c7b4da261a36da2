"""``puts_jax.staging``: one all-or-nothing publish for the simulator's data set and the sweep's
frontier files. A process killed at ANY point (a real SIGKILL in a child process, or a kill
emulated by an exception nothing catches) leaves, once recovery has run, the whole old set or the
whole new one, byte for byte; Ctrl-C during the publish is held until the new set is in; the
steps happen in the documented order (each file fsynced, COMPLETE, renames, folder fsync); and
both the simulator and the sweep recover before they write."""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from puts_jax import cli, report, staging
from puts_jax.data import simulator as sim
from conftest import make_tiny_world, snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = dict(n_logs=300, n_heldout=100, n_eval=50, n_requests=20, n_evaluation=200)
KINDS = ("json", "png", "html")
OLD = {f"frontier.{k}": f"old {k}\n".encode() for k in KINDS}
NEW = {f"frontier.{k}": f"new {k} set\n".encode() for k in KINDS}  # the driver's files, too


class Killed(BaseException):
    """A kill emulated in-process: no ``except Exception`` catches it (cleanup still runs, as
    for any exception; the SIGKILL tests below have none)."""


def _moves_into(out, hook):
    """An ``os.replace`` that calls ``hook(n)`` before the n-th (1-based) move into ``out``."""
    real, n = os.replace, []

    def replace(src, dst):
        if os.path.dirname(os.fspath(dst)) == str(out):
            n.append(dst)
            hook(len(n))
        real(src, dst)
    return replace


# ----------------------------------------------------------------------------- a real SIGKILL

DRIVER = r"""
import json, os, shutil, signal, sys
mode, out, kind, arg = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if mode == "frontier":
    from puts_jax import report
    stage = os.path.join(out, report.FRONTIER_STAGING)
else:
    from puts_jax.data import simulator as sim
    stage = os.path.join(out, sim.STAGING)
real_replace, real_rmtree, seen = os.replace, shutil.rmtree, []

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def replace(src, dst):
    d, base = os.path.dirname(os.fspath(dst)), os.path.basename(os.fspath(dst))
    if kind == "staged" and d == stage and base != "COMPLETE":
        seen.append(base)
        if len(seen) == arg:  # before the arg-th file lands in the staging folder
            die()
    if kind == "complete" and d == stage and base == "COMPLETE":
        die()
    if kind == "moved" and d == out:
        seen.append(base)
        if len(seen) == arg + 1:  # after arg renames into out
            die()
    real_replace(src, dst)

def rmtree(path, *a, **kw):
    if kind == "rmtree" and os.fspath(path) == stage:  # every rename done, folder not gone
        die()
    real_rmtree(path, *a, **kw)

os.replace, shutil.rmtree = replace, rmtree
if mode == "frontier":
    report.publish_files(out, {f"frontier.{k}": f"new {k} set\n".encode()
                               for k in ("json", "png", "html")})
else:
    sim.write_simulation(out, sim.SimConfig.tiny(), seed=2, **json.loads(sys.argv[5]))
sys.exit(7)  # not killed: the kill point was never reached
"""


def _run_killed(tmp_path, mode, out, kind, arg, *extra):
    """Run the publish of ``mode`` in a child process that SIGKILLs itself at (kind, arg)."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, str(driver), mode, str(out), kind, str(arg), *extra],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])


# (kill point, what the folder holds right after the kill, recovery's answer, the final set)
POINTS = [
    (("staged", 2), "old", "removed", OLD),  # one file staged, the second not yet
    (("complete", 0), "old", "removed", OLD),  # all three staged and fsynced, no COMPLETE
    (("moved", 0), "old", "completed", NEW),  # committed, nothing moved
    (("moved", 1), "mixed", "completed", NEW),  # killed between the first and second rename
    (("moved", 2), "mixed", "completed", NEW),  # killed before the last rename
    (("rmtree", 0), "new", "completed", NEW),  # everything moved, staging folder still there
]


@pytest.mark.parametrize("point, after_kill, answer, final", POINTS,
                         ids=[f"{k}{a}" for (k, a), *_ in POINTS])
def test_sigkill_at_any_point_of_the_frontier_publish_recovers_to_one_whole_set(
        tmp_path, point, after_kill, answer, final):
    out = tmp_path / "out"
    report.publish_files(str(out), OLD)
    (out / "notes.txt").write_bytes(b"mine")
    _run_killed(tmp_path, "frontier", out, *point)
    stage = out / report.FRONTIER_STAGING
    left = {k: v for k, v in snapshot(out).items() if not k.startswith(".")}
    if after_kill == "mixed":  # the state the old publish_files left for good
        moved = point[1]
        names = list(NEW)
        assert left == {**{n: NEW[n] for n in names[:moved]},
                        **{n: OLD[n] for n in names[moved:]}, "notes.txt": b"mine"}
    else:
        assert left == {**(OLD if after_kill == "old" else NEW), "notes.txt": b"mine"}
    assert stage.is_dir() and (stage / "COMPLETE").exists() == (answer == "completed")
    assert report.recover_frontier(str(out)) == answer
    assert snapshot(out) == {**final, "notes.txt": b"mine"}  # no staging folder either
    assert report.recover_frontier(str(out)) is None


# ----------------------------------------------------------------------------- the simulator

@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """The complete seed-1 and seed-2 data sets, each written once, uninterrupted."""
    d = tmp_path_factory.mktemp("sets")
    for seed in (1, 2):
        sim.write_simulation(str(d / f"seed{seed}"), sim.SimConfig.tiny(), seed=seed, **SIZES)
    return {s: snapshot(d / f"seed{s}") for s in (1, 2)}


@pytest.fixture
def old(sets, tmp_path):
    out = tmp_path / "sim"
    sim.write_simulation(str(out), sim.SimConfig.tiny(), seed=1, **SIZES)
    assert snapshot(out) == sets[1]
    return out


def test_simulate_killed_between_two_renames_recovers_the_new_set_byte_identical(
        sets, old, monkeypatch):
    def kill_after_first(n):
        if n == 2:
            raise Killed
    monkeypatch.setattr(os, "replace", _moves_into(old, kill_after_first))
    with pytest.raises(Killed):
        sim.write_simulation(str(old), sim.SimConfig.tiny(), seed=2, **SIZES)
    monkeypatch.undo()
    visible = {k: v for k, v in snapshot(old).items() if not k.startswith(".")}
    assert visible["logs.parquet"] == sets[2]["logs.parquet"]  # moved before the kill
    assert visible["heldout.parquet"] == sets[1]["heldout.parquet"]  # a mix until recovery
    assert sim.recover_staging(str(old)) == "completed"
    assert snapshot(old) == sets[2]  # the whole new set, as an uninterrupted run wrote it


@pytest.mark.parametrize("point, answer, seed", [(("complete", 0), "removed", 1),
                                                 (("moved", 3), "completed", 2)])
def test_simulate_sigkilled_before_or_after_complete_recovers_on_the_next_run(
        sets, old, tmp_path, point, answer, seed):
    _run_killed(tmp_path, "simulate", old, *point, json.dumps(SIZES))
    stage = old / sim.STAGING
    assert (stage / "COMPLETE").exists() == (answer == "completed")
    assert sim.recover_staging(str(old)) == answer
    assert snapshot(old) == sets[seed]  # old set intact / new set whole; staging gone


def test_simulate_interrupted_into_a_new_folder_leaves_no_folder(tmp_path, monkeypatch):
    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(sim.logs, "write_log", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sim.write_simulation(str(tmp_path / "a" / "b"), sim.SimConfig.tiny(), seed=1, **SIZES)
    assert os.listdir(tmp_path) == []  # "a" and "a/b" were made by the run: removed again


# ----------------------------------------------------------------------------- the frontier

def test_frontier_publish_killed_between_renames_recovers_the_new_set(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _half_moved(out, monkeypatch)
    assert (out / "frontier.json").read_bytes() == NEW["frontier.json"]
    assert (out / "frontier.png").read_bytes() == OLD["frontier.png"]  # a mix until recovery
    assert (out / report.FRONTIER_STAGING / "COMPLETE").exists()
    assert report.recover_frontier(str(out)) == "completed"
    assert snapshot(out) == NEW


def _half_moved(out, monkeypatch):
    """``out`` holding a frontier set a killed publish left half moved (new json, old rest)."""
    report.publish_files(str(out), OLD)
    monkeypatch.setattr(os, "replace", _moves_into(out, lambda n: n == 2 and _raise(Killed)))
    with pytest.raises(Killed):
        report.publish_files(str(out), NEW)
    monkeypatch.undo()


def _raise(e):
    raise e


def test_readers_of_a_frontier_settle_a_half_moved_set_before_reading(tmp_path, monkeypatch):
    from puts_jax.cli_checks import UsageError, read_frontier
    out = tmp_path / "out"
    _half_moved(out, monkeypatch)
    # report / policy select / score read through cli_checks.read_frontier: the set is made
    # whole first (these bytes are no frontier document, so the read itself then fails)
    with pytest.raises(UsageError, match="not a frontier.json"):
        read_frontier(str(out / "frontier.json"))
    assert snapshot(out) == NEW

    _half_moved(tmp_path / "ro", monkeypatch)  # a folder where the moves fail: said, not read

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(UsageError, match=r"^--frontier: a killed sweep left the frontier set in "
                                         rf"{tmp_path / 'ro'} half moved and it could not be "
                                         r"settled \("):
        read_frontier(str(tmp_path / "ro" / "frontier.json"))


def test_a_failed_rename_is_named_and_the_next_publish_moves_the_rest_in_first(
        tmp_path, monkeypatch):
    out = tmp_path / "out"
    report.publish_files(str(out), OLD)

    def fail_second(n):
        if n == 2:
            raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "replace", _moves_into(out, fail_second))
    stage = out / report.FRONTIER_STAGING
    with pytest.raises(OSError, match=rf"^out: moving the new frontier files into {out} failed at "
                                      rf"frontier.png \(\[Errno 5\] Input/output error\); the rest "
                                      rf"waits in {stage}, and the next frontier written into "
                                      rf"{out} moves it in first$"):
        report.publish_files(str(out), NEW)
    monkeypatch.undo()
    newer = {k: v + b"2" for k, v in NEW.items()}
    seen = []
    real = staging._recover

    def recover(target):  # the next publish settles the half-moved set before it stages
        seen.append(snapshot(out))
        return real(target)
    monkeypatch.setattr(staging, "_recover", recover)
    report.publish_files(str(out), newer)
    assert seen[0]["frontier.json"] == NEW["frontier.json"]
    assert snapshot(out) == newer


def test_the_steps_run_in_the_documented_order(tmp_path, monkeypatch):
    out = tmp_path / "out"
    report.publish_files(str(out), OLD)
    out_r = os.path.realpath(out)
    stage = os.path.join(out_r, report.FRONTIER_STAGING)
    events, real_fsync, real_replace, real_rmtree = [], os.fsync, os.replace, shutil.rmtree

    def name(path):
        path = os.path.realpath(path)
        if path in (stage, out_r):
            return "stage" if path == stage else "out"
        return os.path.basename(path)

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if not os.path.basename(path).startswith(".tmp-"):
            events.append(f"fsync {name(path)}")
        real_fsync(fd)

    def replace(src, dst):
        where = "move" if os.path.realpath(os.path.dirname(dst)) == out_r else "stage"
        events.append(f"{where} {name(dst)}")
        real_replace(src, dst)

    def rmtree(path, *a, **kw):
        events.append(f"rmtree {name(path)}")
        real_rmtree(path, *a, **kw)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    report.publish_files(str(out), NEW)
    files = list(NEW)
    assert events == ([f"stage {f}" for f in files] + [f"fsync {f}" for f in files] +
                      ["fsync stage", "stage COMPLETE", "fsync stage"] +
                      [f"move {f}" for f in files] + ["fsync out", "rmtree stage", "fsync out"])


# ----------------------------------------------------------------------------- Ctrl-C

@pytest.mark.parametrize("at", ["COMPLETE", "second move", "rmtree"])
def test_ctrl_c_during_the_publish_is_held_and_raised_after_the_new_set_is_in(
        tmp_path, monkeypatch, at):
    out = tmp_path / "out"
    report.publish_files(str(out), OLD)
    real_replace, real_rmtree, sent = os.replace, shutil.rmtree, []

    def send():
        sent.append(1)
        signal.raise_signal(signal.SIGINT)

    def replace(src, dst):
        if not sent and ((at == "COMPLETE" and os.path.basename(dst) == "COMPLETE") or
                         (at == "second move" and os.path.basename(dst) == "frontier.png"
                          and os.path.dirname(dst) == str(out))):
            send()
        real_replace(src, dst)

    def rmtree(path, *a, **kw):
        if at == "rmtree" and not sent:
            send()
        real_rmtree(path, *a, **kw)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        report.publish_files(str(out), NEW)
    monkeypatch.undo()
    assert sent and snapshot(out) == NEW  # the whole new set, no staging folder
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_during_recovery_is_held_until_the_set_is_in(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _half_moved(out, monkeypatch)

    def interrupt(n):
        if n == 1:
            signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(os, "replace", _moves_into(out, interrupt))
    with pytest.raises(KeyboardInterrupt):
        report.recover_frontier(str(out))
    monkeypatch.undo()
    assert snapshot(out) == NEW


def test_recovery_waits_for_a_live_writer_of_the_folder(tmp_path):
    out = tmp_path / "out"
    stage = out / report.FRONTIER_STAGING
    stage.mkdir(parents=True)
    (stage / "frontier.json").write_bytes(b"being written by a live run")
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a running publish holds
    answer = []
    t = threading.Thread(target=lambda: answer.append(report.recover_frontier(str(out))))
    t.start()
    t.join(0.5)
    assert t.is_alive() and (stage / "frontier.json").exists()  # not settled under the writer
    os.close(fd)
    t.join(10)
    assert answer == ["removed"] and os.listdir(out) == []


# ----------------------------------------------------------------------------- the sweep

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    make_tiny_world(d, n_logs=300, n_heldout=100, n_evaluation=300, n_eval=50, n_requests=10)
    return {"model": str(d / "model"), "ev": str(d / "data" / "evaluation.parquet"),
            "logs": str(d / "data" / "logs.parquet")}


def _sweep(w, logs, out):
    return cli.main(["sweep", "--model", w["model"], "--logs", logs, "--out", str(out),
                     "--n-lambdas", "3", "--no-halves", "--bootstrap", "0"])


def test_a_sweep_killed_between_renames_is_recovered_by_the_next_sweep_before_it_writes(
        world, tmp_path, monkeypatch):
    out = tmp_path / "front"
    assert _sweep(world, world["ev"], out) == 0
    old = snapshot(out)
    rendered, real_render = [], report.render_frontier

    def render(doc, *a, **kw):
        rendered.append(real_render(doc, *a, **kw))
        return rendered[-1]

    def kill_after_first(n):
        if n == 2:
            raise Killed
    monkeypatch.setattr(report, "render_frontier", render)
    monkeypatch.setattr(os, "replace", _moves_into(out, kill_after_first))
    with pytest.raises(Killed):
        _sweep(world, world["logs"], out)  # another log: another frontier
    monkeypatch.undo()
    new = {f"frontier.{k}": b for k, b in rendered[0].items()}
    assert new["frontier.json"] != old["frontier.json"]
    assert (out / "frontier.json").read_bytes() == new["frontier.json"]
    assert (out / "frontier.png").read_bytes() == old["frontier.png"]  # a mix until recovery

    class Stop(BaseException):
        pass
    seen = []

    def write_frontier(out_dir, doc, *a, **kw):  # the next sweep, stopped where it would write
        seen.append(snapshot(out_dir))
        raise Stop
    monkeypatch.setattr(report, "write_frontier", write_frontier)
    with pytest.raises(Stop):
        _sweep(world, world["ev"], out)
    assert seen == [new]  # recovered to the killed run's whole set (no staging folder left)
