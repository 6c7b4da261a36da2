"""The selected model's export: provisional while the run trains, published once when it ends.

While training, each evaluation that beats the best so far saves its model to
``workdir/best_so_far`` (``save_best``, ``model_io.save_model``: the folder holds the previous
complete model or the new one, never a part). A later evaluation may replace it, and an
interrupted run leaves it there: it is not the run's result, which is why it is not called
``selected_model``.

Once the last step is trained, ``publish`` exports the selected model, in this order:
  1. ``workdir/.selected-stage`` is emptied, then filled with ``selected_model`` (the
     ``best_so_far`` model, checked against the selected step's recorded params hash) and
     ``selected.json`` (the selection summary with that hash);
  2. every file and folder in the stage is fsynced;
  3. with Ctrl-C held off: an existing ``workdir/selected_model`` is renamed to
     ``selected_model.tmp-old`` (which ``model_io.load_model`` reads while ``selected_model`` is
     missing), the staged ``selected_model`` is renamed in and the workdir fsynced; then
     ``selected.json``, the marker that the export is complete, is renamed in and fsynced; the old
     model and the stage are removed.
A run killed anywhere in 1-3 leaves the stage behind; the same command again resumes at the last
committed step and redoes the export from step 1. ``selected_model`` therefore exists only once
a run has finished (or, briefly, as the previous identical export while it is redone), and
``selected.json`` only once its ``selected_model`` is in place and durable;
``selection.load_selected`` refuses a pair whose params hashes differ.
"""

from __future__ import annotations

import json
import os
import shutil

from puts_jax import model_io
from puts_jax.action_set import atomic_write_text, deferred_interrupt
from puts_jax.checks import InputError
from puts_jax.staging import fsync, fsync_tree
from train.selection import SELECTED_FILE, SELECTED_MODEL

BEST_MODEL = "best_so_far"
STAGE = ".selected-stage"


def save_best(workdir: str, model, step: int, value: float) -> str:
    """Save ``model`` (the best evaluated so far, at ``step`` with held-out ``value``) to
    ``workdir/best_so_far``, fsynced by ``save_model`` (the checkpoint that records its hash
    may outlive a power loss); returns its params hash."""
    path = os.path.join(workdir, BEST_MODEL)
    return model_io.save_model(path, model,  # fsynced, renames included
                               extra={"step": step, "value": value, "provisional": True})


def _selected_source(workdir: str, digest: str):
    """The model whose params hash is ``digest``: ``best_so_far``, or a ``selected_model`` that
    a run of an earlier version exported at an evaluation. Raises InputError naming the workdir
    when neither holds it (nothing to publish)."""
    tried = []
    for name in (BEST_MODEL, SELECTED_MODEL):
        path = os.path.join(workdir, name)
        if not os.path.isfile(os.path.join(model_io.model_folder(path), model_io.SPEC_FILE)):
            tried.append(f"{name}: missing")
            continue
        model, info = model_io.load_model(path)
        if info["params_hash"] == digest:
            return model
        tried.append(f"{name}: params hash {info['params_hash']}")
    raise InputError("best_so_far", [], f"the selected checkpoint's model (params hash {digest}) "
                     f"is not in the workdir ({'; '.join(tried)}); it cannot be exported. Train "
                     "in a new --workdir", workdir)


def publish(workdir: str, doc: dict) -> str:
    """Export the selected model (``doc["params_hash"]``, saved by ``save_best``) to
    ``workdir/selected_model`` and ``doc`` to ``workdir/selected.json``, in the order of the
    module docstring; returns the path of ``selected_model``. Idempotent: a second call (a
    resumed run redoing an interrupted export) leaves the same files."""
    model = _selected_source(workdir, doc["params_hash"])
    stage = os.path.join(workdir, STAGE)
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    staged_model = os.path.join(stage, SELECTED_MODEL)
    model_io.save_model(staged_model, model,
                        extra={"step": doc.get("step"), "value": doc.get("value")})
    atomic_write_text(os.path.join(stage, SELECTED_FILE), json.dumps(doc, indent=1))
    fsync_tree(stage)
    with deferred_interrupt():
        _move_in(workdir, stage)
    return os.path.join(workdir, SELECTED_MODEL)


def _move_in(workdir: str, stage: str) -> None:
    """Step 3 of the module docstring."""
    dest = os.path.join(workdir, SELECTED_MODEL)
    old = dest + model_io.OLD_SUFFIX
    if os.path.lexists(dest):
        shutil.rmtree(old, ignore_errors=True)  # a leftover: ``dest`` holds a complete model
        os.replace(dest, old)
    os.replace(os.path.join(stage, SELECTED_MODEL), dest)  # dest missing: readers read old
    fsync(workdir)
    os.replace(os.path.join(stage, SELECTED_FILE), os.path.join(workdir, SELECTED_FILE))
    fsync(workdir)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(stage)
    fsync(workdir)
