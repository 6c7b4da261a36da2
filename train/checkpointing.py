"""Checkpoints of a training run (orbax ``CheckpointManager``, current Composite API).

One checkpoint step holds three items:
  "state":    the flattened TrainState {path: array} (params, optimizer, step, key, skip
              counters), ``ocp.args.StandardSave``;
  "data":     the grain iterator state (JSON), ``ocp.args.JsonSave``;
  "progress": checkpoint selection so far (evaluations, best step and value), JSON.

Restore order (big_vision / maxtext style), as ``train.loop`` does it:
  0. compare this call's input files and config with those recorded in ``workdir/inputs.json`` and
     ``workdir/config.json`` when the run started (``check_inputs``, ``check_config``): resuming
     on another training or held-out log, or with other settings, is refused; the keys of the
     inputs' rows are recorded in ``workdir/training_rows.npz`` (``record_rows``) for the sweep;
  1. build the model and the optimizer from the config (``state.abstract_state``: shapes only);
  2. compare the saved "state" metadata with that target; any missing, unexpected or reshaped
     path raises ``CheckpointMismatchError`` naming each path with saved and expected shapes,
     before anything is read (PITFALLS P6a: nothing restored, nothing zero- or random-filled);
  3. restore "state" into the target's shapes, dtypes and (replicated) shardings;
  4. restore the grain iterator ("data") into a fresh iterator with ``set_state``;
  5. restore "progress" (selection history), then truncate metrics.jsonl past the step.

Saves are asynchronous; a failed save surfaces as an exception from the next ``save``,
``wait`` or ``close`` at the latest (PITFALLS P5). Only committed steps count: an interrupted save
leaves a ``*.orbax-checkpoint-tmp`` directory that ``latest_step`` ignores and the next good save
of that step replaces; older steps are deleted only after a newer one commits.
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from puts_jax.action_set import atomic_write_text, deferred_interrupt  # noqa: F401 (train.loop)
from puts_jax.checks import InputError
from puts_jax.report import file_sha256
from puts_jax.sweep_inputs import ROWS_RECORD, write_rows_record

INPUTS_FILE = "inputs.json"
CONFIG_FILE = "config.json"
# TrainConfig fields that change how a run is shown or saved, not what it computes.
UNCHECKED_FIELDS = ("progress", "async_checkpointing")


class CheckpointMismatchError(ValueError):
    """The checkpoint's arrays do not fit the target; ``mismatches`` lists one line per path."""

    def __init__(self, directory: str, step: int, mismatches: list[str]):
        self.mismatches = mismatches
        lines = "\n  ".join(mismatches)
        super().__init__(f"checkpoint {directory} step {step} does not fit the model/optimizer "
                         f"built from the config ({len(mismatches)} paths); nothing restored:"
                         f"\n  {lines}")


def _shape(x) -> tuple:
    return tuple(int(d) for d in x.shape)


def compare(saved: dict, target: dict) -> list[str]:
    """One line per path whose saved and expected shapes (or dtypes) differ, or that exists on
    one side only. Both arguments map path names to objects with ``.shape`` (and ``.dtype``)."""
    out = []
    for path in sorted(set(saved) | set(target)):
        if path not in target:
            out.append(f"{path}: saved {_shape(saved[path])}, not in the target")
        elif path not in saved:
            out.append(f"{path}: not in the checkpoint, expected {_shape(target[path])}")
        elif _shape(saved[path]) != _shape(target[path]):
            out.append(f"{path}: saved {_shape(saved[path])}, expected {_shape(target[path])}")
        elif str(saved[path].dtype) != str(target[path].dtype):
            out.append(f"{path}: saved dtype {saved[path].dtype}, expected {target[path].dtype}")
    return out


class Checkpointer:
    """Thin owner of one ``ocp.CheckpointManager`` keeping the last ``keep`` committed steps."""

    def __init__(self, directory: str, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        # Handlers registered up front, so a fresh process can read metadata before any save.
        handlers = {"state": ocp.StandardCheckpointHandler(),
                    "data": ocp.JsonCheckpointHandler(), "progress": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, flat_state: dict, data_state: dict, progress: dict) -> None:
        """Start saving ``step`` (asynchronously); raises a previous save's failure."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(flat_state), data=ocp.args.JsonSave(data_state),
            progress=ocp.args.JsonSave(progress)), force=True)

    def check(self, step: int, flat_target: dict) -> None:
        """Raise CheckpointMismatchError unless step's saved arrays fit ``flat_target``."""
        saved = dict(self.manager.item_metadata(step)["state"])
        bad = compare(saved, flat_target)
        if bad:
            raise CheckpointMismatchError(self.directory, step, bad)

    def restore(self, step: int, flat_target: dict) -> tuple[dict, dict, dict]:
        """(flat state, data-iterator state, progress) of ``step``. ``flat_target`` maps path
        names to ``jax.ShapeDtypeStruct`` (with shardings) or arrays; checked first (P6a)."""
        self.check(step, flat_target)
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, flat_target)
        got = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
            progress=ocp.args.JsonRestore()))
        return dict(got["state"]), dict(got["data"]), dict(got["progress"])

    def wait(self) -> None:
        """Block until pending saves commit; raises their failure."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves, then release the manager; raises a failed save's error."""
        try:
            self.manager.wait_until_finished()
        finally:
            self.manager.close()


def input_identity(path: str) -> dict:
    """{"path" (absolute), "size", "mtime_ns", "sha256"} of an input file. Two files are the same
    input when size and sha256 agree: a copy, a move or a touch of the same bytes is the same."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": int(st.st_size),
            "mtime_ns": int(st.st_mtime_ns), "sha256": file_sha256(path)}


def check_inputs(workdir: str, inputs: dict[str, dict], resuming: bool, write: bool = True) -> None:
    """Refuse to resume a run on other data; record the inputs of a run that starts.

    inputs: role -> ``input_identity``, e.g. {"logs": ..., "heldout": ...}. When ``resuming``
    (a committed checkpoint exists) and ``workdir/inputs.json`` records a role whose size or sha256
    differs, raises InputError(role, source=the new file's path) naming the recorded file; resuming
    would otherwise continue (or return) the model trained on the recorded one. The record is
    written (``write``: process 0) when the run starts fresh, and once for a workdir from before
    records existed (its inputs cannot be checked).
    """
    path = os.path.join(workdir, INPUTS_FILE)
    recorded = None
    if resuming and os.path.exists(path):
        with open(path) as f:
            recorded = json.load(f)
        for role, now in inputs.items():
            was = recorded.get(role)
            if was is not None and (was["size"], was["sha256"]) != (now["size"], now["sha256"]):
                raise InputError(role, [], f"differs from the file the run in {workdir} was "
                                 f"trained on ({was['path']}: {was['size']} bytes, sha256 "
                                 f"{was['sha256'][:12]}...; this one: {now['size']} bytes, sha256 "
                                 f"{now['sha256'][:12]}...); resuming would continue that run's "
                                 f"model. Train in a new --workdir, or move {workdir} away",
                                 now["path"])
    if write and recorded is None:
        atomic_write_text(path, json.dumps(inputs, indent=1))


def _flat(doc: dict, prefix: str = "") -> dict:
    """{"qnet.hidden": [64, 64], "seed": 0, ...}: nested dicts as dotted names."""
    out = {}
    for k, v in doc.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def check_config(workdir: str, config: dict, resuming: bool, write: bool = True) -> None:
    """Refuse to resume a run with another config; record the config of a run that starts.

    config: ``TrainConfig.to_dict()`` of this call. When ``resuming`` and ``workdir/config.json``
    (or, for a workdir from before it existed, the "config" of ``selected.json``) records a field
    whose value differs (``UNCHECKED_FIELDS`` aside), raises InputError("config", source=workdir)
    naming each field with its saved and given values: another seed would return the recorded
    run's model, more epochs would continue it on another learning-rate schedule, fewer would
    point past the data, another model would not fit the checkpoint. A field the record lacks (a
    field added since) is not checked. ``config.json`` is written (``write``: process 0, atomically)
    when the run starts fresh, and once for a workdir without it.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    legacy = os.path.join(workdir, "selected.json")
    recorded = None
    if resuming:
        for p in (path, legacy):
            if os.path.exists(p):
                with open(p) as f:
                    recorded = json.load(f) if p == path else json.load(f).get("config")
                break
    if recorded is not None:
        was, now = _flat(recorded), _flat(config)
        diff = [f"{k}: saved {json.dumps(v)}, given {json.dumps(now.get(k))}"
                for k, v in was.items() if k.split(".")[0] not in UNCHECKED_FIELDS
                and now.get(k) != v]
        if diff:
            raise InputError("config", [], f"differs from the config the run in {workdir} was "
                             f"trained with ({'; '.join(diff)}); resuming would continue or "
                             f"return that run. Train in a new --workdir, or move {workdir} "
                             "away", workdir)
    if write and (not resuming or not os.path.exists(path)):
        atomic_write_text(path, json.dumps(config, indent=1))


def record_rows(workdir: str, inputs: dict[str, dict], keys: dict[str, list], resuming: bool,
                write: bool = True) -> None:
    """Record the rows this run reads: ``workdir/training_rows.npz`` (``sweep_inputs``: per
    role, the sorted 64-bit keys of its rows, 8 bytes a row, with the file's sha256 from
    ``inputs``), against which ``puts-jax sweep`` counts the rows of its log that training saw.
    Called after ``check_inputs`` (the inputs are those recorded); written (``write``: process
    0, atomically) when the run starts fresh, and once for a workdir without it (one from before
    the record existed, or a run stopped between inputs.json and this file)."""
    if write and (not resuming or not os.path.exists(os.path.join(workdir, ROWS_RECORD))):
        write_rows_record(workdir, {r: inputs[r]["sha256"] for r in keys}, keys)
