"""The Pareto sweep as a job (``puts-jax sweep``): stream an exploration log once, estimate every
lambda's target policy and the baselines (logging policy, production action, every single global
action) with intervals, and write the frontier (``report``). Also guarded selection of an
operating point and, for simulated data, the ground-truth table.

Estimates are computed on a log the model was not trained on; DR/DM use the Q-network as the
reward model, which is valid there (it never saw those rows).

With a bootstrap (R resamples, on by default) the frontier also carries the "snips_boot" estimator
(SNIPS with Poisson-bootstrap percentile intervals, the denominator recomputed per resample), a
simultaneous band over all lambda points and objectives ("band": bootstrap-t max, or Bonferroni
without a bootstrap) with the Pareto verdicts it supports, and the bootstrap probability that each
point dominates each other ("dominance"); see ``puts_jax.bootstrap``. The simulator's
ground-truth table (``truth_table``) lives in ``puts_jax.sweep_truth``.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from puts_jax import bootstrap as boot_lib
from puts_jax import evaluation, model_io, ope, pareto, report, sweep_inputs
from puts_jax import halves as halves_lib
from puts_jax.checks import InputError
from puts_jax.config import SweepConfig
from puts_jax.data import logs
from puts_jax.scalarization import lambda_grid
from puts_jax.sweep_limits import (MAX_BOOTSTRAP_BYTES, MAX_LAMBDA_POINTS,  # noqa: F401
                                   MAX_RESAMPLES, check_bootstrap_size, check_grid_size,
                                   check_seed, grid_points)  # (re-exported: sweep_job.X works)
from puts_jax.sweep_inputs import (TRAIN_INPUTS, seen_warning,  # noqa: F401 (re-exported)
                                   training_inputs)
from puts_jax.sweep_truth import truth_table  # noqa: F401  (re-exported: ``puts-jax truth``)


def auto_uses_exact(pe: report.PolicyEstimates) -> np.ndarray:
    """bool[J]: where "auto" is the exact interval (valid for every policy), else SNIPS."""
    ex, sn = pe.estimates.get("exact"), pe.estimates["snips"]
    if ex is None:
        return np.zeros(sn["value"].shape[1], bool)
    return np.isfinite(ex["lo"]).all(0) & np.isfinite(ex["hi"]).all(0)


def with_auto(pe: report.PolicyEstimates) -> report.PolicyEstimates:
    """Add the "auto" estimator: per objective, the exact Clopper-Pearson interval (around IPS)
    where it is valid for every policy (binary reward, constant propensity, deterministic
    target), else SNIPS with its delta-method interval. Normal intervals collapse to [0, 0] with
    no matched successes; the exact one stays honest there (DESIGN.md section 8)."""
    ex, sn = pe.estimates.get("exact"), pe.estimates["snips"]
    use = auto_uses_exact(pe)
    auto = {q: np.where(use, ex[q], sn[q]) if ex is not None else sn[q].copy()
            for q in ("value", "lo", "hi")}
    # A normal interval of zero width (every matched reward equal, e.g. no matched successes
    # of a real-valued reward) is not a valid interval: report it as undefined, never [0, 0].
    n = np.asarray(pe.n)[:, None]
    out = {"auto": auto, **pe.estimates}
    for name, block in out.items():
        if name == "exact":
            continue  # Clopper-Pearson never collapses: [0, hi > 0] with zero successes
        keep = use if name == "auto" else np.zeros_like(use)
        collapsed = ~keep & (block["hi"] - block["lo"] <= 0) & (n >= 1)  # one row: no spread
        out[name] = {**block, **{q: np.where(collapsed, np.nan, block[q]) for q in ("lo", "hi")}}
    return pe._replace(estimates=out)


def _take(pe: report.PolicyEstimates, rows, names: list[str]) -> report.PolicyEstimates:
    """The rows ``rows`` of a PolicyEstimates, renamed."""
    rows = np.atleast_1d(rows)
    return report.PolicyEstimates(names, {k: {q: v[rows] for q, v in b.items()}
                                          for k, b in pe.estimates.items()},
                                  pe.n[rows], pe.matched[rows], pe.ess[rows])


def logging_baseline(path: str, meta: logs.LogMeta, chunk_rows: int, confidence: float) -> report.PolicyEstimates:
    """The logging policy's value = the on-policy sample mean of the rewards, with a normal
    interval (and Clopper-Pearson for binary rewards): valid for any logging policy."""
    n, s, s2 = 0, 0.0, 0.0
    for _, _, lb in logs.iter_log_chunks(path, chunk_rows):
        r = lb.rewards.astype(np.float64)
        n, s, s2 = n + len(r), s + r.sum(0), s2 + (r * r).sum(0)
    return on_policy_estimates(n, s, s2, meta.reward_kinds, confidence)


def on_policy_estimates(n: int, s, s2, reward_kinds, confidence: float) -> report.PolicyEstimates:
    """The logging policy's estimates from its on-policy reward sums: n rows, s = sum r f[J],
    s2 = sum r^2 f[J]."""
    s, s2 = np.asarray(s, np.float64), np.asarray(s2, np.float64)
    one = np.array([n])
    stats = ope.EstimatorStats(one, one, one.astype(np.float64), one.astype(np.float64), s[None],
                               s[None], s2[None], s[None])  # every weight is 1 on-policy
    est = ope.finalize(stats, confidence, reward_kinds, 1.0)
    pe = report.from_ope(["logging policy (on-policy mean)"], est)
    # On-policy, every weight is 1 and DR reduces to the sample mean: the same block as IPS.
    pe = pe._replace(estimates={**pe.estimates, "dr": dict(pe.estimates["ips"])})
    return with_auto(pe)


def with_boot(pe: report.PolicyEstimates, est: ope.Estimates,
              boot: boot_lib.BootstrapEstimates | None) -> report.PolicyEstimates:
    """Add the "snips_boot" estimator: the SNIPS value with its Poisson-bootstrap percentile
    interval (no change without a bootstrap). An interval of zero width (every resample gives
    the same value: every matched reward equal, e.g. no matched successes) is undefined (NaN),
    as ``with_auto`` makes the normal ones: the resamples of such a log cannot show its spread."""
    if boot is None:
        return pe
    P = len(pe.names)
    lo, hi = boot.snips_lo.reshape(P, -1), boot.snips_hi.reshape(P, -1)
    collapsed = (hi - lo <= 0) & (np.asarray(pe.n)[:, None] >= 1)
    block = {"value": np.asarray(est.snips, np.float64).reshape(P, -1),
             "lo": np.where(collapsed, np.nan, lo), "hi": np.where(collapsed, np.nan, hi)}
    return pe._replace(estimates={**pe.estimates, "snips_boot": block})


def _json_rows(a) -> list:
    """JSON-ready nested lists, non-finite -> None."""
    a = np.asarray(a, np.float64)
    return np.where(np.isfinite(a), a, None).tolist()


def evidence_blocks(ev: evaluation.Evaluation, confidence: float, directions, seed) -> dict:
    """The frontier's "band", "dominance" and "bootstrap" blocks (SNIPS): a band simultaneous
    over all points and objectives with its Pareto verdicts, the per-objective band, and the
    bootstrap dominance probabilities (None without a bootstrap)."""
    est = ev.estimates
    reps = reps_se = None
    if ev.boot_stats is not None:
        reps = boot_lib.replicates(ev.boot_stats, "snips")
        reps_se = boot_lib.replicate_se(ev.boot_stats, "snips")
    fe = boot_lib.frontier_evidence(est.snips, est.snips_se, reps, confidence, directions, reps_se)
    # a point whose own SNIPS interval is undefined or collapsed (zero width: every matched
    # reward equal, e.g. no matched successes; ``with_auto`` shows it as n/a) is not ranked by
    # the band either: its zero-width band would call every such point nondominated
    se = np.asarray(est.snips_se, np.float64)
    defined = (np.isfinite(se) & (se > 0)).reshape(len(fe.verdicts), -1)
    fe = fe._replace(verdicts=[v if ok else pareto.NOT_ESTIMABLE
                               for v, ok in zip(fe.verdicts, defined.all(axis=1))])
    per = fe.band_per_objective
    band = {"estimator": "snips", "method": fe.band.method, "confidence": confidence,
            "simultaneous_over": "points and objectives",
            "critical": _json_rows(fe.band.critical[:1])[0],  # null when undefined
            "lo": _json_rows(fe.band.lo), "hi": _json_rows(fe.band.hi), "verdicts": fe.verdicts,
            "per_objective": {"method": per.method, "critical": _json_rows(per.critical),
                              "lo": _json_rows(per.lo), "hi": _json_rows(per.hi)}}
    R = 0 if reps is None else int(reps.shape[0])
    dom = None if fe.dominance is None else {
        "estimator": "snips", "n_resamples": R, "probability": _json_rows(fe.dominance),
        "definition": "probability[q][p]: share of bootstrap resamples in which point q is at "
                      "least as good as point p on every objective and better on one"}
    boot = {"n_resamples": R, "seed": None if not R else int(seed),
            "method": "Poisson(1) multiplicity per row and resample, a function of (seed, row "
                      "index, resample) only; every estimate recomputed per resample"}
    return {"band": band, "dominance": dom, "bootstrap": boot}


def _log_rows(logs_path: str) -> int:
    """Rows of a Parquet log, from its footer (no data read)."""
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(logs_path).metadata.num_rows)


def _check_sweep_inputs(out_dir: str, logs_path: str, meta: logs.LogMeta, n_lambdas: int,
                        bootstrap: int, primary: str | None, seed: int = 0) -> None:
    """InputError naming what ``run_sweep`` cannot use, before any work:
    ``out_dir`` a file, too many lambda points (``check_grid_size``) or resamples
    (``check_bootstrap_size``), a seed out of range (``check_seed``), an empty log, "exact"
    asked for a non-binary objective."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError("out", [], f"{out_dir} is a file, not a folder (nothing written)")
    check_seed(seed)
    points = check_grid_size(len(meta.reward_names), n_lambdas, bootstrap)
    check_bootstrap_size(len(meta.reward_names), points, bootstrap)
    if primary == "exact" and any(k != "binary" for k in meta.reward_kinds):
        other = [f"{n} ({k})" for n, k in zip(meta.reward_names, meta.reward_kinds)
                 if k != "binary"]
        raise InputError("--estimator", [], f"exact (Clopper-Pearson) intervals need binary "
                                            f"rewards; {', '.join(other)} is not: use auto "
                                            f"(exact where valid, SNIPS elsewhere)")
    rows = _log_rows(logs_path)
    if rows == 0:
        raise InputError("logs", [], f"{logs_path} has no rows: the sweep needs logged rows to "
                                     f"estimate anything (nothing written)")


def run_sweep(model_dir: str, logs_path: str, out_dir: str, n_lambdas: int = 21,
              chunk_rows: int = 65536, primary: str | None = None, bootstrap: int = 200,
              seed: int = 0, halves: bool = False,
              log_warnings: list | None = None) -> tuple[dict, dict]:
    """Evaluate the lambda grid and the baselines on ``logs_path``; write frontier.json/png.

    bootstrap: R Poisson-bootstrap resamples (0: none; the band is then Bonferroni and there is
    no dominance matrix); seed: the bootstrap key (``jax.random.key(seed)``).
    halves: also estimate every point and baseline on each half of the log (``puts_jax.halves``:
    split by request-id hash) into ``doc["halves"]``, so that ``select`` chooses on one half and
    publishes the other's estimate (no winner's curse); one more streamed pass per half.
    The log is checked while it streams (``puts_jax.sweep_inputs``): rows a train workdir's
    model was trained or checkpoint-selected on (its file's sha256 in ``inputs.json``, its rows'
    keys in ``training_rows.npz``: ``provenance.training_inputs`` / ``training_rows``), and a
    reward that dominates the estimates of the policies matching its row give warnings, in
    ``doc["warnings"]`` and appended to ``log_warnings`` (a list) when given; rewards whose
    weighted squares would overflow the float32 sums raise InputError("rewards") naming the
    objective and the row, before that chunk is evaluated.
    Returns (frontier document, written paths). Raises InputError, before any work, when the
    model and the log disagree on the action set size or the number of objectives, and for what
    ``_check_sweep_inputs`` names (--out a file, too many lambda points, an empty log, "exact"
    for a non-binary objective). A log too small for some estimate still gives a complete
    frontier: each such number is null in frontier.json and "not estimable" in the table, page
    and plot. The three files replace an earlier set together (``report.write_frontier``).
    """
    meta = logs.read_meta(logs_path)
    A, J = meta.action_set.n_actions, len(meta.reward_names)
    _check_sweep_inputs(out_dir, logs_path, meta, n_lambdas, bootstrap, primary, seed)
    report.recover_frontier(out_dir)  # settle a frontier set that a killed run left half-moved
    model, info = model_io.load_model(model_dir)
    if model.n_actions != A or len(model.reward_kinds) != J:
        raise InputError("model", [], f"scores A={model.n_actions}, J={len(model.reward_kinds)}; "
                                      f"the log has A={A}, J={J}")
    cfg = SweepConfig(n_lambdas=n_lambdas, chunk_rows=chunk_rows)
    lams = lambda_grid(J, n_lambdas)
    rec_path, record, why = sweep_inputs.load_rows_record(model_dir)
    chunks = sweep_inputs.LogWatch(
        logs.iter_log_chunks(logs_path, chunk_rows, **model_io.model_widths(model)), record,
        meta.reward_names, logs_path)
    ev = evaluation.evaluate_log(model, lams, chunks, cfg,
                                 reward_kinds=meta.reward_kinds,
                                 baselines=evaluation.fixed_action_probs(np.arange(A), A),
                                 n_actions=A, bootstrap=bootstrap,
                                 key=jax.random.key(seed) if bootstrap else None)
    sweep_inputs.check_sums_finite((ev.stats, ev.baseline_stats, ev.boot_stats,
                                    ev.baseline_boot_stats), meta.reward_names, chunks.rewards,
                                   logs_path)
    names = [f"lambda=({', '.join(f'{x:.2f}' for x in lam)})" for lam in lams]
    raw_points = report.from_ope(names, ev.estimates)
    points = with_boot(with_auto(raw_points), ev.estimates, ev.boot)
    actions = with_boot(with_auto(report.from_ope([f"action {a}" for a in range(A)], ev.baselines)),
                        ev.baselines, ev.baseline_boot)
    base = {"logging": logging_baseline(logs_path, meta, chunk_rows, cfg.confidence),
            "actions": actions}
    if meta.action_set.production is not None:
        base["production"] = _take(actions, meta.action_set.production,
                                   [f"production (action {meta.action_set.production})"])
    prov = report.make_provenance([logs_path], int(ev.estimates.n.max()),
                                  info.get("extra", {}).get("step"), meta.action_set.hash(),
                                  model_params_hash=info["params_hash"],
                                  model=os.path.abspath(model_dir))
    ti = prov["training_inputs"] = training_inputs(model_dir, prov["data_files"][str(logs_path)])
    prov["training_rows"] = sweep_inputs.overlap_block(rec_path, record, why, chunks)
    doc = report.build_frontier(lams, points, objective_names=list(meta.reward_names),
                                provenance=prov, baselines=base, confidence=cfg.confidence,
                                primary=primary or "auto")
    _add_matched_rewards(doc, ev, meta.action_set.production)
    warns = ([seen_warning(ti)] if ti["seen_as"] else []) + sweep_inputs.overlap_warnings(
        prov["training_rows"], ti["seen_as"]) + sweep_inputs.outlier_warnings(
        chunks.rewards, meta.reward_names, doc, meta.action_set.production)
    doc["warnings"] += warns
    if log_warnings is not None:
        log_warnings += warns
    doc["auto_estimator"] = ["exact" if u else "snips" for u in auto_uses_exact(raw_points)]
    doc.update(evidence_blocks(ev, cfg.confidence, doc["objectives"]["directions"], seed))
    if halves:
        doc["halves"] = evaluate_halves(model, lams, names, logs_path, meta, cfg, bootstrap, seed)
    return doc, report.write_frontier(out_dir, doc)


def _add_matched_rewards(doc: dict, ev: evaluation.Evaluation, production: int | None) -> None:
    """Matched successes (sum of rewards over rows consistent with the policy) of the points and
    the action baselines: what exact intervals rest on, and what a reader needs to judge a
    sparse log such as OBD's 38 clicks."""
    doc["points"]["matched_rewards"] = np.asarray(ev.stats.sum_match_r, np.float64).tolist()
    per_action = np.asarray(ev.baseline_stats.sum_match_r, np.float64)
    doc["baselines"]["actions"]["matched_rewards"] = per_action.tolist()
    if "production" in doc["baselines"]:
        doc["baselines"]["production"]["matched_rewards"] = per_action[[production]].tolist()


def evaluate_halves(model, lams, names: list[str], logs_path: str, meta: logs.LogMeta,
                    cfg: SweepConfig, bootstrap: int = 0, seed: int = 0) -> dict:
    """``{"rule", "select", "report"}``: per half of the log (``puts_jax.halves``), its rows and
    the estimates of the lambda points and of the logging, production and single-action
    baselines, each half in one streamed pass over its own rows (same estimators, same bootstrap
    key as the full pass)."""
    A = meta.action_set.n_actions
    out = {"rule": halves_lib.RULE}
    widths = model_io.model_widths(model)
    for h, half in enumerate(halves_lib.HALF_NAMES):
        stream = halves_lib.HalfChunks(
            lambda: logs.iter_log_chunks(logs_path, cfg.chunk_rows, **widths), h, cfg.chunk_rows)
        try:
            ev = evaluation.evaluate_log(model, lams, stream, cfg, reward_kinds=meta.reward_kinds,
                                         baselines=evaluation.fixed_action_probs(np.arange(A), A),
                                         n_actions=A, bootstrap=bootstrap,
                                         key=jax.random.key(seed) if bootstrap else None)
        except InputError as e:  # an empty half: too few requests to split
            if e.field != "halves":
                raise
            n = _log_rows(logs_path)
            raise InputError("halves", [], f"{e.msg}; {logs_path} has {n:,} row"
                                           f"{'' if n == 1 else 's'}: rerun with halves off "
                                           f"(--no-halves; nothing written)") from None
        points = with_boot(with_auto(report.from_ope(names, ev.estimates)), ev.estimates, ev.boot)
        actions = with_boot(with_auto(report.from_ope([f"action {a}" for a in range(A)],
                                                      ev.baselines)),
                            ev.baselines, ev.baseline_boot)
        base = {"logging": on_policy_estimates(stream.n, stream.sum_r, stream.sum_r2,
                                               meta.reward_kinds, cfg.confidence),
                "actions": actions}
        if meta.action_set.production is not None:
            p = meta.action_set.production
            base["production"] = _take(actions, p, [f"production (action {p})"])
        out[half] = {"rows": int(stream.n), "points": halves_lib.block(points),
                     "baselines": {k: halves_lib.block(v) for k, v in base.items()}}
    return out


def _guards(base_est: dict, guardrails) -> list[tuple[int, float, float]]:
    bval = np.asarray(base_est["value"], np.float64)[0]
    return [(j, rel, float(bval[j])) for j, rel in guardrails]


def _point(est: dict, i: int) -> dict:
    return {q: np.asarray(est[q], np.float64)[i].tolist() for q in ("value", "lo", "hi")}


def select(doc: dict, maximize: int, guardrails: list[tuple[int, float]],
           baseline: str = "production") -> dict:
    """Guarded choice of the operating point on a frontier document: maximize objective
    ``maximize`` subject to, for each (j, min_relative_change), the interval's pessimistic end on
    objective j being at least (1 + min_relative_change) x the baseline's estimate.

    With per-half estimates (``doc["halves"]``, ``run_sweep(halves=True)``) the choice, the
    guardrails and the baseline all use the select half only, and the published ``estimates``
    are the REPORT half's value and interval of the chosen point: that half played no part in the
    choice, so they are free of the winner's curse. ``select_estimates`` keeps the select half's
    (biased upward by the choice); ``report_passes_guardrails`` re-checks the guardrails on the
    report half. Without halves, choice and estimate come from the same (full) data and the
    reason carries a warning.
    Returns {"index", "lambda", "name", "reason", "estimates", "estimates_from", ...}; index None
    when nothing passes."""
    primary = doc["primary_estimator"]
    if baseline not in doc["baselines"]:
        raise InputError("baseline", [], f"the frontier has no '{baseline}' baseline")
    split = doc.get("halves")
    if split is None:
        est = doc["estimators"][primary]
        base = doc["baselines"][baseline]["estimators"][primary]
    else:
        est, base, n_sel = halves_lib.estimates_of(doc, "select", primary, baseline)
        rep, rep_base, n_rep = halves_lib.estimates_of(doc, "report", primary, baseline)
    v, lo, hi = (np.asarray(est[k], np.float64) for k in ("value", "lo", "hi"))
    dirs, names = doc["objectives"]["directions"], doc["points"]["names"]
    sel = pareto.select_operating_point(v, lo, hi, maximize, _guards(base, guardrails), dirs, names,
                                        doc["objectives"]["names"])
    i = sel.index
    out = {"index": i, "lambda": None if i is None else doc["lambdas"][i],
           "name": None if i is None else names[i]}
    if split is None:
        return {**out, "estimates": None if i is None else _point(est, i),
                "estimates_from": "full data (also used for the choice)",
                "reason": sel.reason if i is None else sel.reason + "; warning: chosen and "
                          "estimated on the same data, so the estimate of the chosen point is "
                          "biased upward (winner's curse); rerun the sweep with halves for an "
                          "unbiased published estimate"}
    rows_sel, rows_rep = (f"{n} row{'s' if n != 1 else ''}" for n in (n_sel, n_rep))
    reason = (f"{sel.reason} (on the select half, {rows_sel})" if i is None else
              f"{sel.reason}; chosen on the select half ({rows_sel}); the published estimate is "
              f"the report half's ({rows_rep}), which played no part in the choice")
    passes = None
    if i is not None:
        r = {k: np.asarray(rep[k], np.float64) for k in ("value", "lo", "hi")}
        check = pareto.select_operating_point(
            r["value"][[i]], r["lo"][[i]], r["hi"][[i]], maximize,
            _guards(rep_base, guardrails), dirs, [names[i]], doc["objectives"]["names"])
        passes = check.index is not None
        if not passes:
            reason += f"; note: on the report half it fails a guardrail ({check.reason})"
    return {**out, "estimates": None if i is None else _point(rep, i),
            "estimates_from": f"report half ({rows_rep})",
            "select_estimates": None if i is None else _point(est, i),
            "report_passes_guardrails": passes, "split": split.get("rule", halves_lib.RULE),
            "reason": reason}

