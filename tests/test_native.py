"""The native serve tail (puts_jax.native, csrc/rerank.cc) gives the XLA forms' answers bit for
bit: scores with XLA:CPU's roundings, ties to the lowest index, -0.0 tied with 0.0, padding and
NaN/inf never ranked (and counted), short rows, several 512-candidate chunks, the scalar path
(K > 8 or k > 32), and the select of ``serve_scores`` with its fallback."""

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require_native
from puts_jax import kernels, native, reference


def _inputs(rng, B, N, K, *, kind="random"):
    preds = rng.random((B, N, K), dtype=np.float32)
    w = rng.normal(size=(B, K)).astype(np.float32)
    mask = rng.random((B, N)) < 0.9
    if kind == "ties":  # few distinct scores: ties everywhere
        preds = np.round(preds * 2) / 2
        w = np.round(w)
    if B >= 8:
        preds[0, :, :] = 0.0  # every score 0.0 or -0.0: one tie
        preds[0, ::3, 0] = -0.0
        preds[1, min(2, N - 1), 0] = np.nan
        preds[1, min(4, N - 1), K - 1] = np.inf
        mask[2] = False  # no real candidates
        mask[3, 3:] = False  # fewer real candidates than k
        preds[4] = np.sort(preds[4], axis=0)  # ascending scores: every candidate enters
        w[4] = np.abs(w[4])
        preds[5, :, :] = -preds[5, :, :]
        preds[6, :, :] = np.nan  # every real candidate non-finite
    return preds, w, mask


def _equal(got, want, what):
    for name, g, e in zip(("idx", "score", "n_nonfinite"), got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(e), err_msg=f"{what}: {name}")


@pytest.mark.parametrize("B,N,K,k,kind", [
    (64, 500, 6, 25, "random"), (64, 500, 6, 25, "ties"), (40, 1100, 6, 25, "random"),
    (16, 16, 6, 32, "random"), (16, 17, 6, 5, "ties"), (9, 1, 6, 3, "random"),
    (24, 10, 1, 25, "random"), (24, 33, 2, 1, "random"), (24, 100, 3, 8, "ties"),
    (24, 200, 8, 16, "random"), (24, 70, 12, 10, "random"), (24, 300, 6, 40, "random"),
])
def test_native_rerank_equals_xla_forms_bit_for_bit(B, N, K, k, kind):
    require_native()
    preds, w, mask = _inputs(np.random.default_rng(B * N + K + k), B, N, K, kind=kind)
    fn = jax.jit(kernels.rerank, static_argnums=(3, 4))
    got = fn(preds, w, mask, k, "native")
    _equal(got, fn(preds, w, mask, k, "lax"), "vs lax")
    if k <= kernels.EXTRACT_MAX_K:
        _equal(got, fn(preds, w, mask, k, "extract"), "vs extract")
    if kind == "ties":  # exact arithmetic: the numpy oracle too
        for b in range(B):
            ridx, rval = reference.masked_top_k(np.einsum("nk,k->n", preds[b], w[b]), mask[b], k)
            np.testing.assert_array_equal(np.asarray(got[0][b]), ridx, err_msg=f"row {b}")
            np.testing.assert_array_equal(np.asarray(got[1][b]), rval.astype(np.float32))


@pytest.mark.parametrize("B,A,N,K,k", [(300, 64, 500, 6, 25), (8, 3, 17, 2, 1),
                                       (32, 16, 1000, 8, 32), (20, 5, 100, 6, 40),
                                       (12, 17, 40, 6, 25), (12, 70, 40, 6, 25),
                                       (12, 2, 40, 3, 5)])
def test_native_serve_tail_equals_the_xla_select_and_rerank(B, A, N, K, k):
    require_native()
    rng = np.random.default_rng(A)
    s = rng.normal(size=(B, A)).astype(np.float32)
    s[0, A - 1] = np.nan  # a non-finite row takes the fallback
    s[1, :] = 0.0  # ties: the lowest index, -0.0 equal to 0.0
    s[1, 0] = -0.0
    s[2, 0] = np.inf
    s[3] = np.round(s[3])
    if B >= 8:  # the vector select reads 16 actions at a time: ties across and inside blocks
        s[4, :] = -1.0
        s[4, [A // 2, A - 1]] = 2.0  # the same maximum twice: the lower index
        s[5, :] = -1.0
        s[5, A - 1] = -0.0  # the maximum in the last, partial block
        s[5, max(A - 2, 0)] = 0.0  # ... tied with +0.0 one index earlier: that index
        s[6, A - 1] = -np.inf  # -inf is non-finite too: fallback
        s[7, :] = np.float32(3.0)  # all equal: action 0
    W = rng.random((A, K), dtype=np.float32)
    preds, _, mask = _inputs(rng, B, N, K)
    fn = jax.jit(kernels.serve_scores, static_argnums=(4, 5, 6))
    got, want = fn(s, W, preds, mask, k, 1, "native"), fn(s, W, preds, mask, k, 1, "lax")
    for name in got._fields:
        np.testing.assert_array_equal(np.asarray(getattr(got, name)),
                                      np.asarray(getattr(want, name)), err_msg=name)
    assert np.asarray(got.q_fallback)[[0, 2]].all() and np.asarray(got.action)[0] == 1
    if B >= 8:
        want_rows = [min(A // 2, A - 1), max(A - 2, 0), 1, 0]
        np.testing.assert_array_equal(np.asarray(got.action)[4:8], want_rows)
        assert np.asarray(got.q_fallback)[6] and not np.asarray(got.q_fallback)[[4, 5, 7]].any()
    auto = jax.jit(lambda *a: kernels.serve_scores(*a, k, 1, "auto")).lower(s, W, preds, mask)
    assert (native.SERVE_TAIL_TARGET in auto.as_text()) == (k <= kernels.NATIVE_MAX_K)
    xla = jax.jit(lambda *a: kernels.serve_scores(*a, k, 1, "xla")).lower(s, W, preds, mask)
    assert "puts_jax_" not in xla.as_text()  # "xla": auto without the native tail
    for name, v in zip(got._fields, xla.compile()(s, W, preds, mask)):
        np.testing.assert_array_equal(np.asarray(getattr(got, name)), np.asarray(v), err_msg=name)


def test_native_serve_tail_rejects_a_fallback_outside_the_action_set():
    require_native()
    s, W = np.zeros((2, 4), np.float32), np.ones((4, 3), np.float32)
    preds, mask = np.ones((2, 5, 3), np.float32), np.ones((2, 5), bool)
    with pytest.raises(Exception, match=r"fallback outside \[0, A\)"):
        jax.block_until_ready(native.serve_tail(s, W, preds, mask, 2, 4))


def test_native_unavailable_says_why_and_auto_keeps_xla(monkeypatch):
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("PUTS_JAX_NATIVE", "0")
    assert not native.available()
    assert native.why_unavailable() == "disabled by PUTS_JAX_NATIVE=0"
    preds, w, mask = (jnp.ones((2, 5, 3)), jnp.ones((2, 3)), jnp.ones((2, 5), bool))
    with pytest.raises(RuntimeError, match="native rerank unavailable: disabled by PUTS_JAX_"):
        kernels.rerank(preds, w, mask, 2, "native")
    assert kernels.cpu_tail(1024, 3, 2) == "extract" and kernels.cpu_tail(8, 3, 2) == "lax"
    assert native.RERANK_TARGET not in jax.jit(
        lambda p, ww, m: kernels.rerank(p, ww, m, 2)).lower(preds, w, mask).as_text()


def test_native_build_is_cached_per_source_and_cpu(tmp_path, monkeypatch):
    require_native()
    monkeypatch.setenv("PUTS_JAX_CACHE", str(tmp_path))
    lib = native._build()
    assert os.path.dirname(lib) == os.path.join(str(tmp_path), "native")
    mtime = os.stat(lib).st_mtime_ns
    assert native._build() == lib and os.stat(lib).st_mtime_ns == mtime  # not rebuilt
    assert not [f for f in os.listdir(os.path.dirname(lib)) if f.endswith(".tmp")]


def test_native_build_falls_back_to_a_temporary_folder_when_the_cache_is_read_only(monkeypatch):
    require_native()
    monkeypatch.setenv("PUTS_JAX_CACHE", "/proc/puts_jax_read_only")  # cannot be created
    lib = native._build()
    assert os.path.dirname(lib).startswith(os.path.join(tempfile.gettempdir(), "puts_jax_native_"))
    assert os.path.exists(lib)


def test_a_truncated_cached_library_is_rebuilt_not_loaded(tmp_path, monkeypatch):
    require_native()
    monkeypatch.setenv("PUTS_JAX_CACHE", str(tmp_path))
    lib = native._build()
    size = os.path.getsize(lib)
    with open(lib, "r+b") as f:  # a cut-short file would die with SIGBUS when loaded
        f.truncate(100)
    assert native._build() == lib and os.path.getsize(lib) == size
    with open(lib + ".sha256") as f:
        assert f.read() == native._digest(lib)


def test_a_cache_folder_others_can_write_is_not_used(tmp_path, monkeypatch):
    require_native()
    monkeypatch.setenv("PUTS_JAX_CACHE", str(tmp_path))
    shared = tmp_path / "native"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # any user could plant a library here
    folder = native._build_folder()
    assert folder != str(shared) and native._private(folder)
