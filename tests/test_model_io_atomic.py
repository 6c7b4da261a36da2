"""save_model survives a kill at any point: load_model finds the previous or the new complete
model (compared by params hash), and the next save_model succeeds and cleans up."""

import os
import shutil

import pytest
from flax import nnx

from puts_jax import model_io
from puts_jax.config import QNetConfig
from puts_jax.qnet import QNetwork


class _Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no ``except Exception`` in the code under test
    can swallow it."""


def _net(seed: int) -> QNetwork:
    return QNetwork(QNetConfig.tiny(), 8, 5, ("binary", "real"), rngs=nnx.Rngs(seed))


def _loaded_hash(directory: str) -> str:
    return model_io.params_hash(model_io.load_model(directory)[0])


def _kill_at(mp, directory: str, kill_at: int | None) -> list:
    """Patch os.replace and shutil.rmtree to record save_model's own steps (those on
    ``directory``, ``.tmp-save`` or ``.tmp-old`` themselves, not on files inside them) and raise
    _Killed instead of running step number ``kill_at``; returns the list of recorded steps."""
    top = {os.path.abspath(directory) + s for s in ("", model_io.NEW_SUFFIX, model_io.OLD_SUFFIX)}
    steps = []

    def wrap(name, real):
        def step(path, *args, **kwargs):
            if os.path.abspath(path) in top:
                steps.append((name, os.path.basename(path), *map(os.path.basename, args[:1])))
                if len(steps) - 1 == kill_at:
                    raise _Killed(steps[-1])
            return real(path, *args, **kwargs)
        return step

    mp.setattr(os, "replace", wrap("replace", os.replace))
    mp.setattr(shutil, "rmtree", wrap("rmtree", shutil.rmtree))
    return steps


def test_kill_between_the_two_renames_keeps_the_old_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = os.path.join("runs", "demo", "train", "selected_model")  # relative, as users pass it
    old_hash = model_io.save_model(d, _net(1), extra={"step": 4})
    new = _net(2)
    assert model_io.params_hash(new) != old_hash
    with monkeypatch.context() as mp, pytest.raises(_Killed):
        steps = _kill_at(mp, d, kill_at=3)
        model_io.save_model(d, new)
    assert steps == [("rmtree", "selected_model.tmp-save"), ("rmtree", "selected_model.tmp-old"),
                     ("replace", "selected_model", "selected_model.tmp-old"),
                     ("replace", "selected_model.tmp-save", "selected_model")]
    parent = os.path.dirname(d)
    assert sorted(os.listdir(parent)) == ["selected_model.tmp-old", "selected_model.tmp-save"]

    model, info = model_io.load_model(d)
    assert model_io.params_hash(model) == old_hash == info["params_hash"]
    assert info["extra"] == {"step": 4}
    assert sorted(os.listdir(parent)) == ["selected_model.tmp-old", "selected_model.tmp-save"]

    newer = _net(3)
    assert model_io.save_model(d, newer) == model_io.params_hash(newer)
    assert _loaded_hash(d) == model_io.params_hash(newer)
    assert os.listdir(parent) == ["selected_model"]


def test_a_kill_at_every_step_leaves_the_old_or_the_new_model(tmp_path, monkeypatch):
    old, new, newer = _net(1), _net(2), _net(3)
    hashes = [model_io.params_hash(m) for m in (old, new, newer)]
    assert len(set(hashes)) == 3
    probe = str(tmp_path / "probe")
    model_io.save_model(probe, old)
    with monkeypatch.context() as mp:
        steps = _kill_at(mp, probe, kill_at=None)
        model_io.save_model(probe, new)
    swap = steps.index(("replace", "probe.tmp-save", "probe"))  # the new model becomes visible
    assert len(steps) == 5 and swap == 3
    for k in range(len(steps)):
        d = str(tmp_path / f"kill{k}")
        model_io.save_model(d, old)
        with monkeypatch.context() as mp, pytest.raises(_Killed):
            _kill_at(mp, d, kill_at=k)
            model_io.save_model(d, new)
        assert _loaded_hash(d) == hashes[1 if k > swap else 0], f"killed before step {k}"
        assert model_io.save_model(d, newer) == hashes[2]
        assert _loaded_hash(d) == hashes[2]
        assert [n for n in os.listdir(tmp_path) if n.startswith(f"kill{k}")] == [f"kill{k}"]


def test_a_save_killed_while_undoing_an_earlier_kill_still_keeps_the_old_model(tmp_path,
                                                                             monkeypatch):
    d = str(tmp_path / "model")
    old_hash = model_io.save_model(d, _net(1))
    with monkeypatch.context() as mp, pytest.raises(_Killed):
        _kill_at(mp, d, kill_at=3)  # between the renames
        model_io.save_model(d, _net(2))
    with monkeypatch.context() as mp, pytest.raises(_Killed):
        steps = _kill_at(mp, d, kill_at=0)  # the next save, at its first step: the undo
        model_io.save_model(d, _net(3))
    assert steps == [("replace", "model.tmp-old", "model")]
    assert _loaded_hash(d) == old_hash
    assert model_io.save_model(d, _net(4)) == _loaded_hash(d) == model_io.params_hash(_net(4))


@pytest.mark.parametrize("existing", [False, True])
def test_the_new_model_is_fsynced_before_its_rename_and_the_folder_after(tmp_path, monkeypatch,
                                                                        existing):
    """Durable across a power loss: every file and folder of the new model is fsynced while it
    is still ``.tmp-save``, and the parent folder after the rename that makes it visible."""
    directory = str(tmp_path / "m")
    if existing:
        model_io.save_model(directory, _net(0))
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst, *a, **k):
        events.append(("replace", os.path.abspath(src), os.path.abspath(dst)))
        real_replace(src, dst, *a, **k)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    model_io.save_model(directory, _net(1))
    monkeypatch.undo()

    tmp = directory + model_io.NEW_SUFFIX
    move_in = events.index(("replace", tmp, directory))
    synced_before = {e[1] for e in events[:move_in] if e[0] == "fsync"}
    for root, dirs, files in os.walk(directory):
        for rel in [os.path.relpath(os.path.join(root, n), directory) for n in files] + \
                [os.path.relpath(root, directory)]:
            assert os.path.normpath(os.path.join(tmp, rel)) in synced_before, rel
    assert ("fsync", str(tmp_path)) in events[move_in + 1:]
    assert _loaded_hash(directory) == model_io.params_hash(_net(1))
