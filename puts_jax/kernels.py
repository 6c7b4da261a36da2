"""Serving kernels: select an action, re-weight candidates, masked top-k (pure jax arrays).

Per-example functions are written for ONE request and check ranks at the top (rlax style,
``rlax/_src/value_learning.py``); callers batch them with ``jax.vmap``, and they define the
semantics. The batched, fused forms that ``puts_jax.engine`` compiles (``serve_scores`` /
``serve_batch``, ``rerank``, ``sweep_select``) are written on whole batches where the layout is
what makes them fast on XLA:CPU, and are tested against the per-example forms and
``puts_jax.reference`` (equal actions and top-k indices, ties included):

* ``extract_top_k`` (in ``puts_jax.topk``, re-exported here): the exact top-k of many rows as k
  extraction steps over group maxima, the rows in the vector lanes (about 3x faster than
  XLA:CPU's ``TopK``, a ``partial_sort`` per row, on 8192 x 500 random scores). ``rerank`` re-weights and masks the whole batch in one fusion,
  then runs that top-k and the non-finite count on blocks of at most ``TAIL_BLOCK`` rows, so a
  block's scores stay in cache (B = 8192, N = 500: 36 ms, against 60 ms with the re-weighting
  inside the block loop and 68 ms with ``lax.top_k``).
* ``sweep_select``: the greedy action of every lambda as one running first-argmax over the
  actions on [B, L] arrays (lambdas in the vector lanes): Q is read once for all lambdas and no
  [L, B, A] or [B, A, L] temporary exists.

The target policy of PRL-PUTS (arXiv 2605.16344) for a scalarization lam: f32[J] picks
``a* = argmax_a Q[a] @ lam`` (ties to the lowest index; a non-finite scalarized row falls back to a
fixed action) and re-scores every candidate with the chosen utility weights, ``s[n] = W[a*] .
preds[n]``, keeping the k best real, finite candidates.

No flax, grain or orbax here: these functions test against ``puts_jax.reference`` without a model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from puts_jax import native
from puts_jax.topk import TOPK_GROUP, extract_top_k  # noqa: F401  (re-exported: kernels API)
from puts_jax.types import ServeOutput

_UNROLL_MAX_K = 16  # re-weighting unrolls the K-dot up to this many ranker heads
_UNROLL_MAX_A = 128  # sweep_select unrolls its running argmax up to this many actions
TAIL_BLOCK = 256  # rerank: at most this many rows per top-k block (a block's f32[rows, N]
# scores stay in L2; 256 rows ran the B = 8192 tail ~15% faster than 64 or 512 on the 2-core CPU)
EXTRACT_MIN_ROWS = 128  # rerank "auto": fewer rows use lax.top_k (the k steps cost per call)
EXTRACT_MAX_K = 64  # rerank "auto": larger k use lax.top_k (the steps grow with k)
NATIVE_MAX_K = 32  # rerank "auto": the native tail's vector path holds at most 32 slots
NATIVE_MAX_HEADS = 8  # ... and at most 8 ranker heads (K)
TOPK_METHODS = ("auto", "native", "xla", "extract", "lax")


def _check_rank(name: str, x: jax.Array, ndim: int) -> None:
    if jnp.ndim(x) != ndim:
        raise ValueError(f"{name}: expected rank {ndim}, got shape {jnp.shape(x)}")


def first_argmax(s_A: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Index of the largest entry of ``s: f32[A]`` (ties to the lowest index) and whether every
    entry is finite. Written as max / where / min: on CPU about 4x faster than ``jnp.argmax``
    (FACTS.md). With a non-finite entry the index is meaningless; callers use the flag."""
    _check_rank("s_A", s_A, 1)
    n = s_A.shape[0]
    m = jnp.max(s_A)
    idx = jnp.min(jnp.where(s_A == m, lax.iota(jnp.int32, n), jnp.int32(n)))
    return idx, jnp.all(jnp.isfinite(s_A))


def select_from_scores(s_A: jax.Array, fallback) -> tuple[jax.Array, jax.Array]:
    """Greedy action on scalarized scores ``s: f32[A]`` -> (i32 action, bool used_fallback).

    Any non-finite score (NaN/inf Q, or 0 * inf from a zero lambda weight) selects ``fallback``.
    """
    if isinstance(fallback, int) and not 0 <= fallback < s_A.shape[0]:
        raise ValueError(f"fallback: action {fallback} outside [0, {s_A.shape[0]})")
    idx, finite = first_argmax(s_A)
    return jnp.where(finite, idx, jnp.asarray(fallback, jnp.int32)), ~finite


def scalarize(q_AxJ: jax.Array, lam_J: jax.Array) -> jax.Array:
    """``q: f[A, J]``, ``lam: f[J]`` -> f32[A] = q @ lam, accumulated in f32 (PITFALLS P2)."""
    _check_rank("q_AxJ", q_AxJ, 2)
    _check_rank("lam_J", lam_J, 1)
    return jnp.einsum("aj,j->a", q_AxJ.astype(jnp.float32), lam_J.astype(jnp.float32))


def select_action(q_AxJ: jax.Array, lam_J: jax.Array, fallback) -> jax.Array:
    """Target-policy action for one request: i32 ``argmax_a q[a] @ lam`` (PRL-PUTS), ties to the
    lowest index; a non-finite scalarized row gives ``fallback``.

    Args: q f[A, J] Q-values; lam f[J] scalarization; fallback int or i32[] action.
    """
    return select_from_scores(scalarize(q_AxJ, lam_J), fallback)[0]


def reweight(preds_NxK: jax.Array, w_K: jax.Array) -> jax.Array:
    """Utility of each candidate under weights w: ``f32[N] = preds[n] . w`` (f32 accumulation).

    For small K (ranker heads) the dot is unrolled into K multiply-adds over ``preds[:, k]``:
    vmapped, XLA:CPU runs that about 4x faster than the batched mat-vec an einsum lowers to.
    """
    _check_rank("preds_NxK", preds_NxK, 2)
    _check_rank("w_K", w_K, 1)
    p, w = preds_NxK.astype(jnp.float32), w_K.astype(jnp.float32)
    if p.shape[1] > _UNROLL_MAX_K:
        return jnp.einsum("nk,k->n", p, w)
    u = p[:, 0] * w[0]
    for j in range(1, p.shape[1]):
        u = u + p[:, j] * w[j]
    return u


def _canonical(s: jax.Array) -> jax.Array:
    """-0.0 -> +0.0 (every other value unchanged), so that equal scores compare equal in XLA's
    TopK, which orders floats as integers (-0.0 below 0.0)."""
    return jnp.where(s == 0, jnp.zeros_like(s), s)


def masked_top_k(scores_N: jax.Array, mask_N: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The k best real, finite candidates of one request, best first.

    Args:
      scores_N: f[N] candidate scores.
      mask_N: bool[N] True for real candidates (padding is never returned).
      k: static number of slots (may exceed N).
    Returns:
      (idx i32[k], score f32[k]); ties go to the lowest index (-0.0 ties with 0.0, as in
      ``reference``; XLA's TopK alone would rank 0.0 first); slots beyond the number of real,
      finite candidates hold idx -1 and score -inf. NaN/inf scores are never ranked.
    """
    _check_rank("scores_N", scores_N, 1)
    _check_rank("mask_N", mask_N, 1)
    s = scores_N.astype(jnp.float32)
    ok = mask_N & jnp.isfinite(s)
    s = _canonical(jnp.where(ok, s, -jnp.inf))
    n = s.shape[0]
    if k > n:
        s = jnp.concatenate([s, jnp.full((k - n,), -jnp.inf, jnp.float32)])
    val, idx = lax.top_k(s, k)  # stable: equal values keep the lower index first
    # A real candidate's finite score is > -inf; -inf slots are padding or fewer than k real.
    real = val > -jnp.inf
    return jnp.where(real, idx, -1).astype(jnp.int32), val


def scalarize_rows(q_BxAxJ: jax.Array, lam_J: jax.Array) -> jax.Array:
    """f32[B, A] = q @ lam as J multiply-adds in order, ``q[..., 0] lam[0] + q[..., 1] lam[1]
    + ...`` (f32): the arithmetic of ``sweep_select``, so serving and the sweep pick the same
    action for the same lambda, bit for bit."""
    _check_rank("q_BxAxJ", q_BxAxJ, 3)
    _check_rank("lam_J", lam_J, 1)
    q, lam = q_BxAxJ.astype(jnp.float32), lam_J.astype(jnp.float32)
    s = q[:, :, 0] * lam[0]
    for j in range(1, q.shape[2]):
        s = s + q[:, :, j] * lam[j]
    return s


def first_argmax_rows(s_BxA: jax.Array, fallback) -> tuple[jax.Array, jax.Array]:
    """``select_from_scores`` on whole rows: (i32[B] first argmax of each row of ``s: f[B, A]``,
    or ``fallback`` where a row has a non-finite entry; bool[B] used_fallback)."""
    _check_rank("s_BxA", s_BxA, 2)
    A = s_BxA.shape[1]
    m = jnp.max(s_BxA, axis=1, keepdims=True)
    idx = jnp.min(jnp.where(s_BxA == m, lax.broadcasted_iota(jnp.int32, s_BxA.shape, 1),
                            jnp.int32(A)), axis=1)
    finite = jnp.all(jnp.isfinite(s_BxA), axis=1)
    return jnp.where(finite, idx, jnp.asarray(fallback, jnp.int32)), ~finite


def _scores(preds_BxNxK, w_BxK, mask_BxN):
    """s f32[B, N]: W . preds for real, finite candidates, -inf elsewhere, -0.0 as 0.0."""
    p, w = preds_BxNxK.astype(jnp.float32), w_BxK.astype(jnp.float32)
    if p.shape[2] > _UNROLL_MAX_K:
        u = jnp.einsum("bnk,bk->bn", p, w)
    else:  # the same multiply-adds, in the same order, as ``reweight``
        u = p[:, :, 0] * w[:, 0:1]
        for j in range(1, p.shape[2]):
            u = u + p[:, :, j] * w[:, j:j + 1]
    return _canonical(jnp.where(mask_BxN & jnp.isfinite(u), u, -jnp.inf))


def _n_nonfinite(s_BxN, mask_BxN):
    """i32[B]: real candidates minus ranked ones, counted from s (a second consumer of u would
    make XLA recompute the re-weighting in its fusion), in f32 (exact below 2**24 candidates;
    XLA:CPU turned s32 sums into slow reduce-window loops)."""
    return (jnp.sum(mask_BxN.astype(jnp.float32), axis=1)
            - jnp.sum((s_BxN > -jnp.inf).astype(jnp.float32), axis=1)).astype(jnp.int32)


def _blocked(fn, block: int, *xs):
    """``fn`` over blocks of ``block`` rows (``lax.map``); rows padded with zeros to a multiple
    of ``block`` and the padding cut from the (row-major) outputs."""
    B = xs[0].shape[0]
    nb = -(-B // block)
    pad = nb * block - B
    xs = [jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) if pad else x for x in xs]
    out = lax.map(lambda blk: fn(*blk), tuple(x.reshape((nb, block) + x.shape[1:]) for x in xs))
    return jax.tree.map(lambda y: y.reshape((nb * block,) + y.shape[2:])[:B], out)


def rerank(preds_BxNxK: jax.Array, w_BxK: jax.Array, mask_BxN: jax.Array, k: int,
           method: str = "auto") -> tuple[jax.Array, jax.Array, jax.Array]:
    """Re-weight every candidate with its request's weights and keep the k best real, finite
    ones: ``reweight`` + ``masked_top_k`` vmapped, with the same results.

    Args:
      preds_BxNxK: f[B, N, K]; w_BxK: f32[B, K] each request's weights; mask_BxN: bool[B, N].
      k: static number of slots.
      method (static): "native" (``puts_jax.native``: one C++ pass over preds on XLA:CPU, the
        scores bit for bit those of the XLA forms), "extract" (``extract_top_k`` on equal blocks
        of at most ``TAIL_BLOCK`` rows), "lax" (``lax.top_k`` on the whole batch: XLA's TopK;
        the portable form, used on GPUs and by ``engine.export_serve``), "auto": on CPU
        "native" where ``native.available()`` and k <= ``NATIVE_MAX_K``, K <=
        ``NATIVE_MAX_HEADS``, else "extract" for at least ``EXTRACT_MIN_ROWS`` rows and k <=
        ``EXTRACT_MAX_K``, else "lax"; "lax" elsewhere (``lax.platform_dependent``, resolved
        when the program is lowered), or "xla": "auto" without the native tail.
    Returns:
      (idx i32[B, k] best first, -1 past the real finite candidates; score f32[B, k], -inf
      there; n_nonfinite i32[B] real candidates whose score was NaN/inf).
    Raises:
      ValueError: unknown method; RuntimeError: "native" where ``native.why_unavailable()``.
    """
    _check_rank("preds_BxNxK", preds_BxNxK, 3)
    _check_rank("w_BxK", w_BxK, 2)
    _check_rank("mask_BxN", mask_BxN, 2)
    if method not in TOPK_METHODS:
        raise ValueError(f"method: must be one of {TOPK_METHODS}, got {method!r}")
    B, _, K = preds_BxNxK.shape

    def lax_form(p, w, m):
        s = _scores(p, w, m)
        bad = _n_nonfinite(s, m)
        N = s.shape[1]
        if k > N:
            s = jnp.concatenate([s, jnp.full((B, k - N), -jnp.inf, jnp.float32)], axis=1)
        val, idx = lax.top_k(s, k)
        return jnp.where(val > -jnp.inf, idx, -1).astype(jnp.int32), val, bad

    def extract_form(p, w, m):
        # scores of the whole batch first: re-weighting inside the row-block loop ran ~2x
        # slower on XLA:CPU (B = 8192: 38 vs 20 ms) than one fusion over the batch
        # and the non-finite count per block, where the block's scores are in cache (a count
        # over the whole batch next to the loop cost as much as the top-k)
        s = _scores(p, w, m)
        # equal blocks of at most TAIL_BLOCK rows (a multiple of 8): little padding for any B
        nb = max(-(-B // TAIL_BLOCK), 1)  # (B = 0: one empty block)
        block = max(-(-(-(-B // nb)) // 8) * 8, 8)
        val, idx, bad = _blocked(lambda x, mm: extract_top_k(x, k) + (_n_nonfinite(x, mm),),
                                 block, s, m)
        return jnp.where(val > -jnp.inf, idx, -1).astype(jnp.int32), val, bad

    def native_form(p, w, m):
        return native.rerank(p, w, m, k)

    args = (preds_BxNxK, w_BxK, mask_BxN)
    forms = {"native": native_form, "extract": extract_form, "lax": lax_form}
    if method in forms:
        return forms[method](*args)
    cpu = cpu_tail(B, K, k, allow_native=method == "auto")
    if cpu == "lax":
        return lax_form(*args)
    return lax.platform_dependent(*args, cpu=forms[cpu], default=lax_form)


def cpu_tail(B: int, K: int, k: int, allow_native: bool = True) -> str:
    """What ``rerank(method="auto")`` runs on XLA:CPU for B requests, K heads and top-k k:
    "native" where ``allow_native``, ``native.available()`` and k <= ``NATIVE_MAX_K``, K <=
    ``NATIVE_MAX_HEADS``; else "extract" for B >= ``EXTRACT_MIN_ROWS`` and k <=
    ``EXTRACT_MAX_K``; else "lax"."""
    if allow_native and k <= NATIVE_MAX_K and K <= NATIVE_MAX_HEADS and native.available():
        return "native"
    if B >= EXTRACT_MIN_ROWS and k <= EXTRACT_MAX_K:
        return "extract"
    return "lax"


def serve_scores(s_BxA: jax.Array, W_AxK: jax.Array, preds_BxNxK: jax.Array,
                 mask_BxN: jax.Array, k: int, fallback, method: str = "auto") -> ServeOutput:
    """The fused serve pass from scalarized scores ``s = Q @ lam: f32[B, A]``: select (first
    argmax, ``fallback`` on a non-finite row) -> gather W -> ``rerank`` (re-weight all
    candidates -> masked top-k). ``serve_batch`` computes s from Q (``scalarize_rows``);
    ``engine.scalarized_q`` with lambda folded into the Q-network's last layer. Where ``rerank``
    would run "native" (``method`` "native", or "auto" on CPU per ``cpu_tail``) the whole tail
    is one ``native.serve_tail`` call (the select costs XLA:CPU ~3 ms at B = 8192), with the
    same results."""
    B, _, K = preds_BxNxK.shape

    def xla_form(s, W, p, m):
        action, q_fallback = first_argmax_rows(s.astype(jnp.float32), fallback)
        w_BxK = jnp.take(W.astype(jnp.float32), action, axis=0)
        idx, val, bad = rerank(p, w_BxK, m, k, method)
        return action, q_fallback, idx, val, bad

    def native_form(s, W, p, m):
        return native.serve_tail(s, W, p, m, k, fallback)

    args = (s_BxA, W_AxK, preds_BxNxK, mask_BxN)
    if method == "native":
        out = native_form(*args)
    elif method == "auto" and cpu_tail(B, K, k) == "native":
        out = lax.platform_dependent(*args, cpu=native_form, default=xla_form)
    else:
        out = xla_form(*args)
    action, q_fallback, idx, val, bad = out
    return ServeOutput(action, idx, val, bad, q_fallback)


def serve_batch(q_BxAxJ: jax.Array, lam_J: jax.Array, W_AxK: jax.Array, preds_BxNxK: jax.Array,
                mask_BxN: jax.Array, k: int, fallback, method: str = "auto") -> ServeOutput:
    """The fused serve pass after the Q-network: scalarize -> select -> gather W -> re-weight all
    candidates -> masked top-k, for a batch.

    Args:
      q_BxAxJ: f[B, A, J] Q-values; lam_J: f32[J] (traced); W_AxK: f32[A, K] action set.
      preds_BxNxK: f[B, N, K] ranker predictions; mask_BxN: bool[B, N] real candidates.
      k: static top-k size; fallback: action for rows with non-finite Q; method: ``rerank``'s.
    Returns:
      ServeOutput (see puts_jax.types); ``n_nonfinite`` counts real candidates whose score
      W[a*] . preds was NaN/inf (any NaN/inf prediction makes the score non-finite).
    """
    _check_rank("q_BxAxJ", q_BxAxJ, 3)
    _check_rank("preds_BxNxK", preds_BxNxK, 3)
    if isinstance(fallback, int) and not 0 <= fallback < q_BxAxJ.shape[1]:
        raise ValueError(f"fallback: action {fallback} outside [0, {q_BxAxJ.shape[1]})")
    s_BxA = scalarize_rows(q_BxAxJ, lam_J)
    return serve_scores(s_BxA, W_AxK, preds_BxNxK, mask_BxN, k, fallback, method)


def sweep_select(q_BxAxJ: jax.Array, lams_LxJ: jax.Array, fallback=0) -> jax.Array:
    """Greedy actions of every lambda: i32[B, L] (lambdas minor), ``select_action`` of each
    (b, l): the first argmax over a of ``q[b, a] @ lams[l]`` (f32), ``fallback`` where that row
    has a non-finite entry.

    One running first-argmax over the A actions on [B, L] arrays (strictly greater replaces, so
    ties keep the lowest index): Q is read once for all lambdas, the lambdas sit in the vector
    lanes, and no [B, A, L] temporary exists; XLA fuses the chain into one loop over [B, L].
    Use it on blocks of rows that fit in cache (``engine``'s sweep does).
    """
    _check_rank("q_BxAxJ", q_BxAxJ, 3)
    _check_rank("lams_LxJ", lams_LxJ, 2)
    B, A, J = q_BxAxJ.shape
    q = q_BxAxJ.astype(jnp.float32)
    lam = [lams_LxJ[:, j].astype(jnp.float32)[None, :] for j in range(J)]

    def step(a, carry):
        best, finite, idx = carry
        q_a = lax.dynamic_index_in_dim(q, a, axis=1, keepdims=False)  # f32[B, J]
        s = q_a[:, 0:1] * lam[0]  # f32[B, L] = q[:, a] @ lam, summed over j in order
        for j in range(1, J):
            s = s + q_a[:, j:j + 1] * lam[j]
        take = s > best
        return (jnp.where(take, s, best), finite & jnp.isfinite(s),
                jnp.where(take, jnp.asarray(a, jnp.int32), idx))

    shape = (B, lams_LxJ.shape[0])
    carry = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.ones(shape, bool),
             jnp.zeros(shape, jnp.int32))
    if A <= _UNROLL_MAX_A:  # unrolled: XLA fuses the whole chain into one loop over [B, L]
        for a in range(A):
            carry = step(a, carry)
    else:
        carry = lax.fori_loop(0, A, step, carry)
    _, finite, idx = carry
    return jnp.where(finite, idx, jnp.asarray(fallback, jnp.int32))


def sweep_actions(q_BxAxJ: jax.Array, lams_LxJ: jax.Array, fallback=0) -> jax.Array:
    """Greedy actions for every lambda: i32[L, B] (``sweep_select`` transposed)."""
    return sweep_select(q_BxAxJ, lams_LxJ, fallback).T
