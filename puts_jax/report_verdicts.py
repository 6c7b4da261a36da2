"""What the data can tell apart: the per-set flags (nondominated, separability verdicts), the
comparisons of every point with the logging and production baselines, the overall verdict, the
hypervolume and the low-data warnings of a frontier (DESIGN.md section 8: honest numbers).
Pure numpy on ``PolicyEstimates``; ``puts_jax.report_json.build_frontier`` assembles them.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from puts_jax import pareto
from puts_jax.checks import InputError
from puts_jax.report_estimates import PolicyEstimates, as_estimates

LOW_ESS = 30.0  # points with an effective sample size below this get a warning


def set_block(pe: PolicyEstimates, primary: str, dirs) -> dict:
    """One set of policies as JSON-ready arrays (names, n, matched, ess, estimators), with flags
    under the primary estimator: "nondominated" (bool per policy, ``pareto.nondominated``) and
    "verdicts" (``pareto.separability``). dirs: "max"/"min" per objective."""
    out = {"names": list(pe.names), "n": pe.n, "matched": pe.matched, "ess": pe.ess,
           "estimators": {e: dict(b) for e, b in pe.estimates.items()}}
    b = pe.estimates[primary]
    out["nondominated"] = pareto.nondominated(b["value"], dirs)
    out["verdicts"] = pareto.separability(b["value"], b["lo"], b["hi"], dirs)
    return out


def compare_to_baseline(b: Mapping, i: int, base: Mapping, k: int,
                        signs: np.ndarray) -> list[str]:
    """Per objective: "better" / "worse" when the intervals of point i and baseline k are disjoint
    (in the preferred direction), "overlap" otherwise, "n/a" when a bound is not finite.
    b, base: {"lo": f64[P, J], "hi": f64[P, J], ...} of the points and of the baseline set;
    signs: f[J] from ``pareto.direction_signs``."""
    out = []
    for j, s in enumerate(signs):
        lo, hi, blo, bhi = b["lo"][i, j], b["hi"][i, j], base["lo"][k, j], base["hi"][k, j]
        if not np.isfinite([lo, hi, blo, bhi]).all():
            out.append("n/a")
        elif lo > bhi:
            out.append("better" if s < 0 else "worse")
        elif hi < blo:
            out.append("worse" if s < 0 else "better")
        else:
            out.append("overlap")
    return out


def overall_verdict(verdicts: list[str], lo: np.ndarray, hi: np.ndarray,
                    conf: float) -> tuple[str, dict]:
    """The overall verdict: one sentence on what the data can tell apart, and its counts (points,
    estimable, nondominated, separable nondominated pairs, ...). verdicts: P per-point verdicts
    (``pareto.separability``); lo, hi: f64[P, J] interval bounds at confidence ``conf``."""
    ok = np.asarray([v != pareto.NOT_ESTIMABLE for v in verdicts])
    nd = [i for i, v in enumerate(verdicts) if v == pareto.NONDOMINATED]
    sep = pareto.separable_pairs(lo, hi)
    pairs = [(a, b) for ai, a in enumerate(nd) for b in nd[ai + 1:]]
    n_sep = sum(bool(sep[a, b]) for a, b in pairs)
    sep_all = pareto.separable_pairs(lo, hi, every=True)
    n_all = sum(bool(sep_all[a, b]) for a, b in pairs)
    detail = {"points": len(verdicts), "estimable": int(ok.sum()), "nondominated": len(nd),
              "nondominated_pairs": len(pairs), "separable_nondominated_pairs": n_sep,
              "separable_on_every_objective_pairs": n_all,
              "clearly_dominated": verdicts.count(pareto.CLEARLY_DOMINATED),
              "not_separable": verdicts.count(pareto.NOT_SEPARABLE),
              "any_separable_pair": bool(sep.any())}
    pct = f"{conf:.0%}"
    if not ok.any():
        return "no point can be estimated from these data", detail
    if not sep.any():
        return (f"the data cannot tell the frontier points apart: every pair of points has "
                f"overlapping {pct} intervals on every objective"), detail
    text = (f"{len(nd)} nondominated of {len(verdicts)} points; {n_sep} of {len(pairs)} "
            f"nondominated pairs separable at {pct} (disjoint intervals on at least one "
            f"objective; {n_all} on every objective); {detail['clearly_dominated']} clearly "
            f"dominated, {detail['not_separable']} dominated but not separable")
    if len(pairs) and n_sep == 0:
        text = "the data cannot tell the nondominated points apart; " + text
    return text, detail


def data_warnings(pe: PolicyEstimates, what: str) -> list[str]:
    """One warning per policy of ``pe`` with no matched rows or an effective sample size below
    ``LOW_ESS``, each starting with ``what`` and the policy's name."""
    out = []
    for i, name in enumerate(pe.names):
        if pe.matched[i] == 0:
            out.append(f"{what} {name}: no matched rows; its estimate rests on no data")
        elif pe.ess[i] < LOW_ESS:
            out.append(f"{what} {name}: effective sample size {pe.ess[i]:.1f} < {LOW_ESS:g}")
    return out


def baseline_blocks(baselines: Mapping, primary: str, dirs, names: Sequence[str]) -> dict:
    """{kind: ``set_block``} of every baseline set (``as_estimates``; raises InputError naming
    ``baselines.<kind>`` when one is malformed or lacks the primary estimator). The "actions" set
    also gets its best global actions (``best_global_actions``): "best", "is_best", "runner_up"
    and "best_apart". names: the J objective names."""
    out = {}
    for kind, obj in baselines.items():
        pe = as_estimates(obj, f"baselines.{kind}")
        if primary not in pe.estimates:
            raise InputError(f"baselines.{kind}.estimates", [], f"lacks primary '{primary}'")
        block = set_block(pe, primary, dirs)
        if kind == "actions":
            block.update(best_global_actions(pe.estimates[primary], dirs, names))
        out[kind] = block
    return out


def best_global_actions(est: Mapping, dirs, names: Sequence[str]) -> dict:
    """The best global action per objective: the single action with the best (highest; lowest
    for a "min" objective) estimate of that objective, and whether it is told apart from the
    runner-up (the second best).

    Args:
      est: one estimator's {"value", "lo", "hi"}, each f[A, J], of the A single global actions.
      dirs: "max"/"min" per objective. names: the J objective names.
    Returns {"best": {name: action index, None if no finite value}, "is_best": bool[A] (best on
    some objective), "runner_up": {name: index of the second best, None if no other action has a
    finite value}, "best_apart": {name: True when the best's and the runner-up's intervals are
    disjoint, False when they overlap (within noise of each other), None when there is no
    runner-up or a bound is not finite}}."""
    v = np.asarray(est["value"], np.float64)
    lo, hi = (np.asarray(est[k], np.float64) for k in ("lo", "hi"))
    score = np.where(np.isfinite(v), v * -pareto.direction_signs(dirs, v.shape[1]), -np.inf)
    best, runner_up, apart = {}, {}, {}
    for j, name in enumerate(names):
        order = np.argsort(-score[:, j], kind="stable")  # best first; ties to the lowest index
        ok = [int(a) for a in order if np.isfinite(score[a, j])]
        best[name] = ok[0] if ok else None
        runner_up[name] = ok[1] if len(ok) > 1 else None
        apart[name] = None
        if runner_up[name] is not None:
            a, r = best[name], runner_up[name]
            bounds = (lo[a, j], hi[a, j], lo[r, j], hi[r, j])
            if np.isfinite(bounds).all():
                apart[name] = bool(max(lo[a, j], lo[r, j]) > min(hi[a, j], hi[r, j]))
    return {"best": best, "is_best": [any(b == i for b in best.values()) for i in range(len(v))],
            "runner_up": runner_up, "best_apart": apart}


def hypervolume_block(values: np.ndarray, base_values: list[np.ndarray], reference,
                      dirs) -> dict:
    """Hypervolume of the finite points of values f64[P, J] (rows with a non-finite value are
    excluded and counted) against ``reference`` f[J], by default the component-wise worst (nadir)
    over the points and every baseline's values f64[P_b, J]; value and reference None when no
    point is finite."""
    finite = np.isfinite(values).all(1)
    rule = "given"
    if reference is None:
        pool = np.concatenate([values[finite]] + [b[np.isfinite(b).all(1)] for b in base_values])
        if pool.shape[0] == 0:
            return {"value": None, "reference": None, "reference_rule": "no finite point",
                    "excluded_nonfinite": int((~finite).sum())}
        s = pareto.direction_signs(dirs, values.shape[1])
        reference = (pool * s).max(0) * s  # component-wise worst (nadir) over points and baselines
        rule = "component-wise worst over the points and baselines (primary estimator)"
    ref = np.asarray(reference, np.float64)
    return {"value": pareto.hypervolume(values[finite], ref, dirs), "reference": ref,
            "reference_rule": rule, "excluded_nonfinite": int((~finite).sum())}


def within_noise_block(lo: np.ndarray, hi: np.ndarray, nd, primary: str, conf: float) -> dict:
    """Which points the data cannot tell apart from each nondominated point (the operating-point
    candidates): ``pareto.within_noise`` on the primary estimator's intervals lo, hi f64[P, J]
    at confidence ``conf``. nd: bool[P] nondominated flags.
    Returns {"estimator", "confidence", "rule", "nondominated": [{"index": i,
    "within_noise_of": [q, ...] (every other point), "nondominated_within_noise_of": [q, ...]
    (the other nondominated points)}, one per nondominated point in index order]}."""
    w = pareto.within_noise(lo, hi)
    idx = [int(i) for i in np.flatnonzero(np.asarray(nd, bool))]
    return {"estimator": primary, "confidence": float(conf),
            "rule": (f"two points are within noise of each other when their {conf:.0%} intervals "
                     f"of the {primary} estimates overlap on every objective: the data cannot "
                     "tell them apart (no pair of them is separable in the verdict)"),
            "nondominated": [within_noise_entry(w, i, idx) for i in idx]}


def within_noise_entry(w: np.ndarray, i: int, nd_idx: Sequence[int]) -> dict:
    """One point's entry of ``within_noise_block``: w bool[P, P] from ``pareto.within_noise``,
    nd_idx the indices of the nondominated points."""
    return {"index": int(i), "within_noise_of": [int(q) for q in np.flatnonzero(w[i])],
            "nondominated_within_noise_of": [int(q) for q in nd_idx if w[i, q]]}


def within_noise_entries(doc: Mapping) -> list[dict]:
    """``within_noise_entry`` of each nondominated point of a frontier document and of its marked
    points (``operating_point``, ``selected_point``), in index order, computed from its primary
    estimates (so a document written before "within_noise" was recorded gets them too). Each
    entry adds "nondominated" (bool), "mark" ("*" the operating point, "+" a selection that is
    not it, else "") and "told_apart_from" (the other estimable points not within noise)."""
    e = doc["estimators"][doc["primary_estimator"]]
    lo, hi = (np.asarray([[np.nan if x is None else x for x in r] for r in e[k]], np.float64)
              for k in ("lo", "hi"))
    w = pareto.within_noise(lo, hi)
    ok = np.isfinite(lo).all(1) & np.isfinite(hi).all(1)
    nd = [i for i, f in enumerate(doc["nondominated"]) if f]
    marks = {}
    for key, m in (("selected_point", "+"), ("operating_point", "*")):
        i = (doc.get(key) or {}).get("index")
        if isinstance(i, int) and 0 <= i < len(ok):
            marks[i] = m
    out = []
    for i in sorted(set(nd) | set(marks)):
        entry = within_noise_entry(w, i, nd)
        apart = [int(q) for q in np.flatnonzero(ok & ~w[i]) if q != i] if ok[i] else []
        out.append({**entry, "nondominated": i in nd, "mark": marks.get(i, ""),
                    "told_apart_from": apart})
    return out
