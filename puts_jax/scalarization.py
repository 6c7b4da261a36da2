"""Scalarization of the J reward objectives: lambda grids on the simplex and per-example scalarize.

A lambda (``lam: f32[J]``, non-negative, summing to 1) turns multi-objective Q-values into one
score per action, ``Q @ lam``; each lambda defines one target policy (PRL-PUTS, arXiv 2605.16344,
inference-time scalarization). For J = 2 the grid is ``(1 - alpha, alpha)`` with alpha in [0, 1].
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np


def readable_lambda(lam) -> list[float]:
    """lambda f[J] (any shape, flattened) as the shortest decimals that read back as the same
    float32 values (0.8999999761581421 -> 0.9): what the compiled passes use, written readably.
    For printing, and for frontier.json's lambdas (whose float32 bits are unchanged)."""
    return [float(str(np.float32(x))) for x in np.asarray(lam, np.float64).reshape(-1)]


def lambda_grid(n_objectives: int, n_points: int) -> np.ndarray:
    """Lambdas on the J-simplex: f32[L, J].

    J = 2: L = n_points evenly spaced, row l = (1 - l/(L-1), l/(L-1)), from all-weight-on-
    objective-0 to all-weight-on-objective-1. J >= 3: the regular simplex grid with
    ``n_points - 1`` divisions (L = C(n_points - 2 + J, J - 1)).
    Raises ValueError for J < 1 or n_points < 2.
    """
    if n_objectives < 1:
        raise ValueError(f"n_objectives: must be >= 1, got {n_objectives}")
    if n_points < 2:
        raise ValueError(f"n_points: must be >= 2, got {n_points}")
    if n_objectives == 1:
        return np.ones((1, 1), np.float32)
    steps = n_points - 1
    if n_objectives == 2:
        a = np.arange(n_points, dtype=np.float64) / steps
        return np.stack([1.0 - a, a], axis=1).astype(np.float32)
    rows = [c for c in itertools.product(range(steps + 1), repeat=n_objectives) if sum(c) == steps]
    return (np.asarray(rows[::-1], np.float64) / steps).astype(np.float32)


def scalarize(q_AxJ: jnp.ndarray, lam_J: jnp.ndarray) -> jnp.ndarray:
    """Scalarized Q for one example: ``q: f32[A, J]``, ``lam: f32[J]`` -> f32[A] = q @ lam.

    Written for a single example; batch with ``jax.vmap``. Accumulates in f32 whatever the input
    dtype (PITFALLS P2).
    """
    if q_AxJ.ndim != 2 or lam_J.ndim != 1:
        raise ValueError(f"scalarize: expected q f[A, J] and lam f[J], got {q_AxJ.shape}, {lam_J.shape}")
    return jnp.einsum("aj,j->a", q_AxJ.astype(jnp.float32), lam_J.astype(jnp.float32))
