"""The figures of ``frontier.html`` (``report_html``): a matplotlib figure as inline SVG, and the
per-lambda plot (each objective's primary estimate with its interval band, the baselines as lines,
the effective sample size and matched rows). Also the labels the page's table shares with them,
and the within-noise lists (``point_runs``, ``within_noise_text``) the page and the CLI's table
share.
"""

from __future__ import annotations

import io
import re
from typing import Mapping, Sequence

import numpy as np

DIR_WORD = {"max": "higher is better", "min": "lower is better"}
BASELINE_LABEL = {"logging": "logging policy", "production": "production action",
                  "actions": "single global actions"}


def _arr(rows) -> np.ndarray:
    """JSON rows (None for non-finite) -> f64 array with NaN."""
    return np.asarray([[np.nan if v is None else v for v in row] for row in rows], np.float64)


def lambda_label(lam: Sequence[float]) -> str:
    """A lambda f[J] as text, two decimals each: "(0.25, 0.75)"."""
    return "(" + ", ".join(f"{v:.2f}" for v in lam) + ")"


def point_runs(idx, labels, max_runs: int = 4) -> str:
    """Point indices (ascending) as runs of consecutive points, each named by its label:
    "(1, 0) to (0.6, 0.4), (0.3, 0.7)" (a run of two is both labels); past ``max_runs`` runs,
    "and N more" (points)."""
    runs: list[list[int]] = []
    for q in idx:
        if runs and q == runs[-1][1] + 1:
            runs[-1][1] = q
        else:
            runs.append([q, q])
    parts = [labels[a] if a == b else f"{labels[a]}, {labels[b]}" if b == a + 1 else
             f"{labels[a]} to {labels[b]}" for a, b in runs[:max_runs]]
    rest = sum(b - a + 1 for a, b in runs[max_runs:])
    return ", ".join(parts) + (f" and {rest} more" if rest else "")


def within_noise_text(entry: Mapping, labels, n_nondominated: int) -> tuple[str, str]:
    """(among the other nondominated points, among all points) for one entry of
    ``report_verdicts.within_noise_entries``: which points the data cannot tell apart from it,
    as counts and runs of lambda ``labels`` (the shorter list: the points within noise, or
    "all but" those told apart)."""
    w, apart = entry["within_noise_of"], entry["told_apart_from"]
    n_other = len(w) + len(apart)  # the other estimable points
    others = f"{n_other} other{'s' if n_other != 1 else ''}"
    if not w:
        every = f"none of {others}"
    elif not apart:
        every = "the other one" if n_other == 1 else f"all {others}"
    elif len(w) <= len(apart):
        every = f"{len(w)} of {others}: {point_runs(w, labels)}"
    else:
        every = f"{len(w)} of {others}: all but {point_runs(apart, labels)}"
    ndw = entry["nondominated_within_noise_of"]
    k = n_nondominated - (1 if entry["nondominated"] else 0)
    nd = ("no other nondominated point" if k == 0 else
          f"none of the {k} other nondominated" if not ndw else
          f"{len(ndw)} of {k} other nondominated: {point_runs(ndw, labels)}")
    return nd, every


def noise_label(lam) -> str:
    """A lambda as the table and the within-noise lists name it: "(0.7, 0.3)" (3 digits)."""
    return "(" + ", ".join(f"{v:.3g}" for v in lam) + ")"


# ----------------------------------------------------------------------------- figures

def figure_svg(fig, prefix: str) -> str:
    """A matplotlib Figure as an inline ``<svg>`` element: text as text, no XML prolog, DOCTYPE,
    metadata or namespace URLs (the HTML parser supplies the SVG namespace), every element id and
    reference prefixed with ``prefix`` so two figures on one page never share an id."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "puts_jax"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    svg = re.sub(r'\bid="', f'id="{prefix}', svg)
    svg = svg.replace('href="#', f'href="#{prefix}').replace("url(#", f"url(#{prefix}")
    return svg.strip()


def _baseline_lines(ax, doc: Mapping, j: int) -> None:
    """Horizontal lines at the logging, production and best-global-action values of objective j
    (the numbers are in the table)."""
    prim = doc["primary_estimator"]
    for kind, st in (("logging", dict(color="k", ls="--")),
                     ("production", dict(color="C3", ls=":"))):
        bl = doc["baselines"].get(kind)
        if bl and prim in bl["estimators"]:
            v = _arr(bl["estimators"][prim]["value"])[0, j]
            if np.isfinite(v):
                ax.axhline(v, lw=1.2, label=BASELINE_LABEL[kind], **st)
    acts = doc["baselines"].get("actions")
    best = (acts or {}).get("best", {}).get(doc["objectives"]["names"][j])
    if best is not None and prim in acts["estimators"]:
        v = _arr(acts["estimators"][prim]["value"])[best, j]
        if np.isfinite(v):
            ax.axhline(v, color="C1", ls="-.", lw=1.2, label="best global action on this objective")


def lambda_figure(doc: Mapping, low_ess: float):
    """Per-lambda panels: one per objective (primary estimate, its interval band, nondominated
    points filled, baselines as lines), then the effective sample size and matched rows. For J = 2
    the x axis is the weight on the first objective; otherwise the point index."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names, dirs = doc["objectives"]["names"], doc["objectives"]["directions"]
    prim, conf = doc["primary_estimator"], doc["confidence"]
    lam = np.asarray(doc["lambdas"], np.float64)
    P, J = lam.shape
    x = lam[:, 0] if J == 2 else np.arange(P, dtype=np.float64)
    b = doc["estimators"][prim]
    v, lo, hi = (_arr(b[k]) for k in ("value", "lo", "hi"))
    nd = np.asarray(doc["nondominated"], bool)
    op = (doc.get("operating_point") or {}).get("index")
    height = 1.7 * (J + 1) + 1.4  # inches: panels plus the title and legend band on top
    fig = Figure(figsize=(7.5, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(J + 1, 1, sharex=True)
    for j, ax in enumerate(axes[:J]):
        ax.fill_between(x, lo[:, j], hi[:, j], color="C0", alpha=0.18, lw=0,
                        label=f"{conf:.0%} interval")
        ax.plot(x, v[:, j], "-", color="C0", lw=1.2, label=f"{prim} estimate")
        ax.plot(x[nd], v[nd, j], "o", color="C0", ms=5, label="nondominated")
        ax.plot(x[~nd], v[~nd, j], "o", mfc="white", color="C0", ms=5, label="dominated")
        _baseline_lines(ax, doc, j)
        ax.set_ylabel(f"{names[j]}\n({DIR_WORD[dirs[j]]})", fontsize=8)
    ax = axes[J]
    ess, matched = np.asarray(doc["points"]["ess"], np.float64), doc["points"]["matched"]
    ax.plot(x, ess, "-o", color="C2", ms=4, lw=1.2, label="effective sample size")
    ax.plot(x, matched, "x", color="0.3", ms=6, label="matched rows")
    ax.axhline(low_ess, color="C3", ls=":", lw=1, label=f"low-ESS warning ({low_ess:g})")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("rows", fontsize=8)
    n = doc["points"]["n"]
    ax.set_title(f"n = {max(n):,} logged row{'s' if max(n) != 1 else ''} per point", fontsize=8,
                 loc="left")
    handles = {}
    for a in axes:  # one legend for the figure: panels would hide their own curves
        for h, lab in zip(*a.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    for a in axes:
        a.grid(alpha=0.3)
        a.tick_params(labelsize=7.5)
        if op is not None:
            a.axvline(x[op], color="goldenrod", lw=2, alpha=0.8)
    if J == 2:
        ax.set_xlabel(f"lambda = weight on {names[0]} (1 - lambda on {names[1]})", fontsize=8)
    else:
        ax.set_xticks(x, [lambda_label(r) for r in lam], rotation=60, fontsize=6)
        ax.set_xlabel("lambda", fontsize=8)
    fig.suptitle(f"Per-lambda estimates ({prim}, {conf:.0%} intervals)"
                 + ("; gold line: operating point" if op is not None else ""), fontsize=10)
    fig.legend(list(handles.values()), list(handles), fontsize=6.5, ncol=3, loc="upper center",
               bbox_to_anchor=(0.5, 1 - 0.4 / height))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.9 / height))
    return fig
