"""Exploration planning: how many days of uniform exploration a frontier needs before its points
can be told apart. Closed forms, pure numpy (plus the standard library's normal quantiles), no I/O.

Setting (DESIGN.md section 1). A share ``share`` of ``requests_per_day`` requests is logged under
uniform random exploration over A actions (propensity 1/A); after ``days`` the log holds
n = requests_per_day * share * days rows. A frontier point is a deterministic target policy pi
(the lambda policy's argmax), evaluated on all n rows with the weight w = A 1[a = pi(x)] and the
per-row term Y = w r. V is pi's value; sigma^2 the variance of its reward (binary: V (1 - V)).

Per point:
  matched rows   m ~ Binomial(n, 1/A), E m = n / A. All non-zero weights are equal, so the
                 effective sample size (sum w)^2 / sum w^2 equals m.
  IPS            (Horvitz & Thompson 1952) V_ips = (1/n) sum Y. E Y = V and
                 E Y^2 = A E[r^2 | pi] = A (sigma^2 + V^2), so
                     Var V_ips = (A (sigma^2 + V^2) - V^2) / n;   binary (r^2 = r): (A V - V^2) / n.
                 The exact Clopper-Pearson interval of ``ope`` (k ~ Binomial(n, V / A) successes,
                 interval / (1/A)) has about this normal half-width once k is moderate.
  SNIPS          (Swaminathan & Joachims 2015) sum Y / sum w; delta method for a ratio estimator
                 (Owen 2013, "Monte Carlo theory, methods and examples", section 9.2):
                     Var V_snips ~= E[w^2 (r - V)^2] / (n (E w)^2) = A sigma^2 / n
                 (binary: A V (1 - V) / n), the variance of a mean over the n / A matched rows.
  half-width     of the (1 - alpha) normal interval: z_{1 - alpha/2} sqrt(Var).

Comparing a lambda policy pi_1 with a baseline pi_0 (production, the best global action, another
point) on the same log, paired: D = V_ips(pi_1) - V_ips(pi_0) sums the per-row terms
    Z = A r (1[a = pi_1(x)] - 1[a = pi_0(x)]),
which vanish on the share s (``agreement``) of requests where the two pick the same action. Let
pi_0's mean reward be p everywhere and pi_1's be p + delta / (1 - s) where they disagree (the
whole gap delta lives there). The events a = pi_1 and a = pi_0 are disjoint there, so
    E Z^2 = A (1 - s) (E[r^2 | pi_1, disagree] + E[r^2 | pi_0, disagree]),  Var Z = E Z^2 - delta^2:
    binary:   Var Z = A (2 (1 - s) p + delta) - delta^2
    general (both rewards with variance sigma^2):
              Var Z = A (1 - s) (2 sigma^2 + p^2 + (p + delta / (1 - s))^2) - delta^2.
s = 0 (never the same action) is the conservative default; agreeing requests cancel, so the
needed n shrinks by about (1 - s). Measured on the SIMULATOR.md default: the Bayes context policy
and the per-segment policy each pick the best global action on about half of the requests.
Minimum detectable lift (two-sided level alpha, power 1 - beta; the normal approximation of e.g.
Chow, Shao & Wang 2008, "Sample size calculations in clinical research", section 3.1): the
smallest delta with
    delta = (z_{1 - alpha/2} + z_{1 - beta}) sqrt(Var Z(delta) / n),
a quadratic in delta, solved in closed form. The frontier itself calls a point "better" than a
baseline only when their marginal intervals are disjoint (``report``); with probability 1 - beta
that needs the larger lift
    delta = z_{conf} (se_1 + se_0) + z_{1 - beta} se_D   (se: marginal IPS; se_D: paired),
solved by fixed-point iteration (``separable_lift``).
"""

from __future__ import annotations

from statistics import NormalDist
from typing import NamedTuple, Sequence

import numpy as np

from puts_jax.checks import InputError


def z_quantile(q: float) -> float:
    """Standard normal quantile z with P(Z <= z) = q."""
    return NormalDist().inv_cdf(q)


MAX_ACTIONS = 10 ** 6  # uniform exploration over more matches a point on under 1 row in 10^6
MAX_REQUESTS_PER_DAY = 1e11  # with MAX_DAYS, rows stay below 2^53 (exact float64 integers)
MAX_DAYS = 36_500  # 100 years of exploration
MAX_REWARD_SCALE = 1e9  # |base rate| of a non-binary reward (its variance: the square): keeps
# A (sigma^2 + p^2) and its square in the lift's closed form finite in float64
MAX_LIFT = 1e6  # relative lift (10^8 %): with MAX_REWARD_SCALE, gap^2 stays finite
MIN_TAIL = 1e-12  # alpha and power stay this far from 0 and 1: z quantiles finite in float64


def _check(n_actions: int, base, reward_var, agreement: float) -> None:
    """InputError naming the first of these that the formulas cannot use: ``n_actions`` (an
    integer in [2, MAX_ACTIONS]), ``base_rate`` (binary: in (0, 1); otherwise finite, at most
    MAX_REWARD_SCALE in size), ``reward_var`` (finite, in [0, MAX_REWARD_SCALE^2]),
    ``agreement`` (in [0, 1))."""
    if int(n_actions) != n_actions or not 2 <= n_actions <= MAX_ACTIONS:
        raise InputError("n_actions", [], f"must be an integer in [2, {MAX_ACTIONS:,}] (uniform "
                         f"exploration over more actions matches a point on under one logged "
                         f"row in a million), got {n_actions}")
    b = np.asarray(base, np.float64)
    if reward_var is None and not ((b > 0) & (b < 1)).all():
        raise InputError("base_rate", [], f"a binary reward rate must be in (0, 1), got {base}")
    if reward_var is not None and not (np.abs(b) <= MAX_REWARD_SCALE).all():
        raise InputError("base_rate", [], f"must be finite and at most {MAX_REWARD_SCALE:g} in "
                         f"size (rescale the reward), got {base}")
    if reward_var is not None and not 0 <= reward_var <= MAX_REWARD_SCALE ** 2:
        raise InputError("reward_var", [], f"must be finite, >= 0 and at most "
                         f"{MAX_REWARD_SCALE ** 2:g} (rescale the reward), got {reward_var}")
    if not 0 <= agreement < 1:
        raise InputError("agreement", [], f"must be in [0, 1), got {agreement}")


def check_levels(alpha: float, power: float) -> None:
    """InputError("alpha") / ("power") unless each is in [MIN_TAIL, 1 - MIN_TAIL] (a z quantile
    of 1 - 1e-17 is infinite: it rounds to 1 in float64)."""
    for name, v in (("alpha", alpha), ("power", power)):
        if not MIN_TAIL <= v <= 1 - MIN_TAIL:
            raise InputError(name, [], f"must be in (0, 1), at least {MIN_TAIL:g} from either "
                             f"end, got {v}")


def check_lift(lift: float, base_rate: float) -> float:
    """The absolute gap ``lift * base_rate`` of a relative ``lift``, or InputError("lift")
    unless the lift is in (0, MAX_LIFT] and the base rate > 0 (a lift relative to a base <= 0
    is no gain)."""
    if not 0 < lift <= MAX_LIFT:
        raise InputError("lift", [], f"must be a relative lift in (0, {MAX_LIFT:g}], e.g. 0.03 "
                         f"for +3%, got {lift}")
    if not base_rate > 0:
        raise InputError("lift", [], f"is relative to --base-rate, which must then be > 0, got "
                         f"{base_rate}")
    return lift * base_rate


def _second_moment(value, reward_var):
    """E[r^2] of a reward with mean ``value``: the mean itself for a binary reward (None)."""
    value = np.asarray(value, np.float64)
    return value if reward_var is None else reward_var + value * value


def ips_variance(value, n_actions: int, reward_var: float | None = None) -> np.ndarray:
    """Per-row variance of the IPS term (divide by n for the estimate): A E[r^2] - V^2."""
    _check(n_actions, value, reward_var, 0.0)
    return _ips_variance(value, n_actions, reward_var)


def _ips_variance(value, n_actions, reward_var):
    """``ips_variance`` unchecked: also at a binary rate of exactly 1 (a saturated gap)."""
    value = np.asarray(value, np.float64)
    return n_actions * _second_moment(value, reward_var) - value * value


def snips_variance(value, n_actions: int, reward_var: float | None = None) -> np.ndarray:
    """Per-row delta-method variance of SNIPS (divide by n): A sigma^2 (binary: A V (1 - V))."""
    _check(n_actions, value, reward_var, 0.0)
    value = np.asarray(value, np.float64)
    return n_actions * (value * (1 - value) if reward_var is None else reward_var + 0 * value)


def half_width(n, value, n_actions: int, estimator: str = "ips", reward_var: float | None = None,
               confidence: float = 0.95) -> np.ndarray:
    """Expected half-width of the normal ``confidence`` interval of one deterministic target
    policy's value on n uniformly logged rows; ``estimator`` "ips" or "snips"."""
    var = {"ips": ips_variance, "snips": snips_variance}[estimator](value, n_actions, reward_var)
    return z_quantile(0.5 + confidence / 2) * np.sqrt(var / np.asarray(n, np.float64))


def _quadratic(base, n_actions, agreement, reward_var):
    """(K0, K1, K2) with per-row paired variance Var Z(delta) = K0 + K1 delta + K2 delta^2."""
    A, s, p = float(n_actions), float(agreement), np.asarray(base, np.float64)
    if reward_var is None:
        return 2 * A * (1 - s) * p, A + 0 * p, -1.0 + 0 * p
    return 2 * A * (1 - s) * (reward_var + p * p), 2 * A * p, A / (1 - s) - 1 + 0 * p


def paired_variance(delta, base, n_actions: int, agreement: float = 0.0,
                    reward_var: float | None = None) -> np.ndarray:
    """Per-row variance of the paired IPS difference (lambda policy minus baseline) for a true
    gap ``delta`` over a baseline with mean ``base`` (module docstring)."""
    _check(n_actions, base, reward_var, agreement)
    k0, k1, k2 = _quadratic(base, n_actions, agreement, reward_var)
    d = np.asarray(delta, np.float64)
    return k0 + k1 * d + k2 * d * d


def max_gap(base, agreement: float, reward_var: float | None = None) -> np.ndarray:
    """Largest gap the model allows: a binary rate on the disagreement rows stays <= 1, so
    (1 - agreement) (1 - base); inf for a non-binary reward."""
    if reward_var is None:
        return (1 - agreement) * (1 - np.asarray(base, np.float64))
    return np.inf


def detectable_lift(n, base, n_actions: int, agreement: float = 0.0,
                    reward_var: float | None = None, alpha: float = 0.05,
                    power: float = 0.8) -> np.ndarray:
    """Minimum detectable absolute lift of a paired two-sided level-``alpha`` test with the given
    power on n rows: the positive root of (n - c^2 K2) d^2 - c^2 K1 d - c^2 K0 = 0 with
    c = z_{1 - alpha/2} + z_{power}; inf where no lift the model allows is detectable."""
    _check(n_actions, base, reward_var, agreement)
    c2 = (z_quantile(1 - alpha / 2) + z_quantile(power)) ** 2
    k0, k1, k2 = _quadratic(base, n_actions, agreement, reward_var)
    n = np.asarray(n, np.float64)
    a = n - c2 * k2
    with np.errstate(invalid="ignore", divide="ignore"):
        d = (c2 * k1 + np.sqrt(c2 * c2 * k1 * k1 + 4 * a * c2 * k0)) / (2 * a)
    ok = (a > 0) & (d <= max_gap(base, agreement, reward_var))
    return np.where(ok, d, np.inf)


def _separable_gap(n, delta, base, n_actions, agreement, reward_var, confidence, power):
    """z_conf (se_1 + se_0) + z_power se_D at a gap ``delta`` (all se on n rows)."""
    z, zb = z_quantile(0.5 + confidence / 2), z_quantile(power)
    se0 = np.sqrt(ips_variance(base, n_actions, reward_var) / n)
    se1 = np.sqrt(_ips_variance(np.minimum(base + delta, 1.0) if reward_var is None
                                else base + delta, n_actions, reward_var) / n)
    sed = np.sqrt(np.maximum(paired_variance(delta, base, n_actions, agreement, reward_var), 0) / n)
    return z * (se0 + se1) + zb * sed


def separable_lift(n, base, n_actions: int, agreement: float = 0.0,
                   reward_var: float | None = None, confidence: float = 0.95,
                   power: float = 0.8, iters: int = 60) -> np.ndarray:
    """Smallest absolute lift for which the lambda point's and the baseline's marginal IPS
    ``confidence`` intervals are disjoint with probability ``power`` (what the frontier's
    "better" verdict needs): the fixed point of delta = z (se_1 + se_0) + z_power se_D."""
    _check(n_actions, base, reward_var, agreement)
    n = np.asarray(n, np.float64)
    base = np.asarray(base, np.float64)
    d = np.zeros(np.broadcast(n, base).shape)
    for _ in range(iters):
        d = _separable_gap(n, d, base, n_actions, agreement, reward_var, confidence, power)
        d = np.minimum(d, 1e9)
    return np.where(d <= max_gap(base, agreement, reward_var), d, np.inf)


def requests_for_lift(delta, base, n_actions: int, agreement: float = 0.0,
                      reward_var: float | None = None, alpha: float = 0.05, power: float = 0.8,
                      disjoint: bool = False) -> np.ndarray:
    """Logged rows needed to detect an absolute lift ``delta``: c^2 Var Z(delta) / delta^2 for the
    paired test, or (z (s_1 + s_0) + z_power s_D)^2 / delta^2 (per-row sds, intervals at
    1 - alpha) for disjoint intervals. inf where the gap exceeds what the model allows
    (``max_gap``), and where the count passes float64's range (a gap of 1e-300)."""
    _check(n_actions, base, reward_var, agreement)
    delta = np.asarray(delta, np.float64)
    with np.errstate(over="ignore", divide="ignore"):  # a gap of 1e-300: inf rows, no warning
        if disjoint:
            root_n = _separable_gap(1.0, delta, np.asarray(base, np.float64), n_actions,
                                    agreement, reward_var, 1 - alpha, power)
            n = (root_n / delta) ** 2
        else:
            c2 = (z_quantile(1 - alpha / 2) + z_quantile(power)) ** 2
            n = c2 * paired_variance(delta, base, n_actions, agreement, reward_var) / delta ** 2
    return np.where((delta > 0) & (delta <= max_gap(base, agreement, reward_var)), n, np.inf)


class Plan(NamedTuple):
    """``plan``'s table, one entry per day count (arrays of the same length)."""

    days: np.ndarray         # f64[T] days of exploration
    rows: np.ndarray         # f64[T] logged exploration rows n
    matched: np.ndarray      # f64[T] expected matched rows (= ESS) per point, n / A
    hw_ips: np.ndarray       # f64[T] expected IPS interval half-width at the base rate
    hw_snips: np.ndarray     # f64[T] expected SNIPS interval half-width
    lift: np.ndarray         # f64[T] minimum detectable absolute lift (paired test)
    lift_disjoint: np.ndarray  # f64[T] lift for disjoint intervals (the frontier's "better")


def day_grid(max_days: float) -> np.ndarray:
    """A readable set of day counts up to ``max_days``: every day up to 7, then 8 roughly
    geometric steps from 7 (rounded to whole days), always ending at ``max_days``."""
    if not 0 < max_days <= MAX_DAYS:
        raise InputError("max_days", [], f"must be > 0 and at most {MAX_DAYS:,} (100 years), "
                         f"got {max_days}")
    short = np.arange(1, min(7, int(max_days)) + 1, dtype=np.float64)
    long = np.round(np.geomspace(7, max_days, 8)) if max_days > 7 else np.array([])
    long = long[long < max_days]  # rounding up must not pass the end (7.5 gave a row of 8 days)
    return np.unique(np.concatenate([short, long, [float(max_days)]]))


def plan(n_actions: int, share: float, requests_per_day: float, base_rate: float,
         days: Sequence[float], agreement: float = 0.0, reward_var: float | None = None,
         alpha: float = 0.05, power: float = 0.8) -> Plan:
    """Expected interval half-widths and minimum detectable lifts over ``days`` (module
    docstring), for a binary reward with rate ``base_rate`` (or any reward with that mean and
    variance ``reward_var``). Intervals are at 1 - alpha."""
    if not 0 < share <= 1:
        raise InputError("share", [], f"exploration share must be in (0, 1], got {share}")
    if not 0 < requests_per_day <= MAX_REQUESTS_PER_DAY:
        raise InputError("requests_per_day", [], f"must be > 0 and at most "
                         f"{MAX_REQUESTS_PER_DAY:g}, got {requests_per_day}")
    check_levels(alpha, power)
    d = np.asarray(days, np.float64).reshape(-1)
    ok = (d > 0) & (d <= MAX_DAYS)
    if d.size == 0 or not ok.all():
        raise InputError("days", [], f"every day count must be > 0 and at most {MAX_DAYS:,} "
                         f"(100 years), got {d[~ok].tolist() or 'none'}")
    _check(n_actions, base_rate, reward_var, agreement)
    n = d * requests_per_day * share
    if not (n >= 1).all():
        raise InputError("requests_per_day", [], f"{requests_per_day:g} requests/day x share "
                         f"{share:g} x {d.min():g} day(s) = {n.min():.3g} logged rows; every day "
                         "count needs at least 1 logged row")
    kw = dict(n_actions=n_actions, agreement=agreement, reward_var=reward_var, power=power)
    return Plan(d, n, n / n_actions,
                half_width(n, base_rate, n_actions, "ips", reward_var, 1 - alpha),
                half_width(n, base_rate, n_actions, "snips", reward_var, 1 - alpha),
                detectable_lift(n, base_rate, alpha=alpha, **kw),
                separable_lift(n, base_rate, confidence=1 - alpha, **kw))


NORMAL_MIN_COUNT = 5  # expected matched successes and failures (binary; matched rows
# otherwise: NORMAL_MIN_COUNT * 2) a point needs before the normal approximation is trusted


def percent(v: float) -> str:
    """``v`` as a percentage to 4 significant digits, more where those would round a share
    strictly between 0 and 1 to 0% or 100% ('95%', '32.5%', '99.9999%', not '100%')."""
    for digits in range(4, 18):
        s = f"{v * 100:.{digits}g}"
        if not 0 < v < 1 or float(s) not in (0.0, 100.0):
            break
    return s + "%"


def number(x: float, sign: str = "") -> str:
    """An absolute value: 4 decimals from 0.001 to 1e6 (the usual range: '0.0238'), else 4
    significant digits ('1.5e-05', '3.719e+07'), so no value prints as 0.0000 or as 16 digits of
    float noise."""
    if x == 0 or 1e-3 <= abs(x) < 1e6:
        return f"{x:{sign}.4f}"
    return f"{x:{sign}.4g}"


def count(x: float) -> str:
    """Rows: whole numbers with thousands separators ('2,778'); 3 significant digits under 100,
    where rounding would hide a fraction ('0.1', '2.78'); 4 significant digits from 1e15 on,
    past float64's exact integers ('5.651e+16')."""
    if x >= 1e15:
        return f"{x:.4g}"
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def days_text(d: float) -> str:
    """'6.7 days'; '0.0028 days' under a tenth; past MAX_DAYS, '4.266e+05 days (more than 100
    years)'."""
    if d > MAX_DAYS:
        return f"{d:.4g} days (more than 100 years)"
    return f"{d:.2g} days" if d < 0.1 else f"{d:,.1f} days"


def _relative(r: float, sign: str) -> str:
    """A ratio to the base rate as a percentage: one decimal from 0.1% to 100,000%, else 3
    significant digits ('0.025%', '1.18e+05%')."""
    if r == 0 or 1e-3 <= abs(r) < 1e3:
        return f"{r:{sign}.1%}"
    return f"{r * 100:{sign}.3g}%"


def _cell(x: float, base: float, sign: str) -> str:
    """An absolute number and its value relative to the base rate (only where the base rate is
    > 0: relative to 0 or a negative mean it says nothing); inf -> "not detectable"."""
    if not np.isfinite(x):
        return "not detectable"
    return number(x, sign) + (f" ({_relative(x / base, sign)})" if base > 0 else "")


def normal_ok(matched, base, reward_var: float | None = None) -> np.ndarray:
    """bool per day count: whether ``matched`` rows a point are enough for the normal
    approximation behind the half-widths and lifts: at least NORMAL_MIN_COUNT expected
    successes and failures among them for a binary reward (the textbook n p >= 5 rule), at least
    2 * NORMAL_MIN_COUNT rows otherwise. Where it fails the numbers are not meaningful (a binary
    rate's normal interval can pass [0, 1]; the frontier uses exact intervals there)."""
    m = np.asarray(matched, np.float64)
    if reward_var is None:
        return m * min(base, 1 - base) >= NORMAL_MIN_COUNT
    return m >= 2 * NORMAL_MIN_COUNT


def format_plan(p: Plan, base_rate: float, alpha: float = 0.05, power: float = 0.8,
                reward_var: float | None = None) -> str:
    """``plan`` as a text table: per day count the logged rows, matched rows per point, the
    expected half-widths and the two lifts (absolute, and relative to a base rate > 0). A day
    count whose matched rows are too few for the normal approximation (``normal_ok``) is marked
    ``*`` and explained in a last line."""
    pct = percent(1 - alpha)
    head = ["days", "logged rows", "matched/point", f"+-{pct} IPS", f"+-{pct} SNIPS",
            f"detectable lift ({percent(power)} power)", f"lift for disjoint {pct} intervals"]
    ok = normal_ok(p.matched, base_rate, reward_var)
    rows = [[f"{d:g}" + ("" if good else "*"), count(n), count(m), _cell(hi, base_rate, ""),
             _cell(hs, base_rate, ""), _cell(lf, base_rate, "+"), _cell(ld, base_rate, "+")]
            for d, n, m, hi, hs, lf, ld, good in zip(*p, ok)]
    widths = [max(len(r[c]) for r in [head] + rows) for c in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [head] + rows]
    if not ok.all():
        need = (f"{NORMAL_MIN_COUNT} expected successes and failures" if reward_var is None
                else f"{2 * NORMAL_MIN_COUNT} matched rows")
        lines.append(f"*: fewer than {need} a point: the normal approximation behind these "
                     "numbers does not hold (the frontier's exact intervals apply); plan for "
                     "more logged rows")
    return "\n".join(lines)
