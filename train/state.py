"""Train state, optimizer and model construction.

``TrainState`` is the one pytree the jitted step carries and the checkpoint stores. The model and
its ``nnx.Optimizer`` are split ONCE into graphdefs (closed over by the step, static) and states
(traced), so the hot path stays functional (STYLE.md 5).
"""

from __future__ import annotations

from typing import NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from puts_jax.qnet import QNetwork
from train.config import TrainConfig


@flax.struct.dataclass
class TrainState:
    """Everything an identical resume needs, besides the data iterator's state.

    step: i32[] batches consumed so far (also counts skipped updates).
    params: nnx.State of the QNetwork's Params.
    opt_state: nnx.State of the nnx.Optimizer (its update count and the optax state).
    key: u32[2] raw PRNG key data of the run; the step's key is ``fold_in(key, step)``.
    skips: i32[] consecutive updates skipped for non-finite gradients (0 after a finite one).
    total_skips: i32[] skipped updates over the whole run.
    """

    step: jax.Array
    params: nnx.State
    opt_state: nnx.State
    key: jax.Array
    skips: jax.Array
    total_skips: jax.Array


class ModelDef(NamedTuple):
    """Static structure closed over by the step: the graphdefs of the model and the optimizer."""

    model: nnx.GraphDef
    optimizer: nnx.GraphDef


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Global-norm clipping that is finite at a zero gradient (PITFALLS P4a).

    updates * min(1, max_norm / ||g||), with the ratio taken only where ||g|| > max_norm:
    max norm 0 on a zero gradient gives 0 (optax 0.2.8's ``clip_by_global_norm`` gives 0/0 =
    NaN there); max norm 1 on [3, 4] gives [0.6, 0.8].
    """
    max_norm = float(max_norm)

    def update_fn(updates, state, params=None):
        del params
        g_norm = optax.tree.norm(updates)
        over = g_norm > max_norm
        scale = jnp.where(over, max_norm / jnp.where(over, g_norm, 1.0), 1.0)
        return jax.tree.map(lambda t: (t * scale).astype(t.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def learning_rate_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to ``cfg.learning_rate``, then cosine decay to ``end_lr_factor`` of it at
    ``total_steps``."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, warmup, max(total_steps, warmup + 1),
        cfg.learning_rate * cfg.end_lr_factor)


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """Safe global-norm clipping, then AdamW with warmup + cosine decay."""
    return optax.chain(clip_by_global_norm(cfg.clip_norm),
                       optax.adamw(learning_rate_schedule(cfg, total_steps),
                                   weight_decay=cfg.weight_decay))


def make_model(cfg: TrainConfig, context_dim: int, n_actions: int,
               reward_kinds: tuple[str, ...], action_weights: np.ndarray | None) -> QNetwork:
    """The QNetwork of ``cfg`` initialized from ``cfg.seed``."""
    feats = action_weights if cfg.action_features else None
    return QNetwork(cfg.qnet, context_dim, n_actions, reward_kinds,
                    rngs=nnx.Rngs(params=cfg.seed), action_features=feats)


def init_state(model: nnx.Module, tx: optax.GradientTransformation,
               seed: int) -> tuple[ModelDef, TrainState]:
    """Split a freshly initialized model and its ``nnx.Optimizer`` into (ModelDef, TrainState)."""
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    gm, params = nnx.split(model)
    go, opt_state = nnx.split(optimizer)
    key = jax.random.key_data(jax.random.key(seed))
    zero = jnp.zeros((), jnp.int32)
    state = TrainState(zero, params, opt_state, key, zero, zero)
    # One buffer per leaf: the step donates the state, and a buffer shared by two leaves
    # (the zero counters, initial moments) cannot be donated twice.
    return ModelDef(gm, go), jax.tree.map(lambda x: jnp.array(x, copy=True), state)


def abstract_state(model_fn, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """ShapeDtypeStructs of the TrainState ``init_state(model_fn(), tx, seed)`` would build,
    without allocating it (restore target)."""
    return jax.eval_shape(lambda: init_state(model_fn(), tx, seed)[1])


def path_name(path) -> str:
    """'params/mix/kernel' for a pytree key path (drops the Variable's trailing ``.value``)."""
    parts = []
    for k in path:
        name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
        parts.append(str(name))
    if parts and parts[-1] == "value":
        parts.pop()
    return "/".join(parts)


def flatten(state: TrainState) -> dict:
    """{path name: array} of every leaf: the checkpoint layout (string keys, stable order)."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {path_name(p): x for p, x in leaves}


def unflatten(like: TrainState, flat: dict) -> TrainState:
    """Inverse of ``flatten`` onto the structure of ``like``."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree_util.tree_unflatten(treedef, [flat[path_name(p)] for p, _ in leaves])
