"""Training input: an exploration log in memory, served by grain as whole batches.

Each grain element is one whole batch gathered with one vectorized numpy take (FACTS.md: far
faster than per-record sources). The order depends only on (seed, epoch): every epoch permutes
the log's rows with ``default_rng([seed, epoch, 0])`` and cuts the permutation into global
batches of ``batch_size * shard_count`` rows. Process ``shard_index`` of ``shard_count`` (a
multi-process run, ``jax.process_index()``) takes its slice ``shard_index`` of each global batch,
so the global batches, and the trained parameters up to float rounding, are the same on any
number of processes; the shards of a step are disjoint and their union is the global batch.
The last batch of an epoch is padded with ``valid=False`` rows (they contribute 0 to the loss), so
every batch has the same shape and the step compiles once. The grain iterator's state
(``{"next_index": i}``) is JSON and restores the exact remainder of the stream (PITFALLS P7).
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import grain
import numpy as np

from puts_jax.data import logs
from puts_jax.sweep_inputs import row_keys
from puts_jax.types import LoggedBatch


class TrainBatch(NamedTuple):
    """One training batch (host numpy, then a batch-sharded global array).

    context: f32[B, D]; action: i32[B]; rewards: f32[B, J]; valid: bool[B] (False: padding);
    context_ids: optional i32[B, C].
    """

    context: np.ndarray
    action: np.ndarray
    rewards: np.ndarray
    valid: np.ndarray
    context_ids: np.ndarray | None = None


class LogArrays(NamedTuple):
    """The columns training needs, whole log in memory: context f32[n, D], action i32[n],
    rewards f32[n, J], context_ids optional i32[n, C]."""

    context: np.ndarray
    action: np.ndarray
    rewards: np.ndarray
    context_ids: np.ndarray | None = None

    @classmethod
    def from_logged(cls, lb: LoggedBatch) -> "LogArrays":
        """The training rows of a log. Rows whose logged decision matches no action
        (``action == logs.OUTSIDE_ACTION``: slot-level logs such as the Open Bandit Dataset) say
        nothing about any action's value under the one-step regression of the logged action's
        Q, so they are left out (they still count as zero terms in off-policy estimates).
        Raises InputError when no row is left."""
        inside = np.asarray(lb.action) != logs.OUTSIDE_ACTION
        if not inside.any():
            raise logs.InputError("action", [], "every row is outside the action set")
        if not inside.all():
            lb = type(lb)(*(None if x is None else np.asarray(x)[inside] for x in lb))
        return cls(np.ascontiguousarray(lb.context, np.float32),
                   np.ascontiguousarray(lb.action, np.int32),
                   np.ascontiguousarray(lb.rewards, np.float32),
                   None if lb.context_ids is None else np.ascontiguousarray(lb.context_ids,
                                                                           np.int32))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class BatchSource:
    """grain random-access source whose element i is batch i of the whole run (all epochs).

    Element: dict with the TrainBatch fields plus ``row`` i64[B] (the log row, -1 at padding),
    B = ``batch_size``, this shard's rows of a global batch of ``batch_size * shard_count``.
    Raises ValueError for a shard outside [0, shard_count) or a log without rows.
    """

    def __init__(self, arrays: LogArrays, batch_size: int, epochs: int, seed: int,
                 shard_index: int = 0, shard_count: int = 1):
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard_index: {shard_index} outside [0, {shard_count})")
        n = len(arrays.action)
        if n < 1:
            raise ValueError("arrays: the training log has no rows")
        self.arrays, self.batch_size, self.epochs, self.seed = arrays, batch_size, epochs, seed
        self.shard_index, self.shard_count = shard_index, shard_count
        self.rows = np.arange(n, dtype=np.int64)
        self.global_batch = batch_size * shard_count
        self.steps_per_epoch = _ceil_div(n, self.global_batch)
        self._lock = threading.Lock()
        self._perm_epoch, self._perm = -1, None

    def __len__(self) -> int:
        return self.epochs * self.steps_per_epoch

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            if self._perm_epoch != epoch:
                rng = np.random.default_rng([self.seed, epoch, 0])  # the same on every shard
                self._perm, self._perm_epoch = rng.permutation(self.rows), epoch
            return self._perm

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} outside [0, {len(self)})")
        epoch, j = divmod(int(index), self.steps_per_epoch)
        perm = self._permutation(epoch)
        B = self.batch_size
        rows = np.full(B, -1, np.int64)
        start = j * self.global_batch + self.shard_index * B  # this shard's slice of batch j
        got = perm[start:min(start + B, (j + 1) * self.global_batch)]
        rows[:len(got)] = got
        valid = rows >= 0
        take = np.where(valid, rows, 0)
        a = self.arrays
        out = {"context": a.context[take], "action": a.action[take], "rewards": a.rewards[take],
               "valid": valid, "row": rows}
        if a.context_ids is not None:
            out["context_ids"] = a.context_ids[take]
        for name in ("context", "rewards", "context_ids"):
            if name in out:
                out[name][~valid] = 0
        out["action"][~valid] = 0
        return out


def make_dataset(source: BatchSource) -> grain.IterDataset:
    """The grain pipeline over a BatchSource: in order (the source already shuffles per epoch),
    with a small prefetch. ``iter(dataset)`` gives an iterator with get_state / set_state."""
    return grain.MapDataset.source(source).to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))


def to_train_batch(element: dict) -> TrainBatch:
    """The TrainBatch fields of a grain element (drops the ``row`` bookkeeping)."""
    return TrainBatch(element["context"], element["action"], element["rewards"], element["valid"],
                      element.get("context_ids"))


def heldout_chunks(path: str, chunk_rows: int, id_vocab_sizes: tuple[int, ...] | None = None,
                   keys: list | None = None) -> list:
    """The held-out log as a list of LoggedBatch chunks (host numpy), read once per run.
    ``id_vocab_sizes``: the trained model's vocabularies (ids at or above one are rejected,
    ``logs.iter_log_chunks``); None when it embeds no ids. ``keys``: a list to append each
    chunk's ``sweep_inputs.row_keys`` u64[b] to (the workdir's record of the rows training
    read)."""
    out = []
    for _, rid, lb in logs.iter_log_chunks(path, chunk_rows, id_vocab_sizes=id_vocab_sizes):
        if keys is not None:
            keys.append(row_keys(rid, lb))
        out.append(lb)
    return out
