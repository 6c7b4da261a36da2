"""Simultaneous bands over the P points of a frontier, the bootstrap probability that one point
dominates another, and the frontier's evidence (bands and separability verdicts). Pure host
numpy (float64) on the point values and, when there is one, their bootstrap replicates
(``bootstrap.replicates``).

Montiel Olea & Plagborg-Moller 2019, "Simultaneous confidence bands". Bootstrap-t max band:
c = the ceil((R + 1) conf)-th smallest of max_p |theta*_rp - theta_p| / se*_rp (se* each
resample's own standard error), and the band theta_p +- c se_p (se_p the point's standard error)
covers every point's true value at once with probability ~conf. Without per-resample standard
errors, se* = se_p = the bootstrap standard error (first-order only: it under-covers with 0/1
rewards, see ``bootstrap_band``); unstudentized: c of max_p |theta*_rp - theta_p|, one half-width
for all points. Per objective (max over points) or jointly over points and objectives (``joint``,
what Pareto verdicts need). Without a bootstrap: Bonferroni, z_{1 - alpha / (2m)} with m
intervals.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Sequence

import numpy as np

from puts_jax import pareto
from puts_jax.checks import InputError


class Band(NamedTuple):
    """A simultaneous band over P points: lo, hi f64[P, J] (NaN for points left out: a
    non-finite value or scale); critical f64[J] the multiplier of ``scale`` f64[P, J] (the same
    for every objective when ``joint``); method: how it was made; joint: over objectives too."""

    lo: np.ndarray
    hi: np.ndarray
    critical: np.ndarray
    scale: np.ndarray
    method: str
    confidence: float
    joint: bool


def _order_stat(t: np.ndarray, confidence: float) -> np.ndarray:
    """The ceil((R + 1) conf)-th smallest along axis 0 (the largest when that exceeds R)."""
    R = t.shape[0]
    k = min(R, int(math.ceil((R + 1) * confidence)))
    return np.sort(t, axis=0)[k - 1]


def _ratio(dev, scale):
    """|dev| / scale, with 0 / 0 = 0 and x / 0 = inf (a zero scale: no spread at all)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scale > 0, dev / np.where(scale > 0, scale, 1.0),
                        np.where(dev == 0, 0.0, np.inf))


def bootstrap_band(values, reps, confidence: float = 0.95, studentize: bool = True,
                   joint: bool = False, se=None, reps_se=None) -> Band:
    """Max-type bootstrap band from point values f[P, J] and replicates f[R, P, J].

    Bootstrap-t (``se`` f[P, J] the points' standard errors and ``reps_se`` f[R, P, J] each
    resample's own, ``replicate_se``): c = the ceil((R + 1) conf)-th smallest of
    max |theta* - theta| / se*, band theta +- c se (Hall 1992; each resample studentized by its own
    standard error, so the band follows the correlation of estimate and standard error).
    Otherwise, studentized by the bootstrap standard error (one scale per point), or (studentize
    False) unscaled, one half-width per objective. The maximum runs over points (per objective)
    or over points and objectives (``joint``). A point with a non-finite value or scale is left
    out (NaN band); an undefined replicate of an included point counts as not covered (t = inf).
    On simulated logs (tests/test_coverage.py) the bootstrap-t band covered the whole true
    frontier 94.9% of the time at 95% (joint, 11 points x 2 objectives, 2000 logs), the
    bootstrap-SE one 92.9%: with 0/1 rewards the estimate and its spread move together.
    Raises InputError("reps") when reps is not f[R, P, J] for values f[P, J], and
    InputError("joint") for a joint band without ``studentize``.
    """
    v = np.asarray(values, np.float64)
    reps = np.asarray(reps, np.float64)
    if reps.ndim != 3 or reps.shape[1:] != v.shape:
        raise InputError("reps", [], f"expected f[R, {v.shape[0]}, {v.shape[1]}], got {reps.shape}")
    if joint and not studentize:
        raise InputError("joint", [], "a band joint over objectives needs studentize=True "
                                      "(objectives have different units)")
    boot_t = studentize and se is not None and reps_se is not None
    with warnings.catch_warnings():  # all-NaN slices give NaN, as intended
        warnings.simplefilter("ignore", RuntimeWarning)
        if boot_t:
            scale, per_rep = np.asarray(se, np.float64), np.asarray(reps_se, np.float64)
        else:
            scale = np.nanstd(reps, axis=0, ddof=1) if studentize else np.ones_like(v)
            per_rep = scale
    ok = np.isfinite(v) & np.isfinite(scale)
    t = np.where(np.isfinite(reps), _ratio(np.abs(reps - v), per_rep), np.inf)
    t = np.where(np.isnan(t), np.inf, t)  # an undefined per-resample scale: not covered
    t = np.where(ok, t, -np.inf)  # points left out never set the maximum
    if joint:
        crit = np.full(v.shape[1], _order_stat(t.max(axis=(1, 2)), confidence))
    else:
        crit = _order_stat(t.max(axis=1), confidence)
    crit = np.where(np.isfinite(crit), crit, np.nan)
    lo = np.where(ok, v - crit * scale, np.nan)
    hi = np.where(ok, v + crit * scale, np.nan)
    kind = ("bootstrap-t max-|t| (each resample's own standard error)" if boot_t else
            "studentized max-t (bootstrap SE)" if studentize else "max-|deviation|")
    scope = "all points and objectives" if joint else "all points, per objective"
    return Band(lo, hi, crit, scale, f"Poisson bootstrap {kind}, R = {reps.shape[0]}, "
                f"simultaneous over {scope}", float(confidence), joint)


def bonferroni_band(values, se, confidence: float = 0.95, joint: bool = False) -> Band:
    """Bonferroni band: values +- z_{1 - alpha / (2m)} se with m the finite intervals per
    objective (per point and objective when ``joint``)."""
    from scipy import stats as sps

    v, s = np.asarray(values, np.float64), np.asarray(se, np.float64)
    ok = np.isfinite(v) & np.isfinite(s)
    m = np.maximum(ok.sum() if joint else ok.sum(0), 1) * np.ones(v.shape[1])
    crit = sps.norm.ppf(1.0 - (1.0 - confidence) / (2.0 * m))
    scope = "all points and objectives" if joint else "all points, per objective"
    return Band(np.where(ok, v - crit * s, np.nan), np.where(ok, v + crit * s, np.nan), crit, s,
                f"Bonferroni (normal intervals), simultaneous over {scope}", float(confidence),
                joint)


def dominance_probability(reps, directions: Sequence[str] | None = None) -> np.ndarray:
    """f64[P, P]: out[q, p] = share of resamples in which point q dominates point p (at least as
    good on every objective in its direction, strictly better on one; pareto's definition, so a
    point never dominates itself or an identical policy). Undefined replicates never dominate."""
    reps = np.asarray(reps, np.float64)
    m = reps * pareto.direction_signs(directions, reps.shape[2])  # minimization form
    with np.errstate(invalid="ignore"):
        le = (m[:, :, None, :] <= m[:, None, :, :]).all(-1)
        lt = (m[:, :, None, :] < m[:, None, :, :]).any(-1)
    return (le & lt).mean(0)


class FrontierEvidence(NamedTuple):
    """What the data say about a frontier of P points as a whole.

    band: simultaneous over points and objectives (Pareto verdicts rest on it).
    band_per_objective: simultaneous over points, one objective at a time.
    verdicts: list[str] per point, ``pareto.separability`` on ``band``: "nondominated",
      "clearly dominated" (some point's band is better on every objective: true at the band's
      confidence, for every point at once), "not separable", "not estimable".
    dominance: f64[P, P] ``dominance_probability`` (None without a bootstrap).
    """

    band: Band
    band_per_objective: Band
    verdicts: list
    dominance: np.ndarray | None


def frontier_evidence(values, se=None, reps=None, confidence: float = 0.95,
                      directions: Sequence[str] | None = None, reps_se=None) -> FrontierEvidence:
    """Bands, verdicts and dominance of points f[P, J]: with bootstrap replicates f[R, P, J],
    the bootstrap-t band when ``se`` and the per-resample ``reps_se`` are given (else studentized
    by the bootstrap SE); without replicates, Bonferroni from the standard errors ``se``.
    Raises InputError("frontier_evidence") when neither ``reps`` nor ``se`` is given."""
    if reps is not None:
        band = bootstrap_band(values, reps, confidence, joint=True, se=se, reps_se=reps_se)
        per = bootstrap_band(values, reps, confidence, joint=False, se=se, reps_se=reps_se)
        dom = dominance_probability(reps, directions)
    elif se is not None:
        band = bonferroni_band(values, se, confidence, joint=True)
        per = bonferroni_band(values, se, confidence, joint=False)
        dom = None
    else:
        raise InputError("frontier_evidence", [], "needs bootstrap replicates or standard errors")
    verdicts = pareto.separability(values, band.lo, band.hi, directions)
    return FrontierEvidence(band, per, verdicts, dom)
