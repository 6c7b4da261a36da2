"""puts_jax: JAX scoring engine for personalized utility-weight tuning (PRL-PUTS, arXiv 2605.16344).

The curated public API; each name's docstring gives shapes (legend in ``puts_jax.types``).
Modules with I/O (``data.logs``, ``data.simulator``, ``data.obd``, ``policy``, ``report``) are
imported as modules: ``from puts_jax import policy``.
"""

__version__ = "0.1.0"

from puts_jax.action_set import ActionSet, around_production, simplex_grid
from puts_jax.checks import InputError
from puts_jax.config import QNetConfig, ScoringConfig, SweepConfig
from puts_jax.engine import Scorer, build_serve, build_sweep, compile_latency_serve, export_serve
from puts_jax.hostmem import keep_scratch_resident
from puts_jax.evaluation import Evaluation, evaluate_fixed, evaluate_fixed_actions, evaluate_log
from puts_jax.model_io import load_model, save_model
from puts_jax.ope import Estimates, finalize
from puts_jax.pareto import hypervolume, nondominated, select_operating_point
from puts_jax.qnet import QNetwork
from puts_jax.scalarization import lambda_grid, scalarize
from puts_jax.types import EstimatorStats, LoggedBatch, RequestBatch, ServeOutput

__all__ = [
    "ActionSet", "around_production", "simplex_grid",
    "InputError",
    "QNetConfig", "ScoringConfig", "SweepConfig",
    "Scorer", "build_serve", "build_sweep", "compile_latency_serve", "export_serve",
    "keep_scratch_resident",
    "Evaluation", "evaluate_fixed", "evaluate_fixed_actions", "evaluate_log",
    "load_model", "save_model",
    "Estimates", "finalize",
    "hypervolume", "nondominated", "select_operating_point",
    "QNetwork",
    "lambda_grid", "scalarize",
    "EstimatorStats", "LoggedBatch", "RequestBatch", "ServeOutput",
]
