"""Fresh-user review 6 of the trainer (``python -m train``) and ``puts-jax plan``.

plan at the extremes of its valid inputs: every printed number finite and readable (no
'0.0000' for a value of 1e-6, no 16 digits of float noise, no 'inf%' and no numpy warning for a
base rate of 0, no relative column against a negative mean, '0.1' matched rows instead of '0'),
day counts whose matched rows are too few for the normal approximation marked, a lift whose
rows pass float64's range or a binary rate's ceiling said as such, and shares printed without
rounding 99.9999% to 100%. Every number is the closed form of ``planning``'s docstring.
"""

import re
import warnings

import numpy as np
import pytest

from puts_jax import cli, planning

PLAN = ["plan", "--share", "0.05", "--requests-per-day", "2e6"]


def _plan(capsys, *argv) -> str:
    """stdout of ``puts-jax plan`` (exit 0, nothing on stderr, no Python warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main([*PLAN, *argv]) == 0
    out, err = capsys.readouterr()
    assert err == "" and [str(w.message) for w in caught] == []
    assert not re.search(r"\binf|nan\b", out), out
    return out


def _rows(out: str) -> list[list[str]]:
    """The table's data rows split on runs of 2+ spaces (the header is the second line)."""
    lines = out.splitlines()
    return [re.split(r"\s{2,}", ln.strip()) for ln in lines[2:] if re.match(r"\s*\d", ln)]


def test_a_million_actions_shows_fractional_matched_rows_and_marks_the_normal_approximation(
        capsys):
    out = _plan(capsys, "--actions", "1000000", "--base-rate", "0.415", "--days", "1,28")
    (d1, n1, m1, hw1, *_), (d28, _, m28, *_) = _rows(out)
    assert (d1, n1, m1, d28, m28) == ("1*", "100,000", "0.1", "28*", "2.8")  # was '0' and '3'
    # the closed form: 1.96 sqrt((A p - p^2) / n), 962% of the base rate
    want = planning.z_quantile(0.975) * np.sqrt((1e6 * 0.415 - 0.415 ** 2) / 1e5)
    assert hw1 == f"{want:.4f} ({want / 0.415:.1%})" == "3.9927 (962.1%)"
    assert ("*: fewer than 5 expected successes and failures a point: the normal approximation "
            "behind these numbers does not hold") in out


def test_a_base_rate_near_0_prints_significant_digits_not_zeros(capsys):
    out = _plan(capsys, "--actions", "36", "--base-rate", "1e-9", "--days", "1", "--lift", "0.03")
    hw = planning.z_quantile(0.975) * np.sqrt((36e-9 - 1e-18) / 1e5)
    assert _rows(out)[0][3] == f"{hw:.4g} ({hw / 1e-9 * 100:.3g}%)" == "1.176e-06 (1.18e+05%)"
    assert "0.0000" not in out  # the half-width, and the lift's +3e-11, printed as 0.0000 before
    assert "a +3% lift (+3e-11) with paired test: 637,329,034,429,138 logged rows = 6.373e+09 " \
           "days (more than 100 years)" in out


def test_a_base_rate_near_1_gives_the_largest_gap_when_a_lift_cannot_exist(capsys):
    out = _plan(capsys, "--actions", "36", "--base-rate", "0.999999", "--days", "1",
                "--lift", "0.03")
    snips = planning.z_quantile(0.975) * np.sqrt(36 * 0.999999 * 1e-6 / 1e5)
    assert _rows(out)[0][4] == f"{snips:.4g} (0.00372%)"  # was 0.0000 (0.0%)
    assert ("a +3% lift (+0.0300) with paired test: not detectable: a binary rate cannot pass 1 "
            "(at base 0.999999 and --agreement 0 the largest possible gap is +1e-06)") in out


@pytest.mark.parametrize("base", ["0", "-5"])
def test_a_mean_of_0_or_below_has_no_relative_column(capsys, base):
    out = _plan(capsys, "--actions", "36", "--base-rate", base, "--reward-var", "4",
                "--days", "1")  # was '0.0744 (inf%)' with a numpy warning; '(-4.0%)' for -5
    hw_snips = planning.z_quantile(0.975) * np.sqrt(36 * 4 / 1e5)
    assert _rows(out)[0][4] == f"{hw_snips:.4f}"
    assert "%)" not in out


def test_a_huge_reward_variance_prints_4_significant_digits(capsys):
    out = _plan(capsys, "--actions", "36", "--base-rate", "3", "--reward-var", "1e18",
                "--days", "1", "--lift", "0.03")
    hw = planning.z_quantile(0.975) * np.sqrt((36 * (1e18 + 9) - 9) / 1e5)
    assert _rows(out)[0][3] == f"{hw:.4g} (1.24e+09%)" == "3.719e+07 (1.24e+09%)"
    assert "6.977e+22 logged rows" in out  # was 69,767,819,860,880,765,485,056 (float noise)


def test_a_lift_too_small_for_float64_is_said_so_without_a_warning(capsys):
    for base, var in (("0.4", []), ("3", ["--reward-var", "1"])):
        out = _plan(capsys, "--actions", "36", "--base-rate", base, *var, "--days", "1",
                    "--lift", "1e-300")  # was 'larger than the model allows' + RuntimeWarnings
        assert out.count("not detectable: it needs more than 1e308 logged rows") == 2


def test_one_request_a_day_for_100_years(capsys):
    out = _plan(capsys, "--actions", "36", "--base-rate", "0.4", "--days", "1,36500",
                "--lift", "0.03", "--share", "1", "--requests-per-day", "1")
    (d1, n1, m1, *_), (d2, n2, m2, *_) = _rows(out)
    assert (d1, n1, m1, d2, n2, m2) == ("1*", "1", "0.0278", "36500", "36,500", "1,014")
    assert "1 of 1 requests/day = 1 logged rows/day" in out
    assert "1,593,315 logged rows = 1.593e+06 days (more than 100 years)" in out


def test_shares_near_1_are_not_rounded_to_100_percent(capsys):
    out = _plan(capsys, "--actions", "36", "--base-rate", "0.4", "--days", "1",
                "--agreement", "0.999999", "--alpha", "1e-12", "--power", "0.999999999999")
    assert "agreeing on 99.9999% of requests" in out  # was 100%
    assert "+-99.9999999999% IPS" in out and "(99.9999999999% power)" in out
    assert [planning.percent(v) for v in (0.95, 0.8, 0.5, 0.53, 0.325, 0.0, 1.0)] == [
        "95%", "80%", "50%", "53%", "32.5%", "0%", "100%"]


def test_the_readme_example_is_unchanged(capsys):
    out = _plan(capsys, "--actions", "36", "--base-rate", "0.415", "--agreement", "0.5",
                "--lift", "0.0325", "--days", "1")
    assert _rows(out)[0] == ["1", "100,000", "2,778", "0.0238 (5.7%)", "0.0183 (4.4%)",
                             "+0.0357 (+8.6%)", "+0.0603 (+14.5%)"]
    assert "a +3.25% lift (+0.0135) with paired test: 665,549 logged rows = 6.7 days" in out
    assert "*" not in out


# ----------------------------------------------------------------------------- trainer

def _batches(log: dict, n_steps: int, batch_size: int = 64):
    """The first ``n_steps`` TrainBatches of ``log`` (a ``simulate_log`` dict) under seed 0."""
    from train import input as input_lib

    arrays = input_lib.LogArrays(np.asarray(log["context"], np.float32),
                                 np.asarray(log["action"], np.int32),
                                 np.asarray(log["rewards"], np.float32))
    source = input_lib.BatchSource(arrays, batch_size, 1, 0)
    return [input_lib.to_train_batch(source[i]) for i in range(n_steps)]


def _steps(kinds, batches, devices):
    """(flat TrainState after the batches, per-step StepMetrics) of the train step jitted over
    a data mesh of ``devices``, from the tiny config's initial state (A = 10: the tiny world)."""
    import jax
    from train import TrainConfig, state as state_lib, step as step_lib

    cfg = TrainConfig.tiny()
    mesh = step_lib.make_mesh(devices)
    tx = state_lib.make_optimizer(cfg, 100)
    defs, state = state_lib.init_state(
        state_lib.make_model(cfg, batches[0].context.shape[1], 10, kinds, None), tx, cfg.seed)
    state = jax.device_put(state, step_lib.replicated_sharding(mesh))
    fn = step_lib.build_train_step(defs, kinds, (1.0,) * len(kinds), mesh)
    metrics = []
    for b in batches:
        state, m = fn(state, step_lib.device_batch(b, mesh))
        metrics.append(jax.tree.map(np.asarray, m))
    return jax.tree.map(np.asarray, state_lib.flatten(state)), metrics


@pytest.mark.slow  # two train-step compiles: about 15 s on the shared CPU
def test_data_parallel_steps_over_4_devices_equal_1_device_to_float_tolerance():
    """DESIGN.md section 6: data parallelism over a Mesh. The batch's rows split over 4 (fake CPU)
    devices give the parameters of one device, up to the order of the loss's sum (measured:
    at most 1.2e-7 apart after a whole tiny run; 7 of 22 arrays bit-equal)."""
    import jax
    from puts_jax.data import simulator as sim

    log = sim.simulate_log(sim.make_world(sim.SimConfig.tiny()), 192, 5)
    assert log["meta"].action_set.n_actions == 10
    batches = _batches(log, 3)
    assert len(jax.devices()) == 4  # conftest's fake devices
    one, m1 = _steps(("binary", "count"), batches, jax.devices()[:1])
    four, m4 = _steps(("binary", "count"), batches, jax.devices())
    assert one.keys() == four.keys()
    for k in one:
        np.testing.assert_allclose(four[k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose([m.loss for m in m4], [m.loss for m in m1], rtol=1e-6)
    assert int(four["step"]) == 3 and [int(m.valid) for m in m4] == [64, 64, 64]


@pytest.mark.slow  # two train-step compiles
def test_the_loss_is_squared_error_for_real_rewards_and_cross_entropy_for_binary():
    """DESIGN.md section 6 on one batch whose first objective's rewards are real-valued: the
    step's per-objective loss is the mean squared error of Q[logged action] for a "real" (or
    "count") objective and the binary cross-entropy for a "binary" one, from the model's
    initial Q (numpy)."""
    import jax
    from puts_jax.data import simulator as sim
    from train import TrainConfig, state as state_lib

    log = sim.simulate_log(sim.make_world(sim.SimConfig.tiny()), 64, 6)
    rng = np.random.default_rng(0)
    real = dict(log, rewards=np.stack([log["rewards"][:, 0] * 2.5 + rng.normal(0, 0.3, 64),
                                       log["rewards"][:, 1]], 1).astype(np.float32))
    for kinds, data in ((("real", "count"), real), (("binary", "count"), log)):
        (b,) = _batches(data, 1)
        _, (m,) = _steps(kinds, [b], jax.devices()[:1])
        model = state_lib.make_model(TrainConfig.tiny(), b.context.shape[1], 10, kinds, None)
        q = np.asarray(model(b.context), np.float64)[np.arange(64), b.action]  # f64[64, J]
        r = b.rewards.astype(np.float64)
        se = ((q - r) ** 2).mean(0)
        p = np.clip(q, 1e-6, 1 - 1e-6)
        bce = (-(r * np.log(p) + (1 - r) * np.log1p(-p))).mean(0)
        want = [bce[j] if k == "binary" else se[j] for j, k in enumerate(kinds)]
        np.testing.assert_allclose(m.per_objective, want, rtol=1e-5)
        assert kinds[0] == "binary" or not np.allclose(se[0], bce[0], rtol=0.1)


def test_a_heldout_log_with_other_reward_kinds_is_named_before_training(sim_logs, tmp_path,
                                                                       capsys):
    """--heldout declaring session_success "real" where --logs declares it "binary" (same names):
    was 'python -m train: error: reward_kinds: objectives [0] are declared binary but have
    rewards outside {0, 1}', naming neither the flag nor the file."""
    import dataclasses

    from puts_jax.data import logs, simulator as sim
    from train.main import main

    log = sim.simulate_log(sim.make_world(sim.SimConfig.tiny()), 200, 3)
    log["rewards"][:, 0] = log["rewards"][:, 0] * 2.5 + 0.25
    log["meta"] = dataclasses.replace(log["meta"], reward_kinds=("real", "count"))
    other = str(tmp_path / "real.parquet")
    logs.write_log(other, **log)
    wd = tmp_path / "wd"
    assert main(["--config", "tiny", "--logs", sim_logs["train"], "--heldout", other,
                 "--workdir", str(wd)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (
        f"python -m train: error: --heldout {other}: reward_kinds: ['real', 'count'] differ "
        "from the training log's ['binary', 'count'] (the held-out estimates and their "
        "intervals use the training log's kinds)\n")
    assert not wd.exists()


def test_a_batch_that_does_not_split_over_the_devices_is_one_line_saying_what_to_do(
        sim_logs, tmp_path, capsys, monkeypatch):
    """tiny's batch of 64 on 3 devices (a 3- or 6-GPU machine): was 'python -m train: error:
    ValueError: TrainConfig.batch_size: 64 is not divisible by the 3 devices of the data mesh'."""
    import jax
    from train import step as step_lib
    from train.main import main

    real = step_lib.make_mesh
    monkeypatch.setattr(step_lib, "make_mesh", lambda devices=None: real(jax.devices()[:3]))
    wd = tmp_path / "wd"
    assert main(["--config", "tiny", "--logs", sim_logs["train"], "--heldout",
                 sim_logs["heldout"], "--workdir", str(wd)]) == 2
    assert capsys.readouterr().err == (
        "python -m train: error: TrainConfig.batch_size: 64 is not divisible by the 3 devices "
        "of the data mesh (every device JAX sees: the global batch is split by rows); run on a "
        "device count that divides 64 (GPUs: CUDA_VISIBLE_DEVICES)\n")
    assert not wd.exists()


def test_the_day_grid_never_passes_max_days():
    """--max-days 7.5 printed a row of 8 days (the geometric steps are rounded up to whole days)."""
    assert planning.day_grid(7.5).tolist() == [1, 2, 3, 4, 5, 6, 7, 7.5]
    assert planning.day_grid(28).tolist() == [1, 2, 3, 4, 5, 6, 7, 9, 10, 13, 15, 19, 23, 28]
    for m in (0.5, 7.2, 9.4, 100.5, 36499.6, 36500):
        grid = planning.day_grid(m)
        assert grid[-1] == m and (np.diff(grid) > 0).all()
