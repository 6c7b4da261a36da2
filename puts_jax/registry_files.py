"""Reading the files of an operating-policy registry (``puts_jax.policy``): a version's
policy.json and the audit log, each a JSON object; a truncated or corrupt file is an
InputError("registry") naming the file and the line. Re-exported by ``puts_jax.policy``.
"""

from __future__ import annotations

import json
import os

from puts_jax.checks import InputError


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


def read_audit(registry_dir: str) -> list[dict]:
    """The audit log, one dict a line, oldest first ([] when there is none). Raises
    InputError("registry") naming audit.jsonl and its first line that is not a JSON object."""
    path = os.path.join(registry_dir, "audit.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        return [_parse(line, path, n, _AUDIT_FIX) for n, line in enumerate(f, 1)
                if line.strip()]
