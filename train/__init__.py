"""Training of the puts_jax Q-network (DESIGN.md section 6).

Modules, in dependency order: config -> input, state -> step (the only jit) -> checkpointing,
metrics, selection -> publish (the selected model's export), workdir_lock -> loop -> main.
Public entry points: ``TrainConfig``, ``train_and_evaluate(config, workdir, logs_path,
heldout_path)`` and ``load_selected(workdir)``.
"""

from train.config import TrainConfig
from train.loop import load_selected, train_and_evaluate

__all__ = ["TrainConfig", "train_and_evaluate", "load_selected"]
