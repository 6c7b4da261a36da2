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
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def make_tiny_world(d, *, n_logs: int, n_heldout: int, n_evaluation: int, n_eval: int,
                    n_requests: int, models=(("model", 0),)) -> int:
    """``puts-jax simulate --preset tiny`` into ``d/data`` and an untrained tiny Q-network saved
    at ``d/NAME`` for each (NAME, extra) of ``models``, reading contexts ``extra`` wider than the
    data's. Returns the data's context width D. (The shared set-up of the CLI tests.)"""
    import pyarrow.parquet as pq
    from flax import nnx

    from puts_jax import cli, model_io
    from puts_jax.config import QNetConfig
    from puts_jax.data import logs
    from puts_jax.qnet import QNetwork

    assert cli.main(["simulate", "--out", str(d / "data"), "--preset", "tiny",
                     "--n-logs", str(n_logs), "--n-heldout", str(n_heldout),
                     "--n-evaluation", str(n_evaluation), "--n-eval", str(n_eval),
                     "--n-requests", str(n_requests)]) == 0
    path = str(d / "data" / "logs.parquet")
    meta = logs.read_meta(path)
    D = len(pq.read_table(path, columns=["context"])["context"][0])
    for name, extra in models:
        q = QNetwork(QNetConfig.tiny(), D + extra, meta.action_set.n_actions, meta.reward_kinds,
                     rngs=nnx.Rngs(0))
        model_io.save_model(str(d / name), q, extra={"step": 0})
    return D


def tiny_cli_world(d, frontiers=(("frontier", 3),), halves: bool = True) -> None:
    """``make_tiny_world`` at the CLI tests' small sizes (300 log rows, 1000 evaluation rows,
    40 requests) and a ``puts-jax sweep`` frontier in ``d/NAME`` for each (NAME, lambda points)
    of ``frontiers``, without a bootstrap (with halves unless ``halves`` is False)."""
    from puts_jax import cli

    make_tiny_world(d, n_logs=300, n_heldout=100, n_evaluation=1000, n_eval=100, n_requests=40)
    for name, n in frontiers:
        assert cli.main(["sweep", "--model", str(d / "model"), "--logs",
                         str(d / "data" / "evaluation.parquet"), "--out", str(d / name),
                         "--n-lambdas", str(n), "--bootstrap", "0"]
                        + ([] if halves else ["--no-halves"])) == 0


def no_work(monkeypatch, target, name: str) -> None:
    """Make ``target.name`` fail the test if the command gets that far (a check that must come
    before the work)."""
    def fail(*a, **k):
        raise AssertionError(f"{name} ran: the check came after the work")
    monkeypatch.setattr(target, name, fail)


def one_line(capsys) -> str:
    """The captured stderr, checked to be exactly one line without a traceback; its text."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def cli_error(capsys) -> str:
    """``one_line``, checked to be a ``puts-jax: error: ...`` line; the text after that."""
    err = one_line(capsys)
    assert err.startswith("puts-jax: error: "), err
    return err.removeprefix("puts-jax: error: ")


@pytest.fixture(scope="module")
def sim_logs(tmp_path_factory):
    """Tiny simulated training (600 rows) and held-out (400 rows) logs: {"train", "heldout"}
    paths (the train/ tests' data)."""
    from puts_jax.data import logs
    from puts_jax.data import simulator as sim

    d = tmp_path_factory.mktemp("logs")
    world = sim.make_world(sim.SimConfig.tiny())
    paths = {}
    for name, n, seed in (("train", 600, 1), ("heldout", 400, 2)):
        paths[name] = str(d / f"{name}.parquet")
        logs.write_log(paths[name], **sim.simulate_log(world, n, seed))
    return paths


def require_native() -> None:
    """Skip a native-kernel test only where no C++ compiler exists; a compiler whose build fails
    is a failure (``puts_jax.native.why_unavailable`` says why)."""
    import shutil

    from puts_jax import native

    if native.available():
        return
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler: the native tail is not built here")
    pytest.fail(f"native tail did not build: {native.why_unavailable()}")


def snapshot(folder) -> dict:
    """Every file under ``folder`` (hidden ones too) -> its bytes."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


def random_log(B: int, A: int, D: int, seed: int = 0):
    """A LoggedBatch of B uniformly logged rows (propensity 1/A), a binary and a real reward."""
    import numpy as np

    from puts_jax.types import LoggedBatch

    rng = np.random.default_rng(seed)
    action = rng.integers(0, A, B).astype(np.int32)
    rewards = np.stack([rng.random(B) < 0.3, rng.random(B)], 1).astype(np.float32)
    return LoggedBatch(rng.normal(size=(B, D)).astype(np.float32), action, np.full(B, 1 / A),
                       rewards, np.eye(A, dtype=bool)[action], np.ones(B, bool))
