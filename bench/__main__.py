"""``python -m bench <suite> [--quick]``: run suites, print their tables, write their JSON."""

from __future__ import annotations

import argparse
import os
import sys
import time

from bench import single_thread_env

SUITES = ("serve", "sweep", "latency", "train")


def _parse_batches(text: str) -> tuple[int, ...]:
    """argparse type of --batches: positive integers separated by commas."""
    try:
        out = tuple(int(x) for x in text.split(","))
    except ValueError:
        out = ()
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,8192, got {text!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("suite", choices=SUITES + ("all", "targets"),
                    help="a suite, all of them, or 'targets': print the markdown table of every "
                         "targeted ratio from the results JSON (for the README)")
    ap.add_argument("--quick", action="store_true",
                    help="fewer repetitions (about a minute a suite)")
    ap.add_argument("--batches", type=_parse_batches,
                    help="comma-separated batch sizes (override the suite's)")
    ap.add_argument("--out", default=None, help="results root (default bench/results)")
    ap.add_argument("--no-workers", action="store_true", help="skip multi-process runs")
    ap.add_argument("--device", default="cpu-2core",
                    help="targets: the results folder's device kind (default cpu-2core)")
    ap.add_argument("--readme", default=None,
                    help="targets: also replace the table between the bench-targets markers in "
                         "this markdown file (README.md)")
    ap.add_argument("--all-variants", action="store_true",
                    help="targets: include the experimental variants (fused_exp*, fused_native)")
    args = ap.parse_args(argv)
    if args.suite == "targets":
        from bench import report

        root = args.out or report.RESULTS_DIR
        try:
            table = report.targets_markdown(os.path.join(root, args.device),
                                            library_only=not args.all_variants)
        except FileNotFoundError as e:
            ap.error(str(e))
        print(table, end="")
        if args.readme:
            report.replace_between_markers(args.readme, "bench-targets", table)
        return 0
    single_thread_env()
    batches = args.batches

    import importlib

    def runner(name: str):
        mod = importlib.import_module(f"bench.{'train_suite' if name == 'train' else name}")
        kw = {"batches": batches} if batches else {}
        if name in ("serve", "latency"):
            kw["workers"] = not args.no_workers
        if name == "train":
            kw["multi"] = not args.no_workers
        return lambda quick: mod.run(quick, **kw)

    out_root = args.out
    if out_root is None and (batches or args.no_workers):
        # a partial run must not replace the committed results of the full suite
        from bench import report

        out_root = os.path.join(report.RESULTS_DIR, "partial")
        print(f"(partial run: results go to {out_root}, not the committed bench/results)",
              file=sys.stderr)
    names = SUITES if args.suite == "all" else (args.suite,)
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        print(f"== {name}{' (quick)' if args.quick else ''}", file=sys.stderr)
        rep = _pinned(runner(name), args.quick) if name in ("serve", "sweep") else \
            runner(name)(args.quick)
        path = rep.write(out_root)
        print(f"\n### {name}  ({time.perf_counter() - t0:.1f}s)\n{rep.table(rep_columns(name))}")
        print(f"-> {path}")
    print(f"\ntotal {time.perf_counter() - t_all:.1f}s", file=sys.stderr)
    return 0


def _pinned(run, quick: bool):
    """Run a suite with every thread of this process on one core, so its in-process variants
    are measured per core (XLA's own threads could otherwise use the other core); its worker
    processes pin themselves."""
    from bench import harness

    if not hasattr(os, "sched_getaffinity"):
        return run(quick)
    mask = os.sched_getaffinity(0)
    harness.pin_process({min(mask)})
    try:
        return run(quick)
    finally:
        harness.pin_process(mask)


def rep_columns(name: str) -> list[str]:
    base = ["case", "variant", "compile_s", "p50_us", "p99_us", "per_s"]
    if name == "serve":
        return base + ["us_per_row", "fraction_of_roofline", "action_equal", "topk_score_maxdiff"]
    if name == "sweep":
        return base + ["fraction_of_roofline", "temp_bytes", "maxdiff"]
    if name == "latency":
        return base + ["added_p50", "added_p99"]
    return base


if __name__ == "__main__":
    sys.exit(main())
