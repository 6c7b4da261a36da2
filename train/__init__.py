"""Training of the puts_jax Q-network (DESIGN.md section 6).

Modules, in dependency order: config -> input, state -> step (the only jit) -> checkpointing,
metrics, selection -> publish (the selected model's export), workdir_lock -> loop -> main.
Public entry points: ``TrainConfig``, ``train_and_evaluate(config, workdir, logs_path,
heldout_path)`` and ``load_selected(workdir)``.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from train.config import TrainConfig
    from train.loop import load_selected, train_and_evaluate

__all__ = ["TrainConfig", "train_and_evaluate", "load_selected"]


def __getattr__(name: str):
    """The public names, imported on first use (PEP 562): ``import train`` loads no jax, so
    ``python -m train`` imports it in ``train.__main__``, where a Ctrl-C is handled."""
    if name == "TrainConfig":
        from train.config import TrainConfig
        return TrainConfig
    if name in ("train_and_evaluate", "load_selected"):
        from train import loop
        return getattr(loop, name)
    raise AttributeError(f"module 'train' has no attribute {name!r}")
