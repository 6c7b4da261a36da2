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
