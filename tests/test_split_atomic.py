"""``data split`` publishes its two files as one pair (``puts_jax.staging``): after an error,
Ctrl-C or a real SIGKILL at any point the folder holds the old pair or, once recovery has run,
the whole new one, byte for byte, and no temp file; destinations that cannot be used are named
(``--out-a`` / ``--out-b``) before any work, with nothing written."""

import os
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from puts_jax import cli, cli_checks
from puts_jax.data import logs
from puts_jax.data import simulator as sim
from conftest import one_line as _err, snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 400-row simulated log and the seed-1 and seed-2 pairs split from it (their bytes)."""
    d = tmp_path_factory.mktemp("split_src")
    path = str(d / "logs.parquet")
    logs.write_log(path, **sim.simulate_log(sim.make_world(sim.SimConfig.tiny()), 400, 3))
    pairs = {}
    for seed in (1, 2):
        out = d / f"seed{seed}"
        logs.split_log(path, str(out / "a.parquet"), str(out / "b.parquet"), 0.5, seed)
        pairs[seed] = snapshot(out)
    assert pairs[1] != pairs[2] and sorted(pairs[1]) == ["a.parquet", "b.parquet"]
    return path, pairs


@pytest.fixture
def old(source, tmp_path):
    """A folder holding the seed-1 pair (and a file of the user's)."""
    out = tmp_path / "out"
    logs.split_log(source[0], str(out / "a.parquet"), str(out / "b.parquet"), 0.5, 1)
    (out / "notes.txt").write_text("mine")
    return out


def _split(src, out, seed=2, a="a.parquet", b="b.parquet"):
    return cli.main(["data", "split", "--logs", src, "--out-a", str(out / a), "--out-b",
                     str(out / b), "--seed", str(seed)])


def test_the_new_pair_replaces_the_old_one_and_nothing_else_is_left(source, old, capsys):
    assert _split(source[0], old) == 0
    assert snapshot(old) == {**source[1][2], "notes.txt": b"mine"}  # no staging, no temps
    a, b = (pq.read_table(old / f, columns=["request_id"])["request_id"].to_pylist()
            for f in ("a.parquet", "b.parquet"))
    assert not set(a) & set(b) and len(a) + len(b) == 400


@pytest.mark.parametrize("which", ["a", "b"])
def test_an_existing_directory_is_named_before_any_work(source, old, capsys, which):
    (old / "dir").mkdir()
    names = {"a": "a.parquet", "b": "b.parquet", which: "dir"}
    assert _split(source[0], old, a=names["a"], b=names["b"]) == 2
    assert _err(capsys) == (f"puts-jax: error: --out-{which}: {old / 'dir'} is a directory; "
                            "give a file path (nothing written)")
    assert snapshot(old) == {**source[1][1], "notes.txt": b"mine"}
    assert os.listdir(old / "dir") == []


def test_an_empty_or_foreign_folder_destination_is_named(source, old, capsys):
    assert cli.main(["data", "split", "--logs", source[0], "--out-a", str(old / "a.parquet"),
                     "--out-b", ""]) == 2
    assert _err(capsys) == "puts-jax: error: --out-b: an empty path (nothing written)"
    assert cli.main(["data", "split", "--logs", source[0], "--out-a", str(old / "a.parquet"),
                     "--out-b", str(old / "sub" / "b.parquet")]) == 2
    assert _err(capsys).startswith(f"puts-jax: error: --out-b: {old / 'sub' / 'b.parquet'} is "
                                   f"not in the folder of {old / 'a.parquet'} ({old}): the two "
                                   "files are published together")
    assert snapshot(old) == {**source[1][1], "notes.txt": b"mine"}


@pytest.mark.parametrize("seed, msg", [
    (2**70, f"--seed: must be <= 4294967295 (the 32 bits of a JAX key; one range for every "
            f"command's --seed), got {2**70}"),
    (-1, "--seed: must be >= 0, got -1"),
])
def test_a_seed_out_of_range_is_named(source, old, capsys, seed, msg):
    assert _split(source[0], old, seed=seed) == 2
    assert _err(capsys) == f"puts-jax: error: {msg}"
    assert snapshot(old) == {**source[1][1], "notes.txt": b"mine"}
    with pytest.raises(logs.InputError, match=r"^seed: must be an integer in \[0, 2\*\*64 - 1\]"):
        logs.split_share([1, 2], 0.5, 2**64)


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(28, "No space left on device")])
@pytest.mark.parametrize("nth", [1, 2])
def test_an_error_or_ctrl_c_while_writing_keeps_the_old_pair(source, old, monkeypatch, exc, nth):
    real, calls = pq.write_table, []

    def write_table(*a, **kw):
        calls.append(1)
        if len(calls) == nth:
            raise exc
        return real(*a, **kw)
    monkeypatch.setattr(pq, "write_table", write_table)
    with pytest.raises(type(exc)):
        logs.split_log(source[0], str(old / "a.parquet"), str(old / "b.parquet"), 0.5, 2)
    assert snapshot(old) == {**source[1][1], "notes.txt": b"mine"}  # no staging, no .tmp-*


DRIVER = r"""
import os, signal, sys
from puts_jax.data import logs
src, out, kind, arg = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
stage, real_replace, seen = os.path.join(out, logs.SPLIT_STAGING), os.replace, []

def replace(s, d):
    folder = os.path.dirname(os.fspath(d))
    if kind == "staged" and folder == stage and os.path.basename(d) != "COMPLETE":
        seen.append(d)
        if len(seen) == arg:  # before the arg-th file lands in the staging folder
            os.kill(os.getpid(), signal.SIGKILL)
    if kind == "moved" and folder == out:
        seen.append(d)
        if len(seen) == arg + 1:  # after arg renames into out
            os.kill(os.getpid(), signal.SIGKILL)
    real_replace(s, d)

os.replace = replace
logs.split_log(src, os.path.join(out, "a.parquet"), os.path.join(out, "b.parquet"), 0.5, 2)
sys.exit(7)  # not killed: the kill point was never reached
"""

# (kill point, what the folder holds right after the kill, recovery's answer, the final pair)
POINTS = [(("staged", 1), "old", "removed", 1),  # the first file half written into staging
          (("staged", 2), "old", "removed", 1),  # a written, b not yet
          (("moved", 0), "old", "completed", 2),  # committed, nothing moved
          (("moved", 1), "mixed", "completed", 2)]  # the new a beside the old b


@pytest.mark.parametrize("point, after_kill, answer, final", POINTS,
                         ids=[f"{k}{a}" for (k, a), *_ in POINTS])
def test_sigkill_at_any_point_recovers_to_one_whole_pair(source, old, tmp_path, point,
                                                          after_kill, answer, final):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, str(driver), source[0], str(old), *map(str, point)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    left = {k: v for k, v in snapshot(old).items() if not k.startswith(".")}
    pairs = source[1]
    if after_kill == "mixed":
        assert left == {"a.parquet": pairs[2]["a.parquet"], "b.parquet": pairs[1]["b.parquet"],
                        "notes.txt": b"mine"}
    else:
        assert left == {**pairs[1], "notes.txt": b"mine"}
    assert sorted(os.listdir(old)) == [logs.SPLIT_STAGING, "a.parquet", "b.parquet", "notes.txt"]
    if answer == "completed":  # a puts-jax command reading --logs there settles the pair first
        cli_checks.settle_split(str(old / "b.parquet"))
    else:
        assert logs.recover_split(str(old)) == answer
    assert snapshot(old) == {**pairs[final], "notes.txt": b"mine"}  # no staging, no temps
    assert logs.recover_split(str(old)) is None


@pytest.mark.parametrize("bad", ["empty", "nan_reward"])
def test_a_log_the_reader_refuses_is_named_before_anything_is_split(source, old, tmp_path,
                                                                    capsys, bad):
    """data split reads --logs through the log reader first: an empty log, or a NaN reward,
    was split with exit 0 and only refused later, by a row number of a split file."""
    import numpy as np
    import pyarrow as pa

    t = pq.read_table(source[0])
    if bad == "empty":
        t = t.slice(0, 0)
    else:
        col = t.column("rewards").combine_chunks()
        r = np.asarray(col.flatten(), np.float32).reshape(len(col), -1).copy()
        r[5, 0] = np.nan
        field = t.schema.field("rewards")
        t = t.set_column(t.schema.get_field_index("rewards"), field,
                         pa.array(r.tolist(), type=field.type))
    path = str(tmp_path / f"{bad}.parquet")
    pq.write_table(t.replace_schema_metadata(t.schema.metadata), path)
    assert _split(path, old) == 2
    want = {"empty": f"puts-jax: error: --logs: {path} has no rows: nothing to split (nothing "
                     "written)",
            "nan_reward": f"puts-jax: error: {path}: rewards: non-finite value at rows [5]"}
    assert _err(capsys) == want[bad]
    assert snapshot(old) == {**source[1][1], "notes.txt": b"mine"}
