import numpy as np
import jax.numpy as jnp
from flax import nnx

from puts_jax import model_io
from puts_jax.config import QNetConfig
from puts_jax.qnet import QNetwork


def test_save_load_bit_identical_and_replace(tmp_path):
    m = QNetwork(QNetConfig.tiny(), 8, 5, ("binary", "real"), rngs=nnx.Rngs(3))
    d = str(tmp_path / "model")
    h = model_io.save_model(d, m, extra={"step": 7})
    m2, info = model_io.load_model(d)
    assert info["params_hash"] == h and info["extra"] == {"step": 7}
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(m(x)), np.asarray(m2(x)))
    other = QNetwork(QNetConfig.tiny(), 8, 5, ("binary", "real"), rngs=nnx.Rngs(4))
    assert model_io.save_model(d, other) != h  # replaced atomically, new weights
    assert model_io.params_hash(model_io.load_model(d)[0]) == model_io.params_hash(other)
