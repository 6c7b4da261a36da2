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


def params_hash(model: QNetwork) -> str:
    """sha256 (16 hex) over the model's parameter leaves in path order: identifies the weights."""
    h = hashlib.sha256()
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0]
    for path, leaf in flat:
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf), dtype="<f4").tobytes())
    return h.hexdigest()[:16]


def save_model(directory: str, model: QNetwork, extra: dict | None = None) -> str:
    """Write ``directory/spec.json`` and ``directory/params`` (orbax); returns the params hash.

    The directory is written under a temporary name and renamed, so a crash never leaves a
    half-written model at ``directory``. An existing directory is replaced.
    """
    directory = os.path.abspath(directory)
    tmp = directory + ".tmp-save"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(tmp, PARAMS_DIR), state)
        ckptr.wait_until_finished()
    digest = params_hash(model)
    atomic_write_text(os.path.join(tmp, SPEC_FILE), json.dumps(
        {"spec": model.spec(), "params_hash": digest, "extra": extra or {}}, indent=1))
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
    abstract = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(os.path.join(os.path.abspath(directory), PARAMS_DIR), abstract)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    if params_hash(model) != info["params_hash"]:
        raise ValueError(f"{directory}: params hash {params_hash(model)} != recorded "
                         f"{info['params_hash']}")
    return model, info
