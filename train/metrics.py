"""Metrics: JSONL records fetched one step late, so the host never blocks the device to log
(STYLE.md 11, nanodo), and the stop on a non-finite loss that names the step."""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/inf; ``step`` is the step that produced it."""

    def __init__(self, step: int, record: dict):
        self.step, self.record = step, record
        super().__init__(f"non-finite training loss at step {step}: {record}")


def _plain(x):
    x = np.asarray(x)
    if x.ndim == 0:
        return x.item()
    return x.tolist()


class MetricsWriter:
    """Appends one JSON object a line to ``workdir/metrics.jsonl``.

    ``truncate_after(step)`` drops records past a restored step, so a resumed run's file reads
    like an uninterrupted run's.
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(workdir, METRICS_FILE)
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Keep the records up to ``step``. A torn last line (an append cut short by a full disk
        or a kill: no newline, or not JSON) is dropped; a damaged line before it is a ValueError
        naming the file and line, as nothing can say which steps it held."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = f.readlines()
        keep = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                torn = not line.endswith("\n")
            except json.JSONDecodeError:
                rec, torn = None, True
            if torn and i == len(lines) - 1:
                break  # the interrupted append (a step past the checkpoint runs again)
            if rec is None:
                raise ValueError(f"{self.path}: line {i + 1} is not a JSON record; remove it "
                                 f"(and the lines after it) to resume")
            if rec.get("step", 0) <= step:
                keep.append(line)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")


class LateFetcher:
    """Holds step s's device metrics until step s + 1 has been dispatched, then fetches them.

    ``push(step, metrics)`` returns the previous step's record (or None); ``flush()`` the last.
    Raises NonFiniteLossError naming the step whose loss is not finite.
    """

    def __init__(self, objective_names: tuple[str, ...]):
        self.names = objective_names
        self.pending = None

    def _record(self, step: int, metrics) -> dict:
        host = jax.device_get(metrics)
        rec = {"step": step, "loss": _plain(host.loss)}
        rec.update({f"loss/{n}": float(v) for n, v in zip(self.names, np.asarray(host.per_objective))})
        rec.update(grad_norm=_plain(host.grad_norm), skipped=bool(host.skipped),
                   skips=int(host.skips), rows=int(host.valid))
        if not math.isfinite(rec["loss"]):
            raise NonFiniteLossError(step, rec)
        return rec

    def push(self, step: int, metrics) -> dict | None:
        prev, self.pending = self.pending, (step, metrics)
        return None if prev is None else self._record(*prev)

    def flush(self) -> dict | None:
        prev, self.pending = self.pending, None
        return None if prev is None else self._record(*prev)
