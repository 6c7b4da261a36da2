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
Every builder returns the ``jax.jit`` object itself (``.lower(...).compile()`` for ahead-of-time
compilation and memory analysis). ``compile_latency_serve`` compiles the serve pass for one shape
with the parameters as constants (B = 1 latency); ``export_serve`` writes it as one portable
``jax.export`` artifact (CPU and CUDA, symbolic batch size).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from puts_jax import bootstrap, checks, kernels, ope
from puts_jax.config import ScoringConfig, SweepConfig
from puts_jax.qnet import QNetwork
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

def scalarized_q(model, lam_J, context, context_ids=None) -> jax.Array:
    """Q @ lam: f32[B, A] of a merged model (inside a traced function), with lambda folded into
    the last layer: for the mixture head, ``sum_r pi_r link(V[r]) @ lam`` is computed as
    ``pi @ (link(V) @ lam)`` (f32[R, A] per call, f32[B, A, J] never formed); for the per-action
    head with identity links (no binary objective) the head's kernel and bias are contracted
    with lam. Other heads and models: Q, then ``Q @ lam``.

    Exact in real arithmetic, not in f32: the sums run in another order than Q's, so actions
    whose scores are within rounding of each other can swap. Measured with the trained demo
    Q-network (36 actions, 200k simulated requests x 21 lambdas): 9 of 4.2M greedy actions
    differed from the unfolded pass, one of them an exact tie in Q (the folded pass did not pick
    the lowest index), and 10 differed from the float64 reference against 3 for the unfolded
    pass. So the serve pass folds only when asked (``build_serve(fold_lambda=True)``: about 10%
    of the pass at B = 8192 on the 2-core CPU, bench serve ``fused_fold``); by default it serves
    exactly the policy that the sweep evaluates (``kernels.scalarize_rows`` in both)."""
    lam = jnp.asarray(lam_J, jnp.float32)
    if isinstance(model, QNetwork):
        if model.cfg.head == "mixture":
            h = model.features(context, context_ids)
            pi = jax.nn.softmax(model.mix(h), axis=-1)  # f32[B, R]
            return pi @ jnp.einsum("raj,j->ra", model.type_values(), lam)
        if not any(model.binary):
            h = model.features(context, context_ids)
            J = len(model.reward_kinds)
            kern = model.out.kernel[...].reshape(h.shape[1], model.n_actions, J)
            bias = model.out.bias[...].reshape(model.n_actions, J)
            return h @ jnp.einsum("haj,j->ha", kern, lam) + (bias @ lam)[None, :]
    return kernels.scalarize_rows(model(context, context_ids), lam)


def _serve(graphdef, W_AxK, k: int, fallback: int, fold: bool, method: str, params, lam_J,
           batch: RequestBatch) -> ServeOutput:
    TRACE_COUNTS["serve"] += 1
    if fold:
        s = scalarized_q(nnx.merge(graphdef, params), lam_J, batch.context, batch.context_ids)
        return kernels.serve_scores(s, W_AxK, batch.preds, batch.mask, k, fallback, method)
    q = q_values(graphdef, params, batch.context, batch.context_ids)
    return kernels.serve_batch(q, lam_J, W_AxK, batch.preds, batch.mask, k, fallback, method)


def _serve_parts(graphdef, action_weights, cfg: ScoringConfig, fold: bool, method: str):
    W = jnp.asarray(np.asarray(action_weights, np.float32))
    if not 0 <= cfg.fallback_action < W.shape[0]:
        raise ValueError(f"ScoringConfig.fallback_action: {cfg.fallback_action} outside [0, {W.shape[0]})")
    if method not in kernels.TOPK_METHODS:
        raise ValueError(f"method: must be one of {kernels.TOPK_METHODS}, got {method!r}")
    return functools.partial(_serve, graphdef, W, cfg.top_k, cfg.fallback_action, bool(fold),
                             method)


def build_serve(graphdef, action_weights, cfg: ScoringConfig, *, fold_lambda: bool = False,
                method: str = "auto") -> Callable[..., ServeOutput]:
    """One jitted program ``serve(params, lam f32[J], batch: RequestBatch) -> ServeOutput``:
    context -> Q f32[B, A, J] -> scalarize -> select -> gather W -> re-weight all candidates ->
    masked top-k (PRL-PUTS serving; ``kernels.serve_batch``, top-k ``method`` as in
    ``kernels.rerank``). ``fold_lambda=True`` computes Q @ lam with lambda folded into the last
    layer (``scalarized_q``: faster, but not the sweep's f32 arithmetic). graphdef and
    W f32[A, K] are closed over; params and lam are traced (changing lambda or publishing new
    parameters never recompiles). Shapes are used as given
    (see ``Scorer``); ``serve.lower(params, lam, batch).compile()`` compiles ahead of time.
    Outputs are small (f32/i32[B, k] at most, 1.7 MB at B = 8192, k = 25), so nothing is
    donated: writing them into donated buffers measured within noise on the 2-core CPU (-4% to
    +6% of the pass over three interleaved runs; a fresh 32 MiB output is where donation pays)."""
    return jax.jit(_serve_parts(graphdef, action_weights, cfg, fold_lambda, method))


def compile_latency_serve(model, action_weights, cfg: ScoringConfig, example: RequestBatch, *,
                          fold_lambda: bool = False, method: str = "auto"):
    """The serve pass compiled ahead of time for one request shape, parameters built in as
    constants: ``compiled(lam f32[J], batch) -> ServeOutput`` for batches shaped exactly like
    ``example`` (arrays or ``jax.ShapeDtypeStruct``; B = 1 for per-request serving).

    For latency (B = 1): no parameter pytree to flatten per call (about 15 us on the 2-core CPU),
    no tracing or cache lookup, and XLA sees the weights. lam stays a traced argument: changing
    lambda never recompiles. Publishing new parameters means calling this again (it compiles,
    once per shape). Neither lam nor the batch is validated here (``checks.check_lambda`` once
    per operating policy; ``Scorer`` validates and pads). On CPU, the serving process should
    also run ``jax.config.update("jax_cpu_enable_async_dispatch", False)`` before its first
    computation: otherwise every call hands the program to a worker thread and waits for it
    (about +20-40 us at B = 1 measured on the 2-core CPU; a process-wide setting, so the library
    does not make it).

    model: an nnx.Module or a (graphdef, params) pair.
    """
    graphdef, params = split_model(model)
    frozen = jax.tree.map(jnp.asarray, params)
    serve = _serve_parts(graphdef, action_weights, cfg, fold_lambda, method)
    spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), example)
    q = jax.eval_shape(lambda c, i: q_values(graphdef, frozen, c, i), spec.context,
                       spec.context_ids)
    lam = jax.ShapeDtypeStruct((q.shape[2],), jnp.float32)
    return jax.jit(lambda lam_J, batch: serve(frozen, lam_J, batch)).lower(lam, spec).compile()


def export_serve(model, action_weights, cfg: ScoringConfig, *,
                 platforms: tuple[str, ...] = ("cpu", "cuda"), example: RequestBatch | None = None):
    """The serve pass as one portable ``jax.export.Exported`` artifact for ``platforms``, with a
    symbolic batch size ``b`` and a symbolic candidate count ``n >= cfg.top_k``, parameters and W
    built in as constants (export again after publishing new parameters).

    ``exp.call(lam f32[J], context f32[b, D], preds f32[b, n, K], mask bool[b, n]
    [, context_ids i32[b, C]])`` returns the ServeOutput fields as a tuple (``ServeOutput(*...)``).
    ``exp.serialize()`` gives bytes that ``jax.export.deserialize`` reads back anywhere (needs the
    ``flatbuffers`` package). The artifact uses ``lax.top_k`` (``kernels.rerank(method="lax")``),
    the portable top-k: same results as the CPU extraction path, ties included. D and C come
    from a QNetwork (or from ``example``'s shapes, any batch size, for another model); K from W.
    """
    graphdef, params = split_model(model)
    frozen = jax.tree.map(jnp.asarray, params)
    W = np.asarray(action_weights, np.float32)
    serve = _serve_parts(graphdef, W, cfg, False, "lax")
    if example is not None:
        D, C = example.context.shape[1], (None if example.context_ids is None
                                         else example.context_ids.shape[1])
    elif isinstance(nnx.merge(graphdef, frozen), QNetwork):
        net = nnx.merge(graphdef, frozen)
        D, C = net.context_dim, (len(net.cfg.id_vocab_sizes) or None)
    else:
        raise ValueError("export_serve: pass an example RequestBatch for a model that is not a "
                         "QNetwork")
    b, n = jax.export.symbolic_shape("b, n", constraints=(f"n >= {cfg.top_k}",))
    q = jax.eval_shape(lambda c, i: q_values(graphdef, frozen, c, i),
                       jax.ShapeDtypeStruct((1, D), jnp.float32),
                       None if C is None else jax.ShapeDtypeStruct((1, C), jnp.int32))
    specs = [jax.ShapeDtypeStruct((q.shape[2],), jnp.float32),
             jax.ShapeDtypeStruct((b, D), jnp.float32),
             jax.ShapeDtypeStruct((b, n, W.shape[1]), jnp.float32),
             jax.ShapeDtypeStruct((b, n), jnp.bool_)]
    if C is not None:
        specs.append(jax.ShapeDtypeStruct((b, C), jnp.int32))

    def fn(lam, context, preds, mask, context_ids=None):
        return tuple(serve(frozen, lam, RequestBatch(context, preds, mask, None, context_ids)))

    return jax.export.export(jax.jit(fn), platforms=tuple(platforms))(*specs)


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
        # compiled serve passes by effective k (k beyond the N bucket ranks k = the N bucket)
        self._serves = {cfg.top_k: build_serve(graphdef, self.action_weights, cfg)}
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
        # top-k beyond the candidate bucket cannot rank more candidates, only cost more (a
        # k = 100000 request scored 100x slower): rank min(k, n_pad), pad the slots after
        k = min(self.cfg.top_k, n_pad)
        if k not in self._serves:
            self._serves[k] = build_serve(self.graphdef, self.action_weights,
                                          dataclasses.replace(self.cfg, top_k=k))
        out = ServeOutput(*(np.asarray(x)[:b] for x in
                            jax.device_get(self._serves[k](self.params, lam, padded))))
        if k < self.cfg.top_k:
            extra = self.cfg.top_k - k
            out = out._replace(
                topk_index=np.pad(out.topk_index, ((0, 0), (0, extra)), constant_values=-1),
                topk_score=np.pad(out.topk_score, ((0, 0), (0, extra)),
                                  constant_values=-np.inf))
        return out

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


def _greedy_rows(q_BxAxJ, lams_LxJ, consistent_BxA, fallback: int):
    """Greedy target of every lambda: pi(logged decision) f32[B, L] = consistent[b, a*] and
    qhat(x, pi) f32[B, L, J] = q[b, a*] (a* = ``kernels.sweep_select``: exact gathers)."""
    a = kernels.sweep_select(q_BxAxJ, lams_LxJ, fallback)
    pi = jnp.take_along_axis(consistent_BxA, a, axis=1).astype(jnp.float32)
    qp = jnp.stack([jnp.take_along_axis(q_BxAxJ[:, :, j], a, axis=1)
                    for j in range(q_BxAxJ.shape[2])], axis=-1)
    return pi, qp


def _policy_rows(q_BxAxJ, lams_LxJ, consistent_BxA, policy: str, param, fallback: int):
    """pi(logged decision) f32[B, L] and qhat(x, pi) f32[B, L, J] of every lambda's target policy
    (``ope.policy_probs``) on one block of rows."""
    if policy != "softmax":
        pi, qp = _greedy_rows(q_BxAxJ, lams_LxJ, consistent_BxA, fallback)
        if policy == "greedy":
            return pi, qp
        eps = jnp.asarray(param, jnp.float32)  # (1 - eps) greedy + eps uniform
        A = q_BxAxJ.shape[1]
        n_cons = jnp.sum(consistent_BxA, axis=1, dtype=jnp.float32)[:, None]
        q_mean = jnp.sum(q_BxAxJ, axis=1)[:, None, :]
        return (1.0 - eps) * pi + eps / A * n_cons, (1.0 - eps) * qp + eps / A * q_mean
    s = jnp.einsum("baj,lj->bal", q_BxAxJ, lams_LxJ.astype(jnp.float32))  # [rows, A, L]
    bad = ~jnp.all(jnp.isfinite(s), axis=1, keepdims=True)
    soft = jax.nn.softmax(jnp.where(bad, 0.0, s) / jnp.asarray(param, jnp.float32), axis=1)
    one_hot = (lax.broadcasted_iota(jnp.int32, s.shape, 1) == fallback).astype(jnp.float32)
    probs = jnp.where(bad, one_hot, soft)
    pi = jnp.sum(jnp.where(consistent_BxA[:, :, None], probs, 0.0), axis=1)
    return pi, jnp.einsum("bal,baj->blj", probs, q_BxAxJ)


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


def _sweep(graphdef, policy: str, fallback: int, floor, with_dr: bool, n_resamples: int,
           params, lams_LxJ, logged: LoggedBatch, policy_param=0.0, key=None, first_row=0):
    TRACE_COUNTS["sweep"] += 1
    key_u32 = _key_u32(key, n_resamples)
    q = q_values(graphdef, params, logged.context, logged.context_ids)  # once per chunk
    ql = _q_logged(q, logged.action)
    B, A, _ = q.shape
    L = lams_LxJ.shape[0]
    rows = _sweep_block_rows(B, L, A, policy)
    nb = -(-B // rows)
    lb = _pad_logged(logged, nb * rows)
    pad = nb * rows - B
    q, ql = (jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) for x in (q, ql))
    lams = lams_LxJ.astype(jnp.float32)

    def block(xs):  # rows of every lambda: EstimatorStats f[rows, L] / f[rows, L, J]
        q_b, ql_b, lb_b = xs
        pi, qp = _policy_rows(q_b, lams, lb_b.consistent, policy, policy_param, fallback)
        out = ope.lambda_rows_stats(pi, lb_b.propensity, lb_b.rewards, lb_b.valid,
                                    qp if with_dr else None, ql_b if with_dr else None,
                                    floor=floor)
        return out if n_resamples else ope.sum_rows(out)

    split = lambda x: x.reshape((nb, rows) + x.shape[1:])  # noqa: E731
    out = lax.map(block, (split(q), split(ql), jax.tree.map(split, lb)))
    if not n_resamples:
        return ope.sum_rows(out)  # f32 sums of the blocks' sums
    per_row = jax.tree.map(lambda x: x.reshape((nb * rows,) + x.shape[2:])[:B], out)
    terms = bootstrap.row_terms(per_row, moments=True)
    terms = terms._replace(n=terms.n[:, 0])  # the same for every lambda
    return ope.sum_rows(per_row), bootstrap.resample_sums(
        key_u32, jnp.asarray(first_row).astype(jnp.uint32), terms, n_resamples)


@functools.lru_cache(maxsize=32)
def build_sweep(graphdef, cfg: SweepConfig, policy: str = "greedy", fallback_action: int = 0,
                propensity_floor: float | None = None, with_dr: bool = True,
                n_resamples: int = 0) -> Callable:
    """One jitted program ``sweep(params, lams f32[L, J], logged: LoggedBatch,
    policy_param=0.0, key=None, first_row=0) -> EstimatorStats`` with a leading L axis (f32 sums,
    i32 counts); ``sweep.lower(...).compile()`` compiles ahead of time (memory analysis
    included).

    Q f32[B, A, J] is computed once per chunk; then, on blocks of rows (a power of two with
    rows * L <= 2^17, so temporaries are f32[rows, L], bounded whatever B and L), every lambda's
    target policy at once (greedy: ``kernels.sweep_select``, one running argmax over the actions
    with the lambdas in the vector lanes) and the estimator terms on [rows, L] arrays
    (``ope.lambda_rows_stats``), summed per block. ``cfg`` is part of the cache key only: the
    sweep no longer chunks lambdas (``cfg.lambda_chunk`` is not used). policy: "greedy"
    (PRL-PUTS target), "epsilon_greedy" or "softmax" (policy_param = epsilon / temperature,
    traced; not validated here: ``evaluation.evaluate_log`` checks it). DM/DR use the Q-network
    itself as the reward model qhat (Dudik et al. 2011); ``with_dr=False`` leaves those fields
    None. With ``n_resamples`` R > 0 the program returns ``(EstimatorStats, BootstrapStats)``,
    the second with [R, L, ...] Poisson-bootstrap sums of the same rows, second moments
    included (the bootstrap-t band over the frontier needs them; ``puts_jax.bootstrap``): ``key``
    a threefry ``jax.random.key`` (required), ``first_row`` the chunk's first row index in the
    log (traced; ``np.uint32`` for logs beyond 2^31 rows). Cached per arguments, so repeated
    evaluations reuse the compiled program.
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
    qp = ql = q = None
    if graphdef is not None:
        q = q_values(graphdef, params, logged.context, logged.context_ids)
        ql = _q_logged(q, logged.action)

    def one_policy(probs_A):
        pi = jnp.einsum("ba,a->b", logged.consistent.astype(jnp.float32), probs_A)
        qpol = None if q is None else jnp.einsum("a,baj->bj", probs_A, q)
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
    per-resample standard errors)."""
    return jax.jit(functools.partial(_fixed, graphdef, propensity_floor, int(n_resamples)))


def _fixed_rows(graphdef, floor, n_resamples: int, params, actions_PxB, logged: LoggedBatch,
                key=None, first_row=0):
    TRACE_COUNTS["fixed"] += 1
    key_u32 = _key_u32(key, n_resamples)
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

    return _map_policies(one_policy, actions_PxB, n_resamples, key_u32, first_row)


@functools.lru_cache(maxsize=32)
def build_fixed_rows(graphdef=None, propensity_floor: float | None = None,
                     n_resamples: int = 0) -> Callable:
    """One jitted program ``fixed_rows(params, actions i32[P, B], logged, key=None,
    first_row=0) -> EstimatorStats[P]`` for deterministic policies given as one action per row
    (e.g. a contextual production policy's logged choice). DM/DR and ``n_resamples`` as in
    ``build_fixed``."""
    return jax.jit(functools.partial(_fixed_rows, graphdef, propensity_floor, int(n_resamples)))
