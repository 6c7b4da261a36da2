"""Frontier report: ``frontier.json`` (the DESIGN.md section 4 contract), ``frontier.png``, the
self-contained ``frontier.html`` (rendered by ``puts_jax.report_html``) and a plain-text table for
the CLI.

Input: one ``PolicyEstimates`` (or a dict with the same keys) per set of policies: the lambda
points, and each baseline set (logging policy, production action, every single global action).

  names:     list[str] [P]           labels, e.g. "lambda=(0.3, 0.7)" or "action 4"
  estimates: {estimator: {"value": f64[P, J], "lo": f64[P, J], "hi": f64[P, J]}}
             estimator names such as "ips", "snips", "dr", "exact"; lo/hi bound the interval at
             the report's ``confidence`` (0.95); NaN where an estimator cannot give a number
  n:         i64[P] (or a scalar) log rows evaluated
  matched:   i64[P] rows whose logged decision is consistent with the policy's
  ess:       f64[P] effective sample size of the importance weights, (sum w)^2 / sum w^2

``puts_jax.ope`` produces these quantities per lambda; adapt its output with a dict.
Honest numbers (DESIGN.md section 8): every estimate is written with its n, matched rows, ESS and
interval; per-point separability verdicts and an overall verdict say what the data can tell apart.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import math
import os
import textwrap
from typing import Mapping, NamedTuple, Sequence

import numpy as np

import puts_jax
from puts_jax import pareto, report_html
from puts_jax.action_set import atomic_write_bytes, atomic_write_text
from puts_jax.checks import InputError

SCHEMA = "puts_jax.frontier/1"
LOW_ESS = 30.0  # points with an effective sample size below this get a warning
BASELINE_KINDS = ("logging", "production", "actions")  # known kinds; others are kept as given
REQUIRED_KEYS = ("schema", "objectives", "confidence", "primary_estimator", "lambdas", "points",
                 "estimators", "nondominated", "verdicts", "hypervolume", "baselines",
                 "operating_point", "verdict", "verdict_detail", "warnings", "provenance")
PROVENANCE_KEYS = ("data_files", "rows", "checkpoint_step", "action_set_hash",
                   "package_version", "created")


class PolicyEstimates(NamedTuple):
    """Estimates of P policies; see the module docstring for each field's shape and meaning."""

    names: Sequence[str]
    estimates: Mapping[str, Mapping[str, np.ndarray]]
    n: np.ndarray
    matched: np.ndarray
    ess: np.ndarray


def as_estimates(obj: PolicyEstimates | Mapping, field: str = "points") -> PolicyEstimates:
    """Validate and convert a PolicyEstimates or a dict with its keys (arrays as f64 / i64)."""
    d = obj._asdict() if isinstance(obj, PolicyEstimates) else dict(obj)
    missing = [k for k in PolicyEstimates._fields if k not in d]
    if missing:
        raise InputError(field, [], f"missing keys {missing}")
    names = [str(x) for x in d["names"]]
    P = len(names)
    if not d["estimates"]:
        raise InputError(f"{field}.estimates", [], "needs at least one estimator")
    est, J = {}, None
    for e, block in d["estimates"].items():
        arrs = {}
        for k in ("value", "lo", "hi"):
            if k not in block:
                raise InputError(f"{field}.estimates.{e}", [], f"missing '{k}'")
            a = np.asarray(block[k], np.float64)
            a = a.reshape(P, -1) if a.ndim == 1 and P else a
            if a.ndim != 2 or a.shape[0] != P or (J is not None and a.shape[1] != J):
                raise InputError(f"{field}.estimates.{e}.{k}", [],
                                 f"expected f[{P}, {J or 'J'}], got shape {a.shape}")
            J = a.shape[1]
            arrs[k] = a
        est[e] = arrs
    per = {}
    for k, dt in (("n", np.int64), ("matched", np.int64), ("ess", np.float64)):
        a = np.broadcast_to(np.asarray(d[k], dt), (P,)) if np.ndim(d[k]) == 0 else np.asarray(d[k], dt)
        if a.shape != (P,):
            raise InputError(f"{field}.{k}", [], f"expected [{P}], got shape {a.shape}")
        per[k] = a
    return PolicyEstimates(names, est, per["n"], per["matched"], per["ess"])


def from_ope(names: Sequence[str], est) -> PolicyEstimates:
    """PolicyEstimates from ``puts_jax.ope.finalize``'s ``Estimates`` (read by attribute; fields
    with or without the leading policy axis P). Estimators: "ips", "snips", "dr" (when any value
    is finite: a reward model was given) and "exact" (Clopper-Pearson interval around the IPS
    value, NaN where the exact interval is not valid)."""
    P = len(names)

    def rows(x):
        return np.asarray(x, np.float64).reshape(P, -1)

    out = {"ips": {"value": rows(est.ips), "lo": rows(est.ips_lo), "hi": rows(est.ips_hi)},
           "snips": {"value": rows(est.snips), "lo": rows(est.snips_lo), "hi": rows(est.snips_hi)}}
    if np.isfinite(rows(est.dr)).any():
        out["dr"] = {"value": rows(est.dr), "lo": rows(est.dr_lo), "hi": rows(est.dr_hi)}
    ok = np.asarray(est.exact_defined, bool).reshape(P, -1)
    out["exact"] = {"value": np.where(ok, rows(est.ips), np.nan), "lo": rows(est.exact_lo),
                    "hi": rows(est.exact_hi)}
    return as_estimates({"names": list(names), "estimates": out,
                         "n": np.asarray(est.n).reshape(P), "matched": np.asarray(est.matched).reshape(P),
                         "ess": np.asarray(est.ess, np.float64).reshape(P)})


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def make_provenance(data_files: Sequence[str], rows: int, checkpoint_step: int | None,
                    action_set_hash: str, **extra) -> dict:
    """Provenance block: sha256 of every data file, row count, checkpoint step, action-set hash,
    package version and creation time (UTC, ISO 8601); ``extra`` keys are kept as given."""
    return {"data_files": {str(p): file_sha256(p) for p in data_files}, "rows": int(rows),
            "checkpoint_step": None if checkpoint_step is None else int(checkpoint_step),
            "action_set_hash": str(action_set_hash), "package_version": puts_jax.__version__,
            "created": _now(), **extra}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _js(x):
    """JSON-able copy: arrays to lists, non-finite floats to None."""
    if isinstance(x, Mapping):
        return {str(k): _js(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_js(v) for v in x]
    if isinstance(x, np.ndarray):
        return _js(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    return x


def _set_block(pe: PolicyEstimates, primary: str, dirs) -> dict:
    """One set of policies as JSON-ready arrays, with flags under the primary estimator."""
    out = {"names": list(pe.names), "n": pe.n, "matched": pe.matched, "ess": pe.ess,
           "estimators": {e: dict(b) for e, b in pe.estimates.items()}}
    b = pe.estimates[primary]
    out["nondominated"] = pareto.nondominated(b["value"], dirs)
    out["verdicts"] = pareto.separability(b["value"], b["lo"], b["hi"], dirs)
    return out


def _compare(b: Mapping, i: int, base: Mapping, k: int, signs: np.ndarray) -> list[str]:
    """Per objective: "better" / "worse" when the intervals of point i and baseline k are disjoint
    (in the preferred direction), "overlap" otherwise, "n/a" when a bound is not finite."""
    out = []
    for j, s in enumerate(signs):
        lo, hi, blo, bhi = b["lo"][i, j], b["hi"][i, j], base["lo"][k, j], base["hi"][k, j]
        if not np.isfinite([lo, hi, blo, bhi]).all():
            out.append("n/a")
        elif lo > bhi:
            out.append("better" if s < 0 else "worse")
        elif hi < blo:
            out.append("worse" if s < 0 else "better")
        else:
            out.append("overlap")
    return out


def _verdict(verdicts: list[str], lo: np.ndarray, hi: np.ndarray, conf: float) -> tuple[str, dict]:
    ok = np.asarray([v != pareto.NOT_ESTIMABLE for v in verdicts])
    nd = [i for i, v in enumerate(verdicts) if v == pareto.NONDOMINATED]
    sep = pareto.separable_pairs(lo, hi)
    pairs = [(a, b) for ai, a in enumerate(nd) for b in nd[ai + 1:]]
    n_sep = sum(bool(sep[a, b]) for a, b in pairs)
    detail = {"points": len(verdicts), "estimable": int(ok.sum()), "nondominated": len(nd),
              "nondominated_pairs": len(pairs), "separable_nondominated_pairs": n_sep,
              "clearly_dominated": verdicts.count(pareto.CLEARLY_DOMINATED),
              "not_separable": verdicts.count(pareto.NOT_SEPARABLE),
              "any_separable_pair": bool(sep.any())}
    pct = f"{conf:.0%}"
    if not ok.any():
        return "no point can be estimated from these data", detail
    if not sep.any():
        return (f"the data cannot tell the frontier points apart: every pair of points has "
                f"overlapping {pct} intervals on every objective"), detail
    text = (f"{len(nd)} nondominated of {len(verdicts)} points; {n_sep} of {len(pairs)} "
            f"nondominated pairs separable at {pct}; {detail['clearly_dominated']} clearly "
            f"dominated, {detail['not_separable']} dominated but not separable")
    if len(pairs) and n_sep == 0:
        text = "the data cannot tell the nondominated points apart; " + text
    return text, detail


def _warnings(pe: PolicyEstimates, what: str) -> list[str]:
    out = []
    for i, name in enumerate(pe.names):
        if pe.matched[i] == 0:
            out.append(f"{what} {name}: no matched rows; its estimate rests on no data")
        elif pe.ess[i] < LOW_ESS:
            out.append(f"{what} {name}: effective sample size {pe.ess[i]:.1f} < {LOW_ESS:g}")
    return out


def _baselines(baselines: Mapping, primary: str, dirs, names: Sequence[str]) -> dict:
    out = {}
    for kind, obj in baselines.items():
        pe = as_estimates(obj, f"baselines.{kind}")
        if primary not in pe.estimates:
            raise InputError(f"baselines.{kind}.estimates", [], f"lacks primary '{primary}'")
        block = _set_block(pe, primary, dirs)
        if kind == "actions":
            v = pe.estimates[primary]["value"]
            s = pareto.direction_signs(dirs, v.shape[1])
            score = np.where(np.isfinite(v), v * -s, -np.inf)
            best = {names[j]: (int(np.argmax(score[:, j])) if np.isfinite(score[:, j]).any() else None)
                    for j in range(v.shape[1])}
            block["best"] = best
            block["is_best"] = [any(b == i for b in best.values()) for i in range(len(pe.names))]
        out[kind] = block
    return out


def _hypervolume(values: np.ndarray, base_values: list[np.ndarray], reference, dirs) -> dict:
    finite = np.isfinite(values).all(1)
    rule = "given"
    if reference is None:
        pool = np.concatenate([values[finite]] + [b[np.isfinite(b).all(1)] for b in base_values])
        if pool.shape[0] == 0:
            return {"value": None, "reference": None, "reference_rule": "no finite point",
                    "excluded_nonfinite": int((~finite).sum())}
        s = pareto.direction_signs(dirs, values.shape[1])
        reference = (pool * s).max(0) * s  # component-wise worst (nadir) over points and baselines
        rule = "component-wise worst over the points and baselines (primary estimator)"
    ref = np.asarray(reference, np.float64)
    return {"value": pareto.hypervolume(values[finite], ref, dirs), "reference": ref,
            "reference_rule": rule, "excluded_nonfinite": int((~finite).sum())}


def _check_provenance(provenance: Mapping) -> dict:
    prov = dict(provenance)
    prov.setdefault("package_version", puts_jax.__version__)
    prov.setdefault("created", _now())
    missing = [k for k in PROVENANCE_KEYS if k not in prov]
    if missing:
        raise InputError("provenance", [], f"missing keys {missing}")
    return prov


def _operating_point(op, lam: np.ndarray, names: Sequence[str]) -> dict | None:
    if op is None:
        return None
    idx, reason = op
    if idx is not None and not 0 <= idx < len(names):
        raise InputError("operating_point", [], f"index {idx} outside [0, {len(names)})")
    return {"index": idx, "reason": str(reason), "lambda": None if idx is None else lam[idx],
            "name": None if idx is None else names[idx]}


def build_frontier(lambdas, points: PolicyEstimates | Mapping, *, objective_names: Sequence[str],
                   provenance: Mapping, baselines: Mapping[str, PolicyEstimates | Mapping] = (),
                   directions: Sequence[str] | None = None, primary: str | None = None,
                   reference=None, operating_point: tuple[int | None, str] | None = None,
                   confidence: float = 0.95) -> dict:
    """Assemble the frontier document (JSON-ready dict; see ``REQUIRED_KEYS`` and the README).

    Args:
      lambdas: f[P, J] scalarization of each point (row p is the policy ``points.names[p]``).
      points: the lambda points' estimates (PolicyEstimates or dict, module docstring).
      objective_names: J reward names. directions: "max"/"min" per objective (default max).
      provenance: at least data_files {path: sha256}, rows, checkpoint_step, action_set_hash
        (``make_provenance``); package_version and created are filled in when absent.
      baselines: {"logging": ..., "production": ..., "actions": ...} (any subset; each a
        PolicyEstimates); "actions" (one row per single global action) gets the best per
        objective marked.
      primary: estimator used for flags, verdicts and hypervolume (default "snips" if present,
        else the first). reference: hypervolume reference f[J] (default: the nadir).
      operating_point: (index or None, reason), e.g. ``pareto.select_operating_point(...)``.
    """
    pe = as_estimates(points)
    lam = np.asarray(lambdas, np.float64)
    J = next(iter(pe.estimates.values()))["value"].shape[1]
    if lam.shape != (len(pe.names), J):
        raise InputError("lambdas", [], f"expected f[{len(pe.names)}, {J}], got {lam.shape}")
    if len(objective_names) != J:
        raise InputError("objective_names", [], f"{len(objective_names)} names for J = {J}")
    dirs = tuple(directions) if directions is not None else ("max",) * J
    pareto.direction_signs(dirs, J)  # validates
    primary = primary or ("snips" if "snips" in pe.estimates else next(iter(pe.estimates)))
    if primary not in pe.estimates:
        raise InputError("primary", [], f"'{primary}' not among estimators {list(pe.estimates)}")
    prov = _check_provenance(provenance)
    block = _set_block(pe, primary, dirs)
    base = _baselines(dict(baselines), primary, dirs, list(objective_names))
    b = pe.estimates[primary]
    signs = pareto.direction_signs(dirs, J)
    for kind in ("logging", "production"):
        if kind in base:
            bb = base[kind]["estimators"][primary]
            block[f"vs_{kind}"] = [_compare(b, i, bb, 0, signs) for i in range(len(pe.names))]
    hv = _hypervolume(b["value"], [x["estimators"][primary]["value"] for x in base.values()],
                      reference, dirs)
    if "actions" in base:
        av = base["actions"]["estimators"][primary]["value"]
        hv["global_actions"] = (pareto.hypervolume(av[np.isfinite(av).all(1)], hv["reference"], dirs)
                                if hv["reference"] is not None else None)
    verdict, detail = _verdict(block["verdicts"], b["lo"], b["hi"], confidence)
    op = _operating_point(operating_point, lam, pe.names)
    warns = _warnings(pe, "point") + [w for k, x in dict(baselines).items()
                                      for w in _warnings(as_estimates(x, k), k)]
    doc = {"schema": SCHEMA,
           "objectives": {"names": list(objective_names), "directions": list(dirs)},
           "confidence": float(confidence), "primary_estimator": primary, "lambdas": lam,
           "points": {k: v for k, v in block.items() if k not in ("estimators", "nondominated", "verdicts")},
           "estimators": block["estimators"], "nondominated": block["nondominated"],
           "verdicts": block["verdicts"], "hypervolume": hv, "baselines": base,
           "operating_point": op, "verdict": verdict, "verdict_detail": detail,
           "warnings": warns, "provenance": prov}
    return _js(doc)


def validate_frontier(doc: Mapping) -> None:
    """Raise InputError naming missing top-level or provenance keys of a frontier document."""
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    missing += [f"provenance.{k}" for k in PROVENANCE_KEYS if k not in doc.get("provenance", {})]
    if missing:
        raise InputError("frontier", [], f"missing keys {missing}")
    if doc["schema"] != SCHEMA:
        raise InputError("frontier.schema", [], f"expected {SCHEMA}, got {doc['schema']}")


def read_frontier(path: str) -> dict:
    """Load and validate a frontier.json."""
    with open(path) as f:
        doc = json.load(f)
    validate_frontier(doc)
    return doc


def frontier_point(doc: Mapping, index: int) -> dict:
    """Everything the frontier says about point ``index`` (for ``policy.publish``)."""
    pts = doc["points"]
    return {"index": int(index), "name": pts["names"][index], "lambda": doc["lambdas"][index],
            "n": pts["n"][index], "matched": pts["matched"][index], "ess": pts["ess"][index],
            "estimates": {e: {k: b[k][index] for k in ("value", "lo", "hi")}
                          for e, b in doc["estimators"].items()},
            "nondominated": doc["nondominated"][index], "verdict": doc["verdicts"][index],
            "objectives": doc["objectives"]["names"], "confidence": doc["confidence"],
            "frontier_created": doc["provenance"]["created"]}


def write_frontier(out_dir: str, frontier: Mapping, axes: tuple[int, int] = (0, 1)) -> dict:
    """Write ``frontier.json``, ``frontier.png`` and ``frontier.html`` atomically into
    ``out_dir``; returns their paths {"json": ..., "png": ..., "html": ...}. ``axes`` picks the
    two objectives plotted when J > 2."""
    validate_frontier(frontier)
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"frontier.{k}") for k in ("json", "png", "html")}
    atomic_write_text(paths["json"], dumps(frontier))
    fig = frontier_figure(frontier, axes)
    atomic_write_bytes(paths["png"], _figure_png(fig))
    page = report_html.render_html(frontier, report_html.figure_svg(fig, "front-"), LOW_ESS)
    atomic_write_bytes(paths["html"], page.encode("utf-8"))
    return paths


def dumps(doc, indent: int = 1, _level: int = 0) -> str:
    """JSON text with objects indented and lists of scalars (a row of numbers) kept on one line.
    Raises ValueError on NaN/inf (``_js`` turns them into null first)."""
    pad, inner = " " * indent * _level, " " * indent * (_level + 1)
    if isinstance(doc, Mapping) and doc:
        items = [f"{inner}{json.dumps(str(k))}: {dumps(v, indent, _level + 1)}" for k, v in doc.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(doc, list) and any(isinstance(v, (list, Mapping)) for v in doc):
        return "[\n" + ",\n".join(inner + dumps(v, indent, _level + 1) for v in doc) + "\n" + pad + "]"
    return json.dumps(doc, allow_nan=False)


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
    return _figure_png(frontier_figure(doc, axes))


def _figure_png(fig) -> bytes:
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
