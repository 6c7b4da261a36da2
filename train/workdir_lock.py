"""One train at a time in a workdir: an exclusive, non-blocking ``fcntl.flock`` on
``workdir/train.lock``.

Two runs in one workdir would append to one ``metrics.jsonl``, truncate it under each other on
resume, and save the same checkpoint steps; the second run is refused instead, before it reads
or writes anything there. The lock file holds the holder's pid (for the message) and stays in the
workdir; the lock itself is the kernel's, released when the holder exits or is killed, so a
crashed run never leaves the workdir locked. Advisory: only ``train`` takes it.
"""

from __future__ import annotations

import fcntl
import os

LOCK_FILE = "train.lock"


class WorkdirInUseError(RuntimeError):
    """Another live process holds the workdir's lock; ``pid`` is the one it recorded (or None)."""

    def __init__(self, workdir: str, pid: int | None):
        self.workdir, self.pid = workdir, pid
        holder = f" (pid {pid})" if pid is not None else ""
        super().__init__(f"{workdir} is in use by another train{holder}; wait for it to finish, "
                         "or train in another --workdir")


def _recorded_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


class WorkdirLock:
    """Held from ``acquire`` until ``release`` (or the process ends)."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self.fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        """Take the lock and record this pid; raises WorkdirInUseError when another process
        holds it (never waits). ``workdir`` must exist."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _recorded_pid(fd)
            os.close(fd)
            raise WorkdirInUseError(self.workdir, pid) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Release the lock (the file stays: deleting it could let two runs lock two files)."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
