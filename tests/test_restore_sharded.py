"""PITFALLS P6 for ``puts_jax.model_io`` (the trainer's checkpoints: tests/test_train.py).

(b) Params sharded over 8 fake CPU devices, saved with ``save_model`` / ``save_params``, restore
    in a process with 1 device and in one with 2, equal bit for bit. The device count is fixed
    when JAX starts, so each side runs in its own subprocess (``XLA_FLAGS`` set per process).
(a) Restoring into a network with A = 7 instead of 5, or with one more hidden layer, names each
    mismatched path with its saved and expected shapes, reads no array and leaves the model as it
    was.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from puts_jax import model_io
from puts_jax.config import QNetConfig
from puts_jax.qnet import QNetwork

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run as ``python child.py save|restore WORKDIR N_DEVICES`` with N_DEVICES fake CPU devices.
CHILD = textwrap.dedent('''
    import json, os, sys
    import jax
    import numpy as np
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from puts_jax import model_io
    from puts_jax.config import QNetConfig
    from puts_jax.qnet import QNetwork

    mode, work, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    assert jax.device_count() == n, (jax.device_count(), n)

    def leaves(model):
        flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        return {jax.tree_util.keystr(p): x for p, x in flat[0]}

    def dump(model, name):
        arrays = {k: np.asarray(x) for k, x in leaves(model).items()}
        np.savez(os.path.join(work, name + ".npz"), **arrays)

    def shard(model, mesh, spec_of):
        state = nnx.state(model, nnx.Param)
        nnx.update(model, jax.tree.map(
            lambda x: jax.device_put(x, NamedSharding(mesh, spec_of(x))), state))

    if mode == "save":
        # Mesh data x model = 2 x 4: 2-D kernels split over all 8 devices, biases over "model"
        # and replicated over "data", the rest replicated.
        mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
        def spec_of(x):
            if x.ndim == 2 and x.shape[0] % 2 == 0 and x.shape[1] % 4 == 0:
                return P("data", "model")
            return P("model") if x.ndim == 1 and x.shape[0] % 4 == 0 else P()
        model = QNetwork(QNetConfig(hidden=(16,), n_components=8), 8, 5, ("binary", "real"),
                         rngs=nnx.Rngs(3))
        shard(model, mesh, spec_of)
        shards = {k: len({str(s.index) for s in x.addressable_shards})
                  for k, x in leaves(model).items()}
        devices = {k: len(x.sharding.device_set) for k, x in leaves(model).items()}
        model_io.save_model(os.path.join(work, "model"), model)
        model_io.save_params(os.path.join(work, "params"), model)
        dump(model, "original")
        report = {"shards": shards, "devices": devices}
    else:
        # load_model: rebuilt from spec.json on this process's default device.
        model, info = model_io.load_model(os.path.join(work, "model"))
        dump(model, f"load_{n}")
        # restore_params into a target sharded over this process's n devices.
        mesh = Mesh(np.array(jax.devices()), ("model",))
        target = QNetwork.from_spec(info["spec"], seed=99)
        shard(target, mesh, lambda x: P(*[None] * (x.ndim - 1), "model")
              if x.ndim and x.shape[-1] % n == 0 else P())
        wanted = {k: x.sharding for k, x in leaves(target).items()}
        model_io.restore_params(os.path.join(work, "params"), target)
        got = leaves(target)
        dump(target, f"sharded_{n}")
        report = {"kept_sharding": all(got[k].sharding.is_equivalent_to(s, got[k].ndim)
                                       for k, s in wanted.items()),
                  "devices": sorted({d.id for x in got.values() for d in x.sharding.device_set})}
    with open(os.path.join(work, f"{mode}_{n}.json"), "w") as f:
        json.dump(report, f)
''')


def _start(script: str, mode: str, work: str, n: int) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
               JAX_PLATFORMS="cpu", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, script, mode, work, str(n)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, what: str) -> None:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"{what} failed (exit {proc.returncode}):\n{out[-4000:]}"


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    """Save in an 8-device process, then restore in a 1- and a 2-device process (concurrently)."""
    work = str(tmp_path_factory.mktemp("p6b"))
    script = os.path.join(work, "child.py")
    with open(script, "w") as f:
        f.write(CHILD)
    _finish(_start(script, "save", work, 8), "save with 8 devices")
    procs = {n: _start(script, "restore", work, n) for n in (1, 2)}
    for n, proc in procs.items():
        _finish(proc, f"restore with {n} device(s)")
    return work


def _arrays(work: str, name: str) -> dict:
    with np.load(os.path.join(work, name + ".npz")) as z:
        return {k: z[k] for k in z.files}


def _report(work: str, name: str) -> dict:
    with open(os.path.join(work, name + ".json")) as f:
        return json.load(f)


def test_p6b_saved_params_really_were_sharded_over_8_devices(sharded_run):
    rep = _report(sharded_run, "save_8")
    # Distinct pieces per array: 8 (split over data x model), 4 (split over model, replicated
    # over data), 1 (replicated); every array lives on the whole 8-device mesh.
    assert set(rep["shards"].values()) == {1, 4, 8}
    assert set(rep["devices"].values()) == {8}


@pytest.mark.parametrize("kind", ["load", "sharded"])
@pytest.mark.parametrize("n", [1, 2])
def test_p6b_sharded_params_restore_bit_for_bit_on_fewer_devices(sharded_run, n, kind):
    original = _arrays(sharded_run, "original")
    restored = _arrays(sharded_run, f"{kind}_{n}")
    assert sorted(restored) == sorted(original) and len(original) == 5
    for k, x in original.items():
        y = restored[k]
        assert (y.dtype, y.shape) == (x.dtype, x.shape), k
        assert y.tobytes() == x.tobytes(), f"{k} differs after restoring on {n} device(s)"
    if kind == "sharded":
        rep = _report(sharded_run, f"restore_{n}")
        assert rep["kept_sharding"] and rep["devices"] == list(range(n))


# ----------------------------------------------------------------------------- P6a, model_io


def _qnet(n_actions=5, hidden=(64,), seed=0):
    return QNetwork(QNetConfig(hidden=hidden, head="per_action"), 4, n_actions, ("binary",) * 3,
                    rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("other, expected", [
    (dict(n_actions=7), {"['out']['kernel']": ((64, 15), (64, 21)),
                         "['out']['bias']": ((15,), (21,))}),
    (dict(hidden=(64, 64)), {"['tower'][1]['kernel']": (None, (64, 64)),
                             "['tower'][1]['bias']": (None, (64,))}),
])
def test_p6a_restore_params_names_each_mismatched_path(tmp_path, monkeypatch, other, expected):
    saved = _qnet()
    path = str(tmp_path / "params")
    model_io.save_params(path, saved)
    # The checkpoint's own metadata names parameters exactly as param_shapes does.
    assert model_io.saved_param_shapes(path) == model_io.param_shapes(saved)
    target = _qnet(**other, seed=1)
    before = model_io.params_hash(target)
    read = []
    monkeypatch.setattr(ocp.StandardCheckpointer, "restore", lambda *a, **k: read.append(1))
    for saved_shapes in (None, model_io.param_shapes(saved)):  # metadata, or spec.json's record
        with pytest.raises(ValueError, match=r"do not fit the model \(2 paths") as err:
            model_io.restore_params(path, target, saved_shapes)
        msg = str(err.value)
        assert "nothing restored" in msg
        for p, (was, want) in expected.items():  # 'saved float32[64, 15], expected ...'
            was = "none" if was is None else f"float32{list(was)}"
            assert f"{p}: saved {was}, expected float32{list(want)}" in msg
        assert "['tower'][0]['kernel']" not in msg  # unchanged paths are not reported
    assert not read  # checked before any array is read
    assert model_io.params_hash(target) == before  # nothing zero- or random-filled


def test_p6a_restore_params_into_the_same_network_still_works(tmp_path):
    saved, target = _qnet(), _qnet(seed=1)
    path = str(tmp_path / "params")
    model_io.save_params(path, saved)
    model_io.restore_params(path, target)  # shapes read from the checkpoint's metadata
    assert model_io.params_hash(target) == model_io.params_hash(saved)
