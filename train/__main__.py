"""``python -m train``. The package loads nothing heavy (``train/__init__.py`` imports its public
names on first use); jax and the trainer are imported here with SIGINT held off
(``puts_jax_entry.imported``), and the arguments parsed inside a Ctrl-C handler, so an interrupt
at any point ends like one during training: one line and exit status 130."""

import os
import sys

from puts_jax_entry import finished, imported, quiet_event_loop_closed

quiet_event_loop_closed()

trainer = imported("train.main", "python -m train")
if trainer is None:
    sys.exit(130)
try:
    status = trainer.main()
except KeyboardInterrupt:  # while parsing; train.main.main handles it from there on
    print("python -m train: interrupted", file=sys.stderr)
    status = 130
if status != 0 and trainer.JOINED:  # a failed multi-process run: no teardown, whose shutdown
    sys.stdout.flush()               # barrier would wait minutes for the processes that stopped
    sys.stderr.flush()               # and then abort with a C++ stack trace
    os._exit(status)
sys.exit(finished(status))  # as puts-jax: after a Ctrl-C, exit at once (no teardown)
