"""The only jit builders in the library: the fused serve pass, the lambda sweep and the fixed
policies of off-policy evaluation (optionally with the Poisson bootstrap), where the Q-network and
the kernels meet in one compiled program each. Streaming a log through them is
``puts_jax.evaluation``.

Builders bind the structure (model graphdef, action weights, static sizes) with
``functools.partial`` and jit the rest: parameters, lambda, policy parameters, the bootstrap key
and the chunk's first row are traced, so a new lambda or a new checkpoint never recompiles
(STYLE.md 4-5). Shapes are bucketed on the host (``Scorer``; fixed-size log chunks in
``evaluation``) so a stream of sizes compiles a few times.
``TRACE_COUNTS`` counts traces per entry point (tests use it to prove there is no recompilation).
"""

from __future__ import annotations

import collections
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from puts_jax import bootstrap, checks, kernels, ope
from puts_jax.config import ScoringConfig, SweepConfig
from puts_jax.types import LoggedBatch, RequestBatch, ServeOutput

# Traces per entry point ("serve", "sweep", "fixed"), incremented inside the traced functions.
TRACE_COUNTS: collections.Counter = collections.Counter()


def split_model(model) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, params) from an ``nnx.Module`` or an already split pair."""
    if isinstance(model, tuple):
        return model
    return nnx.split(model)


def q_values(graphdef, params, context, context_ids=None) -> jax.Array:
    """Q-values f32[B, A, J] of the merged model (inside a traced function)."""
    return nnx.merge(graphdef, params)(context, context_ids).astype(jnp.float32)


# ----------------------------------------------------------------------------- serve

def _serve(graphdef, W_AxK, k: int, fallback: int, params, lam_J, batch: RequestBatch) -> ServeOutput:
    TRACE_COUNTS["serve"] += 1
    q = q_values(graphdef, params, batch.context, batch.context_ids)
    return kernels.serve_batch(q, lam_J, W_AxK, batch.preds, batch.mask, k, fallback)


def build_serve(graphdef, action_weights, cfg: ScoringConfig) -> Callable[..., ServeOutput]:
    """One jitted program ``serve(params, lam f32[J], batch: RequestBatch) -> ServeOutput``:
    context -> Q f32[B, A, J] -> scalarize -> select -> gather W -> re-weight all candidates ->
    masked top-k (PRL-PUTS serving). graphdef and W f32[A, K] are closed over; params and lam
    are traced (changing lambda never recompiles). Shapes are used as given: see ``Scorer``."""
    W = jnp.asarray(np.asarray(action_weights, np.float32))
    if not 0 <= cfg.fallback_action < W.shape[0]:
        raise ValueError(f"ScoringConfig.fallback_action: {cfg.fallback_action} outside [0, {W.shape[0]})")
    return jax.jit(functools.partial(_serve, graphdef, W, cfg.top_k, cfg.fallback_action))


def _bucket(size: int, buckets: tuple[int, ...]) -> int:
    """Smallest bucket >= size; beyond the largest, the next multiple of the largest."""
    for b in buckets:
        if size <= b:
            return b
    top = buckets[-1]
    return -(-size // top) * top


def _aligned_zeros(shape, dtype) -> np.ndarray:
    """A zeroed array whose data is 64-byte aligned, so jit takes it without a copy (FACTS.md)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(nbytes + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off:off + nbytes].view(dtype).reshape(shape)


class Scorer:
    """Host-facing serving: buckets B and N (``ScoringConfig``), splits batches larger than the
    biggest batch bucket, runs the compiled serve pass and returns numpy, one row per input row.

    Inputs already at a bucket shape, C-contiguous and 64-byte aligned (Arrow buffers are) go to
    the device without a copy; others are copied once into reused, aligned padding buffers
    (jax would copy an unaligned array twice, FACTS.md). Not thread-safe (the
    buffers are shared); use one Scorer per thread.
    """

    def __init__(self, model, action_weights, cfg: ScoringConfig, params=None):
        """model: an nnx.Module, a (graphdef, params) pair, or a graphdef with ``params``."""
        graphdef, p = split_model(model) if params is None else (model, params)
        self.graphdef, self.params, self.cfg = graphdef, p, cfg
        self.action_weights = np.asarray(action_weights, np.float32)
        self._serve = build_serve(graphdef, self.action_weights, cfg)
        self._buffers: dict = {}

    def set_params(self, params) -> None:
        """Swap parameters (same structure): no recompilation."""
        self.params = params

    def _padded(self, name: str, x: np.ndarray, shape: tuple) -> np.ndarray:
        if x.shape == shape and x.flags.c_contiguous and x.ctypes.data % 64 == 0:
            return x  # zero-copy into jit
        key = (name, shape, x.dtype.str)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = _aligned_zeros(shape, x.dtype)
        region = tuple(slice(0, s) for s in x.shape)
        buf[region] = x
        if name in ("mask", "context", "context_ids"):  # padding must stay neutral
            buf[x.shape[0]:] = 0
            if name == "mask":
                buf[:, x.shape[1]:] = False
        return buf

    def _score_piece(self, lam, batch: RequestBatch, n_pad: int) -> ServeOutput:
        b, n = batch.preds.shape[:2]
        b_pad = _bucket(b, self.cfg.batch_buckets)
        K = batch.preds.shape[2]
        padded = RequestBatch(
            context=self._padded("context", batch.context, (b_pad, batch.context.shape[1])),
            preds=self._padded("preds", batch.preds, (b_pad, n_pad, K)),
            mask=self._padded("mask", batch.mask, (b_pad, n_pad)),
            valid=self._padded("valid", batch.valid, (b_pad,)),
            context_ids=None if batch.context_ids is None else self._padded(
                "context_ids", batch.context_ids, (b_pad, batch.context_ids.shape[1])))
        out = jax.device_get(self._serve(self.params, lam, padded))
        return ServeOutput(*(np.asarray(x)[:b] for x in out))

    def score(self, lam, batch: RequestBatch) -> ServeOutput:
        """Score host numpy requests: lam f32[J] (validated: non-negative, sums to 1); returns a
        ServeOutput of numpy arrays with exactly B rows in input order."""
        lam = checks.check_lambda(np.asarray(lam, np.float32))
        B, N = batch.preds.shape[:2]
        batch = RequestBatch(
            np.asarray(batch.context, np.float32), np.asarray(batch.preds),
            np.asarray(batch.mask, bool),
            np.ones(B, bool) if batch.valid is None else np.asarray(batch.valid, bool),
            None if batch.context_ids is None else np.asarray(batch.context_ids, np.int32))
        n_pad = _bucket(max(N, 1), self.cfg.candidate_buckets)
        step = self.cfg.batch_buckets[-1]
        if B <= step:
            return self._score_piece(lam, batch, n_pad)
        parts = [self._score_piece(lam, jax.tree.map(lambda x: x[lo:lo + step], batch), n_pad)
                 for lo in range(0, B, step)]
        return ServeOutput(*(np.concatenate(f) for f in zip(*parts)))

    __call__ = score


# ----------------------------------------------------------------------------- sweep

def _q_logged(q_BxAxJ, action_B) -> jax.Array:
    """qhat(x, logged action) f32[B, J]; 0 for rows logged outside the action set (action -1,
    ``data.logs.OUTSIDE_ACTION``), whose weight is 0 for every policy anyway."""
    a = action_B.astype(jnp.int32)
    got = jnp.take_along_axis(q_BxAxJ, jnp.maximum(a, 0)[:, None, None], axis=1)[:, 0]
    return jnp.where((a >= 0)[:, None], got, 0.0)


def _policy_terms(q_BxAxJ, lam_J, consistent_BxA, policy: str, policy_param, fallback: int):
    """Target probability of the logged decision f32[B] and qhat(x, pi) f32[B, J] for one lambda."""
    s_BxA = jnp.einsum("baj,j->ba", q_BxAxJ, lam_J.astype(jnp.float32))
    if policy == "greedy":
        a, _ = jax.vmap(kernels.select_from_scores, (0, None))(s_BxA, fallback)
        pi = jnp.take_along_axis(consistent_BxA, a[:, None], axis=1)[:, 0].astype(jnp.float32)
        qp = jnp.take_along_axis(q_BxAxJ, a[:, None, None], axis=1)[:, 0]
        return pi, qp
    probs = jax.vmap(ope.policy_probs, (0, None, None, None))(s_BxA, policy, policy_param, fallback)
    return jax.vmap(ope.target_prob)(probs, consistent_BxA), jnp.einsum("ba,baj->bj", probs, q_BxAxJ)


def _map_policies(rows_fn, xs, batch_size: int, n_resamples: int, key, first_row,
                  moments: bool = False):
    """``lax.map`` of ``rows_fn`` (one policy -> per-row EstimatorStats, leading B) over the
    policies ``xs`` in chunks of ``batch_size``: summed stats per policy, and with n_resamples > 0
    also the Poisson-bootstrap sums of the same rows (``bootstrap.resample_stats``; with
    ``moments`` their second moments too, for per-resample standard errors)."""
    def one(x):
        rows = rows_fn(x)
        return ope.sum_rows(rows), (bootstrap.row_terms(rows, moments) if n_resamples else None)

    stats, terms = lax.map(one, xs, batch_size=batch_size)
    if not n_resamples:
        return stats
    return stats, bootstrap.resample_stats(key, first_row, terms, n_resamples)


def _sweep(graphdef, lambda_chunk: int, policy: str, fallback: int, floor, with_dr: bool,
           n_resamples: int, params, lams_LxJ, logged: LoggedBatch, policy_param, key, first_row):
    TRACE_COUNTS["sweep"] += 1
    q = q_values(graphdef, params, logged.context, logged.context_ids)  # once per chunk
    ql = _q_logged(q, logged.action)

    def one_lambda(lam_J):
        pi, qp = _policy_terms(q, lam_J, logged.consistent, policy, policy_param, fallback)
        return ope.rows_stats(pi, logged.propensity, logged.rewards, logged.valid,
                              qp if with_dr else None, ql if with_dr else None, floor=floor)

    # lax.map over chunks of lambdas: [lambda_chunk, B, A] temporaries, never [L, B, A].
    return _map_policies(one_lambda, lams_LxJ, lambda_chunk, n_resamples, key, first_row,
                         moments=True)


def _boot_args(n_resamples: int, key, first_row: int):
    """Traced (u32[2] key data, u32 first row) for a program; zeros when there is no bootstrap.
    Bootstrap draws index rows in uint32: a log of at most 2^32 rows."""
    if not n_resamples:
        return jnp.zeros(2, jnp.uint32), jnp.uint32(0)
    if key is None:
        raise checks.InputError("key", [], "a bootstrap needs an explicit key")
    if not 0 <= int(first_row) < 2 ** 32:
        raise checks.InputError("first_row", [], f"{first_row} outside [0, 2^32): bootstrap "
                                "draws index rows in uint32")
    return jnp.asarray(bootstrap.key_data(key)), jnp.uint32(first_row)


@functools.lru_cache(maxsize=32)
def build_sweep(graphdef, cfg: SweepConfig, policy: str = "greedy", fallback_action: int = 0,
                propensity_floor: float | None = None, with_dr: bool = True,
                n_resamples: int = 0) -> Callable:
    """One jitted program ``sweep_chunk(params, lams f32[L, J], logged: LoggedBatch,
    policy_param=0.0, key=None, first_row=0) -> EstimatorStats`` with a leading L axis (f32 sums,
    i32 counts).

    Q is computed once per chunk, then ``lax.map`` over lambda chunks of ``cfg.lambda_chunk``
    (bounded memory). policy: "greedy" (PRL-PUTS target), "epsilon_greedy" or "softmax"
    (policy_param = epsilon / temperature, traced). DM/DR use the Q-network itself as the reward
    model qhat (Dudik et al. 2011); ``with_dr=False`` leaves those fields None. With
    ``n_resamples`` R > 0 the program returns ``(EstimatorStats, BootstrapStats)``, the second
    with [R, L, ...] Poisson-bootstrap sums of the same rows, second moments included (the
    bootstrap-t band over the frontier needs them; ``puts_jax.bootstrap``): ``key`` a threefry
    key, ``first_row`` the chunk's first row index in the log (both traced).
    Cached per arguments, so repeated evaluations reuse the compiled program.
    """
    if policy not in ope.POLICY_KINDS:
        raise ValueError(f"policy: must be one of {ope.POLICY_KINDS}, got {policy!r}")
    fn = jax.jit(functools.partial(_sweep, graphdef, cfg.lambda_chunk, policy, fallback_action,
                                   propensity_floor, with_dr, int(n_resamples)))

    def sweep_chunk(params, lams, logged: LoggedBatch, policy_param=0.0, key=None, first_row=0):
        _check_policy_param(policy, policy_param)
        return fn(params, lams, logged, jnp.float32(policy_param),
                  *_boot_args(n_resamples, key, first_row))

    return sweep_chunk


def _check_policy_param(policy: str, param) -> None:
    if isinstance(param, jax.core.Tracer):
        return
    v = float(param)
    if policy == "epsilon_greedy" and not 0.0 <= v <= 1.0:
        raise checks.InputError("policy_param", [], f"epsilon must be in [0, 1], got {v}")
    if policy == "softmax" and not v > 0.0:
        raise checks.InputError("policy_param", [], f"softmax temperature must be > 0, got {v}")


def _fixed(graphdef, floor, n_resamples: int, params, probs_PxA, logged: LoggedBatch, key,
           first_row):
    TRACE_COUNTS["fixed"] += 1
    qp = ql = q = None
    if graphdef is not None:
        q = q_values(graphdef, params, logged.context, logged.context_ids)
        ql = _q_logged(q, logged.action)

    def one_policy(probs_A):
        pi = jnp.einsum("ba,a->b", logged.consistent.astype(jnp.float32), probs_A)
        qpol = None if q is None else jnp.einsum("a,baj->bj", probs_A, q)
        return ope.rows_stats(pi, logged.propensity, logged.rewards, logged.valid, qpol, ql,
                              floor=floor)

    return _map_policies(one_policy, probs_PxA.astype(jnp.float32), 8, n_resamples, key,
                         first_row)


def _with_boot_args(fn, n_resamples: int) -> Callable:
    def program(params, xs, logged: LoggedBatch, key=None, first_row=0):
        return fn(params, xs, logged, *_boot_args(n_resamples, key, first_row))
    return program


@functools.lru_cache(maxsize=32)
def build_fixed(graphdef=None, propensity_floor: float | None = None,
                n_resamples: int = 0) -> Callable:
    """One jitted program ``fixed_chunk(params, probs f32[P, A], logged, key=None, first_row=0)
    -> EstimatorStats[P]`` for context-free policies (each a distribution over actions: a single
    global action is a one-hot, uniform logging is 1/A). With a graphdef, DM/DR use its Q as qhat;
    without one (params ignored) those fields are None. ``n_resamples`` as in ``build_sweep``
    (first moments only: percentile intervals, no per-resample standard errors)."""
    fn = jax.jit(functools.partial(_fixed, graphdef, propensity_floor, int(n_resamples)))
    return _with_boot_args(fn, n_resamples)


def _fixed_rows(graphdef, floor, n_resamples: int, params, actions_PxB, logged: LoggedBatch, key,
                first_row):
    TRACE_COUNTS["fixed"] += 1
    q = ql = None
    if graphdef is not None:
        q = q_values(graphdef, params, logged.context, logged.context_ids)
        ql = _q_logged(q, logged.action)

    def one_policy(a_B):
        a = a_B.astype(jnp.int32)[:, None]
        pi = jnp.take_along_axis(logged.consistent, a, axis=1)[:, 0].astype(jnp.float32)
        qp = None if q is None else jnp.take_along_axis(q, a[:, :, None], axis=1)[:, 0]
        return ope.rows_stats(pi, logged.propensity, logged.rewards, logged.valid, qp, ql,
                              floor=floor)

    return _map_policies(one_policy, actions_PxB, 8, n_resamples, key, first_row)


@functools.lru_cache(maxsize=32)
def build_fixed_rows(graphdef=None, propensity_floor: float | None = None,
                     n_resamples: int = 0) -> Callable:
    """One jitted program ``rows_chunk(params, actions i32[P, B], logged, key=None, first_row=0)
    -> EstimatorStats[P]`` for deterministic policies given as one action per row (e.g. a
    contextual production policy's logged choice). DM/DR and ``n_resamples`` as in
    ``build_fixed``."""
    fn = jax.jit(functools.partial(_fixed_rows, graphdef, propensity_floor, int(n_resamples)))
    return _with_boot_args(fn, n_resamples)
