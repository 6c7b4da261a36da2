import moocore
import numpy as np
import pytest

from puts_jax import pareto
from puts_jax.checks import InputError

P8 = np.array([[1, 0.5], [1, 0.4], [1, 0.3], [2, 0.45], [2, 0.2], [3, 0.1]])


def _front(points, flags):
    return {tuple(p) for p in np.asarray(points)[flags].tolist()}


def test_p8_mixed_directions():
    assert _front(P8, pareto.nondominated(P8, ("min", "min"))) == {(1, 0.3), (2, 0.2), (3, 0.1)}
    assert _front(P8, pareto.nondominated(P8, ("min", "max"))) == {(1, 0.5)}
    # Same front after flipping signs and directions (the whole kind of fault, not one case).
    np.testing.assert_array_equal(pareto.nondominated(-P8, ("max", "max")),
                                  pareto.nondominated(P8, ("min", "min")))


def test_nondominated_duplicates_and_nonfinite():
    pts = np.array([[1.0, 2.0], [1.0, 2.0], [0.5, 0.5], [np.nan, 9.0], [np.inf, np.inf]])
    assert pareto.nondominated(pts).tolist() == [True, True, False, False, False]
    assert pareto.nondominated(np.zeros((0, 2))).shape == (0,)


def test_directions_validated():
    with pytest.raises(InputError, match="directions"):
        pareto.nondominated(P8, ("min",))
    with pytest.raises(InputError, match="directions"):
        pareto.nondominated(P8, ("min", "up"))


@pytest.mark.parametrize("points, ref, want", [
    ([[-0.5, -0.2, -0.1], [-0.1, -0.6, -0.3]], [0, 0, 0], 0.026),  # (a) 3-D, negatives
    ([[1, 2], [1, 2], [2, 1]], [3, 3], 3.0),  # (b) duplicates
    ([[3, 1], [1, 2]], [3, 3], 2.0),  # (c) on the boundary
    ([[4, 1], [1, 2]], [3, 3], 2.0),  # (d) behind the reference
    (np.zeros((0, 2)), [3, 3], 0.0),  # (e) empty
    ([[1, 1]], [3, 3], 4.0),  # (f) single point
    ([[4, 4], [5, 3]], [3, 3], 0.0),  # all behind: zero, never negative
    ([[1.0]], [3.0], 2.0),  # J = 1
])
def test_p9_hypervolume(points, ref, want):
    got = pareto.hypervolume(points, ref, directions="min")
    assert got == pytest.approx(want, abs=1e-12)
    assert got >= 0


def test_hypervolume_max_direction_matches_min_form():
    pts = np.array([[0.2, 0.9], [0.5, 0.5], [0.8, 0.1]])
    want = pareto.hypervolume(-pts, [0, 0], "min")
    assert pareto.hypervolume(pts, [0, 0]) == pytest.approx(want)
    assert want == pytest.approx(0.2 * 0.9 + 0.3 * 0.5 + 0.3 * 0.1)


def test_hypervolume_errors():
    with pytest.raises(InputError, match="reference"):
        pareto.hypervolume([[1, 2]], [3, 3, 3])
    with pytest.raises(InputError, match="points.*rows \\[1\\]"):
        pareto.hypervolume([[1, 2], [np.nan, 1]], [3, 3], "min")


def test_hypervolume_2d_matches_moocore():
    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(1, 40))
        pts = rng.normal(size=(n, 2))
        if trial % 3 == 0:  # ties and duplicates on a coarse grid
            pts = np.round(pts, 1)
        ref = rng.normal(size=2) + 1.0
        dirs = [("min", "min"), ("max", "min"), ("min", "max"), ("max", "max")][trial % 4]
        ours = pareto.hypervolume(pts, ref, dirs)
        theirs = moocore.hypervolume(pts, ref=ref, maximise=[d == "max" for d in dirs])
        assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-12)


def test_separability_hand_cases():
    # Maximize both. Point 0 and 1 are nondominated; 2 is dominated by 0 with disjoint intervals;
    # 3 is dominated by 0 by point estimate but its intervals overlap 0's on objective 1.
    value = np.array([[1.0, 1.0], [0.0, 2.0], [0.5, 0.5], [0.9, 0.9], [np.nan, 0.0]])
    lo = value - np.array([[0.1, 0.1], [0.1, 0.1], [0.1, 0.1], [0.1, 0.3], [0, 0]])
    hi = value + 0.1
    got = pareto.separability(value, lo, hi)
    assert got == ["nondominated", "nondominated", "clearly dominated", "not separable",
                   "not estimable"]
    # Touching intervals (lo_q == hi_p = 0.5) on one objective, disjoint on the other: clear.
    v2 = np.array([[1.0, 1.0], [0.25, 0.2]])
    l2 = np.array([[0.5, 0.9], [0.0, 0.1]])
    h2 = np.array([[1.5, 1.1], [0.5, 0.3]])
    assert pareto.separability(v2, l2, h2) == ["nondominated", "clearly dominated"]
    # Minimized objectives use the mirrored ends.
    assert pareto.separability(-v2, -h2, -l2, ("min", "min")) == ["nondominated",
                                                                  "clearly dominated"]
    with pytest.raises(InputError, match="lo/hi"):
        pareto.separability(v2, l2[:1], h2)


def test_separable_pairs():
    lo = np.array([[0.0, 0.0], [0.5, 0.0], [2.0, 0.0]])
    hi = lo + 1.0
    got = pareto.separable_pairs(lo, hi)
    assert got.tolist() == [[False, False, True], [False, False, True], [True, True, False]]


def test_select_operating_point_with_guardrails():
    # Objective 0 to maximize; objective 1 guarded at no more than a 5% drop from baseline 1.0
    # at the lower bound.
    values = np.array([[0.30, 0.90], [0.25, 1.00], [0.20, 1.10], [0.10, 1.20]])
    lo = values - np.array([0.02, 0.02])
    hi = values + 0.02
    sel = pareto.select_operating_point(values, lo, hi, maximize=0, guardrails=[(1, -0.05, 1.0)])
    # Point 0: lo 0.88 < 0.95 fails; point 1: lo 0.98 >= 0.95 passes and has the highest obj 0.
    assert sel.index == 1
    assert "2 of 4" not in sel.reason and "3 of 4 points" in sel.reason
    # Tighter guardrail: at least +10% at the lower bound: only point 3 (1.18 >= 1.1) passes.
    idx, reason = pareto.select_operating_point(values, lo, hi, 0, [(1, 0.10, 1.0)])
    assert idx == 3
    # Nothing passes.
    idx, reason = pareto.select_operating_point(values, lo, hi, 0, [(1, 0.5, 1.0)])
    assert idx is None and "no point passes" in reason and "objective 1 rejects 4" in reason
    # No guardrails: plain argmax; a tie goes to the nondominated point.
    v = np.array([[0.3, 0.1], [0.3, 0.2]])
    assert pareto.select_operating_point(v, v, v, 0).index == 1
    # A minimized guardrail objective uses the upper bound.
    vm = np.concatenate([values[:, :1], -values[:, 1:]], 1)
    lom = np.concatenate([lo[:, :1], -hi[:, 1:]], 1)
    him = np.concatenate([hi[:, :1], -lo[:, 1:]], 1)
    sel = pareto.select_operating_point(vm, lom, him, 0, [(1, -0.05, -1.0)], ("max", "min"))
    assert sel.index == 1
    with pytest.raises(InputError, match="maximize"):
        pareto.select_operating_point(values, lo, hi, 2)


def test_pairs_separable_on_one_or_on_every_objective():
    # p0 and p1 apart on objective 0 only; p0 and p2 apart on both; p1 and p2 on objective 1 only
    lo = np.array([[0.0, 0.0], [1.0, 0.05], [1.0, 1.0]])
    hi = np.array([[0.5, 0.1], [1.5, 0.2], [1.5, 1.5]])
    one = pareto.separable_pairs(lo, hi)
    every = pareto.separable_pairs(lo, hi, every=True)
    assert one[0, 1] and one[0, 2] and one[1, 2] and not one[0, 0]
    assert every[0, 2] and every[2, 0] and not every[0, 1] and not every[1, 2]
