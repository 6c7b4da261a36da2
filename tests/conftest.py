"""JAX tripwires for every test: 4 fake CPU devices (set before jax is imported) and rank
promotion that raises instead of silently broadcasting. The repository root goes first on the
import path, so that plain ``pytest`` (not only ``python -m pytest``) imports the ``train`` package
of this checkout, whatever an older editable install recorded for it."""

import os
import pathlib
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
