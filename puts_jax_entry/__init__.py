"""The entry points' first module: the ``puts-jax`` console script (``pyproject.toml``,
``[project.scripts]``) and ``python -m train`` (``train/__main__.py``) start here.

Their imports (jax, flax, numpy) take half a second to two seconds. A Ctrl-C raised inside them
ended in a KeyboardInterrupt traceback, or worse: numpy's C start-up turns it into an ImportError,
jax's garbage-collection callback swallows it (the command then ran on), and an interrupted
extension once crashed the interpreter. So ``imported`` holds SIGINT off while the imports run
and afterwards ends the command with one line, ``PROG: interrupted``, and exit status 130, as a
Ctrl-C during a command does. This module imports nothing heavy.
"""

import importlib
import logging
import os
import signal
import sys


def imported(module: str, prog: str):
    """``import module`` with SIGINT held off; the module, or None after printing
    ``PROG: interrupted`` to stderr when a Ctrl-C came meanwhile (the caller exits 130). Where
    SIGINT is ignored or handled by someone else (a background job, an embedding program), the
    import runs as it is."""
    got = []
    held = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if held:
        signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        mod = importlib.import_module(module)
    finally:
        if held:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if got:
        print(f"{prog}: interrupted", file=sys.stderr)
        return None
    return mod


def _loop_closed(exc) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def quiet_event_loop_closed() -> None:
    """Drop one known harmless traceback: after orbax fails to restore parameters (a damaged
    file), tensorstore's native threads keep calling back into an asyncio loop that orbax has
    already closed, and Python prints ``RuntimeError: Event loop is closed`` once per callback
    (0 to 25 lines after the command's own one-line error, measured over runs of
    ``puts-jax score`` on a registry with one flipped byte). Only that exception is dropped, from
    ``sys.excepthook`` (tracebacks printed for native callbacks), ``sys.unraisablehook`` and
    ``threading.excepthook``; every other error prints as before."""
    import threading

    def wrap(default, exc_of):
        def hook(*args):
            if _loop_closed(exc_of(*args)):
                return None
            return default(*args)
        return hook

    sys.excepthook = wrap(sys.excepthook, lambda typ, value, tb: value)
    sys.unraisablehook = wrap(sys.unraisablehook, lambda u: u.exc_value)
    threading.excepthook = wrap(threading.excepthook, lambda a: a.exc_value)


LIBRARY_LOGGERS = ("absl",)  # orbax (and jax's absl users) log through the "absl" logger
SHOWN_AFTER = (0, 3)  # exit statuses after which held library logs are shown: done, no selection


class HeldLogs(logging.Handler):
    """Holds the records of ``LIBRARY_LOGGERS`` while a command runs. orbax logs a failed save
    at ERROR with its tracebacks: ``policy publish`` on a full disk printed 5 records, 246
    lines, before the command's own one-line error. ``finish(show)`` either prints the held
    records through the loggers' usual handlers and lets later ones through (``show``: the
    command succeeded, or ended without its own line), or drops them and every later one (a
    thread of orbax may still log): the command's error line said what failed."""

    def __init__(self):
        super().__init__()
        self.records, self.dropping = [], False
        self.loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
        self.propagate = [logger.propagate for logger in self.loggers]
        for logger in self.loggers:
            logger.addHandler(self)
            logger.propagate = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.dropping:
            self.records.append(record)

    def finish(self, show: bool) -> None:
        held, self.records = self.records, []
        if not show:
            self.dropping = True
            return
        for logger, propagate in zip(self.loggers, self.propagate):
            logger.removeHandler(self)
            logger.propagate = propagate
        for record in held:
            logging.getLogger(record.name).handle(record)


def main() -> int:
    """The ``puts-jax`` console script: ``puts_jax.cli.main()`` (which handles a Ctrl-C from
    parsing on), or 130 after a Ctrl-C during its imports. Library logs (orbax's, through absl)
    are held while the command runs and shown only where it succeeds (``HeldLogs``): a command
    that fails with its one-line error shows that line alone. See ``finished`` for its end."""
    quiet_event_loop_closed()
    held = HeldLogs()
    cli = imported("puts_jax.cli", "puts-jax")
    if cli is None:
        held.finish(False)
        return 130
    try:
        status = cli.main()
    except BaseException:  # a traceback: whatever the libraries said may explain it
        held.finish(True)
        raise
    held.finish(status in SHOWN_AFTER)
    return finished(status)


def finished(status: int) -> int:
    """End a command that returned ``status``: its files are written and closed. A Ctrl-C from
    here on is ignored: one during the interpreter's teardown ended the process by SIGINT with
    no message, after the command had committed (an operator seeing 130 would publish again).
    After an interrupt (130, or 143 for SIGTERM) the process exits at once (``os._exit``, stdio
    flushed): a teardown
    with jax's and orbax's native threads interrupted mid-call ended in SIGSEGV (139) in 4 of 5
    Ctrl-Cs during ``policy publish``'s parameter save; everything the command wrote is already
    committed or cleaned up by then."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if status in (130, 143):  # Ctrl-C or SIGTERM
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)
    return status
