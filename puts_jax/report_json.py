"""The frontier document, ``frontier.json`` (the DESIGN.md section 4 contract): its schema,
``build_frontier`` (estimates, flags, verdicts, baselines, hypervolume, operating point, warnings
and provenance in one JSON-ready dict), validation, reading, one point's summary for
``policy.publish``, and ``dumps``, the JSON text written. Re-exported by ``puts_jax.report``.
"""

from __future__ import annotations

import json
import math
from typing import Mapping, Sequence

import numpy as np

from puts_jax import pareto
from puts_jax.checks import InputError
from puts_jax.report_estimates import (PROVENANCE_KEYS, PolicyEstimates, as_estimates,
                                       check_provenance)
from puts_jax.report_verdicts import (baseline_blocks, compare_to_baseline, data_warnings,
                                      hypervolume_block, overall_verdict, set_block,
                                      within_noise_block)
from puts_jax.scalarization import readable_lambda

SCHEMA = "puts_jax.frontier/1"
BASELINE_KINDS = ("logging", "production", "actions")  # known kinds; others are kept as given
REQUIRED_KEYS = ("schema", "objectives", "confidence", "primary_estimator", "lambdas", "points",
                 "estimators", "nondominated", "verdicts", "hypervolume", "baselines",
                 "operating_point", "verdict", "verdict_detail", "warnings", "provenance")


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


def _operating_point(op, lam: np.ndarray, names: Sequence[str]) -> dict | None:
    if op is None:
        return None
    idx, reason = op
    if idx is not None and not 0 <= idx < len(names):
        raise InputError("operating_point", [], f"index {idx} outside [0, {len(names)})")
    return {"index": idx, "reason": str(reason), "lambda": None if idx is None else lam[idx],
            "name": None if idx is None else names[idx]}


def _hypervolumes(values: np.ndarray, base: Mapping, primary: str, reference, dirs) -> dict:
    """``hypervolume_block`` of the points values f64[P, J] and, with an "actions" baseline,
    "global_actions": the single global actions' hypervolume against the same reference."""
    hv = hypervolume_block(values, [x["estimators"][primary]["value"] for x in base.values()],
                           reference, dirs)
    if "actions" in base:
        av = base["actions"]["estimators"][primary]["value"]
        hv["global_actions"] = (pareto.hypervolume(av[np.isfinite(av).all(1)], hv["reference"], dirs)
                                if hv["reference"] is not None else None)
    return hv


def build_frontier(lambdas, points: PolicyEstimates | Mapping, *, objective_names: Sequence[str],
                   provenance: Mapping, baselines: Mapping[str, PolicyEstimates | Mapping] = (),
                   directions: Sequence[str] | None = None, primary: str | None = None,
                   reference=None, operating_point: tuple[int | None, str] | None = None,
                   confidence: float = 0.95) -> dict:
    """Assemble the frontier document (JSON-ready dict; see ``REQUIRED_KEYS`` and the README).

    Args:
      lambdas: f[P, J] scalarization of each point (row p is the policy ``points.names[p]``);
        f32 values are written as the shortest decimal that reads back as the same float32.
      points: the lambda points' estimates (PolicyEstimates or dict, ``report_estimates``).
      objective_names: J reward names. directions: "max"/"min" per objective (default max).
      provenance: at least data_files {path: sha256}, rows, checkpoint_step, action_set_hash
        (``make_provenance``); package_version and created are filled in when absent.
      baselines: {"logging": ..., "production": ..., "actions": ...} (any subset; each a
        PolicyEstimates); "actions" (one row per single global action) gets the best per
        objective marked.
      primary: estimator used for flags, verdicts and hypervolume (default "snips" if present,
        else the first). reference: hypervolume reference f[J] (default: the nadir).
      operating_point: (index or None, reason), e.g. ``pareto.select_operating_point(...)``.

    Raises InputError naming the bad argument (lambdas, objective_names, directions, primary,
    provenance, points / baselines.<kind> fields, operating_point).
    """
    pe = as_estimates(points)
    lam = np.asarray(lambdas)
    if lam.dtype == np.float32:  # 0.9, not 0.8999999761581421: the shortest decimal that reads
        # back as the same float32 (what the compiled passes use), so the file is readable
        lam = np.array(readable_lambda(lam)).reshape(lam.shape)
    lam = np.asarray(lam, np.float64)
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
    prov = check_provenance(provenance)
    block = set_block(pe, primary, dirs)
    base = baseline_blocks(dict(baselines), primary, dirs, list(objective_names))
    b = pe.estimates[primary]
    signs = pareto.direction_signs(dirs, J)
    for kind in ("logging", "production"):
        if kind in base:
            bb = base[kind]["estimators"][primary]
            block[f"vs_{kind}"] = [compare_to_baseline(b, i, bb, 0, signs)
                                   for i in range(len(pe.names))]
    hv = _hypervolumes(b["value"], base, primary, reference, dirs)
    verdict, detail = overall_verdict(block["verdicts"], b["lo"], b["hi"], confidence)
    op = _operating_point(operating_point, lam, pe.names)
    warns = data_warnings(pe, "point") + [w for k, x in dict(baselines).items()
                                          for w in data_warnings(as_estimates(x, k), k)]
    doc = {"schema": SCHEMA,
           "objectives": {"names": list(objective_names), "directions": list(dirs)},
           "confidence": float(confidence), "primary_estimator": primary, "lambdas": lam,
           "points": {k: v for k, v in block.items() if k not in ("estimators", "nondominated", "verdicts")},
           "estimators": block["estimators"], "nondominated": block["nondominated"],
           "verdicts": block["verdicts"], "hypervolume": hv, "baselines": base,
           "operating_point": op, "verdict": verdict, "verdict_detail": detail,
           "within_noise": within_noise_block(b["lo"], b["hi"], block["nondominated"], primary,
                                              confidence),
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


def dumps(doc, indent: int = 1, _level: int = 0) -> str:
    """JSON text with objects indented and lists of scalars (a row of numbers) kept on one line.
    A NaN or infinite number anywhere (an estimate or bound the data cannot give) is written as
    null, as ``build_frontier`` writes them, so blocks added to a document later (a bootstrap
    band's critical value, per-half estimates) never make the file invalid JSON."""
    if _level == 0:
        doc = _js(doc)
    pad, inner = " " * indent * _level, " " * indent * (_level + 1)
    if isinstance(doc, Mapping) and doc:
        items = [f"{inner}{json.dumps(str(k))}: {dumps(v, indent, _level + 1)}" for k, v in doc.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(doc, list) and any(isinstance(v, (list, Mapping)) for v in doc):
        return "[\n" + ",\n".join(inner + dumps(v, indent, _level + 1) for v in doc) + "\n" + pad + "]"
    return json.dumps(doc, allow_nan=False)


def place_mark(doc: Mapping, mark: Mapping) -> dict:
    """A copy of frontier document ``doc`` with ``mark`` placed: {"index", "reason", "lambda",
    "name", "status"}, status "selected" (``policy select --out``) or "published" (the registry's
    CURRENT, with its "version" and "registry").

    A published mark becomes ``operating_point``; the selection it replaces (a selected
    operating point, or ``selected_point``) stays as ``selected_point`` when it is another
    point. A selection becomes ``operating_point`` unless that is a published mark: then the
    published one stays and the selection is ``selected_point`` (none when it is the published
    point). An operating point without a status (older files) counts as a selection."""
    op = doc.get("operating_point") or None
    published = op if op and op.get("status") == "published" else None
    out = {k: v for k, v in doc.items() if k != "selected_point"}
    if mark.get("status") == "published":
        out["operating_point"] = dict(mark)
        sel, top = doc.get("selected_point") or (None if published else op), mark
    elif published is None:
        out["operating_point"] = dict(mark)
        return out
    else:
        sel, top = mark, published
    if sel and sel.get("index") is not None and sel.get("index") != top.get("index"):
        out["selected_point"] = {**sel, "status": "selected"}
    return out


def unmark_published(doc: Mapping, registry: str) -> dict:
    """A copy of ``doc`` without the published operating point of ``registry`` (an absolute
    path; the version it names is no longer current): its ``selected_point``, if any, becomes
    the operating point again. Any other document is returned as a copy, unchanged."""
    op = doc.get("operating_point") or {}
    if op.get("status") != "published" or op.get("registry") != registry:
        return dict(doc)
    out = {k: v for k, v in doc.items() if k != "selected_point"}
    out["operating_point"] = doc.get("selected_point")
    return out
