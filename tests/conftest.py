"""JAX tripwires for every test: 4 fake CPU devices (set before jax is imported) and rank
promotion that raises instead of silently broadcasting."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
