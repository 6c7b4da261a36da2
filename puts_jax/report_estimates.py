"""What a frontier is built from: the estimates of each set of policies and the provenance block.

Input: one ``PolicyEstimates`` (or a dict with the same keys) per set of policies: the lambda
points, and each baseline set (logging policy, production action, every single global action).

  names:     list[str] [P]           labels, e.g. "lambda=(0.3, 0.7)" or "action 4"
  estimates: {estimator: {"value": f64[P, J], "lo": f64[P, J], "hi": f64[P, J]}}
             estimator names such as "ips", "snips", "dr", "exact"; lo/hi bound the interval at
             the report's ``confidence`` (0.95); NaN where an estimator cannot give a number
  n:         i64[P] (or a scalar) log rows evaluated
  matched:   i64[P] rows whose logged decision is consistent with the policy's
  ess:       f64[P] effective sample size of the importance weights, (sum w)^2 / sum w^2

``puts_jax.ope`` produces these quantities per lambda; adapt its output with a dict (or
``from_ope``). Re-exported by ``puts_jax.report``.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Mapping, NamedTuple, Sequence

import numpy as np

import puts_jax
from puts_jax.checks import InputError

PROVENANCE_KEYS = ("data_files", "rows", "checkpoint_step", "action_set_hash",
                   "package_version", "created")


class PolicyEstimates(NamedTuple):
    """Estimates of P policies; ``puts_jax.report_estimates`` documents each field's shape and
    meaning."""

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


def check_provenance(provenance: Mapping) -> dict:
    """A copy of ``provenance`` with package_version and created filled in when absent; raises
    InputError("provenance") naming the missing ``PROVENANCE_KEYS``."""
    prov = dict(provenance)
    prov.setdefault("package_version", puts_jax.__version__)
    prov.setdefault("created", _now())
    missing = [k for k in PROVENANCE_KEYS if k not in prov]
    if missing:
        raise InputError("provenance", [], f"missing keys {missing}")
    return prov
