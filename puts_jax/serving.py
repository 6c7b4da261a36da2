"""The serve pass: the one compiled program of PRL-PUTS serving, where the Q-network and the
serve kernels meet (context -> Q -> scalarize -> select -> re-weight -> masked top-k), and its
ahead-of-time forms.

``build_serve`` binds the structure (model graphdef, action weights W f32[A, K], top-k, fallback)
with ``functools.partial`` and jits the rest: parameters and lambda are traced, so a new lambda or
a new checkpoint never recompiles (STYLE.md 4-5); it returns the ``jax.jit`` object itself
(``.lower(...).compile()`` for ahead-of-time compilation and memory analysis).
``compile_latency_serve`` compiles the pass for one shape with the parameters as constants
(B = 1 latency); ``export_serve`` writes it as one portable ``jax.export`` artifact (CPU and CUDA,
symbolic batch size). Shapes are used as given: ``puts_jax.scorer.Scorer`` buckets them.

``TRACE_COUNTS`` counts traces per entry point ("serve" here; "sweep" and "fixed" in
``puts_jax.engine``); tests use it to prove that there is no recompilation. ``split_model`` and
``q_values`` are shared with the evaluation programs of ``puts_jax.engine``, which re-exports every
public name of this module.
"""

from __future__ import annotations

import collections
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from puts_jax import kernels
from puts_jax.config import ScoringConfig
from puts_jax.qnet import QNetwork
from puts_jax.types import RequestBatch, ServeOutput

# Traces per entry point ("serve", "sweep", "fixed"), incremented inside the traced functions.
TRACE_COUNTS: collections.Counter = collections.Counter()


def split_model(model) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, params) from an ``nnx.Module`` or an already split pair."""
    if isinstance(model, tuple):
        return model
    return nnx.split(model)


# Rows per block of the Q-network's forward pass on CPU (``row_blocks``). Measured on the
# 2-core CPU, one core, B = 8192, interleaved in one process: the serve pass 27.2 -> 24.9 ms
# (three runs, -8 to -10%; bench serve's ``fused_unblocked`` row measures it in every run); the
# Q-network alone 15.8 -> 11.4 ms with the other core busy. The layers' f32[rows, 256]
# activations then stay in the 4 MiB L2 between a dot and its bias + ReLU instead of 8 MiB round
# trips through L3. Accelerators get one call (a loop of small matmuls would idle a GPU).
Q_BLOCK_ROWS = 256


def q_block_rows(rows: int | None = None) -> int:
    """Rows per Q-network block: ``rows`` if given (0 = one call), else ``Q_BLOCK_ROWS`` when
    JAX's default backend is the CPU and 0 on an accelerator. Raises ValueError if rows < 0."""
    if rows is None:
        return Q_BLOCK_ROWS if jax.default_backend() == "cpu" else 0
    if int(rows) < 0:
        raise ValueError(f"q_block_rows: must be >= 0 (0 = one call), got {rows}")
    return int(rows)


def row_blocks(fn: Callable[..., jax.Array], *xs, rows: int | None = None) -> jax.Array:
    """``fn(*xs)`` computed on blocks of ``rows`` rows (one ``lax.map``, i.e. a loop inside the
    program) when the leading dimension B holds at least two blocks; a last partial block is one
    more call. ``fn`` must treat rows independently (a row's output depends on that row only),
    as a forward pass does. xs: arrays with the same leading B, or None (passed through).
    rows: as ``q_block_rows`` (None: 256 on CPU, one call on accelerators). A symbolic B
    (``jax.export``), rows = 0 or B < 2 rows: one call, as written.

    Each block's output is what ``fn`` gives for those rows in a batch of ``rows``: XLA:CPU picks
    its matmul code by shape (rows 64-511 share one, 512 and more another, measured), so Q's last
    bits can differ from one unblocked call at B >= 512 (2.4e-7 at most on the bench Q-network);
    every program that evaluates Q (serve, sweep, fixed) goes through ``q_values`` and blocks the
    same way."""
    rows = q_block_rows(rows)
    B = xs[0].shape[0]
    if rows == 0 or not isinstance(B, int) or B < 2 * rows:
        return fn(*xs)
    nb = B // rows
    head = tuple(None if x is None else x[:nb * rows].reshape(nb, rows, *x.shape[1:]) for x in xs)
    out = jax.lax.map(lambda blk: fn(*blk), head)
    out = out.reshape(nb * rows, *out.shape[2:])
    if B % rows:
        rest = fn(*(None if x is None else x[nb * rows:] for x in xs))
        out = jnp.concatenate([out, rest], axis=0)
    return out


def q_values(graphdef, params, context, context_ids=None, rows: int | None = None) -> jax.Array:
    """Q-values f32[B, A, J] of the merged model (inside a traced function), on blocks of
    ``rows`` rows (``row_blocks``; None: ``Q_BLOCK_ROWS`` on CPU, one call on accelerators)."""
    model = nnx.merge(graphdef, params)
    return row_blocks(lambda c, i: model(c, i).astype(jnp.float32), context, context_ids,
                      rows=rows)


def scalarized_q(model, lam_J, context, context_ids=None, rows: int | None = None) -> jax.Array:
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
    return row_blocks(lambda c, i: _scalarized_q(model, lam_J, c, i), context, context_ids,
                      rows=rows)


def _scalarized_q(model, lam_J, context, context_ids) -> jax.Array:
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


def _serve(graphdef, W_AxK, k: int, fallback: int, fold: bool, method: str, rows: int | None,
           params, lam_J, batch: RequestBatch) -> ServeOutput:
    TRACE_COUNTS["serve"] += 1
    if fold:
        s = scalarized_q(nnx.merge(graphdef, params), lam_J, batch.context, batch.context_ids,
                         rows)
        return kernels.serve_scores(s, W_AxK, batch.preds, batch.mask, k, fallback, method)
    q = q_values(graphdef, params, batch.context, batch.context_ids, rows)
    return kernels.serve_batch(q, lam_J, W_AxK, batch.preds, batch.mask, k, fallback, method)


def _serve_parts(graphdef, action_weights, cfg: ScoringConfig, fold: bool, method: str,
                 q_rows: int | None = None):
    W = jnp.asarray(np.asarray(action_weights, np.float32))
    if not 0 <= cfg.fallback_action < W.shape[0]:
        raise ValueError(f"ScoringConfig.fallback_action: {cfg.fallback_action} outside [0, {W.shape[0]})")
    if method not in kernels.TOPK_METHODS:
        raise ValueError(f"method: must be one of {kernels.TOPK_METHODS}, got {method!r}")
    if q_rows is not None:
        q_rows = q_block_rows(q_rows)  # validated here, before tracing
    return functools.partial(_serve, graphdef, W, cfg.top_k, cfg.fallback_action, bool(fold),
                             method, q_rows)


def build_serve(graphdef, action_weights, cfg: ScoringConfig, *, fold_lambda: bool = False,
                method: str = "auto",
                q_block_rows: int | None = None) -> Callable[..., ServeOutput]:
    """One jitted program ``serve(params, lam f32[J], batch: RequestBatch) -> ServeOutput``:
    context -> Q f32[B, A, J] -> scalarize -> select -> gather W -> re-weight all candidates ->
    masked top-k (PRL-PUTS serving; ``kernels.serve_batch``, top-k ``method`` as in
    ``kernels.rerank``). ``fold_lambda=True`` computes Q @ lam with lambda folded into the last
    layer (``scalarized_q``: faster, but not the sweep's f32 arithmetic). ``q_block_rows``: rows
    per Q-network block (``row_blocks``; None: 256 on CPU as the sweep does, one call on
    accelerators; 0: one call; another value changes Q's last bits against the sweep's).
    graphdef and W f32[A, K] are closed over; params and lam are traced (changing lambda or
    publishing new parameters never recompiles). Shapes are used as given (``scorer.Scorer``
    buckets them); ``serve.lower(params, lam, batch).compile()`` compiles ahead of time.
    Outputs are small (f32/i32[B, k] at most, 1.7 MB at B = 8192, k = 25), so nothing is
    donated: writing them into donated buffers measured within noise on the 2-core CPU (-4% to
    +6% of the pass over three interleaved runs; a fresh 32 MiB output is where donation pays).

    Raises ValueError when ``cfg.fallback_action`` is not an action of W, ``method`` is not
    one of ``kernels.TOPK_METHODS`` or ``q_block_rows`` < 0; the returned program validates
    nothing (a batch or lambda of another shape than the model's fails inside JAX's tracing:
    ``Scorer`` checks and names the field)."""
    return jax.jit(_serve_parts(graphdef, action_weights, cfg, fold_lambda, method,
                                q_block_rows))


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
    Raises ValueError as ``build_serve`` (fallback action, method); the compiled program raises
    TypeError for a batch or lambda of another shape or dtype than it was compiled for.
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

    Raises ValueError as ``build_serve`` (fallback action), and for a model that is not a
    QNetwork without ``example``; ``exp.call`` raises ValueError for arguments that do not fit
    the shapes above (e.g. n < ``cfg.top_k`` candidates: pad them with mask False).
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
