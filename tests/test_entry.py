"""The console script's end (``puts_jax_entry.finished``): once a command has returned, a Ctrl-C
no longer changes its exit status, and an interrupted command exits 130 without the
interpreter's teardown."""

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)


def test_a_ctrl_c_after_the_command_returned_is_ignored():
    p = _run("import os, signal, sys, puts_jax_entry\n"
             "status = puts_jax_entry.finished(0)\n"
             "os.kill(os.getpid(), signal.SIGINT)\n"
             "print('still here', flush=True)\n"
             "sys.exit(status)")
    assert (p.returncode, p.stdout, p.stderr) == (0, "still here\n", "")


def test_an_interrupted_command_exits_130_at_once_with_its_output_flushed():
    p = _run("import atexit, sys, puts_jax_entry\n"
             "atexit.register(lambda: print('teardown ran'))\n"
             "print('partial output', end='')\n"
             "print('puts-jax: interrupted', file=sys.stderr)\n"
             "sys.exit(puts_jax_entry.finished(130))")
    assert (p.returncode, p.stdout, p.stderr) == (130, "partial output",
                                                  "puts-jax: interrupted\n")


def test_only_the_event_loop_closed_race_is_silenced():
    """quiet_event_loop_closed drops RuntimeError('Event loop is closed') (orbax/tensorstore
    callbacks after a failed restore printed up to 25 lines after the command's one-line error)
    from sys.excepthook, sys.unraisablehook and threading.excepthook; any other error prints."""
    p = _run("import sys, threading, puts_jax_entry\n"
             "puts_jax_entry.quiet_event_loop_closed()\n"
             "e = RuntimeError('Event loop is closed')\n"
             "sys.excepthook(RuntimeError, e, None)\n"
             "t = threading.Thread(target=lambda: (_ for _ in ()).throw(e)); t.start(); t.join()\n"
             "class U: pass\n"
             "u = U(); u.exc_type, u.exc_value, u.exc_traceback, u.err_msg, u.object = "
             "RuntimeError, e, None, None, None\n"
             "sys.unraisablehook(u)\n"
             "print('quiet so far', file=sys.stderr, flush=True)\n"
             "sys.excepthook(RuntimeError, RuntimeError('something else'), None)\n")
    assert p.returncode == 0
    assert p.stderr.startswith("quiet so far\n")
    assert "RuntimeError: something else" in p.stderr and "Event loop" not in p.stderr
