import json
import os

import numpy as np
import pytest

import puts_jax
from puts_jax import pareto, report
from puts_jax.checks import InputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _est(value, half):
    value = np.asarray(value, np.float64)
    half = np.broadcast_to(np.asarray(half, np.float64), value.shape)
    return {"value": value, "lo": value - half, "hi": value + half}


def _points(half=0.01):
    # Five lambdas on J = 2 ("click", "save"), maximize both: a concave front plus one dominated.
    lam = np.array([[1.0, 0.0], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [0.0, 1.0]])
    v = np.array([[0.30, 0.10], [0.29, 0.15], [0.20, 0.12], [0.25, 0.18], [0.20, 0.20]])
    pts = {"names": [f"lambda={tuple(x)}" for x in lam.tolist()],
           "estimates": {"snips": _est(v, half), "ips": _est(v * 1.01, half * 2),
                         "exact": _est(v, half * 3)},
           "n": 1000, "matched": [120, 130, 0, 125, 110], "ess": [118.0, 125.0, 0.0, 20.0, 100.0]}
    return lam, pts


def _baselines():
    av = np.array([[0.28, 0.09], [0.22, 0.17], [0.15, 0.19]])
    one = lambda v, name: {"names": [name], "estimates": {"snips": _est([v], 0.01)},  # noqa: E731
                           "n": 1000, "matched": 1000, "ess": 1000.0}
    return {"logging": one([0.22, 0.15], "uniform"), "production": one([0.22, 0.17], "action 1"),
            "actions": {"names": ["action 0", "action 1", "action 2"],
                        "estimates": {"snips": _est(av, 0.01)},
                        "n": 1000, "matched": [333, 333, 334], "ess": [333.0, 333.0, 334.0]}}


def _prov(tmp_path):
    data = tmp_path / "log.parquet"
    data.write_bytes(b"not really parquet")
    return report.make_provenance([str(data)], rows=1000, checkpoint_step=200,
                                  action_set_hash="abc123", seed=0)


def test_frontier_roundtrip_every_key(tmp_path):
    lam, pts = _points()
    sel = pareto.select_operating_point(pts["estimates"]["snips"]["value"],
                                        pts["estimates"]["snips"]["lo"],
                                        pts["estimates"]["snips"]["hi"], maximize=0,
                                        guardrails=[(1, 0.0, 0.15)], names=pts["names"])
    doc = report.build_frontier(lam, pts, objective_names=("click", "save"),
                                provenance=_prov(tmp_path), baselines=_baselines(),
                                operating_point=sel)
    paths = report.write_frontier(str(tmp_path / "out"), doc)
    back = report.read_frontier(paths["json"])
    assert back == json.loads(json.dumps(doc))
    for k in report.REQUIRED_KEYS:
        assert k in back
    for k in report.PROVENANCE_KEYS:
        assert k in back["provenance"]
    prov = back["provenance"]
    assert prov["package_version"] == puts_jax.__version__
    assert prov["rows"] == 1000 and prov["checkpoint_step"] == 200 and prov["seed"] == 0
    assert list(prov["data_files"].values()) == [report.file_sha256(str(tmp_path / "log.parquet"))]
    assert back["primary_estimator"] == "snips"
    assert set(back["estimators"]) == {"snips", "ips", "exact"}
    assert np.asarray(back["estimators"]["ips"]["hi"]).shape == (5, 2)
    assert back["points"]["n"] == [1000] * 5 and back["points"]["matched"][2] == 0
    assert back["nondominated"] == [True, True, False, True, True]
    assert back["verdicts"][2] == "clearly dominated"
    # Hypervolume against the nadir of points and baselines: worst click 0.15, worst save 0.09.
    assert back["hypervolume"]["reference"] == pytest.approx([0.15, 0.09])
    want = pareto.hypervolume(np.array(pts["estimates"]["snips"]["value"]), [0.15, 0.09])
    assert back["hypervolume"]["value"] == pytest.approx(want)
    assert back["hypervolume"]["global_actions"] < back["hypervolume"]["value"]
    acts = back["baselines"]["actions"]
    assert acts["best"] == {"click": 0, "save": 2} and acts["is_best"] == [True, False, True]
    assert acts["runner_up"] == {"click": 1, "save": 1}
    assert acts["best_apart"]["click"] is True  # [0.27, 0.29] vs [0.21, 0.23]
    assert set(back["baselines"]) == {"logging", "production", "actions"}
    # Point 1 (0.29, 0.15) vs logging (0.22, 0.15): better click, overlapping save.
    assert back["points"]["vs_logging"][1] == ["better", "overlap"]
    # Selection: guardrail save lo >= 0.15 passes points 3 and 4; best click is point 3.
    assert back["operating_point"]["index"] == 3
    assert back["operating_point"]["lambda"] == [0.25, 0.75]
    assert any("no matched rows" in w for w in back["warnings"])
    assert any("effective sample size 20.0" in w for w in back["warnings"])
    with open(paths["png"], "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert os.path.getsize(paths["png"]) > 5000
    assert not [p for p in os.listdir(tmp_path / "out") if p.startswith(".tmp")]
    table = report.format_table(back)
    assert "lambda" in table and "click (snips, 95% CI)" in table and "clearly dominated" in table
    assert "logging: uniform" in table and "best global action (save): action 2" in table
    assert ("best global action on click (the highest snips estimate of click among the 3 "
            "single actions): action 0, 0.28 [0.27, 0.29]; runner-up action 1, 0.22 [0.21, "
            "0.23]: 95% intervals disjoint, ahead of the runner-up") in table.splitlines()
    starred = [ln for ln in table.splitlines() if ln.startswith("*")]
    assert len(starred) == 1 and "(0.25, 0.75)" in starred[0]  # the operating point
    assert "1,000  baseline" in table  # ESS as a rounded count, not 1e+03
    ref = back["hypervolume"]["reference"]
    assert f"(reference [{ref[0]:.4g}, {ref[1]:.4g}])" in table
    point = report.frontier_point(back, 3)
    assert point["lambda"] == [0.25, 0.75] and point["verdict"] == "nondominated"


def test_verdict_when_intervals_all_overlap(tmp_path):
    lam, pts = _points(half=0.5)
    doc = report.build_frontier(lam, pts, objective_names=("click", "save"),
                                provenance=_prov(tmp_path))
    assert doc["verdict"].startswith("the data cannot tell the frontier points apart")
    assert doc["verdicts"][2] == "not separable"
    assert doc["baselines"] == {} and doc["operating_point"] is None
    report.write_frontier(str(tmp_path), doc)  # no baselines, no operating point: still plots


def test_nan_estimates_become_null(tmp_path):
    lam, pts = _points()
    pts["estimates"]["exact"]["lo"][0, 1] = np.nan
    pts["estimates"]["snips"]["value"][4, 0] = np.nan
    doc = report.build_frontier(lam, pts, objective_names=("click", "save"),
                                provenance=_prov(tmp_path), baselines=_baselines())
    assert doc["estimators"]["exact"]["lo"][0][1] is None
    assert doc["verdicts"][4] == "not estimable" and doc["hypervolume"]["excluded_nonfinite"] == 1
    paths = report.write_frontier(str(tmp_path), doc)  # allow_nan=False would raise on NaN
    assert report.read_frontier(paths["json"])["verdicts"][4] == "not estimable"
    assert "n/a" in report.format_table(doc, estimator="exact")


def test_three_objectives_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.uniform(size=(6, 3))
    lam = np.full((6, 3), 1 / 3)
    pts = {"names": [str(i) for i in range(6)], "estimates": {"ips": _est(v, 0.01)},
           "n": 50, "matched": 10, "ess": 9.0}
    doc = report.build_frontier(lam, pts, objective_names=("a", "b", "c"),
                                provenance=_prov(tmp_path), reference=[0, 0, 0])
    assert doc["primary_estimator"] == "ips"
    assert doc["hypervolume"]["value"] == pytest.approx(pareto.hypervolume(v, [0, 0, 0]))
    report.write_frontier(str(tmp_path), doc, axes=(0, 2))
    with pytest.raises(InputError, match="objective_names"):
        report.build_frontier(lam, pts, objective_names=("a", "b"), provenance=_prov(tmp_path))
    with pytest.raises(InputError, match="lambdas"):
        report.build_frontier(lam[:2], pts, objective_names=("a", "b", "c"),
                              provenance=_prov(tmp_path))
    with pytest.raises(InputError, match="provenance"):
        report.build_frontier(lam, pts, objective_names=("a", "b", "c"), provenance={"rows": 1})
    bad = dict(pts, estimates={"ips": {"value": v, "lo": v}})
    with pytest.raises(InputError, match="points.estimates.ips.*missing 'hi'"):
        report.build_frontier(lam, bad, objective_names=("a", "b", "c"), provenance=_prov(tmp_path))
    with pytest.raises(InputError, match="frontier.*missing keys"):
        report.write_frontier(str(tmp_path), {"schema": report.SCHEMA})


def test_from_ope_estimates(tmp_path):
    from puts_jax import ope
    from puts_jax.types import EstimatorStats

    # Two deterministic policies, uniform logging over A = 4 (p = 0.25), n = 400 rows, binary
    # rewards; policy 1 has no matched rows (SNIPS undefined, exact interval [0, hi]).
    p = 0.25
    matched = np.array([100, 0])
    k = np.array([[30.0, 10.0], [0.0, 0.0]])
    stats = EstimatorStats(
        n=np.array([400, 400]), matched=matched, sum_w=matched / p, sum_w2=matched / p ** 2,
        sum_wr=k / p, sum_w2r=k / p ** 2, sum_w2r2=k / p ** 2, sum_match_r=k)
    est = ope.finalize(stats, reward_kinds=("binary", "binary"), constant_propensity=p)
    pe = report.from_ope(["a", "b"], est)
    assert set(pe.estimates) == {"ips", "snips", "exact"}  # no reward model: no DR
    np.testing.assert_allclose(pe.estimates["ips"]["value"], k / (400 * p))
    np.testing.assert_allclose(pe.estimates["exact"]["value"], k / (400 * p))
    assert pe.matched.tolist() == [100, 0] and np.isnan(pe.estimates["snips"]["value"][1]).all()
    assert pe.estimates["exact"]["lo"][1].tolist() == [0.0, 0.0]
    assert (pe.estimates["exact"]["hi"][1] > 0).all()
    doc = report.build_frontier(np.array([[1.0, 0.0], [0.0, 1.0]]), pe,
                                objective_names=("click", "save"), provenance=_prov(tmp_path))
    assert doc["verdicts"] == ["nondominated", "not estimable"]
    assert any("b: no matched rows" in w for w in doc["warnings"])
    doc = report.build_frontier(np.array([[1.0, 0.0], [0.0, 1.0]]), pe, primary="exact",
                                objective_names=("click", "save"), provenance=_prov(tmp_path))
    assert doc["verdicts"] == ["nondominated", "clearly dominated"]


def test_float32_lambdas_are_written_as_their_shortest_decimal(tmp_path):
    from puts_jax.scalarization import lambda_grid
    lam = lambda_grid(2, 5).astype(np.float32)
    lam[1:4] = [[0.9, 0.1], [0.7, 0.3], [1 / 3, 2 / 3]]
    _, pts = _points()
    doc = report.build_frontier(lam, pts, objective_names=("click", "save"),
                                provenance=_prov(tmp_path))
    text = report.dumps(doc)
    assert "0.8999999761581421" not in text and "0.3333333432674408" not in text
    assert doc["lambdas"][1:4] == [[0.9, 0.1], [0.7, 0.3], [0.33333334, 0.6666667]]
    back = np.asarray(json.loads(text)["lambdas"], np.float32)
    np.testing.assert_array_equal(back.view(np.uint32), lam.view(np.uint32))  # same float32 bits


def _actions_est(value, lo, hi):
    return {"value": np.array(value, np.float64), "lo": np.array(lo, np.float64),
            "hi": np.array(hi, np.float64)}


def test_best_global_actions_rank_by_direction_and_test_the_runner_up():
    from puts_jax.report_verdicts import best_global_actions

    nan = float("nan")
    # 4 actions, J = 3: "a" max (action 2 best, 0 runner-up, overlapping), "b" min (action 3
    # best, 1 runner-up, disjoint), "c" max with one finite action (no runner-up).
    est = _actions_est([[0.50, 0.30, nan], [0.40, 0.20, nan], [0.52, 0.40, 7.0], [nan, 0.10, nan]],
                       [[0.45, 0.28, nan], [0.35, 0.19, nan], [0.48, 0.38, 6.0], [nan, 0.05, nan]],
                       [[0.55, 0.32, nan], [0.45, 0.21, nan], [0.56, 0.42, 8.0], [nan, 0.15, nan]])
    out = best_global_actions(est, ["max", "min", "max"], ["a", "b", "c"])
    assert out["best"] == {"a": 2, "b": 3, "c": 2}
    assert out["runner_up"] == {"a": 0, "b": 1, "c": None}
    # a: [0.48, 0.56] and [0.45, 0.55] overlap; b: [0.05, 0.15] lies below [0.19, 0.21]
    assert out["best_apart"] == {"a": False, "b": True, "c": None}
    assert out["is_best"] == [False, False, True, True]


def test_best_global_actions_ties_go_to_the_lowest_index_and_missing_bounds_are_untested():
    from puts_jax.report_verdicts import best_global_actions

    nan = float("nan")
    est = _actions_est([[0.3], [0.5], [0.5]], [[0.2], [0.1], [nan]], [[0.4], [0.6], [0.6]])
    out = best_global_actions(est, ["max"], ["a"])
    assert out["best"] == {"a": 1} and out["runner_up"] == {"a": 2}  # as np.argmax breaks ties
    assert out["best_apart"] == {"a": None}  # the runner-up's lower bound is not available
    est = _actions_est([[0.3], [0.5]], [[0.2], [0.45]], [[0.4], [0.55]])
    assert best_global_actions(est, ["max"], ["a"])["best_apart"] == {"a": True}


def test_a_frontier_written_before_runner_ups_reads_the_same(tmp_path):
    lam, pts = _points()
    doc = json.loads(json.dumps(report.build_frontier(
        lam, pts, objective_names=("click", "save"), provenance=_prov(tmp_path),
        baselines=_baselines())))
    old = json.loads(json.dumps(doc))
    for k in ("runner_up", "best_apart"):
        del old["baselines"]["actions"][k]
    assert report.with_runner_ups(doc) is doc
    assert report.with_runner_ups(old)["baselines"]["actions"] == doc["baselines"]["actions"]
    assert "runner_up" not in old["baselines"]["actions"]  # the document itself is unchanged
    assert report.best_global_action_lines(old) == report.best_global_action_lines(doc)
    assert report.format_table(old) == report.format_table(doc)
    html = report.render_frontier(old)["html"].decode()
    assert ("best global action on click (highest snips estimate; 95% intervals disjoint from "
            "the runner-up&#x27;s (action 1))") in html
    assert report.render_frontier(old)["json"] == report.dumps(old).encode()  # written as read
