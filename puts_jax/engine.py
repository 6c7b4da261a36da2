"""The only jit builders in the library: the lambda sweep and the fixed policies of off-policy
evaluation (optionally with the Poisson bootstrap) here, the fused serve pass and its
ahead-of-time forms (``compile_latency_serve``, ``export_serve``) in ``puts_jax.serving``: the
Q-network and the kernels meet in one compiled program each. Streaming a log through them is
``puts_jax.evaluation``; ``puts_jax.scorer.Scorer`` serves host batches. This module re-exports
the public names of ``serving`` and ``scorer`` (``engine.build_serve``, ``engine.Scorer``,
``engine.TRACE_COUNTS``, ...): ``puts_jax.engine`` stays the one entry point.

Builders bind the structure (model graphdef, action weights, static sizes) with
``functools.partial`` and jit the rest: parameters, lambda, policy parameters, the bootstrap key
and the chunk's first row are traced, so a new lambda or a new checkpoint never recompiles
(STYLE.md 4-5). Shapes are bucketed on the host (``Scorer``; fixed-size log chunks in
``evaluation``) so a stream of sizes compiles a few times.
``TRACE_COUNTS`` counts traces per entry point (tests use it to prove there is no recompilation).
Every builder returns the ``jax.jit`` object itself (``.lower(...).compile()`` for ahead-of-time
compilation and memory analysis).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from puts_jax import bootstrap, checks, kernels, ope
from puts_jax.config import SweepConfig
from puts_jax.scorer import Scorer
from puts_jax.serving import (TRACE_COUNTS, build_serve, compile_latency_serve, export_serve,
                              q_values, scalarized_q, split_model)
from puts_jax.types import BootstrapStats, EstimatorStats, LoggedBatch

# The public names, those of serving and scorer included (re-exported here).
__all__ = ["TRACE_COUNTS", "Scorer", "build_fixed", "build_fixed_rows", "build_serve",
           "build_sweep", "check_policy_param", "compile_latency_serve", "export_serve",
           "q_values", "scalarized_q", "split_model"]

# ----------------------------------------------------------------------------- sweep

def _greedy_rows(q_BxAxJ, lams_LxJ, consistent_BxA, fallback: int):
    """Greedy target of every lambda: pi(logged decision) f32[B, L] = consistent[b, a*] and
    qhat(x, pi) f32[B, L, J] = q[b, a*] (a* = ``kernels.sweep_select``: exact gathers)."""
    a = kernels.sweep_select(q_BxAxJ, lams_LxJ, fallback)
    pi = jnp.take_along_axis(consistent_BxA, a, axis=1).astype(jnp.float32)
    qp = jnp.stack([jnp.take_along_axis(q_BxAxJ[:, :, j], a, axis=1)
                    for j in range(q_BxAxJ.shape[2])], axis=-1)
    return pi, qp


def _policy_rows(q_BxAxJ, lams_LxJ, consistent_BxA, policy: str, param, fallback: int):
    """pi(logged decision) f32[B, L], qhat(x, pi) f32[B, L, J] and qhat(x, logged decision)
    f32[B, L, J] (``ope.logged_decision_qhat``: the target-weighted mean of Q over the actions
    consistent with the logged decision) of every lambda's target policy (``ope.policy_probs``)
    on one block of rows."""
    if policy != "softmax":
        pi, qp = _greedy_rows(q_BxAxJ, lams_LxJ, consistent_BxA, fallback)
        if policy == "greedy":
            return pi, qp, qp  # a matched row's decision is a*'s: qhat = Q(x, a*); else w = 0
        eps = jnp.asarray(param, jnp.float32)  # (1 - eps) greedy + eps uniform
        A = q_BxAxJ.shape[1]
        cons = consistent_BxA.astype(jnp.float32)
        n_cons = jnp.sum(cons, axis=1)[:, None]
        q_mean = jnp.sum(q_BxAxJ, axis=1)[:, None, :]
        q_cons = jnp.einsum("ba,baj->bj", cons, q_BxAxJ)[:, None, :]
        pi_eps = (1.0 - eps) * pi + eps / A * n_cons
        num = (1.0 - eps) * pi[..., None] * qp + eps / A * q_cons
        return pi_eps, (1.0 - eps) * qp + eps / A * q_mean, _ratio(num, pi_eps[..., None])
    s = jnp.einsum("baj,lj->bal", q_BxAxJ, lams_LxJ.astype(jnp.float32))  # [rows, A, L]
    bad = ~jnp.all(jnp.isfinite(s), axis=1, keepdims=True)
    soft = jax.nn.softmax(jnp.where(bad, 0.0, s) / jnp.asarray(param, jnp.float32), axis=1)
    one_hot = (lax.broadcasted_iota(jnp.int32, s.shape, 1) == fallback).astype(jnp.float32)
    probs = jnp.where(bad, one_hot, soft)
    c = jnp.where(consistent_BxA[:, :, None], probs, 0.0)
    pi = jnp.sum(c, axis=1)
    return (pi, jnp.einsum("bal,baj->blj", probs, q_BxAxJ),
            _ratio(jnp.einsum("bal,baj->blj", c, q_BxAxJ), pi[..., None]))


def _ratio(num, den):
    """num / den where den > 0, else 0 (a decision the target never makes: its weight is 0)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


_SWEEP_BLOCK_ELEMS = 1 << 17  # f32[rows, L] temporaries of the sweep ([rows, A, L] for softmax)


def _sweep_block_rows(B: int, L: int, A: int, policy: str) -> int:
    """Rows per block: a power of two with rows * L (* A for softmax) <= _SWEEP_BLOCK_ELEMS,
    8 <= rows <= 4096, and no more than B needs."""
    budget = _SWEEP_BLOCK_ELEMS // (A if policy == "softmax" else 1)
    rows = 1 << max(3, (budget // max(L, 1)).bit_length() - 1)
    return min(rows, 4096, 1 << max(B - 1, 0).bit_length())


def _pad_logged(lb: LoggedBatch, rows: int) -> LoggedBatch:
    """Pad to ``rows`` with padding rows (valid False, propensity 1, everything else 0)."""
    pad = rows - lb.action.shape[0]
    if not pad:
        return lb
    return LoggedBatch(*(None if x is None else jnp.pad(
        x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=1 if f == "propensity" else 0)
        for f, x in zip(LoggedBatch._fields, lb)))


def _key_u32(key, n_resamples: int):
    """u32[2] threefry key data of a traced ``jax.random.key`` (or raw u32[2] key data)."""
    if not n_resamples:
        return jnp.zeros(2, jnp.uint32)
    if key is None:
        raise checks.InputError("key", [], "a bootstrap needs an explicit key")
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    if key.shape != (2,) or key.dtype != jnp.uint32:
        raise checks.InputError("key", [], "expected a threefry key (u32[2] data), got "
                                f"{key.dtype}{list(key.shape)}")
    return key


class _SweepSums(NamedTuple):
    """Sums of the sweep over rows, f32 (counts i32).

    stats: EstimatorStats with a leading L axis.
    boot: BootstrapStats [R, L, ...] with second moments; None without a bootstrap.
    """

    stats: EstimatorStats
    boot: BootstrapStats | None


class _Running(NamedTuple):
    """The ``lax.scan`` carry of the sweep over row blocks: ``total`` the f32 running sums and
    ``error`` the rounding error of each f32 addition (2Sum, Knuth 1969; zero for the i32
    counts), added back at the end: summing thousands of block sums one after the other then
    stays as accurate as one reduction over all rows (compensated summation, Kahan 1965)."""

    total: _SweepSums
    error: _SweepSums


def _two_sum(run: _Running, x: _SweepSums) -> _Running:
    """total + x, with each f32 addition's exact rounding error added to ``error``."""
    def error(t, y, s, e):
        if not jnp.issubdtype(s.dtype, jnp.floating):
            return e  # i32 counts add exactly
        z = s - t
        return e + ((t - (s - z)) + (y - z))

    total = jax.tree.map(jnp.add, run.total, x)
    return _Running(total, jax.tree.map(error, run.total, x, total, run.error))


def _block_sums(graphdef, policy: str, fallback: int, floor, with_dr: bool, n_resamples: int,
                params, lams_LxJ, policy_param, key_u32, lb: LoggedBatch, first) -> _SweepSums:
    """Every lambda's sums over one block of rows: Q of the block (f32[rows, A, J]), each
    lambda's target, the estimator terms on [rows, L] arrays summed over the rows, and with a
    bootstrap their Poisson-bootstrap sums (rows ``first + arange(rows)`` of the log)."""
    q = q_values(graphdef, params, lb.context, lb.context_ids)
    pi, qp, ql = _policy_rows(q, lams_LxJ, lb.consistent, policy, policy_param, fallback)
    per_row = ope.lambda_rows_stats(pi, lb.propensity, lb.rewards, lb.valid,
                                    qp if with_dr else None, ql if with_dr else None, floor=floor)
    if not n_resamples:
        return _SweepSums(ope.sum_rows(per_row), None)
    terms = bootstrap.row_terms(per_row, moments=True)
    terms = terms._replace(n=terms.n[:, 0])  # the same for every lambda
    return _SweepSums(ope.sum_rows(per_row),
                      bootstrap.resample_sums(key_u32, first, terms, n_resamples))


def _sweep(graphdef, policy: str, fallback: int, floor, with_dr: bool, n_resamples: int,
           params, lams_LxJ, logged: LoggedBatch, policy_param=0.0, key=None, first_row=0):
    TRACE_COUNTS["sweep"] += 1
    one = functools.partial(_block_sums, graphdef, policy, fallback, floor, with_dr, n_resamples,
                            params, lams_LxJ.astype(jnp.float32), policy_param,
                            _key_u32(key, n_resamples))
    first_row = jnp.asarray(first_row).astype(jnp.uint32)
    B, A = logged.consistent.shape
    rows = _sweep_block_rows(B, lams_LxJ.shape[0], A, policy)
    lb = _pad_logged(logged, max(B, rows))  # only a chunk shorter than one block is padded
    end = lb.action.shape[0]

    def step(run: _Running, i):
        start = jnp.minimum(i * rows, end - rows)  # a last, partial block overlaps the one before
        blk = jax.tree.map(lambda x: lax.dynamic_slice_in_dim(x, start, rows), lb)
        fresh = start + jnp.arange(rows) >= i * rows  # rows that no earlier block counted
        sums = one(blk._replace(valid=blk.valid & fresh), first_row + start.astype(jnp.uint32))
        return _two_sum(run, sums), None

    block_in = jax.tree.map(lambda x: jax.ShapeDtypeStruct((rows,) + x.shape[1:], x.dtype), lb)
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                        jax.eval_shape(one, block_in, first_row))
    run, _ = lax.scan(step, _Running(zero, zero), jnp.arange(-(-B // rows), dtype=jnp.int32))
    sums = jax.tree.map(jnp.add, run.total, run.error)
    return (sums.stats, sums.boot) if n_resamples else sums.stats


@functools.lru_cache(maxsize=32)
def build_sweep(graphdef, cfg: SweepConfig, policy: str = "greedy", fallback_action: int = 0,
                propensity_floor: float | None = None, with_dr: bool = True,
                n_resamples: int = 0) -> Callable:
    """One jitted program ``sweep(params, lams f32[L, J], logged: LoggedBatch,
    policy_param=0.0, key=None, first_row=0) -> EstimatorStats`` with a leading L axis (f32 sums,
    i32 counts); ``sweep.lower(...).compile()`` compiles ahead of time (memory analysis
    included).

    One ``lax.scan`` over blocks of rows (a power of two with rows * L <= 2^17, * A for softmax;
    a last, partial block overlaps the one before and counts only its new rows): per block, Q
    f32[rows, A, J] once, every lambda's target policy at once (greedy: ``kernels.sweep_select``,
    one running argmax over the actions with the lambdas in the vector lanes), the estimator
    terms on [rows, L] arrays (``ope.lambda_rows_stats``) and, with a bootstrap, their resample
    sums; the block's sums are added to the carry (compensated f32, ``_Running``). A row's
    bootstrap multiplicities depend only on (key, its row index, the resample), so its resample
    sums add over blocks like the rest and every lambda gets the same draws (paired comparisons)
    without keeping rows: nothing per-row outlives its block, and the scratch memory is one
    block's whatever B (compiled, J = 2, L = 1,001, R = 200, 65,536 rows: 35 MiB; stacking the
    blocks' per-row terms took 6 GiB). ``cfg`` is part of the cache key only: the sweep does not
    chunk lambdas (``cfg.lambda_chunk`` is not used).

    policy: "greedy" (PRL-PUTS target), "epsilon_greedy" or "softmax" (policy_param = epsilon /
    temperature, traced; not validated here: ``evaluation.evaluate_log`` checks it). DM/DR use
    the Q-network itself as the reward model qhat (Dudik et al. 2011), at the logged decision
    as ``ope.logged_decision_qhat`` defines it (a row several actions match: not the logged
    action's Q); ``with_dr=False`` leaves those fields None. With ``n_resamples`` R > 0 the
    program returns ``(EstimatorStats, BootstrapStats)``, the second with [R, L, ...] Poisson-bootstrap sums of the same rows,
    second moments included (the bootstrap-t band over the frontier needs them;
    ``puts_jax.bootstrap``): ``key`` a threefry ``jax.random.key`` (required), ``first_row`` the
    chunk's first row index in the log (traced; ``np.uint32`` for logs beyond 2^31 rows). Cached
    per arguments, so repeated evaluations reuse the compiled program.

    Raises ValueError for an unknown ``policy``; the program raises InputError("key") when
    R > 0 and ``key`` is missing or not a threefry key. Shapes are not validated
    (``evaluation.evaluate_log`` checks its inputs and names the field).
    """
    if policy not in ope.POLICY_KINDS:
        raise ValueError(f"policy: must be one of {ope.POLICY_KINDS}, got {policy!r}")
    return jax.jit(functools.partial(_sweep, graphdef, policy, fallback_action, propensity_floor,
                                     with_dr, int(n_resamples)))


def check_policy_param(policy: str, param) -> None:
    """Host-side check of a sweep's policy parameter (epsilon in [0, 1], temperature > 0)."""
    if isinstance(param, jax.core.Tracer):
        return
    v = float(param)
    if policy == "epsilon_greedy" and not 0.0 <= v <= 1.0:
        raise checks.InputError("policy_param", [], f"epsilon must be in [0, 1], got {v}")
    if policy == "softmax" and not v > 0.0:
        raise checks.InputError("policy_param", [], f"softmax temperature must be > 0, got {v}")


def _map_policies(rows_fn, xs, n_resamples: int, key_u32, first_row):
    """``lax.map`` of ``rows_fn`` (one policy -> per-row EstimatorStats, leading B) over the few
    policies ``xs``: summed stats per policy, and with n_resamples > 0 also the Poisson-bootstrap
    sums of the same rows (``bootstrap.resample_stats``, first moments)."""
    def one(x):
        rows = rows_fn(x)
        return ope.sum_rows(rows), (bootstrap.row_terms(rows) if n_resamples else None)

    stats, terms = lax.map(one, xs, batch_size=8)
    if not n_resamples:
        return stats
    return stats, bootstrap.resample_stats(key_u32, jnp.asarray(first_row).astype(jnp.uint32),
                                           terms, n_resamples)


def _fixed(graphdef, floor, n_resamples: int, params, probs_PxA, logged: LoggedBatch, key=None,
           first_row=0):
    TRACE_COUNTS["fixed"] += 1
    key_u32 = _key_u32(key, n_resamples)
    q = None
    if graphdef is not None:
        q = q_values(graphdef, params, logged.context, logged.context_ids)

    def one_policy(probs_A):
        pi = jnp.einsum("ba,a->b", logged.consistent.astype(jnp.float32), probs_A)
        qpol = ql = None
        if q is not None:
            qpol = jnp.einsum("a,baj->bj", probs_A, q)
            ql = jax.vmap(ope.logged_decision_qhat, in_axes=(None, 0, 0))(
                probs_A, logged.consistent, q)
        return ope.rows_stats(pi, logged.propensity, logged.rewards, logged.valid, qpol, ql,
                              floor=floor)

    return _map_policies(one_policy, probs_PxA.astype(jnp.float32), n_resamples, key_u32,
                         first_row)


@functools.lru_cache(maxsize=32)
def build_fixed(graphdef=None, propensity_floor: float | None = None,
                n_resamples: int = 0) -> Callable:
    """One jitted program ``fixed(params, probs f32[P, A], logged, key=None, first_row=0)
    -> EstimatorStats[P]`` for context-free policies (each a distribution over actions: a single
    global action is a one-hot, uniform logging is 1/A). With a graphdef, DM/DR use its Q as qhat;
    without one (params ignored) those fields are None. ``n_resamples``, ``key`` and
    ``first_row`` as in ``build_sweep`` (first moments only: percentile intervals, no
    per-resample standard errors).

    Raises (the program): InputError("key") when ``n_resamples`` > 0 and ``key`` is missing or
    not a threefry key."""
    return jax.jit(functools.partial(_fixed, graphdef, propensity_floor, int(n_resamples)))


def _fixed_rows(graphdef, floor, n_resamples: int, params, actions_PxB, logged: LoggedBatch,
                key=None, first_row=0):
    TRACE_COUNTS["fixed"] += 1
    key_u32 = _key_u32(key, n_resamples)
    q = None
    if graphdef is not None:
        q = q_values(graphdef, params, logged.context, logged.context_ids)

    def one_policy(a_B):
        a = a_B.astype(jnp.int32)[:, None]
        pi = jnp.take_along_axis(logged.consistent, a, axis=1)[:, 0].astype(jnp.float32)
        qp = None if q is None else jnp.take_along_axis(q, a[:, :, None], axis=1)[:, 0]
        # deterministic: a matched row's decision is the policy's, qhat = Q(x, a) (else w = 0)
        return ope.rows_stats(pi, logged.propensity, logged.rewards, logged.valid, qp, qp,
                              floor=floor)

    return _map_policies(one_policy, actions_PxB, n_resamples, key_u32, first_row)


@functools.lru_cache(maxsize=32)
def build_fixed_rows(graphdef=None, propensity_floor: float | None = None,
                     n_resamples: int = 0) -> Callable:
    """One jitted program ``fixed_rows(params, actions i32[P, B], logged, key=None,
    first_row=0) -> EstimatorStats[P]`` for deterministic policies given as one action per row
    (e.g. a contextual production policy's logged choice). DM/DR, ``n_resamples`` and what
    it Raises as in ``build_fixed``."""
    return jax.jit(functools.partial(_fixed_rows, graphdef, propensity_floor, int(n_resamples)))
