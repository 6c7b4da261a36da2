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

import math
import os
from typing import Mapping

from puts_jax import report_html, staging
from puts_jax.action_set import atomic_write_bytes
from puts_jax.report_estimates import (PROVENANCE_KEYS, PolicyEstimates, as_estimates,
                                       file_sha256, from_ope, make_provenance)
from puts_jax.report_figure import figure_png, frontier_figure, render_png
from puts_jax.report_json import (BASELINE_KINDS, REQUIRED_KEYS, SCHEMA, build_frontier, dumps,
                                  frontier_point, place_mark, read_frontier, unmark_published,
                                  validate_frontier)
from puts_jax.report_verdicts import LOW_ESS, best_global_actions, within_noise_entries

__all__ = ["BASELINE_KINDS", "FRONTIER_STAGING", "LOW_ESS", "PROVENANCE_KEYS", "REQUIRED_KEYS",
           "SCHEMA", "PolicyEstimates", "as_estimates", "best_global_action_lines",
           "build_frontier", "dumps", "file_sha256", "format_table", "from_ope", "frontier_figure",
           "frontier_point", "make_provenance", "mark_lines", "place_mark", "publish_files",
           "read_frontier", "unmark_published",
           "recover_frontier", "render_frontier", "render_png", "validate_frontier",
           "with_runner_ups", "within_noise_lines", "write_frontier"]


def render_frontier(frontier: Mapping, axes: tuple[int, int] = (0, 1)) -> dict[str, bytes]:
    """The three files of a frontier document as bytes, {"json": ..., "png": ..., "html": ...},
    rendered in memory (nothing written). Raises InputError for a document missing keys."""
    validate_frontier(frontier)
    fig = frontier_figure(frontier, axes)
    page = report_html.render_html(with_runner_ups(frontier), report_html.figure_svg(fig, "front-"),
                                   LOW_ESS, within_noise_entries(frontier))
    return {"json": dumps(frontier).encode("utf-8"), "png": figure_png(fig),
            "html": page.encode("utf-8")}


FRONTIER_STAGING = ".frontier-staging"  # staging folder of a frontier set inside its out_dir


def _target(out_dir: str) -> staging.Target:
    return staging.Target(out_dir, FRONTIER_STAGING, "the new frontier files",
                          f"the next frontier written into {out_dir}")


def write_frontier(out_dir: str, frontier: Mapping, axes: tuple[int, int] = (0, 1)) -> dict:
    """Write ``frontier.json``, ``frontier.png`` and ``frontier.html`` into ``out_dir`` as one
    set; returns their paths {"json": ..., "png": ..., "html": ...}. ``axes`` picks the two
    objectives plotted when J > 2.

    All three are rendered in memory first, then published as one set (``publish_files``):
    after an error, an interrupt or a kill ``out_dir`` holds its previous complete set or the new
    complete set, never a mix, and a folder this call created is removed again when nothing was
    moved into it. Raises InputError for a document missing keys or an ``out_dir`` that is a
    file, and what ``publish_files`` raises."""
    data = render_frontier(frontier, axes)
    publish_files(out_dir, {f"frontier.{k}": b for k, b in data.items()})
    return {k: os.path.join(out_dir, f"frontier.{k}") for k in data}


def publish_files(out_dir: str, files: Mapping[str, bytes]) -> None:
    """Write ``files`` {name: bytes} into ``out_dir`` as one set (``puts_jax.staging``): each
    into the staging folder ``out_dir/.frontier-staging`` (fsynced), a COMPLETE marker, then all
    moved in with SIGINT deferred. On an error or an interrupt before the marker, the staging
    folder is deleted, ``out_dir`` keeps its old files, and the folders this call created are
    removed. A staging folder that a killed call left is settled first (``recover_frontier``).
    Raises:
      InputError("out"): ``out_dir`` or a parent is a file (nothing written).
      OSError: a move into ``out_dir`` failed; the message names the file, and the next call
        moves the rest in first.
    """
    def write(stage: str) -> None:  # through this module's name, so tests can interrupt it
        for name, data in files.items():
            atomic_write_bytes(os.path.join(stage, name), data)
    staging.publish(_target(out_dir), list(files), write)


def recover_frontier(out_dir: str) -> str | None:
    """Settle the staging folder a killed ``publish_files`` left in ``out_dir``: its set is moved
    in when it was complete ("completed"), deleted when not ("removed"; the old files stay);
    None when there is none. Call it before reading frontier files from ``out_dir``. Raises
    OSError when a move fails (the message names the file)."""
    return staging.recover(_target(out_dir))


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _fmt_count(v) -> str:
    """A count-like number (ESS, rows) as a rounded integer with separators: 200,000 not 2e+05."""
    return "n/a" if v is None else f"{v:,.0f}"


def _cell(v, lo, hi) -> str:
    """One estimate with its interval; "not estimable" when the value is not a number."""
    return "not estimable" if v is None else f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]"


def _row(name, block_est, i, est, J) -> list[str]:
    b = block_est[est]
    return [name] + [_cell(b["value"][i][j], b["lo"][i][j], b["hi"][i][j]) for j in range(J)]


def _summary_lines(doc: Mapping, missing: bool) -> list[str]:
    """The lines under the table: hypervolume, what "not estimable" / "n/a" mean (``missing``:
    the table shows either), the verdict and the simultaneous band, each naming the estimates it
    rests on, the operating point and the warnings."""
    hv = doc["hypervolume"]
    ref = hv["reference"]
    ref = "n/a" if ref is None else "[" + ", ".join(_fmt(x) for x in ref) + "]"
    lines = [f"hypervolume ({doc['primary_estimator']}): {_fmt(hv['value'])} (reference {ref})"]
    if missing:
        lines.append("not estimable: no finite estimate from these data; n/a: an interval bound "
                     "the data cannot give (e.g. no matched rows, or every matched reward equal);"
                     " the plot draws neither as an interval bar")
    lines.append(f"verdict (per-point {doc['confidence']:.0%} intervals of the "
                 f"{doc['primary_estimator']} estimates): {doc['verdict']}")
    band = doc.get("band")
    if band:
        counts = {v: band["verdicts"].count(v) for v in dict.fromkeys(band["verdicts"])}
        crit = band.get("critical", 0.0)
        why = ("; the band is undefined: some point's estimate is undefined or unbounded in too "
               "many resamples (too few matched rows)"
               if crit is None or not math.isfinite(crit) else "")
        lines.append(f"simultaneous {band['confidence']:.0%} band on the "
                     f"{band.get('estimator', 'snips').upper()} estimates ({band['method']}): " +
                     ", ".join(f"{n} {v}" for v, n in counts.items()) + why)
    lines += within_noise_lines(doc)
    lines += best_global_action_lines(doc) + mark_lines(doc)
    return lines + [f"warning: {w}" for w in doc["warnings"]]


MAX_NOISE_LINES = 12  # nondominated points listed in the table's "within noise" lines


def within_noise_lines(doc: Mapping) -> list[str]:
    """The table's "within noise" lines: per nondominated point (and the marked points, ``*``
    the operating point, ``+`` a selection), the other nondominated points and how many of all
    points the data cannot tell apart from it (``report_verdicts.within_noise_entries``), as runs
    of lambdas; at most ``MAX_NOISE_LINES`` points (the marked ones always), then a count of the
    rest. No lines when no nondominated point is estimable."""
    entries = within_noise_entries(doc)
    if not entries:
        return []
    labels = [report_html.noise_label(lam) for lam in doc["lambdas"]]
    n_nd = sum(bool(x) for x in doc["nondominated"])
    shown = [e for e in entries if e["mark"]]
    shown += [e for e in entries if not e["mark"]][:max(MAX_NOISE_LINES - len(shown), 0)]
    shown.sort(key=lambda e: e["index"])
    marks = {e["mark"] for e in shown} - {""}
    key = ", ".join(t for m, t in (("*", "* operating point"), ("+", "+ selected")) if m in marks)
    lines = [f"within noise (the data cannot tell them apart: {doc['confidence']:.0%} intervals "
             f"of the {doc['primary_estimator']} estimates overlap on every objective), per "
             f"nondominated point{f' ({key})' if key else ''}:"]
    for e in shown:
        nd, every = report_html.within_noise_text(e, labels, n_nd)
        lines.append(f"  {e['mark'] or ' '} {labels[e['index']]}: {nd}; of all points, {every}")
    if len(shown) < len(entries):
        rest = len(entries) - len(shown)
        lines.append(f"  ... and {rest} more nondominated point{'s' if rest != 1 else ''} "
                     "(frontier.html and frontier.json's \"within_noise\" list each)")
    return lines


def mark_lines(doc: Mapping) -> list[str]:
    """The table's lines on the marked points: the operating point (``*``), said to be the
    registry's published version ("published as v0003 (registry R)") or a selection that is not
    published, and a ``selected_point`` (``+``) made after the published one."""
    op, sp = doc.get("operating_point"), doc.get("selected_point")
    if not op:
        return []
    if op.get("index") is None:
        return [f"operating point: {op['reason']}"]
    lines = [f"operating point (*): {op['name']}, " + (
        f"published as {op.get('version')} (registry {op.get('registry')})"
        if op.get("status") == "published" else "selected, not published") + f": {op['reason']}"]
    if sp:
        lines.append(f"selected (+), not published: {sp['name']}: {sp['reason']}")
    return lines


def with_runner_ups(doc: Mapping) -> Mapping:
    """``doc``, or for a frontier written before runner-ups were recorded a copy whose "actions"
    baseline has "best", "is_best", "runner_up" and "best_apart" computed from its primary
    estimates (``report_verdicts.best_global_actions``, as a sweep records them now); for
    rendering only: ``doc`` itself is not changed, and frontier.json is written as read."""
    acts, prim = doc["baselines"].get("actions"), doc["primary_estimator"]
    if not acts or "runner_up" in acts or prim not in acts["estimators"]:
        return doc
    obj = doc["objectives"]
    acts = {**acts, **best_global_actions(acts["estimators"][prim], obj["directions"],
                                          obj["names"])}
    return {**doc, "baselines": {**doc["baselines"], "actions": acts}}


def best_global_action_lines(doc: Mapping) -> list[str]:
    """One line per objective on the frontier's best global action (the single action with the
    best primary estimate of that objective, ``report_verdicts.best_global_actions``): which
    action, its estimate, and whether its interval is apart from the runner-up's ("not tested
    against the runner-up" where a bound is missing). No lines without an "actions" baseline."""
    acts, prim = with_runner_ups(doc)["baselines"].get("actions"), doc["primary_estimator"]
    if not acts or prim not in acts["estimators"]:
        return []
    e, names = acts["estimators"][prim], acts["names"]
    pct, lines = f"{doc['confidence']:.0%}", []
    for j, (obj, d) in enumerate(zip(doc["objectives"]["names"], doc["objectives"]["directions"])):
        b = (acts.get("best") or {}).get(obj)
        head = (f"best global action on {obj} (the {'lowest' if d == 'min' else 'highest'} "
                f"{prim} estimate of {obj} among the {len(names)} single actions): ")
        if b is None:
            lines.append(head + "none (no action has a finite estimate)")
            continue
        head += f"{names[b]}, {_cell(e['value'][b][j], e['lo'][b][j], e['hi'][b][j])}; "
        r, apart = acts["runner_up"].get(obj), acts["best_apart"].get(obj)
        if r is None:
            lines.append(head + "no runner-up with a finite estimate")
        else:
            ru = f"runner-up {names[r]}, {_cell(e['value'][r][j], e['lo'][r][j], e['hi'][r][j])}"
            lines.append(head + ru + (
                ": not tested against the runner-up (an interval bound is not available)"
                if apart is None else
                f": {pct} intervals disjoint, ahead of the runner-up" if apart else
                f": {pct} intervals overlap, within noise of the runner-up"))
    return lines


def format_table(doc: Mapping, estimator: str | None = None) -> str:
    """Plain-text table: one row per lambda point (estimates with intervals, n, matched, ESS,
    verdict; ``*`` marks the operating point, ``+`` a selection that is not it), then the
    logging, production and best global action baselines, the hypervolume, the overall verdict,
    the points within noise of each nondominated one (``within_noise_lines``), the best global
    actions against their runner-ups (``best_global_action_lines``), the marked points
    (``mark_lines``) and the warnings."""
    est = estimator or doc["primary_estimator"]
    names = doc["objectives"]["names"]
    J, pts = len(names), doc["points"]
    op = (doc.get("operating_point") or {}).get("index")
    sp = (doc.get("selected_point") or {}).get("index")
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
        rows.append(["*" if i == op else "+" if i == sp else ""] + r +
                    [str(pts["n"][i]), str(pts["matched"][i]), summed(pts, i),
                     _fmt_count(pts["ess"][i]), doc["verdicts"][i]])
    for kind, bl in doc["baselines"].items():
        keep = range(len(bl["names"]))
        if kind == "actions":
            keep = [i for i, b in enumerate(bl.get("is_best", [])) if b]
        for i in keep:
            if est not in bl["estimators"]:
                continue
            on = [n for n, k in (bl.get("best") or {}).items() if k == i]
            label = (f"best global action ({', '.join(on)}): {bl['names'][i]}"
                     if kind == "actions" else f"{kind}: {bl['names'][i]}")
            rows.append([""] + _row(label, bl["estimators"], i, est, J) +
                        [str(bl["n"][i]), str(bl["matched"][i]), summed(bl, i),
                         _fmt_count(bl["ess"][i]), "baseline"])
    widths = [max(len(r[c]) for r in [head] + rows) for c in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows]
    missing = any(c == "not estimable" or "n/a" in c for r in rows for c in r[2:2 + J])
    lines += _summary_lines(doc, missing)
    return "\n".join(lines)
