"""engine.export_serve: one serialized artifact for CPU and CUDA with a symbolic batch size,
equal after a serialize/deserialize round trip to the jitted serve pass."""

import jax
import numpy as np
import pytest
from flax import nnx

from puts_jax import engine
from puts_jax.config import QNetConfig, ScoringConfig
from puts_jax.qnet import QNetwork
from puts_jax.types import RequestBatch, ServeOutput

pytest.importorskip("flatbuffers")

D, A, K = 5, 8, 3


def _requests(B, N, seed, C=None):
    rng = np.random.default_rng(seed)
    preds = (rng.integers(0, 9, (B, N, K)) / 8).astype(np.float32)  # ties everywhere
    preds[::3, 2, 1] = np.nan
    ids = None if C is None else rng.integers(0, 4, (B, C)).astype(np.int32)
    return RequestBatch(rng.normal(size=(B, D)).astype(np.float32), preds,
                        rng.random((B, N)) < 0.7, np.ones(B, bool), ids)


@pytest.mark.parametrize("vocab", [(), (4, 6)])
def test_exported_serve_round_trip_equals_jitted_serve(vocab):
    model = QNetwork(QNetConfig(hidden=(16,), n_components=4, id_vocab_sizes=vocab), D, A,
                     ("binary", "real"), rngs=nnx.Rngs(0))
    W = (np.random.default_rng(1).integers(0, 5, (A, K)) / 4).astype(np.float32)
    cfg = ScoringConfig(top_k=6)
    exp = engine.export_serve(model, W, cfg, platforms=("cpu", "cuda"))
    assert exp.platforms == ("cpu", "cuda")
    blob = exp.serialize()
    back = jax.export.deserialize(blob)
    assert "b" in str(back.in_avals[1].shape[0])  # symbolic batch
    graphdef, params = nnx.split(model)
    serve = engine.build_serve(graphdef, W, cfg)
    C = len(vocab) or None
    for B, N in ((1, 6), (7, 20), (300, 33)):  # 300 rows: the jitted pass uses the extraction
        batch = _requests(B, N, seed=B, C=C)
        args = (np.array([0.3, 0.7], np.float32), batch.context, batch.preds, batch.mask)
        got = ServeOutput(*back.call(*args, *(() if C is None else (batch.context_ids,))))
        want = serve(params, args[0], batch)
        for f in ServeOutput._fields:
            np.testing.assert_array_equal(np.asarray(getattr(got, f)),
                                          np.asarray(getattr(want, f)), err_msg=f"{f} B={B}")
