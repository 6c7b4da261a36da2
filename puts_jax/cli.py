"""``puts-jax``: the console script. It only wires library calls; each subcommand is one function.

  simulate      write a simulated data set (exploration logs, request set, ground truth)
  data obd      convert the Open Bandit Dataset (the obp sample or a full copy) to our format
  data split    split a log by request id into two files, written as one pair
  sweep         evaluate every lambda policy on a log, write frontier.json / .png / .html
  policy        publish | select | set-lambda | rollback | show  (the operating-policy registry)
  score         batch-score a request set with the current operating policy
  truth         simulator only: true values of the learned and reference policies vs estimates
  report        re-render frontier.png / table from a frontier.json
  plan          exploration planning: interval half-widths and detectable lifts over days

``policy`` lives in ``cli_policy`` and ``plan`` in ``cli_plan``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from puts_jax import cli_plan, cli_policy, hostmem
from puts_jax.checks import InputError, check_distinct_paths
from puts_jax.cli_checks import (NothingSelected, UsageError, as_flag, check_inputs,
                                 ArgumentParser, check_out_dir, check_out_file,
                                 fields_as_flags, print_line as _print, read_frontier,
                                 sigterm_raises, Terminated, write_error)
from puts_jax.cli_policy import cmd_policy  # re-exported: ``policy`` lives in cli_policy


# checks.check_propensity's advice is a library argument (floor=) that no flag sets; the console
# script says what its user can do instead
LIBRARY_FLOOR_HINT = "pass an explicit floor to clip"
CLI_FLOOR_HINT = "fix the log's propensities or drop those rows (puts-jax does not clip)"


# ----------------------------------------------------------------------------- simulate / data

def cmd_simulate(args) -> None:
    from puts_jax.data import simulator

    check_out_dir("--out", args.out)
    cfg = simulator.SimConfig.tiny() if args.preset == "tiny" else simulator.SimConfig.default()
    if args.miscalibration is not None:
        import dataclasses
        cfg = dataclasses.replace(cfg, miscalibration=args.miscalibration)
    t0 = time.perf_counter()
    paths = simulator.write_simulation(args.out, cfg, args.n_logs, args.n_heldout, args.n_eval,
                                       args.n_requests, args.seed, n_evaluation=args.n_evaluation,
                                       slate_matching=args.slate_matching)
    _print(f"simulated in {time.perf_counter() - t0:.1f}s:")
    for k, p in paths.items():
        _print(f"  {k:<11} {p}")


def cmd_data_obd(args) -> None:
    from puts_jax.data import obd

    check_out_dir("--out", args.out)
    with fields_as_flags({"data_root": "--root"}):
        paths = obd.convert_obd(args.out, data_root=args.root, campaign=args.campaign,
                                behavior=args.behavior, grid_steps=args.grid_steps)
    with open(paths["summary"]) as f:
        summary = json.load(f)
    _print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (list, dict))},
                      indent=1))
    for k, p in paths.items():
        _print(f"  {k:<9} {p}")


def cmd_data_split(args) -> None:
    from puts_jax.data import logs

    check_distinct_paths({"--out-a": args.out_a, "--out-b": args.out_b}, {"--logs": args.logs})
    check_out_file("--out-a", args.out_a)
    check_out_file("--out-b", args.out_b)
    rows = 0  # the whole log through the reader first: a bad value is named by its row in
    for _, ids, _ in logs.iter_log_chunks(args.logs):  # --logs, not later in a split file
        rows += len(ids)
    if rows == 0:
        raise UsageError(f"--logs: {args.logs} has no rows: nothing to split (nothing written)")
    na, nb = logs.split_log(args.logs, args.out_a, args.out_b, args.share, args.seed)
    _print(f"{na} rows -> {args.out_a}\n{nb} rows -> {args.out_b}")


# ----------------------------------------------------------------------------- sweep

def cmd_sweep(args) -> None:
    from puts_jax import sweep_job

    check_out_dir("--out", args.out)
    warns: list[str] = []  # the log's own: rows training saw, a dominating reward
    doc, paths = sweep_job.run_sweep(args.model, args.logs, args.out, n_lambdas=args.n_lambdas,
                                     chunk_rows=args.chunk_rows, primary=args.estimator,
                                     bootstrap=args.bootstrap, seed=args.seed,
                                     halves=args.halves, log_warnings=warns)
    from puts_jax import report
    _print(report.format_table(doc))
    for k, p in paths.items():
        _print(f"  {k:<9} {p}")
    for w in warns:  # README: the frontier log must be one training did not see
        print(f"puts-jax: warning: --logs: {w}", file=sys.stderr)


def cmd_report(args) -> None:
    """``report``: before anything is rendered, the folder it writes (``--out``, else the
    frontier's own, named as --frontier) must take files, and the frontier's blocks must fit
    each other (``cli_policy.check_frontier``, as ``policy select`` checks them); the files and
    the table are rendered in memory (an error there names --frontier), then published as one
    set."""
    from puts_jax import report

    out = args.out if args.out is not None else os.path.dirname(os.path.abspath(args.frontier))
    try:
        check_out_dir("--out" if args.out is not None else "--frontier", out)
    except UsageError as e:
        hint = "" if args.out is not None else (
            "; report rewrites the frontier's files in their folder: give --out DIR to write "
            "them elsewhere")
        raise UsageError(f"{e}{hint}") from None
    doc = read_frontier(args.frontier)
    cli_policy.check_frontier(doc, args.frontier)
    try:
        files = report.render_frontier(doc)
        table = report.format_table(doc)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        why = f"{type(e).__name__}: {e}"
        raise UsageError(f"--frontier: {args.frontier}: cannot be rendered "
                         f"({why if len(why) <= 120 else why[:117] + '...'}); nothing written"
                         ) from None
    report.publish_files(out, {f"frontier.{k}": b for k, b in files.items()})
    _print(table)
    for k in files:
        _print(f"  {k:<9} {os.path.join(out, f'frontier.{k}')}")


# ----------------------------------------------------------------------------- score / truth


REGISTRY_FILES = ("CURRENT", "params_hash")  # policy.load's fields: files inside --policy


def cmd_score(args) -> None:
    from puts_jax import policy, score_job

    check_out_file("--out", args.out)
    check_distinct_paths({"--out": args.out}, {"--requests": args.requests})
    try:
        policy.check_registry(args.policy)
    except InputError as e:
        raise InputError("--policy", [], e.msg) from None
    try:
        with fields_as_flags({"out_path": "--out", "requests_path": "--requests",
                              "registry": "--policy"}):
            stats = score_job.score_file(args.policy, args.requests, args.out,
                                         chunk_rows=args.chunk_rows, top_k=args.top_k,
                                         version=args.version)
    except InputError as e:  # the registry's own files (a broken CURRENT) are --policy's
        if e.source or e.field not in REGISTRY_FILES:
            raise
        raise e.in_source("--policy") from None
    for path in stats["stale_temps_removed"]:
        _print(f"removed {path} (left by a killed score run)")
    _print(f"scored {stats['rows']} requests ({stats['no_candidates']} without candidates, "
           f"{stats['nonfinite_preds']} non-finite predictions dropped) in {stats['seconds']:.2f}s"
           f" ({stats['compile_seconds']:.2f}s of it compiling, once per batch shape): "
           f"{stats['rows_per_second']:,.0f} requests/s without compiling -> {args.out}")


def cmd_truth(args) -> None:
    from puts_jax import sweep_job

    read_frontier(args.frontier)  # a wrong file is named before any work
    missing = [f for f in ("truth.npz", "evaluation.parquet")
               if not os.path.isfile(os.path.join(args.data, f))]
    if missing:
        raise UsageError(f"--data: {args.data} is not a simulator output (no {' or '.join(missing)}"
                         "; 'puts-jax simulate --out DIR' writes one)")
    table = sweep_job.truth_table(args.data, args.model, args.frontier, args.registry)
    _print(table)


# ----------------------------------------------------------------------------- parser

def _add_simulate(sub) -> None:
    """``simulate``: write a simulated data set."""
    s = sub.add_parser("simulate", help="write a simulated data set")
    s.add_argument("--out", required=True, help="output folder (created if missing)")
    s.add_argument("--preset", choices=("tiny", "default"), default="default",
                   help="simulator world: tiny (smoke tests) or default")
    s.add_argument("--n-logs", type=int, default=300_000, help="training exploration log rows")
    s.add_argument("--n-heldout", type=int, default=100_000, help="checkpoint-selection log rows")
    s.add_argument("--n-evaluation", type=int, default=200_000, help="frontier (OPE) log rows")
    s.add_argument("--n-eval", type=int, default=20_000, help="fresh requests with exact truth")
    s.add_argument("--n-requests", type=int, default=5_000, help="request set rows to score")
    s.add_argument("--miscalibration", type=float, default=None,
                   help="scale of the ranker's per-segment distortion, 0 to 100 (0 = "
                        "calibrated; the preset's default is 1.0)")
    s.add_argument("--seed", type=int, default=0, help="world and log draws, 0 to 2**32 - 1")
    s.add_argument("--slate-matching", action="store_true",
                   help="logs carry ranker preds (P / pbar) and slate-level consistent actions "
                        "with slate propensities (same draws; more matched rows per policy)")
    s.set_defaults(fn=cmd_simulate)


def _add_data(sub) -> None:
    """``data obd`` and ``data split``: convert and split logs."""
    d = sub.add_parser("data", help="convert external logs").add_subparsers(dest="data_cmd",
                                                                          required=True)
    o = d.add_parser("obd", help="Open Bandit Dataset -> exploration log + request set")
    o.add_argument("--out", required=True, help="output folder (created if missing)")
    o.add_argument("--root", default=None, help="full dataset root (default: the obp sample)")
    o.add_argument("--campaign", default="all", choices=("all", "men", "women"),
                   help="which OBD campaign's logs")
    o.add_argument("--behavior", default="random", choices=("random", "bts"),
                   help="which OBD logging policy: uniform random (the exploration log the "
                        "estimators need) or Bernoulli Thompson sampling (file propensities)")
    o.add_argument("--grid-steps", type=int, default=4,
                   help="simplex grid steps over the 3 heads, 1 to 14: (steps + 1)(steps + 2)/2 "
                        "actions")
    o.set_defaults(fn=cmd_data_obd)
    o = d.add_parser("split", help="split a log by request id (e.g. training vs evaluation rows)")
    o.add_argument("--logs", required=True, help="exploration log to split (Parquet)")
    o.add_argument("--out-a", required=True, help="the other rows")
    o.add_argument("--out-b", required=True, help="a SHARE of the rows")
    o.add_argument("--share", type=float, default=0.5,
                   help="share of the rows (by request-id hash) that go to --out-b")
    o.add_argument("--seed", type=int, default=0, help="request-id hash seed, 0 to 2**32 - 1")
    o.set_defaults(fn=cmd_data_split)


def _add_sweep_and_report(sub) -> None:
    """``sweep`` (evaluate the lambda policies, write the frontier) and ``report``."""
    w = sub.add_parser("sweep", help="evaluate lambda policies on a log; write the frontier")
    w.add_argument("--model", required=True, help="exported model directory (spec.json)")
    w.add_argument("--logs", required=True, help="exploration log not used for training")
    w.add_argument("--out", required=True,
                   help="folder for frontier.json / .png / .html (created if missing)")
    w.add_argument("--n-lambdas", type=int, default=21,
                   help="lambda points on the objectives' simplex (at most 1,001)")
    w.add_argument("--chunk-rows", type=int, default=65536,
                   help="log rows streamed a chunk (memory, not results: the estimates agree "
                        "to float32 rounding)")
    w.add_argument("--estimator", default=None, choices=("auto", "snips", "ips", "dr", "exact"),
                   help="primary estimator for flags, verdicts and the table (default auto: "
                        "exact Clopper-Pearson where valid, SNIPS elsewhere)")
    w.add_argument("--bootstrap", type=int, default=200,
                   help="Poisson-bootstrap resamples R for SNIPS percentile intervals, the "
                        "simultaneous band and dominance probabilities (0: none, Bonferroni band)")
    w.add_argument("--seed", type=int, default=0, help="bootstrap seed (same seed, same draws)")
    w.add_argument("--halves", action=argparse.BooleanOptionalAction, default=True,
                   help="also estimate on each half of the log (split by request-id hash) so "
                        "that 'policy select' chooses on one half and reports the other's "
                        "estimate, free of the winner's curse (default on; about 2x the time)")
    w.set_defaults(fn=cmd_sweep)

    r = sub.add_parser("report", help="re-render a frontier.json")
    r.add_argument("--frontier", required=True, help="frontier.json of 'puts-jax sweep'")
    r.add_argument("--out", default=None,
                   help="folder to write the files into (default: the frontier's own folder)")
    r.set_defaults(fn=cmd_report)


def _add_score_and_truth(sub) -> None:
    """``score`` (batch-score a request set) and ``truth`` (simulator only)."""
    c = sub.add_parser("score", help="batch-score a request set")
    c.add_argument("--policy", required=True, help="registry directory")
    c.add_argument("--requests", required=True, help="request set (Parquet)")
    c.add_argument("--out", required=True, help="scored output file (Parquet)")
    c.add_argument("--version", default=None,
                   help="registry version to score with, e.g. v0002 (default: CURRENT)")
    c.add_argument("--top-k", type=int, default=10,
                   help="candidates kept per request (all of them when a request has fewer)")
    c.add_argument("--chunk-rows", type=int, default=8192, help="requests scored a chunk")
    c.set_defaults(fn=cmd_score)

    t = sub.add_parser("truth", help="simulator ground truth vs estimates")
    t.add_argument("--data", required=True, help="simulate --out directory")
    t.add_argument("--model", required=True, help="exported model directory (spec.json)")
    t.add_argument("--frontier", required=True,
                   help="frontier.json estimated on --data's evaluation.parquet")
    t.add_argument("--registry", default=None,
                   help="also show the registry's CURRENT operating policy at its lambda")
    t.set_defaults(fn=cmd_truth)


def build_parser() -> argparse.ArgumentParser:
    """The ``puts-jax`` argument parser: one subcommand per ``cmd_*`` (``args.fn``); every
    parser's help shows the options' defaults (``cli_checks.HelpFormatter``)."""
    p = ArgumentParser(prog="puts-jax", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (_add_simulate, _add_data, _add_sweep_and_report, cli_policy.add_parser,
                _add_score_and_truth, cli_plan.add_parser):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status 0; 2 for bad input (one line ``puts-jax: error: ...`` naming
    the flag where the input came from one); 3 when ``policy select`` selects nothing; 130 on
    Ctrl-C (also while parsing; the console script's ``puts_jax_entry`` covers the imports);
    143 on SIGTERM (``cli_checks.Terminated``: the same cleanup as Ctrl-C, so no staging folder
    or temp file is left);
    141 = 128 + SIGPIPE, quietly, when the reader of stdout went away (``| head -1``)."""
    try:
        with sigterm_raises():
            return _run(argv)
    except Terminated:  # SIGTERM: cleaned up as for Ctrl-C
        print("puts-jax: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("puts-jax: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _stdout_gone()


def _source_as_flag(source: str | None, args) -> str | None:
    """A library error whose source is the registry or model folder a flag gave ('reg5') names
    that flag too ('--policy reg5', '--model DIR'): a bare folder name says less than a file's.
    (Errors in a file keep the ``FILE: FIELD`` form the README documents.)"""
    for name in ("policy", "registry", "model"):
        if source is not None and getattr(args, name, None) == source:
            return f"--{name.replace('_', '-')} {source}"
    return source


def _stdout_gone() -> int:
    """The reader of stdout closed it (``puts-jax policy show --registry R | head -1``): stdout
    is pointed at devnull, so that the interpreter's flush at exit does not fail again, and the
    exit status is 141 with nothing printed, as for a command that SIGPIPE ended (Python's
    signal docs, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor (a captured stdout)
        pass
    return 141


def _run(argv: list[str] | None) -> int:
    """``main`` without its Ctrl-C and broken-pipe endings: parse, check, run, and map an error
    to its one line and exit status."""
    args = build_parser().parse_args(argv)
    hostmem.keep_scratch_resident()  # compiled passes reuse their scratch, no fault per page
    try:
        check_inputs(args)
        args.fn(args)
    except InputError as e:  # a library field that came from a flag is named as the flag
        msg = e.msg.replace(LIBRARY_FLOOR_HINT, CLI_FLOOR_HINT)
        e = InputError(e.field if e.source else as_flag(e.field, args), e.rows, msg,
                       _source_as_flag(e.source, args))
        print(f"puts-jax: error: {e}", file=sys.stderr)
        return 2
    except UsageError as e:
        print(f"puts-jax: error: {e}", file=sys.stderr)
        return 2
    except NothingSelected as e:
        print(f"puts-jax: nothing selected: {e}", file=sys.stderr)
        return 3
    except BrokenPipeError:  # an OSError, but no error of the input: main ends quietly
        raise
    except (OSError, ValueError, KeyError, IndexError) as e:
        config = re.fullmatch(r"(\w+Config\.\w+): (.*)", str(e), re.S)  # config dataclasses
        if write_error(e, args):  # a full disk or a read-only folder: the output's flag
            print(f"puts-jax: error: {write_error(e, args)}", file=sys.stderr)
        elif isinstance(e, ValueError) and config and as_flag(config[1], args) != config[1]:
            print(f"puts-jax: error: {as_flag(config[1], args)}: {config[2]}", file=sys.stderr)
        else:
            print(f"puts-jax: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
