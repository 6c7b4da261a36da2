"""Operating-policy registry (DESIGN.md section 4): versioned, audited choices of (Q-network
parameters, action set, lambda).

Layout of ``registry_dir``:

  CURRENT        the current version name ("v0003"), switched atomically (temp file + os.replace)
  audit.jsonl    append-only, one JSON line per action (publish / set-lambda / rollback), written
                 before CURRENT is switched (write-ahead). Its lines form a chain (each line's
                 ``current_before`` is the previous line's ``current_after``, the last one's is
                 CURRENT; each line records ``prev_sha256``, the sha256 of the previous line's
                 bytes, so an edit inside an earlier line breaks it too; lines written before
                 that existed lack it and are accepted); a writer stopped between its line and
                 the switch leaves a last line whose switch was never made, and the next writer
                 appends a "switch-not-made" entry saying so before its own
                 (``registry_files.history``). Any other break, or no audit.jsonl while
                 versions exist, stops every writer before it writes;
                 ``show`` reports it (``audit_problem``)
  .lock          advisory lock (fcntl) serializing writers of this registry
  v0001/         policy.json (+ params/, an orbax checkpoint of the Q-network's nnx.Param state)
  v0002/         policy.json only: set-lambda reuses v0001's params (``params_version``)

A version directory is written under a hidden temp name and renamed into place, so a crash never
leaves a half-written version visible. Changing lambda writes a new version that references its
parent's parameters: instant, no copy, no retraining, no recompilation (lambda is a traced
argument of the serving program).

What each writer needs (checked under the lock, before anything is written): publish, a whole
audit chain; set-lambda, that and a CURRENT version that can be served; rollback, a whole chain
and a target that can be served (a broken CURRENT is what rollback repairs). "Can be served"
(``_served_problem``): policy.json reads, its lambda is J finite non-negative numbers summing to
1, and its parameters restore and hash to ``params_hash``. ``show`` checks each version cheaply
(no parameter read: the folder is there) and lists a broken one with its ``problem``; another
version's problem blocks nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import tempfile
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

import puts_jax
from puts_jax import model_io
from puts_jax.action_set import ActionSet, atomic_write_text, default_mode
from puts_jax.checks import InputError
from puts_jax.qnet import QNetwork
from puts_jax.registry_files import (POLICY_KEYS, VERSION_RE, AlreadyCurrent,  # noqa: F401
                                     History, _last_byte, _read_policy_json, audit_problem,
                                     chained, check_lam, check_not_current, check_registry,
                                     current_problem, current_version,
                                     history, lambda_problem, params_problem, read_audit,
                                     version_problem, versions)

SCHEMA = "puts_jax.policy/1"
_FIX = "roll back to a complete version (policy rollback --version V) or publish again"


class OperatingPolicy(NamedTuple):
    """A loaded registry version.

    Fields:
      version:    "v0003".
      model:      QNetwork rebuilt with ``QNetwork.from_spec`` and its parameters restored.
      action_set: ActionSet W: f32[A, K].
      lam:        f32[J] scalarization.
      meta:       the version's policy.json.
    """

    version: str
    model: QNetwork
    action_set: ActionSet
    lam: np.ndarray
    meta: dict


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


params_hash = model_io.params_hash


def _check_point(frontier_point, lam: np.ndarray) -> dict:
    if frontier_point is None:
        return {}
    if not isinstance(frontier_point, Mapping):
        raise InputError("frontier_point", [], f"expected a dict, got {type(frontier_point).__name__}")
    fp = json.loads(json.dumps(frontier_point))  # must be JSON-able; a deep copy
    if fp.get("lambda") is not None and not np.allclose(fp["lambda"], lam, atol=1e-6):
        raise InputError("frontier_point.lambda", [], f"{fp['lambda']} differs from lambda "
                                                      f"{lam.tolist()}")
    return fp


def _check_reason(reason) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise InputError("reason", [], "a non-empty reason is required for the audit log")
    return reason


@contextlib.contextmanager
def _locked(registry_dir: str, create: bool = False):
    """Hold the registry's writer lock and yield its ``History`` (``registry_files.history``):
    an audit log that does not read or whose chain is broken is an InputError("registry")
    before anything is written. Only ``create`` (publish) makes a missing directory."""
    if create:
        os.makedirs(registry_dir, exist_ok=True)
    elif not os.path.isdir(registry_dir):
        raise InputError("registry", [], f"no registry at {registry_dir}")
    lock = os.path.join(registry_dir, ".lock")
    try:
        f = open(lock, "a")
    except OSError as e:
        why = e.strerror or e
        raise InputError("registry", [], f"cannot take the writer lock {lock} ({why}); the "
                                         "registry must be writable (nothing written)") from None
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield history(registry_dir, _now())
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _read_meta(registry_dir: str, version: str) -> dict:
    path = os.path.join(registry_dir, version, "policy.json")
    if not VERSION_RE.match(version) or not os.path.isfile(path):
        raise InputError("version", [], f"{version!r} is not a version of {registry_dir}; "
                                        f"known {versions(registry_dir)}")
    return _read_policy_json(path)


def _next_version(registry_dir: str) -> str:
    nums = [int(m.group(1)) for d in os.listdir(registry_dir) if (m := VERSION_RE.match(d))]
    return f"v{max(nums, default=0) + 1:04d}"


def _audit(registry_dir: str, entries: list[dict]) -> None:
    """Append ``entries``, one line each with its ``prev_sha256``, in one write (after a newline,
    if a crash left the last line without one); ``_locked`` has already checked that every
    existing line reads."""
    path = os.path.join(registry_dir, "audit.jsonl")
    text = chained(registry_dir, entries)
    with open(path, "ab") as f:
        gap = f.tell() > 0 and _last_byte(path) != b"\n"
        f.write((("\n" if gap else "") + text).encode())
        f.flush()
        os.fsync(f.fileno())


def _commit(registry_dir: str, meta: dict, model: QNetwork | None, action: str,
            hist: History) -> str:
    """Write a version under a temp name, rename it into place, audit, switch CURRENT.
    Call with the registry lock held (any ``.tmp-*`` is a leftover, removed here); ``meta`` lacks
    version/parent, filled in here (parent None when the CURRENT file names no version)."""
    version = _next_version(registry_dir)
    parent = hist.before if hist.current_problem is None else None
    meta = {"schema": SCHEMA, "version": version, "parent": parent, "action": action,
            "created": _now(), **meta}
    if model is not None:
        meta["params_version"] = version
    # earlier failed changes' temp folders (a crash; orbax threads outliving a failed save)
    for stale in (d for d in os.listdir(registry_dir) if d.startswith(".tmp-")):
        shutil.rmtree(os.path.join(registry_dir, stale), ignore_errors=True)
    tmp = tempfile.mkdtemp(dir=registry_dir, prefix=f".tmp-{version}-")
    os.chmod(tmp, default_mode(directory=True))
    try:
        if model is not None:
            model_io.save_params(os.path.join(tmp, "params"), model)
        atomic_write_text(os.path.join(tmp, "policy.json"), json.dumps(meta, indent=1))
        os.rename(tmp, os.path.join(registry_dir, version))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _switch(registry_dir, {"time": meta["created"], "action": action, "version": version,
                           "parent": parent, "lambda": meta["lambda"], "reason": meta["reason"],
                           "params_version": meta["params_version"],
                           "params_hash": meta["params_hash"],
                           **({"accepted": meta["accepted"]} if meta.get("accepted") else {})},
            version, hist)
    return version


def _switch(registry_dir: str, entry: dict, version: str, hist: History) -> None:
    """Append ``hist.pending`` and ``entry`` (write-ahead), then switch CURRENT to ``version``.
    A broken CURRENT file is recorded as ``current_problem`` on the entry."""
    entry = {**entry, "current_before": hist.before, "current_after": version}
    if hist.current_problem is not None:
        entry["current_problem"] = hist.current_problem
    _audit(registry_dir, [*hist.pending, entry])
    atomic_write_text(os.path.join(registry_dir, "CURRENT"), version + "\n")


def publish(registry_dir: str, model: QNetwork, action_set: ActionSet, lam,
            frontier_point: Mapping | None, reason: str, source: Mapping | None = None,
            accepted: Sequence[str] = ()) -> str:
    """Publish a new operating policy (own parameters) and make it current; returns its version.

    Args:
      model: the trained QNetwork (its nnx.Param state is saved with orbax).
      action_set: the actions the model scores (A must equal ``model.n_actions``).
      lam: f[J] scalarization; J = the model's reward objectives, non-negative, sums to 1.
      frontier_point: what the frontier says about this lambda (``report.frontier_point``).
      reason: why (kept in policy.json and the audit log).
      source: provenance, e.g. {"checkpoint": path, "step": 2000, "frontier": path}.
      accepted: warnings the publisher accepted (e.g. a guardrail missed on the report half);
        kept in policy.json and the audit entry as ``accepted``.
    Raises InputError naming the field (lambda, action_set, reason, frontier_point.lambda),
    and AlreadyCurrent (nothing written) when CURRENT already serves this lambda and model.
    """
    J = len(model.reward_kinds)
    lam = check_lam(lam, J)
    if action_set.n_actions != model.n_actions:
        raise InputError("action_set", [], f"A = {action_set.n_actions} actions but the model "
                                           f"scores {model.n_actions}")
    meta = {"reason": _check_reason(reason), "lambda": lam.tolist(),
            "frontier_point": _check_point(frontier_point, lam),
            "source": json.loads(json.dumps(dict(source or {}))),
            "model_spec": model.spec(), "params_hash": params_hash(model),
            "param_shapes": model_io.param_shapes(model), "action_set": action_set.to_dict(),
            "action_set_hash": action_set.hash(), "package_version": puts_jax.__version__}
    if accepted:
        meta["accepted"] = [str(a) for a in accepted]
    with _locked(registry_dir, create=True) as hist:
        check_not_current(registry_dir, hist, meta)
        return _commit(registry_dir, meta, model, "publish", hist)


def set_lambda(registry_dir: str, lam, reason: str, frontier_point: Mapping | None = None) -> str:
    """New version with the current version's parameters and action set and a new lambda; it
    references the parent's params (no copy) and becomes current. Returns its version. Creates
    nothing when there is no current policy, CURRENT is broken, or its version cannot be served."""
    if not (versions(registry_dir) or os.path.exists(os.path.join(registry_dir, "CURRENT"))):
        raise InputError("CURRENT", [], f"{registry_dir} has no current policy; publish first")
    with _locked(registry_dir) as hist:
        parent = current_problem(registry_dir, versions(registry_dir))[0]
        if hist.current_problem is not None:
            raise InputError("registry", [], f"CURRENT {hist.current_problem}; set-lambda changes "
                                             "the current policy's lambda, so make a complete "
                                             "version current first with 'policy rollback "
                                             "--version V' (nothing written)")
        if parent is None:
            raise InputError("CURRENT", [], f"{registry_dir} has no current policy; publish first")
        pm = _read_meta(registry_dir, parent)
        why = _served_problem(registry_dir, parent, pm)
        if why:
            tail = ("set-lambda builds on the current version, so" if lambda_problem(pm)
                    else "a new lambda on it could not be either:")
            raise InputError("registry", [], f"CURRENT {parent} cannot be served: {why}; {tail} "
                                             f"{_FIX} (nothing written)")
        lam = check_lam(lam, len(pm["model_spec"]["reward_kinds"]))
        keep = ("model_spec", "params_version", "params_hash", "param_shapes", "action_set",
                "action_set_hash", "source")
        meta = {"reason": _check_reason(reason), "lambda": lam.tolist(),
                "frontier_point": _check_point(frontier_point, lam),
                **{k: pm[k] for k in keep}, "package_version": puts_jax.__version__}
        check_not_current(registry_dir, hist, meta)  # AlreadyCurrent: the same lambda again
        return _commit(registry_dir, meta, None, "set-lambda", hist)


def rollback(registry_dir: str, version: str, reason: str) -> str:
    """Make an existing ``version`` current again (no new version); audited. Returns it. The
    target must be servable; CURRENT need not (rolling back is how it is repaired)."""
    reason = _check_reason(reason)
    _read_meta(registry_dir, version)  # an unknown version creates nothing (read again locked)
    with _locked(registry_dir) as hist:
        meta = _read_meta(registry_dir, version)
        why = _served_problem(registry_dir, version, meta)
        if why:
            raise InputError("version", [], f"{version} cannot be served: {why}; roll back to "
                                            "another version (nothing written)")
        if hist.current_problem is None and hist.before == version:
            raise InputError("version", [], f"{version} is already current")
        _switch(registry_dir, {"time": _now(), "action": "rollback", "version": version,
                               "parent": meta["parent"], "lambda": meta["lambda"],
                               "reason": reason, "params_version": meta["params_version"],
                               "params_hash": meta["params_hash"]}, version, hist)
    return version


_SUMMARY = ("version", "parent", "action", "created", "lambda", "reason", "params_version",
            "params_hash", "action_set_hash")


def _summaries(registry_dir: str, found: list[str]) -> tuple[list[dict], dict]:
    """Every version's summary, with ``problem`` ("unreadable: ..." for a policy.json that does
    not read, "cannot be served: ..." by ``version_problem``, else None), and the metas read."""
    out, metas = [], {}
    for v in found:
        try:
            metas[v] = m = _read_meta(registry_dir, v)
        except InputError as e:
            out.append({**dict.fromkeys(_SUMMARY), "version": v, "problem": f"unreadable: {e.msg}"})
            continue
        why = version_problem(registry_dir, v, m)
        out.append({**{k: m.get(k) for k in _SUMMARY}, "version": v,
                    "problem": f"cannot be served: {why}" if why else None})
    return out, metas


def show(registry_dir: str) -> dict:
    """The registry at a glance: current version and its policy.json, every version's summary
    (with its ``problem``: a policy.json that does not read, an invalid lambda, a parameters
    folder that is missing; cheap checks, no parameter is read), the audit log, whether its chain of
    switches is whole and ends at CURRENT (``audit_consistent``; ``audit_problem`` says what
    breaks it), and stale temp directories (left by a crash; never visible as versions).
    ``current_problem`` says what is wrong with CURRENT, else None: when the CURRENT file is
    broken ``current`` and ``policy`` are None; when it names a version that does not read or
    cannot be served, ``current`` names it and ``policy`` is None or its policy.json."""
    found = versions(registry_dir)
    cur, problem = current_problem(registry_dir, found)
    summary, metas = _summaries(registry_dir, found)
    why = next((v["problem"] for v in summary if v["version"] == cur and v["problem"]), None)
    if why:  # "which is unreadable: FILE: line N: ..." / "which cannot be served: ..."
        problem = f"names {cur!r}, which {'is ' if why.startswith('unreadable') else ''}{why}"
    lines, audit_bad, _ = audit_problem(registry_dir)
    stale = sorted(d for d in os.listdir(registry_dir) if d.startswith(".tmp-")) \
        if os.path.isdir(registry_dir) else []
    return {"registry": os.path.abspath(registry_dir), "current": cur,
            "current_problem": problem, "policy": metas.get(cur), "versions": summary,
            "audit": [e for _, e in lines], "audit_consistent": audit_bad is None,
            "audit_problem": audit_bad, "stale_temp": stale}


def load(registry_dir: str, version: str | None = None) -> OperatingPolicy:
    """Load ``version`` (default: CURRENT): rebuild the QNetwork from its spec, restore the
    parameters with orbax into that target, and verify the params and action-set hashes."""
    if version is None:
        version, problem = current_problem(registry_dir, versions(registry_dir))
        if problem:
            raise InputError("CURRENT", [], problem)
    if version is None:
        raise InputError("CURRENT", [], f"{registry_dir} has no published policy")
    meta = _read_meta(registry_dir, version)
    if why := lambda_problem(meta):
        raise InputError(version, [], f"{why}; {_FIX}", registry_dir)
    action_set = ActionSet.from_dict(meta["action_set"])  # checks its stored hash
    model = QNetwork.from_spec(meta["model_spec"])
    _restore(registry_dir, version, meta, model)
    if params_hash(model) != meta["params_hash"]:
        raise InputError("params_hash", [], f"restored parameters of {version} hash to "
                                            f"{params_hash(model)}, policy.json says {meta['params_hash']}")
    return OperatingPolicy(version, model, action_set, np.asarray(meta["lambda"], np.float32), meta)


def _restore(registry_dir: str, version: str, meta: dict, model: QNetwork) -> None:
    """Restore ``version``'s parameters (those of its ``params_version``) into ``model``; a
    missing or unreadable params folder is an InputError naming the registry and the version
    as incomplete, not orbax's error."""
    owner = meta["params_version"]
    path = os.path.join(registry_dir, owner, "params")
    via = "" if owner == version else f" (it uses the parameters of {owner})"
    fix = f"; {_FIX}"
    if not os.path.isdir(path):
        raise InputError(version, [], f"incomplete version{via}: its parameters folder {path} "
                                      f"is missing{fix}", registry_dir)
    try:
        model_io.restore_params(path, model, meta["param_shapes"])
    except (OSError, KeyError, ValueError) as e:  # orbax: a folder without its checkpoint files
        text = str(e)
        if isinstance(e, ValueError) and text.startswith("params: "):  # shapes that do not fit
            raise InputError("params", [], text.removeprefix("params: "), registry_dir) from None
        first = (text.strip().splitlines() or [""])[0][:160]
        raise InputError(version, [], f"incomplete version{via}: its parameters in {path} cannot "
                                      f"be read ({type(e).__name__}: {first}){fix}",
                         registry_dir) from None


def _served_problem(registry_dir: str, version: str, meta: dict) -> str | None:
    """Why ``version`` cannot be served, or None: ``version_problem``, then its parameters
    restored as ``load`` restores them and hashed against the recorded ``params_hash`` (a
    partly deleted or replaced params folder is caught here, not by ``show``'s cheap check)."""
    if why := version_problem(registry_dir, version, meta):
        return why
    try:
        model = QNetwork.from_spec(meta["model_spec"])
        _restore(registry_dir, version, meta, model)
    except InputError as e:
        return e.msg.removesuffix(f"; {_FIX}")
    except (KeyError, TypeError, ValueError) as e:  # a model_spec that does not rebuild
        return f"its model_spec does not rebuild a Q-network ({type(e).__name__}: {e})"[:300]
    if (got := params_hash(model)) != meta["params_hash"]:
        path = os.path.join(registry_dir, meta["params_version"], "params")
        return (f"its parameters in {path} hash to {got} but policy.json records params_hash "
                f"{meta['params_hash']} (the folder was changed or replaced)")
    return None


def describe(op: OperatingPolicy) -> dict[str, Any]:
    """Short JSON-able summary of a loaded policy (for logs and the CLI)."""
    return {"version": op.version, "lambda": op.lam.tolist(), "n_actions": op.action_set.n_actions,
            "params_hash": op.meta["params_hash"], "action_set_hash": op.meta["action_set_hash"]}
