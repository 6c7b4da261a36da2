"""Fresh-user review, fourth pass: each finding as a value test (exit status, the exact line,
nothing written). A value that starts like a negative number (``--lam -0.5,1.5``) reaches the
command's own check instead of argparse's "expected one argument"."""

import os

import pytest

from puts_jax import cli
from puts_jax.cli_checks import ArgumentParser
from conftest import cli_error, tiny_cli_world


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
