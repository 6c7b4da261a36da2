"""Fresh-user review, fourth pass: each finding as a value test (exit status, the exact line,
nothing written). A full disk (or a read-only file system, no permission) while a command
writes its output is one line naming the output's flag and path, with nothing of the output left
behind; a value that starts like a negative number (``--lam -0.5,1.5``) reaches the command's
own check instead of argparse's "expected one argument"."""

import errno
import os
import shutil

import pyarrow.parquet as pq
import pytest

from puts_jax import cli, cli_checks, report
from puts_jax.cli_checks import ArgumentParser
from puts_jax.data import obd
from puts_jax.data import simulator as sim
from conftest import cli_error, snapshot, tiny_cli_world


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny world (data, an untrained model, a 3-point frontier) and a registry with v0001."""
    d = tmp_path_factory.mktemp("review4")
    tiny_cli_world(d, halves=False)
    assert cli.main(["policy", "publish", "--registry", str(d / "reg"), "--model",
                     str(d / "model"), "--frontier", str(d / "frontier" / "frontier.json"),
                     "--logs", str(d / "data" / "logs.parquet"), "--point", "0",
                     "--reason", "test"]) == 0
    return d


# ----------------------------------------------------------------------------- 5. negative values

@pytest.mark.parametrize("argv, msg", [
    (["policy", "set-lambda", "--registry", "{reg}", "--lam", "-0.5,1.5", "--reason", "x"],
     "--lam: coefficients must be non-negative; index 0 (-0.5)"),
    (["plan", "--actions", "4", "--share", "0.1", "--requests-per-day", "1000", "--base-rate",
      "0.1", "--days", "-1,7"],
     "--days: every day count must be > 0 and at most 36,500 (100 years), got [-1.0]"),
    (["plan", "--actions", "4", "--share", "-1e-3", "--requests-per-day", "1000", "--base-rate",
      "0.1"], "--share: exploration share must be in (0, 1], got -0.001"),
    (["simulate", "--out", "{tmp}/sim", "--miscalibration", "-inf"],
     "--miscalibration: must be finite and >= 0, got -inf"),
    (["simulate", "--out", "{tmp}/sim", "--miscalibration", "-.5"],
     "--miscalibration: must be finite and >= 0, got -0.5"),
])
def test_a_value_starting_with_minus_reaches_the_flags_own_check(run, tmp_path, capsys, argv,
                                                                  msg):
    before = sorted(os.listdir(run / "reg"))
    capsys.readouterr()
    assert cli.main([a.format(reg=run / "reg", tmp=tmp_path) for a in argv]) == 2
    assert cli_error(capsys) == msg
    assert not (tmp_path / "sim").exists() and sorted(os.listdir(run / "reg")) == before


def test_an_option_after_an_option_is_still_a_missing_value(capsys):
    p = ArgumentParser(prog="p")
    p.add_argument("--lam")
    p.add_argument("--x", action="store_true")
    assert p.parse_args(["--lam", "-0.5,1.5"]).lam == "-0.5,1.5"
    assert p.parse_args(["--lam", "-inf"]).lam == "-inf"
    with pytest.raises(SystemExit):
        p.parse_args(["--lam", "--x"])
    assert "argument --lam: expected one argument" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 1. a full disk

def _full_disk(monkeypatch, target, name, code=errno.ENOSPC, filename=None):
    """``target.name`` raises OSError(code) as a full disk (read-only file system, ...) does."""
    def fail(*a, **k):
        raise OSError(code, os.strerror(code), *([filename] if filename else []))
    monkeypatch.setattr(target, name, fail)


def _score(run, out):
    return cli.main(["score", "--policy", str(run / "reg"), "--requests",
                     str(run / "data" / "requests.parquet"), "--out", str(out)])


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_score_on_a_full_disk_names_out_and_keeps_the_old_file(run, tmp_path, capsys,
                                                               monkeypatch, code):
    out = tmp_path / "scored.parquet"
    out.write_bytes(b"old scores")
    _full_disk(monkeypatch, pq.ParquetWriter, "write_table", code)  # Arrow: no file named
    capsys.readouterr()
    assert _score(run, out) == 2
    assert cli_error(capsys) == f"--out: cannot write {out} ({os.strerror(code)}); nothing written"
    assert snapshot(tmp_path) == {"scored.parquet": b"old scores"}  # no temp file left


def test_sweep_on_a_full_disk_names_out_and_keeps_the_old_frontier(run, tmp_path, capsys,
                                                                   monkeypatch):
    out = tmp_path / "frontier"
    shutil.copytree(run / "frontier", out)
    before = snapshot(out)
    stage = os.path.join(str(out), ".frontier-staging", "frontier.json")
    _full_disk(monkeypatch, report, "atomic_write_bytes", filename=stage)
    capsys.readouterr()
    assert cli.main(["sweep", "--model", str(run / "model"), "--logs",
                     str(run / "data" / "evaluation.parquet"), "--out", str(out),
                     "--n-lambdas", "3", "--bootstrap", "0", "--no-halves"]) == 2
    assert cli_error(capsys) == (f"--out: cannot write {out} (No space left on device); "
                                 "nothing written")
    assert snapshot(out) == before


SIM = ["--preset", "tiny", "--n-logs", "300", "--n-heldout", "100", "--n-evaluation", "200",
       "--n-eval", "50", "--n-requests", "20"]


def test_simulate_on_a_full_disk_names_out_and_leaves_no_folder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "new" / "sim"
    _full_disk(monkeypatch, sim.logs, "write_requests")  # after two logs were written
    assert cli.main(["simulate", "--out", str(out), *SIM]) == 2
    assert cli_error(capsys) == (f"--out: cannot write {out} (No space left on device); "
                                 "nothing written")
    assert os.listdir(tmp_path) == []  # the staging folder and the folders made are gone


def test_data_obd_writes_its_three_files_as_one_set(tmp_path, capsys, monkeypatch):
    pytest.importorskip("obp")
    out = tmp_path / "obd"
    out.mkdir()
    (out / "logs.parquet").write_bytes(b"old log")
    _full_disk(monkeypatch, obd.logs, "write_requests")  # after the new log was written
    assert cli.main(["data", "obd", "--out", str(out)]) == 2
    assert cli_error(capsys) == (f"--out: cannot write {out} (No space left on device); "
                                 "nothing written")
    assert snapshot(out) == {"logs.parquet": b"old log"}  # not the new log beside no requests


def test_data_split_on_a_full_disk_names_both_outputs(run, tmp_path, capsys, monkeypatch):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    _full_disk(monkeypatch, pq, "write_table")
    assert cli.main(["data", "split", "--logs", str(run / "data" / "logs.parquet"),
                     "--out-a", str(a), "--out-b", str(b)]) == 2
    assert cli_error(capsys) == (f"--out-a / --out-b: cannot write {a} / {b} (No space left on "
                                 "device); nothing written")
    assert os.listdir(tmp_path) == []


def test_an_error_on_a_file_that_is_no_output_is_not_blamed_on_out(run, tmp_path, capsys,
                                                                   monkeypatch):
    elsewhere = str(tmp_path / "cache" / "x")
    _full_disk(monkeypatch, pq.ParquetWriter, "write_table", filename=elsewhere)
    assert _score(run, tmp_path / "out" / "scored.parquet") == 2
    assert cli_error(capsys) == f"OSError: [Errno 28] No space left on device: '{elsewhere}'"
    assert os.listdir(tmp_path) == []


def test_write_error_names_the_registry_and_not_an_input():
    args = cli.build_parser().parse_args(["policy", "set-lambda", "--registry", "/r", "--lam",
                                          "1,0", "--reason", "x"])
    assert cli_checks.write_error(OSError(errno.ENOSPC, "x"), args) == (
        "--registry: cannot write /r (No space left on device); no new version (CURRENT "
        "unchanged)")
    assert cli_checks.write_error(OSError(errno.EIO, "x"), args) is None
    args = cli.build_parser().parse_args(["score", "--policy", "/r", "--requests", "/d/req",
                                          "--out", "/d/out"])
    assert cli_checks.write_error(OSError(errno.EACCES, "x", "/d/req"), args) is None
    assert cli_checks.write_error(OSError(errno.EACCES, "x", "/d/.tmp-out-1"), args) == (
        "--out: cannot write /d/out (Permission denied); nothing written")
    args = cli.build_parser().parse_args(["report", "--frontier", "/f/frontier.json"])
    assert cli_checks.write_error(OSError(errno.EROFS, "x"), args) == (
        "--frontier: cannot write /f/frontier.json (Read-only file system); nothing written")
