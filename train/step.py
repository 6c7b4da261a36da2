"""The train step: the only jit of ``train/`` (STYLE.md 4).

``build_train_step`` binds the structure (graphdefs, which objectives are binary, loss weights)
with ``functools.partial`` and jits the rest with explicit shardings over a 1-D data mesh: the
state is replicated, the batch is sharded along its rows, the state buffer is donated. The step
derives its key as ``fold_in(key, step)`` inside the program (STYLE.md 6), computes the one-step
regression loss (``puts_jax.losses``), and applies the update through ``nnx.Optimizer`` -- or
skips it when any gradient is non-finite (PITFALLS P4b): params and optimizer moments unchanged,
``skips`` up by one, reset to 0 by the next finite step.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from puts_jax import losses
from train.input import TrainBatch
from train.state import ModelDef, TrainState

DATA_AXIS = "data"


class StepMetrics(NamedTuple):
    """Per-step metrics (device arrays; the loop fetches them one step late).

    loss f32[]: weighted total; per_objective f32[J]; grad_norm f32[] (before clipping; inf/NaN
    when the update was skipped); skipped bool[]; skips i32[] consecutive skips; valid i32[] rows.
    """

    loss: jax.Array
    per_objective: jax.Array
    grad_norm: jax.Array
    skipped: jax.Array
    skips: jax.Array
    valid: jax.Array


def make_mesh(devices=None) -> Mesh:
    """1-D data-parallel mesh over ``devices`` (default: all), Auto axis type (FACTS.md)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def apply_gradients(defs: ModelDef, state: TrainState, grads: nnx.State) -> tuple[TrainState,
                                                                                 jax.Array]:
    """Update through nnx.Optimizer, or keep params and optimizer state when a gradient is
    non-finite. Returns (new state, skipped bool[]). ``step`` is not advanced here."""
    finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    # Fresh copies of the old state: merge may share Variables with it, and update is in place.
    old_params, old_opt = jax.tree.map(jnp.asarray, (state.params, state.opt_state))
    model = nnx.merge(defs.model, state.params)
    optimizer = nnx.merge(defs.optimizer, state.opt_state)
    optimizer.update(model, grads)
    new_params, new_opt = nnx.state(model), nnx.state(optimizer)
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
    skips = jnp.where(finite, 0, state.skips + 1).astype(jnp.int32)
    total = (state.total_skips + jnp.where(finite, 0, 1)).astype(jnp.int32)
    return state.replace(params=keep(new_params, old_params), opt_state=keep(new_opt, old_opt),
                         skips=skips, total_skips=total), ~finite


def train_step(defs: ModelDef, binary_J: np.ndarray, weights_J: np.ndarray, state: TrainState,
               batch: TrainBatch) -> tuple[TrainState, StepMetrics]:
    """One step of one-step Q regression on a (global) batch."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    del key  # the current heads are deterministic; stochastic regularizers draw from this key
    binary = jnp.asarray(binary_J)
    weights = jnp.asarray(weights_J, jnp.float32)

    def loss_fn(params):
        model = nnx.merge(defs.model, params)
        q = model(batch.context, batch.context_ids)
        return losses.batch_loss(q, batch.action, batch.rewards, batch.valid, binary, weights)

    (loss, per_objective), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
    new_state, skipped = apply_gradients(defs, state, grads)
    new_state = new_state.replace(step=state.step + 1)
    n_valid = jnp.sum(batch.valid.astype(jnp.int32))
    return new_state, StepMetrics(loss, per_objective, grad_norm, skipped, new_state.skips,
                                  n_valid)


def build_train_step(defs: ModelDef, reward_kinds: tuple[str, ...],
                     loss_weights: tuple[float, ...], mesh: Mesh) -> Callable:
    """``step(state, batch) -> (state, StepMetrics)``, jitted once: state replicated over the
    mesh (donated), batch sharded along rows, metrics replicated."""
    binary = np.asarray([k == "binary" for k in reward_kinds])
    weights = np.asarray(loss_weights, np.float32)
    replicated = NamedSharding(mesh, P())
    rows = NamedSharding(mesh, P(DATA_AXIS))
    return jax.jit(functools.partial(train_step, defs, binary, weights),
                   in_shardings=(replicated, rows), out_shardings=(replicated, replicated),
                   donate_argnums=(0,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def device_batch(batch: TrainBatch, mesh: Mesh) -> TrainBatch:
    """A process-local host batch as a global array sharded along rows (multi-process: each
    process passes its own rows)."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:  # the same arrays, one transfer call for the whole batch
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
