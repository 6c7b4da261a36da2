"""QNetwork: shapes, the mixture formula, action features, spec round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from puts_jax.config import QNetConfig
from puts_jax.qnet import QNetwork

KINDS = ("binary", "count")


def _copy_params(src, dst):
    nnx.update(dst, nnx.state(src, nnx.Param))


def _q(model, x, ids=None):
    """Jitted forward (eager op-by-op dispatch compiles every primitive: seconds a call)."""
    gd, params = nnx.split(model)
    return jax.jit(lambda p, x, ids: nnx.merge(gd, p)(x, ids))(params, x, ids)


@pytest.mark.parametrize("head", ["mixture", "per_action"])
def test_shapes_and_binary_objectives_are_probabilities(head):
    m = QNetwork(QNetConfig(hidden=(8, 8), head=head, n_components=3), 5, 7, KINDS,
                 rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (11, 5)) * 3
    q = _q(m, x)
    assert q.shape == (11, 7, 2) and q.dtype == jnp.float32
    assert bool(jnp.all((q[..., 0] > 0) & (q[..., 0] < 1)))


def test_mixture_equals_its_formula():
    m = QNetwork(QNetConfig(hidden=(8,), n_components=3), 4, 6, KINDS, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    h = np.maximum(x @ np.asarray(m.tower[0].kernel[...]) + np.asarray(m.tower[0].bias[...]), 0)
    logits = h @ np.asarray(m.mix.kernel[...]) + np.asarray(m.mix.bias[...])
    pi = np.exp(logits - logits.max(1, keepdims=True))
    pi /= pi.sum(1, keepdims=True)
    v = np.asarray(m.values[...], np.float64)
    v = np.stack([1 / (1 + np.exp(-v[..., 0])), v[..., 1]], -1)  # sigmoid for binary only
    np.testing.assert_allclose(_q(m, x), np.einsum("br,raj->baj", pi, v), rtol=2e-5, atol=1e-6)


def test_initial_latent_types_differ():
    m = QNetwork(QNetConfig(hidden=(8,), n_components=4), 4, 6, KINDS, rngs=nnx.Rngs(0))
    v = np.asarray(m.type_values())
    assert v.shape == (4, 6, 2)
    assert np.abs(v - v[:1]).max() > 0.05  # symmetry broken between types


def test_action_features_share_a_value_network_and_round_trip_through_spec():
    W = np.random.default_rng(0).dirichlet(np.ones(3), size=9)
    cfg = QNetConfig(hidden=(8,), n_components=3)
    m = QNetwork(cfg, 4, 9, KINDS, rngs=nnx.Rngs(0), action_features=W)
    assert not hasattr(m, "values")
    x = jnp.ones((2, 4))
    spec = m.spec()
    assert np.allclose(spec["action_features"], W)
    m2 = QNetwork.from_spec(spec, seed=5)
    _copy_params(m, m2)
    np.testing.assert_array_equal(_q(m, x), _q(m2, x))
    with pytest.raises(ValueError, match="action_features: 9 rows for n_actions = 8"):
        QNetwork(cfg, 4, 8, KINDS, rngs=nnx.Rngs(0), action_features=W)


def test_spec_round_trip_without_features():
    m = QNetwork(QNetConfig.tiny(), 3, 4, ("binary",), rngs=nnx.Rngs(0))
    m2 = QNetwork.from_spec(m.spec(), seed=1)
    assert "action_features" not in m.spec()
    _copy_params(m, m2)
    x = jnp.ones((2, 3))
    np.testing.assert_array_equal(_q(m, x), _q(m2, x))


def test_context_ids_are_required_when_embedded():
    m = QNetwork(QNetConfig(hidden=(4,), id_vocab_sizes=(5,)), 3, 2, ("binary",),
                 rngs=nnx.Rngs(0))
    assert _q(m, jnp.ones((2, 3)), jnp.array([[1], [4]])).shape == (2, 2, 1)
    with pytest.raises(ValueError, match="context_ids"):
        m(jnp.ones((2, 3)))


def test_jit_equals_eager_with_split_params():
    m = QNetwork(QNetConfig.tiny(), 3, 4, KINDS, rngs=nnx.Rngs(0))
    gd, params = nnx.split(m)
    x = jax.random.normal(jax.random.key(0), (6, 3))
    got = jax.jit(lambda p, x: nnx.merge(gd, p)(x))(params, x)
    np.testing.assert_allclose(got, m(x), rtol=1e-6)  # the one eager call


def test_row_blocks_equals_one_call_row_for_row():
    """serving.row_blocks: blocks of `rows` through lax.map, the rest as one more call; None
    inputs pass through; fewer than two blocks (or a symbolic B) is one call."""
    from puts_jax.serving import row_blocks

    x = jnp.arange(11 * 3, dtype=jnp.float32).reshape(11, 3)
    ids = jnp.arange(11, dtype=jnp.int32)[:, None]
    calls = []

    def fn(a, i):
        calls.append(a.shape[0])
        return a * 2.0 + (0.0 if i is None else i.astype(jnp.float32))

    np.testing.assert_array_equal(jax.jit(lambda a, i: row_blocks(fn, a, i, rows=4))(x, ids),
                                  np.asarray(x) * 2.0 + np.asarray(ids))
    assert calls == [4, 3]  # one traced block body (map over 2 blocks), one rest of 3 rows
    calls.clear()
    np.testing.assert_array_equal(row_blocks(fn, x, None, rows=6), np.asarray(x) * 2.0)
    assert calls == [11]  # 11 < 2 * 6: one call


@pytest.mark.parametrize("B", [600, 1024])
def test_q_values_are_the_model_on_blocks_of_q_block_rows(B):
    """q_values computes Q on blocks of Q_BLOCK_ROWS rows: every block equals the model applied
    to those rows alone, bit for bit (what serve and sweep both evaluate), and all of it is
    within f32 rounding of one unblocked call."""
    from puts_jax.serving import Q_BLOCK_ROWS, q_values

    m = QNetwork(QNetConfig(hidden=(32, 32), n_components=4), 8, 16, KINDS, rngs=nnx.Rngs(0))
    gd, params = nnx.split(m)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(B, 8)).astype(np.float32))
    q = np.asarray(jax.jit(lambda p, c: q_values(gd, p, c))(params, x))
    full = np.asarray(_q(m, x))
    np.testing.assert_allclose(q, full, rtol=1e-5, atol=1e-6)
    R = Q_BLOCK_ROWS
    for start in range(0, B, R):
        blk = x[start:start + R]
        np.testing.assert_array_equal(q[start:start + blk.shape[0]], np.asarray(_q(m, blk)))


def test_q_block_rows_defaults_to_blocks_on_cpu_and_checks_its_value():
    """None: Q_BLOCK_ROWS on the CPU backend (these tests), one call on accelerators; 0 is one
    call; a negative count is refused by name, before anything is traced."""
    from puts_jax import serving
    from puts_jax.config import ScoringConfig

    assert jax.default_backend() == "cpu"
    assert serving.q_block_rows() == serving.Q_BLOCK_ROWS and serving.q_block_rows(0) == 0
    x = jnp.ones((8, 2), jnp.float32)
    calls = []
    serving.row_blocks(lambda a: calls.append(a.shape[0]) or a, x, rows=0)
    assert calls == [8]
    with pytest.raises(ValueError, match="q_block_rows: must be >= 0"):
        serving.build_serve(None, np.eye(2, dtype=np.float32), ScoringConfig(top_k=1),
                            q_block_rows=-1)
