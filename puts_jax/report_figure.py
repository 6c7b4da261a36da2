"""The frontier plot of a frontier document (``frontier.png``; ``puts_jax.report_html`` embeds the
same figure as SVG): points with interval crosses, the nondominated ones connected, baselines as
distinct markers, the operating point starred. Re-exported by ``puts_jax.report``.
"""

from __future__ import annotations

import io
import textwrap
from typing import Mapping

import numpy as np


def _arr(x) -> np.ndarray:
    """JSON lists (None for non-finite) back to float arrays (NaN)."""
    return np.asarray([[np.nan if v is None else v for v in row] for row in x], np.float64)


_STYLE = {"logging": dict(marker="s", color="k", label="logging policy"),
          "production": dict(marker="D", color="C3", label="production action"),
          "actions": dict(marker="x", color="0.55", label="single global actions")}


def _plot_baselines(ax, doc: Mapping, xy) -> None:
    """Baselines as distinct markers with interval crosses; best global actions emphasized."""
    for n_kind, (kind, bl) in enumerate(doc["baselines"].items()):
        if doc["primary_estimator"] not in bl["estimators"]:
            continue
        st = _STYLE.get(kind, dict(marker="v", color=f"C{4 + n_kind}", label=kind))
        bx, by, bxl, bxh, byl, byh = xy(bl["estimators"][doc["primary_estimator"]])
        ax.errorbar(bx, by, xerr=[bxl, bxh], yerr=[byl, byh], fmt=st["marker"], color=st["color"],
                    ms=6, elinewidth=0.6, capsize=2, alpha=0.9, label=st["label"], ls="none",
                    zorder=3)
        if kind == "actions" and any(bl.get("is_best", [])):
            best = np.asarray(bl["is_best"], bool)
            ax.plot(bx[best], by[best], "P", color="C1", ms=10, ls="none", zorder=4,
                    label="best global action")


def render_png(doc: Mapping, axes: tuple[int, int] = (0, 1)) -> bytes:
    """The frontier as PNG bytes (``frontier_figure``)."""
    return figure_png(frontier_figure(doc, axes))


def figure_png(fig) -> bytes:
    """A matplotlib Figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def frontier_figure(doc: Mapping, axes: tuple[int, int] = (0, 1)):
    """The frontier as a matplotlib Figure: points with interval crosses on both objectives, the
    nondominated ones connected, baselines as distinct markers, the operating point starred."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names, dirs = doc["objectives"]["names"], doc["objectives"]["directions"]
    prim = doc["primary_estimator"]
    J = len(names)
    jx, jy = (axes if J >= 2 else (0, 0))
    fig = Figure(figsize=(7.5, 6.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)

    def xy(block):
        v, lo, hi = (_arr(block[k]) for k in ("value", "lo", "hi"))
        if J == 1:
            idx = np.arange(v.shape[0], dtype=np.float64)
            return idx, v[:, 0], np.zeros_like(idx), np.zeros_like(idx), v[:, 0] - lo[:, 0], hi[:, 0] - v[:, 0]
        return (v[:, jx], v[:, jy], v[:, jx] - lo[:, jx], hi[:, jx] - v[:, jx],
                v[:, jy] - lo[:, jy], hi[:, jy] - v[:, jy])

    x, y, xl, xh, yl, yh = xy(doc["estimators"][prim])
    nd = np.asarray(doc["nondominated"], bool)
    ax.errorbar(x, y, xerr=[xl, xh], yerr=[yl, yh], fmt="o", color="C0", ms=4, alpha=0.8,
                elinewidth=0.8, capsize=2, label=f"lambda points ({prim}, {doc['confidence']:.0%} CI)")
    order = np.argsort(x[nd])
    ax.plot(x[nd][order], y[nd][order], "-", color="C0", lw=1.5, label="nondominated")
    for k, i in enumerate(np.flatnonzero(nd)[order]):  # labels alternate above / below
        lam = doc["lambdas"][i]
        ax.annotate("(" + ", ".join(f"{v:.2f}" for v in lam) + ")", (x[i], y[i]), fontsize=6,
                    xytext=(3, 3 if k % 2 == 0 else -9), textcoords="offset points")
    _plot_baselines(ax, doc, xy)
    op = doc.get("operating_point")
    if op and op.get("index") is not None:
        i = op["index"]
        ax.plot([x[i]], [y[i]], "*", color="gold", mec="k", ms=18, ls="none", label="operating point")
    word = {"max": "higher is better", "min": "lower is better"}
    if J == 1:
        ax.set_xlabel("point")
        ax.set_ylabel(f"{names[0]} ({word[dirs[0]]})")
    else:
        ax.set_xlabel(f"{names[jx]} ({word[dirs[jx]]})")
        ax.set_ylabel(f"{names[jy]} ({word[dirs[jy]]})")
    hv = doc["hypervolume"]["value"]
    ax.set_title(f"Empirical Pareto frontier, hypervolume {hv:.4g}" if hv is not None
                 else "Empirical Pareto frontier", fontsize=10)
    # Legend below the axes: inside, it would hide the nondominated corner.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    ax.grid(alpha=0.3)
    fig.text(0.01, 0.01, "\n".join(textwrap.wrap(doc["verdict"], 120)), fontsize=7, va="bottom")
    fig.subplots_adjust(bottom=0.25, top=0.94)
    return fig
