"""Embedded homefeed simulator with exact ground truth (reference default: SIMULATOR.md).

A world of S user segments whose best utility-weight vector differs, a global ranker that is
miscalibrated per segment, position-biased examination and J = 2 request-level rewards
(J0 = session success, J1 = expected clicks). Every policy's true value is known in closed form, so
estimators, intervals and learning are checked against ground truth.

The world itself (settings, requests, exact rewards) is ``puts_jax.data.sim_world``, re-exported
here; this module adds the reference policies, exploration logs, ground-truth arrays and the
data-set files of ``write_simulation``. Randomness depends only on (seed, row index), so any row
range can be regenerated on its own. Everything here is numpy on the host; shapes use the legend
of ``puts_jax.types``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import zipfile

import numpy as np

from puts_jax import slates, staging
from puts_jax.action_set import default_mode
from puts_jax.checks import InputError
from puts_jax.data import logs
from puts_jax.data.sim_world import (OBJECTIVES, REWARD_KINDS, REWARD_NAMES, RNG_BLOCK, STREAM_LOG,
                                     SimConfig, SimRequests, World, config_from_dict, make_world,
                                     sample_requests, slate_rewards, stream_rows, true_values,
                                     world_slates)

__all__ = ["OBJECTIVES", "REWARD_KINDS", "REWARD_NAMES", "STAGING", "SimConfig", "SimRequests",
           "World", "bayes_actions", "best_global_action", "config_from_dict", "log_meta",
           "logging_policy_value", "logging_probs", "make_world", "policy_value",
           "recover_staging", "request_oracle_actions", "sample_requests",
           "segment_oracle_actions", "segment_posterior", "simulate_log", "true_values",
           "truth_arrays", "write_simulation"]
_slates = world_slates  # the world's ranking under its earlier name (tests/test_coverage.py)


def segment_posterior(world: World, context: np.ndarray) -> np.ndarray:
    """Closed-form p(s | x): f32[n, S] for context f32[n, D] under x ~ N(c u_s, I), uniform prior.

    log p(s | x) = c x . u_s + const (all ||u_s|| = 1), a softmax over segments.
    """
    logit = world.cfg.context_scale * (np.asarray(context, np.float64) @ world.u.T)
    logit -= logit.max(1, keepdims=True)
    p = np.exp(logit)
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def best_global_action(world: World, objective: int = 0) -> int:
    """The single action with the best population mean of objective j (segments uniform)."""
    return int(np.argmax(world.vbar[:, :, objective].mean(0)))


def segment_oracle_actions(world: World, segment: np.ndarray, objective: int = 0) -> np.ndarray:
    """i32[n]: each request's segment's best action by Vbar (knows the segment)."""
    return np.argmax(world.vbar[:, :, objective], axis=1).astype(np.int32)[np.asarray(segment)]


def bayes_actions(world: World, context: np.ndarray, objective: int = 0) -> np.ndarray:
    """i32[n]: argmax_a sum_s p(s | x) Vbar[s, a, j], the best any context-only policy can do."""
    post = segment_posterior(world, context).astype(np.float64)
    return np.argmax(post @ world.vbar[:, :, objective], axis=1).astype(np.int32)


def request_oracle_actions(true_vals: np.ndarray, objective: int = 0) -> np.ndarray:
    """i32[n]: per-request best action of f32[n, A, J] (sees the candidates: an upper bound)."""
    return np.argmax(true_vals[:, :, objective], axis=1).astype(np.int32)


def policy_value(true_vals: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """f32[J]: mean true reward of a deterministic policy, actions i32[n], on f32[n, A, J]."""
    actions = np.asarray(actions)
    picked = true_vals[np.arange(len(actions)), actions]
    return picked.mean(0, dtype=np.float64).astype(np.float32)


def logging_probs(world: World, logging="uniform") -> np.ndarray:
    """f64[A] action probabilities of "uniform" or ("epsilon_greedy", eps) logging: production
    gets 1 - eps + eps / A, the others eps / A."""
    A = world.action_set.n_actions
    if logging == "uniform":
        return np.full(A, 1.0 / A)
    if isinstance(logging, tuple) and len(logging) == 2 and logging[0] == "epsilon_greedy":
        eps = float(logging[1])
        if not 0.0 < eps <= 1.0:
            raise ValueError(f"logging: epsilon must be in (0, 1], got {eps}")
        p = np.full(A, eps / A)
        p[world.action_set.production] += 1.0 - eps
        return p
    raise ValueError(f"logging: expected 'uniform' or ('epsilon_greedy', eps), got {logging!r}")


def logging_policy_value(true_vals: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """f32[J]: true value of the stochastic logging policy probs f[A] on f32[n, A, J]."""
    mean = true_vals.mean(0, dtype=np.float64)  # [A, J]
    return (np.asarray(probs, np.float64) @ mean).astype(np.float32)


def log_meta(world: World, logging="uniform", seed: int | None = None) -> logs.LogMeta:
    """LogMeta of a simulated file: action set, reward names/kinds, logging policy, provenance."""
    desc = {"kind": "uniform"} if logging == "uniform" else {
        "kind": "epsilon_greedy", "epsilon": float(logging[1]),
        "production": world.action_set.production}
    extra = {"source": "puts_jax.data.simulator", "seed": seed,
             "sim_config": dataclasses.asdict(world.cfg)}
    return logs.LogMeta(world.action_set, REWARD_NAMES, REWARD_KINDS, desc, extra)


def _log_uniforms(seed: int, start: int, n: int, width: int) -> np.ndarray:
    """f64[n, width] uniforms of the log stream of ``seed``, per row index like the requests."""
    def block(k):
        rng = np.random.default_rng(np.random.SeedSequence([seed, STREAM_LOG, k]))
        return (rng.random((RNG_BLOCK, width)),)
    return stream_rows(block, start, n)[0]


def simulate_log(world: World, n: int, seed: int, logging="uniform", id_offset: int = 0,
                 chunk_rows: int = 16384, slate_matching: bool = False,
                 with_preds: bool | None = None) -> dict:
    """An exploration log of the requests ``sample_requests(world, n, seed)``.

    Returns the keyword arguments of ``logs.write_log`` (``logs.write_log(path, **out)``):
    meta, request_id i64[n], context f32[n, D], action i32[n], propensity f64[n], rewards f32[n, 2]
    = (realized 0/1 session success ~ Bernoulli(J0), realized click count = sum over the slate of
    Bernoulli(e_i q_click[n_i])) (SIMULATOR.md, Rewards). Only the logged slate is simulated;
    every draw depends only on (seed, row index), never on ``chunk_rows``.

    slate_matching: also return ``consistent`` bool[n, A] (the actions whose ordered slate equals
      the logged one, ``puts_jax.slates``; ranked exactly as the world ranks) and make
      ``propensity`` the logging probability of the logged slate (the sum over those actions);
      actions and rewards are the same draws as without it. with_preds (default: slate_matching):
      also return ``preds`` f32[n, N, K] = P / Pbar, the ranker predictions normalized as in the
      request set, so that ``slates.slate_matching(preds, W, ...)`` re-derives the matching (up to
      float32 rounding of near-ties).
    """
    probs = logging_probs(world, logging)
    W, L, A = world.action_set.weights, world.cfg.slate, world.action_set.n_actions
    with_preds = slate_matching if with_preds is None else with_preds
    ctx = np.empty((n, world.cfg.context_dim), np.float32)
    action, rewards = np.empty(n, np.int32), np.empty((n, 2), np.float32)
    propensity = np.empty(n, np.float64)
    consistent = np.empty((n, A), bool) if slate_matching else None
    preds = (np.empty((n, world.cfg.n_candidates, len(OBJECTIVES)), np.float32) if with_preds
             else None)
    cdf = np.cumsum(probs)
    for lo in range(0, n, chunk_rows):
        req = sample_requests(world, min(chunk_rows, n - lo), seed, lo)
        b = len(req.context)
        unif = _log_uniforms(seed, lo, b, 2 + L)  # action, session, one per slate position
        act = np.minimum(np.searchsorted(cdf, unif[:, 0] * cdf[-1], side="right"), len(probs) - 1)
        if slate_matching:
            every = world_slates(world, req.preds, W)  # [b, A, slate], as true_values ranks
            m = slates.match_slates(every, act, probs)
            top, consistent[lo:lo + b], propensity[lo:lo + b] = \
                every[np.arange(b), act][:, None], m.consistent, m.propensity
        else:
            top = world_slates(world, req.preds, W[act][:, None, :])
            propensity[lo:lo + b] = probs[act]
        if with_preds:
            preds[lo:lo + b] = req.preds / world.pbar
        j = slate_rewards(world, req.q_true, top)[:, 0]
        p_click = world.examine * np.take_along_axis(req.q_true[..., 0], top[:, 0], axis=1)
        ctx[lo:lo + b], action[lo:lo + b] = req.context, act
        rewards[lo:lo + b, 0] = unif[:, 1] < j[:, 0]
        rewards[lo:lo + b, 1] = (unif[:, 2:] < p_click).sum(1)
    meta = _noted(log_meta(world, logging, seed), world, slate_matching, with_preds)
    out = dict(meta=meta, request_id=np.arange(n, dtype=np.int64) + id_offset, context=ctx,
               action=action, propensity=propensity, rewards=rewards)
    if slate_matching:
        out["consistent"] = consistent
    if with_preds:
        out["preds"] = preds
    return out


def _noted(meta: logs.LogMeta, world: World, slate_matching: bool, preds: bool) -> logs.LogMeta:
    """``meta`` with what its file carries beyond a plain log noted in ``meta.extra``: the
    slate-level matching (``slate_matching``) and the predictions P / Pbar (``preds``)."""
    if slate_matching:
        meta.extra["matching"] = {"kind": "slate", "slate": world.cfg.slate, "ordered": True,
                                  "propensity": "sum of the logging probabilities of the actions "
                                                "giving the logged slate"}
    if preds:
        meta.extra["preds"] = "ranker probabilities divided by their global mean pbar per head"
        meta.extra["pbar"] = world.pbar.tolist()
    return meta


def _atomic_write_npz(path: str, arrays: dict) -> None:
    """Byte-reproducible .npz (fixed zip timestamps, sorted names) via temp file + os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    os.chmod(tmp, default_mode())
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(arrays):
                info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w") as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]),
                                              allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def truth_arrays(world: World, n_eval: int, seed: int, chunk_rows: int = 8192) -> dict:
    """Ground truth on ``n_eval`` fresh requests of ``seed`` (streamed in chunks).

    Keys: context f32[n, D], segment i32[n], true_values f32[n, A, J], vbar f32[S, A, J],
    weights f32[A, K], pbar f32[K], action_values f32[A, J] (per-action mean true values),
    best_global_action and production_action (scalars), ``<policy>_actions`` i32[n] and
    ``value_<policy>`` f32[J] for best_global, production, bayes, segment_oracle, request_oracle,
    and value_uniform (the uniform logging policy).
    """
    parts = []
    for lo in range(0, n_eval, chunk_rows):
        req = sample_requests(world, min(chunk_rows, n_eval - lo), seed, lo)
        parts.append((req.context, req.segment, true_values(world, req, world.action_set.weights)))
    ctx, seg, tv = (np.concatenate(p) for p in zip(*parts))
    g, prod = best_global_action(world), world.action_set.production
    acts = {"bayes": bayes_actions(world, ctx), "request_oracle": request_oracle_actions(tv),
            "segment_oracle": segment_oracle_actions(world, seg)}
    out = {"context": ctx, "segment": seg, "true_values": tv, "weights": world.action_set.weights,
           "vbar": world.vbar.astype(np.float32), "pbar": world.pbar.astype(np.float32),
           "action_values": tv.mean(0, dtype=np.float64).astype(np.float32),
           "best_global_action": np.int32(g), "production_action": np.int32(prod),
           "value_uniform": logging_policy_value(tv, logging_probs(world))}
    out.update({f"{k}_actions": a for k, a in acts.items()})
    acts.update(best_global=np.full(n_eval, g, np.int32),
                production=np.full(n_eval, prod, np.int32))
    out.update({f"value_{k}": policy_value(tv, a) for k, a in acts.items()})
    return out

STAGING = ".simulate-staging"  # folder inside out_dir where a new set is written before the swap
_FILES = (("logs", "logs.parquet"), ("heldout", "heldout.parquet"),
          ("requests", "requests.parquet"), ("truth", "truth.npz"),
          ("evaluation", "evaluation.parquet"))


def _target(out_dir: str) -> staging.Target:
    return staging.Target(out_dir, STAGING, "the new data set", f"the next simulate into {out_dir}")


def write_simulation(out_dir: str, cfg: SimConfig, n_logs: int, n_heldout: int, n_eval: int,
                     n_requests: int, seed: int, logging="uniform", slate_matching: bool = False,
                     n_evaluation: int | None = None) -> dict:
    """Write one simulated data set; returns {"logs", "heldout", "requests", "truth"} -> path
    (and "evaluation" when ``n_evaluation`` is given).

    logs.parquet / heldout.parquet: exploration logs (training; checkpoint selection and OPE).
    requests.parquet: a request set (preds N x K per row, candidate_ids) for batch scoring
      (held in memory while written: size it for scoring demos, not millions of rows).
    truth.npz: ``truth_arrays`` on n_eval fresh requests. evaluation.parquet (n_evaluation rows,
      seed ``seed + 1_000_003``, request ids from 10**12): the frontier (OPE) log. Each part has
      its own seed derived from ``seed``; the same arguments give identical bytes.
    slate_matching: the logs carry slate-level ``consistent``, slate propensities and ``preds``
    (``simulate_log``); the draws are the same as without it.

    All or nothing (``puts_jax.staging``): every file is written into ``out_dir/.simulate-staging``
    and moved into ``out_dir`` at the end with Ctrl-C held back, so after an interrupt, a failure
    or a kill ``out_dir`` holds the whole previous set or the whole new one, never a mix. A
    staging folder left by a killed run is finished (its set was complete) or deleted (it was
    not) before anything else (``recover_staging``).
    Raises:
      InputError: sizes below 1 or too large for memory (``row_bytes``, ``MAX_FILE_BYTES``), a
        negative seed or an unusable ``out_dir`` name the argument (``n_logs``, ``seed``,
        ``out``) before anything is allocated or written.
      OSError: a move into ``out_dir`` failed; the message names the file, and the next run
        into ``out_dir`` moves the rest in first.
    """
    sizes = {"n_logs": n_logs, "n_heldout": n_heldout, "n_eval": n_eval,
             "n_requests": n_requests}
    if n_evaluation is not None:
        sizes["n_evaluation"] = n_evaluation
    names = [f for k, f in _FILES if k != "evaluation" or n_evaluation is not None]
    _check_arguments(out_dir, sizes, seed, names, cfg, slate_matching)
    world = make_world(cfg)
    staging.publish(_target(out_dir), names, lambda stage: _write_set(
        stage, world, n_logs, n_heldout, n_eval, n_requests, seed, logging, slate_matching,
        n_evaluation))
    return {k: os.path.join(out_dir, f) for k, f in _FILES if f in names}


MAX_FILE_BYTES = 32 << 30  # memory one file of the set may take while it is built and written
MEMORY_FACTOR = 5  # peak bytes a row / its arrays' bytes a row (measured: 1,000,000 default log
# rows, 92 bytes of arrays each, raised the peak resident memory by 412 bytes a row: the numpy
# arrays, their Arrow columns and Parquet's write buffers)


def row_bytes(cfg: SimConfig, slate_matching: bool = False) -> dict[str, int]:
    """Bytes a row of each size argument of ``write_simulation`` takes in memory while its file
    is built and written (``MEMORY_FACTOR`` x its arrays' bytes): a log row (n_logs, n_heldout,
    n_evaluation: context, action, propensity, J = 2 rewards, id; with slate matching also
    consistent bool[A] and preds f32[N, K]), a request (context, id, preds f32[N, K], candidate
    ids i64[N]) and a truth row (n_eval: context, segment, true values f32[A, J], 5 actions)."""
    D, N, K = cfg.context_dim, cfg.n_candidates, len(OBJECTIVES)
    A = (cfg.grid_steps + 1) * (cfg.grid_steps + 2) // 2  # the simplex grid over 3 heads
    log = 4 * D + 28 + (A + 4 * N * K if slate_matching else 0)
    raw = {"n_logs": log, "n_heldout": log, "n_evaluation": log,
           "n_requests": 4 * D + 8 + 4 * N * K + 8 * N, "n_eval": 4 * D + 4 + 8 * A + 20}
    return {k: MEMORY_FACTOR * v for k, v in raw.items()}


def _check_sizes(sizes: dict, cfg: SimConfig, slate_matching: bool) -> None:
    """InputError naming the first size below 1, or one whose file would not fit in
    ``MAX_FILE_BYTES`` (each file is built in memory before it is written), before any
    allocation."""
    per = row_bytes(cfg, slate_matching)
    for name, v in sizes.items():
        if v < 1:
            raise InputError(name, [], f"must be >= 1, got {v}")
        most = MAX_FILE_BYTES // per[name]
        if v > most:
            raise InputError(name, [], f"at most {most:,} rows with this preset, got {v:,} (a "
                             f"file is built in memory before it is written, about {per[name]:,} "
                             f"bytes a row: {v * per[name] / 2**30:,.3g} GiB, over the "
                             f"{MAX_FILE_BYTES >> 30} GiB a file may take; nothing written)")


def _check_arguments(out_dir: str, sizes: dict, seed: int, names: list, cfg: SimConfig,
                     slate_matching: bool) -> None:
    """InputError naming the first argument ``write_simulation`` cannot use; nothing written."""
    _check_sizes(sizes, cfg, slate_matching)
    if seed < 0:
        raise InputError("seed", [], f"must be >= 0, got {seed}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError("out", [], f"{out_dir} is a file, not a folder")
    for name in names:
        if os.path.isdir(os.path.join(out_dir, name)):
            raise InputError("out", [], f"{os.path.join(out_dir, name)} is a folder; the data "
                             f"set writes a file there (nothing written)")


def recover_staging(out_dir: str) -> str | None:
    """Finish or drop a staging folder that a killed ``write_simulation`` left in ``out_dir``
    (``staging.recover``): a complete set (its COMPLETE list written) is moved in, "completed";
    a partial one is deleted, "removed" (``out_dir`` keeps the old set); None when there is none.
    Raises OSError when a move fails (the message names the file)."""
    return staging.recover(_target(out_dir))


def _write_set(folder: str, world: World, n_logs: int, n_heldout: int, n_eval: int,
               n_requests: int, seed: int, logging, slate_matching: bool,
               n_evaluation: int | None) -> None:
    """The files of ``write_simulation``, each written atomically into ``folder``."""
    cfg = world.cfg
    s_log, s_held, s_req, s_eval = (int(x) for x in np.random.SeedSequence(seed).generate_state(4))
    path = dict((k, os.path.join(folder, f)) for k, f in _FILES)
    logs.write_log(path["logs"], **simulate_log(world, n_logs, s_log, logging,
                                                slate_matching=slate_matching))
    logs.write_log(path["heldout"], **simulate_log(world, n_heldout, s_held, logging,
                                                   id_offset=n_logs,
                                                   slate_matching=slate_matching))
    req = sample_requests(world, n_requests, s_req)
    N, rid0 = cfg.n_candidates, n_logs + n_heldout
    rid = np.arange(n_requests, dtype=np.int64) + rid0
    # The utility normalizes each head by its global mean prediction (s_n = sum_k w_k P/Pbar_k):
    # the request set carries P / Pbar so that serving's W[a] . preds ranks as the world does.
    meta = _noted(log_meta(world, logging, s_req), world, False, True)
    logs.write_requests(path["requests"], meta, request_id=rid,
                        context=req.context, preds=(req.preds / world.pbar).astype(np.float32),
                        candidate_ids=rid[:, None] * N + np.arange(N))
    _atomic_write_npz(path["truth"], truth_arrays(world, n_eval, s_eval))
    if n_evaluation is not None:
        logs.write_log(path["evaluation"], **simulate_log(
            world, n_evaluation, seed + 1_000_003, logging, id_offset=10 ** 12,
            slate_matching=slate_matching))
