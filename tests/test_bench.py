"""Smoke of the benchmark harness: its arithmetic and that a quick suite writes valid JSON.

Benchmarks are not tests (STYLE 14): nothing here asserts a time.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from bench import harness, report, roofline
from conftest import require_native


@pytest.mark.parametrize("q", [0.0, 1.0, 37.5, 50.0, 99.0, 100.0])
def test_percentile_matches_numpy_linear(q):
    xs = [5.0, 1.0, 9.0, 3.0, 3.0, 7.5, 2.0]
    assert harness.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_percentile_hand_values_and_errors():
    assert harness.percentile([10.0, 20.0], 50.0) == 15.0  # rank 0.5 -> halfway
    assert harness.percentile([4.0], 99.0) == 4.0
    xs = list(range(1, 101))  # 1..100: p99 at rank 98.01 -> 99.01
    assert harness.percentile(xs, 99.0) == pytest.approx(99.01)
    with pytest.raises(ValueError, match="no samples"):
        harness.percentile([], 50.0)
    with pytest.raises(ValueError, match=r"q must be in \[0, 100\]"):
        harness.percentile([1.0], 101.0)


def test_summary_fields_in_microseconds():
    s = harness.Summary.of([1e-6, 2e-6, 3e-6, 4e-6])
    assert s.median == s.p50 == pytest.approx(2.5e-6)
    d = s.as_dict()
    assert d["p50_us"] == pytest.approx(2.5) and d["min_us"] == pytest.approx(1.0)
    assert d["mean_us"] == pytest.approx(2.5) and d["n"] == 4
    assert math.isnan(harness.ratio(1.0, 0.0))


def test_roofline_bound_and_fraction():
    roof = roofline.Roofline(bandwidth=20e9, matmul_rate=100e9)
    mem = roofline.Cost(bytes=2e9, flops=1e9)  # 0.1 s of memory, 0.01 s of compute
    assert roof.bound_s(mem) == pytest.approx(0.1) and roof.bound_by(mem) == "memory"
    assert roof.fraction(0.4, mem) == pytest.approx(0.25)
    comp = roofline.Cost(bytes=1e9, flops=1e12)  # 0.05 s memory, 10 s compute
    assert roof.bound_by(comp) == "compute"
    assert roof.describe(20.0, comp)["fraction_of_roofline"] == pytest.approx(0.5)


def test_counted_costs_by_hand():
    # One dense layer 3 -> 2 on 5 rows: 5 * (2*3*2 + 2*2) = 80 FLOPs; weights 8 floats.
    c = roofline.mlp_cost(5, [3, 2])
    assert c.flops == 80 and c.bytes == 32
    # per_action head, D=2, hidden (4,), A=3, J=1, B=1: tower 2*2*4+2*4 = 24, head 2*4*3+2*3 = 30,
    # link 4*3 = 12 -> 66 FLOPs; bytes: weights (8+4 + 12+3)*4 = 108 plus context 8.
    q = roofline.qnet_cost(1, 2, (4,), 3, 1, head="per_action")
    assert q.flops == 66 and q.bytes == 116
    s = roofline.serve_cost(1, N=10, K=2, D=2, hidden=(4,), A=3, J=1, top_k=4, head="per_action")
    # + select 2*A*J = 6, reweight 2*N*K + 2*N = 60 FLOPs; + W 24 B, preds/mask/valid 80+10+1,
    # outputs 4 + 8*4 + 4 + 1 = 41 bytes.
    assert s.flops == 66 + 6 + 60
    assert s.bytes == 116 + 24 + 91 + 41


def test_report_table_and_json(tmp_path):
    rep = report.Report("unit", quick=True, shapes={"B": 2})
    rep.add("B=2", "fused", harness.Summary.of([1e-3, 2e-3]), per_s=1500.0)
    rep.ratio("fused vs numpy", 2.0, 1.5)
    rep.ratio("p50 us", 80.0, 50.0, higher_is_better=False)
    rep.ratio("undefined", float("nan"))
    rep.note("a note")
    text = rep.table()
    assert "fused" in text and "NO" in text and "yes" in text and "note: a note" in text
    rep.meta["device_kind_override"] = None
    path = rep.write(str(tmp_path))
    data = json.loads(open(path).read())  # strict JSON: nan written as null
    assert data["suite"] == "unit" and data["rows"][0]["p50_us"] == pytest.approx(1500.0)
    assert [r["met"] for r in data["ratios"]] == [True, False, None]
    assert data["ratios"][2]["value"] is None
    assert data["device"]["versions"]["jax"]
    os.rename(path, os.path.join(os.path.dirname(path), "serve.json"))  # as a suite's JSON
    md = report.targets_markdown(os.path.dirname(path))
    assert "| serve | fused vs numpy | 2 | >= 1.5 | yes |" in md
    assert "| serve | p50 us | 80 | <= 50 | **no** |" in md and "undefined" not in md
    with pytest.raises(FileNotFoundError):
        report.targets_markdown(str(tmp_path / "empty"))
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- bench-targets:begin -->\nold\n<!-- bench-targets:end -->\nb\n")
    report.replace_between_markers(str(readme), "bench-targets", md)
    text = readme.read_text()
    assert "old" not in text and md.strip() in text and text.startswith("a\n")
    assert text.endswith("<!-- bench-targets:end -->\nb\n")
    with pytest.raises(ValueError, match="markers"):
        report.replace_between_markers(str(readme), "nope", md)


def test_quick_suite_writes_valid_json(tmp_path):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the bench sets its own (one device, single-threaded)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "bench", "train", "--quick", "--batches", "64",
                          "--no-workers", "--out", str(tmp_path)], cwd=root, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    (kind,) = os.listdir(tmp_path)
    data = json.loads((tmp_path / kind / "train.json").read_text())
    assert data["suite"] == "train" and data["quick"] is True
    assert data["shapes"]["A"] == 64 and data["device"]["platform"] == "cpu"
    (row,) = data["rows"]
    assert row["B"] == 64 and row["p50_us"] > 0 and row["p99_us"] >= row["p50_us"]
    assert "grain" not in out.stdout + out.stderr


def test_bench_never_imports_grain():
    code = ("import sys\n"
            "import bench.serve, bench.sweep, bench.latency, bench.train_suite, bench.worker\n"
            "import bench.agent_worker, bench.fast\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'grain'], 'grain imported'\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_native_sweep_experiment_matches_the_library():
    """The bench's native all-lambda select gives the library sweep's statistics."""
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    import jax.numpy as jnp

    from bench import fast, native, variants, workload
    from puts_jax import engine
    from puts_jax.config import SweepConfig

    if not native.available():
        pytest.skip(f"native build failed: {native.error()}")
    s = workload.Shapes(D=8, hidden=(16,), A=8, J=2, K=3, N=30, top_k=10, L=5)
    graphdef, params = variants.split(workload.make_model(s))
    logged = variants.to_logged_batch(workload.logged_arrays(s, 64))
    lams = jnp.asarray(np.linspace([1.0, 0.0], [0.0, 1.0], s.L), jnp.float32)
    ref = engine.build_sweep(graphdef, SweepConfig(lambda_chunk=2))(params, lams, logged)
    got = fast.native_sweep(graphdef)(params, lams, logged)
    for f in ref._fields:
        np.testing.assert_allclose(np.asarray(getattr(ref, f)), np.asarray(getattr(got, f)),
                                   rtol=1e-5, atol=1e-5, err_msg=f)


def test_native_await_weights_reads_the_answered_channel():
    """The latency suite's in-program hand-off returns the agent's weights once RESP == REQ,
    and fails (instead of hanging) when the agent never answers."""
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    import jax
    import jax.numpy as jnp

    from bench import native

    if not native.available():
        pytest.skip(f"native build failed: {native.error()}")
    hdr = np.zeros(8, np.int64)
    weights = np.arange(12, dtype=np.float32).reshape(4, 3)  # B_max = 4, K = 3
    hdr[:2] = 7  # REQ == RESP: answered
    after = jnp.ones((2, 5, 3), jnp.float32)  # stands for the ranker's predictions

    def prog(timeout_ms):
        return jax.jit(lambda x: native.await_weights(
            x, (2, 3), hdr.ctypes.data, weights.ctypes.data, timeout_ms=timeout_ms) + x[:, 0, :])

    np.testing.assert_array_equal(np.asarray(prog(1000)(after)), weights[:2] + 1.0)
    hdr[0] = 8  # a request the agent never answers
    with pytest.raises(Exception, match="timed out"):
        jax.block_until_ready(prog(50)(after))


def test_native_post_request_writes_the_channel_before_the_program_continues():
    """The latency suite's in-program post copies the contexts, sets SIZE and bumps REQ once per
    call, and its 0.0 token leaves the values it is added to unchanged."""
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    import jax
    import jax.numpy as jnp

    from bench import native

    if not native.available():
        pytest.skip(f"native build failed: {native.error()}")
    hdr = np.zeros(8, np.int64)
    hdr[0] = 41
    ctx = np.zeros((4, 3), np.float32)  # B_max = 4, D = 3
    context = np.arange(6, dtype=np.float32).reshape(2, 3)
    fn = jax.jit(lambda c, b: b + native.post_request(c, hdr.ctypes.data, ctx.ctypes.data))
    out = np.asarray(fn(context, jnp.arange(3.0)))
    np.testing.assert_array_equal(out, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(ctx[:2], context)
    assert hdr[0] == 42 and hdr[2] == 2
    fn(context + 1, jnp.arange(3.0)).block_until_ready()
    assert hdr[0] == 43 and ctx[1, 2] == 6.0


def test_bandwidth_is_measured_past_the_last_level_cache():
    """STREAM's rule: the bandwidth array is at least 4x the last-level cache (here a 64 MiB
    array fit in the 480 MiB L3 and measured 2x the memory's rate), 256 MiB at least, capped
    at 1/8 of physical memory."""
    import os

    n = roofline.stream_bytes()
    cap = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 8
    llc = roofline.last_level_cache_bytes()
    want = min(max(256 << 20, 4 * (llc or 0)), cap) // 4096 * 4096
    assert n == max(64 << 20, want)
    if llc is not None and 4 * llc <= cap:
        assert n >= 4 * llc - 4096


def test_tail_profile_splits_the_native_tail_into_compute_and_reads():
    """bench.tail_profile: the row kernels built alone, plain and instrumented, agree on the
    top-k (checksum), and the profile's identities hold on a small batch."""
    require_native()
    from bench import tail_profile

    p = tail_profile.run(B=128, N=60, K=6, k=5, reps=1, evict_bytes=1 << 20)
    assert (p["B"], p["N"], p["K"], p["k"], p["bytes_read"]) == (128, 60, 6, 5, 128 * 60 * 6 * 4)
    assert p["nonfinite"] == 0 and len(p["checksum"]) == 16
    assert min(p["cold_ms"], p["hot_ms"], p["read_ms"]) > 0
    assert p["overlap_ms"] == pytest.approx(p["hot_ms"] + p["read_ms"] - p["cold_ms"])
    shares = p["phase_share"]
    assert set(shares) == set(tail_profile.PHASES)
    if sum(p["phase_ticks_per_row"].values()) > 0:  # AVX-512 rows: the phases are timed
        assert sum(shares.values()) == pytest.approx(1.0)
    assert "compute" in tail_profile.describe(p)
