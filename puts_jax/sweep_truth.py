"""Simulator only: the ground-truth table of a sweep (``puts-jax truth``), the exact true value of
the learned policy, the Bayes context policy, the best single global action, the production
action and the logging policy on fresh requests (``truth.npz``), next to their estimates with
intervals on the evaluation log the frontier was estimated on, by the frontier's own estimator
(its ``primary_estimator``; ``auto`` per objective as the sweep resolved it, ``auto_estimator``:
the exact interval around IPS for a binary reward, SNIPS elsewhere), so a policy that is a point
of the frontier shows the frontier's numbers for it.

It judges the learned policy against the Bayes context policy's true value (DESIGN.md section 7):
the personalization gain over the best global action (the single action with the highest true
mean of the first objective) and the share of the Bayes policy's headroom the learned policy
reaches. ``puts_jax.sweep_job`` re-exports ``truth_table``.
"""

from __future__ import annotations

import os

import numpy as np

from puts_jax import model_io, ope, report
from puts_jax.checks import InputError
from puts_jax.data import logs


def _cell(v: float, lo: float, hi: float) -> str:
    """'V [LO, HI]', 'n/a' for a value or bound the data cannot give (null in the frontier)."""
    def f(x):
        return "n/a" if x is None or not np.isfinite(x) else f"{x:.4f}"
    return f"{f(v)} [{f(lo)}, {f(hi)}]"


def _row(name: str, truth_J: np.ndarray, est: dict | None) -> list[str]:
    cells = [name] + [f"{t:.4f}" for t in truth_J]
    if est is None:
        return cells + ["(not estimated)"] * len(truth_J) + ["", ""]
    cells += [_cell(v, lo, hi) for v, lo, hi in zip(est["value"], est["lo"], est["hi"])]
    return cells + [str(est["n"]), str(est["matched"])]


def estimators_shown(doc: dict) -> list[str]:
    """Per objective, the estimator the frontier's table shows: its ``primary_estimator``, with
    ``auto`` resolved as the sweep resolved it (``auto_estimator``; for a frontier written
    without that record: "exact" where every point has an exact interval, else "snips")."""
    est, J = doc["primary_estimator"], len(doc["objectives"]["names"])
    if est != "auto":
        return [est] * J
    if doc.get("auto_estimator"):
        return list(doc["auto_estimator"])
    ex = doc["estimators"].get("exact", {}).get("lo")
    return ["exact" if ex and all(row[j] is not None for row in ex) else "snips"
            for j in range(J)]


def _pick(e: ope.Estimates, which: list[str]) -> dict:
    """{value, lo, hi} f64[J] of ``which[j]`` per objective, as the frontier records them: the
    exact interval around the IPS value; a normal interval of zero width is undefined (NaN), as
    ``sweep_job.with_auto`` makes it."""
    nan = np.full(np.shape(e.ips), np.nan)
    cols = {"ips": (e.ips, e.ips_lo, e.ips_hi), "snips": (e.snips, e.snips_lo, e.snips_hi),
            "dr": (e.dr, e.dr_lo, e.dr_hi),
            "exact": (np.where(e.exact_defined, e.ips, nan), e.exact_lo, e.exact_hi)}
    out = {q: np.array([cols[w][k][j] for j, w in enumerate(which)], np.float64)
           for k, q in enumerate(("value", "lo", "hi"))}
    collapsed = (np.array([w != "exact" for w in which]) & (out["hi"] - out["lo"] <= 0)
                 & (int(e.n) >= 1))
    out["lo"], out["hi"] = (np.where(collapsed, np.nan, out[q]) for q in ("lo", "hi"))
    return out


def _estimate_actions(path: str, actions_fn, which: list[str], kinds, confidence: float,
                      chunk_rows: int, model, widths: dict | None = None) -> dict:
    """The estimates ``which`` (``estimators_shown``) of a deterministic per-row policy
    (actions_fn(context) -> i32[b]) on a log, computed as the sweep computes them: the exact
    interval where the log's propensity is constant, DR with the model's Q as reward model."""
    total, pmin, pmax = None, np.inf, -np.inf
    for _, _, lb in logs.iter_log_chunks(path, chunk_rows, **(widths or {})):
        a = actions_fn(lb.context)
        rows = np.arange(len(a))
        pi = lb.consistent[rows, a].astype(np.float32)
        p = lb.propensity.astype(np.float32)
        pmin, pmax = min(pmin, float(p[lb.valid].min(initial=np.inf))), \
            max(pmax, float(p[lb.valid].max(initial=-np.inf)))
        qp = None
        if "dr" in which:  # a matched row's decision is the policy's: qhat = Q(x, a) for both
            qp = np.asarray(model(lb.context), np.float32)[rows, a]
        s = ope.to_host(ope.chunk_stats(pi, p, lb.rewards, lb.valid, qp, qp))
        total = ope.merge_stats(total, s)
    const = pmax if pmax - pmin <= 1e-12 * pmax else None  # as ``evaluation`` decides it
    e = ope.finalize(total, confidence, tuple(kinds), const)
    return {**_pick(e, which), "n": int(e.n), "matched": int(e.matched)}


def _baseline(doc: dict, kind: str) -> dict | None:
    """Row 0 of a frontier baseline as {value, lo, hi, n, matched} (primary estimator)."""
    b = doc["baselines"].get(kind)
    if b is None:
        return None
    e = b["estimators"][doc["primary_estimator"]]
    return {"value": e["value"][0], "lo": e["lo"][0], "hi": e["hi"][0], "n": b["n"][0],
            "matched": b["matched"][0]}


def _policy_and_lambda(model_dir: str, registry: str | None):
    """(model, operating lambda or None, its label or None): the registry's CURRENT operating
    policy when one is given, else the model in ``model_dir``."""
    if registry is None:
        return model_io.load_model(model_dir)[0], None, None
    from puts_jax import policy

    op = policy.load(registry)
    return op.model, np.asarray(op.lam, np.float32), f"operating policy {op.version}"


def _read_frontier(data_dir: str, frontier_path: str, ev_path: str, truth, widths: dict) -> dict:
    """The frontier document, or InputError when the model cannot read ``truth.npz``'s
    contexts or the frontier was estimated on other data than ``ev_path``."""
    if widths["context_dim"] is not None and truth["context"].shape[1] != widths["context_dim"]:
        raise InputError("context", [], f"{data_dir} has {truth['context'].shape[1]}-wide "
                                        f"contexts; the model reads {widths['context_dim']}")
    doc = report.read_frontier(frontier_path)
    files = doc.get("provenance", {}).get("data_files", {})
    if report.file_sha256(ev_path) not in files.values():
        raise InputError("--frontier", [], f"{frontier_path} was estimated on "
                                           f"{sorted(files) or 'unknown data'}, not on {ev_path}; "
                                           f"its logging-policy estimate would not be this "
                                           f"world's")
    return doc


TRUTH_KEYS = ("true_values", "context", "best_global_action", "production_action",
              "value_uniform", "value_request_oracle", "value_best_global", "value_bayes")


def _check_fits(truth: dict, A: int | None, J: int | None) -> None:
    """ValueError unless the truth arrays fit the data set's A actions and J rewards (those of
    its evaluation log): true_values f[n, A, J], each value_* f[J], the two action indices
    scalars in [0, A) (a truth file edited or from another data set: an IndexError later)."""
    tv = truth["true_values"]
    if A is not None and J is not None and tv.shape[1:] != (A, J):
        raise ValueError(f"true_values {list(tv.shape)} does not fit the evaluation log's A = {A} "
                         f"actions and J = {J} rewards (expected [n, {A}, {J}])")
    for k in TRUTH_KEYS:
        if k.startswith("value_") and J is not None and truth[k].shape != (J,):
            raise ValueError(f"{k} {list(truth[k].shape)}: expected [{J}] (J = {J} rewards)")
    for k in ("best_global_action", "production_action"):
        a = truth[k]
        if a.size != 1 or a.dtype.kind not in "iu" or not (
                0 <= int(a.ravel()[0]) < (A if A is not None else tv.shape[1])):
            raise ValueError(f"{k} {a.ravel()[:3].tolist()}: expected one action index in "
                             f"[0, {A if A is not None else tv.shape[1]})")


def read_truth(data_dir: str, n_actions: int | None = None,
               n_rewards: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of ``data_dir``/truth.npz that ``truth_table`` reads, loaded at once, or
    InputError("data") naming the file when it is not a whole truth file of ``simulate``
    (truncated, not a zip, a key missing, true_values not f[n, A, J] beside context f[n, D])
    or its arrays do not fit each other or the data set's ``n_actions`` A and ``n_rewards`` J
    (``_check_fits``)."""
    import zipfile
    import zlib

    path = os.path.join(data_dir, "truth.npz")
    try:
        if not zipfile.is_zipfile(path):  # np.load would call it "pickled data"
            raise ValueError("not a zip archive, as every .npz is")
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in TRUTH_KEYS if k not in z.files]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
            truth = {k: np.asarray(z[k]) for k in TRUTH_KEYS}
        tv, ctx = truth["true_values"], truth["context"]
        if tv.ndim != 3 or ctx.ndim != 2 or len(tv) != len(ctx) or not len(tv):
            raise ValueError(f"true_values {list(tv.shape)} and context {list(ctx.shape)} are "
                             "not f[n, A, J] and f[n, D] with n >= 1")
        _check_fits(truth, n_actions, n_rewards)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        why = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
        why = why if len(why) <= 120 else why[:117] + "..."
        raise InputError("data", [], f"{path} is not a readable truth file of simulate ({why}); "
                         f"'puts-jax simulate --out {data_dir}' writes a new data set") from None
    return truth


def _format(rows: list[list[str]], reward_names: list[str], conf: float, primary: str,
            which: list[str]) -> list[str]:
    """The table's lines: a header (each estimate column named by its estimator, as the sweep's
    table names it), then one padded line per row."""
    header = ["policy"] + [f"true {n}" for n in reward_names] + \
        [f"{n} ({primary}{': ' + w if primary == 'auto' else ''}, {conf:.0%} CI)"
         for n, w in zip(reward_names, which)] + ["n", "matched"]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header] + rows]


def truth_table(data_dir: str, model_dir: str, frontier_path: str, registry: str | None = None,
                chunk_rows: int = 65536) -> str:
    """Simulator only: exact true value per objective of the learned policy (at lambda = (1, 0),
    and at the registry's lambda when one is given), the Bayes context policy, the best single
    global action, the production action and the logging policy, on fresh requests
    (``truth.npz``), next to their estimates with intervals on the evaluation log by the
    frontier's estimator (``estimators_shown``: the frontier's point at lambda (1, 0) and the
    learned row show the same numbers); plus the personalization gain and the fraction of the
    Bayes policy's headroom the learned policy reaches."""
    import jax.numpy as jnp

    from puts_jax.data import simulator

    ev_path = os.path.join(data_dir, "evaluation.parquet")
    meta = logs.read_meta(ev_path)
    truth = read_truth(data_dir, meta.action_set.n_actions, len(meta.reward_names))
    world = simulator.make_world(simulator.config_from_dict(meta.extra["sim_config"]))
    model, lam_op, label = _policy_and_lambda(model_dir, registry)
    lam_0 = np.eye(len(meta.reward_names), dtype=np.float32)[0]  # the personalization test

    def greedy(lam):
        def actions(ctx):
            q = np.asarray(model(jnp.asarray(ctx)))
            return np.argmax(q @ lam, axis=1)  # ties to the lowest index, like the kernels
        return actions

    tv, ctx = truth["true_values"], truth["context"]
    widths = model_io.model_widths(model)
    doc = _read_frontier(data_dir, frontier_path, ev_path, truth, widths)
    conf, which = doc["confidence"], estimators_shown(doc)
    g, prod = (int(np.ravel(truth[k])[0]) for k in ("best_global_action", "production_action"))

    spread = [tv.mean(1)]  # per-request true values of each row's policy (logging: uniform)

    def policy_row(name, act):
        a = act(ctx)
        spread.append(tv[np.arange(len(a)), a])
        return _row(name, simulator.policy_value(tv, a),
                    _estimate_actions(ev_path, act, which, meta.reward_kinds, conf, chunk_rows,
                                      model, widths))

    rows = [policy_row(f"learned, lam={lam_0.tolist()}", greedy(lam_0))]
    if lam_op is not None:
        rows.append(policy_row(f"{label}, lam={[round(float(x), 2) for x in lam_op]}",
                               greedy(lam_op)))
    names = list(meta.reward_names)
    rows += [policy_row("Bayes context policy", lambda c: simulator.bayes_actions(world, c)),
             policy_row(f"best global action on {names[0]} (action {g})",
                        lambda c: np.full(len(c), g)),
             policy_row(f"production action ({prod})", lambda c: np.full(len(c), prod)),
             _row("logging policy (uniform)", truth["value_uniform"], _baseline(doc, "logging")),
             _row("per-request oracle (unreachable)", truth["value_request_oracle"], None)]
    v_l = float(simulator.policy_value(tv, greedy(lam_0)(ctx))[0])
    v_g, v_b = float(truth["value_best_global"][0]), float(truth["value_bayes"][0])
    return "\n".join(_format(rows, names, conf, doc["primary_estimator"], which) + [
        truth_error_line(spread, names),
        best_global_line(world.vbar[:, :, 0].mean(0), g, names[0], doc),
        f"personalization gain ({names[0]}, learned at lam={lam_0.tolist()}): learned - best "
        f"global action = {v_l - v_g:+.4f} ({(v_l - v_g) / v_g:+.2%}); fraction of the Bayes "
        f"context policy's headroom ({v_b - v_g:+.4f}) reached: {(v_l - v_g) / (v_b - v_g):.2f}"])


def truth_error_line(per_request: list, names: list[str]) -> str:
    """What the "true" columns are: exact expected rewards averaged over the n fresh requests of
    ``truth.npz``, so, as the population values the intervals estimate, they carry the
    requests' sampling error: the largest standard error over the rows' policies
    (``per_request``: f[n, J] per-request true values of each), per objective."""
    v = [np.asarray(x, np.float64) for x in per_request]
    n = len(v[0])
    se = np.max([x.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.full(x.shape[1], np.nan)
                 for x in v], axis=0)
    each = ", ".join(f"{'n/a' if not np.isfinite(e) else f'{e:.4f}'} ({m})"
                     for e, m in zip(se, names))
    return (f"true values: exact expected rewards averaged over the {n:,} fresh request"
            f"{'' if n == 1 else 's'} of truth.npz (simulate --n-eval); as the population values "
            f"the intervals estimate they have a standard error of up to {each} in these rows")


def best_global_line(true_means: np.ndarray, g: int, objective: str, doc: dict) -> str:
    """What the truth table's best global action is: the single action ``g`` with the highest
    true population mean of ``objective`` (``true_means`` f[A], the simulator's exact values, so
    its choice has no noise), its runner-up, and whether the frontier's estimates of the two on
    the evaluation log (its "actions" baseline, primary estimator) have overlapping intervals
    ("not tested against the runner-up" when the frontier has no such estimates)."""
    means = np.asarray(true_means, np.float64)
    others = [a for a in np.argsort(-means, kind="stable") if a != g]
    head = (f"best global action = the single action with the highest true mean {objective} "
            f"(the simulator's exact population mean): action {g} (population mean "
            f"{means[g]:.4f})")
    if not others:
        return head + "; no runner-up (one action)"
    r = int(others[0])
    head += f"; runner-up action {r} ({means[r]:.4f}, {means[r] - means[g]:+.4f})"
    try:
        j = doc["objectives"]["names"].index(objective)
        e = doc["baselines"]["actions"]["estimators"][doc["primary_estimator"]]
        (lo_g, hi_g), (lo_r, hi_r) = np.array([[e[q][a][j] for q in ("lo", "hi")] for a in (g, r)],
                                              np.float64)  # a null bound reads as nan
    except (KeyError, IndexError, TypeError, ValueError):
        return head + "; not tested against the runner-up on the evaluation log"
    if not np.isfinite([lo_g, hi_g, lo_r, hi_r]).all():
        return head + ("; not tested against the runner-up on the evaluation log (an interval "
                       "bound is not available)")
    overlap = max(lo_g, lo_r) <= min(hi_g, hi_r)
    return head + (f"; on the evaluation log their {doc['primary_estimator']} "
                   f"{doc['confidence']:.0%} intervals "
                   + ("overlap: the log cannot tell them apart" if overlap else "are disjoint"))
