"""Publish a set of files all or nothing: the one mechanism behind ``simulate`` and the sweep.

A set (the simulator's five files, the sweep's three frontier files) is written into a staging
folder inside the destination folder, then moved into place. The order of operations, each step
durable before the next begins:

1. every file is written into ``out_dir/<stage>`` and fsynced, then the staging folder is fsynced;
2. ``COMPLETE`` (the JSON list of the set's file names) is written into the staging folder and
   fsynced, with the folder: from here on the new set is committed;
3. each file is renamed from the staging folder into ``out_dir``, then ``out_dir`` is fsynced;
4. the staging folder is removed.

Steps 2 to 4 run with Ctrl-C held off (``action_set.deferred_interrupt``), so an interrupt there
is delivered once the new set is in. A process killed outright (SIGKILL, power loss) can stop
anywhere; ``recover`` then settles the staging folder it left: one WITH ``COMPLETE`` is rolled
forward (the renames not yet done are done; a file already moved is skipped), one WITHOUT it is
deleted. After recovery ``out_dir`` holds the whole old set or the whole new one, never a mix.
``publish`` recovers first, and the simulator and the sweep recover when a run starts.

Writers of one folder are serialized by an advisory lock (``fcntl.flock``) on the folder
itself, so a run never settles a staging folder that another live run is still filling, and no
lock file is left in the folder. ``COMPLETE`` keeps the format of the simulator's earlier
staging folders, so a folder left by an older version is recovered too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
from typing import Callable, Sequence

from puts_jax.action_set import atomic_write_bytes, deferred_interrupt
from puts_jax.checks import InputError

COMPLETE = "COMPLETE"  # written into the staging folder once the whole set is there (step 2)


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a set goes, and how a failed move is explained."""

    out_dir: str  # the destination folder
    stage_name: str  # the staging folder's name in out_dir: hidden, fixed per kind of set, so
    # that the next run finds what a killed run left
    what: str  # the set in words, for error messages (e.g. "the new data set")
    retry: str  # what settles a half-moved set, in words (e.g. "the next simulate into out")

    @property
    def stage(self) -> str:
        return os.path.join(self.out_dir, self.stage_name)


def publish(target: Target, names: Sequence[str], write: Callable[[str], None]) -> list[str]:
    """Write the files ``names`` with ``write(stage_folder)`` and move them into
    ``target.out_dir`` as one set (the steps of the module docstring); returns their paths.

    ``out_dir`` and its missing parents are created; when the set fails before it is committed
    (an error or Ctrl-C inside ``write``, a file of ``names`` that ``write`` did not make, a full
    disk), the staging folder and the folders this call created are removed again, the old set
    stays as it was and the exception propagates. Files of ``out_dir`` not in ``names`` are
    never touched.
    Raises:
      InputError("out"): ``out_dir`` or one of its parents is a file (nothing written).
      FileNotFoundError: ``write`` returned without writing one of ``names``.
      OSError: a move into ``out_dir`` failed after the commit; the message names the file, and
        the rest of the set waits in the staging folder for ``recover``.
    """
    made = make_folders(target.out_dir)
    with _locked(target.out_dir):
        _recover(target)
        committed = False
        try:
            os.mkdir(target.stage)
            write(target.stage)
            for name in names:
                fsync(os.path.join(target.stage, name))
            fsync(target.stage)
            with deferred_interrupt():
                _commit(target.stage, names)
                committed = True
                _move_in(target, names)
        except BaseException:
            if not committed:  # the old set stays; nothing of the new one is left behind
                shutil.rmtree(target.stage, ignore_errors=True)
                remove_made(made)
            raise
    return [os.path.join(target.out_dir, n) for n in names]


def recover(target: Target) -> str | None:
    """Settle the staging folder a killed ``publish`` left in ``target.out_dir``: with its
    COMPLETE marker the set is moved in ("completed"); without it (the set was never whole) the
    folder is deleted ("removed") and ``out_dir`` keeps the old set; None when there is none
    (``out_dir`` need not exist). Waits for a ``publish`` into the same folder that is running.
    Raises:
      OSError: a move into ``out_dir`` failed (as ``publish`` says it).
    """
    if not os.path.isdir(target.stage):
        return None
    with _locked(target.out_dir):
        return _recover(target)


def _recover(target: Target) -> str | None:
    """``recover`` with the folder's lock held."""
    if not os.path.isdir(target.stage):
        return None
    try:
        with open(os.path.join(target.stage, COMPLETE)) as f:
            names = json.load(f)
    except (OSError, ValueError):
        shutil.rmtree(target.stage)
        return "removed"
    with deferred_interrupt():
        _move_in(target, names)
    return "completed"


def _commit(stage: str, names: Sequence[str]) -> None:
    """Step 2: COMPLETE (the names, as JSON), fsynced, and its folder entry made durable."""
    atomic_write_bytes(os.path.join(stage, COMPLETE), json.dumps(list(names)).encode())
    fsync(stage)


def _move_in(target: Target, names: Sequence[str]) -> None:
    """Steps 3 and 4: rename each staged file into ``out_dir`` (one already moved by a killed run
    is skipped), fsync ``out_dir``, then delete the staging folder. COMPLETE goes last, so a kill
    at any point here leaves a folder that ``recover`` finishes."""
    stage, out_dir = target.stage, target.out_dir
    for name in names:
        src = os.path.join(stage, name)
        if not os.path.exists(src):
            continue
        try:
            os.replace(src, os.path.join(out_dir, name))
        except OSError as e:
            raise OSError(f"out: moving {target.what} into {out_dir} failed at {name} ({e}); the "
                          f"rest waits in {stage}, and {target.retry} moves it in first") from e
    fsync(out_dir)
    shutil.rmtree(stage)
    fsync(out_dir)


def fsync(path: str) -> None:
    """fsync a file or a folder (a folder's fsync makes its entries, e.g. renames, durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str) -> None:
    """fsync every file and folder under ``folder``, folders after their entries."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            fsync(os.path.join(root, name))
        fsync(root)


@contextlib.contextmanager
def _locked(folder: str):
    """An exclusive advisory lock on ``folder`` itself, held for the block (blocks while another
    process holds it; a killed holder releases it)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def make_folders(folder: str) -> list[str]:
    """Create ``folder`` and its missing parents; returns those created, deepest first (for
    ``remove_made``). Raises InputError("out") when ``folder`` or a parent is a file, and the
    OSError of a ``mkdir`` that fails (a full disk), after removing the folders it made."""
    made, d = [], os.path.abspath(folder)
    while not os.path.isdir(d):
        if os.path.exists(d):
            raise InputError("out", [], f"{d} is a file, not a folder (nothing written)")
        made.append(d)
        d = os.path.dirname(d)
    for i, d in enumerate(reversed(made)):
        try:
            os.mkdir(d)
        except OSError:
            remove_made(made[len(made) - i:])
            raise
    return made


def remove_made(made: list[str]) -> None:
    """Remove the folders ``make_folders`` created, deepest first; one that holds anything
    stays, with its parents."""
    for d in made:
        try:
            os.rmdir(d)
        except OSError:
            break
