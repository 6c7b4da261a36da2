"""Estimators and intervals against the simulator's ground truth, over many independent logs.

The target. An interval from a log of i.i.d. requests estimates the POPULATION value of the policy:
the expected reward over the request distribution the log was drawn from. (The mean of exact
values over the log's own requests is another, conditional target; an interval for the
population value over-covers it, because it also carries the spread of the requests.) Here the
population is a fixed pool of ``POOL`` simulated requests (``simulator.sample_requests`` of the
tiny world) with exact values for every action (``simulator.true_values``): each log draws its
requests uniformly WITH replacement from the pool, so requests are i.i.d. from the pool's
distribution and every policy's population value is known exactly, with no Monte Carlo error:
the pool mean of its exact values. Logging is uniform over the A actions; rewards are drawn as the
simulator draws them: session success ~ Bernoulli(J0[i, a]) and clicks = sum over the slate
positions of Bernoulli(e_k q_click[slot k]) (their expectation is J1[i, a]).

Policies: single global actions (the pool's best and worst for J0, production), the Bayes context
policy, a "learned" greedy policy of a fixed random QNetwork at two lambdas (per-row actions), and
the greedy policies of a lambda sweep over a posterior Q-model (Q(x) = sum_s p(s | x) Vbar[s]),
which is also the reward model of DR everywhere: it comes from the world's calibration sample,
never from the rows it corrects. Each log is evaluated through ``puts_jax.evaluation`` (sweep with
baselines, per-row fixed actions) with a Poisson bootstrap of R resamples.

Checks: coverage of the 95% intervals of IPS (normal), SNIPS (delta method and bootstrap
percentile) and DR (normal) per policy and objective; the simultaneous SNIPS bands (bootstrap-t
max, Bonferroni) over the whole true frontier; the bias of IPS and DR (zero within Monte Carlo
error: both are unbiased for the population value); DR's variance below IPS's.
The full run (2000 logs) is ``make test-slow``; the default suite runs 120 logs with an exact
binomial acceptance region.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats as sps

from puts_jax import bootstrap, evaluation, kernels
from puts_jax.config import QNetConfig, SweepConfig
from puts_jax.data import simulator
from puts_jax.qnet import QNetwork
from puts_jax.types import LoggedBatch

POOL = 20000  # requests in the population
KINDS = simulator.REWARD_KINDS  # ("binary", "count")
ESTIMATORS = ("ips", "snips", "snips_boot", "dr", "exact")
CHECKED = ("ips", "snips", "snips_boot", "dr")  # normal-theory / bootstrap: ~95% expected
N_LAMBDAS = 11


class PosteriorQ(nnx.Module):
    """Q f32[B, A, J] = sum_s p(s | x) Vbar[s, a, :]: the simulator's closed-form segment
    posterior times the per-segment mean exact rewards of its calibration sample."""

    def __init__(self, world: simulator.World):
        self.u = nnx.Variable(jnp.asarray(world.cfg.context_scale * world.u, jnp.float32))
        self.vbar = nnx.Variable(jnp.asarray(world.vbar, jnp.float32))

    def __call__(self, context, context_ids=None):
        post = jax.nn.softmax(context @ self.u[...].T, axis=-1)
        return jnp.einsum("bs,saj->baj", post, self.vbar[...])


class Setup(NamedTuple):
    world: simulator.World
    context: np.ndarray  # f32[POOL, D]
    j0: np.ndarray  # f64[POOL, A] exact session success
    p_click: np.ndarray  # f64[POOL, A, slate] click probability per slate position
    fixed: np.ndarray  # i32[F] global actions
    rows: np.ndarray  # i32[Q, POOL] per-row policies (Bayes, learned at two lambdas)
    lams: np.ndarray  # f32[L, J]
    qmodel: PosteriorQ
    names: list  # F + Q + L policy names
    truth: np.ndarray  # f64[F + Q + L, J] population values


def make_setup(seed: int = 0) -> Setup:
    world = simulator.make_world(simulator.SimConfig.tiny())
    req = simulator.sample_requests(world, POOL, seed=1000 + seed)
    W = world.action_set.weights
    j0 = simulator.true_values(world, req, W)[..., 0].astype(np.float64)
    top = simulator._slates(world, req.preds, W)  # [POOL, A, slate], as the simulator ranks
    qc = np.take_along_axis(req.q_true[:, None, :, 0].astype(np.float64), top, axis=-1)
    p_click = world.examine * qc
    rows_ = np.arange(POOL)
    value = lambda a: np.stack([j0[rows_, a], p_click[rows_, a].sum(-1)], 1)  # noqa: E731
    mean0 = j0.mean(0)
    fixed = np.array([np.argmax(mean0), world.action_set.production, np.argmin(mean0)], np.int32)
    learned = QNetwork(QNetConfig.tiny(), world.cfg.context_dim, len(W), KINDS,
                       rngs=nnx.Rngs(5))
    q_learned = np.asarray(learned(jnp.asarray(req.context)))
    lam_learned = np.array([[1.0, 0.0], [0.3, 0.7]], np.float32)
    rows = np.concatenate([simulator.bayes_actions(world, req.context)[None],
                           np.argmax(np.einsum("baj,lj->lba", q_learned, lam_learned), -1)])
    lams = np.stack([np.linspace(1, 0, N_LAMBDAS), np.linspace(0, 1, N_LAMBDAS)], 1)
    lams = lams.astype(np.float32)
    qmodel = PosteriorQ(world)
    q_post = jax.jit(qmodel)(jnp.asarray(req.context))
    sweep = np.asarray(jax.jit(kernels.sweep_actions)(q_post, jnp.asarray(lams)))  # engine's rule
    names = ([f"global action {a}" for a in fixed[:1]] + [f"production ({fixed[1]})"]
             + [f"worst action {fixed[2]}", "Bayes context", "learned lam=(1,0)",
                "learned lam=(.3,.7)"] + [f"sweep lam=({l[0]:.1f},{l[1]:.1f})" for l in lams])
    truth = np.stack([value(np.full(POOL, a)).mean(0) for a in fixed]
                     + [value(a).mean(0) for a in rows] + [value(a).mean(0) for a in sweep])
    return Setup(world, req.context, j0, p_click, fixed, rows.astype(np.int32), lams, qmodel,
                 names, truth)


def draw_log(s: Setup, n: int, rng: np.random.Generator) -> tuple[LoggedBatch, np.ndarray]:
    """One exploration log of n requests drawn with replacement from the pool, uniform logging."""
    A = s.j0.shape[1]
    idx = rng.integers(0, POOL, n)
    a = rng.integers(0, A, n).astype(np.int32)
    r0 = rng.random(n) < s.j0[idx, a]
    r1 = (rng.random((n, s.p_click.shape[2])) < s.p_click[idx, a]).sum(1)
    rewards = np.stack([r0, r1], 1).astype(np.float32)
    lb = LoggedBatch(s.context[idx], a, np.full(n, 1.0 / A), rewards, np.eye(A, dtype=bool)[a],
                     np.ones(n, bool))
    return lb, idx


def _intervals(est, boot) -> dict:
    out = {e: (getattr(est, f"{e}_lo"), getattr(est, f"{e}_hi")) for e in ("ips", "snips", "dr")}
    out["snips_boot"] = (boot.snips_lo, boot.snips_hi)
    out["exact"] = (est.exact_lo, est.exact_hi)
    return out


class Results(NamedTuple):
    covered: dict  # estimator -> bool[D, P, J] (an undefined interval covers nothing)
    defined: dict  # estimator -> bool[D, P, J] the interval exists (exact: binary rewards only)
    values: dict  # "ips" / "snips" / "dr" -> f64[D, P, J]
    bands: dict  # band name -> bool[D] (every sweep point, both objectives / per objective)
    seconds: float


def run(s: Setup, n_draws: int, n_rows: int, n_resamples: int, seed: int = 0) -> Results:
    A = s.j0.shape[1]
    cfg = SweepConfig(n_lambdas=N_LAMBDAS, chunk_rows=1 << (n_rows - 1).bit_length(),
                      lambda_chunk=4)
    base = evaluation.fixed_action_probs(s.fixed, A)
    rng = np.random.default_rng(seed)
    root = jax.random.key(seed)
    cov = {e: [] for e in ESTIMATORS}
    defined = {e: [] for e in ESTIMATORS}
    vals = {e: [] for e in ("ips", "snips", "dr")}
    bands = {k: [] for k in ("boot_joint", "boot_per_objective", "bonferroni_joint",
                             "bonferroni_per_objective")}
    t0 = time.perf_counter()
    for d in range(n_draws):
        lb, idx = draw_log(s, n_rows, rng)
        key = jax.random.fold_in(root, d)
        ev = evaluation.evaluate_log(s.qmodel, s.lams, [lb], cfg, reward_kinds=KINDS,
                                     baselines=base, bootstrap=n_resamples, key=key)
        er = evaluation.evaluate_fixed_actions(s.rows[:, idx], A, [lb], cfg, model=s.qmodel,
                                               reward_kinds=KINDS, bootstrap=n_resamples, key=key)
        parts = [(ev.baselines, ev.baseline_boot), (er.estimates, er.boot), (ev.estimates, ev.boot)]
        for e in ESTIMATORS:
            lo = np.concatenate([_intervals(*p)[e][0] for p in parts])
            hi = np.concatenate([_intervals(*p)[e][1] for p in parts])
            cov[e].append((lo <= s.truth) & (s.truth <= hi))
            defined[e].append(np.isfinite(lo) & np.isfinite(hi))
        for e in vals:
            vals[e].append(np.concatenate([getattr(p[0], e) for p in parts]))
        sw = s.truth[-N_LAMBDAS:]
        inside = lambda b: (b.lo <= sw) & (sw <= b.hi)  # noqa: E731  NaN: not covered
        fe = bootstrap.frontier_evidence(ev.estimates.snips, ev.estimates.snips_se,
                                         bootstrap.replicates(ev.boot_stats, "snips"),
                                         reps_se=bootstrap.replicate_se(ev.boot_stats, "snips"))
        bands["boot_joint"].append(inside(fe.band).all())
        bands["boot_per_objective"].append(inside(fe.band_per_objective).all(0))
        bj = bootstrap.bonferroni_band(ev.estimates.snips, ev.estimates.snips_se, joint=True)
        bp = bootstrap.bonferroni_band(ev.estimates.snips, ev.estimates.snips_se)
        bands["bonferroni_joint"].append(inside(bj).all())
        bands["bonferroni_per_objective"].append(inside(bp).all(0))
    return Results({e: np.asarray(v) for e, v in cov.items()},
                   {e: np.asarray(v) for e, v in defined.items()},
                   {e: np.asarray(v) for e, v in vals.items()},
                   {k: np.asarray(v) for k, v in bands.items()}, time.perf_counter() - t0)


def table(s: Setup, res: Results) -> str:
    """Coverage (%) per policy (rows) and estimator x objective (columns), bands, bias, variance."""
    D = len(res.bands["boot_joint"])
    names = simulator.REWARD_NAMES
    head = f"{'policy':<22}" + "".join(f"{e[:10] + '/' + n[:7]:>19}" for e in ESTIMATORS
                                       for n in names)
    lines = [f"coverage of 95% intervals over {D} logs (%), truth = population value", head]
    for p, name in enumerate(s.names):
        lines.append(f"{name:<22}" + "".join(
            f"{100 * res.covered[e][:, p, j].mean():>19.1f}" if res.defined[e][:, p, j].any()
            else f"{'-':>19}" for e in ESTIMATORS for j in range(2)))
    for k, v in res.bands.items():
        lines.append(f"band {k:<26} covers the whole true frontier: "
                     + " / ".join(f"{100 * x:.1f}%" for x in np.atleast_1d(v.mean(0))))
    lines.append(f"{'policy':<22}" + "".join(f"{'bias z ' + e + '/' + n[:7]:>19}"
                                             for e in ("ips", "dr") for n in names)
                 + "".join(f"{'var DR/IPS ' + n[:7]:>19}" for n in names))
    z, ratio = bias_z(s, res), var_ratio(res)
    for p, name in enumerate(s.names):
        lines.append(f"{name:<22}" + "".join(f"{z[e][p, j]:>19.2f}" for e in ("ips", "dr")
                                             for j in range(2))
                     + "".join(f"{ratio[p, j]:>19.3f}" for j in range(2)))
    lines.append(f"{D} logs in {res.seconds:.0f}s")
    return "\n".join(lines)


def bias_z(s: Setup, res: Results) -> dict:
    """Mean error over draws / its standard error, per estimator, policy and objective."""
    out = {}
    for e, v in res.values.items():
        err = v - s.truth
        out[e] = err.mean(0) / (err.std(0, ddof=1) / np.sqrt(len(err)))
    return out


def var_ratio(res: Results) -> np.ndarray:
    return res.values["dr"].var(0, ddof=1) / res.values["ips"].var(0, ddof=1)


@pytest.fixture(scope="module")
def setup():
    return make_setup()


def test_coverage_small(setup):
    """120 logs: every interval's coverage inside an exact binomial acceptance region (a gross
    miscalibration detector: P(Binomial(120, 0.95) < k_min) < 1e-3), the pooled coverage near
    95%, and the simultaneous bands inside the same region."""
    D = 120
    res = run(setup, n_draws=D, n_rows=4000, n_resamples=200, seed=1)
    print("\n" + table(setup, res))
    k_min = int(sps.binom.ppf(1e-3, D, 0.95))  # 106 of 120
    for e in CHECKED:
        k = res.covered[e].sum(0)
        assert (k >= k_min).all(), (e, k)
        assert 0.92 <= res.covered[e].mean() <= 0.98, e
    assert (res.covered["exact"][..., 0].sum(0) >= k_min).all()  # binary objective only
    assert res.bands["boot_joint"].sum() >= k_min
    assert res.bands["bonferroni_joint"].sum() >= k_min


@pytest.mark.slow
def test_coverage_full(setup):
    """2000 logs of 5000 rows, R = 200: each interval's coverage in [93%, 97%] (Monte Carlo SE
    0.5%), the simultaneous bands cover the whole true frontier >= 95% (up to 2 Monte Carlo SE),
    IPS and DR unbiased (|z| < 4), DR's variance below IPS's."""
    D = 2000
    res = run(setup, n_draws=D, n_rows=5000, n_resamples=200, seed=2)
    print("\n" + table(setup, res))
    cov = {e: res.covered[e].mean(0) for e in ESTIMATORS}
    for e in CHECKED:
        assert ((cov[e] >= 0.93) & (cov[e] <= 0.97)).all(), (e, cov[e])
    assert (cov["exact"][:, 0] >= 0.93).all()
    se = np.sqrt(0.95 * 0.05 / D)
    for k in ("boot_joint", "boot_per_objective", "bonferroni_joint", "bonferroni_per_objective"):
        assert (res.bands[k].mean(0) >= 0.95 - 2 * se).all(), (k, res.bands[k].mean(0))
    z = bias_z(setup, res)
    assert np.abs(z["ips"]).max() < 4 and np.abs(z["dr"]).max() < 4
    assert (var_ratio(res) < 1).all()
