"""``puts-jax policy``: the operating-policy registry from the console script, one function per
action (show, select, publish, set-lambda, rollback) and the subcommand's arguments. ``cli``
wires it like every other subcommand; errors are ``UsageError`` / ``NothingSelected`` /
``InputError`` as in ``cli_checks``.

``select`` reads the frontier and never changes it, unless ``--out`` is given: then the selection
is written there and the operating point is marked on the frontier's three files (rewritten as
one set by ``report.write_frontier``). A selection records the frontier it was made on
(``frontier_sha256``); ``publish --selection`` refuses another frontier, or a selection that
records none, before anything is written. A selection also records the criteria it was chosen
by (``criteria``: maximize, guardrails, baseline); publish runs the choice again on --frontier
with them and publishes the frontier's own estimates, refusing a selection whose index or
estimates differ (an edited file), and a point that fails a guardrail on the report half unless
``--accept-guardrail-miss`` (then recorded in policy.json and the audit entry, with a warning on
stderr). Lambdas are printed at float32 precision (the precision the serve pass reads them at);
the files keep the exact values.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np

from puts_jax.checks import InputError, check_distinct_paths
from puts_jax.cli_checks import (NothingSelected, UsageError, check_frontier_matches,
                                 check_out_dir, check_out_file, fields_as_flags, floats,
                                 parse_guardrail, read_frontier)
from puts_jax.data.log_schema import LOG_COLUMNS


def _print(msg: str = "") -> None:  # as cli._print: every line reaches a pipe at once
    print(msg, flush=True)


def readable_lambda(lam) -> list[float]:
    """lambda f[J] at float32 precision, for printing: the shortest decimal that reads back as
    the same float32 (0.8999999761581421 -> 0.9). Files keep the exact values."""
    return [float(str(np.float32(x))) for x in np.asarray(lam, np.float64).reshape(-1)]


def _for_print(x):
    """A JSON-able copy of ``x`` with every "lambda" list made ``readable_lambda``."""
    if isinstance(x, dict):
        return {k: readable_lambda(v) if k == "lambda" and _numbers(v) else _for_print(v)
                for k, v in x.items()}
    return [_for_print(v) for v in x] if isinstance(x, list) else x


def _numbers(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(a, (int, float)) for a in v)


def frontier_sha256(doc: dict) -> str:
    """sha256 (hex) of a frontier document's content without ``operating_point``: its keys
    sorted, compact JSON. Marking an operating point (``select --out``) or re-rendering the
    frontier (``report``) keeps it; another sweep (other lambdas, data or model) changes it."""
    body = {k: v for k, v in doc.items() if k != "operating_point"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cmd_policy(args) -> None:
    """Run ``puts-jax policy <policy_cmd>`` on the parsed ``args``; after publish, set-lambda
    and rollback, list the registry's versions (``*`` marks the current one)."""
    from puts_jax import policy

    if args.policy_cmd in ("show", "set-lambda", "rollback"):  # need one, create nothing
        policy.check_registry(args.registry)
    if args.policy_cmd in ("set-lambda", "rollback"):  # a read-only registry: named, not OSError
        check_out_dir("--registry", args.registry)
    if args.policy_cmd == "show":
        _show(args)
        return
    if args.policy_cmd == "select":
        _select(args)
        return
    if args.policy_cmd == "publish":
        _publish(args)
    elif args.policy_cmd == "set-lambda":
        lam = np.asarray(floats("--lam", args.lam, "0.7,0.3"), np.float64)
        with fields_as_flags({"lambda": "--lam"}):
            v = policy.set_lambda(args.registry, lam, args.reason)
        _print(f"published {v} (parameters reused)")
    elif args.policy_cmd == "rollback":
        v = policy.rollback(args.registry, args.version, args.reason)
        _print(f"CURRENT -> {v}")
    _print_versions(args.registry)


def _show(args) -> None:
    from puts_jax import policy

    shown = policy.show(args.registry)
    _print(json.dumps(_for_print(shown), indent=1, default=str))
    if shown["current_problem"]:
        raise UsageError(f"--registry: CURRENT {shown['current_problem']}; the versions are "
                         "listed above ('policy rollback --version V' makes one current)")


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


def _select(args) -> None:
    from puts_jax import sweep_job

    if args.out:  # the selection goes there, and the frontier set gets the operating point
        check_out_file("--out", args.out)
        folder = os.path.dirname(os.path.abspath(args.frontier))
        check_distinct_paths({"--out": args.out}, {
            "--frontier": args.frontier,
            **{f"frontier.{k} of --frontier": os.path.join(folder, f"frontier.{k}")
               for k in ("png", "html")}})
    doc = read_frontier(args.frontier)
    digest, P = frontier_sha256(doc), check_frontier(doc, args.frontier)
    names = doc["objectives"]["names"]
    if args.maximize not in names:
        raise UsageError(f"--maximize: unknown objective {args.maximize!r}; known {names}")
    guards = [parse_guardrail(g, names, doc["objectives"]["directions"])
              for g in args.guardrail]
    sel = sweep_job.select(doc, names.index(args.maximize), guards, args.baseline)
    sel["criteria"] = {"maximize": args.maximize, "guardrails": list(args.guardrail),
                       "baseline": args.baseline}
    sel["frontier"] = {"path": os.path.abspath(args.frontier), "sha256": digest, "points": P}
    _print(json.dumps(_for_print(sel), indent=1, default=str))
    if sel["index"] is None:  # --out is never replaced by a null selection
        raise NothingSelected(sel["reason"] + (f"; --out {args.out} not written (an existing "
                                               "file is kept)" if args.out else ""))
    if args.out:
        from puts_jax.action_set import atomic_write_text
        _mark_operating_point(args.frontier, doc, sel)
        atomic_write_text(args.out, json.dumps(sel, indent=1, default=str))


def _mark_operating_point(frontier: str, doc: dict, sel: dict) -> None:
    """``select --out``: mark ``sel`` on frontier.json/png/html, rewritten as one set
    (``report.write_frontier``, all or nothing); when that cannot be done (a read-only folder, a
    frontier file named otherwise) a note says so and the frontier stays as it was."""
    from puts_jax import report

    folder = os.path.dirname(os.path.abspath(frontier))
    doc = {**doc, "operating_point": {k: sel[k] for k in ("index", "reason", "lambda", "name")}}
    why = None
    if os.path.basename(frontier) != "frontier.json":
        why = "its file is not named frontier.json, so its set cannot be rewritten"
    else:
        try:
            report.write_frontier(folder, doc)
        except OSError as e:
            why = f"{type(e).__name__}: {e}"
    if why:
        _print(f"note: the operating point is not marked on {frontier} ({why}); the selection "
               "is written")


def _point_index(args, n_points: int) -> tuple[int, dict | None]:
    """The frontier point to publish (--point, or the index of the --selection file) and the
    selection (None with --point); UsageError / NothingSelected name the flag."""
    index, sel = args.point, None
    if args.selection:
        try:
            with open(args.selection) as f:
                sel = json.load(f)
            index = sel["index"]
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"--selection: not a selection of 'policy select --out' "
                             f"({args.selection}: {type(e).__name__}: {e})") from None
        if index is None:
            raise NothingSelected(f"{args.selection}: no frontier point passed the guardrails; "
                                  "nothing published (the current policy stays)")
    if (args.point is None) == (args.selection is None):
        raise UsageError("policy publish: give exactly one of --point and --selection")
    if not isinstance(index, int) or not 0 <= index < n_points:  # no negative indexing
        flag = "--point" if args.selection is None else f"--selection: {args.selection}: index"
        raise UsageError(f"{flag}: {index!r} is not a point of --frontier (it has {n_points}:"
                         f" 0 to {n_points - 1})")
    return index, sel


def _check_selection_source(args, sel: dict, doc: dict, index: int) -> None:
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


def _check_objectives(doc: dict, path: str, model, reward_names) -> None:
    """The frontier's objectives are the model's J rewards and, by name and order, the --logs'
    rewards: a lambda weights rewards by position, so another order would weight other ones."""
    names, J = doc["objectives"]["names"], len(model.reward_kinds)
    if len(names) != J:
        raise UsageError(f"--frontier: {path}: {len(names)} objectives {names}, but --model "
                         f"scores J = {J} rewards")
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


def _select_again(args, sel: dict, doc: dict, index: int) -> dict:
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


def _guardrail_miss(args, again: dict, index: int) -> list[str]:
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


def _check_exploration_log(path: str) -> None:
    """--logs is an exploration log (logged decisions), not a request set of the same actions."""
    import pyarrow.parquet as pq

    have = pq.read_schema(path).names
    missing = [c for c, (required, _, _) in LOG_COLUMNS.items() if required and c not in have]
    if missing:
        raise UsageError(f"--logs: {path} is not an exploration log: it lacks the columns "
                         f"{missing} (a request set has no logged decisions); give a log of the "
                         "action set, e.g. logs.parquet (nothing published)")


def _publish(args) -> None:
    from puts_jax import model_io, policy, report
    from puts_jax.data import logs

    check_out_dir("--registry", args.registry)
    _check_exploration_log(args.logs)
    model, info = model_io.load_model(args.model)
    doc = read_frontier(args.frontier)
    index, sel = _point_index(args, check_frontier(doc, args.frontier))
    accepted, point = [], report.frontier_point(doc, index)
    if sel is not None:  # the published estimate (the report half's, when the sweep had halves)
        _check_selection_source(args, sel, doc, index)
        again = _select_again(args, sel, doc, index)
        accepted = _guardrail_miss(args, again, index)
        point["selection"] = {k: again.get(k) for k in (
            "estimates", "estimates_from", "reason", "report_passes_guardrails")}
        point["selection"]["criteria"] = sel["criteria"]
    check_frontier_matches(doc, model, args.logs)
    meta = logs.read_meta(args.logs)
    _check_objectives(doc, args.frontier, model, meta.reward_names)
    v = policy.publish(args.registry, model, meta.action_set,
                       np.asarray(point["lambda"], np.float64), point, args.reason,
                       {"model": os.path.abspath(args.model),
                        "frontier": os.path.abspath(args.frontier),
                        "frontier_sha256": frontier_sha256(doc), "train": info.get("extra", {})},
                       accepted=accepted)
    _print(f"published {v}")
    for miss in accepted:
        print(f"puts-jax: warning: published {v} although {miss} (accepted with "
              "--accept-guardrail-miss; recorded in policy.json and the audit log)",
              file=sys.stderr, flush=True)


def _print_versions(registry: str) -> None:
    """The versions after a change (``*`` marks CURRENT; a broken one shows its problem). The
    change is made: a registry that cannot be listed now is a note, never a failure."""
    from puts_jax import policy

    try:
        shown = policy.show(registry)
    except (InputError, OSError) as e:
        _print(f"note: the versions cannot be listed ({e}); the change above is made")
        return
    for v in shown["versions"]:
        mark = "*" if v["version"] == shown["current"] else " "
        if v["problem"]:
            _print(f"{mark} {v['version']}  {v['problem']}")
            continue
        _print(f"{mark} {v['version']}  {v['action']:<10} lambda={readable_lambda(v['lambda'])}"
               f"  params={v['params_version']}  {v['reason']}")


def add_parser(sub) -> None:
    """Add ``policy`` and its actions to the console script's subparsers ``sub``."""
    pol = sub.add_parser("policy", help="operating-policy registry: select, publish, set-lambda, "
                         "rollback, show", description="The operating-policy registry: pick a "
                         "frontier point, publish it as a versioned policy, change its lambda, "
                         "roll back; every change is audited.")
    ps = pol.add_subparsers(dest="policy_cmd", required=True, metavar="ACTION")
    x = ps.add_parser("show", help="print the registry: current version, versions, audit log")
    x.add_argument("--registry", required=True)
    x = ps.add_parser("select", help="pick a frontier point under guardrails (reads the "
                      "frontier; with --out writes the selection and marks the point)")
    x.add_argument("--frontier", required=True)
    x.add_argument("--maximize", required=True, help="objective name")
    x.add_argument("--guardrail", action="append", default=[], help="e.g. 'clicks >= -1%%'")
    x.add_argument("--baseline", default="production", choices=("production", "logging"),
                   help="the policy guardrails compare against (default: production)")
    x.add_argument("--out", default=None,
                   help="write the selection JSON here (only when a point is selected) and mark "
                        "the operating point on frontier.json/png/html; without it nothing is "
                        "written")
    x = ps.add_parser("publish", help="publish a frontier point (--point or --selection) as a "
                      "new current version")
    x.add_argument("--registry", required=True)
    x.add_argument("--model", required=True)
    x.add_argument("--frontier", required=True)
    x.add_argument("--logs", required=True, help="a log of the action set (its metadata)")
    x.add_argument("--point", type=int, default=None, help="frontier point index")
    x.add_argument("--selection", default=None, help="selection JSON of 'policy select --out' "
                   "made on this --frontier")
    x.add_argument("--reason", required=True)
    x.add_argument("--accept-guardrail-miss", action="store_true",
                   help="publish a --selection whose point fails a guardrail on the report half "
                        "(recorded in policy.json and the audit log, with a warning)")
    x = ps.add_parser("set-lambda", help="new current version with another lambda, the "
                      "parameters reused")
    x.add_argument("--registry", required=True)
    x.add_argument("--lam", required=True, help="comma-separated, e.g. 0.7,0.3")
    x.add_argument("--reason", required=True)
    x = ps.add_parser("rollback", help="make an earlier version current again (audited)")
    x.add_argument("--registry", required=True)
    x.add_argument("--version", required=True)
    x.add_argument("--reason", required=True)
    pol.set_defaults(fn=cmd_policy)
