"""Exploration planning against simulation: standard errors and the power of the paired test over
many simulated uniform logs, and SIMULATOR.md's data-size statement on the default world."""

import numpy as np
import pytest

from puts_jax import cli, planning
from puts_jax.checks import InputError


def _uniform_logs(rng, R, n, A, chunk=250):
    """R independent uniform logs of n rows over A actions, in chunks of logs: yields (a, pi, u),
    the logged actions, a deterministic target's actions and uniforms, each [chunk, n]."""
    for lo in range(0, R, chunk):
        r = min(chunk, R - lo)
        a = rng.integers(0, A, size=(r, n), dtype=np.int8)
        pi1 = rng.integers(0, A, size=(r, n), dtype=np.int8)
        yield a, pi1, rng.random((r, n), dtype=np.float32)


@pytest.mark.parametrize("kind", ["binary", "count"])
def test_ips_and_snips_standard_errors_match_simulated_logs(kind):
    A, n, R = 36, 5000, 3000
    rng = np.random.default_rng(0)
    ips, snips = [], []
    for a, pi, u in _uniform_logs(rng, R, n, A):
        match = a == pi
        if kind == "binary":  # heterogeneous per-request rates, mean 2 / 4.8
            r = (u < rng.beta(2.0, 2.8, size=u.shape)).astype(np.float64)
        else:  # clicks: Poisson counts, mean = variance = 0.3
            r = rng.poisson(0.3, size=u.shape).astype(np.float64)
        wr = A * match * r
        ips.append(wr.mean(1))
        snips.append(wr.sum(1) / (A * match.sum(1)))
    V, var = (2 / 4.8, None) if kind == "binary" else (0.3, 0.3)
    ips, snips = np.concatenate(ips), np.concatenate(snips)
    assert ips.mean() == pytest.approx(V, rel=0.01)
    se_ips = planning.half_width(n, V, A, "ips", var) / planning.z_quantile(0.975)
    se_snips = planning.half_width(n, V, A, "snips", var) / planning.z_quantile(0.975)
    assert ips.std() == pytest.approx(se_ips, rel=0.06)
    assert snips.std() == pytest.approx(se_snips, rel=0.06)
    if kind == "binary":  # the closed forms of the brief
        assert se_ips ** 2 == pytest.approx((A * V - V * V) / n)
        assert se_snips ** 2 == pytest.approx(A * V * (1 - V) / n)


def _paired_runs(A, n, R, p, delta, s, seed):
    """R logs: pi_0 with rate p everywhere, pi_1 = pi_0 on a share s of requests, rate
    p + delta / (1 - s) where they differ. Returns per-log IPS of both, their standard errors and
    the paired difference with its standard error."""
    rng = np.random.default_rng(seed)
    out = []
    for a, pi0, u in _uniform_logs(rng, R, n, A):
        agree = rng.random(u.shape) < s
        pi1 = np.where(agree, pi0, (pi0 + 1 + rng.integers(0, A - 1, size=u.shape)) % A)
        m0, m1 = a == pi0, a == pi1
        rate = np.where(m1 & ~agree, p + delta / (1 - s), p)
        r = (u < rate).astype(np.float64)
        y1, y0 = A * m1 * r, A * m0 * r
        z = y1 - y0
        sq = np.sqrt(n)
        out.append(np.stack([y1.mean(1), y0.mean(1), y1.std(1, ddof=1) / sq,
                             y0.std(1, ddof=1) / sq, z.mean(1), z.std(1, ddof=1) / sq], 1))
    return np.concatenate(out)


def test_paired_difference_variance_and_power_match_simulation():
    A, p, delta, s = 5, 0.3, 0.06, 0.4
    n = int(planning.requests_for_lift(delta, p, A, s))
    assert planning.detectable_lift(n, p, A, s) == pytest.approx(delta, rel=1e-3)
    runs = _paired_runs(A, n, 2000, p, delta, s, seed=1)
    diff, se_d = runs[:, 4], runs[:, 5]
    assert diff.mean() == pytest.approx(delta, rel=0.05)
    assert diff.std() == pytest.approx(np.sqrt(planning.paired_variance(delta, p, A, s) / n),
                                       rel=0.06)
    power = np.mean(np.abs(diff / se_d) > planning.z_quantile(0.975))
    assert 0.75 < power < 0.85, power
    # The frontier's verdict: the marginal 95% intervals disjoint, at the planned size.
    nd = int(planning.requests_for_lift(delta, p, A, s, disjoint=True))
    assert nd > 1.5 * n
    assert planning.separable_lift(nd, p, A, s) == pytest.approx(delta, rel=1e-3)
    runs = _paired_runs(A, nd, 1500, p, delta, s, seed=2)
    z = planning.z_quantile(0.975)
    sep = np.mean(runs[:, 0] - z * runs[:, 2] > runs[:, 1] + z * runs[:, 3])
    assert 0.74 < sep < 0.86, sep


def test_simulator_statement_on_data_sizes():
    """SIMULATOR.md: telling the Bayes context policy (gap about 0.0135 over the best global
    action, whose J0 is about 0.415; A = 36) from the best global action with 80% power needs
    about 580k logged requests; the per-segment policy (gap 0.0195) about 300k. Those are paired
    IPS comparisons on one log: the policies agree on about half of the requests."""
    from puts_jax.data import simulator as sim

    world = sim.make_world(sim.SimConfig.default())
    g, vbar = sim.best_global_action(world), world.vbar[:, :, 0]
    req = sim.sample_requests(world, 40_000, seed=11)
    seg = req.segment
    c2 = (planning.z_quantile(0.975) + planning.z_quantile(0.8)) ** 2
    for actions, stated in ((sim.bayes_actions(world, req.context), 580_000),
                            (sim.segment_oracle_actions(world, seg), 300_000)):
        v1, v0 = vbar[seg, actions], vbar[seg, g]  # E[r | x, a] = Vbar[segment, a] here
        delta, p, agree = v1.mean() - v0.mean(), v0.mean(), np.mean(actions == g)
        assert 0.45 < agree < 0.56 and p == pytest.approx(0.415, abs=0.003)
        # Per-request second moment of the paired IPS term: the figure SIMULATOR.md quotes.
        exact = c2 * (36 * np.mean((actions != g) * (v1 + v0)) - delta ** 2) / delta ** 2
        assert exact == pytest.approx(stated, rel=0.06)
        # The closed form (baseline rate p where they differ) is a little conservative.
        closed = planning.requests_for_lift(delta, p, 36, agree)
        assert exact <= closed <= 1.1 * stated
        assert planning.detectable_lift(stated, p, 36, agree) == pytest.approx(delta, rel=0.06)


def test_plan_table_and_errors():
    p = planning.plan(36, 0.05, 2e6, 0.415, [1, 4, 16])
    np.testing.assert_allclose(p.rows, [1e5, 4e5, 16e5])
    np.testing.assert_allclose(p.matched, p.rows / 36)
    np.testing.assert_allclose(p.hw_ips[1:] / p.hw_ips[:-1], [0.5, 0.5])  # 1 / sqrt(days)
    assert (p.hw_snips < p.hw_ips).all() and (np.diff(p.lift) < 0).all()
    assert (p.lift_disjoint > p.lift).all()
    assert planning.day_grid(28)[[0, -1]].tolist() == [1, 28]
    assert planning.detectable_lift(50, 0.415, 36).item() == np.inf  # too few rows
    with pytest.raises(InputError, match="share"):
        planning.plan(36, 0.0, 2e6, 0.415, [1])
    with pytest.raises(InputError, match="base_rate"):
        planning.plan(36, 0.1, 2e6, 1.0, [1])
    with pytest.raises(InputError, match="agreement"):
        planning.plan(36, 0.1, 2e6, 0.4, [1], agreement=1.0)
    with pytest.raises(InputError, match="days"):
        planning.plan(36, 0.1, 2e6, 0.4, [1, 0])


def test_cli_plan(capsys):
    assert cli.main(["plan", "--actions", "36", "--share", "0.05", "--requests-per-day", "2e6",
                     "--base-rate", "0.415", "--days", "1,7", "--agreement", "0.5",
                     "--lift", "0.0325"]) == 0
    out = capsys.readouterr().out
    assert "detectable lift" in out and "700,000" in out and "days" in out
    assert "a +3.25% lift (+0.0135) with paired test" in out  # was printed as +3.2%
    assert cli.main(["plan", "--actions", "1", "--share", "0.05", "--requests-per-day", "1e6",
                     "--base-rate", "0.4"]) == 2


def test_plan_days_are_one_row_each_in_ascending_order(capsys):
    from puts_jax import cli

    argv = ["plan", "--actions", "36", "--share", "0.05", "--requests-per-day", "2e6",
            "--base-rate", "0.415", "--days"]
    assert cli.main(argv + ["7,1,7"]) == 0
    messy = capsys.readouterr().out
    assert cli.main(argv + ["1,7"]) == 0
    assert messy == capsys.readouterr().out
