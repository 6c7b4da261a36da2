"""Poisson bootstrap of the off-policy estimators, simultaneous bands over a frontier, and the
bootstrap probability that one point dominates another.

Resampling (device, pure jax). The Poisson bootstrap (Hanley & MacGibbon 2006; Chamandy,
Muralidharan, Najmi & Naidu 2012, "Estimating uncertainty for massive data streams") gives every
logged row b an independent multiplicity m[r, b] ~ Poisson(1) in each resample r, in place of
drawing exactly n rows with replacement (the multinomial bootstrap, Efron 1979). The two agree as
n grows (a Multinomial(n, 1/n) count is Binomial(n, 1/n) -> Poisson(1)); only the Poisson form
streams, because a row's multiplicity does not depend on how many rows the log has. So chunks are
resampled independently and their per-resample sums (``types.BootstrapStats``, shape [R, P, ...])
add like ``EstimatorStats``.

Determinism. m[r, b] is a function of (key, absolute row index i_b, r) only: the 64 bits of
threefry2x32(key, (i_b, r // 4)) (Salmon et al. 2011, counter-based) are split into four 16-bit
uniforms u, and the (r % 4)-th gives m by inverting the Poisson(1) cdf
(m = #{k : u >= round(2^16 F(k))}, each cdf value within 2^-17 of exact, m <= 8). The draws are
therefore the same for any chunking of the log (pieces, ``chunk_rows``), any resample chunking
(``RESAMPLE_CHUNK``) and any backend (integer arithmetic only; checked on CPU): a streamed pass
equals one pass over the whole log (up to f32 summation order inside a chunk; chunks merge in
float64). This is stronger than folding a chunk
index into the key, which would tie the draws to the chunking. Rows are indexed in uint32 (logs of
up to 2^32 rows); the same key gives the same multiplicities to every program evaluated on the
same rows, so lambda points and baselines are resampled jointly (paired comparisons).

Estimates per resample (host, float64): IPS* = sum m w r / sum m, SNIPS* = sum m w r / sum m w,
DR* = sum m dr / sum m. The SNIPS denominator is recomputed in every resample (holding it at the
full-sample sum w would ignore its variability). Percentile intervals (Efron & Tibshirani 1993,
ch. 13) per point and objective, at unbiased plotting positions (``percentile_interval``). With
second-moment sums (``row_terms(moments=True)``; the sweep computes them) each resample also
has its own standard error (``replicate_se``).

Simultaneous bands over the P points of a frontier (Montiel Olea & Plagborg-Moller 2019,
"Simultaneous confidence bands"). Bootstrap-t max band: c = the ceil((R + 1) conf)-th smallest of
max_p |theta*_rp - theta_p| / se*_rp (se* each resample's own standard error), and the band
theta_p +- c se_p (se_p the point's standard error) covers every point's true value at once with
probability ~conf. Without per-resample standard errors, se* = se_p = the bootstrap standard
error (first-order only: it under-covers with 0/1 rewards, see ``bootstrap_band``); unstudentized:
c of max_p |theta*_rp - theta_p|, one half-width for all points. Per objective (max over points)
or jointly over points and objectives (``joint``, what Pareto verdicts need). Without a
bootstrap: Bonferroni, z_{1 - alpha / (2m)} with m intervals.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import threefry_2x32

from puts_jax import pareto
from puts_jax.checks import InputError
from puts_jax.types import BootstrapStats, EstimatorStats

RESAMPLE_CHUNK = 32  # resamples drawn and summed together: [RESAMPLE_CHUNK, B] temporaries
ESTIMATORS = ("ips", "snips", "dr")
# 16-bit inversion thresholds of the Poisson(1) cdf F(k), k = 0..7 (F(8) rounds to 2^16).
_POISSON_T16 = tuple(int(round(65536 * sum(math.exp(-1.0) / math.factorial(i)
                                           for i in range(k + 1)))) for k in range(8))


# ----------------------------------------------------------------------------- device

def key_data(key) -> np.ndarray:
    """u32[2] threefry key data from a ``jax.random.key`` (or legacy ``PRNGKey``) on the host."""
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    kd = np.asarray(key)
    if kd.shape != (2,) or kd.dtype != np.uint32:
        raise InputError("key", [], "expected a threefry key (u32[2] data), got "
                                    f"{kd.dtype}{list(kd.shape)}")
    return kd


def poisson_multiplicities(key_u32, first_row, n_rows: int, r_start, n_r: int) -> jax.Array:
    """m f32[n_r, n_rows] ~ Poisson(1): resamples [r_start, r_start + n_r) of rows
    [first_row, first_row + n_rows). key_u32: u32[2]; first_row, r_start traced scalars
    (r_start and n_r multiples of 4). Each value depends only on (key, row, resample)."""
    if n_r % 4:
        raise ValueError(f"n_r: must be a multiple of 4, got {n_r}")
    G = n_r // 4
    rows = jnp.asarray(first_row).astype(jnp.uint32) + jnp.arange(n_rows, dtype=jnp.uint32)
    groups = jnp.asarray(r_start).astype(jnp.uint32) // 4 + jnp.arange(G, dtype=jnp.uint32)
    hi = jnp.broadcast_to(rows[None, :], (G, n_rows)).ravel()
    lo = jnp.broadcast_to(groups[:, None], (G, n_rows)).ravel()
    bits = threefry_2x32(jnp.asarray(key_u32, jnp.uint32), jnp.concatenate([hi, lo]))
    a, b = bits[:G * n_rows].reshape(G, n_rows), bits[G * n_rows:].reshape(G, n_rows)
    mask = jnp.uint32(0xFFFF)
    u = jnp.stack([a & mask, a >> 16, b & mask, b >> 16], axis=1).reshape(n_r, n_rows)
    t = jnp.asarray(_POISSON_T16, jnp.uint32)
    return jnp.sum(u[..., None] >= t[None, None, :], axis=-1, dtype=jnp.int32).astype(jnp.float32)


def resample_sums(key_u32, first_row, per_row, n_resamples: int,
                  chunk: int = RESAMPLE_CHUNK):
    """out[r, ...] = sum_b m[r, b] per_row[b, ...] for every leaf of the pytree ``per_row``
    (leading row axis B): one matmul f32[rc, B] @ f32[B, F] per chunk of rc resamples
    (``lax.map``), so temporaries are [rc, B], never [R, B]. Full f32 matmul precision."""
    leaves, tree = jax.tree.flatten(per_row)
    B = leaves[0].shape[0]
    flat = jnp.concatenate([x.reshape(B, -1).astype(jnp.float32) for x in leaves], axis=1)
    rc = 4 * max(1, min(chunk, n_resamples + 3) // 4)
    n_chunks = -(-n_resamples // rc)

    def one(c):
        m = poisson_multiplicities(key_u32, first_row, B, c * rc, rc)
        return jnp.matmul(m, flat, precision=lax.Precision.HIGHEST)

    sums = lax.map(one, jnp.arange(n_chunks, dtype=jnp.int32)).reshape(n_chunks * rc, -1)
    sums = sums[:n_resamples]
    out, at = [], 0
    for x in leaves:
        width = int(np.prod(x.shape[1:], dtype=np.int64))
        out.append(sums[:, at:at + width].reshape((n_resamples,) + x.shape[1:]))
        at += width
    return jax.tree.unflatten(tree, out)


def row_terms(rows: EstimatorStats, moments: bool = False) -> BootstrapStats:
    """The per-row terms the bootstrap needs, from ``ope.rows_stats`` output (leading B axis):
    n = valid, w, w r and the DR term (None without a reward model); with ``moments`` also
    w^2, w^2 r, w^2 r^2 and the squared DR term (per-resample standard errors)."""
    second = ((rows.sum_w2, rows.sum_w2r, rows.sum_w2r2, rows.sum_dr2) if moments
              else (None,) * 4)
    return BootstrapStats(rows.n.astype(jnp.float32), rows.sum_w, rows.sum_wr, rows.sum_dr,
                          *second)


def resample_stats(key_u32, first_row, terms: BootstrapStats, n_resamples: int,
                   chunk: int = RESAMPLE_CHUNK) -> BootstrapStats:
    """BootstrapStats [R] / [R, P] / [R, P, J] of one chunk from per-policy per-row terms
    (``row_terms`` stacked over policies: n f32[P, B], sum_w f32[P, B], sum_wr f32[P, B, J],
    optional fields likewise); rows are ``first_row + arange(B)`` in the log."""
    move = lambda x: None if x is None else jnp.moveaxis(x, 0, 1)  # noqa: E731  [P, B] -> [B, P]
    per_row = BootstrapStats(terms.n[0], *(move(x) for x in terms[1:]))
    return resample_sums(key_u32, first_row, per_row, n_resamples, chunk)


# ----------------------------------------------------------------------------- host (float64)

def to_host(b: BootstrapStats) -> BootstrapStats:
    """Device sums -> numpy float64."""
    return BootstrapStats(*(None if x is None else np.asarray(x, np.float64) for x in b))


def merge(a: BootstrapStats | None, b: BootstrapStats) -> BootstrapStats:
    """a + b in float64 on the host (``a = None`` starts a merge)."""
    b = to_host(b)
    if a is None:
        return b
    for f, x, y in zip(BootstrapStats._fields, a, b):
        if (x is None) != (y is None):
            raise ValueError(f"bootstrap.merge: {f} present in one operand only")
    return BootstrapStats(*(None if x is None else x + y for x, y in zip(a, b)))


def _div(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)


def replicates(b: BootstrapStats, estimator: str = "snips") -> np.ndarray:
    """f64[R, P, J] bootstrap replicates of ``estimator`` ("ips", "snips", "dr"); NaN where a
    resample leaves it undefined (SNIPS with sum m w = 0; DR without a reward model)."""
    b = to_host(b)
    n = b.n[:, None, None]
    if estimator == "ips":
        return _div(b.sum_wr, n)
    if estimator == "snips":
        return _div(b.sum_wr, b.sum_w[..., None])
    if estimator == "dr":
        return np.full(b.sum_wr.shape, np.nan) if b.sum_dr is None else _div(b.sum_dr, n)
    raise InputError("estimator", [], f"must be one of {ESTIMATORS}, got {estimator!r}")


def _mean_se(total, total_sq, n):
    """Standard error of a mean from sum, sum of squares and count (unbiased variance)."""
    mean = _div(total, n)
    return np.sqrt(_div(_div(np.maximum(total_sq - n * mean * mean, 0.0), n - 1.0), n))


def replicate_se(b: BootstrapStats, estimator: str = "snips") -> np.ndarray:
    """f64[R, P, J] each resample's own standard error of ``estimator`` (the formulas of
    ``ope.finalize``: normal for IPS and DR, delta method for SNIPS), from the second-moment
    sums; all NaN when the sums were made without them (``row_terms(moments=False)``)."""
    b = to_host(b)
    nan = np.full(b.sum_wr.shape, np.nan)
    n = b.n[:, None, None]
    if estimator == "ips":
        return nan if b.sum_w2r2 is None else _mean_se(b.sum_wr, b.sum_w2r2, n)
    if estimator == "dr":
        return nan if b.sum_dr2 is None else _mean_se(b.sum_dr, b.sum_dr2, n)
    if estimator != "snips":
        raise InputError("estimator", [], f"must be one of {ESTIMATORS}, got {estimator!r}")
    if b.sum_w2 is None:
        return nan
    v, sw = replicates(b, "snips"), b.sum_w[..., None]
    resid2 = np.maximum(b.sum_w2r2 - 2 * v * b.sum_w2r + v * v * b.sum_w2[..., None], 0.0)
    return _div(np.sqrt(resid2), sw)


class BootstrapEstimates(NamedTuple):
    """Percentile intervals and bootstrap standard errors, f64[P, J] each (NaN where undefined).

    ips_lo, ips_hi, ips_se; snips_lo, snips_hi, snips_se; dr_lo, dr_hi, dr_se.
    snips_defined: f64[P] share of resamples with sum m w > 0. n_resamples R; confidence.
    """

    ips_lo: np.ndarray
    ips_hi: np.ndarray
    ips_se: np.ndarray
    snips_lo: np.ndarray
    snips_hi: np.ndarray
    snips_se: np.ndarray
    dr_lo: np.ndarray
    dr_hi: np.ndarray
    dr_se: np.ndarray
    snips_defined: np.ndarray
    n_resamples: int
    confidence: float


def percentile_interval(reps: np.ndarray, confidence: float = 0.95):
    """(lo, hi, se) f64[P, J] from replicates f64[R, P, J]: the (1 -+ conf) / 2 quantiles and the
    standard deviation of the defined (finite) replicates. NaN where more than (1 - conf) / 2 of
    the replicates are undefined: the tail the interval rests on would be missing.

    Quantiles use the plotting positions q (k + 1) of the k defined replicates (Hyndman & Fan
    type 6, numpy's "weibull"), interpolated: the j-th smallest of k replicates sits at its
    expected probability j / (k + 1), so the interval's nominal coverage is exact for any R.
    (numpy's default, q (k - 1) + 1, gives R = 200 an expected coverage of 94.0% at 95%;
    measured 94.1% against ground truth, 95.1% with these positions.)"""
    ok = np.isfinite(reps)
    alpha = 1.0 - confidence
    x = np.sort(np.where(ok, reps, np.inf), axis=0)  # undefined last
    k = ok.sum(0)
    last = np.maximum(k - 1, 0)

    def quantile(q):
        pos = np.clip(q * (k + 1) - 1.0, 0.0, last)  # 0-based position among the k defined
        i = np.floor(pos).astype(np.int64)
        a = np.take_along_axis(x, i[None], 0)[0]
        b = np.take_along_axis(x, np.minimum(i + 1, last)[None], 0)[0]
        return a + (b - a) * (pos - i)  # inf - inf (no defined replicate) is masked below

    with warnings.catch_warnings(), np.errstate(invalid="ignore"):  # all-undefined: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        se = np.nanstd(np.where(ok, reps, np.nan), axis=0, ddof=1)
        lo, hi = quantile(alpha / 2), quantile(1 - alpha / 2)
    bad = k < (1.0 - alpha / 2) * reps.shape[0]
    return np.where(bad, np.nan, lo), np.where(bad, np.nan, hi), np.where(bad, np.nan, se)


def finalize(b: BootstrapStats, confidence: float = 0.95) -> BootstrapEstimates:
    """Percentile intervals of IPS, SNIPS and DR from merged bootstrap sums."""
    b = to_host(b)
    out = {}
    for e in ESTIMATORS:
        out[f"{e}_lo"], out[f"{e}_hi"], out[f"{e}_se"] = percentile_interval(replicates(b, e),
                                                                           confidence)
    return BootstrapEstimates(**out, snips_defined=(b.sum_w > 0).mean(0),
                              n_resamples=int(b.n.shape[0]), confidence=float(confidence))


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
    by the bootstrap SE); without replicates, Bonferroni from the standard errors ``se``."""
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
