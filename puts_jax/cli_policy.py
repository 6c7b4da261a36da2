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

The frontier's mark says which it is (``report.place_mark``): ``select --out`` marks a selection
("selected, not published"); after publish, set-lambda and rollback the frontier the new CURRENT
was published from marks it as the published operating point (version and registry), when its
lambda is a point there, and the frontier of the version current before drops its mark
(``policy_marks``). A selection made after a publish is shown next to the published point
(``selected_point``), never in its place.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from puts_jax import policy_marks
from puts_jax.checks import check_distinct_paths
from puts_jax.cli_checks import (NothingSelected, UsageError, check_frontier_matches,
                                 check_out_dir, check_out_file, fields_as_flags, floats,
                                 parse_guardrail, print_line as _print, read_frontier)
from puts_jax.policy_checks import (check_exploration_log, check_frontier,  # noqa: F401
                                    check_objectives, check_selection_source, frontier_sha256,
                                    guardrail_miss, production_loss, readable_lambda,
                                    runner_up, select_again, versus_production)


def _for_print(x):
    """A JSON-able copy of ``x`` with every "lambda" list and every row of a "weights" matrix
    (the action set, stored from float32) made ``readable_lambda``: 0.3, not
    0.30000001192092896."""
    if isinstance(x, dict):
        return {k: readable_lambda(v) if k == "lambda" and _numbers(v) else
                [readable_lambda(r) if _numbers(r) else r for r in v]
                if k == "weights" and isinstance(v, list) else _for_print(v)
                for k, v in x.items()}
    return [_for_print(v) for v in x] if isinstance(x, list) else x


def _numbers(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(a, (int, float)) for a in v)


def cmd_policy(args) -> None:
    """Run ``puts-jax policy <policy_cmd>`` on the parsed ``args``; after publish, set-lambda
    and rollback, list the registry's versions (``*`` marks the current one) and update the
    frontier's marks (``policy_marks.sync_marks``). A publish or set-lambda of what CURRENT
    already serves prints ``nothing published: ...`` and exits 0, nothing written."""
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
    try:
        if args.policy_cmd == "publish":
            _publish(args)
        elif args.policy_cmd == "set-lambda":
            lam = np.asarray(floats("--lam", args.lam, "0.7,0.3"), np.float64)
            with fields_as_flags({"lambda": "--lam"}):
                v = policy.set_lambda(args.registry, lam, args.reason)
            _print(f"published {v} (parameters reused)")
        else:
            v = policy.rollback(args.registry, args.version, args.reason)
            _print(f"CURRENT -> {v}")
    except policy.AlreadyCurrent as e:  # a no-op, exit 0: the registry already serves it
        _print(f"nothing published: {e}")
        return
    _print_versions(args.registry)
    policy_marks.sync_marks(args.registry)


def _show(args) -> None:
    from puts_jax import policy

    shown = policy.show(args.registry)
    if not args.full and isinstance(shown.get("policy"), dict):  # A x K rows: one line each
        shown["policy"] = {**shown["policy"],
                           "action_set": action_set_summary(shown["policy"].get("action_set"))}
    _print(json.dumps(_for_print(shown), indent=1, default=str))
    if shown["current_problem"]:
        raise UsageError(f"--registry: CURRENT {shown['current_problem']}; the versions are "
                         "listed above ('policy rollback --version V' makes one current)")


def action_set_summary(action_set):
    """``policy show``'s view of a policy.json ``action_set`` (its ``weights`` f[A, K]): the
    shape, the K ranker outcomes the weights apply to (``objective_names``), the production
    action and its weight row (the one fixed row an operating policy is compared with: the
    policy itself picks a row per request), the hash, and in place of the matrix a note that
    ``--full`` prints it. Anything that is not an A x K list of number rows is returned as it is
    (``show`` prints what it read)."""
    w = action_set.get("weights") if isinstance(action_set, dict) else None
    if not (isinstance(w, list) and w and all(_numbers(r) and len(r) == len(w[0]) for r in w)):
        return action_set
    A, K, prod = len(w), len(w[0]), action_set.get("production")
    row = readable_lambda(w[prod]) if isinstance(prod, int) and 0 <= prod < A else None
    return {"shape": f"A x K = {A} x {K} (actions x ranker outcomes)",
            "objective_names": action_set.get("objective_names"), "production": prod,
            "production_weights": row, "hash": action_set.get("hash"),
            "weights": f"not shown ({A} row{'s' if A != 1 else ''} of {K}): 'policy show --full' "
                       "prints the matrix"}


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
    found, lines = versus_production(doc, sel, args.maximize)
    sel.update(found)
    sel["runner_up"], more = runner_up(doc, sel, names.index(args.maximize), guards)
    _print(json.dumps(_for_print(sel), indent=1, default=str))
    for line in lines + more:  # stderr: stdout stays the selection's JSON
        print(line, file=sys.stderr, flush=True)
    if sel["index"] is None:  # --out is never replaced by a null selection
        raise NothingSelected(sel["reason"] + (f"; --out {args.out} not written (an existing "
                                               "file is kept)" if args.out else ""))
    if args.out:
        from puts_jax.action_set import atomic_write_text
        # the selection first: a write that fails (full disk) leaves the frontier unmarked
        atomic_write_text(args.out, json.dumps(sel, indent=1, default=str))
        if sel.get("report_passes_guardrails") is False:  # publish refuses it without a flag
            _print(f"note: the operating point is not marked on {args.frontier}: point "
                   f"{sel['index']} fails a guardrail on the report half (publish it with "
                   "--accept-guardrail-miss to make it the operating policy); the selection "
                   "is written")
        elif args.maximize in sel["below_production"]:  # the same
            _print(f"note: the operating point is not marked on {args.frontier}: point "
                   f"{sel['index']} is below production on {args.maximize} (publish it with "
                   "--accept-below-production to make it the operating policy); the selection "
                   "is written")
        else:
            policy_marks.mark_selection(args.frontier, doc, sel)


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


def _publish(args) -> None:
    from puts_jax import model_io, policy, report
    from puts_jax.data import logs

    check_out_dir("--registry", args.registry)
    check_exploration_log(args.logs)
    model, info = model_io.load_model(args.model)
    doc = read_frontier(args.frontier)
    index, sel = _point_index(args, check_frontier(doc, args.frontier))
    accepted, lost, point = [], [], report.frontier_point(doc, index)
    if sel is not None:  # the published estimate (the report half's, when the sweep had halves)
        check_selection_source(args, sel, doc, index)
        again = select_again(args, sel, doc, index)
        accepted = guardrail_miss(args, again, index)
        lost = production_loss(args, sel, again, doc, index)
        point["selection"] = {k: again.get(k) for k in (
            "estimates", "estimates_from", "reason", "report_passes_guardrails")}
        point["selection"]["criteria"] = sel["criteria"]
    check_frontier_matches(doc, model, args.logs)
    meta = logs.read_meta(args.logs)
    check_objectives(doc, args.frontier, model, meta.reward_names)
    v = policy.publish(args.registry, model, meta.action_set,
                       np.asarray(point["lambda"], np.float64), point, args.reason,
                       {"model": os.path.abspath(args.model),
                        "frontier": os.path.abspath(args.frontier),
                        "frontier_sha256": frontier_sha256(doc), "train": info.get("extra", {})},
                       accepted=accepted + lost)
    _print(f"published {v}")
    for miss, flag in [(m, "--accept-guardrail-miss") for m in accepted] + [
            (m, "--accept-below-production") for m in lost]:
        print(f"puts-jax: warning: published {v} although {miss} (accepted with {flag}; "
              "recorded in policy.json and the audit log)", file=sys.stderr, flush=True)


def _print_versions(registry: str) -> None:
    """The versions after a change (``*`` marks CURRENT; a broken one shows its problem). The
    change is made: a listing that fails for any reason is a one-line note on stderr, never a
    failure (the command still exits 0)."""
    from puts_jax import policy

    try:
        shown, lines = policy.show(registry), []
        for v in shown["versions"]:
            mark = "*" if v["version"] == shown["current"] else " "
            lines.append(f"{mark} {v['version']}  {v['problem']}" if v["problem"] else
                         f"{mark} {v['version']}  {v['action']:<10} "
                         f"lambda={readable_lambda(v['lambda'])}  params={v['params_version']}"
                         f"  {v['reason']}")
    except Exception as e:  # noqa: BLE001 - the change is made; the listing is a courtesy
        why = (str(e).strip().splitlines() or [""])[0][:200]
        print(f"puts-jax: note: the versions cannot be listed ({type(e).__name__}: {why}); the "
              "change above is made", file=sys.stderr, flush=True)
        return
    for line in lines:
        _print(line)


REGISTRY_HELP = "operating-policy registry folder"
REASON_HELP = "why (kept in policy.json and the audit log)"


def add_parser(sub) -> None:
    """Add ``policy`` and its actions to the console script's subparsers ``sub``."""
    pol = sub.add_parser("policy", help="operating-policy registry: select, publish, set-lambda, "
                         "rollback, show", description="The operating-policy registry: pick a "
                         "frontier point, publish it as a versioned policy, change its lambda, "
                         "roll back; every change is audited.")
    ps = pol.add_subparsers(dest="policy_cmd", required=True, metavar="ACTION")
    x = ps.add_parser("show", help="print the registry: current version, versions, audit log")
    x.add_argument("--registry", required=True, help=REGISTRY_HELP)
    x.add_argument("--full", action="store_true",
                   help="print the current policy's whole action-set matrix (A x K weights); "
                        "without it, its shape, outcome names and the production action's row")
    x = ps.add_parser("select", help="pick a frontier point under guardrails (reads the "
                      "frontier; with --out writes the selection and marks the point)")
    x.add_argument("--frontier", required=True, help="frontier.json of 'puts-jax sweep'")
    x.add_argument("--maximize", required=True, help="objective name")
    x.add_argument("--guardrail", action="append", default=[], help="e.g. 'clicks >= -1%%'")
    x.add_argument("--baseline", default="production", choices=("production", "logging"),
                   help="the policy guardrails compare against")
    x.add_argument("--out", default=None,
                   help="write the selection JSON here (only when a point is selected) and mark "
                        "the operating point on frontier.json/png/html; without it nothing is "
                        "written")
    x = ps.add_parser("publish", help="publish a frontier point (--point or --selection) as a "
                      "new current version (what CURRENT already serves: nothing written, "
                      "exit 0)")
    x.add_argument("--registry", required=True, help=REGISTRY_HELP + " (created if missing)")
    x.add_argument("--model", required=True, help="exported model directory the frontier was "
                   "swept with")
    x.add_argument("--frontier", required=True, help="frontier.json of 'puts-jax sweep'")
    x.add_argument("--logs", required=True, help="a log of the action set (its metadata)")
    x.add_argument("--point", type=int, default=None,
                   help="frontier point index (or give --selection)")
    x.add_argument("--selection", default=None, help="selection JSON of 'policy select --out' "
                   "made on this --frontier")
    x.add_argument("--reason", required=True, help=REASON_HELP)
    x.add_argument("--accept-guardrail-miss", action="store_true",
                   help="publish a --selection whose point fails a guardrail on the report half "
                        "(recorded in policy.json and the audit log, with a warning)")
    x.add_argument("--accept-below-production", action="store_true",
                   help="publish a --selection whose point's interval lies below production's on "
                        "the objective it maximizes (recorded in policy.json and the audit log, "
                        "with a warning)")
    x = ps.add_parser("set-lambda", help="new current version with another lambda, the "
                      "parameters reused")
    x.add_argument("--registry", required=True, help=REGISTRY_HELP)
    x.add_argument("--lam", required=True, help="comma-separated, e.g. 0.7,0.3")
    x.add_argument("--reason", required=True, help=REASON_HELP)
    x = ps.add_parser("rollback", help="make an earlier version current again (audited)")
    x.add_argument("--registry", required=True, help=REGISTRY_HELP)
    x.add_argument("--version", required=True, help="the version to make current, e.g. v0001")
    x.add_argument("--reason", required=True, help=REASON_HELP)
    pol.set_defaults(fn=cmd_policy)
