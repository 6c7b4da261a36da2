"""``Scorer.score`` checks every field's shape against preds, the action set and the model before
anything is compiled: one InputError naming the field and the shape it expected, never a wrong
row or a raw TypeError from inside the trace."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from puts_jax import engine, reference
from puts_jax.checks import InputError
from puts_jax.config import QNetConfig, ScoringConfig
from puts_jax.qnet import QNetwork
from puts_jax.types import RequestBatch

D, A, K, B, N = 5, 8, 2, 6, 10
KINDS = ("binary", "real")  # J = 2
LAM = np.array([0.5, 0.5], np.float32)


@pytest.fixture(scope="module")
def scorer():
    model = QNetwork(QNetConfig.tiny(), D, A, KINDS, rngs=nnx.Rngs(0))
    W = (np.random.default_rng(9).integers(0, 5, (A, K)) / 4).astype(np.float32)
    return engine.Scorer(model, W, ScoringConfig(top_k=3, batch_buckets=(8,),
                                                 candidate_buckets=(16,)))


def _batch(**over):
    rng = np.random.default_rng(0)
    fields = dict(context=rng.normal(size=(B, D)).astype(np.float32),
                  preds=rng.random((B, N, K)).astype(np.float32),
                  mask=np.ones((B, N), bool), valid=np.ones(B, bool))
    fields.update(over)
    return RequestBatch(**fields)


@pytest.mark.parametrize("field, value, expected", [
    ("preds", np.zeros((B, N, K + 1), np.float32), f"expected f32[B, N, {K}]"),
    ("preds", np.zeros((B, N), np.float32), f"expected f32[B, N, {K}]"),
    ("mask", np.ones((B - 1, N), bool), f"expected [{B}, {N}]"),
    ("mask", np.ones((B, N + 1), bool), f"expected [{B}, {N}]"),
    ("valid", np.ones(B + 2, bool), f"expected [{B}]"),
    ("context", np.zeros((B + 1, D), np.float32), f"expected [{B}, ?]"),
    ("context", np.zeros((B, D + 3), np.float32), f"the model takes D = {D} columns"),
])
def test_a_field_of_the_wrong_shape_is_named(scorer, field, value, expected):
    with pytest.raises(InputError) as e:
        scorer(LAM, _batch(**{field: value}))
    assert e.value.field == field
    assert expected in str(e.value)


@pytest.mark.parametrize("lam", [np.array([1.0], np.float32),
                                 np.array([0.2, 0.3, 0.5], np.float32)])
def test_lambda_of_another_length_than_the_models_objectives_is_named(scorer, lam):
    with pytest.raises(InputError) as e:
        scorer(lam, _batch())
    assert e.value.field == "lambda"
    assert "expected f32[2]" in str(e.value)


def test_a_valid_batch_still_matches_the_reference_after_rejected_ones(scorer):
    for bad in (dict(mask=np.ones((B - 1, N), bool)), dict(context=np.zeros((B, 1), np.float32))):
        with pytest.raises(InputError):
            scorer(LAM, _batch(**bad))
    batch = _batch()
    got = scorer(LAM, batch)
    q = np.asarray(nnx.merge(scorer.graphdef, scorer.params)(batch.context))
    want = reference.serve(q, LAM, scorer.action_weights, batch.preds, batch.mask, 3)
    np.testing.assert_array_equal(got.action, want.action)
    np.testing.assert_array_equal(got.topk_index, want.topk_index)


def test_action_weights_of_another_action_count_than_the_model_are_named():
    model = QNetwork(QNetConfig.tiny(), D, A, KINDS, rngs=nnx.Rngs(0))
    with pytest.raises(InputError) as e:
        engine.Scorer(model, np.zeros((A + 1, K), np.float32), ScoringConfig(top_k=3))
    assert e.value.field == "action_weights" and f"A = {A}" in str(e.value)


def test_a_mask_that_is_not_boolean_names_its_rows(scorer):
    mask = np.ones((B, N), np.float32)
    mask[2, 3] = 0.5
    with pytest.raises(InputError) as e:
        scorer(LAM, _batch(mask=mask))
    assert e.value.field == "mask" and e.value.rows == [2]
    ok = scorer(LAM, _batch(mask=np.ones((B, N), np.int8)))  # 0/1 numbers are booleans
    np.testing.assert_array_equal(ok.action, scorer(LAM, _batch()).action)


def test_context_ids_are_checked_against_the_models_embeddings(scorer):
    with pytest.raises(InputError, match="embeds no categorical ids") as e:
        scorer(LAM, _batch(context_ids=np.zeros((B, 2), np.int32)))
    assert e.value.field == "context_ids"
    cfg = QNetConfig.tiny()
    with_ids = QNetwork(dataclasses.replace(cfg, id_vocab_sizes=(4, 3)), D, A, KINDS,
                        rngs=nnx.Rngs(0))
    s = engine.Scorer(with_ids, scorer.action_weights, ScoringConfig(top_k=3))
    for ids, msg in ((None, "none; expected i32[B, 2]"),
                     (np.zeros((B, 1), np.int32), "expected i32[B, 2]")):
        with pytest.raises(InputError, match=msg.replace("[", r"\[")):
            s(LAM, _batch(context_ids=ids))
    ids = np.zeros((B, 2), np.int32)
    ids[4, 1] = 3  # vocabulary 3: ids 0..2
    with pytest.raises(InputError, match="outside") as e:
        s(LAM, _batch(context_ids=ids))
    assert e.value.rows == [4]
    ids[4, 1] = 2
    assert s(LAM, _batch(context_ids=ids)).action.shape == (B,)


def test_a_non_finite_context_names_its_rows(scorer):
    context = np.random.default_rng(0).normal(size=(B, D)).astype(np.float32)
    context[1, 0], context[4, 2] = np.nan, np.inf
    with pytest.raises(InputError) as e:
        scorer(LAM, _batch(context=context))
    assert e.value.field == "context" and e.value.rows == [1, 4]
    assert "non-finite" in str(e.value)


def test_non_finite_action_weights_and_a_missing_batch_are_named(scorer):
    """An all-NaN W row made every request given that action return no candidates, silently;
    scorer(lam, None) raised a bare AttributeError."""
    model = QNetwork(QNetConfig.tiny(), D, A, KINDS, rngs=nnx.Rngs(0))
    W = np.array(scorer.action_weights)
    W[3] = np.nan
    with pytest.raises(InputError) as e:
        engine.Scorer(model, W, ScoringConfig(top_k=3))
    assert e.value.field == "action_weights" and "at rows [3]" in str(e.value)
    with pytest.raises(InputError, match="expected a RequestBatch .* got NoneType"):
        scorer.score(LAM, None)


def test_a_bad_lambda_is_named_by_its_values_not_a_row(scorer):
    """One lambda f32[J] is not a table: a NaN or a sum other than 1 names the values (the
    message said 'at rows [0]')."""
    with pytest.raises(InputError) as e:
        scorer.score(np.array([np.nan, 0.5], np.float32), _batch())
    assert str(e.value) == ("lambda: must be non-negative, finite and sum to 1 (tol 1e-05), "
                            "got [nan, 0.5]")
