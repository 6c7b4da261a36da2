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


def test_a_data_file_that_cannot_be_read_is_a_value_error_naming_the_folder(tmp_path,
                                                                            monkeypatch):
    """orbax wraps a read error of a corrupt data file (seen: ZSTD_decompressStream() failed on
    the demo model's flipped bytes) in a bare Exception; restore_params names the folder and
    the reader's error as a ValueError, which the registry and the CLI report by name."""
    import orbax.checkpoint as ocp
    import pytest

    def net(seed):
        return QNetwork(QNetConfig.tiny(), 8, 5, ("binary", "real"), rngs=nnx.Rngs(seed))
    model_io.save_model(str(tmp_path / "m"), net(0))

    def corrupt(self, *a, **k):
        try:
            raise ValueError("FAILED_PRECONDITION: ZSTD_decompressStream() failed\nmore")
        except ValueError as cause:
            raise Exception("Encountered error while reading array index") from cause
    monkeypatch.setattr(ocp.StandardCheckpointer, "restore", corrupt)
    target = net(1)
    before = model_io.params_hash(target)
    path = str(tmp_path / "m" / "params")
    with pytest.raises(ValueError) as e:
        model_io.restore_params(path, target)
    assert str(e.value) == (f"{path}: the saved arrays cannot be read (ValueError: "
                            "FAILED_PRECONDITION: ZSTD_decompressStream() failed); nothing "
                            "restored")
    assert model_io.params_hash(target) == before
