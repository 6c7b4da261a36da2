"""Review 6 of the Python scoring API as a batch-scoring user meets it (``puts_jax.Scorer``,
``build_serve``, ``kernels.rerank``): inputs of other dtypes and layouts give the numpy
reference's rows or an InputError naming the field (and the rows), never a silently wrong id, a
raw numpy/JAX error or a swapped-in model of another shape; lambda changes and batch sizes within
a bucket compile nothing (counted at XLA's compile step, not only at tracing)."""

import jax
import numpy as np
import pytest
from flax import nnx

import puts_jax
from puts_jax import engine, kernels, reference
from puts_jax.checks import InputError
from puts_jax.config import QNetConfig, ScoringConfig
from puts_jax.qnet import QNetwork
from puts_jax.types import RequestBatch

D, A, K = 5, 8, 2
KINDS = ("binary", "real")
LAM = np.array([0.3, 0.7], np.float32)
CFG = ScoringConfig(top_k=4, batch_buckets=(8, 32), candidate_buckets=(16, 64))


@pytest.fixture(scope="module")
def model():
    return QNetwork(QNetConfig.tiny(), D, A, KINDS, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def scorer(model):
    return puts_jax.Scorer(model, _weights(), CFG)


def _weights():
    return (np.random.default_rng(9).integers(0, 5, (A, K)) / 4).astype(np.float32)


def _requests(B, N, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    preds = rng.integers(0, 9, (B, N, K)) / 8  # exact arithmetic, many ties
    if N > 2:
        preds[::3, 2, 0] = np.nan
    return RequestBatch(rng.normal(size=(B, D)).astype(dtype), preds.astype(dtype),
                        rng.random((B, N)) < 0.7, None)


def _q(model, context):
    """Q f32[B, A, J] of the eager model, on rows padded to 128 (one shape: eager JAX compiles
    each op once per shape; Q of a row does not depend on the others)."""
    context = np.asarray(context, np.float32)
    pad = np.zeros((-len(context) % 128 or (128 if not len(context) else 0), D), np.float32)
    return np.asarray(model(np.concatenate([context, pad])))[:len(context)]


def _want(model, batch, lam=LAM, k=4):
    q = _q(model, batch.context)
    return reference.serve(q, lam, _weights(), np.asarray(batch.preds, np.float32),
                           np.asarray(batch.mask, bool), k)


def _assert_rows(got, want):
    k = got.topk_index.shape[1]
    np.testing.assert_array_equal(got.action, want.action)
    np.testing.assert_array_equal(got.topk_index, want.topk_index[:, :k])
    np.testing.assert_allclose(got.topk_score, want.topk_score[:, :k], rtol=1e-6)
    np.testing.assert_array_equal(got.n_nonfinite, want.n_nonfinite)
    np.testing.assert_array_equal(got.q_fallback, want.q_fallback)


@pytest.mark.parametrize("B, N", [(0, 5), (5, 0), (3, 1), (7, 3), (40, 20)])
def test_float64_int_and_strided_inputs_give_the_reference_rows(model, scorer, B, N):
    """float64 context/preds, an int 0/1 mask, a list lambda, Fortran-ordered and strided
    arrays, B = 0, N = 0 and N = 1 (top_k 4 > N: -1 / -inf past the real candidates)."""
    batch = _requests(B, N, seed=B + N)
    _assert_rows(scorer([0.3, 0.7], batch), _want(model, batch))
    strided = RequestBatch(np.asfortranarray(batch.context), np.repeat(batch.preds, 2, 1)[:, ::2],
                           batch.mask.astype(np.int64), np.ones(B, np.int8))
    _assert_rows(scorer(LAM.astype(np.float64), strided), _want(model, batch))


def test_chunked_scoring_equals_one_call_ties_to_the_lowest_index(model, scorer):
    """A batch beyond the largest bucket (split in 32-row pieces) equals the pieces scored one by
    one and the reference; equal candidates rank by position."""
    batch = _requests(75, 30, seed=3)
    whole = scorer(LAM, batch)
    _assert_rows(whole, _want(model, batch))
    parts = [scorer(LAM, RequestBatch(batch.context[i:i + 11], batch.preds[i:i + 11],
                                      batch.mask[i:i + 11], None)) for i in range(0, 75, 11)]
    for f, got in zip(whole._fields, whole):
        np.testing.assert_array_equal(got, np.concatenate([getattr(p, f) for p in parts]))
    tie = RequestBatch(np.zeros((2, D)), np.ones((2, 9, K)), np.arange(9)[None].repeat(2, 0) != 4,
                       None)
    np.testing.assert_array_equal(scorer(LAM, tie).topk_index, [[0, 1, 2, 3]] * 2)


def _model_with_ids():
    return QNetwork(QNetConfig(hidden=(16,), n_components=4, id_vocab_sizes=(10,)), D, A, KINDS,
                    rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def ids_scorer():
    return puts_jax.Scorer(_model_with_ids(), _weights(), CFG)


@pytest.mark.parametrize("ids, rows, text", [
    (np.array([[3], [2**32 + 3]], np.int64), [1], "int32"),  # wrapped to 3 before
    (np.array([[2**63 + 3], [3]], np.uint64), [0], "int32"),  # wrapped to 3 before
    (np.array([[3.0], [3.7]]), [1], "whole number"),  # truncated to 3 before
    (np.array([[np.nan], [3.0]]), [0], "whole number"),
])
def test_context_ids_are_never_wrapped_or_truncated(ids_scorer, ids, rows, text):
    """An id the model's int32 embedding lookup cannot hold (int64 beyond 2**31, a fraction)
    scored silently as another id; now it is named by its row."""
    with pytest.raises(InputError, match=text) as e:
        ids_scorer(LAM, _requests(2, 4)._replace(context_ids=ids))
    assert e.value.field == "context_ids" and e.value.rows == rows


def test_whole_number_float_ids_are_ids(ids_scorer):
    batch = _requests(2, 4)
    whole = ids_scorer(LAM, batch._replace(context_ids=np.array([[3.0], [7.0]])))
    ints = ids_scorer(LAM, batch._replace(context_ids=np.array([[3], [7]], np.int64)))
    np.testing.assert_array_equal(whole.action, ints.action)


@pytest.mark.parametrize("field, value", [
    ("preds", np.full((2, 4, K), "x")),  # raised a TypeError dumping the model's graphdef
    ("preds", [[[0.1, 0.2]], [[0.1, 0.2], [0.3, 0.4]]]),  # ragged: a raw numpy ValueError
    ("context", np.full((2, D), "x")),
    ("mask", None),
    ("lambda", ["a", "b"]),
])
def test_a_field_that_is_not_numbers_is_named(scorer, field, value):
    batch = _requests(2, 4)
    lam = LAM
    if field == "lambda":
        lam = value
    else:
        batch = batch._replace(**{field: value})
    with pytest.raises(InputError) as e:
        scorer(lam, batch)
    assert e.value.field == field and "\n" not in str(e.value)


def test_set_params_of_another_shape_is_refused(model):
    """Parameters of a model with another A served silently on the XLA tail (actions indexed
    into the wrong W); another J or D raised raw JAX errors at the next call."""
    scorers = [puts_jax.Scorer(model, _weights(), CFG, params_as_constants=c) for c in (0, 1)]
    for n_actions, kinds, dim in ((A + 2, KINDS, D), (A - 2, KINDS, D),
                                  (A, KINDS + ("real",), D), (A, KINDS, D + 1)):
        new = nnx.eval_shape(lambda: QNetwork(QNetConfig.tiny(), dim, n_actions, kinds,
                                              rngs=nnx.Rngs(1)))  # shapes only: no init work
        for s in scorers:
            params = s.params
            with pytest.raises(InputError, match="same shapes") as e:
                s.set_params(nnx.split(new)[1])
            assert e.value.field == "params" and s.params is params  # the old ones stay
    assert "['values'].value is float32[4, 10, 2], the Scorer's is float32[4, 8, 2]" in str(
        pytest.raises(InputError, scorers[0].set_params, nnx.split(nnx.eval_shape(
            lambda: QNetwork(QNetConfig.tiny(), D, A + 2, KINDS, rngs=nnx.Rngs(1))))[1]).value)


def test_a_bad_lambda_shows_its_float32_values_as_given():
    with pytest.raises(InputError) as e:
        puts_jax.Scorer(QNetwork(QNetConfig.tiny(), D, A, KINDS, rngs=nnx.Rngs(0)), _weights(),
                        CFG)([0.3, 0.8], _requests(2, 4))
    assert str(e.value).endswith("got [0.3, 0.8]")  # was [0.30000001192092896, 0.800000011920929]


def test_extract_top_k_of_no_rows():
    idx, val, bad = kernels.rerank(np.zeros((0, 5, K), np.float32), np.zeros((0, K), np.float32),
                                   np.zeros((0, 5), bool), 3, method="extract")
    assert idx.shape == val.shape == (0, 3) and bad.shape == (0,)


def test_lambda_and_batch_sizes_within_a_bucket_compile_nothing(model):
    """PITFALLS P3 counted where XLA compiles (jax.monitoring), not only at tracing: new lambdas
    (lists, float64, float32) and batch sizes within a bucket reuse the compiled pass."""
    compiles = []

    def listen(name, secs, **kw):
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(secs)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for constants in (False, True):
            s = puts_jax.Scorer(model, _weights(), CFG, params_as_constants=constants)
            warm, warm_traces = len(compiles), engine.TRACE_COUNTS["serve"]
            s(LAM, _requests(5, 10))
            s(LAM, _requests(20, 10))  # buckets 8 and 32
            # the counters see these first compiles (else the checks below would be vacuous)
            assert len(compiles) >= warm + 2 and engine.TRACE_COUNTS["serve"] == warm_traces + 2
            lams = [[a, 1 - a] for a in np.linspace(0, 1, 4)]
            lams = [(lam, np.array(lam), np.array(lam, np.float32))[i % 3]
                    for i, lam in enumerate(lams)]
            sizes = (1, 7, 30, 17)
            before, traces = len(compiles), engine.TRACE_COUNTS["serve"]
            got = [s(lam, _requests(b, 10, seed=i)) for i, (b, lam) in enumerate(zip(sizes, lams))]
            assert len(compiles) == before and engine.TRACE_COUNTS["serve"] == traces
            for i, (b, lam, out) in enumerate(zip(sizes, lams, got)):
                _assert_rows(out, _want(model, _requests(b, 10, seed=i),
                                        np.asarray(lam, np.float32)))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def test_the_serve_builders_document_what_they_raise():
    for fn in (puts_jax.build_serve, puts_jax.compile_latency_serve, puts_jax.export_serve,
               puts_jax.build_sweep, engine.build_fixed, engine.build_fixed_rows):
        assert "Raises" in fn.__doc__, fn.__name__
    assert "Raises" in puts_jax.Scorer.__init__.__doc__
    assert "Raises" in puts_jax.Scorer.set_params.__doc__
