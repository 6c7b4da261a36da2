"""``frontier.html``: one self-contained page for a frontier document (``report.build_frontier``).

The page needs no network: CSS is inline, the figures are inline SVG made with matplotlib (text
kept as text, namespace and metadata URLs removed, element ids prefixed per figure), and there
is no script. It shows, in order: the overall verdict (coloured by what the data can tell
apart), the operating point, the warnings, the frontier plot (``report.frontier_figure``:
interval crosses, baselines, the operating point), a per-lambda plot (each objective's primary
estimate with its interval band, the baselines as lines, the effective sample size), a table of
every number (each estimator's value and interval per objective, n, matched rows, matched
rewards, ESS, comparisons with the baselines, verdict) for the points and every baseline, the
hypervolume and the provenance. Honest numbers, DESIGN.md section 8: nothing is shown without its
interval and sample size.

Everything here is string and figure building; ``report.write_frontier`` writes the file. The
figures (``figure_svg``, ``lambda_figure``) are made in ``report_html_figures``.
"""

from __future__ import annotations

import html
from typing import Mapping

import numpy as np

from puts_jax.report_html_figures import (BASELINE_LABEL, DIR_WORD, figure_svg, lambda_figure,
                                          lambda_label, noise_label, point_runs,
                                          within_noise_text)

__all__ = ["CSS", "figure_svg", "lambda_figure", "noise_label", "point_runs", "render_html",
           "within_noise_text"]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;
 margin:0;background:#f4f5f7}
main{max-width:1340px;margin:0 auto;padding:18px 22px 40px}
h1{font-size:22px;margin:4px 0 2px}h2{font-size:17px;margin:0 0 8px}
.sub{color:#555;margin:0 0 14px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:14px 16px;
 margin:0 0 14px}
.verdict{border-left:8px solid #2f7d32}
.verdict.caution{border-left-color:#d98c00;background:#fff9ec}
.verdict.bad{border-left-color:#b3261e;background:#fdf0ef}
.verdict .big{font-size:19px;font-weight:600;margin:2px 0 8px}
.counts{display:flex;flex-wrap:wrap;gap:6px 18px;color:#333;margin:0;padding:0;list-style:none}
.counts b{font-variant-numeric:tabular-nums}
.warn li{color:#8a4b00}.muted{color:#666}
.figs{display:flex;flex-wrap:wrap;gap:14px}
figure{flex:1 1 560px;margin:0;min-width:0}figure svg{width:100%;height:auto;display:block}
figcaption{color:#555;font-size:12.5px;margin-top:4px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:12.5px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #e0e3e7;padding:3px 6px;text-align:right;vertical-align:top;
 white-space:nowrap}
th{background:#f0f2f5;text-align:center}td.name,th.name{text-align:left}
td .ci{display:block;color:#666;font-size:11px}td.vcell{white-space:normal;min-width:150px}
.prim{background:#eef5ff}tr.group th{background:#e4e8ee;text-align:left}
tr.op td{background:#fff6cf}tr.op td.prim{background:#f7edc0}
.v-nondominated{color:#1b5e20;font-weight:600}.v-clearly-dominated{color:#8a1c1c}
.v-not-separable{color:#8a4b00}.v-not-estimable{color:#b3261e;font-weight:600}
span.ne{color:#b3261e}
.cmp-better{color:#1b5e20}.cmp-worse{color:#8a1c1c}
table.kv td{text-align:left;white-space:normal;word-break:break-all}
table.kv td.k{white-space:nowrap;color:#444;word-break:normal}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _num(v) -> str:
    """A number for the page; None / NaN (not estimable) as an em dash."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "\u2014"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return f"{v:.4f}" if abs(v) < 100 else f"{v:,.1f}"


def _count(n, word: str) -> str:
    """"1 log row", "200,000 log rows" (an unknown count as an em dash)."""
    return f"{_num(n)} {word}{'' if n == 1 else 's'}"


def _ess(v) -> str:
    return "\u2014" if v is None else f"{v:,.1f}"


# ----------------------------------------------------------------------------- within noise

def _noise_section(doc: Mapping, noise) -> str:
    """The "Within noise" section: one row per entry of ``noise`` (``render_html``)."""
    if noise is None:
        return ""
    labels = [noise_label(lam) for lam in doc["lambdas"]]
    n_nd = sum(bool(x) for x in doc["nondominated"])
    rows = []
    for e in noise:
        nd, every = within_noise_text(e, labels, n_nd)
        what = ("nondominated" if e["nondominated"] else doc["verdicts"][e["index"]]) + {
            "*": ", operating point", "+": ", selected"}.get(e["mark"], "")
        mark = "\u2605" if e["mark"] == "*" else e["mark"]
        rows.append(f'<tr><td>{_e(mark)}</td><td class="name">{_e(labels[e["index"]])}</td>'
                    f'<td class="name">{_e(what)}</td><td class="name vcell">{_e(nd)}</td>'
                    f'<td class="name vcell">{_e(every)}</td></tr>')
    pct, prim = f"{doc['confidence']:.0%}", doc["primary_estimator"]
    body = ("<p class=\"muted\">no nondominated point is estimable</p>" if not rows else
            '<div class="scroll"><table id="noise"><thead><tr><th></th><th class="name">lambda'
            '</th><th class="name">point</th><th class="name">within noise: other nondominated '
            'points</th><th class="name">within noise: all points</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table></div>")
    return (f'<section id="within-noise"><h2>Within noise</h2><p>Which points the data cannot '
            f"tell apart from each nondominated point: their {pct} intervals of the "
            f"{_e(prim)} estimates overlap on every objective.</p>{body}</section>")


# ----------------------------------------------------------------------------- table

def _estimators(doc: Mapping) -> list[str]:
    """The non-primary estimators, in document order."""
    return [e for e in doc["estimators"] if e != doc["primary_estimator"]]


def _est_cells(block_est: Mapping, i: int, ests: list[str], J: int, cls: str) -> str:
    """Per objective, per estimator: value with the interval below it."""
    cells = []
    for j in range(J):
        for e in ests:
            b = block_est.get(e)
            if b is None:
                cells.append(f'<td class="{cls}">\u2014</td>')
                continue
            v, lo, hi = b["value"][i][j], b["lo"][i][j], b["hi"][i][j]
            if _num(v) == "\u2014":
                cells.append(f'<td class="{cls}">\u2014<span class="ci ne">not estimable'
                             "</span></td>")
            elif "\u2014" in (_num(lo), _num(hi)):
                cells.append(f'<td class="{cls}">{_num(v)}<span class="ci ne">[{_num(lo)}, '
                             f"{_num(hi)}] interval not estimable</span></td>")
            else:
                cells.append(f'<td class="{cls}">{_num(v)}<span class="ci">[{_num(lo)}, '
                             f"{_num(hi)}]</span></td>")
    return "".join(cells)


def _verdict_cell(text: str) -> str:
    kind = text.split(" (")[0].replace(" ", "-")
    return f'<td class="name vcell v-{_e(kind)}">{_e(text)}</td>'


def _cmp_cell(block: Mapping, key: str, i: int) -> str:
    row = block.get(key)
    if row is None:
        return "<td>\u2014</td>"
    spans = (f'<span class="cmp-{_e(c)}">{_e(c)}</span>' for c in row[i])
    return "<td>" + " / ".join(spans) + "</td>"


def _row(cls: str, marker: str, name: str, lam: str | None, block: Mapping, est: Mapping, i: int,
         doc: Mapping, verdict: str) -> str:
    """One table row: the primary estimate per objective, the sample sizes, the comparisons with
    the baselines and the verdict first (they fit the screen), then every other estimator."""
    J, prim = len(doc["objectives"]["names"]), doc["primary_estimator"]
    mr = block.get("matched_rewards")
    mr_text = "\u2014" if mr is None else " / ".join(
        _num(int(x)) if x is not None and float(x).is_integer() else _num(x) for x in mr[i])
    if lam is not None and name != f"lambda={lam}":  # sweep names already carry the lambda
        name_cell = f'{_e(name)}<span class="ci">lambda {_e(lam)}</span>'
    else:
        name_cell = _e(name)
    cmp = _cmp_cell(block, "vs_logging", i) + _cmp_cell(block, "vs_production", i)
    return (f'<tr class="{cls}" data-index="{i}"><td>{marker}</td><td class="name">{name_cell}</td>'
            f"{_est_cells(est, i, [prim], J, 'est prim')}"
            f"<td>{_num(block['n'][i])}</td><td>{_num(block['matched'][i])}</td><td>{mr_text}</td>"
            f"<td>{_ess(block['ess'][i])}</td>{cmp}{_verdict_cell(verdict)}"
            f"{_est_cells(est, i, _estimators(doc), J, 'est')}</tr>")


def _head(doc: Mapping) -> str:
    names, dirs = doc["objectives"]["names"], doc["objectives"]["directions"]
    ests = _estimators(doc)
    pct, prim = f"{doc['confidence']:.0%}", doc["primary_estimator"]
    one = '<th rowspan="2">{}</th>'.format
    row1 = ("<tr>" + one("") + '<th rowspan="2" class="name">policy</th>'
            + f'<th colspan="{len(names)}" class="prim">{_e(prim)} (primary): value '
              f"[{pct} interval]</th>"
            + "".join(one(h) for h in ("n", "matched", "matched<br>rewards", "ESS", "vs logging",
                                       "vs production"))
            + '<th rowspan="2" class="name">verdict</th>'
            + "".join(f'<th colspan="{len(ests)}">{_e(n)}: other estimators</th>'
                      for n in names if ests) + "</tr>")
    row2 = ("<tr>" + "".join(f'<th class="prim">{_e(n)}<br>({_e(DIR_WORD[d])})</th>'
                             for n, d in zip(names, dirs))
            + "".join(f"<th>{_e(e)}</th>" for _ in names for e in ests) + "</tr>")
    return row1 + row2


def _best_global(doc: Mapping, acts: Mapping, obj: str) -> str:
    """'best global action on OBJ (...)' for the estimates table: the single action with the
    best primary estimate of objective OBJ, and whether its interval is apart from the
    runner-up's (``report_verdicts.best_global_actions``; "not tested against the runner-up"
    where the block does not say)."""
    j = doc["objectives"]["names"].index(obj)
    word = "lowest" if doc["objectives"]["directions"][j] == "min" else "highest"
    r = (acts.get("runner_up") or {}).get(obj)
    apart = (acts.get("best_apart") or {}).get(obj)
    pct = f"{doc['confidence']:.0%}"
    vs = ("not tested against the runner-up" if r is None or apart is None else
          f"{pct} intervals disjoint from the runner-up's ({acts['names'][r]})" if apart else
          f"within noise of the runner-up ({acts['names'][r]}): {pct} intervals overlap")
    return f"best global action on {obj} ({word} {doc['primary_estimator']} estimate; {vs})"


def _table(doc: Mapping) -> str:
    width = 10 + len(doc["objectives"]["names"]) * len(doc["estimators"])
    op = (doc.get("operating_point") or {}).get("index")
    sp = (doc.get("selected_point") or {}).get("index")
    pts = doc["points"]
    rows = [f'<tr class="group"><th colspan="{width}">lambda points</th></tr>']
    for i, lam in enumerate(doc["lambdas"]):
        rows.append(_row("point op" if i == op else "point",
                         "\u2605" if i == op else "+" if i == sp else "",
                         pts["names"][i], lambda_label(lam), pts, doc["estimators"], i, doc,
                         doc["verdicts"][i]))
    for kind, bl in doc["baselines"].items():
        label = BASELINE_LABEL.get(kind, kind)
        rows.append(f'<tr class="group"><th colspan="{width}">baseline: {_e(label)}</th></tr>')
        best = bl.get("best") or {}
        for i, name in enumerate(bl["names"]):
            tops = [o for o, k in best.items() if k == i]
            verdict = "baseline" if kind != "actions" else (
                f"{bl['verdicts'][i]} (among actions)"
                + "".join(f"; {_best_global(doc, bl, o)}" for o in tops))
            rows.append(_row("baseline best" if tops else "baseline", "", name, None, bl,
                             bl["estimators"], i, doc, verdict))
    return (f'<div class="scroll"><table id="estimates"><thead>{_head(doc)}</thead><tbody>'
            + "".join(rows) + "</tbody></table></div>")


# ----------------------------------------------------------------------------- page sections

def _verdict_section(doc: Mapping) -> str:
    d = doc["verdict_detail"]
    if d.get("estimable", 1) == 0:
        cls = "bad"
    elif not d.get("any_separable_pair", True) or (
            d.get("nondominated_pairs", 0) and d.get("separable_nondominated_pairs", 0) == 0):
        cls = "caution"
    else:
        cls = "ok"
    counts = "".join(f"<li>{_e(k.replace('_', ' '))}: <b>{_e(v)}</b></li>" for k, v in d.items())
    hv = doc["hypervolume"]
    hv_text = (f"hypervolume ({_e(doc['primary_estimator'])}) {_num(hv['value'])}"
               + (f"; single global actions {_num(hv['global_actions'])}"
                  if hv.get("global_actions") is not None else ""))
    return (f'<section id="verdict" class="verdict {cls}"><h2>Verdict</h2>'
            f'<p class="big">{_e(doc["verdict"])}</p><ul class="counts">{counts}'
            f"<li>{hv_text}</li></ul></section>")


def _operating_section(doc: Mapping) -> str:
    op = doc.get("operating_point")
    if not op:
        return ('<section id="operating-point"><h2>Operating point</h2><p class="muted">none '
                "selected in this document (<code>puts-jax policy select</code> picks one under "
                "guardrails)</p></section>")
    if op.get("index") is None:
        return (f'<section id="operating-point"><h2>Operating point</h2><p><b>no point '
                f"selected</b>: {_e(op['reason'])}</p></section>")
    status = (f"published as {_e(op.get('version'))} (registry {_e(op.get('registry'))}): "
              "the policy in production when this page was written"
              if op.get("status") == "published" else
              "selected with <code>policy select --out</code>, not published")
    sp = doc.get("selected_point")
    more = "" if not sp else (
        f"<h2>+ Selected, not published: {_e(sp['name'])}</h2>{_mark_text(doc, sp)}")
    return (f'<section id="operating-point"><h2>\u2605 Operating point: {_e(op["name"])}</h2>'
            f"<p><b>{status}</b></p>"
            f"{_mark_text(doc, op)}{more}</section>")


def _mark_text(doc: Mapping, mark: Mapping) -> str:
    """A marked point's lambda, primary estimates, verdict and reason."""
    i, prim = mark["index"], doc["primary_estimator"]
    b = doc["estimators"][prim]
    est = "; ".join(f"{_e(n)} {_num(b['value'][i][j])} [{_num(b['lo'][i][j])}, "
                    f"{_num(b['hi'][i][j])}]" for j, n in enumerate(doc["objectives"]["names"]))
    return (f"<p>lambda {_e(lambda_label(mark['lambda']))}; {_e(prim)}: {est}; verdict "
            f"<b>{_e(doc['verdicts'][i])}</b></p><p class=\"muted\">{_e(mark['reason'])}</p>")


def _warnings_section(doc: Mapping) -> str:
    w = doc["warnings"]
    body = ('<ul class="warn">' + "".join(f"<li>{_e(x)}</li>" for x in w) + "</ul>") if w else \
        ('<p class="muted">none (every point has matched rows and an adequate effective sample '
         "size)</p>")
    return f'<section id="warnings"><h2>Warnings ({len(w)})</h2>{body}</section>'


def _kv(rows) -> str:
    return ('<table class="kv">' + "".join(f'<tr><td class="k">{_e(k)}</td><td>{_e(v)}</td></tr>'
                                           for k, v in rows) + "</table>")


def _provenance_section(doc: Mapping) -> str:
    prov, hv = doc["provenance"], doc["hypervolume"]
    rows = []
    for k, v in prov.items():
        if k == "data_files":
            rows += [(f"data file {p}", f"sha256 {h}") for p, h in v.items()]
        else:
            rows.append((k, "\u2014" if v is None else v))
    hv_rows = [(f"hypervolume ({doc['primary_estimator']})", _num(hv["value"])),
               ("reference point", "\u2014" if hv["reference"] is None
                else ", ".join(_num(x) for x in hv["reference"])),
               ("reference rule", hv["reference_rule"]),
               ("points excluded (non-finite)", hv.get("excluded_nonfinite", 0))]
    if "global_actions" in hv:
        hv_rows.append(("hypervolume of the single global actions", _num(hv["global_actions"])))
    return (f'<section id="hypervolume"><h2>Hypervolume</h2>{_kv(hv_rows)}</section>'
            f'<section id="provenance"><h2>Provenance</h2>{_kv(rows)}</section>')


def render_html(doc: Mapping, frontier_svg: str, low_ess: float = 30.0, noise=None) -> str:
    """The whole page as a string. ``frontier_svg``: the frontier plot as inline SVG
    (``figure_svg(report.frontier_figure(doc))``); the per-lambda plot is made here. ``noise``:
    ``report_verdicts.within_noise_entries(doc)``, shown as the "Within noise" section (none
    without it)."""
    names = doc["objectives"]["names"]
    prov = doc["provenance"]
    lam_svg = figure_svg(lambda_figure(doc, low_ess), "lam-")
    objs = ", ".join(f"{n} ({d})" for n, d in zip(names, doc["objectives"]["directions"]))
    sub = (f"objectives: {_e(objs)}"
           f"; primary estimator <b>{_e(doc['primary_estimator'])}</b>; {doc['confidence']:.0%} "
           f"intervals; {_count(len(doc['lambdas']), 'lambda point')}; "
           f"{_count(prov.get('rows'), 'log row')}; "
           f"created {_e(prov.get('created'))}")
    legend = ("verdicts: <i>nondominated</i> = no other point beats it by point estimate; "
              "<i>clearly dominated</i> = another point is better with non-overlapping intervals; "
              "<i>not separable</i> = dominated by point estimate only, the intervals overlap; "
              "<i>not estimable</i> = no finite estimate (a cell reads <i>not estimable</i>; "
              "one whose interval the data cannot give reads <i>interval not estimable</i>, and "
              "the frontier plot draws it hollow with no bar). vs logging / vs production: per "
              "objective, <i>better</i> / <i>worse</i> when the intervals are disjoint. "
              "\u2605 marks the operating point, + a selection that is not published; \u2014 marks "
              "a number not available.")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>puts_jax frontier: {_e(', '.join(names))}</title><style>{CSS}</style></head>"
        f'<body><main><h1>Empirical Pareto frontier</h1><p class="sub">{sub}</p>'
        f"{_verdict_section(doc)}{_noise_section(doc, noise)}{_operating_section(doc)}"
        f"{_warnings_section(doc)}"
        '<section id="figures"><h2>Frontier and per-lambda estimates</h2><div class="figs">'
        f"<figure>{frontier_svg}<figcaption>lambda points with {doc['confidence']:.0%} interval "
        "crosses on both objectives, nondominated points connected, baselines as distinct "
        "markers.</figcaption></figure>"
        f"<figure>{lam_svg}<figcaption>each objective's primary estimate against lambda with its "
        "interval band; the effective sample size and matched rows below.</figcaption></figure>"
        f'</div></section><section id="table"><h2>Every estimate</h2>{_table(doc)}'
        f'<p class="muted">{legend}</p></section>{_provenance_section(doc)}'
        f'<p class="muted">puts_jax {_e(prov.get("package_version"))}; schema '
        f"{_e(doc['schema'])}; this page is self-contained (no network, no script).</p>"
        "</main></body></html>\n")
