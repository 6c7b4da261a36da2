"""The exploration-log and request-set contract (DESIGN.md section 4) and its validation.

Exploration log, one row a request:
  request_id: i64, context: list<f32>[D], optional context_ids: list<i64>[C], action: i32,
  propensity: f64 in (0, 1], rewards: list<f32>[J], optional consistent: list<bool>[A],
  optional preds: list<list<f32>> (N_b x K, for slate matching).
Request set, one row a request:
  request_id: i64, context: list<f32>[D], optional context_ids, preds: list<list<f32>> (N_b x K,
  ragged; empty or null lists are requests without candidates), optional candidate_ids: list<i64>.
File metadata: schema key ``puts_jax`` holding JSON (``LogMeta``): the action set, outcome names
(K), reward names and kinds (J), the logging policy's description.

This module holds the contract (``LogMeta``, the column specs) and the host-side checks of a
LoggedBatch against it; ``log_writer`` writes files, ``logs`` streams them back.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from puts_jax import checks
from puts_jax.action_set import ActionSet
from puts_jax.checks import InputError
from puts_jax.types import LoggedBatch

META_KEY = b"puts_jax"
REWARD_KINDS = ("binary", "count", "real")
# A logged propensity must equal the declared logging policy's probability of the logged decision
# within this relative tolerance (room for 1/A rounded through float32, about 6e-8).
LOGGING_PROPENSITY_RTOL = 1e-6
# ``action`` value of a row whose logged decision matches no action of the action set (slot-level
# logs such as the Open Bandit Dataset); such a row needs ``consistent`` and it is all False there.
OUTSIDE_ACTION = -1


@dataclasses.dataclass(frozen=True)
class LogMeta:
    """File-level metadata of a log or request set.

    reward_kinds: per objective, "binary" (0/1: BCE, exact intervals), "count" or "real".
    logging_policy: free-form description, e.g. {"kind": "uniform"} or
      {"kind": "epsilon_greedy", "epsilon": 0.1, "production": 7}.
    Raises InputError("reward_kinds") when the kinds do not pair with the names or are unknown.
    """

    action_set: ActionSet
    reward_names: tuple[str, ...] = ()
    reward_kinds: tuple[str, ...] = ()
    logging_policy: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.reward_names) != len(self.reward_kinds):
            raise InputError("reward_kinds", [], f"{len(self.reward_kinds)} kinds for "
                             f"{len(self.reward_names)} reward names")
        bad = [k for k in self.reward_kinds if k not in REWARD_KINDS]
        if bad:
            raise InputError("reward_kinds", [], f"unknown kinds {bad}; use {REWARD_KINDS}")

    def to_json(self) -> str:
        """The metadata as the JSON text stored under ``META_KEY``."""
        return json.dumps({"action_set": self.action_set.to_dict(),
                           "reward_names": list(self.reward_names),
                           "reward_kinds": list(self.reward_kinds),
                           "logging_policy": self.logging_policy, "extra": self.extra})

    @classmethod
    def from_json(cls, text: str | bytes) -> "LogMeta":
        """Inverse of ``to_json``; raises ValueError, KeyError or TypeError on malformed text."""
        d = json.loads(text)
        return cls(ActionSet.from_dict(d["action_set"]), tuple(d["reward_names"]),
                   tuple(d["reward_kinds"]), d.get("logging_policy", {}), d.get("extra", {}))


def read_meta(path: str) -> LogMeta:
    """LogMeta of a puts_jax Parquet file. Raises InputError naming ``path`` when the key is
    missing or unreadable."""
    md = pq.read_schema(path).metadata or {}
    if META_KEY not in md:
        raise InputError("metadata", [], f"no '{META_KEY.decode()}' schema metadata", path)
    try:
        return LogMeta.from_json(md[META_KEY])
    except InputError as err:
        raise err.in_source(path) from err
    except (ValueError, KeyError, TypeError) as err:
        raise InputError("metadata", [], f"unreadable '{META_KEY.decode()}' schema metadata "
                         f"({type(err).__name__}: {err})", path) from err


# Columns of each file kind: name -> (required, accepted value kind, list depth). The readers
# convert within a kind only: a string column, or floats where ids or indices belong, is an error
# naming the column, never a silent cast.
_KINDS = {"integer": pa.types.is_integer, "floating-point": pa.types.is_floating,
          "numeric": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
          "boolean": pa.types.is_boolean}
LOG_COLUMNS = {"request_id": (True, "integer", 0), "context": (True, "floating-point", 1),
               "action": (True, "integer", 0), "propensity": (True, "floating-point", 0),
               "rewards": (True, "numeric", 1), "context_ids": (False, "integer", 1),
               "consistent": (False, "boolean", 1), "preds": (False, "numeric", 2)}
REQUEST_COLUMNS = {"request_id": (True, "integer", 0), "context": (True, "floating-point", 1),
                   "preds": (True, "numeric", 2), "context_ids": (False, "integer", 1),
                   "candidate_ids": (False, "integer", 1)}


def check_columns(schema: pa.Schema, spec: dict) -> None:
    """Reject a missing required column or a column of the wrong Arrow type (``spec``:
    ``LOG_COLUMNS`` or ``REQUEST_COLUMNS``). Raises InputError naming the column."""
    for name, (required, kind, depth) in spec.items():
        if name not in schema.names:
            if required:
                raise InputError(name, [], f"missing column (needed: "
                                 f"{[c for c, v in spec.items() if v[0]]})")
            continue
        want = "list<" * depth + kind + ">" * depth
        t = schema.field(name).type
        for _ in range(depth):
            if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
                raise InputError(name, [], f"expected {want}, got {schema.field(name).type}")
            t = t.value_type
        if not _KINDS[kind](t):
            raise InputError(name, [], f"expected {want}, got {schema.field(name).type}")


def check_reward_kinds(rewards: np.ndarray, meta: LogMeta, row_offset: int = 0) -> None:
    """Rewards f[B, J] against their declared kinds (``meta.reward_kinds``): a "binary"
    objective's rewards are 0 or 1, a "count" objective's non-negative whole numbers; "real"
    ones any finite value. Raises InputError("rewards") naming the objective and the rows."""
    for j, (name, kind) in enumerate(zip(meta.reward_names, meta.reward_kinds)):
        r = rewards[:, j]
        if kind == "binary":
            bad, what = (r != 0) & (r != 1), "must be 0 or 1"
        elif kind == "count":
            bad, what = (r < 0) | (r != np.floor(r)), "must be a non-negative whole number"
        else:
            continue
        checks.raise_if(bad, "rewards", f"objective {j} ({name}) is declared {kind!r}: {what}",
                        row_offset)


def logging_probs(meta: LogMeta) -> np.ndarray | None:
    """f64[A]: the declared logging policy's distribution over the action set, for the kinds that
    define one: {"kind": "uniform"} (1/A each) and {"kind": "epsilon_greedy", "epsilon": e,
    "production": p} (1 - e + e/A for p, e/A for the others; p defaults to the action set's
    production index). None for any other kind (e.g. OBD's per-slot logging), whose propensities
    are not checked against it. Raises InputError("logging_policy") for a malformed description.
    """
    desc, A = meta.logging_policy or {}, meta.action_set.n_actions
    if desc.get("kind") == "uniform":
        return np.full(A, 1.0 / A)
    if desc.get("kind") != "epsilon_greedy":
        return None
    eps, prod = desc.get("epsilon"), desc.get("production", meta.action_set.production)
    if not isinstance(eps, (int, float)) or not 0.0 < eps <= 1.0:
        raise InputError("logging_policy", [], f"epsilon_greedy needs epsilon in (0, 1], got {eps}")
    if not isinstance(prod, int) or not 0 <= prod < A:
        raise InputError("logging_policy", [], f"epsilon_greedy needs a production action in "
                         f"[0, {A}), got {prod}")
    p = np.full(A, eps / A)
    p[prod] += 1.0 - eps
    return p


def check_logging_propensity(propensity: np.ndarray, consistent: np.ndarray, meta: LogMeta,
                             row_offset: int = 0) -> None:
    """Logged propensities f64[B] against the declared logging policy (``logging_probs``): a row
    whose decision is consistent with the actions ``consistent`` bool[B, A] was logged with
    probability sum_a probs[a] over them (1/A for one action under uniform logging; the slate's
    probability under slate matching). Rows consistent with no action, and policies that define
    no distribution over the action set, are not checked. Raises InputError("propensity") naming
    the rows that differ by more than LOGGING_PROPENSITY_RTOL."""
    probs = logging_probs(meta)
    if probs is None:
        return
    expected = np.where(consistent, probs[None, :], 0.0).sum(1)
    bad = consistent.any(1) & ~np.isclose(propensity, expected, rtol=LOGGING_PROPENSITY_RTOL,
                                          atol=0.0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        checks.raise_if(bad, "propensity", f"contradicts the declared logging policy "
                        f"{json.dumps(meta.logging_policy)} (e.g. {propensity[i]:.6g} where it "
                        f"gives the logged decision {expected[i]:.6g})", row_offset)


def validate_logged(lb: LoggedBatch, meta: LogMeta, row_offset: int = 0) -> None:
    """Check a LoggedBatch (numpy) against the contract and ``meta`` (A actions, J reward names
    and kinds: ``check_reward_kinds``; propensities against the declared logging policy:
    ``check_logging_propensity``); errors name field and absolute rows.
    Raises InputError (context not 2-D or non-finite, action out of range, bad propensity,
    rewards of the wrong width or kind, ``consistent`` contradicting ``action``)."""
    n_actions, n_rewards = meta.action_set.n_actions, len(meta.reward_names) or None
    if lb.context.ndim != 2:
        raise InputError("context", [], f"expected f32[B, D], got {lb.context.shape}")
    checks.check_finite("context", lb.context, row_offset)
    outside = lb.action == OUTSIDE_ACTION
    checks.check_index("action", np.where(outside, 0, lb.action), n_actions, row_offset)
    if lb.consistent is None:
        checks.raise_if(outside, "action", f"{OUTSIDE_ACTION} (outside the action set) needs the "
                        "consistent column", row_offset)
    checks.check_propensity(lb.propensity, row_offset=row_offset)
    if lb.rewards.ndim != 2 or (n_rewards is not None and lb.rewards.shape[1] != n_rewards):
        raise InputError("rewards", [], f"expected f32[B, {n_rewards}], got {lb.rewards.shape}")
    checks.check_finite("rewards", lb.rewards, row_offset)
    check_reward_kinds(lb.rewards, meta, row_offset)
    if lb.consistent is not None:
        c = lb.consistent
        if c.shape != (len(lb.action), n_actions):
            raise InputError("consistent", [], f"expected bool[B, {n_actions}], got {c.shape}")
        logged = c[np.arange(len(lb.action)), np.where(outside, 0, lb.action)]
        checks.raise_if(~outside & ~logged, "consistent",
                        "the logged action must be consistent with itself", row_offset)
        checks.raise_if(outside & c.any(1), "consistent",
                        f"a row with action {OUTSIDE_ACTION} must have no consistent action",
                        row_offset)
    consistent = lb.consistent if lb.consistent is not None else (
        lb.action[:, None] == np.arange(n_actions)[None, :])
    check_logging_propensity(lb.propensity, consistent, meta, row_offset)
