"""Fresh-user review of the console script's messages and of ``score --top-k``: every bad input
is one ``puts-jax: error:`` line naming the flag or file (never a library's exception text or a
temp name), a huge --top-k costs no memory beyond the candidate bucket, and the scoring rate is
reported apart from compilation."""

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from puts_jax import cli, engine, model_io, policy, score_job
from puts_jax.config import ScoringConfig
from puts_jax.data import logs
from puts_jax.types import RequestBatch
from conftest import cli_error as _err, tiny_cli_world


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny world, a 3-point frontier and a registry: v0001 published (own params), v0002
    set-lambda (v0001's params)."""
    d = tmp_path_factory.mktemp("cli_messages")
    tiny_cli_world(d, halves=False)
    assert cli.main(["policy", "publish", "--registry", str(d / "reg"), "--model",
                     str(d / "model"), "--frontier", str(d / "frontier" / "frontier.json"),
                     "--logs", str(d / "data" / "logs.parquet"), "--point", "0",
                     "--reason", "test"]) == 0
    assert cli.main(["policy", "set-lambda", "--registry", str(d / "reg"), "--lam", "0.5,0.5",
                     "--reason", "test"]) == 0
    return d


def _score(d, out, *extra, registry=None):
    return cli.main(["score", "--policy", str(registry or d / "reg"), "--requests",
                     str(d / "data" / "requests.parquet"), "--out", str(out), *extra])


# ----------------------------------------------------------------------------- --top-k memory

def test_scorer_never_returns_more_columns_than_the_candidate_bucket(run):
    model, _ = model_io.load_model(str(run / "model"))
    W = logs.read_meta(str(run / "data" / "logs.parquet")).action_set.weights
    D = len(pq.read_table(str(run / "data" / "logs.parquet"), columns=["context"])["context"][0])
    rng = np.random.default_rng(0)
    B, N, K = 5, 7, W.shape[1]
    mask = np.ones((B, N), bool)
    mask[1, 4:] = False  # a request with 4 real candidates
    batch = RequestBatch(rng.normal(size=(B, D)).astype(np.float32),
                         rng.random((B, N, K), dtype=np.float32), mask, None)
    lam = np.array([0.5, 0.5], np.float32)
    cfg = dict(candidate_buckets=(8, 64))
    small = engine.Scorer(model, W, ScoringConfig(top_k=N, **cfg))(lam, batch)
    huge = engine.Scorer(model, W, ScoringConfig(top_k=10 ** 6, **cfg))(lam, batch)
    assert huge.topk_index.shape == (B, 8) and huge.topk_score.shape == (B, 8)  # the N bucket
    np.testing.assert_array_equal(huge.topk_index[:, :N], small.topk_index)
    np.testing.assert_array_equal(huge.topk_score[:, :N], small.topk_score)
    np.testing.assert_array_equal(huge.action, small.action)
    assert (huge.topk_index[:, N:] == -1).all() and np.isneginf(huge.topk_score[:, N:]).all()
    assert (huge.topk_index[1, 4:] == -1).all() and (huge.topk_index[1, :4] >= 0).all()
    # k within the bucket keeps its width
    assert engine.Scorer(model, W, ScoringConfig(top_k=3, **cfg))(lam, batch).topk_index.shape \
        == (B, 3)


def test_score_with_a_huge_top_k_writes_the_rows_of_top_k_n(run, capsys):
    N = max(len(p) for p in pq.read_table(str(run / "data" / "requests.parquet"),
                                          columns=["preds"])["preds"].to_pylist())
    assert _score(run, run / "k_n.parquet", "--top-k", str(N)) == 0
    assert _score(run, run / "k_huge.parquet", "--top-k", str(10 ** 9)) == 0
    a, b = pq.read_table(str(run / "k_n.parquet")), pq.read_table(str(run / "k_huge.parquet"))
    assert a.num_rows == 40 and a.equals(b)
    assert {len(x) for x in b["topk_index"].to_pylist()} == {N}
    # a normal k is unchanged: k entries, the first k of top-k N
    assert _score(run, run / "k_3.parquet", "--top-k", "3") == 0
    c = pq.read_table(str(run / "k_3.parquet"))
    assert [x[:3] for x in a["topk_candidate_id"].to_pylist()] == \
        c["topk_candidate_id"].to_pylist()


def test_score_reports_the_rate_without_compilation(run, capsys):
    capsys.readouterr()
    assert _score(run, run / "rate.parquet") == 0
    out = capsys.readouterr().out
    m = re.search(r"scored 40 requests .* in ([\d.]+)s \(([\d.]+)s of it compiling, once per "
                  r"batch shape\): ([\d,]+) requests/s without compiling -> ", out)
    assert m, out
    total, compiling = float(m[1]), float(m[2])
    assert 0 < compiling <= total


def test_scorer_times_compilation_once_per_shape(run):
    model, _ = model_io.load_model(str(run / "model"))
    W = logs.read_meta(str(run / "data" / "logs.parquet")).action_set.weights
    D = len(pq.read_table(str(run / "data" / "logs.parquet"), columns=["context"])["context"][0])
    rng = np.random.default_rng(1)
    batch = RequestBatch(rng.normal(size=(3, D)).astype(np.float32),
                         rng.random((3, 5, W.shape[1]), dtype=np.float32), np.ones((3, 5), bool),
                         None)
    s = engine.Scorer(model, W, ScoringConfig(top_k=2, batch_buckets=(8,),
                                              candidate_buckets=(8,)))
    lam = np.array([0.5, 0.5], np.float32)
    first = s(lam, batch)
    once = s.compile_seconds
    assert once > 0
    again = s(lam, batch)
    assert s.compile_seconds == once  # same bucket shape: nothing compiled
    np.testing.assert_array_equal(first.topk_index, again.topk_index)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_score_removes_the_temp_file_of_a_killed_run(run, capsys):
    out = run / "killed" / "s.parquet"
    out.parent.mkdir()
    host = re.sub(r"[^\w.]", "_", socket.gethostname())
    dead = out.parent / f".tmp-s.parquet-{host}-{_dead_pid()}-abc_123.parquet"
    live = out.parent / f".tmp-s.parquet-{host}-{os.getpid()}-x.parquet"  # a run in progress
    other = out.parent / ".tmp-other.parquet"  # not ours: kept
    for f in (dead, live, other):
        f.write_bytes(b"PAR1")
    capsys.readouterr()
    assert _score(run, out) == 0
    assert not dead.exists() and live.exists() and other.exists() and out.exists()
    assert f"removed {dead} (left by a killed score run)" in capsys.readouterr().out
    assert score_job.remove_stale_temps(str(out)) == []
    assert sorted(os.listdir(out.parent)) == sorted([live.name, other.name, "s.parquet"])


# ----------------------------------------------------------------------------- error lines

@pytest.mark.parametrize("content,why", [
    (b"", "Parquet file size is 0 bytes"), (b"request_id,context\n1,2\n", "Parquet"),
    (None, "Parquet")])  # None: the first 100 bytes of a real file (truncated)
def test_a_request_set_that_is_not_parquet_names_the_flag_and_file(run, capsys, content, why):
    bad = run / "bad_requests.parquet"
    bad.write_bytes(content if content is not None else
                    (run / "data" / "requests.parquet").read_bytes()[:100])
    capsys.readouterr()
    assert cli.main(["score", "--policy", str(run / "reg"), "--requests", str(bad), "--out",
                     str(run / "never.parquet")]) == 2
    err = _err(capsys)
    assert err.startswith(f"--requests {bad}: file: not a readable Parquet file (")
    assert why in err and "ArrowInvalid" not in err
    assert not (run / "never.parquet").exists()


def test_a_log_that_is_not_parquet_names_the_flag_and_file(run, capsys):
    bad = run / "text_log.parquet"
    bad.write_text("hello\n")
    capsys.readouterr()
    assert cli.main(["sweep", "--model", str(run / "model"), "--logs", str(bad), "--out",
                     str(run / "never_sweep")]) == 2
    assert _err(capsys).startswith(f"--logs {bad}: file: not a readable Parquet file (")
    assert not (run / "never_sweep").exists()


def test_an_unwritable_out_folder_names_out_not_the_temp_file(run, capsys, monkeypatch):
    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(score_job.tempfile, "mkstemp", refuse)
    capsys.readouterr()
    assert _score(run, run / "sub" / "s.parquet") == 2
    assert _err(capsys) == (f"--out: cannot create a file in {run / 'sub'} (Permission denied);"
                            " nothing written")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_score_out_in_proc_names_out(run, capsys):
    capsys.readouterr()
    assert _score(run, "/proc/x.parquet") == 2
    err = _err(capsys)
    assert err.startswith("--out: cannot create a file in /proc (") and ".tmp-" not in err


def _folder_commands(d, path):
    return {
        "simulate": ["simulate", "--out", path, "--preset", "tiny", "--n-logs", "10"],
        "sweep": ["sweep", "--model", str(d / "model"), "--logs",
                  str(d / "data" / "evaluation.parquet"), "--out", path],
        "report": ["report", "--frontier", str(d / "frontier" / "frontier.json"), "--out", path],
        "data obd": ["data", "obd", "--out", path],
        "policy publish": ["policy", "publish", "--registry", path, "--model", str(d / "model"),
                           "--frontier", str(d / "frontier" / "frontier.json"), "--logs",
                           str(d / "data" / "logs.parquet"), "--point", "0", "--reason", "x"],
    }


@pytest.mark.parametrize("cmd", ["simulate", "sweep", "report", "data obd", "policy publish"])
def test_an_output_folder_that_is_a_file_is_named_and_kept(run, capsys, cmd):
    path = run / f"a_file_{cmd.replace(' ', '_')}"
    path.write_text("keep me\n")
    flag = "--registry" if cmd == "policy publish" else "--out"
    capsys.readouterr()
    assert cli.main(_folder_commands(run, str(path))[cmd]) == 2
    assert _err(capsys) == (f"{flag}: {path} is a file; {flag} must be a folder (it writes "
                            "several files there; nothing written)")
    assert path.read_text() == "keep me\n"
    assert cli.main(_folder_commands(run, str(path / "sub"))[cmd]) == 2
    assert _err(capsys) == f"{flag}: cannot create the folder {path / 'sub'}: {path} is not a " \
                           "directory"


def test_truth_on_a_folder_that_is_no_simulator_output_names_data(run, capsys):
    capsys.readouterr()
    assert cli.main(["truth", "--data", str(run / "frontier"), "--model", str(run / "model"),
                     "--frontier", str(run / "frontier" / "frontier.json")]) == 2
    assert _err(capsys) == (f"--data: {run / 'frontier'} is not a simulator output (no "
                            "truth.npz or evaluation.parquet; 'puts-jax simulate --out DIR' "
                            "writes one)")


def test_a_registry_version_without_params_is_named_incomplete(run, capsys):
    reg = run / "reg_incomplete"
    shutil.copytree(run / "reg", reg)
    shutil.rmtree(reg / "v0001" / "params")  # v0002 (set-lambda) reuses v0001's params
    capsys.readouterr()
    assert _score(run, run / "never_inc.parquet", registry=reg) == 2
    assert _err(capsys) == (
        f"--policy {reg}: v0002: incomplete version (it uses the parameters of v0001): its "
        "parameters "
        f"folder {reg / 'v0001' / 'params'} is missing; roll back to a complete version (policy "
        "rollback --version V) or publish again")
    assert not (run / "never_inc.parquet").exists()


def test_a_registry_version_with_an_empty_params_folder_is_named_incomplete(run, capsys):
    reg = run / "reg_empty_params"
    shutil.copytree(run / "reg", reg)
    shutil.rmtree(reg / "v0001" / "params")
    (reg / "v0001" / "params").mkdir()
    capsys.readouterr()
    assert _score(run, run / "never_emp.parquet", "--version", "v0001", registry=reg) == 2
    err = _err(capsys)
    assert err.startswith(f"--policy {reg}: v0001: incomplete version: its parameters in "
                          f"{reg / 'v0001' / 'params'} cannot be read (")
    assert err.endswith("; roll back to a complete version (policy rollback --version V) or "
                        "publish again")


def test_obd_root_is_named(run, capsys, tmp_path):
    capsys.readouterr()
    assert cli.main(["data", "obd", "--root", str(tmp_path / "nope"), "--out",
                     str(tmp_path / "o")]) == 2
    assert _err(capsys) == f"--root: no such directory {tmp_path / 'nope'}"
    if importlib.util.find_spec("obp") is None:  # found, never imported (test_obp_agreement)
        pytest.skip("obp not installed: the BTS prior is read from its package folder")
    assert cli.main(["data", "obd", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert _err(capsys) == (f"--root: {tmp_path} has no random/all/all.csv (the Open Bandit "
                            "Dataset's layout: ROOT/<behavior>/<campaign>/<campaign>.csv and "
                            "item_context.csv)")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("lam,msg", [
    ("0.5,-0.5", "--lam: coefficients must be non-negative; index 1 (-0.5)"),
    ("1.5,-0.25,-0.25", "--lam: expected f32[J] with length J = 2 (the model's reward "
                        "objectives), got shape (3,)"),
    ("0.5,nan", "--lam: non-finite coefficient at index 1 (nan)"),
    ("inf,nan", "--lam: non-finite coefficient at indices [0, 1] ([inf, nan])"),
    ("0.5,0.6", "--lam: coefficients sum to 1.1; they must sum to 1 (within 1e-05)"),
])
def test_set_lambda_names_lam_and_the_index(run, capsys, lam, msg):
    before = policy.versions(str(run / "reg"))
    capsys.readouterr()
    assert cli.main(["policy", "set-lambda", "--registry", str(run / "reg"), "--lam", lam,
                     "--reason", "x"]) == 2
    assert _err(capsys) == msg
    assert policy.versions(str(run / "reg")) == before


def test_zero_propensity_says_what_a_cli_user_can_do(run, capsys):
    t = pq.read_table(str(run / "data" / "evaluation.parquet"))
    p = t["propensity"].to_numpy().copy()
    p[5] = 0.0
    bad = run / "prop0.parquet"
    pq.write_table(t.set_column(t.schema.get_field_index("propensity"), "propensity",
                                pa.array(p)), str(bad))
    capsys.readouterr()
    assert cli.main(["sweep", "--model", str(run / "model"), "--logs", str(bad), "--out",
                     str(run / "never_p0"), "--bootstrap", "0", "--no-halves"]) == 2
    err = _err(capsys)
    assert err == (f"{bad}: propensity: propensity must be > 0 (positivity); fix the log's "
                   "propensities or drop those rows (puts-jax does not clip) at rows [5]")
    assert "floor" not in err
