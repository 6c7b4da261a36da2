"""Reading the files of an operating-policy registry (``puts_jax.policy``): a version's
policy.json and the audit log, each a JSON object (a truncated or corrupt file is an
InputError("registry") naming the file and the line); the versions and CURRENT; the cheap
checks of whether a version can be served (its lambda is valid, ``check_lam``; its parameters
folder is there; ``policy`` restores and hashes the parameters before a change); and the audit
log's chain of switches. Re-exported by ``puts_jax.policy``.

The chain: every audit line records ``current_before`` and ``current_after``; each line's
``current_before`` is the previous line's ``current_after``, and the last ``current_after`` is
what CURRENT names. A writer appends its line before it switches CURRENT (write-ahead), so a
writer stopped in between leaves a last line whose switch was never made (CURRENT still names
that line's ``current_before``, and CURRENT's mtime is older than the line's ``time``; one put
back by hand after the line was written counts as changed by hand): the next writer first appends a "switch-not-made" entry
(``current_before`` the claimed version, ``current_after`` the real CURRENT), so the log stays
true and whole. Any other break (a missing audit.jsonl while versions exist, a missing line or
one whose current_before/current_after was edited, CURRENT changed by hand) stops every writer,
named, before it writes; a CURRENT file that is garbage or empty does not (``policy rollback``
is how it is repaired). Every line written since the log was hash-chained also records
``prev_sha256``, the sha256 of the previous line's exact bytes (without its newline; of b""
for the first line), so an edit inside an earlier line (its reason, its lambda) is a break too,
named by the line after it. Lines without it (written before) are accepted, but not after one
that has it. The chain is not a signature: the last line can still be edited, and the whole log
rewritten with fresh hashes.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from typing import NamedTuple

import numpy as np

from puts_jax.checks import PROB_SUM_TOL, InputError, check_lambda


VERSION_RE = re.compile(r"^v(\d{4,})$")
POLICY_KEYS = ("lambda", "reason", "parent", "params_version", "params_hash", "param_shapes",
               "model_spec", "action_set", "action_set_hash", "source")  # what readers use


def _read_policy_json(path: str) -> dict:
    """A version's policy.json as a dict; a truncated or corrupt file (not JSON, not an object,
    lacking ``POLICY_KEYS``) is an InputError("registry") naming the file and the line."""
    with open(path, "rb") as f:
        meta = _parse(f.read(), path, 1)
    missing = [k for k in POLICY_KEYS if k not in meta]
    if missing:
        raise InputError("registry", [], f"{path}: missing keys {missing}; the file is "
                                         "truncated or corrupt")
    return meta


def _parse(text: bytes, path: str, line: int, fix: str = "") -> dict:
    """``text`` (a JSON object that starts on ``line`` of ``path``) as a dict, else an
    InputError("registry") naming the file and the line where reading failed (+ ``fix``)."""
    try:
        out = json.loads(text)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        at, why = ((line + e.lineno - 1, f"{e.msg}: column {e.colno}")
                   if isinstance(e, json.JSONDecodeError) else (line, str(e)))
        raise InputError("registry", [], f"{path}: line {at}: not valid JSON ({why}); the file "
                                         f"is truncated or corrupt{fix}") from None
    if not isinstance(out, dict):
        raise InputError("registry", [], f"{path}: line {line}: a JSON {type(out).__name__}, "
                                         f"not an object; the file is truncated or corrupt{fix}")
    return out


def _last_byte(path: str) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


_AUDIT_FIX = ("; repair or remove that line (publish, set-lambda and rollback write nothing "
              "until the log reads)")


def _read_audit_raw(registry_dir: str) -> list[tuple[int, bytes, dict]]:
    """(line number, the line's bytes without its newline, entry) of every non-blank line of
    audit.jsonl, oldest first."""
    path = os.path.join(registry_dir, "audit.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        return [(n, line[:-1] if line.endswith(b"\n") else line, _parse(line, path, n, _AUDIT_FIX))
                for n, line in enumerate(f, 1) if line.strip()]


def _read_audit_lines(registry_dir: str) -> list[tuple[int, dict]]:
    """(line number, entry) of every non-blank line of audit.jsonl, oldest first."""
    return [(n, entry) for n, _, entry in _read_audit_raw(registry_dir)]


def line_sha256(raw: bytes) -> str:
    """The ``prev_sha256`` a line after ``raw`` (a line's bytes, no newline) records."""
    return hashlib.sha256(raw).hexdigest()


def chained(registry_dir: str, entries: list[dict]) -> str:
    """``entries`` as audit.jsonl text, one line each, each with its ``prev_sha256``: the sha256
    of the line before it (the log's last line for the first; b"" when the log is empty)."""
    raw = [r for _, r, _ in _read_audit_raw(registry_dir)]
    prev, out = raw[-1] if raw else b"", []
    for e in entries:
        line = json.dumps({**e, "prev_sha256": line_sha256(prev)}, sort_keys=True)
        out.append(line + "\n")
        prev = line.encode()
    return "".join(out)


def read_audit(registry_dir: str) -> list[dict]:
    """The audit log, one dict a line, oldest first ([] when there is none). Raises
    InputError("registry") naming audit.jsonl and its first line that is not a JSON object."""
    return [entry for _, entry in _read_audit_lines(registry_dir)]


# ----------------------------------------------------------------------------- versions, CURRENT

def versions(registry_dir: str) -> list[str]:
    """Complete versions (directories with a policy.json), oldest first."""
    if not os.path.isdir(registry_dir):
        return []
    found = [(int(m.group(1)), d) for d in os.listdir(registry_dir)
             if (m := VERSION_RE.match(d))
             and os.path.isfile(os.path.join(registry_dir, d, "policy.json"))]
    return [d for _, d in sorted(found)]


def check_registry(registry_dir: str) -> None:
    """Raise InputError("registry") unless ``registry_dir`` is an existing registry (a directory
    holding CURRENT, audit.jsonl or a version). For callers that read or extend a registry: a
    mistyped path is then an error, not an empty registry, and nothing is created there."""
    if not os.path.isdir(registry_dir):
        raise InputError("registry", [], f"no registry at {registry_dir}")
    if not (versions(registry_dir) or any(os.path.exists(os.path.join(registry_dir, f))
                                          for f in ("CURRENT", "audit.jsonl"))):
        raise InputError("registry", [], f"{registry_dir} is not a registry (no CURRENT, "
                                         "audit.jsonl or versions)")


def current_version(registry_dir: str) -> str | None:
    """The version named by CURRENT, or None for an empty registry."""
    path = os.path.join(registry_dir, "CURRENT")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read().strip() or None


def current_problem(registry_dir: str, found: list[str]) -> tuple[str | None, str | None]:
    """(CURRENT's version, None), or (None, what is wrong with CURRENT: "names 'x', not a
    version ...") when it is unreadable, names no complete version, or is missing or empty while
    versions exist."""
    try:
        cur = current_version(registry_dir)
    except (OSError, UnicodeDecodeError) as e:
        return None, f"unreadable ({e})"
    if cur is None:
        return None, f"missing or empty but there are versions {found}" if found else None
    if cur not in found:
        return None, f"names {cur[:40]!r}, not a version of {registry_dir} (known {found})"
    return cur, None


def params_problem(registry_dir: str, version: str, meta: dict) -> str | None:
    """Why ``version`` (its policy.json ``meta``) cannot be served, or None: the parameters
    folder of its ``params_version`` is missing or empty (a checkpoint is never empty)."""
    owner = meta.get("params_version")
    if not isinstance(owner, str) or not VERSION_RE.match(owner):
        return f"params_version {str(owner)[:40]!r} is not a version name"
    path = os.path.join(registry_dir, owner, "params")
    via = "" if owner == version else f" (it uses the parameters of {owner})"
    if not os.path.isdir(path):
        return f"its parameters folder {path} is missing{via}"
    if not os.listdir(path):
        return f"its parameters folder {path} is empty{via}"
    return None


def _at(a: np.ndarray, bad: np.ndarray) -> str:
    """'index 1 (-0.5)' / 'indices [0, 2] ([nan, inf])': the coefficients flagged by ``bad``."""
    i = np.flatnonzero(bad)
    if len(i) == 1:
        return f"index {int(i[0])} ({a[i[0]]:g})"
    return f"indices {i.tolist()} ({[float(x) for x in a[i]]})"


def check_lam(lam, J: int, field: str = "lambda") -> np.ndarray:
    """lam f[J] as float64, or an InputError naming ``field`` and the coefficient's index (a
    lambda is one vector: its entries are coefficients, not rows)."""
    a = np.asarray(lam, np.float64)
    if a.ndim != 1 or a.shape[0] != J:
        raise InputError(field, [], f"expected f32[J] with length J = {J} (the model's reward "
                                    f"objectives), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InputError(field, [], f"non-finite coefficient at {_at(a, ~np.isfinite(a))}")
    if (a < 0).any():
        raise InputError(field, [], f"coefficients must be non-negative; {_at(a, a < 0)}")
    tol = max(PROB_SUM_TOL, 1e-5)  # check_lambda's tolerance
    if abs(a.sum() - 1.0) > tol:
        raise InputError(field, [], f"coefficients sum to {a.sum():.6g}; they must sum to 1 "
                                    f"(within {tol:g})")
    check_lambda(a, field=field)  # the same test in float32, as the serve pass reads lambda
    return a  # stored as given (float64), not rounded through float32


def lambda_problem(meta: dict) -> str | None:
    """What is wrong with a version's ``lambda`` (policy.json ``meta``), or None: it must be a
    list of J numbers that ``check_lam`` accepts, J = its ``model_spec``'s ``reward_kinds``."""
    lam, spec = meta.get("lambda"), meta.get("model_spec")
    kinds = spec.get("reward_kinds") if isinstance(spec, dict) else None
    if not isinstance(kinds, list) or not kinds:
        return "its model_spec records no reward_kinds, so its lambda cannot be checked"
    shown = json.dumps(lam)[:80]
    if not isinstance(lam, list) or not all(isinstance(x, (int, float))
                                            and not isinstance(x, bool) for x in lam):
        return f"its lambda {shown} is not a list of numbers"
    try:
        check_lam(lam, len(kinds))
    except InputError as e:
        return f"its lambda {shown}: {e.msg}"
    return None


def version_problem(registry_dir: str, version: str, meta: dict) -> str | None:
    """Why ``version`` (its policy.json ``meta``) cannot be served, by the cheap checks (no
    parameter is read): ``lambda_problem``, then ``params_problem``; None when both pass."""
    return lambda_problem(meta) or params_problem(registry_dir, version, meta)


# ----------------------------------------------------------------------------- the audit chain

class History(NamedTuple):
    """What a writer appends before its own audit line, and where the chain of switches ends.

    Fields:
      pending: entries to append first: a "switch-not-made" entry when the log's last switch
               never happened (a crash between the write-ahead line and the CURRENT switch).
      before:  the chain's end after ``pending``: the writer's ``current_before``.
      current_problem: what is wrong with the CURRENT file (None when it names a version).
    """

    pending: list
    before: str | None
    current_problem: str | None


def _chain_gap(lines: list[tuple[int, bytes, dict]]) -> str | None:
    """The first break of the chain: a ``current_before`` that is not the previous line's
    ``current_after``, a ``prev_sha256`` that is not the sha256 of the previous line's bytes, or
    a line without ``prev_sha256`` after one that has it (only lines written before prev_sha256
    existed lack it)."""
    hashed = None  # the first line that records prev_sha256
    for i, (n, _, entry) in enumerate(lines):
        m, raw, prev = lines[i - 1] if i else (None, b"", {})
        if i and entry.get("current_before") != prev.get("current_after"):
            return (f"line {n}: current_before {entry.get('current_before')!r} is not the previous "
                    f"line's current_after {prev.get('current_after')!r} (a line is missing or "
                    "was edited)")
        if "prev_sha256" in entry:
            hashed = hashed or n
            if entry["prev_sha256"] != line_sha256(raw):
                what = f"line {m}'s bytes" if i else "an empty log (it is the first line)"
                return (f"line {n}: prev_sha256 is not the sha256 of {what} (an earlier line "
                        "was edited, or a line is missing)")
        elif hashed is not None:
            return (f"line {n}: no prev_sha256, but line {hashed} has one (a line was edited "
                    "or added by hand)")
    return None


def audit_problem(registry_dir: str) -> tuple[list[tuple[int, dict]], str | None, bool]:
    """(audit lines, what breaks the chain of switches or None, whether the one break is the last
    line's switch never made). The chain: audit.jsonl exists once there are versions, each line's
    ``current_before`` is the previous line's ``current_after``, and the last ``current_after``
    is what CURRENT names. Raises InputError("registry") when a line does not read."""
    path = os.path.join(registry_dir, "audit.jsonl")
    raw, found = _read_audit_raw(registry_dir), versions(registry_dir)
    lines = [(n, entry) for n, _, entry in raw]
    if not lines:
        return lines, (f"{path} is missing or empty but the registry has versions {found}"
                       if found else None), False
    gap = _chain_gap(raw)
    if gap:
        return lines, f"{path}: {gap}", False
    (n, last), (cur, bad) = lines[-1], current_problem(registry_dir, found)
    if bad is None and cur == last.get("current_after"):
        return lines, None, False
    try:
        raw = current_version(registry_dir)
    except (OSError, UnicodeDecodeError):
        raw = bad
    if raw == last.get("current_before") and not _changed_after(registry_dir, last):
        return lines, (f"{path}: line {n}: its switch to {last.get('current_after')!r} was not "
                       f"made (CURRENT names {raw!r}): a crash between the audit line and the "
                       "switch"), True
    if bad is not None:
        return lines, f"CURRENT {bad}", False
    return lines, (f"CURRENT names {cur!r} but {path} line {n} switched to "
                   f"{last.get('current_after')!r}: CURRENT was changed outside puts-jax, or "
                   "audit lines are missing"), False


def _changed_after(registry_dir: str, entry: dict) -> bool:
    """Whether CURRENT was modified after ``entry`` (an audit line) was written: then a CURRENT
    naming the line's ``current_before`` was put back by hand, not left by a crash between the
    line and its switch (a crash leaves CURRENT as it was before the line). False when the
    line's time or CURRENT's mtime cannot be read."""
    try:
        written = datetime.datetime.fromisoformat(entry["time"]).timestamp()
        return os.stat(os.path.join(registry_dir, "CURRENT")).st_mtime > written
    except (KeyError, TypeError, ValueError, OSError):
        return False


def history(registry_dir: str, now: str) -> History:
    """Before a writer writes (registry lock held): the audit log reads, exists once there are
    versions, and its chain has no gap; a last switch that was never made becomes a pending
    "switch-not-made" entry. A broken CURRENT file (garbage, empty) is left to the caller
    (rollback and publish repair it; set-lambda refuses). Raises InputError("registry")."""
    lines, problem, not_made = audit_problem(registry_dir)
    cur, bad = current_problem(registry_dir, versions(registry_dir))
    if problem is None or (bad is not None and problem == f"CURRENT {bad}"):
        return History([], lines[-1][1].get("current_after") if lines else cur, bad)
    if not not_made:
        raise InputError("registry", [], f"{problem}; restore the log (or CURRENT) from a backup "
                                         "so that they agree (publish, set-lambda and rollback "
                                         "write nothing while the history of switches is broken)")
    n, last = lines[-1]
    claimed, actual = last.get("current_after"), last.get("current_before")
    entry = {"time": now, "action": "switch-not-made", "version": claimed,
             "current_before": claimed, "current_after": actual,
             "reason": f"line {n}'s switch to {claimed} was not made (CURRENT still names "
                       f"{actual}): the writer stopped between its audit line and the switch"}
    return History([entry], actual, bad)


class AlreadyCurrent(Exception):
    """A publish or set-lambda of what CURRENT already serves (the same lambda at float32
    precision, parameters and action set): nothing is written. ``version``: CURRENT."""

    def __init__(self, version: str, lam):
        self.version = version
        super().__init__(f"lambda {[float(str(np.float32(x))) for x in lam]} with these parameters"
                         f" and action set is already published as {version}, the current "
                         "version; nothing written")


def check_not_current(registry_dir: str, hist: History, meta: dict) -> None:
    """Raise ``AlreadyCurrent`` when ``meta`` (a new version's policy.json fields: lambda,
    params_hash, action_set_hash) is what the CURRENT version already serves. A broken or
    unreadable CURRENT is never the same (the writer goes on)."""
    if hist.current_problem is not None or not hist.before:
        return
    try:
        cur = _read_policy_json(os.path.join(registry_dir, hist.before, "policy.json"))
        same_lam = np.array_equal(np.asarray(cur["lambda"], np.float32),
                                  np.asarray(meta["lambda"], np.float32))
    except (InputError, OSError, TypeError, ValueError):
        return
    if same_lam and all(cur.get(k) == meta[k] for k in ("params_hash", "action_set_hash")):
        raise AlreadyCurrent(hist.before, meta["lambda"])
