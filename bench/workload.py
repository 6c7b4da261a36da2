"""Benchmark shapes, a Q-network with random parameters, and synthetic request and log batches.

Default shapes (issue 3): D = 64 context features, MLP 256 x 256, A = 64 actions, J = 2
objectives, K = 6 ranker heads, N = 500 candidates, top-k 25, L = 101 lambdas.
Data are random but realistic in the ways that cost time: about 10% padded candidates per
request, probabilities in [0, 1], no NaN (the non-finite paths are tested, not timed).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Shapes:
    D: int = 64
    hidden: tuple[int, ...] = (256, 256)
    head: str = "mixture"
    n_components: int = 8
    A: int = 64
    J: int = 2
    K: int = 6
    N: int = 500
    top_k: int = 25
    L: int = 101

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def aligned(a: np.ndarray, align: int = 64) -> np.ndarray:
    """A 64-byte aligned copy of ``a`` (FACTS: aligned host arrays enter JAX zero-copy)."""
    a = np.ascontiguousarray(a)
    buf = np.empty(a.nbytes + align, np.uint8)
    off = (-buf.ctypes.data) % align
    out = buf[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def make_model(s: Shapes, seed: int = 0):
    """A QNetwork (flax.nnx) with the benchmark shapes; binary rewards (sigmoid link)."""
    from flax import nnx

    from puts_jax.config import QNetConfig
    from puts_jax.qnet import QNetwork

    cfg = QNetConfig(hidden=s.hidden, head=s.head, n_components=s.n_components)
    return QNetwork(cfg, s.D, s.A, ("binary",) * s.J, rngs=nnx.Rngs(seed))


def action_weights(s: Shapes, seed: int = 1) -> np.ndarray:
    """W: f32[A, K], rows on the simplex."""
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(s.K), size=s.A).astype(np.float32)
    return w


def request_arrays(s: Shapes, B: int, seed: int = 2) -> dict[str, np.ndarray]:
    """context f32[B, D], preds f32[B, N, K], mask bool[B, N], valid bool[B] (aligned)."""
    rng = np.random.default_rng(seed)
    n_real = rng.integers(int(0.8 * s.N), s.N + 1, size=B)
    mask = np.arange(s.N)[None, :] < n_real[:, None]
    preds = rng.random((B, s.N, s.K), dtype=np.float32)
    preds *= mask[..., None]
    return {"context": aligned(rng.standard_normal((B, s.D), dtype=np.float32)),
            "preds": aligned(preds), "mask": aligned(mask), "valid": aligned(np.ones(B, bool))}


def logged_arrays(s: Shapes, B: int, seed: int = 3) -> dict[str, np.ndarray]:
    """A uniform-logging exploration chunk: context, action, propensity 1/A, binary rewards,
    consistent = one-hot(action), valid."""
    rng = np.random.default_rng(seed)
    action = rng.integers(0, s.A, size=B).astype(np.int32)
    return {"context": aligned(rng.standard_normal((B, s.D), dtype=np.float32)),
            "action": aligned(action),
            "propensity": aligned(np.full(B, 1.0 / s.A, np.float32)),
            "rewards": aligned((rng.random((B, s.J)) < 0.3).astype(np.float32)),
            "consistent": aligned(np.arange(s.A)[None, :] == action[:, None]),
            "valid": aligned(np.ones(B, bool))}


def numpy_params(model) -> dict[str, np.ndarray]:
    """The QNetwork's parameters as float32 numpy arrays (for the numpy and torch baselines):
    tower (kernel, bias) pairs, mixture (kernel, bias) or out, values."""
    p = {"tower": [(np.asarray(l.kernel[...]), np.asarray(l.bias[...])) for l in model.tower]}
    if model.cfg.head == "mixture":
        p["mix"] = (np.asarray(model.mix.kernel[...]), np.asarray(model.mix.bias[...]))
        p["values"] = np.asarray(model.values[...])
    else:
        p["out"] = (np.asarray(model.out.kernel[...]), np.asarray(model.out.bias[...]))
    p["binary"] = np.asarray(model.binary, bool)
    return p
