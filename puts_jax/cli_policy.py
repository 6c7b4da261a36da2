"""``puts-jax policy``: the operating-policy registry from the console script, one function per
action (show, select, publish, set-lambda, rollback) and the subcommand's arguments. ``cli``
wires it like every other subcommand; errors are ``UsageError`` / ``NothingSelected`` /
``InputError`` as in ``cli_checks``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from puts_jax.checks import check_distinct_paths
from puts_jax.cli_checks import (NothingSelected, UsageError, check_frontier_matches,
                                 check_out_dir, check_out_file, fields_as_flags, floats,
                                 parse_guardrail, read_frontier)


def _print(msg: str = "") -> None:  # as cli._print: every line reaches a pipe at once
    print(msg, flush=True)


def cmd_policy(args) -> None:
    """Run ``puts-jax policy <policy_cmd>`` on the parsed ``args``; after publish, set-lambda
    and rollback, list the registry's versions (``*`` marks the current one)."""
    from puts_jax import policy

    if args.policy_cmd in ("show", "set-lambda", "rollback"):  # need one, create nothing
        policy.check_registry(args.registry)
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
    _print(json.dumps(shown, indent=1, default=str))
    if shown["current_problem"]:
        raise UsageError(f"--registry: CURRENT {shown['current_problem']}; the versions are "
                         "listed above ('policy rollback --version V' makes one current)")


def _select(args) -> None:
    from puts_jax import report, sweep_job

    if args.out:  # the frontier is rewritten with the operating point marked
        check_out_file("--out", args.out)
        check_distinct_paths({"--out": args.out}, {"--frontier": args.frontier})
    doc = read_frontier(args.frontier)
    names = doc["objectives"]["names"]
    if args.maximize not in names:
        raise UsageError(f"--maximize: unknown objective {args.maximize!r}; known {names}")
    guards = [parse_guardrail(g, names, doc["objectives"].get("directions"))
              for g in args.guardrail]
    sel = sweep_job.select(doc, names.index(args.maximize), guards, args.baseline)
    _print(json.dumps(sel, indent=1, default=str))
    if sel["index"] is None:  # --out is never replaced by a null selection
        raise NothingSelected(sel["reason"] + (f"; --out {args.out} not written (an existing "
                                               "file is kept)" if args.out else ""))
    if args.out:
        from puts_jax.action_set import atomic_write_text
        atomic_write_text(args.out, json.dumps(sel, indent=1, default=str))
    # Mark the operating point on the frontier so frontier.json/png/html show it.
    doc["operating_point"] = {"index": sel["index"], "reason": sel["reason"],
                              "lambda": sel["lambda"], "name": sel["name"]}
    report.write_frontier(os.path.dirname(os.path.abspath(args.frontier)), doc)


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

    check_out_dir("--registry", args.registry)
    model, info = model_io.load_model(args.model)
    doc = read_frontier(args.frontier)
    index, sel = _point_index(args, len(doc["lambdas"]))
    check_frontier_matches(doc, model, args.logs)
    point = report.frontier_point(doc, index)
    if sel is not None:  # the published estimate (the report half's, when the sweep had halves)
        point["selection"] = {k: sel.get(k) for k in ("estimates", "estimates_from", "reason")}
    from puts_jax.data import logs
    aset = logs.read_meta(args.logs).action_set
    v = policy.publish(args.registry, model, aset, np.asarray(point["lambda"], np.float64),
                       point, args.reason, {"model": os.path.abspath(args.model),
                                            "frontier": os.path.abspath(args.frontier),
                                            "train": info.get("extra", {})})
    _print(f"published {v}")


def _print_versions(registry: str) -> None:
    from puts_jax import policy

    shown = policy.show(registry)
    for v in shown["versions"]:
        mark = "*" if v["version"] == shown["current"] else " "
        _print(f"{mark} {v['version']}  {v['action']:<10} lambda={v['lambda']}  "
               f"params={v['params_version']}  {v['reason']}")


def add_parser(sub) -> None:
    """Add ``policy`` and its actions to the console script's subparsers ``sub``."""
    pol = sub.add_parser("policy", help="operating-policy registry")
    ps = pol.add_subparsers(dest="policy_cmd", required=True)
    x = ps.add_parser("show")
    x.add_argument("--registry", required=True)
    x = ps.add_parser("select", help="pick a frontier point under guardrails")
    x.add_argument("--frontier", required=True)
    x.add_argument("--maximize", required=True, help="objective name")
    x.add_argument("--guardrail", action="append", default=[], help="e.g. 'clicks >= -1%%'")
    x.add_argument("--baseline", default="production", choices=("production", "logging"))
    x.add_argument("--out", default=None,
                   help="write the selection JSON here (only when a point is selected)")
    x = ps.add_parser("publish")
    x.add_argument("--registry", required=True)
    x.add_argument("--model", required=True)
    x.add_argument("--frontier", required=True)
    x.add_argument("--logs", required=True, help="a log of the action set (its metadata)")
    x.add_argument("--point", type=int, default=None, help="frontier point index")
    x.add_argument("--selection", default=None, help="selection JSON of 'policy select --out'")
    x.add_argument("--reason", required=True)
    x = ps.add_parser("set-lambda")
    x.add_argument("--registry", required=True)
    x.add_argument("--lam", required=True, help="comma-separated, e.g. 0.7,0.3")
    x.add_argument("--reason", required=True)
    x = ps.add_parser("rollback")
    x.add_argument("--registry", required=True)
    x.add_argument("--version", required=True)
    x.add_argument("--reason", required=True)
    pol.set_defaults(fn=cmd_policy)
