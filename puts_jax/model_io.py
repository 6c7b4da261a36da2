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

from puts_jax.action_set import atomic_write_text
from puts_jax.qnet import QNetwork

SPEC_FILE = "spec.json"
PARAMS_DIR = "params"


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
    """Save the model's nnx.Param state (a pure dict) with orbax at ``path`` and wait for it."""
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(path), nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        ckptr.wait_until_finished()


def restore_params(path: str, model: QNetwork, saved_shapes: dict | None = None) -> None:
    """Restore parameters saved by ``save_params`` into ``model`` in place.

    With ``saved_shapes`` (``param_shapes`` at save time) a mismatch raises ValueError naming
    every differing path with saved and expected shapes, before anything is restored.
    """
    if saved_shapes is not None:
        got = param_shapes(model)
        bad = [f"{p}: saved {saved_shapes.get(p)} expected {got.get(p)}"
               for p in sorted(set(saved_shapes) | set(got)) if saved_shapes.get(p) != got.get(p)]
        if bad:
            raise ValueError("params: saved parameters do not fit the model: " + "; ".join(bad))
    state = nnx.state(model, nnx.Param)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(state))
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(os.path.abspath(path), abstract)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)


def save_model(directory: str, model: QNetwork, extra: dict | None = None) -> str:
    """Write ``directory/spec.json`` and ``directory/params`` (orbax); returns the params hash.

    The directory is written under a temporary name and renamed, so a crash never leaves a
    half-written model at ``directory``. An existing directory is replaced.
    """
    directory = os.path.abspath(directory)
    tmp = directory + ".tmp-save"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_params(os.path.join(tmp, PARAMS_DIR), model)
    digest = params_hash(model)
    atomic_write_text(os.path.join(tmp, SPEC_FILE), json.dumps(
        {"spec": model.spec(), "params_hash": digest, "param_shapes": param_shapes(model),
         "extra": extra or {}}, indent=1))
    if os.path.exists(directory):
        old = directory + ".tmp-old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)
    return digest


def load_model(directory: str) -> tuple[QNetwork, dict]:
    """Rebuild the QNetwork from ``spec.json`` and restore its params; returns (model, info).

    Raises ValueError when the restored params' hash differs from the one recorded at save time.
    """
    with open(os.path.join(directory, SPEC_FILE)) as f:
        info = json.load(f)
    model = QNetwork.from_spec(info["spec"])
    restore_params(os.path.join(directory, PARAMS_DIR), model, info.get("param_shapes"))
    if params_hash(model) != info["params_hash"]:
        raise ValueError(f"{directory}: params hash {params_hash(model)} != recorded "
                         f"{info['params_hash']}")
    return model, info
