"""TrainConfig: the one frozen, validated field list of a training run, with presets.

Paths (training log, held-out log, workdir) are arguments of ``train_and_evaluate``, not config:
the config is what makes two runs on the same data comparable.
"""

from __future__ import annotations

import dataclasses
import json

from puts_jax.config import QNetConfig


MAX_SEED = 2**32 - 1  # jax.random.key keeps 32 bits without x64: 2**32 would alias seed 0
MAX_STEPS = 2**31 - 1  # the step counter and optax's schedule count are int32
AUTO_INTERVALS = 4  # evaluations (and checkpoints) a run where eval_every (checkpoint_every) is 0


def _require(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"TrainConfig.{field}: {msg}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one-step Q regression (DESIGN.md section 6).

    The defaults are the setting measured on the simulator's reference world (tests/
    test_learning.py): a mixture head with a 64x64 tower, a high peak learning rate with warmup
    and cosine decay (the latent-segment gating moves slowly at lower rates), 8 epochs.
    """

    qnet: QNetConfig = QNetConfig(hidden=(64, 64), head="mixture", n_components=4)
    action_features: bool = False  # mixture head: build per-type values from the weight vectors W
    batch_size: int = 4096  # global batch (all processes and devices); divisible by the devices
    epochs: int = 8  # passes over the training log (each reshuffled by seed and epoch)
    max_steps: int = 0  # > 0 caps the steps (the schedule still spans epochs * steps_per_epoch)
    learning_rate: float = 0.03  # peak AdamW learning rate
    warmup_steps: int = 100  # linear warmup from 0 to the peak
    end_lr_factor: float = 0.01  # cosine decay ends at learning_rate * end_lr_factor
    weight_decay: float = 1e-4  # decoupled AdamW weight decay
    clip_norm: float = 1.0  # global-norm gradient clipping (0 clips every update to 0)
    objective_weights: tuple[float, ...] = ()  # per-objective loss weights; () = 1 for each
    seed: int = 0  # parameter init, data order and the per-step key; < 2**32 (the JAX key's bits)
    eval_every: int = 250  # steps between held-out evaluations (and at the last step);
    # 0 = scaled to the run: AUTO_INTERVALS evaluations a run (``interval``)
    checkpoint_every: int = 250  # steps between checkpoints (and at the last step); 0 = scaled
    keep: int = 3  # checkpoints kept for resumption
    select_objective: int = 0  # checkpoints are selected by held-out SNIPS of this objective
    select_lambda: tuple[float, ...] = ()  # greedy policy's lambda for selection; () = one-hot
    report_lambdas: int = 5  # lambdas on the J-simplex grid reported in selected.json
    heldout_chunk_rows: int = 65536  # rows per streamed held-out evaluation chunk
    async_checkpointing: bool = True  # orbax saves in the background (failures surface later)
    progress: bool | None = None  # tqdm bar: None = only on a terminal

    def __post_init__(self) -> None:
        for name in ("batch_size", "epochs", "keep", "report_lambdas", "heldout_chunk_rows"):
            _require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        _require(self.report_lambdas >= 2, "report_lambdas", "must be >= 2")
        for name in ("max_steps", "warmup_steps", "weight_decay", "clip_norm", "seed",
                     "select_objective", "eval_every", "checkpoint_every"):
            _require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        _require(self.seed <= MAX_SEED, "seed", f"must be <= {MAX_SEED} (the 32 bits of a JAX "
                 f"key), got {self.seed}")
        for name in ("epochs", "max_steps", "eval_every", "checkpoint_every"):
            _require(getattr(self, name) <= MAX_STEPS, name,
                     f"must be <= {MAX_STEPS}, got {getattr(self, name)}")
        _require(self.learning_rate > 0, "learning_rate", "must be > 0")
        _require(0.0 <= self.end_lr_factor <= 1.0, "end_lr_factor", "must be in [0, 1]")
        _require(all(w >= 0 for w in self.objective_weights), "objective_weights",
                 f"must be non-negative, got {self.objective_weights}")
        _require(all(w >= 0 for w in self.select_lambda) and
                 (not self.select_lambda or abs(sum(self.select_lambda) - 1.0) < 1e-6),
                 "select_lambda", f"must be non-negative and sum to 1, got {self.select_lambda}")
        _require(not self.action_features or self.qnet.head == "mixture", "action_features",
                 "only the mixture head uses action features")

    def to_dict(self) -> dict:
        """Every field as JSON values (tuples as lists, ``qnet`` as a nested dict): the record of
        a run's effective config (``workdir/config.json``, ``selected.json``)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def interval(self, every: int, total_steps: int) -> int:
        """Steps between evaluations (``every`` = ``eval_every``) or checkpoints
        (``checkpoint_every``) in a run of ``total_steps``: ``every`` itself, or for 0 the run
        split into ``AUTO_INTERVALS`` parts, ceil(total_steps / AUTO_INTERVALS). A function of the
        config and the run length only, so a resumed run evaluates and saves at the same steps."""
        return every or max(1, -(-total_steps // AUTO_INTERVALS))

    def loss_weights(self, n_objectives: int) -> tuple[float, ...]:
        """Per-objective loss weights for J objectives (validated against J)."""
        w = self.objective_weights or (1.0,) * n_objectives
        _require(len(w) == n_objectives, "objective_weights",
                 f"{len(w)} weights for {n_objectives} reward objectives")
        return tuple(float(x) for x in w)

    def selection_lambda(self, n_objectives: int) -> tuple[float, ...]:
        """The lambda whose greedy policy's held-out SNIPS selects the checkpoint."""
        _require(self.select_objective < n_objectives, "select_objective",
                 f"{self.select_objective} outside [0, {n_objectives})")
        lam = self.select_lambda or tuple(float(j == self.select_objective)
                                          for j in range(n_objectives))
        _require(len(lam) == n_objectives, "select_lambda",
                 f"{len(lam)} values for {n_objectives} reward objectives")
        return tuple(float(x) for x in lam)

    @classmethod
    def tiny(cls) -> "TrainConfig":
        """Seconds on a CPU: tests and smoke runs. Evaluations and checkpoints scale with the run
        (``interval``): 4 a run, at every quarter and the last step, whatever the log's size
        (a fixed 4 steps evaluated 2,344 times on ``simulate --preset tiny``'s 300k rows)."""
        return cls(qnet=QNetConfig.tiny(), batch_size=64, epochs=2, learning_rate=0.01,
                   warmup_steps=2, eval_every=0, checkpoint_every=0, keep=2,
                   heldout_chunk_rows=16384, async_checkpointing=True, progress=False)

    @classmethod
    def default(cls) -> "TrainConfig":
        return cls()

    @classmethod
    def obd(cls) -> "TrainConfig":
        """The Open Bandit Dataset sample: about 500 rows match an action, so a small model,
        small batches and many passes."""
        return cls(qnet=QNetConfig(hidden=(16,), head="mixture", n_components=2), batch_size=64,
                   epochs=30, learning_rate=0.01, warmup_steps=10, eval_every=50,
                   checkpoint_every=50, keep=2, heldout_chunk_rows=4096)
