"""The frontier plot of a frontier document (``frontier.png``; ``puts_jax.report_html`` embeds the
same figure as SVG): points with interval crosses, the nondominated ones connected, baselines as
distinct markers, the operating point starred. A point or baseline whose value is not finite is
not drawn (the figure counts them as not estimable); one whose interval is not finite is drawn
hollow with no bar. Re-exported by ``puts_jax.report``.
"""

from __future__ import annotations

import io
import textwrap
from typing import Mapping, NamedTuple

import numpy as np


def _arr(x) -> np.ndarray:
    """JSON lists (None for non-finite) back to float arrays (NaN)."""
    return np.asarray([[np.nan if v is None else v for v in row] for row in x], np.float64)


_STYLE = {"logging": dict(marker="s", color="k", label="logging policy"),
          "production": dict(marker="D", color="C3", label="production action"),
          "actions": dict(marker="x", color="0.55", label="single global actions")}


class _Cross(NamedTuple):
    """One set of policies on the plot's axes: the marker at (x, y) f64[P] and the interval
    bounds on each axis (NaN where the data cannot give them)."""

    x: np.ndarray
    y: np.ndarray
    x_lo: np.ndarray
    x_hi: np.ndarray
    y_lo: np.ndarray
    y_hi: np.ndarray

    @property
    def shown(self) -> np.ndarray:
        """bool[P]: the value is finite on both axes (the marker is drawn)."""
        return np.isfinite(self.x) & np.isfinite(self.y)

    @property
    def interval_missing(self) -> np.ndarray:
        """bool[P]: a shown point with a bound that is not finite (no full interval cross)."""
        bounds = np.stack([self.x_lo, self.x_hi, self.y_lo, self.y_hi])
        return self.shown & ~np.isfinite(bounds).all(0)


def _draw_cross(ax, c: _Cross, marker: str, color: str, label: str, ms: float, lw: float,
                zorder: int = 2, alpha: float = 0.9) -> None:
    """Markers where the value is finite; interval segments drawn from lo to hi (not around the
    value: an estimate may lie outside its own exact interval, e.g. an IPS value above 1 with a
    Clopper-Pearson interval clipped at 1) only where both bounds are finite. Shown points whose
    interval the data cannot give are drawn hollow, with no bar."""
    ok = c.shown
    hx = ok & np.isfinite(c.x_lo) & np.isfinite(c.x_hi)
    vy = ok & np.isfinite(c.y_lo) & np.isfinite(c.y_hi)
    if hx.any():
        ax.hlines(c.y[hx], c.x_lo[hx], c.x_hi[hx], color=color, lw=lw, alpha=alpha, zorder=zorder)
    if vy.any():
        ax.vlines(c.x[vy], c.y_lo[vy], c.y_hi[vy], color=color, lw=lw, alpha=alpha, zorder=zorder)
    full = ok & ~c.interval_missing
    if full.any():
        ax.plot(c.x[full], c.y[full], marker, color=color, ms=ms, ls="none", alpha=alpha,
                zorder=zorder + 1, label=label)
    if c.interval_missing.any():
        ax.plot(c.x[c.interval_missing], c.y[c.interval_missing], marker, mfc="white",
                color=color, ms=ms, ls="none", zorder=zorder + 1,
                label=f"{label}: interval not estimable")


def _plot_baselines(ax, doc: Mapping, xy) -> int:
    """Baselines as distinct markers with interval crosses; best global actions emphasized.
    Returns how many baselines have no finite value (not drawn)."""
    hidden = 0
    for n_kind, (kind, bl) in enumerate(doc["baselines"].items()):
        if doc["primary_estimator"] not in bl["estimators"]:
            continue
        st = _STYLE.get(kind, dict(marker="v", color=f"C{4 + n_kind}", label=kind))
        c = xy(bl["estimators"][doc["primary_estimator"]])
        hidden += int((~c.shown).sum())
        _draw_cross(ax, c, st["marker"], st["color"], st["label"], ms=6, lw=0.6, zorder=3)
        if kind == "actions" and any(bl.get("is_best", [])):
            best = np.asarray(bl["is_best"], bool) & c.shown
            ax.plot(c.x[best], c.y[best], "P", color="C1", ms=10, ls="none", zorder=4,
                    label="best global action (on one objective)")
    return hidden


def mark_label(mark: Mapping) -> str:
    """The legend's name of a marked point: "operating point (published v0003)", "operating
    point (selected, not published)" or, for a ``selected_point``, "selected, not published"."""
    if mark.get("status") == "published":
        return f"operating point (published {mark.get('version')})"
    return "operating point (selected, not published)"


def _plot_marks(ax, doc: Mapping, c: _Cross) -> None:
    """The operating point as a gold star, a ``selected_point`` (a selection made after the
    published operating point) as a hollow one; each labelled by what it is (``mark_label``)."""
    op, sp = doc.get("operating_point") or {}, doc.get("selected_point") or {}
    for mark, style, label in ((op, dict(color="gold"), mark_label(op)),
                               (sp, dict(color="white"), "selected, not published")):
        i = mark.get("index")
        if isinstance(i, int) and 0 <= i < len(c.x) and c.shown[i]:
            ax.plot([c.x[i]], [c.y[i]], "*", mec="k", ms=18, ls="none", zorder=6, label=label,
                    **style)


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

    def xy(block) -> _Cross:
        v, lo, hi = (_arr(block[k]) for k in ("value", "lo", "hi"))
        if J == 1:
            idx = np.arange(v.shape[0], dtype=np.float64)
            return _Cross(idx, v[:, 0], idx, idx, lo[:, 0], hi[:, 0])
        return _Cross(v[:, jx], v[:, jy], lo[:, jx], hi[:, jx], lo[:, jy], hi[:, jy])

    c = xy(doc["estimators"][prim])
    x, y = c.x, c.y
    _draw_cross(ax, c, "o", "C0", f"lambda points ({prim}, {doc['confidence']:.0%} CI)", ms=4,
                lw=0.8, alpha=0.8)
    nd = np.asarray(doc["nondominated"], bool) & c.shown
    order = np.argsort(x[nd])
    line, = ax.plot(x[nd][order], y[nd][order], "-", color="C0", lw=1.5, label="nondominated")
    hidden_base = _plot_baselines(ax, doc, xy)
    _plot_marks(ax, doc, c)
    hidden = int((~c.shown).sum())
    if hidden or hidden_base:
        ax.text(0.01, 0.99, f"not estimable, not drawn: {hidden} of {len(x)} lambda points"
                + (f", {hidden_base} baselines" if hidden_base else ""),
                transform=ax.transAxes, fontsize=7, va="top", color="C3")
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
    fig.subplots_adjust(bottom=0.25, top=0.94)
    _label_front(ax, doc, c, np.flatnonzero(nd)[order], line)  # the axes' final pixels
    # Legend below the axes: inside, it would hide the nondominated corner.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    ax.grid(alpha=0.3)
    fig.text(0.01, 0.01, "\n".join(textwrap.wrap(doc["verdict"], 120)), fontsize=7, va="bottom")
    return fig


LABEL_PT = 6.0  # font size of the lambda labels


def _label_front(ax, doc: Mapping, c: _Cross, front: np.ndarray, line) -> None:
    """Lambda labels where they fit on the marked points (operating, selected) and the
    nondominated points ``front`` (in x order): the marked points first, then the ends of the
    front, then the rest; a label that would overlap one already placed (or a marker) is tried
    below its point, else left out, and the legend's "nondominated" entry says how many of the
    front are labelled ("2 of 5 labelled"). Call once the axes' limits and position are final
    (label boxes are computed in pixels)."""
    marks = [m.get("index") for m in (doc.get("operating_point") or {},
                                      doc.get("selected_point") or {})]
    marks = [i for i in marks if isinstance(i, int) and 0 <= i < len(c.x) and c.shown[i]]
    ends = [int(front[0]), int(front[-1])] if len(front) else []
    ranked = list(dict.fromkeys(marks + ends + [int(i) for i in front]))
    texts = {i: "(" + ", ".join(f"{v:.2f}" for v in doc["lambdas"][i]) + ")" for i in ranked}
    if not texts:
        return
    ax.set_xlim(ax.get_xlim())  # freeze the autoscaled limits before measuring
    ax.set_ylim(ax.get_ylim())
    px = ax.transData.transform(np.stack([c.x, c.y], 1))
    fig_dpi = ax.figure.dpi / 72.0  # pixels per point
    markers = [_box(px[i], (0, 0), "", 0.0) for i in ranked]
    chosen = pick_labels(ranked, texts, px, fig_dpi, markers)
    for i, dy in chosen:
        ax.annotate(texts[i], (c.x[i], c.y[i]), fontsize=LABEL_PT, xytext=(3, dy),
                    textcoords="offset points")
    on_front = sum(1 for i, _ in chosen if i in set(front.tolist()))
    if on_front < len(front):
        line.set_label(f"nondominated ({on_front} of {len(front)} labelled)")


def _box(p, off, text: str, ppp: float) -> tuple[float, float, float, float]:
    """The pixel box (x0, y0, x1, y1) of ``text`` at LABEL_PT drawn at offset ``off`` points
    from pixel ``p`` (``ppp``: pixels per point; 0 gives the 6x6-point box of a marker)."""
    if ppp == 0.0:
        return (p[0] - 4.0, p[1] - 4.0, p[0] + 4.0, p[1] + 4.0)
    w, h = 0.62 * LABEL_PT * len(text) * ppp, 1.2 * LABEL_PT * ppp
    x0, y0 = p[0] + off[0] * ppp, p[1] + off[1] * ppp
    return (x0, y0, x0 + w, y0 + h)


def pick_labels(ranked, texts: Mapping, px: np.ndarray, ppp: float,
                blocked: list) -> list[tuple[int, int]]:
    """(index, y offset in points) of each point of ``ranked``, in that order, whose label
    ``texts[i]`` fits above (+3) or below (-9) its pixel position ``px[i]`` (f[P, 2]) without
    overlapping a pixel box (x0, y0, x1, y1) of ``blocked`` or a label already placed; ``ppp``:
    pixels per point."""
    placed, out = list(blocked), []

    def free(b):
        return all(b[2] <= q[0] or q[2] <= b[0] or b[3] <= q[1] or q[3] <= b[1] for q in placed)
    for i in ranked:
        for dy in (3, -9):
            b = _box(px[i], (3, dy), texts[i], ppp)
            if free(b):
                placed.append(b)
                out.append((i, dy))
                break
    return out
