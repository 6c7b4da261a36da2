"""Every public name imports and is documented; the console script and module entry points
resolve."""

import importlib

import puts_jax


def test_every_public_name_imports_and_has_a_docstring():
    assert len(set(puts_jax.__all__)) == len(puts_jax.__all__)
    for name in puts_jax.__all__:
        obj = getattr(puts_jax, name)
        assert obj.__doc__ and obj.__doc__.strip(), f"{name} has no docstring"


def test_entry_points_resolve():
    from puts_jax import cli
    assert callable(cli.main)
    for mod in ("train.main", "bench.__main__", "puts_jax.data.simulator", "puts_jax.data.obd",
                "puts_jax.policy", "puts_jax.report", "puts_jax.sweep_job", "puts_jax.score_job"):
        importlib.import_module(mod)
