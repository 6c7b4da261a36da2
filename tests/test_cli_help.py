"""``--help`` of every ``puts-jax`` subcommand and of ``python -m train``: each option has a help
line, and that line shows the option's default (``cli_checks.HelpFormatter``), never
"(default: None)" for an option without one."""

import argparse

import pytest

from puts_jax import cli
from train import main as train_main


def _help(capsys, run, argv) -> str:
    """The help text ``run(argv + ['--help'])`` prints (exit 0), whitespace made single spaces
    (argparse wraps at the terminal's width)."""
    with pytest.raises(SystemExit) as e:
        run([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def _parsers(parser: argparse.ArgumentParser, path=()):
    """(command path, parser) of ``parser`` and of every subcommand under it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


@pytest.fixture(autouse=True)
def _wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option: help read as written


@pytest.mark.parametrize("argv, shown", [
    (["score"], ["--top-k TOP_K candidates kept per request (all of them when a request has "
                 "fewer) (default: 10)", "--chunk-rows CHUNK_ROWS requests scored a chunk "
                 "(default: 8192)"]),
    (["sweep"], ["lambda points on the objectives' simplex (at most 1,001) (default: 21)",
                 "(default: 200)", "bootstrap seed (same seed, same draws) (default: 0)"]),
    (["simulate"], ["or default (default: default)", "training exploration log rows (default: "
                    "300000)"]),
    (["data", "split"], ["go to --out-b (default: 0.5)"]),
    (["policy", "select"], ["the policy guardrails compare against (default: production)"]),
    (["plan"], ["power of the detectable lifts (default: 0.8)"]),
])
def test_subcommand_help_shows_the_defaults(capsys, argv, shown):
    text = _help(capsys, cli.main, argv)
    for words in shown:
        assert words in text, (argv, words)


def test_train_help_shows_the_defaults_and_the_presets_values(capsys):
    text = _help(capsys, train_main.parse_args, [])
    assert "TrainConfig preset (train/config.py) (default: default)" in text
    assert "override TrainConfig.epochs (default: the preset's: tiny 2, default 8, obd 30)" in text
    assert "(default: None)" not in text


def test_every_option_has_help_and_none_says_default_none():
    parsers = [(("puts-jax",) + p, x) for p, x in _parsers(cli.build_parser())]
    parsers.append((("python -m train",), train_main.build_parser()))
    assert len(parsers) > 15  # every subcommand and policy / data action was found
    for path, parser in parsers:
        for action in parser._actions:
            if action.option_strings and action.help is not argparse.SUPPRESS:
                assert action.help and action.help.strip(), (path, action.option_strings)
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: [])" not in text, path
        assert "(default: False)" not in text, path  # on/off flags: off unless given


def test_flags_without_a_value_or_with_a_stated_default_print_none_of_ours(capsys):
    text = _help(capsys, cli.main, ["sweep"])
    assert "(default on; about 2x the time)" in text and "(default: True)" not in text
    text = _help(capsys, cli.main, ["score"])
    assert "(default: CURRENT)" in text  # --version's default, written in its help

