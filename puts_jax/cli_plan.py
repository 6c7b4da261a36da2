"""``puts-jax plan``: exploration planning from the console script (``planning``: expected
interval half-widths and minimum detectable lifts over days), and its arguments. ``cli`` wires
it like every other subcommand; every number is checked before the table, the error naming its
flag.
"""

from __future__ import annotations

import numpy as np

from puts_jax.cli_checks import fields_as_flags, floats, print_line as _print


def _too_large(args, delta: float) -> str:
    """Why a lift cannot be detected at all: on the requests where the two policies differ, the
    lambda policy's binary rate would have to pass 1 (``planning.max_gap``), or the gap is so
    small that the rows it needs pass float64's range."""
    from puts_jax import planning

    gap = float(planning.max_gap(args.base_rate, args.agreement, args.reward_var))
    if delta > gap:
        return (f"not detectable: a binary rate cannot pass 1 (at base {args.base_rate:g} and "
                f"--agreement {args.agreement:g} the largest possible gap is "
                f"{planning.number(gap, '+')})")
    return "not detectable: it needs more than 1e308 logged rows"


def cmd_plan(args) -> None:
    """``plan``: every number is checked before the table (``planning.plan``, ``check_lift``:
    finite and in range, the error naming its flag)."""
    from puts_jax import planning

    with fields_as_flags({"n_actions": "--actions"}):
        days = (sorted(set(floats("--days", args.days, "1,7,28"))) if args.days is not None
                else planning.day_grid(args.max_days))  # one row a day count, ascending
        kw = dict(agreement=args.agreement, reward_var=args.reward_var)
        p = planning.plan(args.actions, args.share, args.requests_per_day, args.base_rate, days,
                          alpha=args.alpha, power=args.power, **kw)
        delta = None if args.lift is None else planning.check_lift(args.lift, args.base_rate)
    per_day = args.requests_per_day * args.share
    kind = "binary" if args.reward_var is None else f"variance {args.reward_var:g}"
    _print(f"uniform exploration over A = {args.actions} actions: {args.share:.4g} of "
           f"{planning.count(args.requests_per_day)} requests/day = "
           f"{planning.count(per_day)} logged rows/day; base {args.base_rate:g} ({kind}); a "
           f"lambda policy vs a baseline agreeing on {planning.percent(args.agreement)} of "
           f"requests; two-sided {args.alpha:g} test, {planning.percent(args.power)} power")
    _print(planning.format_plan(p, args.base_rate, args.alpha, args.power, args.reward_var))
    if delta is not None:
        for label, disjoint in (("paired test", False), ("disjoint intervals", True)):
            n = float(planning.requests_for_lift(delta, args.base_rate, args.actions,
                                                 alpha=args.alpha, power=args.power,
                                                 disjoint=disjoint, **kw))
            _print(f"a {args.lift * 100:+.4g}% lift ({planning.number(delta, '+')}) with "
                   f"{label}: " + (f"{planning.count(n)} logged rows = "
                                   f"{planning.days_text(n / per_day)}" if np.isfinite(n)
                                   else _too_large(args, delta)))
    _print("matched/point = n / A (also the ESS of a deterministic target); the frontier calls a "
           "point better than a baseline only when their intervals are disjoint (last column)")


def add_parser(sub) -> None:
    """``plan``: exploration planning."""
    pl = sub.add_parser("plan", help="exploration planning (half-widths, detectable lifts)")
    pl.add_argument("--actions", type=int, required=True, help="action-set size A")
    pl.add_argument("--share", type=float, required=True,
                    help="share of traffic under uniform exploration, e.g. 0.05")
    pl.add_argument("--requests-per-day", type=float, required=True,
                    help="requests a day, all traffic (up to 1e11)")
    pl.add_argument("--base-rate", type=float, required=True,
                    help="baseline reward rate (binary objective), e.g. 0.415")
    days = pl.add_mutually_exclusive_group()  # either the day counts or the grid's end
    days.add_argument("--days", default=None, help="comma-separated day counts, e.g. 1,7,14,28")
    days.add_argument("--max-days", type=float, default=28.0,
                      help="day grid up to this (not with --days)")
    pl.add_argument("--agreement", type=float, default=0.0,
                    help="share of requests on which the lambda policy and the baseline pick the "
                         "same action (0 = conservative)")
    pl.add_argument("--reward-var", type=float, default=None,
                    help="reward variance for a non-binary objective (default: binary)")
    pl.add_argument("--alpha", type=float, default=0.05,
                    help="two-sided test level of the detectable lifts")
    pl.add_argument("--power", type=float, default=0.8,
                    help="power of the detectable lifts")
    pl.add_argument("--lift", type=float, default=None,
                    help="relative lift to plan for, e.g. 0.03: prints the days it needs")
    pl.set_defaults(fn=cmd_plan)
