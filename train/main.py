"""Command line: ``python -m train --config tiny|default --logs PATH --heldout PATH --workdir DIR``.

Parses arguments and calls ``train_and_evaluate``; nothing else lives here (STYLE.md 7).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from train.config import TrainConfig
from train.loop import train_and_evaluate

PRESETS = {"tiny": TrainConfig.tiny, "default": TrainConfig.default, "obd": TrainConfig.obd}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(PRESETS), default="default")
    p.add_argument("--logs", required=True, help="training exploration log (Parquet)")
    p.add_argument("--heldout", required=True, help="held-out exploration log (Parquet)")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, selected model")
    p.add_argument("--seed", type=int, default=None, help="override TrainConfig.seed")
    p.add_argument("--epochs", type=int, default=None, help="override TrainConfig.epochs")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = PRESETS[args.config]()
    overrides = {k: v for k, v in (("seed", args.seed), ("epochs", args.epochs)) if v is not None}
    cfg = dataclasses.replace(cfg, **overrides)
    out = train_and_evaluate(cfg, args.workdir, args.logs, args.heldout)
    print(json.dumps({k: out.get(k) for k in ("step", "value", "gain_over_global", "gain_shown",
                                               "global_action", "final_step")}))
    return out
