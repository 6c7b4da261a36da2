"""The only jit builders in the library: the fused serve pass, the lambda sweep and streaming
off-policy evaluation, where the Q-network and the kernels meet in one compiled program each.

Builders bind the structure (model graphdef, action weights, static sizes) with
``functools.partial`` and jit the rest: parameters, lambda and policy parameters are traced, so a
new lambda or a new checkpoint never recompiles (STYLE.md 4-5). Shapes are bucketed on the host
(``Scorer``; fixed-size log chunks in ``evaluate_log``) so a stream of sizes compiles a few times.
``TRACE_COUNTS`` counts traces per entry point (tests use it to prove there is no recompilation).
"""

from __future__ import annotations

import collections
import functools
from typing import Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from puts_jax import checks, kernels, ope
from puts_jax.config import ScoringConfig, SweepConfig
from puts_jax.types import EstimatorStats, LoggedBatch, RequestBatch, ServeOutput

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


def _sweep(graphdef, lambda_chunk: int, policy: str, fallback: int, floor, with_dr: bool,
           params, lams_LxJ, logged: LoggedBatch, policy_param) -> EstimatorStats:
    TRACE_COUNTS["sweep"] += 1
    q = q_values(graphdef, params, logged.context, logged.context_ids)  # once per chunk
    ql = _q_logged(q, logged.action)

    def one_lambda(lam_J):
        pi, qp = _policy_terms(q, lam_J, logged.consistent, policy, policy_param, fallback)
        return ope.chunk_stats(pi, logged.propensity, logged.rewards, logged.valid,
                               qp if with_dr else None, ql if with_dr else None, floor=floor)

    # lax.map over chunks of lambdas: [lambda_chunk, B, A] temporaries, never [L, B, A].
    return lax.map(one_lambda, lams_LxJ, batch_size=lambda_chunk)


@functools.lru_cache(maxsize=32)
def build_sweep(graphdef, cfg: SweepConfig, policy: str = "greedy", fallback_action: int = 0,
                propensity_floor: float | None = None, with_dr: bool = True) -> Callable:
    """One jitted program ``sweep_chunk(params, lams f32[L, J], logged: LoggedBatch,
    policy_param=0.0) -> EstimatorStats`` with a leading L axis (f32 sums, i32 counts).

    Q is computed once per chunk, then ``lax.map`` over lambda chunks of ``cfg.lambda_chunk``
    (bounded memory). policy: "greedy" (PRL-PUTS target), "epsilon_greedy" or "softmax"
    (policy_param = epsilon / temperature, traced). DM/DR use the Q-network itself as the reward
    model qhat (Dudik et al. 2011); ``with_dr=False`` leaves those fields None. Cached per
    arguments, so repeated evaluations reuse the compiled program.
    """
    if policy not in ope.POLICY_KINDS:
        raise ValueError(f"policy: must be one of {ope.POLICY_KINDS}, got {policy!r}")
    fn = jax.jit(functools.partial(_sweep, graphdef, cfg.lambda_chunk, policy, fallback_action,
                                   propensity_floor, with_dr))

    def sweep_chunk(params, lams, logged: LoggedBatch, policy_param=0.0) -> EstimatorStats:
        _check_policy_param(policy, policy_param)
        return fn(params, lams, logged, jnp.float32(policy_param))

    return sweep_chunk


def _check_policy_param(policy: str, param) -> None:
    if isinstance(param, jax.core.Tracer):
        return
    v = float(param)
    if policy == "epsilon_greedy" and not 0.0 <= v <= 1.0:
        raise checks.InputError("policy_param", [], f"epsilon must be in [0, 1], got {v}")
    if policy == "softmax" and not v > 0.0:
        raise checks.InputError("policy_param", [], f"softmax temperature must be > 0, got {v}")


def _fixed(graphdef, floor, params, probs_PxA, logged: LoggedBatch) -> EstimatorStats:
    TRACE_COUNTS["fixed"] += 1
    qp = ql = q = None
    if graphdef is not None:
        q = q_values(graphdef, params, logged.context, logged.context_ids)
        ql = _q_logged(q, logged.action)

    def one_policy(probs_A):
        pi = jnp.einsum("ba,a->b", logged.consistent.astype(jnp.float32), probs_A)
        qpol = None if q is None else jnp.einsum("a,baj->bj", probs_A, q)
        return ope.chunk_stats(pi, logged.propensity, logged.rewards, logged.valid, qpol, ql,
                               floor=floor)

    return lax.map(one_policy, probs_PxA.astype(jnp.float32), batch_size=8)


@functools.lru_cache(maxsize=32)
def build_fixed(graphdef=None, propensity_floor: float | None = None) -> Callable:
    """One jitted program ``fixed_chunk(params, probs f32[P, A], logged) -> EstimatorStats[P]``
    for context-free policies (each a distribution over actions: a single global action is a
    one-hot, uniform logging is 1/A). With a graphdef, DM/DR use its Q as qhat; without one
    (params ignored) those fields are None."""
    return jax.jit(functools.partial(_fixed, graphdef, propensity_floor))


# ----------------------------------------------------------------------------- streaming evaluation

class Evaluation(NamedTuple):
    """Result of a streamed evaluation.

    estimates: ope.Estimates, policy axis P (lambdas of the sweep, or the fixed policies).
    baselines: ope.Estimates of the fixed baseline policies evaluated in the same pass, or None.
    stats / baseline_stats: the merged float64 EstimatorStats (merge more chunks later).
    reward_kinds: per objective, as used for the exact intervals.
    constant_propensity: the common logging propensity when every row has the same, else None.
    """

    estimates: ope.Estimates
    baselines: ope.Estimates | None
    stats: EstimatorStats
    baseline_stats: EstimatorStats | None
    reward_kinds: tuple[str, ...]
    constant_propensity: float | None


class _LogSummary:
    """Host-side facts gathered while streaming: propensity range and binary-ness of rewards."""

    def __init__(self):
        self.pmin, self.pmax, self.binary, self.rows = np.inf, -np.inf, None, 0

    def update(self, p: np.ndarray, r: np.ndarray) -> None:
        if len(p):
            self.pmin, self.pmax = min(self.pmin, p.min()), max(self.pmax, p.max())
        b = ((r == 0) | (r == 1)).all(axis=0)
        self.binary = b if self.binary is None else self.binary & b
        self.rows += len(p)

    def constant_propensity(self) -> float | None:
        ok = self.rows and self.pmax - self.pmin <= 1e-12 * self.pmax
        return float(self.pmax) if ok else None

    def kinds(self, given, J: int) -> tuple[str, ...]:
        binary = np.ones(J, bool) if self.binary is None else self.binary
        if given is None:
            return tuple("binary" if b else "real" for b in binary)
        bad = [j for j, k in enumerate(given) if k == "binary" and not binary[j]]
        if bad:
            raise checks.InputError("reward_kinds", [], f"objectives {bad} are declared binary "
                                    "but have rewards outside {0, 1}")
        return tuple(given)


def _host_chunk(item, offset: int, floor, n_actions) -> LoggedBatch:
    """Validate one chunk (propensity positivity names absolute rows) and normalize dtypes."""
    lb = item[-1] if isinstance(item, tuple) and not isinstance(item, LoggedBatch) else item
    B = len(lb.action)
    action = np.asarray(lb.action, np.int32)
    p = checks.check_propensity(lb.propensity, floor, row_offset=offset)
    consistent = lb.consistent
    if consistent is None:
        if n_actions is None:
            raise checks.InputError("consistent", [], "missing; pass n_actions to default to one-hot")
        consistent = (action[:, None] == np.arange(n_actions)[None, :])  # -1: no action
    valid = np.ones(B, bool) if lb.valid is None else np.asarray(lb.valid, bool)
    return LoggedBatch(np.asarray(lb.context, np.float32), action, p.astype(np.float32),
                       np.asarray(lb.rewards), np.asarray(consistent, bool), valid,
                       None if lb.context_ids is None else np.asarray(lb.context_ids, np.int32))


def _pad_rows(lb: LoggedBatch, size: int) -> LoggedBatch:
    """Pad to ``size`` rows with valid=False rows (propensity 1, everything else 0)."""
    def pad(name, x):
        if x is None or len(x) == size:
            return x
        out = np.ones if name == "propensity" else np.zeros
        buf = out((size,) + x.shape[1:], x.dtype)
        buf[:len(x)] = x
        return buf
    return LoggedBatch(*(pad(f, getattr(lb, f)) for f in LoggedBatch._fields))


def _stream(chunks: Iterable, chunk_rows: int, floor, n_actions, programs, reward_kinds):
    """Run each program(padded LoggedBatch, first_row, n_real) -> device stats on fixed-size
    pieces of every chunk (first_row: the piece's absolute row offset); merge in float64 one step
    behind dispatch (the device never waits for the host)."""
    summary, merged, pending = _LogSummary(), [None] * len(programs), None
    size, offset, J = None, 0, None
    for item in chunks:
        lb = _host_chunk(item, offset, floor, n_actions)
        rows = len(lb.action)
        J = lb.rewards.shape[1]
        summary.update(lb.propensity[lb.valid].astype(np.float64), lb.rewards[lb.valid])
        if reward_kinds is not None:
            summary.kinds(reward_kinds, J)  # fail early, naming the objectives
        if size is None:  # fixed per stream: one compilation
            size = min(chunk_rows, max(128, 1 << max(rows - 1, 0).bit_length()))
        for lo in range(0, max(rows, 1), size):
            piece = _pad_rows(jax.tree.map(lambda x: x[lo:lo + size], lb), size)
            out = [prog(piece, offset + lo, min(size, rows - lo)) for prog in programs]
            if pending is not None:
                merged = [ope.merge_stats(m, s) for m, s in zip(merged, pending)]
            pending = out
        offset += rows
    if pending is None:
        raise checks.InputError("chunks", [], "the log has no rows")
    merged = [ope.merge_stats(m, s) for m, s in zip(merged, pending)]
    return merged, summary.kinds(reward_kinds, J), summary.constant_propensity()


def evaluate_log(model, lams, chunks: Iterable, cfg: SweepConfig, *,
                 reward_kinds: tuple[str, ...] | None = None, policy: str = "greedy",
                 policy_param: float = 0.0, fallback_action: int = 0,
                 propensity_floor: float | None = None, with_dr: bool = True,
                 baselines=None, n_actions: int | None = None) -> Evaluation:
    """Stream an exploration log and estimate every lambda's target policy (plus optional fixed
    baselines in the same pass).

    Args:
      model: nnx.Module or (graphdef, params) of the Q-network.
      lams: f32[L, J] scalarizations (validated: non-negative, summing to 1).
      chunks: iterable of LoggedBatch (numpy) or ``(row_offset, request_id, LoggedBatch)`` as
        ``data.logs.iter_log_chunks`` yields. Each is split/padded to one fixed size (compiled once).
      cfg: SweepConfig (chunk_rows, lambda_chunk, confidence).
      reward_kinds: per objective; None detects "binary" from the data (all 0/1), else "real".
      policy, policy_param: target policy kind (see ``build_sweep``); fallback_action for rows
        with non-finite Q; propensity_floor: explicit clipping (PITFALLS P1), else p must be > 0.
      baselines: optional f32[P, A] context-free policies (``fixed_action_probs``).
      n_actions: A, needed only when chunks lack ``consistent``.
    Returns:
      Evaluation; the numbers equal a single pass over the concatenated log (f64 merging).
    """
    graphdef, params = split_model(model)
    lams = jnp.asarray(checks.check_lambda(np.asarray(lams, np.float32)).reshape(-1, np.shape(lams)[-1]))
    sweep = build_sweep(graphdef, cfg, policy, fallback_action, propensity_floor, with_dr)
    programs = [lambda lb, *_: sweep(params, lams, lb, policy_param)]
    if baselines is not None:
        fixed = build_fixed(graphdef if with_dr else None, propensity_floor)
        probs = jnp.asarray(np.asarray(baselines, np.float32))
        programs.append(lambda lb, *_: fixed(params, probs, lb))
    merged, kinds, p = _stream(chunks, cfg.chunk_rows, propensity_floor, n_actions, programs,
                               reward_kinds)
    est = ope.finalize(merged[0], cfg.confidence, kinds, p)
    base = None if baselines is None else ope.finalize(merged[1], cfg.confidence, kinds, p)
    return Evaluation(est, base, merged[0], None if baselines is None else merged[1], kinds, p)


def fixed_action_probs(actions, n_actions: int, uniform: bool = False) -> np.ndarray:
    """f32[P, A] policies: the one-hot of each global action, plus the uniform policy (the usual
    logging policy) as the last row when ``uniform``."""
    rows = np.eye(n_actions, dtype=np.float32)[np.asarray(actions, np.int64).reshape(-1)]
    if uniform:
        rows = np.concatenate([rows, np.full((1, n_actions), 1.0 / n_actions, np.float32)])
    return rows


def evaluate_fixed(probs, chunks: Iterable, cfg: SweepConfig, *, model=None,
                   reward_kinds: tuple[str, ...] | None = None,
                   propensity_floor: float | None = None, n_actions: int | None = None) -> Evaluation:
    """Stream a log and estimate context-free policies probs f32[P, A] (rows are distributions:
    a global action is a one-hot, uniform logging is 1/A). With ``model``, DM/DR use its Q."""
    probs = np.asarray(probs, np.float32)
    checks.check_distribution(probs, field="probs")
    graphdef, params = (None, None) if model is None else split_model(model)
    fixed = build_fixed(graphdef, propensity_floor)
    jprobs = jnp.asarray(probs)
    merged, kinds, p = _stream(chunks, cfg.chunk_rows, propensity_floor, n_actions,
                               [lambda lb, *_: fixed(params, jprobs, lb)], reward_kinds)
    est = ope.finalize(merged[0], cfg.confidence, kinds, p)
    return Evaluation(est, None, merged[0], None, kinds, p)


def _fixed_rows(graphdef, floor, params, actions_PxB, logged: LoggedBatch) -> EstimatorStats:
    TRACE_COUNTS["fixed"] += 1
    q = ql = None
    if graphdef is not None:
        q = q_values(graphdef, params, logged.context, logged.context_ids)
        ql = _q_logged(q, logged.action)

    def one_policy(a_B):
        a = a_B.astype(jnp.int32)[:, None]
        pi = jnp.take_along_axis(logged.consistent, a, axis=1)[:, 0].astype(jnp.float32)
        qp = None if q is None else jnp.take_along_axis(q, a[:, :, None], axis=1)[:, 0]
        return ope.chunk_stats(pi, logged.propensity, logged.rewards, logged.valid, qp, ql,
                               floor=floor)

    return lax.map(one_policy, actions_PxB, batch_size=8)


@functools.lru_cache(maxsize=32)
def build_fixed_rows(graphdef=None, propensity_floor: float | None = None) -> Callable:
    """One jitted program ``rows_chunk(params, actions i32[P, B], logged) -> EstimatorStats[P]``
    for deterministic policies given as one action per row (e.g. a contextual production
    policy's logged choice). DM/DR as in ``build_fixed``."""
    return jax.jit(functools.partial(_fixed_rows, graphdef, propensity_floor))


def evaluate_fixed_actions(actions, n_actions: int, chunks: Iterable, cfg: SweepConfig, *,
                           model=None, reward_kinds: tuple[str, ...] | None = None,
                           propensity_floor: float | None = None) -> Evaluation:
    """Deterministic fixed policies: ``actions`` i32[P] global actions (each row gets the same
    action; e.g. every action, the production action), or i32[P, n_rows] one action per logged
    row, aligned with the streamed rows (e.g. a contextual production policy)."""
    actions = np.asarray(actions, np.int64)
    if actions.ndim <= 1:
        return evaluate_fixed(fixed_action_probs(actions, n_actions), chunks, cfg, model=model,
                              reward_kinds=reward_kinds, propensity_floor=propensity_floor,
                              n_actions=n_actions)
    checks.check_index("actions", actions.T, n_actions)
    graphdef, params = (None, None) if model is None else split_model(model)
    rows_fn = build_fixed_rows(graphdef, propensity_floor)

    def program(lb, first, n_real):
        if first + n_real > actions.shape[1]:
            raise checks.InputError("actions", [], f"{actions.shape[1]} per-row actions for a "
                                    f"log of at least {first + n_real} rows")
        a = np.zeros((len(actions), len(lb.action)), np.int32)
        a[:, :n_real] = actions[:, first:first + n_real]
        return rows_fn(params, a, lb)

    merged, kinds, p = _stream(chunks, cfg.chunk_rows, propensity_floor, n_actions, [program],
                               reward_kinds)
    est = ope.finalize(merged[0], cfg.confidence, kinds, p)
    return Evaluation(est, None, merged[0], None, kinds, p)
