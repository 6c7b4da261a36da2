"""Streaming off-policy evaluation: an exploration log, read chunk by chunk, through the compiled
programs of ``puts_jax.engine`` (the lambda sweep, fixed context-free policies, per-row fixed
actions), with the statistics merged in float64 on the host one step behind dispatch.

Every chunk is validated (positivity names absolute rows, PITFALLS P1), split or padded to one
fixed piece size per stream (one compilation) and evaluated; the merged numbers equal a single
pass over the concatenated log up to float32 rounding inside a piece (the device sums a piece in
float32, so another chunking can move a sum of non-whole terms, e.g. DR's, in its 7th-8th
significant digit; sums of whole numbers below 2^24 are exact), and every count and bootstrap
draw is the same.

Bootstrap (``bootstrap=R`` with an explicit ``key``): each piece also returns Poisson-bootstrap
sums [R, P, ...] (``puts_jax.bootstrap``) of the same rows. A row's multiplicities depend only on
(key, its absolute row index in the stream, the resample), so any chunking of the same log gives
the same draws, the same key gives every program (lambda points, baselines) the same resamples,
and a different key gives independent ones. Finalized as percentile intervals (``Evaluation.boot``)
and kept as mergeable sums (``Evaluation.boot_stats``) for bands and dominance probabilities.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from puts_jax import bootstrap as boot_lib
from puts_jax import checks, engine, ope
from puts_jax.config import SweepConfig
from puts_jax.types import BootstrapStats, EstimatorStats, LoggedBatch


class Evaluation(NamedTuple):
    """Result of a streamed evaluation.

    estimates: ope.Estimates, policy axis P (lambdas of the sweep, or the fixed policies).
    baselines: ope.Estimates of the fixed baseline policies evaluated in the same pass, or None.
    stats / baseline_stats: the merged float64 EstimatorStats (merge more chunks later).
    reward_kinds: per objective, as used for the exact intervals.
    constant_propensity: the common logging propensity when every row has the same, else None.
    boot / baseline_boot: bootstrap.BootstrapEstimates (percentile intervals), None without a
      bootstrap (or without baselines).
    boot_stats / baseline_boot_stats: the merged float64 BootstrapStats [R, P, ...].
    """

    estimates: ope.Estimates
    baselines: ope.Estimates | None
    stats: EstimatorStats
    baseline_stats: EstimatorStats | None
    reward_kinds: tuple[str, ...]
    constant_propensity: float | None
    boot: boot_lib.BootstrapEstimates | None = None
    baseline_boot: boot_lib.BootstrapEstimates | None = None
    boot_stats: BootstrapStats | None = None
    baseline_boot_stats: BootstrapStats | None = None


class _LogSummary:
    """Host-side facts gathered while streaming: propensity range and binary-ness of rewards."""

    def __init__(self):
        self.pmin, self.pmax, self.binary, self.rows = np.inf, -np.inf, None, 0

    def update(self, p: np.ndarray, r: np.ndarray) -> None:
        if len(p):
            self.pmin, self.pmax = min(self.pmin, p.min()), max(self.pmax, p.max())
        b = ((r == 0) | (r == 1)).all(axis=0)
        self.binary = b if self.binary is None else self.binary & b
        self.rows += len(p)

    def constant_propensity(self) -> float | None:
        ok = self.rows and self.pmax - self.pmin <= 1e-12 * self.pmax
        return float(self.pmax) if ok else None

    def kinds(self, given, J: int) -> tuple[str, ...]:
        binary = np.ones(J, bool) if self.binary is None else self.binary
        if given is None:
            return tuple("binary" if b else "real" for b in binary)
        bad = [j for j, k in enumerate(given) if k == "binary" and not binary[j]]
        if bad:
            raise checks.InputError("reward_kinds", [], f"objectives {bad} are declared binary "
                                    "but have rewards outside {0, 1}")
        return tuple(given)


def _host_chunk(item, offset: int, floor, n_actions) -> LoggedBatch:
    """Validate one chunk (propensity positivity names absolute rows) and normalize dtypes."""
    lb = item[-1] if isinstance(item, tuple) and not isinstance(item, LoggedBatch) else item
    B = len(lb.action)
    action = np.asarray(lb.action, np.int32)
    p = checks.check_propensity(lb.propensity, floor, row_offset=offset)
    consistent = lb.consistent
    if consistent is None:
        if n_actions is None:
            raise checks.InputError("consistent", [], "missing; pass n_actions to default to one-hot")
        consistent = (action[:, None] == np.arange(n_actions)[None, :])  # -1: no action
    valid = np.ones(B, bool) if lb.valid is None else np.asarray(lb.valid, bool)
    return LoggedBatch(np.asarray(lb.context, np.float32), action, p.astype(np.float32),
                       np.asarray(lb.rewards), np.asarray(consistent, bool), valid,
                       None if lb.context_ids is None else np.asarray(lb.context_ids, np.int32))


def _pad_rows(lb: LoggedBatch, size: int) -> LoggedBatch:
    """Pad to ``size`` rows with valid=False rows (propensity 1, everything else 0)."""
    def pad(name, x):
        if x is None or len(x) == size:
            return x
        out = np.ones if name == "propensity" else np.zeros
        buf = out((size,) + x.shape[1:], x.dtype)
        buf[:len(x)] = x
        return buf
    return LoggedBatch(*(pad(f, getattr(lb, f)) for f in LoggedBatch._fields))


def _merge(acc, out):
    """Merge one program output (EstimatorStats, or (EstimatorStats, BootstrapStats)) into acc."""
    if isinstance(out, EstimatorStats):
        return ope.merge_stats(acc, out)
    a_st, a_bt = (None, None) if acc is None else acc
    return ope.merge_stats(a_st, out[0]), boot_lib.merge(a_bt, out[1])


def _stream(chunks: Iterable, chunk_rows: int, floor, n_actions, programs, reward_kinds):
    """Run each program(padded LoggedBatch, first_row, n_real) -> device stats on fixed-size
    pieces of every chunk (first_row: the piece's absolute row offset); merge in float64 one step
    behind dispatch (the device never waits for the host)."""
    summary, merged, pending = _LogSummary(), [None] * len(programs), None
    size, offset, J = None, 0, None
    for item in chunks:
        lb = _host_chunk(item, offset, floor, n_actions)
        rows = len(lb.action)
        J = lb.rewards.shape[1]
        summary.update(lb.propensity[lb.valid].astype(np.float64), lb.rewards[lb.valid])
        if reward_kinds is not None:
            summary.kinds(reward_kinds, J)  # fail early, naming the objectives
        if size is None:  # fixed per stream: one compilation
            size = min(chunk_rows, max(128, 1 << max(rows - 1, 0).bit_length()))
        for lo in range(0, max(rows, 1), size):
            piece = _pad_rows(jax.tree.map(lambda x: x[lo:lo + size], lb), size)
            out = [prog(piece, _first_row(offset + lo), min(size, rows - lo))
                   for prog in programs]
            if pending is not None:
                merged = [_merge(m, s) for m, s in zip(merged, pending)]
            pending = out
        offset += rows
    if pending is None:
        raise checks.InputError("chunks", [], "the log has no rows")
    merged = [_merge(m, s) for m, s in zip(merged, pending)]
    return merged, summary.kinds(reward_kinds, J), summary.constant_propensity()


def _first_row(first: int) -> np.uint32:
    """A piece's first row index for the programs: uint32 (bootstrap draws index rows in uint32;
    the programs take it traced, so every piece shares one compilation)."""
    if not 0 <= first < 2 ** 32:
        raise checks.InputError("first_row", [], f"{first} outside [0, 2^32): bootstrap draws "
                                "index rows in uint32")
    return np.uint32(first)


def _check_bootstrap(bootstrap: int, key) -> int:
    R = int(bootstrap)
    if R < 0 or R != bootstrap:
        raise checks.InputError("bootstrap", [], f"must be a resample count >= 0, got {bootstrap}")
    if R == 1:
        raise checks.InputError("bootstrap", [], "one resample gives no interval; use 0 or >= 2")
    if R and key is None:
        raise checks.InputError("key", [], "a bootstrap needs an explicit key, e.g. "
                                "jax.random.key(seed)")
    if R:
        boot_lib.key_data(key)  # a threefry key: names the problem before any compilation
    return R


def _finish(merged, cfg: SweepConfig, kinds, p) -> tuple:
    """(Estimates, stats, BootstrapEstimates or None, BootstrapStats or None) of one program."""
    st, bt = (merged, None) if isinstance(merged, EstimatorStats) else merged
    est = ope.finalize(st, cfg.confidence, kinds, p)
    return est, st, (None if bt is None else boot_lib.finalize(bt, cfg.confidence)), bt


def evaluate_log(model, lams, chunks: Iterable, cfg: SweepConfig, *,
                 reward_kinds: tuple[str, ...] | None = None, policy: str = "greedy",
                 policy_param: float = 0.0, fallback_action: int = 0,
                 propensity_floor: float | None = None, with_dr: bool = True,
                 baselines=None, n_actions: int | None = None, bootstrap: int = 0,
                 key=None) -> Evaluation:
    """Stream an exploration log and estimate every lambda's target policy (plus optional fixed
    baselines in the same pass).

    Args:
      model: nnx.Module or (graphdef, params) of the Q-network.
      lams: f32[L, J] scalarizations (validated: non-negative, summing to 1).
      chunks: iterable of LoggedBatch (numpy) or ``(row_offset, request_id, LoggedBatch)`` as
        ``data.logs.iter_log_chunks`` yields. Each is split/padded to one fixed size (compiled once).
      cfg: SweepConfig (chunk_rows, lambda_chunk, confidence).
      reward_kinds: per objective; None detects "binary" from the data (all 0/1), else "real".
      policy, policy_param: target policy kind (see ``engine.build_sweep``); fallback_action for
        rows with non-finite Q; propensity_floor: explicit clipping (PITFALLS P1), else p > 0.
      baselines: optional f32[P, A] context-free policies (``fixed_action_probs``).
      n_actions: A, needed only when chunks lack ``consistent``.
      bootstrap: R Poisson-bootstrap resamples (0: none); key: its ``jax.random.key`` (required
        when R > 0; the module docstring says what the draws depend on).
    Returns:
      Evaluation; the numbers equal a single pass over the concatenated log up to float32
      rounding inside a piece (f64 merging; module docstring).
    """
    R = _check_bootstrap(bootstrap, key)
    graphdef, params = engine.split_model(model)
    lams = checks.check_lambda(np.asarray(lams, np.float32))
    lams = jnp.asarray(lams.reshape(-1, lams.shape[-1]))
    engine.check_policy_param(policy, policy_param)
    sweep = engine.build_sweep(graphdef, cfg, policy, fallback_action, propensity_floor, with_dr, R)
    param = np.float32(policy_param)
    programs = [lambda lb, first, _: sweep(params, lams, lb, param, key, first)]
    if baselines is not None:
        fixed = engine.build_fixed(graphdef if with_dr else None, propensity_floor, R)
        probs = jnp.asarray(np.asarray(baselines, np.float32))
        programs.append(lambda lb, first, _: fixed(params, probs, lb, key, first))
    merged, kinds, p = _stream(chunks, cfg.chunk_rows, propensity_floor, n_actions, programs,
                               reward_kinds)
    est, st, bt, bst = _finish(merged[0], cfg, kinds, p)
    if baselines is None:
        return Evaluation(est, None, st, None, kinds, p, bt, None, bst, None)
    b_est, b_st, b_bt, b_bst = _finish(merged[1], cfg, kinds, p)
    return Evaluation(est, b_est, st, b_st, kinds, p, bt, b_bt, bst, b_bst)


def fixed_action_probs(actions, n_actions: int, uniform: bool = False) -> np.ndarray:
    """f32[P, A] policies: the one-hot of each global action, plus the uniform policy (the usual
    logging policy) as the last row when ``uniform``."""
    rows = np.eye(n_actions, dtype=np.float32)[np.asarray(actions, np.int64).reshape(-1)]
    if uniform:
        rows = np.concatenate([rows, np.full((1, n_actions), 1.0 / n_actions, np.float32)])
    return rows


def evaluate_fixed(probs, chunks: Iterable, cfg: SweepConfig, *, model=None,
                   reward_kinds: tuple[str, ...] | None = None,
                   propensity_floor: float | None = None, n_actions: int | None = None,
                   bootstrap: int = 0, key=None) -> Evaluation:
    """Stream a log and estimate context-free policies probs f32[P, A] (rows are distributions:
    a global action is a one-hot, uniform logging is 1/A). With ``model``, DM/DR use its Q.
    bootstrap, key: as in ``evaluate_log``."""
    R = _check_bootstrap(bootstrap, key)
    probs = np.asarray(probs, np.float32)
    checks.check_distribution(probs, field="probs")
    graphdef, params = (None, None) if model is None else engine.split_model(model)
    fixed = engine.build_fixed(graphdef, propensity_floor, R)
    jprobs = jnp.asarray(probs)
    merged, kinds, p = _stream(chunks, cfg.chunk_rows, propensity_floor, n_actions,
                               [lambda lb, first, _: fixed(params, jprobs, lb, key, first)],
                               reward_kinds)
    est, st, bt, bst = _finish(merged[0], cfg, kinds, p)
    return Evaluation(est, None, st, None, kinds, p, bt, None, bst, None)


def evaluate_fixed_actions(actions, n_actions: int, chunks: Iterable, cfg: SweepConfig, *,
                           model=None, reward_kinds: tuple[str, ...] | None = None,
                           propensity_floor: float | None = None, bootstrap: int = 0,
                           key=None) -> Evaluation:
    """Deterministic fixed policies: ``actions`` i32[P] global actions (each row gets the same
    action; e.g. every action, the production action), or i32[P, n_rows] one action per logged
    row, aligned with the streamed rows (e.g. a contextual production policy). bootstrap, key:
    as in ``evaluate_log``."""
    actions = np.asarray(actions, np.int64)
    if actions.ndim <= 1:
        return evaluate_fixed(fixed_action_probs(actions, n_actions), chunks, cfg, model=model,
                              reward_kinds=reward_kinds, propensity_floor=propensity_floor,
                              n_actions=n_actions, bootstrap=bootstrap, key=key)
    R = _check_bootstrap(bootstrap, key)
    checks.check_index("actions", actions.T, n_actions)
    graphdef, params = (None, None) if model is None else engine.split_model(model)
    rows_fn = engine.build_fixed_rows(graphdef, propensity_floor, R)

    def program(lb, first, n_real):
        if first + n_real > actions.shape[1]:
            raise checks.InputError("actions", [], f"{actions.shape[1]} per-row actions for a "
                                    f"log of at least {first + n_real} rows")
        a = np.zeros((len(actions), len(lb.action)), np.int32)
        a[:, :n_real] = actions[:, first:first + n_real]
        return rows_fn(params, a, lb, key, first)

    merged, kinds, p = _stream(chunks, cfg.chunk_rows, propensity_floor, n_actions, [program],
                               reward_kinds)
    est, st, bt, bst = _finish(merged[0], cfg, kinds, p)
    return Evaluation(est, None, st, None, kinds, p, bt, None, bst, None)
