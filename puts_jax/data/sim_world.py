"""The simulator's world (SIMULATOR.md, Model): its settings, the drawn world, the request
stream and the exact expected rewards of any weight vector on any request.

``puts_jax.data.simulator`` builds on it (policies, logs, ground truth, the data-set files) and
re-exports every public name, so ``from puts_jax.data import simulator`` stays the one import.
Randomness depends only on (seed, row index): rows are drawn in fixed blocks of ``RNG_BLOCK``
from ``SeedSequence([seed, stream, block])`` (``stream_rows``), so any row range can be
regenerated on its own. Everything here is numpy on the host; shapes use the legend of
``puts_jax.types``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from puts_jax import slates
from puts_jax.action_set import ActionSet, simplex_grid

OBJECTIVES = ("click", "save", "closeup", "hide")  # K = 4 ranker heads
REWARD_NAMES = ("session_success", "clicks")  # J = 2
REWARD_KINDS = ("binary", "count")
RNG_BLOCK = 1024  # rows per independent RNG stream block (fixes the draws per row index)
# SimConfig.miscalibration M at most this: the ranker's noise scale 0.5 exp(0.3 M) is 5.3e12 here
# (every prediction already 0 or 1); it overflows float32 past M = 290, and from M = 443 on the
# slope exp(0.2 M) does too, so inf - inf makes predictions NaN (simulate --miscalibration 1000)
MAX_MISCALIBRATION = 100.0
STREAM_REQUESTS, STREAM_LOG, STREAM_CALIB = 0, 1, 2

# SIMULATOR.md reference tables (rows: segments, columns: click, save, closeup, hide).
_MU = ((-4.0, -4.4, -4.2, -4.5), (-3.2, -5.4, -4.4, -4.0), (-3.8, -5.1, -3.5, -4.5),
       (-3.6, -5.2, -4.3, -3.5))
_B0 = ((1, -1, 1, -1), (-1, 1, -1, 1), (1, 1, -1, -1), (-1, -1, 1, 1))
_A0 = ((0, -1, 1, 0), (0, 1, -1, 0), (0, 1, -1, 0), (0, -1, 1, 0))


def _require(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"SimConfig.{field}: {msg}")


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """Simulator world settings (SIMULATOR.md gives the reference default)."""

    n_segments: int = 4  # S user segments, drawn uniformly; rows of mu / b0 / a0 / t0
    context_dim: int = 16  # D: context x ~ N(context_scale * u_s, I_D)
    n_candidates: int = 50  # N candidates per request
    slate: int = 10  # top candidates shown; position i examined with prob (i + 1)^-examine_power
    examine_power: float = 0.8  # position-bias exponent of the examination curve
    miscalibration: float = 1.0  # scale of the per-segment ranker distortion (0 = calibrated)
    context_scale: float = 2.0  # distance of each segment's context mean from the origin
    item_noise: float = 0.8  # scale of the per-head N(0, 1) term of the true logits
    mu: tuple = _MU  # f[S, K] per-segment base logits of (click, save, closeup, hide)
    bz: tuple = (0.8, 1.0, 0.8, -0.6)  # f[K] loading of item quality z on each head
    bc: tuple = (0.6, -0.3, -0.1, 0.6)  # f[K] loading of "clickbait" c on each head
    b0: tuple = _B0  # f[S, K] ranker bias pattern: b = 0.5 * miscalibration * b0
    a0: tuple = _A0  # f[S, K] ranker slope pattern: a = exp(0.2 * miscalibration * a0)
    t0: tuple = _A0  # f[S, K] ranker noise pattern: tau = 0.5 * exp(0.3 * miscalibration * t0)
    grid_steps: int = 7  # simplex grid step 1/grid_steps over (click, save, closeup)
    hide_weight: float = -0.25  # fixed utility weight of the hide head in every action
    production_weights: tuple = (0.5, 0.25, 0.25, -0.25)  # the closest grid point is production
    world_seed: int = 1  # draws the segment directions u_s and the calibration sample (1: the
    # u_s draw whose Bayes headroom matches SIMULATOR.md; seeds 0-4 give +3.1% to +3.6%)
    n_calibration: int = 20000  # requests behind Pbar_k and Vbar[S, A, J]

    def __post_init__(self) -> None:
        S, K = self.n_segments, len(OBJECTIVES)
        _require(S >= 1, "n_segments", f"must be >= 1, got {S}")
        for name in ("mu", "b0", "a0", "t0"):
            shape = np.shape(getattr(self, name))
            _require(shape == (S, K), name, f"expected shape ({S}, {K}) for n_segments = {S}, "
                     f"got {shape}")
        for name in ("bz", "bc", "production_weights"):
            _require(np.shape(getattr(self, name)) == (K,), name, f"expected {K} values")
        for name in ("context_dim", "n_candidates", "slate", "grid_steps", "n_calibration"):
            _require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        _require(self.slate <= self.n_candidates, "slate",
                 f"{self.slate} exceeds n_candidates = {self.n_candidates}")
        _require(self.n_calibration >= 10 * S, "n_calibration", f"needs >= {10 * S} requests")
        for name in ("examine_power", "miscalibration", "context_scale", "item_noise"):
            v = getattr(self, name)
            _require(np.isfinite(v) and v >= 0, name, f"must be finite and >= 0, got {v}")
        _require(self.miscalibration <= MAX_MISCALIBRATION, "miscalibration",
                 f"must be <= {MAX_MISCALIBRATION:g} (the ranker's noise scale "
                 f"0.5*exp(0.3*M) is already 5e12 there, every prediction 0 or 1; past about 290 "
                 f"it overflows float32 and predictions turn NaN), got {self.miscalibration}")
        _require(self.world_seed >= 0, "world_seed", "must be >= 0")

    @classmethod
    def tiny(cls) -> "SimConfig":
        return cls(context_dim=4, n_candidates=12, slate=4, grid_steps=3, n_calibration=2000)

    @classmethod
    def default(cls) -> "SimConfig":
        return cls()


def config_from_dict(d: dict) -> SimConfig:
    """SimConfig from ``dataclasses.asdict`` output read back from JSON (lists -> tuples)."""
    def tup(v):
        return tuple(tup(x) for x in v) if isinstance(v, list) else v
    return SimConfig(**{k: tup(v) for k, v in d.items()})


class World(NamedTuple):
    """A drawn world (SIMULATOR.md, Model). Arrays are numpy.

    cfg: the SimConfig. mu f64[S, K], bz f64[K], bc f64[K]: true-logit tables.
    a, b, tau: f64[S, K] ranker slope, bias, noise scale. u: f64[S, D] unit segment directions.
    m: f64[K] global mean logit per head (exact: segments are uniform). pbar: f64[K] global mean
    prediction per head (calibration sample). examine: f64[slate] e_i = (i + 1)^-examine_power.
    action_set: ActionSet W[A, K] with its production index. vbar: f64[S, A, J] per-segment exact
    mean rewards of every action (calibration sample).
    """

    cfg: SimConfig
    mu: np.ndarray
    bz: np.ndarray
    bc: np.ndarray
    a: np.ndarray
    b: np.ndarray
    tau: np.ndarray
    u: np.ndarray
    m: np.ndarray
    pbar: np.ndarray
    examine: np.ndarray
    action_set: ActionSet
    vbar: np.ndarray


class SimRequests(NamedTuple):
    """Requests drawn from a world: context f32[n, D], segment i32[n], preds f32[n, N, K] ranker
    probabilities, q_true f32[n, N, K] true outcome probabilities."""

    context: np.ndarray
    segment: np.ndarray
    preds: np.ndarray
    q_true: np.ndarray


def make_world(cfg: SimConfig) -> World:
    """Draw the world of ``cfg``: ranker distortion, segment directions, Pbar_k and Vbar.

    Pbar_k and Vbar[S, A, J] come from a calibration sample of ``cfg.n_calibration`` requests on a
    stream of ``cfg.world_seed`` that no user seed reaches.
    """
    f = lambda t: np.asarray(t, np.float64)  # noqa: E731
    mis = cfg.miscalibration
    rng = np.random.default_rng(np.random.SeedSequence([cfg.world_seed, 7919]))
    u = rng.standard_normal((cfg.n_segments, cfg.context_dim))
    aset = simplex_grid(OBJECTIVES, OBJECTIVES[:3], cfg.grid_steps, {"hide": cfg.hide_weight},
                        production=cfg.production_weights)
    world = World(
        cfg=cfg, mu=f(cfg.mu), bz=f(cfg.bz), bc=f(cfg.bc), a=np.exp(0.2 * mis * f(cfg.a0)),
        b=0.5 * mis * f(cfg.b0), tau=0.5 * np.exp(0.3 * mis * f(cfg.t0)),
        u=u / np.linalg.norm(u, axis=1, keepdims=True), m=f(cfg.mu).mean(0),
        pbar=np.ones(len(OBJECTIVES)),  # placeholder until the calibration sample below
        examine=np.arange(1, cfg.slate + 1, dtype=np.float64) ** -cfg.examine_power,
        action_set=aset, vbar=np.zeros((cfg.n_segments, aset.n_actions, len(REWARD_NAMES))))
    req = _sample(world, cfg.n_calibration, cfg.world_seed, 0, STREAM_CALIB)
    world = world._replace(pbar=req.preds.mean((0, 1), dtype=np.float64))
    tv = true_values(world, req, aset.weights)
    vbar = np.stack([tv[req.segment == s].mean(0, dtype=np.float64)
                     for s in range(cfg.n_segments)])
    return world._replace(vbar=vbar)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) = inf for x below -88 (float32): exactly 0
        return 1.0 / (1.0 + np.exp(-x))


def _block(world: World, seed: int, stream: int, block: int) -> SimRequests:
    """The RNG_BLOCK rows of one RNG block (SIMULATOR.md: true logits and the ranker)."""
    cfg, f4 = world.cfg, np.float32
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream, block]))
    n, N, K = RNG_BLOCK, cfg.n_candidates, len(OBJECTIVES)
    seg = rng.integers(0, cfg.n_segments, n).astype(np.int32)
    ctx = ((cfg.context_scale * world.u[seg]).astype(f4)
           + rng.standard_normal((n, cfg.context_dim), f4))
    zc = rng.standard_normal((2, n, N, 1), f4)
    eps = rng.standard_normal((n, N, K), f4)
    noise = rng.standard_normal((n, N, K), f4)
    row = lambda t: t.astype(f4)[seg][:, None, :]  # noqa: E731  f32[n, 1, K] per-segment table
    logit_q = (row(world.mu) + world.bz.astype(f4) * zc[0] + world.bc.astype(f4) * zc[1]
               + f4(cfg.item_noise) * eps)
    m = world.m.astype(f4)
    logit_p = m + row(world.a) * (logit_q - m) + row(world.b) + row(world.tau) * noise
    return SimRequests(ctx, seg, _sigmoid(logit_p), _sigmoid(logit_q))


def stream_rows(make_block, start: int, n: int) -> tuple:
    """Rows [start, start + n) of a stream whose block ``k`` is ``make_block(k)`` (a tuple of
    arrays with RNG_BLOCK rows each)."""
    if n < 0 or start < 0:
        raise ValueError(f"n, start: must be >= 0, got {n}, {start}")
    first, last = start // RNG_BLOCK, max(start + n - 1, start) // RNG_BLOCK
    parts = [make_block(k) for k in range(first, last + 1)]
    cat = [np.concatenate(x) if len(parts) > 1 else x[0] for x in zip(*parts)]
    lo = start - first * RNG_BLOCK
    return tuple(x[lo:lo + n] for x in cat)


def _sample(world: World, n: int, seed: int, start: int, stream: int) -> SimRequests:
    if seed < 0:
        raise ValueError(f"seed: must be >= 0, got {seed}")
    return SimRequests(*stream_rows(lambda k: _block(world, seed, stream, k), start, n))


def sample_requests(world: World, n: int, seed: int, start: int = 0) -> SimRequests:
    """Rows [start, start + n) of the request stream of ``seed``: SimRequests with context
    f32[n, D], segment i32[n], preds f32[n, N, K], q_true f32[n, N, K].

    Row i depends only on (world, seed, i): a prefix or any sub-range equals the same rows of a
    longer sample, so large sets can be streamed in pieces with bounded memory.
    """
    return _sample(world, n, seed, start, STREAM_REQUESTS)


def world_slates(world: World, preds: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Slates i[n, A, slate] for utility weights w: f[A, K] (shared) or f[n, A, K].

    SIMULATOR.md: s_n = sum_k w_k P[n, k] / Pbar_k (in f64), best first; ties go to the lower
    candidate index (a stable sort of -s). One ranking for the world and for slate matching:
    ``slates.rank_slates`` on (P, w / Pbar).
    """
    return slates.rank_slates(preds, np.asarray(w, np.float64) / world.pbar, world.cfg.slate)


def slate_rewards(world: World, q_true: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Exact rewards f64[n, A, J] of slates i[n, A, slate] (SIMULATOR.md, Rewards):
    J0 = 1 - prod_i (1 - e_i ps[n_i]) with ps = 1 - (1 - q_save)(1 - q_closeup);
    J1 = sum_i e_i q_click[n_i]."""
    q = q_true.astype(np.float64)
    ps = 1.0 - (1.0 - q[..., 1]) * (1.0 - q[..., 2])  # [n, N]
    e = world.examine
    ps_top = np.take_along_axis(ps[:, None, :], top, axis=-1)  # [n, A, slate]
    qc_top = np.take_along_axis(q[:, None, :, 0], top, axis=-1)
    j0 = 1.0 - np.prod(1.0 - e * ps_top, axis=-1)
    return np.stack([j0, (e * qc_top).sum(-1)], axis=-1)


def true_values(world: World, req: SimRequests, weights: np.ndarray,
                chunk_rows: int = 1024) -> np.ndarray:
    """Exact expected rewards f32[n, A, J] of every action (weights f32[A, K]) on every request,
    in closed form (SIMULATOR.md, Rewards). Computed in chunks of ``chunk_rows`` requests."""
    weights = np.asarray(weights, np.float64)
    if weights.ndim != 2 or weights.shape[1] != len(OBJECTIVES):
        raise ValueError(f"weights: expected f32[A, {len(OBJECTIVES)}], got {weights.shape}")
    out = np.empty((len(req.preds), weights.shape[0], len(REWARD_NAMES)), np.float32)
    for lo in range(0, len(req.preds), chunk_rows):
        sl = slice(lo, lo + chunk_rows)
        out[sl] = slate_rewards(world, req.q_true[sl], world_slates(world, req.preds[sl], weights))
    return out
