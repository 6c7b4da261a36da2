"""Embedded homefeed simulator with exact ground truth (reference default: SIMULATOR.md).

A world of S user segments whose best utility-weight vector differs, a global ranker that is
miscalibrated per segment, position-biased examination and J = 2 request-level rewards
(J0 = session success, J1 = expected clicks). Every policy's true value is known in closed form, so
estimators, intervals and learning are checked against ground truth.

Randomness depends only on (seed, row index): rows are drawn in fixed blocks of ``_RNG_BLOCK``
from ``SeedSequence([seed, stream, block])``, so any row range can be regenerated on its own.
Everything here is numpy on the host; shapes use the legend of ``puts_jax.types``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import zipfile
from typing import NamedTuple

import numpy as np

from puts_jax import slates
from puts_jax.action_set import (ActionSet, atomic_write_bytes, default_mode, deferred_interrupt,
                                 simplex_grid)
from puts_jax.checks import InputError
from puts_jax.data import logs

OBJECTIVES = ("click", "save", "closeup", "hide")  # K = 4 ranker heads
REWARD_NAMES = ("session_success", "clicks")  # J = 2
REWARD_KINDS = ("binary", "count")
_RNG_BLOCK = 1024  # rows per independent RNG stream block (fixes the draws per row index)
_STREAM_REQUESTS, _STREAM_LOG, _STREAM_CALIB = 0, 1, 2

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
    req = _sample(world, cfg.n_calibration, cfg.world_seed, 0, _STREAM_CALIB)
    world = world._replace(pbar=req.preds.mean((0, 1), dtype=np.float64))
    tv = true_values(world, req, aset.weights)
    vbar = np.stack([tv[req.segment == s].mean(0, dtype=np.float64)
                     for s in range(cfg.n_segments)])
    return world._replace(vbar=vbar)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _block(world: World, seed: int, stream: int, block: int) -> SimRequests:
    """The _RNG_BLOCK rows of one RNG block (SIMULATOR.md: true logits and the ranker)."""
    cfg, f4 = world.cfg, np.float32
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream, block]))
    n, N, K = _RNG_BLOCK, cfg.n_candidates, len(OBJECTIVES)
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


def _rows(make_block, start: int, n: int) -> tuple:
    """Rows [start, start + n) of a stream whose block ``k`` is ``make_block(k)`` (a tuple of
    arrays with _RNG_BLOCK rows each)."""
    if n < 0 or start < 0:
        raise ValueError(f"n, start: must be >= 0, got {n}, {start}")
    first, last = start // _RNG_BLOCK, max(start + n - 1, start) // _RNG_BLOCK
    parts = [make_block(k) for k in range(first, last + 1)]
    cat = [np.concatenate(x) if len(parts) > 1 else x[0] for x in zip(*parts)]
    lo = start - first * _RNG_BLOCK
    return tuple(x[lo:lo + n] for x in cat)


def _sample(world: World, n: int, seed: int, start: int, stream: int) -> SimRequests:
    if seed < 0:
        raise ValueError(f"seed: must be >= 0, got {seed}")
    return SimRequests(*_rows(lambda k: _block(world, seed, stream, k), start, n))


def sample_requests(world: World, n: int, seed: int, start: int = 0) -> SimRequests:
    """Rows [start, start + n) of the request stream of ``seed``: SimRequests with context
    f32[n, D], segment i32[n], preds f32[n, N, K], q_true f32[n, N, K].

    Row i depends only on (world, seed, i): a prefix or any sub-range equals the same rows of a
    longer sample, so large sets can be streamed in pieces with bounded memory.
    """
    return _sample(world, n, seed, start, _STREAM_REQUESTS)


def _slates(world: World, preds: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Slates i[n, A, slate] for utility weights w: f[A, K] (shared) or f[n, A, K].

    SIMULATOR.md: s_n = sum_k w_k P[n, k] / Pbar_k (in f64), best first; ties go to the lower
    candidate index (a stable sort of -s). One ranking for the world and for slate matching:
    ``slates.rank_slates`` on (P, w / Pbar).
    """
    return slates.rank_slates(preds, np.asarray(w, np.float64) / world.pbar, world.cfg.slate)


def _slate_rewards(world: World, q_true: np.ndarray, top: np.ndarray) -> np.ndarray:
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
        out[sl] = _slate_rewards(world, req.q_true[sl], _slates(world, req.preds[sl], weights))
    return out


def segment_posterior(world: World, context: np.ndarray) -> np.ndarray:
    """Closed-form p(s | x): f32[n, S] for context f32[n, D] under x ~ N(c u_s, I), uniform prior.

    log p(s | x) = c x . u_s + const (all ||u_s|| = 1), a softmax over segments.
    """
    logit = world.cfg.context_scale * (np.asarray(context, np.float64) @ world.u.T)
    logit -= logit.max(1, keepdims=True)
    p = np.exp(logit)
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def best_global_action(world: World, objective: int = 0) -> int:
    """The single action with the best population mean of objective j (segments uniform)."""
    return int(np.argmax(world.vbar[:, :, objective].mean(0)))


def segment_oracle_actions(world: World, segment: np.ndarray, objective: int = 0) -> np.ndarray:
    """i32[n]: each request's segment's best action by Vbar (knows the segment)."""
    return np.argmax(world.vbar[:, :, objective], axis=1).astype(np.int32)[np.asarray(segment)]


def bayes_actions(world: World, context: np.ndarray, objective: int = 0) -> np.ndarray:
    """i32[n]: argmax_a sum_s p(s | x) Vbar[s, a, j], the best any context-only policy can do."""
    post = segment_posterior(world, context).astype(np.float64)
    return np.argmax(post @ world.vbar[:, :, objective], axis=1).astype(np.int32)


def request_oracle_actions(true_vals: np.ndarray, objective: int = 0) -> np.ndarray:
    """i32[n]: per-request best action of f32[n, A, J] (sees the candidates: an upper bound)."""
    return np.argmax(true_vals[:, :, objective], axis=1).astype(np.int32)


def policy_value(true_vals: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """f32[J]: mean true reward of a deterministic policy, actions i32[n], on f32[n, A, J]."""
    actions = np.asarray(actions)
    picked = true_vals[np.arange(len(actions)), actions]
    return picked.mean(0, dtype=np.float64).astype(np.float32)


def logging_probs(world: World, logging="uniform") -> np.ndarray:
    """f64[A] action probabilities of "uniform" or ("epsilon_greedy", eps) logging: production
    gets 1 - eps + eps / A, the others eps / A."""
    A = world.action_set.n_actions
    if logging == "uniform":
        return np.full(A, 1.0 / A)
    if isinstance(logging, tuple) and len(logging) == 2 and logging[0] == "epsilon_greedy":
        eps = float(logging[1])
        if not 0.0 < eps <= 1.0:
            raise ValueError(f"logging: epsilon must be in (0, 1], got {eps}")
        p = np.full(A, eps / A)
        p[world.action_set.production] += 1.0 - eps
        return p
    raise ValueError(f"logging: expected 'uniform' or ('epsilon_greedy', eps), got {logging!r}")


def logging_policy_value(true_vals: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """f32[J]: true value of the stochastic logging policy probs f[A] on f32[n, A, J]."""
    mean = true_vals.mean(0, dtype=np.float64)  # [A, J]
    return (np.asarray(probs, np.float64) @ mean).astype(np.float32)


def log_meta(world: World, logging="uniform", seed: int | None = None) -> logs.LogMeta:
    """LogMeta of a simulated file: action set, reward names/kinds, logging policy, provenance."""
    desc = {"kind": "uniform"} if logging == "uniform" else {
        "kind": "epsilon_greedy", "epsilon": float(logging[1]),
        "production": world.action_set.production}
    extra = {"source": "puts_jax.data.simulator", "seed": seed,
             "sim_config": dataclasses.asdict(world.cfg)}
    return logs.LogMeta(world.action_set, REWARD_NAMES, REWARD_KINDS, desc, extra)


def _log_uniforms(seed: int, start: int, n: int, width: int) -> np.ndarray:
    """f64[n, width] uniforms of the log stream of ``seed``, per row index like the requests."""
    def block(k):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_LOG, k]))
        return (rng.random((_RNG_BLOCK, width)),)
    return _rows(block, start, n)[0]


def simulate_log(world: World, n: int, seed: int, logging="uniform", id_offset: int = 0,
                 chunk_rows: int = 16384, slate_matching: bool = False,
                 with_preds: bool | None = None) -> dict:
    """An exploration log of the requests ``sample_requests(world, n, seed)``.

    Returns the keyword arguments of ``logs.write_log`` (``logs.write_log(path, **out)``):
    meta, request_id i64[n], context f32[n, D], action i32[n], propensity f64[n], rewards f32[n, 2]
    = (realized 0/1 session success ~ Bernoulli(J0), realized click count = sum over the slate of
    Bernoulli(e_i q_click[n_i])) (SIMULATOR.md, Rewards). Only the logged slate is simulated;
    every draw depends only on (seed, row index), never on ``chunk_rows``.

    slate_matching: also return ``consistent`` bool[n, A] (the actions whose ordered slate equals
      the logged one, ``puts_jax.slates``; ranked exactly as the world ranks) and make
      ``propensity`` the logging probability of the logged slate (the sum over those actions);
      actions and rewards are the same draws as without it. with_preds (default: slate_matching):
      also return ``preds`` f32[n, N, K] = P / Pbar, the ranker predictions normalized as in the
      request set, so that ``slates.slate_matching(preds, W, ...)`` re-derives the matching (up to
      float32 rounding of near-ties).
    """
    probs = logging_probs(world, logging)
    W, L, A = world.action_set.weights, world.cfg.slate, world.action_set.n_actions
    with_preds = slate_matching if with_preds is None else with_preds
    ctx = np.empty((n, world.cfg.context_dim), np.float32)
    action, rewards = np.empty(n, np.int32), np.empty((n, 2), np.float32)
    propensity = np.empty(n, np.float64)
    consistent = np.empty((n, A), bool) if slate_matching else None
    preds = (np.empty((n, world.cfg.n_candidates, len(OBJECTIVES)), np.float32) if with_preds
             else None)
    cdf = np.cumsum(probs)
    for lo in range(0, n, chunk_rows):
        req = sample_requests(world, min(chunk_rows, n - lo), seed, lo)
        b = len(req.context)
        unif = _log_uniforms(seed, lo, b, 2 + L)  # action, session, one per slate position
        act = np.minimum(np.searchsorted(cdf, unif[:, 0] * cdf[-1], side="right"), len(probs) - 1)
        if slate_matching:
            every = _slates(world, req.preds, W)  # [b, A, slate], as true_values ranks
            m = slates.match_slates(every, act, probs)
            top, consistent[lo:lo + b], propensity[lo:lo + b] = \
                every[np.arange(b), act][:, None], m.consistent, m.propensity
        else:
            top, propensity[lo:lo + b] = _slates(world, req.preds, W[act][:, None, :]), probs[act]
        if with_preds:
            preds[lo:lo + b] = req.preds / world.pbar
        j = _slate_rewards(world, req.q_true, top)[:, 0]
        p_click = world.examine * np.take_along_axis(req.q_true[..., 0], top[:, 0], axis=1)
        ctx[lo:lo + b], action[lo:lo + b] = req.context, act
        rewards[lo:lo + b, 0] = unif[:, 1] < j[:, 0]
        rewards[lo:lo + b, 1] = (unif[:, 2:] < p_click).sum(1)
    meta = log_meta(world, logging, seed)
    out = dict(meta=meta, request_id=np.arange(n, dtype=np.int64) + id_offset, context=ctx,
               action=action, propensity=propensity, rewards=rewards)
    if slate_matching:
        meta.extra["matching"] = {"kind": "slate", "slate": L, "ordered": True,
                                  "propensity": "sum of the logging probabilities of the actions "
                                                "giving the logged slate"}
        out["consistent"] = consistent
    if with_preds:
        meta.extra["preds"] = "ranker probabilities divided by their global mean pbar per head"
        meta.extra["pbar"] = world.pbar.tolist()
        out["preds"] = preds
    return out


def _atomic_write_npz(path: str, arrays: dict) -> None:
    """Byte-reproducible .npz (fixed zip timestamps, sorted names) via temp file + os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    os.chmod(tmp, default_mode())
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(arrays):
                info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w") as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]),
                                              allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def truth_arrays(world: World, n_eval: int, seed: int, chunk_rows: int = 8192) -> dict:
    """Ground truth on ``n_eval`` fresh requests of ``seed`` (streamed in chunks).

    Keys: context f32[n, D], segment i32[n], true_values f32[n, A, J], vbar f32[S, A, J],
    weights f32[A, K], pbar f32[K], action_values f32[A, J] (per-action mean true values),
    best_global_action and production_action (scalars), ``<policy>_actions`` i32[n] and
    ``value_<policy>`` f32[J] for best_global, production, bayes, segment_oracle, request_oracle,
    and value_uniform (the uniform logging policy).
    """
    parts = []
    for lo in range(0, n_eval, chunk_rows):
        req = sample_requests(world, min(chunk_rows, n_eval - lo), seed, lo)
        parts.append((req.context, req.segment, true_values(world, req, world.action_set.weights)))
    ctx, seg, tv = (np.concatenate(p) for p in zip(*parts))
    g, prod = best_global_action(world), world.action_set.production
    acts = {"bayes": bayes_actions(world, ctx), "request_oracle": request_oracle_actions(tv),
            "segment_oracle": segment_oracle_actions(world, seg)}
    out = {"context": ctx, "segment": seg, "true_values": tv, "weights": world.action_set.weights,
           "vbar": world.vbar.astype(np.float32), "pbar": world.pbar.astype(np.float32),
           "action_values": tv.mean(0, dtype=np.float64).astype(np.float32),
           "best_global_action": np.int32(g), "production_action": np.int32(prod),
           "value_uniform": logging_policy_value(tv, logging_probs(world))}
    out.update({f"{k}_actions": a for k, a in acts.items()})
    acts.update(best_global=np.full(n_eval, g, np.int32),
                production=np.full(n_eval, prod, np.int32))
    out.update({f"value_{k}": policy_value(tv, a) for k, a in acts.items()})
    return out


STAGING = ".simulate-staging"  # folder inside out_dir where a new set is written before the swap
_COMPLETE = "COMPLETE"  # written last into STAGING: JSON list of the set's file names
_FILES = (("logs", "logs.parquet"), ("heldout", "heldout.parquet"),
          ("requests", "requests.parquet"), ("truth", "truth.npz"),
          ("evaluation", "evaluation.parquet"))


def write_simulation(out_dir: str, cfg: SimConfig, n_logs: int, n_heldout: int, n_eval: int,
                     n_requests: int, seed: int, logging="uniform", slate_matching: bool = False,
                     n_evaluation: int | None = None) -> dict:
    """Write one simulated data set; returns {"logs", "heldout", "requests", "truth"} -> path
    (and "evaluation" when ``n_evaluation`` is given).

    logs.parquet / heldout.parquet: exploration logs (training; checkpoint selection and OPE).
    requests.parquet: a request set (preds N x K per row, candidate_ids) for batch scoring
      (held in memory while written: size it for scoring demos, not millions of rows).
    truth.npz: ``truth_arrays`` on n_eval fresh requests. evaluation.parquet (n_evaluation rows,
      seed ``seed + 1_000_003``, request ids from 10**12): the frontier (OPE) log. Each part has
      its own seed derived from ``seed``; the same arguments give identical bytes.
    slate_matching: the logs carry slate-level ``consistent``, slate propensities and ``preds``
    (``simulate_log``); the draws are the same as without it.

    All or nothing: every file is written into ``out_dir/.simulate-staging`` and moved into
    ``out_dir`` at the end with Ctrl-C held back, so after an interrupt or a failure ``out_dir``
    holds the whole previous set or the whole new one, never a mix. A staging folder left by a
    killed run is finished (its set was complete) or deleted (it was not) before anything else.
    Sizes below 1, a negative seed or an unusable ``out_dir`` raise InputError naming the
    argument (``n_logs``, ``seed``, ``out``) before anything is written.
    """
    sizes = {"n_logs": n_logs, "n_heldout": n_heldout, "n_eval": n_eval,
             "n_requests": n_requests}
    if n_evaluation is not None:
        sizes["n_evaluation"] = n_evaluation
    names = [f for k, f in _FILES if k != "evaluation" or n_evaluation is not None]
    _check_arguments(out_dir, sizes, seed, names)
    world = make_world(cfg)
    recover_staging(out_dir)
    stage = os.path.join(out_dir, STAGING)
    os.makedirs(stage)
    try:
        _write_set(stage, world, n_logs, n_heldout, n_eval, n_requests, seed, logging,
                   slate_matching, n_evaluation)
        atomic_write_bytes(os.path.join(stage, _COMPLETE), json.dumps(names).encode())
    except BaseException:  # an interrupt or a failure while writing: the old set stays
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _move_in(out_dir, names)
    return {k: os.path.join(out_dir, f) for k, f in _FILES if f in names}


def _check_arguments(out_dir: str, sizes: dict, seed: int, names: list) -> None:
    """InputError naming the first argument ``write_simulation`` cannot use; nothing written."""
    for name, v in sizes.items():
        if v < 1:
            raise InputError(name, [], f"must be >= 1, got {v}")
    if seed < 0:
        raise InputError("seed", [], f"must be >= 0, got {seed}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError("out", [], f"{out_dir} is a file, not a folder")
    for name in names:
        if os.path.isdir(os.path.join(out_dir, name)):
            raise InputError("out", [], f"{os.path.join(out_dir, name)} is a folder; the data "
                             f"set writes a file there (nothing written)")


def recover_staging(out_dir: str) -> str | None:
    """Finish or drop a staging folder that a killed ``write_simulation`` left in ``out_dir``:
    a complete set (its COMPLETE list written) is moved in, "completed"; a partial one is
    deleted, "removed" (``out_dir`` keeps the old set); None when there is none."""
    stage = os.path.join(out_dir, STAGING)
    if not os.path.isdir(stage):
        return None
    try:
        with open(os.path.join(stage, _COMPLETE)) as f:
            names = json.load(f)
    except (OSError, ValueError):
        shutil.rmtree(stage)
        return "removed"
    _move_in(out_dir, names)
    return "completed"


def _move_in(out_dir: str, names: list) -> None:
    """Move the files ``names`` of the complete staging folder into ``out_dir`` with SIGINT
    deferred, then delete the folder. COMPLETE stays until every file is moved, so a move killed
    midway is finished by ``recover_staging`` (a file already moved is skipped)."""
    stage = os.path.join(out_dir, STAGING)
    with deferred_interrupt():
        for name in names:
            src = os.path.join(stage, name)
            if os.path.exists(src):
                try:
                    os.replace(src, os.path.join(out_dir, name))
                except OSError as e:
                    raise OSError(f"out: moving the new data set into {out_dir} failed at {name} "
                                  f"({e}); the rest waits in {stage}, and the next simulate into "
                                  f"{out_dir} moves it in first") from e
        shutil.rmtree(stage)


def _write_set(folder: str, world: World, n_logs: int, n_heldout: int, n_eval: int,
               n_requests: int, seed: int, logging, slate_matching: bool,
               n_evaluation: int | None) -> None:
    """The files of ``write_simulation``, each written atomically into ``folder``."""
    cfg = world.cfg
    s_log, s_held, s_req, s_eval = (int(x) for x in np.random.SeedSequence(seed).generate_state(4))
    path = dict((k, os.path.join(folder, f)) for k, f in _FILES)
    logs.write_log(path["logs"], **simulate_log(world, n_logs, s_log, logging,
                                                slate_matching=slate_matching))
    logs.write_log(path["heldout"], **simulate_log(world, n_heldout, s_held, logging,
                                                   id_offset=n_logs,
                                                   slate_matching=slate_matching))
    req = sample_requests(world, n_requests, s_req)
    N, rid0 = cfg.n_candidates, n_logs + n_heldout
    rid = np.arange(n_requests, dtype=np.int64) + rid0
    # The utility normalizes each head by its global mean prediction (s_n = sum_k w_k P/Pbar_k):
    # the request set carries P / Pbar so that serving's W[a] . preds ranks as the world does.
    meta = log_meta(world, logging, s_req)
    meta.extra["preds"] = "ranker probabilities divided by their global mean pbar per head"
    meta.extra["pbar"] = world.pbar.tolist()
    logs.write_requests(path["requests"], meta, request_id=rid,
                        context=req.context, preds=(req.preds / world.pbar).astype(np.float32),
                        candidate_ids=rid[:, None] * N + np.arange(N))
    _atomic_write_npz(path["truth"], truth_arrays(world, n_eval, s_eval))
    if n_evaluation is not None:
        logs.write_log(path["evaluation"], **simulate_log(
            world, n_evaluation, seed + 1_000_003, logging, id_offset=10 ** 12,
            slate_matching=slate_matching))
