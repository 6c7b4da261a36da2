"""Kernels against the numpy oracle (identical actions and top-k indices, ties included)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require_native
from puts_jax import kernels, native, reference


def _quantized(rng, shape, scale=8):
    """Values on a coarse grid so f32 arithmetic is exact and ties are frequent."""
    return (rng.integers(-scale, scale + 1, shape) / scale).astype(np.float32)


def _serve_inputs(B=64, A=7, J=2, K=3, N=20, seed=0):
    rng = np.random.default_rng(seed)
    q = _quantized(rng, (B, A, J), 4)
    q[::5, 3] = q[::5, 1]  # exact duplicate actions: ties must go to the lowest index
    q[7, 2, 0] = np.nan  # non-finite Q rows -> fallback
    q[9, 0, 1] = np.inf
    W = _quantized(rng, (A, K), 4)
    preds = _quantized(rng, (B, N, K), 8)
    preds[:, 10:13] = preds[:, 4:5]  # tied candidates
    mask = rng.random((B, N)) < 0.8
    mask[3] = False  # a request without candidates
    mask[4, :2] = True
    mask[4, 2:] = False  # fewer real candidates than k
    preds[5, 6, 1] = np.nan  # reported, never ranked
    preds[6, 0, 0] = np.inf
    preds[~mask] = 1e3  # padding would win if it were ranked
    lam = np.array([0.25, 0.75], np.float32)
    return q, lam, W, preds, mask


def test_select_action_matches_reference_with_ties_and_fallback():
    q, lam, *_ = _serve_inputs()
    got = jax.jit(jax.vmap(kernels.select_action, (0, None, None)))(q, lam, 2)
    want = [reference.select_action(qb, lam, 2)[0] for qb in q]
    np.testing.assert_array_equal(np.asarray(got), want)
    assert int(got[7]) == 2 and int(got[9]) == 2
    # a designed tie: actions 1 and 3 equal and maximal -> 1
    qt = np.zeros((4, 2), np.float32)
    qt[[1, 3]] = 1.0
    assert int(kernels.select_action(qt, lam, 0)) == 1


def test_masked_top_k_ties_padding_nonfinite_and_short_rows():
    s = np.array([1.0, 3.0, np.nan, 3.0, 5.0, np.inf, 3.0, 9.0], np.float32)
    m = np.array([1, 1, 1, 1, 1, 1, 1, 0], bool)  # 9.0 is padding
    idx, val = kernels.masked_top_k(s, m, 4)
    np.testing.assert_array_equal(idx, [4, 1, 3, 6])
    np.testing.assert_array_equal(val, [5.0, 3.0, 3.0, 3.0])
    idx, val = jax.jit(kernels.masked_top_k, static_argnums=2)(s, m, 10)  # k > N
    np.testing.assert_array_equal(idx, [4, 1, 3, 6, 0, -1, -1, -1, -1, -1])
    assert np.all(np.isneginf(np.asarray(val)[5:]))
    ridx, rval = reference.masked_top_k(s, m, 10)
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_array_equal(val, rval)


def test_masked_top_k_counts_exactly_with_bf16_scores():
    """PITFALLS P2(b): 2048 slots, 1828 real -> 1828 ranked (never 1824)."""
    mask = np.zeros(2048, bool)
    mask[:1828] = True
    s = jnp.asarray(np.linspace(0, 1, 2048), jnp.bfloat16)
    idx, _ = kernels.masked_top_k(s, mask, 2048)
    assert int(jnp.sum(idx >= 0)) == 1828
    out = kernels.serve_batch(jnp.zeros((1, 2, 1)), jnp.ones(1), jnp.ones((2, 1)),
                              jnp.asarray(np.where(mask, np.nan, 1.0)[None, :, None], jnp.bfloat16),
                              mask[None], 4, 0)
    assert int(out.n_nonfinite[0]) == 1828


def test_serve_batch_matches_reference_jit_and_eager():
    q, lam, W, preds, mask = _serve_inputs()
    want = reference.serve(q, lam, W, preds, mask, 5, fallback=2)
    fn = lambda *a: kernels.serve_batch(*a, 5, 2)  # noqa: E731
    for got in (jax.jit(fn)(q, lam, W, preds, mask), fn(q, lam, W, preds, mask)):
        np.testing.assert_array_equal(got.action, want.action)
        np.testing.assert_array_equal(got.q_fallback, want.q_fallback)
        np.testing.assert_array_equal(got.topk_index, want.topk_index)
        np.testing.assert_allclose(got.topk_score, want.topk_score, rtol=1e-6)
        np.testing.assert_array_equal(got.n_nonfinite, want.n_nonfinite)
    got = jax.jit(fn)(q, lam, W, preds, mask)
    assert np.all(np.asarray(got.topk_index)[3] == -1)  # no candidates: no recommendations
    row4 = list(np.asarray(got.topk_index)[4])
    assert sorted(row4[:2]) == [0, 1] and row4[2:] == [-1, -1, -1]
    ti = np.asarray(got.topk_index)
    real = ti >= 0
    assert mask[np.nonzero(real)[0], ti[real]].all()  # padding never in the top k
    assert 6 not in ti[5] and int(got.n_nonfinite[5]) == 1 and 0 not in ti[6]


@pytest.mark.filterwarnings("ignore:invalid value")
def test_sweep_actions_matches_reference():
    q, *_ = _serve_inputs(B=32)
    lams = np.stack([np.linspace(0, 1, 9), 1 - np.linspace(0, 1, 9)], 1).astype(np.float32)
    got = jax.jit(kernels.sweep_actions)(q, lams, 1)
    np.testing.assert_array_equal(got, reference.sweep_actions(q, lams, 1))


def test_rank_checks_name_the_argument():
    with pytest.raises(ValueError, match="q_AxJ: expected rank 2"):
        kernels.select_action(jnp.zeros((2, 3, 4)), jnp.ones(4), 0)
    with pytest.raises(ValueError, match=r"fallback: action 5 outside \[0, 4\)"):
        kernels.select_action(jnp.zeros((4, 2)), jnp.ones(2) / 2, 5)
    with pytest.raises(ValueError, match="mask_N"):
        kernels.masked_top_k(jnp.zeros(3), jnp.ones((3, 1), bool), 2)


@pytest.mark.parametrize("N,k", [(20, 5), (40, 25), (7, 10), (13, 13)])
def test_extract_top_k_matches_reference_ties_zeros_and_short_rows(N, k):
    """The extraction top-k gives reference.masked_top_k's order: ties to the lowest index,
    -0.0 equal to 0.0, -inf last (indices past the real ones are ignored)."""
    rng = np.random.default_rng(N)
    s = _quantized(rng, (70, N), 2)  # values in {-1, -0.5, 0, 0.5, 1}: ties everywhere
    s[0] = -0.0
    s[1, ::2] = 0.0
    s[2] = np.sort(s[2])[::-1]  # sorted rows: every top entry in the first groups
    s[3, 3:] = -np.inf  # fewer real entries than k
    s[4] = -np.inf
    val, idx = jax.jit(kernels.extract_top_k, static_argnums=1)(s, k)
    for b in range(len(s)):
        ridx, rval = reference.masked_top_k(s[b], np.isfinite(s[b]), k)
        real = ridx >= 0
        np.testing.assert_array_equal(np.asarray(idx)[b][real], ridx[real], err_msg=f"row {b}")
        np.testing.assert_array_equal(np.asarray(val)[b], rval.astype(np.float32))


@pytest.mark.parametrize("method", ["extract", "lax", "auto", "native", "xla"])
def test_rerank_methods_match_per_example_kernels_and_reference(method):
    """rerank (re-weight + mask + top-k, blocked extraction or lax.top_k) equals reweight and
    masked_top_k vmapped and the numpy oracle, with ties, padding, NaN/inf and short rows;
    B = 300 runs as two blocks of 152 rows, 4 of them padding (padded rows are cut)."""
    if method == "native":
        require_native()
    q, lam, W, preds, mask = _serve_inputs(B=300, N=21)
    preds[7, 2, :] = -0.0  # a -0.0 score ties with 0.0 scores
    action = np.asarray(jax.vmap(kernels.select_action, (0, None, None))(q, lam, 2))
    w = W[action]
    idx, val, bad = jax.jit(kernels.rerank, static_argnums=(3, 4))(preds, w, mask, 6, method)
    scores = jax.vmap(kernels.reweight)(preds, w)
    vidx, vval = jax.vmap(kernels.masked_top_k, (0, 0, None))(scores, mask, 6)
    np.testing.assert_array_equal(idx, vidx)
    np.testing.assert_array_equal(val, vval)
    want = reference.serve(q, lam, W, preds, mask, 6, fallback=2)
    np.testing.assert_array_equal(idx, want.topk_index)
    np.testing.assert_allclose(val, want.topk_score, rtol=1e-6)
    np.testing.assert_array_equal(bad, want.n_nonfinite)
    with pytest.raises(ValueError, match="method: must be one of"):
        kernels.rerank(preds, w, mask, 6, "sort")


def test_rerank_auto_picks_native_then_extraction_then_lax_on_cpu(monkeypatch):
    """auto: the native tail on CPU where it builds; without it the extraction for large
    batches and lax.top_k for small ones."""
    shapes = [jax.ShapeDtypeStruct(s, d) for s, d in (((256, 40, 3), jnp.float32),
                                                      ((256, 3), jnp.float32),
                                                      ((256, 40), jnp.bool_))]
    small = [jax.ShapeDtypeStruct((4,) + s.shape[1:], s.dtype) for s in shapes]

    def text(args):
        return jax.jit(lambda p, w, m: kernels.rerank(p, w, m, 5)).lower(*args).as_text()

    if native.available():
        assert native.RERANK_TARGET in text(shapes) and native.RERANK_TARGET in text(small)
    monkeypatch.setattr(native, "available", lambda: False)
    big = text(shapes)
    assert "top_k" not in big and "while" in big and native.RERANK_TARGET not in big
    assert "top_k" in text(small)


@pytest.mark.filterwarnings("ignore:invalid value")
def test_sweep_select_matches_reference_with_ties_nonfinite_and_zero_weights():
    q, *_ = _serve_inputs(B=40)
    q[11, 5, 1] = -np.inf  # with lambda_1 = 0: 0 * -inf is NaN -> fallback
    lams = np.stack([np.linspace(0, 1, 9), 1 - np.linspace(0, 1, 9)], 1).astype(np.float32)
    got = jax.jit(kernels.sweep_select, static_argnums=2)(q, lams, 3)
    want = reference.sweep_actions(q, lams, 3).T
    np.testing.assert_array_equal(got, want)
    assert (np.asarray(got)[[7, 9, 11]] == 3).all()
    many = np.repeat(q, 20, axis=1)[:, :130]  # A = 130 > the unrolled limit: fori_loop form
    np.testing.assert_array_equal(kernels.sweep_select(many, lams, 3),
                                  reference.sweep_actions(many, lams, 3).T)


def test_serve_and_sweep_scalarize_alike_bit_for_bit():
    """Serving and the sweep pick the same action for the same lambda (same f32 arithmetic),
    on random Q with near-ties well inside f32 rounding."""
    rng = np.random.default_rng(5)
    q = (1.0 + 1e-7 * rng.integers(0, 4, (4000, 16, 3))).astype(np.float32)
    lams = rng.dirichlet(np.ones(3), 7).astype(np.float32)
    sweep = np.asarray(jax.jit(kernels.sweep_select)(q, lams))
    for i, lam in enumerate(lams):
        s = jax.jit(kernels.scalarize_rows)(q, lam)
        np.testing.assert_array_equal(np.asarray(kernels.first_argmax_rows(s, 0)[0]), sweep[:, i])
