"""``train_and_evaluate``: the testable training loop (STYLE.md 7).

Data flow: training log -> grain batches -> jitted step (data-parallel over a mesh of all
devices) -> metrics fetched one step late -> held-out evaluation and checkpoint selection ->
orbax checkpoints (restore order: ``train.checkpointing``). A run killed at any point resumes from
its last committed checkpoint to the same parameters, bit for bit, as an uninterrupted run.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tqdm
from flax import nnx

from puts_jax.data import logs
from train import checkpointing, input as input_lib, metrics as metrics_lib, processes, publish, \
    selection, state as state_lib, step as step_lib
from train.config import MAX_STEPS, TrainConfig
from train.workdir_lock import WorkdirLock


def _check_estimable(chunks: list, heldout_path: str) -> None:
    """Raise InputError naming ``heldout_path`` when none of its rows matches any action: no
    policy's value can be estimated on it, so no checkpoint could ever be selected."""
    if not any(np.asarray(lb.consistent).shape[0] for lb in chunks):
        raise logs.InputError("rows", [], "the log has no rows: nothing to select checkpoints "
                              "on", heldout_path)
    if not any(np.asarray(lb.consistent).any() for lb in chunks):
        raise logs.InputError("consistent", [], "no row matches any action of the action set: no "
                              "policy can be estimated on this log, so no checkpoint could be "
                              "selected", heldout_path)


def _validate_shapes(cfg: TrainConfig, n_devices: int, n_processes: int) -> None:
    """InputError("TrainConfig.batch_size") unless the global batch splits evenly over the data
    mesh's devices (every device JAX sees) and the processes; it says how to change the count
    (``python -m train`` prints it as one line, not as a ValueError)."""
    if cfg.batch_size % n_devices:
        raise logs.InputError("TrainConfig.batch_size", [], f"{cfg.batch_size} is not divisible "
                              f"by the {n_devices} devices of the data mesh (every device JAX "
                              "sees: the global batch is split by rows); run on a device count "
                              f"that divides {cfg.batch_size} (GPUs: CUDA_VISIBLE_DEVICES)")
    if cfg.batch_size % n_processes:
        raise logs.InputError("TrainConfig.batch_size", [], f"{cfg.batch_size} is not divisible "
                              f"by the {n_processes} processes")


def _check_parquet(path: str) -> None:
    """Raise InputError naming ``path`` unless it reads as a Parquet file (not a text file or a
    truncated copy)."""
    try:
        pq.read_schema(path)
    except pa.ArrowException as err:
        raise logs.InputError("file", [], f"not a readable Parquet file ({err})", path) from err


def _check_heldout(meta: logs.LogMeta, heldout_path: str) -> None:
    """Raise InputError naming ``heldout_path`` unless it has the training log's action set,
    reward names and reward kinds."""
    hm = logs.read_meta(heldout_path)
    if hm.action_set.hash() != meta.action_set.hash():
        raise logs.InputError("action_set", [], f"{hm.action_set.hash()} differs from the "
                              f"training log's {meta.action_set.hash()}", heldout_path)
    if tuple(hm.reward_names) != tuple(meta.reward_names):
        raise logs.InputError("reward_names", [], f"{list(hm.reward_names)} differ from the "
                              f"training log's {list(meta.reward_names)}", heldout_path)
    if tuple(hm.reward_kinds) != tuple(meta.reward_kinds):
        raise logs.InputError("reward_kinds", [], f"{list(hm.reward_kinds)} differ from the "
                              f"training log's {list(meta.reward_kinds)} (the held-out "
                              "estimates and their intervals use the training log's kinds)",
                              heldout_path)


def _check_widths(arrays: input_lib.LogArrays, chunks: list, heldout_path: str) -> None:
    """Raise InputError naming ``heldout_path`` unless its context (and context id) rows have the
    training log's widths: the Q-network reads the training log's D features."""
    width = lambda x: "none" if x is None else f"length {x.shape[1]}"  # noqa: E731
    for field in ("context", "context_ids"):
        want = width(getattr(arrays, field))
        got = sorted({width(getattr(lb, field)) for lb in chunks} - {want})
        if got:
            raise logs.InputError(field, [], f"expected {want} (as in --logs), got "
                                  f"{', '.join(got)}", heldout_path)


class _Run:
    """Everything built once per call: data, model structure, step, checkpointer, evaluator."""

    def __init__(self, cfg: TrainConfig, workdir: str, logs_path: str, heldout_path: str):
        self.cfg, self.workdir = cfg, workdir
        _check_parquet(logs_path)
        _check_parquet(heldout_path)
        # the vocabularies of the model being trained: an id at or above one would embed as NaN
        vocab = tuple(cfg.qnet.id_vocab_sizes) or None
        meta, rid, lb = logs.read_log(logs_path, id_vocab_sizes=vocab)
        # the keys of the rows read, for the workdir's record (``checkpointing.record_rows``)
        self.row_keys = {"logs": [input_lib.row_keys(rid, lb)], "heldout": []}
        _check_heldout(meta, heldout_path)
        self.meta = meta
        try:
            arrays = input_lib.LogArrays.from_logged(lb)
        except logs.InputError as err:
            raise err.in_source(logs_path) from err
        A, J = meta.action_set.n_actions, len(meta.reward_names)
        kinds = tuple(meta.reward_kinds)
        self.mesh = step_lib.make_mesh()
        _validate_shapes(cfg, self.mesh.size, jax.process_count())
        self.source = input_lib.BatchSource(arrays, cfg.batch_size // jax.process_count(),
                                            cfg.epochs, cfg.seed, jax.process_index(),
                                            jax.process_count())
        schedule_steps = len(self.source)
        if schedule_steps > MAX_STEPS:
            raise ValueError(f"TrainConfig.epochs: {cfg.epochs} epochs of "
                             f"{self.source.steps_per_epoch} steps exceed {MAX_STEPS} steps")
        self.total = min(schedule_steps, cfg.max_steps) if cfg.max_steps else schedule_steps
        self.eval_every = cfg.interval(cfg.eval_every, self.total)
        self.checkpoint_every = cfg.interval(cfg.checkpoint_every, self.total)
        tx = state_lib.make_optimizer(cfg, schedule_steps)
        model_fn = lambda: state_lib.make_model(cfg, arrays.context.shape[1], A, kinds,  # noqa
                                                meta.action_set.weights)
        self.defs, state = state_lib.init_state(model_fn(), tx, cfg.seed)
        self.state = jax.device_put(state, step_lib.replicated_sharding(self.mesh))
        self.step_fn = step_lib.build_train_step(self.defs, kinds, cfg.loss_weights(J), self.mesh)
        self.names = tuple(meta.reward_names)
        self.select_lambda = cfg.selection_lambda(J)
        g = selection.global_action_choice(lb.consistent, lb.rewards, lb.propensity,
                                           cfg.select_objective)
        chunks = input_lib.heldout_chunks(heldout_path, cfg.heldout_chunk_rows, vocab,
                                          self.row_keys["heldout"])
        _check_widths(arrays, chunks, heldout_path)
        _check_estimable(chunks, heldout_path)
        self.evaluator = selection.HeldoutEvaluator(
            chunks, self.names, kinds, A, self.select_lambda, cfg.select_objective,
            cfg.report_lambdas, g["action"], cfg.heldout_chunk_rows, global_choice=g)
        os.makedirs(workdir, exist_ok=True)  # only once both logs have been read and checked
        # Process 0 writes the workdir's files; it holds the lock until train_and_evaluate ends.
        self.lock = WorkdirLock(workdir)
        if jax.process_index() == 0:
            self.lock.acquire()
        try:
            self._open(cfg, workdir)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, cfg: TrainConfig, workdir: str) -> None:
        """The checkpointer, the metrics writer and the data iterator (the lock held)."""
        self.ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), cfg.keep,
                                               cfg.async_checkpointing)
        self.writer = metrics_lib.MetricsWriter(workdir, enabled=jax.process_index() == 0)
        self.iterator = iter(input_lib.make_dataset(self.source))
        self.progress = {"evals": [], "best": None}

    def restore_latest(self) -> int:
        """Resume from the last committed checkpoint (order: checkpointing module docstring)."""
        step = self.ckpt.latest_step()
        if step is None:
            self.writer.truncate_after(0)
            return 0
        flat_target = state_lib.flatten(self.state)
        flat, data_state, progress = self.ckpt.restore(step, flat_target)
        self.state = state_lib.unflatten(self.state, flat)
        self.iterator.set_state(data_state)
        self.progress = progress
        self.writer.truncate_after(step)
        return step

    def evaluate(self, step: int) -> dict:
        """Held-out evaluation at ``step``; saves the model to ``best_so_far`` (provisional,
        ``train.publish``) when it is the best so far."""
        res = self.evaluator(self.defs.model, self.state.params)
        entry = {"step": step, **res}
        self.progress["evals"].append({"step": step, "value": res["value"]})
        best = self.progress.get("best")
        if selection.is_better(res["value"], None if best is None else best["value"]):
            self.progress["best"] = entry
            if jax.process_index() == 0:
                model = nnx.merge(self.defs.model, self.state.params)
                with checkpointing.deferred_interrupt():
                    entry["params_hash"] = publish.save_best(self.workdir, model, step,
                                                             res["value"])
        return entry

    def finish(self, heldout_path: str) -> dict:
        """The selected.json document of a run that trained its last step; process 0 publishes
        it with the selected model (``train.publish``). Raises InputError naming
        ``heldout_path`` when no evaluation gave a value, so nothing can be selected."""
        doc = self.summary()
        best = self.progress.get("best")
        if not best:
            steps = ", ".join(str(e["step"]) for e in self.progress["evals"]) or "none"
            raise logs.InputError(
                "selection", [], f"no checkpoint could be evaluated: the held-out SNIPS of "
                f"{self.names[self.cfg.select_objective]} at the selection lambda "
                f"{list(self.select_lambda)} is undefined (no held-out row matches the greedy "
                f"policy's actions) at every evaluation (steps {steps}); nothing is selected or "
                "exported. Use a larger held-out log, in a new --workdir", heldout_path)
        if jax.process_index() == 0:
            doc["params_hash"] = best.get("params_hash")
            publish.publish(self.workdir, doc)
        return doc

    def summary(self) -> dict:
        doc = selection.summary(self.progress, self.evaluator, self.select_lambda,
                                self.names[self.cfg.select_objective])
        doc["config"] = self.cfg.to_dict()
        doc["total_steps"] = self.total
        return doc

    def save(self, step: int) -> None:
        self.ckpt.save(step, state_lib.flatten(self.state), self.iterator.get_state(),
                       self.progress)


def _train_steps(run: _Run, start: int, interrupt_after: int | None) -> int:
    """Steps ``start + 1`` .. ``run.total`` (or up to ``interrupt_after``) with their metrics,
    evaluations and checkpoints; returns the last step run. Saves already started commit before
    this returns or raises (also on Ctrl-C)."""
    fetcher = metrics_lib.LateFetcher(run.names)
    progress = run.cfg.progress
    bar = tqdm.tqdm(total=run.total, initial=start, desc="train", unit="step",
                    disable=None if progress is None else not progress)
    step = start
    try:
        for step in range(start + 1, run.total + 1):
            batch = input_lib.to_train_batch(next(run.iterator))
            run.state, m = run.step_fn(run.state, step_lib.device_batch(batch, run.mesh))
            rec = fetcher.push(step, m)
            if rec is not None:
                run.writer.write(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", refresh=False)
            bar.update(1)
            last = step == run.total
            if step % run.eval_every == 0 or last:
                rec = fetcher.flush()
                if rec is not None:
                    run.writer.write(rec)
                run.writer.write({"step": step, "heldout": run.evaluate(step)})
            if step % run.checkpoint_every == 0 or last:
                with checkpointing.deferred_interrupt():
                    run.save(step)
            if interrupt_after is not None and step >= interrupt_after:
                break
        rec = fetcher.flush()
        if rec is not None:
            run.writer.write(rec)
    finally:  # also on Ctrl-C: a save already started commits before the process ends
        bar.close()
        with checkpointing.deferred_interrupt():
            run.ckpt.close()
    return step


def train_and_evaluate(config: TrainConfig, workdir: str, logs_path: str, heldout_path: str, *,
                       interrupt_after: int | None = None) -> dict:
    """Train a QNetwork on ``logs_path``, select a checkpoint on ``heldout_path``, export it.

    Resumes from ``workdir/checkpoints`` when it holds a committed step, and only on the same
    input files and config as the run that wrote it (``checkpointing.check_inputs``,
    ``check_config``: ``workdir/inputs.json`` records the files' paths, sizes and sha256,
    ``workdir/config.json`` the config; ``workdir/training_rows.npz`` the keys of their rows,
    ``checkpointing.record_rows``, which ``puts-jax sweep`` checks its log against). Holds
    ``workdir/train.lock`` while it runs (``train.workdir_lock``). Writes ``workdir/metrics.jsonl`` (train loss per objective one
    step late, held-out estimates at each evaluation), ``workdir/best_so_far`` (the best model
    evaluated so far, provisional) and, once the last step is trained, ``workdir/selected_model``
    and ``workdir/selected.json`` (``train.publish``; ``load_selected``). A resumed run that
    has nothing left to train redoes that export.

    interrupt_after: test hook simulating preemption: stop right after this step, without the
      final evaluation, save or export (saves already started are committed first).
    Returns the selected.json document (plus ``final_step``).
    Raises NonFiniteLossError naming the step whose loss is NaN/inf; WorkdirInUseError when
    another process trains in ``workdir``; InputError naming the file (``source``: ``logs_path``
    or ``heldout_path``), the field and the rows on bad input, "selection" (``heldout_path``)
    when no evaluation gave a value to select by, or the role ("logs", "heldout") whose file
    differs from the one a resumed run was trained on, or "config" (``source``: ``workdir``)
    naming the fields that differ from the resumed run's; in a multi-process run, InputError
    ("--seed", "--epochs", "--logs", "--workdir", ...) on every process when the processes were
    not started alike (``processes.check_processes_agree``).
    """
    if jax.process_count() > 1:  # before any collective (device_put of the state is one)
        os.makedirs(workdir, exist_ok=True)
        processes.check_processes_agree(
            config.to_dict(), {role: checkpointing.input_identity(path)
                               for role, path in (("logs", logs_path), ("heldout", heldout_path))},
            workdir)
    run = _Run(config, workdir, logs_path, heldout_path)
    try:
        try:
            inputs = {"logs": checkpointing.input_identity(logs_path),
                      "heldout": checkpointing.input_identity(heldout_path)}
            resuming, write = run.ckpt.latest_step() is not None, jax.process_index() == 0
            checkpointing.check_config(workdir, config.to_dict(), resuming, write)
            checkpointing.check_inputs(workdir, inputs, resuming, write)
            checkpointing.record_rows(workdir, inputs, run.row_keys, resuming, write)
        except BaseException:
            run.ckpt.close()
            raise
        step = _train_steps(run, run.restore_latest(), interrupt_after)
        if interrupt_after is not None and step < run.total:
            return {**run.summary(), "final_step": step}
        return {**run.finish(heldout_path), "final_step": step}
    finally:
        run.lock.release()


def load_selected(workdir: str):
    """(QNetwork, info) of the checkpoint a run selected; see ``selection.load_selected``."""
    return selection.load_selected(workdir)
