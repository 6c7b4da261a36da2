"""Action sets: the discrete utility-weight vectors W: f32[A, K] the agent chooses among.

A candidate's utility under action a is ``W[a] . preds[n]`` (PRL-PUTS, arXiv 2605.16344): the
ranker's K predicted outcomes weighted by the action's utility weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import signal
import tempfile
import threading

import numpy as np

from puts_jax.checks import InputError


@dataclasses.dataclass(frozen=True, eq=False)
class ActionSet:
    """A named, hashable set of utility-weight vectors.

    Attributes:
      weights: f32[A, K] utility weights, one row per action.
      objective_names: K names of the ranker outcomes the weights apply to (e.g. "click").
      production: index of the production (status quo) action, or None.
    """

    weights: np.ndarray
    objective_names: tuple[str, ...]
    production: int | None = None

    def __post_init__(self) -> None:
        w = np.ascontiguousarray(self.weights, dtype=np.float32)
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "objective_names", tuple(self.objective_names))
        if w.ndim != 2 or w.shape[0] < 1:
            raise InputError("weights", [], f"expected f32[A, K] with A >= 1, got {w.shape}")
        if len(self.objective_names) != w.shape[1]:
            raise InputError("objective_names", [],
                             f"{len(self.objective_names)} names for K = {w.shape[1]}")
        if not np.isfinite(w).all():
            raise InputError("weights", np.flatnonzero(~np.isfinite(w).all(1)), "non-finite weight")
        if self.production is not None and not 0 <= self.production < w.shape[0]:
            raise InputError("production", [], f"index {self.production} outside [0, {w.shape[0]})")

    @property
    def n_actions(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_outcomes(self) -> int:
        return int(self.weights.shape[1])

    def hash(self) -> str:
        """sha256 over the weights' bytes and the outcome names: identifies the action set."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.weights, dtype="<f4").tobytes())
        h.update(json.dumps(list(self.objective_names)).encode())
        return h.hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "objective_names": list(self.objective_names),
                "production": self.production, "hash": self.hash()}

    @classmethod
    def from_dict(cls, d: dict) -> "ActionSet":
        out = cls(np.asarray(d["weights"], np.float32), tuple(d["objective_names"]),
                  d.get("production"))
        if "hash" in d and d["hash"] != out.hash():
            raise InputError("action_set.hash", [], f"stored {d['hash']} != computed {out.hash()}")
        return out

    def save(self, path: str) -> None:
        """Write JSON atomically (temp file + rename)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str) -> "ActionSet":
        with open(path) as f:
            return cls.from_dict(json.load(f))


def default_mode(directory: bool = False) -> int:
    """The permission bits a plain ``open``/``mkdir`` would give under the current umask
    (temp files from ``tempfile`` are owner-only; published outputs must not be)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync and os.replace, with
    the umask's permissions: readers see the old file or the new one, never a partial one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    os.chmod(tmp, default_mode())
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """``atomic_write_bytes`` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def deferred_interrupt():
    """Hold Ctrl-C (SIGINT) until the block is done, then deliver it: a write that has started
    (a checkpoint, a model export, the move of a staged output set into place) completes, so an
    interrupt never leaves a half-written result behind. SIGTERM is held the same way where a
    Python handler takes it (``puts-jax`` turns it into an exception, ``cli_checks.Terminated``;
    its default, ending the process at once, is left alone). The first signal held is delivered
    to its handler. Outside the main thread (where signals cannot be handled) the block runs as
    it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got = []
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, lambda *sig: got.append(sig))}
    if callable(term := signal.getsignal(signal.SIGTERM)):  # a handler (puts-jax: an exception)
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, lambda *sig: got.append(sig))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if got and callable(handler := previous[got[0][0]]):
            handler(*got[0])  # the default SIGINT handler raises KeyboardInterrupt


def simplex_grid(objective_names: tuple[str, ...], free: tuple[str, ...], steps: int,
                 fixed: dict[str, float] | None = None, scale: float = 1.0,
                 production: tuple[float, ...] | None = None) -> ActionSet:
    """All weight vectors whose ``free`` entries are non-negative multiples of scale/steps summing
    to ``scale``; the other outcomes take their ``fixed`` value (may be negative, e.g. hide).

    Example (SIMULATOR.md default): free=("click", "save", "closeup"), steps=7,
    fixed={"hide": -0.25} gives A = C(9, 2) = 36 actions.
    Args:
      production: optional weight vector; the action closest to it (L2) is marked production.
    Raises:
      InputError: unknown names, an outcome neither free nor fixed, or steps < 1.
    """
    fixed = dict(fixed or {})
    names = tuple(objective_names)
    unknown = [n for n in (*free, *fixed) if n not in names]
    if unknown:
        raise InputError("free/fixed", [], f"unknown outcome names {unknown}; known {names}")
    missing = [n for n in names if n not in free and n not in fixed]
    if missing:
        raise InputError("fixed", [], f"outcomes {missing} are neither free nor fixed")
    if steps < 1:
        raise InputError("steps", [], f"must be >= 1, got {steps}")
    rows = []
    for combo in itertools.product(range(steps + 1), repeat=len(free)):
        if sum(combo) != steps:
            continue
        w = np.zeros(len(names), np.float32)
        for name, c in zip(free, combo):
            w[names.index(name)] = scale * c / steps
        for name, v in fixed.items():
            w[names.index(name)] = v
        rows.append(w)
    W = np.stack(rows[::-1])  # first free outcome's weight descends: pure-first-head is action 0
    prod = None
    if production is not None:
        prod = int(np.argmin(((W - np.asarray(production, np.float32)) ** 2).sum(1)))
    return ActionSet(W, names, prod)


def around_production(objective_names: tuple[str, ...], production: tuple[float, ...],
                      factors: tuple[float, ...] = (0.5, 1.0, 2.0)) -> ActionSet:
    """Multiplicative perturbations of production weights: every product of per-outcome factors.

    Gives A = len(factors) ** K actions; duplicate rows (e.g. zero weights) are removed, keeping
    the first. The unperturbed vector is the production action.
    """
    prod = np.asarray(production, np.float32)
    if prod.shape != (len(objective_names),):
        raise InputError("production", [], f"expected {len(objective_names)} weights, got {prod.shape}")
    rows, seen = [], set()
    for combo in itertools.product(factors, repeat=len(prod)):
        w = (prod * np.asarray(combo, np.float32)).astype(np.float32)
        key = w.tobytes()
        if key not in seen:
            seen.add(key)
            rows.append(w)
    W = np.stack(rows)
    idx = int(np.flatnonzero((W == prod).all(1))[0]) if (W == prod).all(1).any() else None
    return ActionSet(W, tuple(objective_names), idx)
