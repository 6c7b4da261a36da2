"""Frontier report: ``frontier.json`` (the DESIGN.md section 4 contract), ``frontier.png``, the
self-contained ``frontier.html`` (rendered by ``puts_jax.report_html``) and a plain-text table for
the CLI.

Input: one ``PolicyEstimates`` (or a dict with the same keys) per set of policies: the lambda
points, and each baseline set (logging policy, production action, every single global action);
``puts_jax.report_estimates`` documents each field's shape and meaning.
Honest numbers (DESIGN.md section 8): every estimate is written with its n, matched rows, ESS and
interval; per-point separability verdicts and an overall verdict say what the data can tell apart.

The parts: ``report_estimates`` (inputs and provenance), ``report_verdicts`` (flags, comparisons,
verdicts, hypervolume, warnings), ``report_json`` (the document: build, validate, read, write as
text), ``report_figure`` (the plot); here ``write_frontier`` writes the three files and
``format_table`` the CLI's table. Every public name of those modules is importable from here.
"""

from __future__ import annotations

import os
from typing import Mapping

from puts_jax import report_html
from puts_jax.action_set import atomic_write_bytes, atomic_write_text
from puts_jax.report_estimates import (PROVENANCE_KEYS, PolicyEstimates, as_estimates,
                                       file_sha256, from_ope, make_provenance)
from puts_jax.report_figure import figure_png, frontier_figure, render_png
from puts_jax.report_json import (BASELINE_KINDS, REQUIRED_KEYS, SCHEMA, build_frontier, dumps,
                                  frontier_point, read_frontier, validate_frontier)
from puts_jax.report_verdicts import LOW_ESS

__all__ = ["BASELINE_KINDS", "LOW_ESS", "PROVENANCE_KEYS", "REQUIRED_KEYS", "SCHEMA",
           "PolicyEstimates", "as_estimates", "build_frontier", "dumps", "file_sha256",
           "format_table", "from_ope", "frontier_figure", "frontier_point", "make_provenance",
           "read_frontier", "render_png", "validate_frontier", "write_frontier"]


def write_frontier(out_dir: str, frontier: Mapping, axes: tuple[int, int] = (0, 1)) -> dict:
    """Write ``frontier.json``, ``frontier.png`` and ``frontier.html`` atomically into
    ``out_dir``; returns their paths {"json": ..., "png": ..., "html": ...}. ``axes`` picks the
    two objectives plotted when J > 2."""
    validate_frontier(frontier)
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"frontier.{k}") for k in ("json", "png", "html")}
    atomic_write_text(paths["json"], dumps(frontier))
    fig = frontier_figure(frontier, axes)
    atomic_write_bytes(paths["png"], figure_png(fig))
    page = report_html.render_html(frontier, report_html.figure_svg(fig, "front-"), LOW_ESS)
    atomic_write_bytes(paths["html"], page.encode("utf-8"))
    return paths


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _fmt_count(v) -> str:
    """A count-like number (ESS, rows) as a rounded integer with separators: 200,000 not 2e+05."""
    return "n/a" if v is None else f"{v:,.0f}"


def _row(name, block_est, i, est, J) -> list[str]:
    b = block_est[est]
    return [name] + [f"{_fmt(b['value'][i][j])} [{_fmt(b['lo'][i][j])}, {_fmt(b['hi'][i][j])}]"
                     for j in range(J)]


def format_table(doc: Mapping, estimator: str | None = None) -> str:
    """Plain-text table: one row per lambda point (estimates with intervals, n, matched, ESS,
    verdict; ``*`` marks the operating point), then the logging, production and best global
    action baselines, the hypervolume, the overall verdict and the warnings."""
    est = estimator or doc["primary_estimator"]
    names = doc["objectives"]["names"]
    J, pts = len(names), doc["points"]
    op = (doc.get("operating_point") or {}).get("index")
    auto = doc.get("auto_estimator") if est == "auto" else None  # what auto resolved to
    head = ["", "lambda"] + [
        f"{n} ({est}{': ' + auto[j] if auto else ''}, {doc['confidence']:.0%} CI)"
        for j, n in enumerate(names)] + ["n", "matched", "matched rewards", "ESS", "verdict"]

    def summed(block, i):  # sum of rewards over matched rows, per objective, when recorded
        m = block.get("matched_rewards")
        return "" if m is None else "/".join(_fmt(x) for x in m[i])

    rows = []
    for i, lam in enumerate(doc["lambdas"]):
        r = _row("(" + ", ".join(f"{v:.3g}" for v in lam) + ")", doc["estimators"], i, est, J)
        rows.append(["*" if i == op else ""] + r + [str(pts["n"][i]), str(pts["matched"][i]),
                                                   summed(pts, i), _fmt_count(pts["ess"][i]),
                                                   doc["verdicts"][i]])
    for kind, bl in doc["baselines"].items():
        keep = range(len(bl["names"]))
        if kind == "actions":
            keep = [i for i, b in enumerate(bl.get("is_best", [])) if b]
        for i in keep:
            if est not in bl["estimators"]:
                continue
            label = f"{kind}: {bl['names'][i]}" + (" (best)" if kind == "actions" else "")
            rows.append([""] + _row(label, bl["estimators"], i, est, J) +
                        [str(bl["n"][i]), str(bl["matched"][i]), summed(bl, i),
                         _fmt_count(bl["ess"][i]), "baseline"])
    widths = [max(len(r[c]) for r in [head] + rows) for c in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows]
    hv = doc["hypervolume"]
    ref = hv["reference"]
    ref = "n/a" if ref is None else "[" + ", ".join(_fmt(x) for x in ref) + "]"
    lines.append(f"hypervolume ({doc['primary_estimator']}): {_fmt(hv['value'])} "
                 f"(reference {ref})")
    lines.append(f"verdict: {doc['verdict']}")
    band = doc.get("band")
    if band:
        counts = {v: band["verdicts"].count(v) for v in dict.fromkeys(band["verdicts"])}
        lines.append(f"simultaneous {band['confidence']:.0%} band ({band['method']}): " +
                     ", ".join(f"{n} {v}" for v, n in counts.items()))
    if doc.get("operating_point"):
        lines.append(f"operating point: {doc['operating_point']['reason']}")
    lines += [f"warning: {w}" for w in doc["warnings"]]
    return "\n".join(lines)
