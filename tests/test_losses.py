"""One-step Q regression losses against hand-computed values and a numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from puts_jax import losses

# Eager op-by-op dispatch compiles every primitive (seconds); the tests call jitted forms and one
# test checks eager == jit.
example_loss = jax.jit(losses.example_loss)
batch_loss = jax.jit(losses.batch_loss)


def _ref_batch(q, a, r, valid, binary, w):
    """numpy float64 reference of batch_loss."""
    q = np.asarray(q, np.float64)[np.arange(len(a)), a]  # [B, J]
    p = np.clip(q, losses.PROB_EPS, 1 - losses.PROB_EPS)
    bce = -(r * np.log(p) + (1 - r) * np.log1p(-p))
    per = np.where(binary[None], bce, (q - r) ** 2)
    per = per[valid]
    per_obj = per.sum(0) / max(valid.sum(), 1)
    return (per_obj * w).sum(), per_obj


def test_hand_computed_example():
    q = jnp.array([[0.8, 2.0], [0.3, 0.5]])  # A = 2, J = 2 (binary, count)
    binary = jnp.array([True, False])
    got = example_loss(q, jnp.int32(0), jnp.array([1.0, 3.0]), binary)
    np.testing.assert_allclose(got, [-np.log(0.8), 1.0], rtol=1e-6)
    got = example_loss(q, jnp.int32(1), jnp.array([0.0, 0.0]), binary)
    np.testing.assert_allclose(got, [-np.log(0.7), 0.25], rtol=1e-6)


def test_batch_matches_numpy_reference_and_padding_contributes_zero():
    rng = np.random.default_rng(0)
    B, A, J = 37, 5, 3
    q = rng.uniform(0.01, 0.99, (B, A, J)).astype(np.float32)
    q[..., 2] *= 4.0  # a count objective may exceed 1
    a = rng.integers(0, A, B).astype(np.int32)
    r = np.stack([rng.integers(0, 2, B), rng.integers(0, 2, B), rng.poisson(1.0, B)], 1)
    r = r.astype(np.float32)
    valid = rng.random(B) < 0.7
    binary = np.array([True, True, False])
    w = np.array([1.0, 0.5, 0.25], np.float32)
    total, per = jax.jit(losses.batch_loss)(q, a, r, valid, binary, w)
    ref_total, ref_per = _ref_batch(q, a, r, valid, binary, w)
    np.testing.assert_allclose(per, ref_per, rtol=1e-5)
    np.testing.assert_allclose(total, ref_total, rtol=1e-5)
    # Padding rows: changing them changes nothing.
    q2, r2 = q.copy(), r.copy()
    q2[~valid], r2[~valid] = 0.5, 7.0
    np.testing.assert_array_equal(batch_loss(q2, a, r2, valid, binary, w)[1], per)
    # Eager equals jit.
    np.testing.assert_allclose(losses.batch_loss(q, a, r, valid, binary, w)[0], total, rtol=1e-6)


def test_no_valid_row_gives_zero():
    total, per = batch_loss(jnp.full((4, 2, 1), 0.5), jnp.zeros(4, jnp.int32),
                                   jnp.ones((4, 1)), jnp.zeros(4, bool), jnp.array([True]),
                                   jnp.ones(1))
    assert float(total) == 0.0 and per.tolist() == [0.0]


@pytest.mark.parametrize("q", [0.0, 1.0, -0.5, 1.5])
def test_cross_entropy_is_finite_at_and_beyond_the_edges(q):
    binary = jnp.array([True, False])
    qa = jnp.array([[q, 5.0]])

    def f(qa):
        return losses.example_loss(qa, jnp.int32(0), jnp.array([1.0 - min(max(q, 0), 1), 2.0]),
                                   binary).sum()

    val, grad = jax.jit(jax.value_and_grad(f))(qa)
    assert np.isfinite(val) and np.all(np.isfinite(grad))
    # Clipped at PROB_EPS: the worst loss is -log(1e-6).
    assert float(val) <= -np.log(losses.PROB_EPS) + 9.0 + 1e-3


def test_mixed_kinds_gradient_has_no_nan_from_the_unselected_branch():
    # A count objective with q = 5 would be NaN under log(1 - q); where() must not leak it.
    q = jnp.array([[[0.4, 5.0]]])
    g = jax.jit(jax.grad(lambda q: losses.batch_loss(q, jnp.zeros(1, jnp.int32), jnp.array([[1.0, 3.0]]),
                                             jnp.ones(1, bool), jnp.array([True, False]),
                                             jnp.ones(2))[0]))(q)
    np.testing.assert_allclose(g[0, 0], [-1 / 0.4, 2 * (5.0 - 3.0)], rtol=1e-5)


def test_bf16_inputs_accumulate_in_f32():
    # PITFALLS P2 spirit: 10,000 rows of squared error 0.25 each, given in bf16.
    B = 10_000
    q = jnp.full((B, 1, 1), 0.5, jnp.bfloat16)
    total, per = batch_loss(q, jnp.zeros(B, jnp.int32), jnp.zeros((B, 1), jnp.bfloat16),
                                   jnp.ones(B, bool), jnp.array([False]), jnp.ones(1))
    assert per.dtype == jnp.float32
    assert float(total) == 0.25


def test_rank_errors_name_the_argument():
    with pytest.raises(ValueError, match="q_AxJ"):
        losses.example_loss(jnp.ones(3), jnp.int32(0), jnp.ones(1), jnp.array([True]))
    with pytest.raises(ValueError, match="valid_B"):
        losses.batch_loss(jnp.ones((2, 3, 1)), jnp.zeros(2, jnp.int32), jnp.ones((2, 1)),
                          jnp.ones((2, 1), bool), jnp.array([True]), jnp.ones(1))
