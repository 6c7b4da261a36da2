"""Checks of ``puts-jax policy select`` and ``publish`` (``cli_policy``), before anything is
written: the frontier's blocks fit its objectives (``check_frontier``); a selection was made on
--frontier (``frontier_sha256``, ``check_selection_source``) and its choice and estimates hold
there (``select_again``); a report-half guardrail miss is refused unless accepted
(``guardrail_miss``); the objectives are the model's and the log's rewards in order
(``check_objectives``); --logs is an exploration log (``check_exploration_log``). Each raises
``UsageError`` naming the flag.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from puts_jax.checks import InputError
from puts_jax.cli_checks import UsageError, parse_guardrail
from puts_jax.data.log_schema import LOG_COLUMNS
from puts_jax.scalarization import readable_lambda  # noqa: F401 (re-exported: cli_policy)


def frontier_sha256(doc: dict) -> str:
    """sha256 (hex) of a frontier document's content without its marks (``operating_point``,
    ``selected_point``): its keys sorted, compact JSON. Marking a point (``select --out``,
    ``publish``) or re-rendering the frontier (``report``) keeps it; another sweep (other
    lambdas, data or model) changes it."""
    body = {k: v for k, v in doc.items() if k not in ("operating_point", "selected_point")}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _shape(x) -> tuple | None:
    """The shape of ``x`` read as numbers (null -> nan), or None when it is ragged or not
    numeric."""
    try:
        return np.asarray(x, np.float64).shape
    except (ValueError, TypeError):
        return None


def _estimate_blocks(doc: dict) -> list[tuple[str, dict, bool]]:
    """(label, {estimator: {value, lo, hi}}, True for the points' f[P, J] or False for a
    baseline's f[rows, J]) of every estimate block select and publish read, halves included."""
    halves = doc.get("halves") or {}
    blocks = [("estimators", doc["estimators"], True)]
    blocks += [(f"baselines.{b}.estimators", x["estimators"], False)
               for b, x in doc["baselines"].items()]
    for h in ("select", "report") if halves else ():
        blocks.append((f"halves.{h}.points.estimators", halves[h]["points"]["estimators"], True))
        blocks += [(f"halves.{h}.baselines.{b}.estimators", x["estimators"], False)
                   for b, x in halves[h]["baselines"].items()]
    return blocks


def check_frontier(doc: dict, path: str) -> int:
    """Before select or publish: the frontier has P >= 1 points and every block they read fits
    J = len(objectives.names): lambdas f[P, J], directions [J], the primary estimator's
    estimates f[P, J] (points, also per half) and every estimator's f[rows, J] (baselines),
    per-point lists [P]. Returns P.
    Raises UsageError('--frontier: PATH: FIELD: ...') naming the first field that does not fit."""
    def bad(msg: str) -> UsageError:
        return UsageError(f"--frontier: {path}: {msg}")

    obj = doc["objectives"] if isinstance(doc["objectives"], dict) else {}
    names, dirs, lam = obj.get("names"), obj.get("directions"), doc["lambdas"]
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise bad(f"objectives.names: expected a list of names, got {str(names)[:60]}")
    J = len(names)
    if not isinstance(lam, list) or not lam:
        raise bad(f"no points (lambdas is {str(lam)[:40]}): nothing to select or publish; run "
                  "the sweep again")
    P, prim = len(lam), doc["primary_estimator"]
    try:
        checks = [("lambdas", lam, True)]
        for label, ests, rows in _estimate_blocks(doc):
            if rows and prim not in ests:
                raise bad(f"{label}: lacks the primary estimator {prim!r}")
            checks += [(f"{label}.{e}.{q}", est[q], rows) for e, est in ests.items()
                       for q in ("value", "lo", "hi")]
        lists = {f"points.{k}": doc["points"][k] for k in ("names", "n", "matched", "ess")}
        lists.update(nondominated=doc["nondominated"], verdicts=doc["verdicts"])
    except (KeyError, TypeError, AttributeError) as e:
        raise bad(f"{type(e).__name__}: {e} (a block that select and publish read is missing "
                  "or malformed)") from None
    for label, x, rows in checks:
        s = _shape(x)
        if s is None or len(s) != 2 or s[1] != J or (s[0] != P if rows else s[0] < 1):
            raise bad(f"{label}: shape {s or 'ragged'}, expected [{P if rows else 'rows'}, {J}] "
                      f"(P = {P} points, J = {J} objectives {names})")
    for label, x in lists.items():
        if not isinstance(x, list) or len(x) != P:
            raise bad(f"{label}: expected a list of P = {P} entries, got {str(x)[:60]}")
    if not (isinstance(dirs, list) and len(dirs) == J and all(d in ("max", "min") for d in dirs)):
        raise bad(f"objectives.directions: expected 'max' or 'min' for each of the J = {J} "
                  f"objectives {names}, got {str(dirs)[:60]}")
    return P


def check_selection_source(args, sel: dict, doc: dict, index: int) -> None:
    """The --selection was made on --frontier: its recorded ``frontier.sha256`` is the
    frontier's ``frontier_sha256`` and its lambda is point ``index``'s. A selection without that
    record (older puts-jax, or by hand) is refused too: its index could name another lambda.
    Raises UsageError('--selection: ...'); nothing is written before."""
    rec, here = sel.get("frontier"), frontier_sha256(doc)
    lam, ours = sel.get("lambda"), doc["lambdas"][index]
    if not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str):
        raise UsageError(f"--selection: {args.selection} does not record the frontier it was made "
                         "on (written by an older puts-jax or by hand), so its point index cannot "
                         f"be trusted on --frontier; run 'policy select --frontier {args.frontier} "
                         "... --out' again (nothing published)")
    same = _shape(lam) == _shape(ours) and np.array_equal(np.asarray(lam, np.float64),
                                                          np.asarray(ours, np.float64))
    if rec["sha256"] != here:
        at = ("" if same or lam is None else f"; its point {index} is lambda "
              f"{readable_lambda(lam)} there but {readable_lambda(ours)} on --frontier")
        raise UsageError(f"--selection: {args.selection} was made on another frontier "
                         f"({rec.get('path')}, sha256 {rec['sha256'][:12]}), not --frontier "
                         f"{args.frontier} (sha256 {here[:12]}){at}; select again on --frontier "
                         "or publish with the frontier it was made on (nothing published)")
    if not same:
        raise UsageError(f"--selection: {args.selection}: lambda {str(lam)[:60]} is not point "
                         f"{index}'s lambda {readable_lambda(ours)} on --frontier (was the file "
                         "edited?); nothing published")


def check_objectives(doc: dict, path: str, model, reward_names) -> None:
    """The frontier's objectives are the model's J rewards and, by name and order, the --logs'
    rewards: a lambda weights rewards by position, so another order would weight other ones."""
    names, J = doc["objectives"]["names"], len(model.reward_kinds)
    if len(names) != J:
        raise UsageError(f"--frontier: {path}: {len(names)} objective"
                         f"{'s' if len(names) != 1 else ''} {names}, but --model scores J = {J} "
                         f"reward{'s' if J != 1 else ''}")
    if reward_names and list(reward_names) != list(names):
        raise UsageError(f"--frontier: {path}: objectives {names}, but --logs has the rewards "
                         f"{list(reward_names)}: a lambda weights the rewards in that order")


def _same_estimates(a, b) -> bool:
    """Two {value, lo, hi} blocks hold the same numbers (NaN, or null, equal to NaN)."""
    try:
        return all(np.array_equal(np.asarray(a[q], np.float64), np.asarray(b[q], np.float64),
                                  equal_nan=True) for q in ("value", "lo", "hi"))
    except (KeyError, TypeError, ValueError):
        return False


def select_again(args, sel: dict, doc: dict, index: int) -> dict:
    """The --selection's choice made again on --frontier with the criteria it records: the same
    index, and its estimates those of the frontier for that point (the report half's with
    halves). Returns the choice as made here; UsageError('--selection: ...') otherwise."""
    from puts_jax import sweep_job

    crit, path = sel.get("criteria"), args.selection
    names, dirs = doc["objectives"]["names"], doc["objectives"]["directions"]
    try:
        maximize = names.index(crit["maximize"])
        guards = [parse_guardrail(g, names, dirs) for g in crit["guardrails"]]
        again = sweep_job.select(doc, maximize, guards, crit["baseline"])
    except (KeyError, TypeError, ValueError, InputError) as e:  # UsageError is a ValueError
        raise UsageError(f"--selection: {path} does not record the criteria it was chosen by "
                         f"(maximize, guardrails, baseline: {str(e)[:80] or type(e).__name__}), so "
                         "its choice and estimates cannot be checked on --frontier; run 'policy "
                         f"select --frontier {args.frontier} ... --out' again (nothing "
                         "published)") from None
    if again["index"] != index:
        raise UsageError(f"--selection: {path}: its criteria select point {again['index']} on "
                         f"--frontier, not its index {index} (was the file edited?); nothing "
                         "published")
    if not _same_estimates(sel.get("estimates"), again["estimates"]):
        raise UsageError(f"--selection: {path}: estimates {str(sel.get('estimates'))[:120]} are "
                         f"not --frontier's for point {index} ({again['estimates_from']}: "
                         f"{again['estimates']}) (was the file edited?); nothing published")
    return again


def guardrail_miss(args, again: dict, index: int) -> list[str]:
    """[] when the chosen point meets its guardrails on the report half (or there are no
    halves); with --accept-guardrail-miss the miss, to record; else UsageError."""
    if again.get("report_passes_guardrails") is not False:
        return []
    why = again["reason"].rpartition("on the report half it fails a guardrail ")[2]
    miss = (f"point {index} ({again['name']}) fails a guardrail on the report half, whose "
            f"estimate is the one published: {why}")
    if not args.accept_guardrail_miss:
        raise UsageError(f"--selection: {args.selection}: {miss}; select again, or publish it "
                         "anyway with --accept-guardrail-miss (recorded in policy.json and the "
                         "audit log); nothing published")
    return [miss]


def check_exploration_log(path: str) -> None:
    """--logs is an exploration log (logged decisions), not a request set of the same actions."""
    import pyarrow.parquet as pq

    have = pq.read_schema(path).names
    missing = [c for c, (required, _, _) in LOG_COLUMNS.items() if required and c not in have]
    if missing:
        raise UsageError(f"--logs: {path} is not an exploration log: it lacks the columns "
                         f"{missing} (a request set has no logged decisions); give a log of the "
                         "action set, e.g. logs.parquet (nothing published)")


def _interval(block: dict, i: int, j: int) -> tuple[float, float, float]:
    """(value, lo, hi) of row ``i``, objective ``j`` of a {value, lo, hi} block (null -> nan)."""
    return tuple(float(np.asarray(block[q], np.float64)[i, j]) for q in ("value", "lo", "hi"))


def _fmt(x: tuple[float, float, float]) -> str:
    return f"{x[0]:.4g} [{x[1]:.4g}, {x[2]:.4g}]"


def _apart(a, b, direction: str) -> bool:
    """a's interval lies entirely on the better side of b's (``direction`` 'max' or 'min')."""
    return a[1] > b[2] if direction == "max" else a[2] < b[1]


def _published_blocks(doc: dict, baseline: str) -> tuple[dict, dict | None]:
    """(the points' primary estimates, ``baseline``'s or None) of the block select publishes
    from: the report half's with halves, else the full data's."""
    prim, halves = doc["primary_estimator"], doc.get("halves")
    where = halves["report"] if halves else {"points": doc, "baselines": doc["baselines"]}
    b = where["baselines"].get(baseline)
    return where["points"]["estimators"][prim], None if b is None else b["estimators"][prim]


def versus_production(doc: dict, sel: dict, maximize: str) -> tuple[dict, list[str]]:
    """The selected point next to the logged production action on the intervals select
    publishes (the report half's with halves): ``{"production": {estimates, from} or None,
    "below_production": [objectives whose interval lies entirely on production's worse
    side]}`` and the lines to print: a warning per such objective, and on ``maximize``, when
    the intervals overlap, a note that the point is not distinguishable from production."""
    names, dirs = doc["objectives"]["names"], doc["objectives"]["directions"]
    points, prod = _published_blocks(doc, "production")
    if prod is None or sel.get("index") is None:
        return {"production": None, "below_production": []}, []
    i, below, lines = sel["index"], [], []
    for j, name in enumerate(names):
        ours, theirs = _interval(points, i, j), _interval(prod, 0, j)
        pair = f"{_fmt(ours)} vs {_fmt(theirs)}"
        if _apart(theirs, ours, dirs[j]):
            below.append(name)
            lines.append(f"puts-jax: warning: the selected point is "
                         f"{'below' if dirs[j] == 'max' else 'above'} production on {name} "
                         f"({pair}, intervals disjoint): publishing it would lose {name}")
        elif name == maximize and not _apart(ours, theirs, dirs[j]):
            lines.append(f"puts-jax: note: the selected point is not distinguishable from "
                         f"production on {name} ({pair}, intervals overlap)")
    record = {"estimates": {q: np.asarray(prod[q], np.float64)[0].tolist()
                            for q in ("value", "lo", "hi")}, "from": sel["estimates_from"]}
    return {"production": record, "below_production": below}, lines


def runner_up(doc: dict, sel: dict, maximize: int, guardrails) -> tuple[dict | None, list[str]]:
    """The point select would choose without the selected one (same guardrails, same half),
    compared with it on objective ``maximize`` by the intervals select publishes:
    ``{index, lambda, name, estimate: {value, lo, hi}, distinguishable}`` (None when no other
    point passes) and the line to print when the intervals overlap (chosen by point estimate
    only) or the runner-up's lies above."""
    from puts_jax import halves as halves_lib, pareto

    if sel.get("index") is None:
        return None, []
    prim, baseline, i = doc["primary_estimator"], sel["criteria"]["baseline"], sel["index"]
    if doc.get("halves"):
        est, base, _ = halves_lib.estimates_of(doc, "select", prim, baseline)
    else:
        est, base = doc["estimators"][prim], doc["baselines"][baseline]["estimators"][prim]
    v, lo, hi = (np.asarray(est[q], np.float64).copy() for q in ("value", "lo", "hi"))
    v[i] = np.nan  # the selected point never passes: the next best does
    bval = np.asarray(base["value"], np.float64)[0]
    dirs, name = doc["objectives"]["directions"], doc["objectives"]["names"][maximize]
    r = pareto.select_operating_point(v, lo, hi, maximize,
                                      [(j, rel, float(bval[j])) for j, rel in guardrails], dirs)
    if r.index is None:
        return None, []
    points, _ = _published_blocks(doc, baseline)
    ours, theirs = _interval(points, i, maximize), _interval(points, r.index, maximize)
    apart = _apart(ours, theirs, dirs[maximize]) or _apart(theirs, ours, dirs[maximize])
    lam = ", ".join(str(x) for x in readable_lambda(doc["lambdas"][r.index]))
    record = {"index": r.index, "lambda": doc["lambdas"][r.index],
              "name": doc["points"]["names"][r.index],
              "estimate": dict(zip(("value", "lo", "hi"), theirs)), "distinguishable": apart}
    if not apart:
        line = (f"puts-jax: note: within noise: the runner-up lambda=({lam}) {_fmt(theirs)} "
                f"overlaps the selected point's interval on {name} ({_fmt(ours)}); the data "
                "cannot tell them apart (chosen by point estimate)")
    elif _apart(theirs, ours, dirs[maximize]):
        line = (f"puts-jax: warning: the runner-up lambda=({lam}) {_fmt(theirs)} is better than "
                f"the selected point ({_fmt(ours)}) on {name} by the published intervals")
    else:
        return record, []
    return record, [line]


def production_loss(args, sel: dict, again: dict, doc: dict, index: int) -> list[str]:
    """[] unless point ``index`` lies below production on the objective the --selection
    maximizes (intervals disjoint, on the published half); then the loss, to record, with
    --accept-below-production; else UsageError."""
    maximize = sel["criteria"]["maximize"]
    found, lines = versus_production(doc, again, maximize)
    if maximize not in found["below_production"]:
        return []
    why = next(x for x in lines if f"production on {maximize} (" in x).partition("point is ")[2]
    loss = f"point {index} ({again['name']}) is {why}"
    if not args.accept_below_production:
        raise UsageError(f"--selection: {args.selection}: {loss}; select again, or publish it "
                         "anyway with --accept-below-production (recorded in policy.json and "
                         "the audit log); nothing published")
    return [loss]
