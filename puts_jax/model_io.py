"""Save and load a QNetwork as a self-describing directory: ``spec.json`` + orbax params.

The trainer exports its selected checkpoint with ``save_model``; the sweep, the policy registry
and batch scoring rebuild it with ``load_model``, so the library never imports ``train``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from puts_jax import staging
from puts_jax.action_set import atomic_write_text
from puts_jax.checks import InputError
from puts_jax.qnet import QNetwork

SPEC_FILE = "spec.json"
PARAMS_DIR = "params"
# Beside a model directory while save_model runs: the new model being written, the one replaced.
NEW_SUFFIX, OLD_SUFFIX = ".tmp-save", ".tmp-old"


def _leaves(model: QNetwork) -> list[tuple[str, np.ndarray]]:
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    flat = jax.tree_util.tree_flatten_with_path(pure)[0]
    return sorted((jax.tree_util.keystr(p), np.asarray(x)) for p, x in flat)


def params_hash(model: QNetwork) -> str:
    """sha256 over every parameter's path, dtype, shape and little-endian bytes (16 hex digits)."""
    h = hashlib.sha256()
    for path, x in _leaves(model):
        x = np.ascontiguousarray(x)
        h.update(f"{path}|{x.dtype.str}|{x.shape}".encode())
        h.update(x.astype(x.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()[:16]


def param_shapes(model: QNetwork) -> dict:
    """{parameter path: {"shape", "dtype"}}: what a restore target must match."""
    return {p: {"shape": list(x.shape), "dtype": str(x.dtype)} for p, x in _leaves(model)}


def save_params(path: str, model: QNetwork) -> None:
    """Save the model's nnx.Param state (a pure dict) with orbax at ``path`` and wait for it.

    Arrays may be sharded over any devices (a mesh); each is written once, whole. In a
    multi-process run the calling process writes alone (``_checkpointer``) from its host copy of
    each parameter, which must be replicated or local (ValueError otherwise). ``path`` must
    not exist yet (orbax raises ValueError).
    """
    tree = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    if jax.process_count() > 1:
        tree = jax.tree.map(_local_copy, tree)
    with _checkpointer() as ckptr:
        ckptr.save(os.path.abspath(path), tree)
        ckptr.wait_until_finished()


def _checkpointer() -> ocp.StandardCheckpointer:
    """An orbax checkpointer for this process alone. A model directory is written and read by
    one process (``python -m train``: process 0 of a multi-process run, the others take no
    part); orbax's default makes every save and restore a barrier over all processes, which the
    others never join."""
    if jax.process_count() == 1:
        return ocp.StandardCheckpointer()
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"model_io_{me}"))


def _local_copy(x):
    """A host copy of a parameter that this process holds whole (replicated over the mesh, or
    on its own devices): orbax saves no process-local jax.Array when there are several."""
    if not isinstance(x, jax.Array):
        return x
    if x.is_fully_addressable:
        return np.asarray(x)
    if not x.is_fully_replicated:
        raise ValueError(f"save_params: a parameter of shape {x.shape} is sharded across "
                         "processes; one process can only save replicated parameters")
    return np.asarray(x.addressable_data(0))


def _keystr(path: tuple) -> str:
    # orbax stores sequence indices (nnx.List) as string dict keys: write them as param_shapes
    # does for the model's integer keys, so both sides name a parameter the same way.
    keys = tuple(jax.tree_util.SequenceKey(int(k.key)) if isinstance(k, jax.tree_util.DictKey)
                 and isinstance(k.key, str) and k.key.isdigit() else k for k in path)
    return jax.tree_util.keystr(keys)


def saved_param_shapes(path: str) -> dict:
    """{parameter path: {"shape", "dtype"}} of the params saved at ``path``, read from the
    checkpoint's metadata only (no array is read); keyed like ``param_shapes``."""
    with _checkpointer() as ckptr:
        tree = ckptr.metadata(os.path.abspath(path)).item_metadata.tree
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_keystr(p): {"shape": [int(d) for d in x.shape], "dtype": str(np.dtype(x.dtype))}
            for p, x in flat}


def _shape_str(s: dict | None) -> str:
    """{"shape": [7, 16], "dtype": "float32"} -> 'float32[7, 16]'; None -> 'none'."""
    return "none" if s is None else f"{s['dtype']}[{', '.join(map(str, s['shape']))}]"


def _check_fit(saved: dict, got: dict, path: str) -> None:
    """ValueError('params: ...') naming each parameter path whose saved {"shape", "dtype"}
    differs from the model's (``param_shapes``), both shown ('float32[7, 16]'; 'none' where
    one side lacks the path)."""
    bad = [f"{p}: saved {_shape_str(saved.get(p))}, expected {_shape_str(got.get(p))}"
           for p in sorted(set(saved) | set(got)) if saved.get(p) != got.get(p)]
    if bad:
        raise ValueError(f"params: saved parameters do not fit the model ({len(bad)} "
                         f"path{'s' * (len(bad) > 1)} of {path}); nothing restored: "
                         + "; ".join(bad))


def restore_params(path: str, model: QNetwork, saved_shapes: dict | None = None) -> None:
    """Restore parameters saved by ``save_params`` into ``model`` in place.

    ``saved_shapes`` (``param_shapes`` at save time, as spec.json records it) and the
    checkpoint's own metadata (``saved_param_shapes``; a params folder swapped for another
    model's differs from the record) are both checked against the model. Any path missing on
    either side, or with another shape or dtype, raises ValueError naming every such path with
    its saved and expected shape ('saved float32[7, 16], expected float32[4, 16]'; 'none' where
    absent), before any array is read: the model is left unchanged, never zero-, partly- or
    random-filled (PITFALLS P6a).

    A data file that cannot be read (corrupt, truncated) raises ValueError naming ``path``
    and the reader's first line of error (orbax raises a bare Exception there).

    Each array is restored with the sharding of the model's current array (for a model built in
    this process: its default device), whatever devices or mesh it was saved from; the shardings
    recorded at save time are ignored, so params saved sharded over 8 devices restore in a
    process with 1 or 2, bit for bit (PITFALLS P6b).
    """
    got = param_shapes(model)
    if saved_shapes is not None:  # the record first (spec.json's, policy.json's) ...
        _check_fit(saved_shapes, got, path)
    try:  # ... then the arrays on disk: a params folder swapped for another model's
        on_disk = saved_param_shapes(path)
    except Exception:  # noqa: BLE001 - no readable metadata: the restore below names the error
        if saved_shapes is None:
            raise
        on_disk = saved_shapes
    _check_fit(on_disk, got, path)
    state = nnx.state(model, nnx.Param)
    # Target shapes, dtypes and shardings: the model's arrays on this process's devices.
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(state))
    with _checkpointer() as ckptr:
        try:
            restored = ckptr.restore(os.path.abspath(path), abstract)
        except (OSError, KeyError, ValueError):
            raise
        except Exception as e:  # orbax wraps a read error of a corrupt data file in Exception
            why = e.__cause__ if e.__cause__ is not None else e
            first = (str(why).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"{path}: the saved arrays cannot be read ({type(why).__name__}: "
                             f"{first}); nothing restored") from e
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)


def _old_path(directory: str) -> str:
    return os.path.abspath(directory) + OLD_SUFFIX


def model_folder(directory: str) -> str:
    """The folder ``load_model(directory)`` reads: ``directory`` itself, or, when a save was
    killed between its two renames (``directory`` missing), the previous model that it had moved
    aside whole to ``directory.tmp-old``. A saved model is there when this folder holds
    ``spec.json`` (what ``puts-jax --model`` checks before any work)."""
    old = _old_path(directory)
    if not os.path.lexists(directory) and os.path.isfile(os.path.join(old, SPEC_FILE)):
        return old
    return directory


def save_model(directory: str, model: QNetwork, extra: dict | None = None) -> str:
    """Write ``directory/spec.json`` and ``directory/params`` (orbax); returns the params hash.

    The model is written whole to ``directory.tmp-save``; an existing model is then renamed to
    ``directory.tmp-old``, the new one renamed to ``directory``, and the old one deleted. If the
    process is killed (or raises) at any point, ``load_model(directory)`` finds a complete
    model, the previous one (if there was one) or the new one: between the two renames
    ``directory`` is missing and ``load_model`` reads ``directory.tmp-old``, which the next
    ``save_model`` first renames back. ``directory.tmp-save`` is never read. Every file and
    folder of the new model is fsynced before the renames and the parent folder after them, so
    a model ``load_model`` finds after a power loss or OS crash is whole. Not guaranteed: two
    processes saving to the same ``directory`` at once.
    """
    directory = os.path.abspath(directory)
    tmp, old = directory + NEW_SUFFIX, _old_path(directory)
    if model_folder(directory) == old:  # a save killed between its renames: undo the first one
        os.replace(old, directory)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_params(os.path.join(tmp, PARAMS_DIR), model)
    digest = params_hash(model)
    atomic_write_text(os.path.join(tmp, SPEC_FILE), json.dumps(
        {"spec": model.spec(), "params_hash": digest, "param_shapes": param_shapes(model),
         "extra": extra or {}}, indent=1))
    staging.fsync_tree(tmp)
    if os.path.exists(directory):
        shutil.rmtree(old, ignore_errors=True)  # a leftover; `directory` holds the model
        os.replace(directory, old)
        os.replace(tmp, directory)
        staging.fsync(os.path.dirname(directory))  # the new entry is durable before the old goes
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)
        staging.fsync(os.path.dirname(directory))
    return digest


def load_model(directory: str) -> tuple[QNetwork, dict]:
    """Rebuild the QNetwork from ``spec.json`` and restore its params; returns (model, info).

    Reads ``directory``, or ``directory.tmp-old`` when a ``save_model`` was killed between its
    renames (see there); nothing is renamed or deleted here.
    Raises:
      InputError("params", source=directory): the saved parameters do not fit the model that
        spec.json describes (each path with its saved and expected shape, ``restore_params``),
        or cannot be read; nothing restored.
      InputError("params_hash", source=directory): the restored params' hash differs from the
        one recorded at save time.
    """
    folder = model_folder(directory)
    with open(os.path.join(folder, SPEC_FILE)) as f:
        info = json.load(f)
    model = QNetwork.from_spec(info["spec"])
    try:
        restore_params(os.path.join(folder, PARAMS_DIR), model, info.get("param_shapes"))
    except ValueError as e:  # shapes that do not fit, unreadable arrays: named by the folder
        raise InputError("params", [], str(e).removeprefix("params: "), directory) from None
    if params_hash(model) != info["params_hash"]:
        raise InputError("params_hash", [], f"the restored parameters of {folder} hash to "
                         f"{params_hash(model)}, {SPEC_FILE} records {info['params_hash']} (its "
                         "params folder was replaced or changed after the save)", directory)
    return model, info


def model_widths(model) -> dict:
    """The context widths and id vocabularies a QNetwork reads, as ``iter_log_chunks`` /
    ``iter_request_chunks`` keyword arguments: rows of another width, and context ids at or
    above their column's vocabulary (``nnx.Embed`` would read them as NaN), are rejected by
    name instead of failing, or silently scoring NaN, in the network. A model without id
    embeddings checks no ids (None)."""
    vocab = tuple(getattr(getattr(model, "cfg", None), "id_vocab_sizes", ()) or ())
    return {"context_dim": getattr(model, "context_dim", None),
            "n_context_ids": len(vocab) or None, "id_vocab_sizes": vocab or None}
