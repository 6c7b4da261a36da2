"""Checkpoint selection by an off-policy estimate on the HELD-OUT log, and the selected export.

Never by training loss, never by the simulator's truth (SIMULATOR.md): at every evaluation the
greedy policy ``argmax_a Q(x) @ lam`` is estimated on the held-out exploration log with
``puts_jax.evaluation.evaluate_log`` (SNIPS, Swaminathan & Joachims 2015, with its delta-method 95%
interval; IPS, DR and exact intervals alongside), for the selection lambda (row 0) and a grid of
reported lambdas. The step with the highest held-out SNIPS of ``select_objective`` at the
selection lambda is selected; once the run ends its model is exported to
``workdir/selected_model`` and described in ``workdir/selected.json`` (``train.publish``), next
to the same estimate for the best global action (the single action with the highest SNIPS of
``select_objective`` on the TRAINING log, ``global_action_choice``, recorded with its
runner-up), so a caller can fall back when the data cannot show a gain.
"""

from __future__ import annotations

import json
import math
import os
import statistics

import numpy as np

from puts_jax import evaluation, model_io, report_verdicts, scalarization
from puts_jax.config import SweepConfig

SELECTED_FILE = "selected.json"
SELECTED_MODEL = "selected_model"


def best_global_action(consistent: np.ndarray, rewards: np.ndarray, propensity: np.ndarray,
                       objective: int) -> int:
    """The best global action of a (training) log: the single action with the highest SNIPS
    value of ``objective`` (``global_action_choice``)."""
    return global_action_choice(consistent, rewards, propensity, objective)["action"]


def global_action_choice(consistent: np.ndarray, rewards: np.ndarray, propensity: np.ndarray,
                         objective: int, confidence: float = 0.95) -> dict:
    """The best global action of a log and how clearly it beats the runner-up.

    Per action a, SNIPS (Swaminathan & Joachims 2015) of ``objective``: sum_b c[b, a] w_b r_b /
    sum_b c[b, a] w_b with w_b = 1 / propensity_b (the row mean under uniform logging with
    one-hot matching), and its delta-method interval, the form of ``ope.finalize``: se =
    sqrt(sum_b c w^2 (r - v)^2) / sum_b c w. consistent: bool[n, A] (slot-level logs match
    several or no actions per row); rewards f[n, J]; propensity f[n]. Actions never matched
    rank last; ties go to the lowest index.

    Returns {"action", "value", "lo", "hi", "runner_up": {"action", "value", "lo", "hi"} or
    None (no other matched action), "overlaps_runner_up": whether the two intervals overlap
    (the best is then within noise of the runner-up), None without a runner-up, "confidence"};
    when no action matches a row, action 0 with None for the numbers."""
    c = np.asarray(consistent, np.float64)
    w = 1.0 / np.asarray(propensity, np.float64)
    r = np.asarray(rewards, np.float64)[:, objective]
    sw, sw2 = w @ c, (w * w) @ c
    matched = sw > 0
    value = np.where(matched, ((w * r) @ c) / np.where(matched, sw, 1.0), -np.inf)
    v0 = np.where(matched, value, 0.0)
    resid2 = np.maximum((w * w * r * r) @ c - 2 * v0 * ((w * w * r) @ c) + v0 ** 2 * sw2, 0.0)
    se = np.sqrt(resid2) / np.where(matched, sw, 1.0)
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    est = {"value": value[:, None], "lo": (value - z * se)[:, None],
           "hi": (value + z * se)[:, None]}
    # the report's ranking of global actions: best, runner-up, ties to the lowest index
    ranked = report_verdicts.best_global_actions(est, ["max"], ["objective"])
    b, r = ranked["best"]["objective"], ranked["runner_up"]["objective"]
    if b is None:  # no action matched a row: action 0, with no estimate
        return {"action": 0, "value": None, "lo": None, "hi": None, "runner_up": None,
                "overlaps_runner_up": None, "confidence": confidence}

    def one(a: int) -> dict:
        return {"action": a, **{k: float(est[k][a, 0]) for k in ("value", "lo", "hi")}}
    apart = ranked["best_apart"]["objective"]
    return {**one(b), "runner_up": None if r is None else one(r),
            "overlaps_runner_up": None if apart is None else not apart, "confidence": confidence}


def _row(est, p: int, j: int) -> dict:
    f = lambda x: None if not math.isfinite(float(x)) else float(x)  # noqa: E731
    return {"snips": f(est.snips[p, j]), "snips_lo": f(est.snips_lo[p, j]),
            "snips_hi": f(est.snips_hi[p, j]), "snips_se": f(est.snips_se[p, j]),
            "ips": f(est.ips[p, j]), "dr": f(est.dr[p, j]), "n": int(est.n[p]),
            "matched": int(est.matched[p]), "ess": f(est.ess[p])}


class HeldoutEvaluator:
    """Evaluates (graphdef, params) on held-out chunks; the global baseline is fixed: the best
    global action ``global_action``, with ``global_choice`` (``global_action_choice`` on the
    training log) when known."""

    def __init__(self, chunks: list, reward_names: tuple[str, ...], reward_kinds: tuple[str, ...],
                 n_actions: int, select_lambda: tuple[float, ...], select_objective: int,
                 report_lambdas: int, global_action: int, chunk_rows: int,
                 global_choice: dict | None = None):
        J = len(reward_names)
        grid = scalarization.lambda_grid(J, report_lambdas)
        self.lams = np.concatenate([np.asarray([select_lambda], np.float32), grid])
        self.chunks, self.names, self.kinds = chunks, reward_names, reward_kinds
        self.n_actions, self.objective = n_actions, select_objective
        self.global_action, self.global_choice = global_action, global_choice
        self.sweep_cfg = SweepConfig(chunk_rows=chunk_rows)
        base = evaluation.evaluate_fixed_actions([global_action], n_actions, chunks, self.sweep_cfg,
                                             reward_kinds=reward_kinds)
        self.global_estimate = {n: _row(base.estimates, 0, j) for j, n in enumerate(reward_names)}

    def __call__(self, graphdef, params) -> dict:
        """{"value": held-out SNIPS of the selection objective at the selection lambda, ...}."""
        ev = evaluation.evaluate_log((graphdef, params), self.lams, self.chunks, self.sweep_cfg,
                                 reward_kinds=self.kinds, n_actions=self.n_actions)
        est = ev.estimates
        value = float(est.snips[0, self.objective])
        sweep = [{"lambda": [float(x) for x in lam],
                  **{n: _row(est, p, j) for j, n in enumerate(self.names)}}
                 for p, lam in enumerate(self.lams) if p > 0]
        sel = {n: _row(est, 0, j) for j, n in enumerate(self.names)}
        return {"value": value if math.isfinite(value) else None, "selection": sel,
                "lambdas": sweep}


def is_better(value: float | None, best: float | None) -> bool:
    return value is not None and (best is None or value > best)


def summary(progress: dict, evaluator: HeldoutEvaluator, select_lambda, objective_name: str) -> dict:
    """The selected.json document: selected step and estimates, the global baseline, history.

    The global baseline is the best global action (``global_action``: the single action with
    the highest SNIPS of ``objective_name`` on the TRAINING log; ``global_choice`` records that
    choice, its interval and its runner-up) and its held-out estimates (``global_heldout``).
    ``gain_over_global`` is the selected step's held-out SNIPS of ``objective_name`` (at the
    selection lambda) minus the global action's; ``gain_shown`` is True when the selected
    step's held-out 95% interval lies entirely above the global action's (``snips_lo`` >
    the global's ``snips_hi``): disjoint intervals, a conservative test of the gain."""
    best = progress.get("best") or {}
    g = evaluator.global_estimate[objective_name]
    sel = (best.get("selection") or {}).get(objective_name) or {}
    shown = (sel.get("snips_lo") is not None and g.get("snips_hi") is not None
             and sel["snips_lo"] > g["snips_hi"])
    return {
        "step": best.get("step"), "selection_metric": f"heldout SNIPS of {objective_name}",
        "select_lambda": list(select_lambda), "value": best.get("value"),
        "selection": best.get("selection"), "lambdas": best.get("lambdas"),
        "global_action": evaluator.global_action, "global_heldout": evaluator.global_estimate,
        **({} if evaluator.global_choice is None else {"global_choice": {
            **evaluator.global_choice, "objective": objective_name, "chosen_on": "training log",
            "estimator": "snips"}}),
        "gain_over_global": (None if best.get("value") is None or g["snips"] is None
                             else best["value"] - g["snips"]),
        # Conservative: the learned policy's interval lies entirely above the global action's.
        "gain_shown": bool(shown),
        "history": [{"step": e["step"], "value": e["value"]} for e in progress.get("evals", [])],
        "model_dir": SELECTED_MODEL,
    }


def _cell(e: dict | None) -> str:
    """'0.4312 [0.4200, 0.4424]' of a held-out row (``_row``), 'not estimable' without a value."""
    if not e or e.get("snips") is None:
        return "not estimable"
    bounds = [("n/a" if e.get(k) is None else f"{e[k]:.4f}") for k in ("snips_lo", "snips_hi")]
    return f"{e['snips']:.4f} [{bounds[0]}, {bounds[1]}]"


def _shown(doc: dict, obj: str) -> str:
    """'yes (...)' / 'no (why)' for ``gain_shown``: the selected step's held-out 95% interval
    lies entirely above the global action's."""
    if doc.get("gain_shown"):
        return "yes (the step's 95% interval lies entirely above the action's)"
    mine = (doc.get("selection") or {}).get(obj) or {}
    theirs = (doc.get("global_heldout") or {}).get(obj) or {}
    if None in (mine.get("snips_hi"), theirs.get("snips_lo")):
        return "no (an interval bound is not available)"
    if mine["snips_hi"] < theirs["snips_lo"]:
        return "no (the step's 95% interval lies entirely below the action's)"
    return "no (the 95% intervals overlap; shown needs the step's interval entirely above the " \
           "action's)"


def describe(doc: dict) -> str:
    """One sentence on a selected.json document (``summary``) for people: the selected step,
    its held-out SNIPS of the selection objective with its 95% interval and the selection
    lambda; the best global action (how it was chosen, and whether it is within noise of its
    runner-up on the training log) with the same held-out estimate; the gain
    (``gain_over_global``) and whether it is shown (``gain_shown``: the step's interval lies
    entirely above the global action's). A document missing keys gets a sentence all the
    same (what it lacks reads "not estimable" or "no ..."), never an error."""
    obj = str(doc.get("selection_metric") or "the selection objective").removeprefix(
        "heldout SNIPS of ")
    if doc.get("step") is None:
        return f"no step selected: no evaluation gave a held-out SNIPS of {obj}"
    lam = "[" + ", ".join(f"{x:g}" for x in doc.get("select_lambda") or []) + "]"
    mine = _cell((doc.get("selection") or {}).get(obj))
    g, choice = doc.get("global_action"), doc.get("global_choice") or {}
    ru = choice.get("runner_up")
    how = f"the highest training-log SNIPS of {obj}" + (
        "" if "runner_up" not in choice else "; no runner-up" if ru is None else
        f"; within noise of the runner-up, action {ru['action']}" if choice["overlaps_runner_up"]
        else f"; ahead of the runner-up, action {ru['action']}, beyond noise")
    gain = doc.get("gain_over_global")
    theirs = _cell((doc.get("global_heldout") or {}).get(obj))
    theirs = "no held-out estimate" if theirs == "not estimable" else theirs
    verdict = ("gain not estimable" if gain is None
               else f"gain {gain:+.4f}, shown: {_shown(doc, obj)}")
    return (f"selected step {doc['step']}: held-out SNIPS of {obj} {mine} at lambda {lam}; the "
            f"best global action, action {g} ({how}), has {theirs}: {verdict}")


def load_selected(workdir: str):
    """(QNetwork, info) of a run's selected checkpoint: info is selected.json (step, held-out
    estimates, global baseline, history) plus ``model_info`` (spec, params hash).

    selected.json is the marker of a finished export (``train.publish``): raises
    FileNotFoundError naming it when it is missing (the run has not finished; its provisional
    model is ``best_so_far``), and ValueError when its params hash is not the exported model's
    (an export was interrupted: the same train command redoes it)."""
    path = os.path.join(workdir, SELECTED_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no selected model: the run in {workdir} has not "
                                "finished (rerun the same train command to resume it)")
    with open(path) as f:
        info = json.load(f)
    model, model_info = model_io.load_model(os.path.join(workdir, SELECTED_MODEL))
    if info.get("params_hash") != model_info["params_hash"]:
        raise ValueError(f"{workdir}: {SELECTED_MODEL} (params hash {model_info['params_hash']}) "
                         f"is not the model {SELECTED_FILE} describes ({info.get('params_hash')}):"
                         " an export was interrupted; rerun the same train command to redo it")
    info["model_info"] = model_info
    return model, info
