"""Pareto fronts of off-policy estimates: nondominated filter, hypervolume, separability of points
under their confidence intervals, and operating-point selection with guardrails.

Pure host-side array code (numpy; jax arrays are accepted and converted), no I/O. Points are
``f[P, J]``: P policies (e.g. one per lambda), J objectives. Every function takes ``directions``,
one of "max" / "min" per objective (default: all "max", since rewards are maximized); internally
points are mapped to the minimization form by negating the "max" objectives (PITFALLS P8).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from puts_jax.checks import InputError, raise_if

NONDOMINATED = "nondominated"
CLEARLY_DOMINATED = "clearly dominated"
NOT_SEPARABLE = "not separable"
NOT_ESTIMABLE = "not estimable"  # a non-finite value or interval: the data cannot place the point


def _as_points(points, field: str = "points") -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim == 1 and p.size == 0:
        p = p.reshape(0, 0)
    if p.ndim != 2:
        raise InputError(field, [], f"expected f[P, J], got shape {p.shape}")
    return p


def direction_signs(directions: Sequence[str] | None, J: int) -> np.ndarray:
    """+1 for "min", -1 for "max" objectives: ``points * signs`` is the minimization form."""
    if directions is None:
        return -np.ones(J)
    if isinstance(directions, str):
        directions = (directions,) * J
    d = tuple(directions)
    if len(d) != J:
        raise InputError("directions", [], f"{len(d)} direction{'s' if len(d) != 1 else ''} "
                                           f"for J = {J} objectives")
    bad = [x for x in d if x not in ("max", "min")]
    if bad:
        raise InputError("directions", [], f"each must be 'max' or 'min', got {bad}")
    return np.asarray([1.0 if x == "min" else -1.0 for x in d])


def to_min_form(points, directions: Sequence[str] | None = None) -> np.ndarray:
    """Points ``f[P, J]`` in minimization form (the "max" objectives negated)."""
    p = _as_points(points)
    return p * direction_signs(directions, p.shape[1])


def _dominates_matrix(m: np.ndarray) -> np.ndarray:
    """``out[q, p]`` True when point q dominates point p (minimization form, finite rows):
    q <= p on every objective and q < p on at least one. Duplicates never dominate each other."""
    le = (m[:, None, :] <= m[None, :, :]).all(-1)
    lt = (m[:, None, :] < m[None, :, :]).any(-1)
    return le & lt


def nondominated(points, directions: Sequence[str] | None = None) -> np.ndarray:
    """Nondominated flags ``bool[P]`` of points ``f[P, J]``.

    A point is nondominated when no other point is at least as good on every objective and
    strictly better on one; duplicated points are all nondominated. Rows with a non-finite value
    are never nondominated and never dominate others.
    Example (PITFALLS P8), x minimized: points (1, .5), (1, .4), (1, .3), (2, .45), (2, .2),
    (3, .1) give the front {(1, .3), (2, .2), (3, .1)} with y minimized, {(1, .5)} with y maximized.
    """
    m = to_min_form(points, directions)
    finite = np.isfinite(m).all(1)
    out = np.zeros(m.shape[0], bool)
    mf = m[finite]
    out[finite] = ~_dominates_matrix(mf).any(0)
    return out


def _hv2d(m: np.ndarray, ref: np.ndarray) -> float:
    """Exact 2-D hypervolume (minimization form) of points strictly inside the reference box:
    sweep by the first objective, adding one slab per improvement of the second."""
    order = np.lexsort((m[:, 1], m[:, 0]))
    total, best_y = 0.0, ref[1]
    for x, y in m[order]:
        if y < best_y:
            total += (ref[0] - x) * (best_y - y)
            best_y = y
    return float(total)


def hypervolume(points, reference, directions: Sequence[str] | None = None) -> float:
    """Hypervolume of ``points: f[P, J]`` with respect to ``reference: f[J]``: the measure of the
    region dominated by the points and dominating the reference (Zitzler and Thiele 1999).

    Exact; J <= 2 by our own sweep, J >= 3 through ``moocore.hypervolume``. Points on or behind
    the reference on any objective contribute nothing (never a negative volume); duplicates count
    once; an empty set gives 0 (PITFALLS P9). Raises InputError for non-finite points or reference
    and for a reference of the wrong length.
    """
    p = _as_points(points)
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    J = ref.shape[0] if p.shape[0] == 0 else p.shape[1]
    if p.shape[0] and ref.shape[0] != J:
        raise InputError("reference", [], f"length {ref.shape[0]} for J = {J} objectives")
    if not np.isfinite(ref).all():
        raise InputError("reference", [], "non-finite reference point")
    if p.shape[0] == 0:
        return 0.0
    raise_if(~np.isfinite(p), "points", "non-finite point (drop or report it before hypervolume)")
    s = direction_signs(directions, J)
    m, r = p * s, ref * s
    m = m[(m < r).all(1)]  # on/behind the reference: zero contribution
    if m.shape[0] == 0:
        return 0.0
    if J == 1:
        return float(r[0] - m[:, 0].min())
    if J == 2:
        return _hv2d(m, r)
    import moocore  # exact HV3D+/HV4D+/recursive algorithms; only needed for J >= 3
    return float(moocore.hypervolume(m, ref=r))


def _check_intervals(value, lo, hi) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v, l, h = (_as_points(x, f) for x, f in ((value, "value"), (lo, "lo"), (hi, "hi")))
    if not v.shape == l.shape == h.shape:
        raise InputError("lo/hi", [], f"shapes {l.shape}, {h.shape} differ from value {v.shape}")
    return v, l, h


def separability(value, lo, hi, directions: Sequence[str] | None = None) -> list[str]:
    """Per-point verdict (``list[str]`` of length P) under 95% (or any) intervals ``[lo, hi]``.

    "nondominated":      no other point dominates it by point estimate.
    "clearly dominated": another point q is, with non-overlapping intervals, at least as good on
                         every objective and better on one: in maximization form lo_q >= hi_p on
                         every objective, lo_q > hi_p on one. Marginal intervals can only show
                         q_j >= p_j by being disjoint, so weaker evidence is not enough.
    "not separable":     dominated by point estimate, but every dominating point's intervals
                         overlap this point's on some objective: the data cannot rank them.
    "not estimable":     a non-finite value or interval bound.
    """
    v, l, h = _check_intervals(value, lo, hi)
    s = direction_signs(directions, v.shape[1])
    finite = np.isfinite(v).all(1) & np.isfinite(l).all(1) & np.isfinite(h).all(1)
    # Minimization form: the "best" end of an interval is the low end of (signed) [lo, hi].
    best = np.minimum(l * s, h * s)
    worst = np.maximum(l * s, h * s)
    nd = nondominated(np.where(finite[:, None], v, np.nan), directions)
    # clear[q, p]: q's worst end is at least as good as p's best end everywhere, better on one.
    clear = ((worst[:, None, :] <= best[None, :, :]).all(-1)
             & (worst[:, None, :] < best[None, :, :]).any(-1))
    clear &= (finite[:, None] & finite[None, :]) & ~np.eye(v.shape[0], dtype=bool)
    out = []
    for p in range(v.shape[0]):
        if not finite[p]:
            out.append(NOT_ESTIMABLE)
        elif nd[p]:
            out.append(NONDOMINATED)
        elif clear[:, p].any():
            out.append(CLEARLY_DOMINATED)
        else:
            out.append(NOT_SEPARABLE)
    return out


def separable_pairs(lo, hi, every: bool = False) -> np.ndarray:
    """``bool[P, P]``: True where the intervals of points p and q are disjoint on at least one
    objective (the data tells them apart there), or with ``every`` on every objective (the data
    tells them apart on each trade-off). Non-finite bounds are never separable."""
    l, h = _as_points(lo, "lo"), _as_points(hi, "hi")
    ok = np.isfinite(l).all(1) & np.isfinite(h).all(1)
    apart = (l[:, None, :] > h[None, :, :]) | (h[:, None, :] < l[None, :, :])
    disjoint = apart.all(-1) if every else apart.any(-1)
    return disjoint & ok[:, None] & ok[None, :]


def within_noise(lo, hi) -> np.ndarray:
    """``bool[P, P]``: True where points p != q both have finite bounds and their intervals
    ``[lo, hi]`` (each ``f[P, J]``) overlap on every objective: the data cannot tell them apart
    on any objective (the pairs ``separable_pairs`` calls not separable, among estimable
    points). Symmetric, False on the diagonal."""
    l, h = _as_points(lo, "lo"), _as_points(hi, "hi")
    ok = np.isfinite(l).all(1) & np.isfinite(h).all(1)
    overlap = ((l[:, None, :] <= h[None, :, :]) & (h[:, None, :] >= l[None, :, :])).all(-1)
    return overlap & ok[:, None] & ok[None, :] & ~np.eye(l.shape[0], dtype=bool)


class Selection(NamedTuple):
    """Result of ``select_operating_point``: ``index`` of the chosen point or None, and why."""

    index: int | None
    reason: str


def select_operating_point(values, lo, hi, maximize: int,
                           guardrails: Sequence[tuple[int, float, float]] = (),
                           directions: Sequence[str] | None = None,
                           names: Sequence[str] | None = None,
                           objective_names: Sequence[str] | None = None) -> Selection:
    """Choose the point best on objective ``maximize`` among those passing every guardrail.

    A guardrail ``(j, min_relative_change, baseline_value)`` passes when the pessimistic end of
    point p's interval on objective j (``lo`` for a "max" objective, ``hi`` for "min") improves on
    the baseline by at least ``min_relative_change * |baseline|``: ``lo[p, j] - baseline >=
    min_relative_change * |baseline|`` for "max". E.g. ``(1, -0.01, b)`` allows at most a 1%
    drop of objective 1 below b, at the interval's lower bound. Points with a non-finite value
    never pass. Ties on the objective go to a nondominated point, then the lowest index.
    ``names`` label the points and ``objective_names`` the objectives in the reason.
    Returns Selection(index, reason); index is None (with the reason) when no point passes.
    """
    v, l, h = _check_intervals(values, lo, hi)
    P, J = v.shape
    s = direction_signs(directions, J)
    label = (lambda i: names[i]) if names is not None else (lambda i: f"point {i}")
    obj = ((lambda j: objective_names[j]) if objective_names is not None
           else (lambda j: f"objective {j}"))
    if not 0 <= maximize < J:
        raise InputError("maximize", [], f"objective {maximize} outside [0, {J})")
    ok = np.isfinite(v).all(1)
    failed = []
    for j, min_rel, base in guardrails:
        if not 0 <= j < J:
            raise InputError("guardrails", [], f"objective {j} outside [0, {J})")
        pessimistic = np.where(s[j] < 0, l[:, j], h[:, j])
        gain = (pessimistic - base) * -s[j]  # improvement in the preferred direction
        passes = np.isfinite(gain) & (gain >= min_rel * abs(base))
        failed.append((j, min_rel, base, int((ok & ~passes).sum())))
        ok &= passes
    rules = "; ".join(
        f"{obj(j)} {'lower' if s[j] < 0 else 'upper'} bound {'>=' if s[j] < 0 else '<='} "
        f"{b - s[j] * m * abs(b):.6g} ({m:+.1%} vs baseline {b:.6g})"
        for j, m, b, _ in failed)
    if not ok.any():
        if not failed:
            return Selection(None, "no point has a finite estimate on every objective")
        detail = ", ".join(f"{obj(j)} rejects {n}" for j, _, _, n in failed)
        return Selection(None, f"no point passes the guardrails ({rules}); {detail}")
    score = np.where(ok, v[:, maximize] * -s[maximize], -np.inf)
    top = np.flatnonzero(score == score.max())
    nd = nondominated(np.where(ok[:, None], v, np.nan), directions)
    pick = int(top[nd[top]][0]) if nd[top].any() else int(top[0])
    word = "highest" if s[maximize] < 0 else "lowest"
    pts = f"{P} point{'s' if P != 1 else ''}"
    among = (f"among {int(ok.sum())} of {pts} passing the guardrails ({rules})" if failed
             else f"among {int(ok.sum())} of {pts} (no guardrails)")
    return Selection(pick, f"{label(pick)} has the {word} {obj(maximize)} "
                           f"({v[pick, maximize]:.6g}) {among}")
