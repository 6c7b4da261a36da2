"""One-step Q regression losses (pure arrays; no flax, grain or orbax).

PRL-PUTS (arXiv 2605.16344) trains the agent as a one-step (contextual-bandit) Q-learner: the Q-value
of the LOGGED action is regressed on the request-level rewards observed for it. Per objective j:

  binary rewards (0/1, or a probability in [0, 1]): binary cross-entropy on the probability Q[a, j],
      -(r log q + (1 - r) log(1 - q)), with q clipped to [PROB_EPS, 1 - PROB_EPS] so that neither
      the loss nor its gradient is ever inf/NaN (also where q is outside [0, 1]);
  anything else ("count", "real"): squared error (q - r)^2.

Both branches are computed for every objective and selected with ``where``; each branch is finite
for any finite input, so the unselected branch never poisons the gradient with NaN.

``example_loss`` is written for one example (rlax style); ``batch_loss`` vmaps it and averages over
the valid rows (padding rows contribute exactly 0). All accumulation is in f32 whatever the input
dtype (PITFALLS P2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Probabilities are clipped to [PROB_EPS, 1 - PROB_EPS] inside the cross-entropy (f32-safe:
# 1 - 1e-6 is representable, log(1e-6) = -13.8).
PROB_EPS = 1e-6


def _check(name: str, x: jax.Array, ndim: int) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected rank {ndim}, got shape {x.shape}")


def example_loss(q_AxJ: jax.Array, action: jax.Array, rewards_J: jax.Array,
                 binary_J: jax.Array) -> jax.Array:
    """Per-objective loss f32[J] of one logged example.

    Args:
      q_AxJ: f[A, J] Q-values of every action in reward units (probabilities where binary).
      action: i32[] the logged action.
      rewards_J: f[J] the observed rewards.
      binary_J: bool[J] True where objective j is a binary reward (cross-entropy), else squared
        error.
    Returns:
      f32[J]: BCE or squared error of ``q[action, j]`` against ``rewards[j]``.
    """
    _check("q_AxJ", q_AxJ, 2)
    _check("action", action, 0)
    _check("rewards_J", rewards_J, 1)
    _check("binary_J", binary_J, 1)
    q = q_AxJ.astype(jnp.float32)[action]  # f32[J]
    r = rewards_J.astype(jnp.float32)
    p = jnp.clip(q, PROB_EPS, 1.0 - PROB_EPS)
    bce = -(r * jnp.log(p) + (1.0 - r) * jnp.log1p(-p))
    sq = jnp.square(q - r)
    return jnp.where(binary_J, bce, sq)


def batch_loss(q_BxAxJ: jax.Array, action_B: jax.Array, rewards_BxJ: jax.Array,
               valid_B: jax.Array, binary_J: jax.Array,
               weights_J: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean loss over the valid rows of a batch.

    Args:
      q_BxAxJ: f[B, A, J]; action_B: i32[B]; rewards_BxJ: f[B, J]; valid_B: bool[B] (False rows are
        padding and contribute exactly 0); binary_J: bool[J]; weights_J: f[J] per-objective weights.
    Returns:
      (total f32[], per_objective f32[J]): per_objective[j] is the mean over valid rows of the
      objective-j loss; total = sum_j weights[j] * per_objective[j]. With no valid row both are 0.
    """
    _check("q_BxAxJ", q_BxAxJ, 3)
    _check("valid_B", valid_B, 1)
    _check("weights_J", weights_J, 1)
    per_BxJ = jax.vmap(example_loss, in_axes=(0, 0, 0, None))(q_BxAxJ, action_B, rewards_BxJ,
                                                               binary_J)
    valid = valid_B.astype(bool)
    per_BxJ = jnp.where(valid[:, None], per_BxJ, 0.0)
    count = jnp.maximum(jnp.sum(valid.astype(jnp.int32)), 1).astype(jnp.float32)
    per_objective = jnp.sum(per_BxJ, axis=0, dtype=jnp.float32) / count
    total = jnp.sum(per_objective * weights_J.astype(jnp.float32))
    return total, per_objective
