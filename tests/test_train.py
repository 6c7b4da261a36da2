"""train/: clipping and skipping (P4), checkpoints (P5, P6a), data order and shards (P7),
resume == uninterrupted, determinism, the CLI, selection and export."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from puts_jax import model_io
from puts_jax.config import QNetConfig
from puts_jax.data import logs, simulator as sim
from puts_jax.qnet import QNetwork
from train import TrainConfig, load_selected, train_and_evaluate
from train import checkpointing, input as input_lib, metrics as metrics_lib, state as state_lib
from train import selection, step as step_lib
from train.main import main as cli_main


# ----------------------------------------------------------------------------- P4 clipping, skips

def _clip(max_norm, g):
    tx = state_lib.clip_by_global_norm(max_norm)
    upd, _ = tx.update(jnp.asarray(g, jnp.float32), tx.init(None))
    return np.asarray(upd)


def test_p4a_zero_gradient_with_zero_max_norm_is_zero_not_nan():
    np.testing.assert_array_equal(_clip(0.0, [0.0, 0.0, 0.0]), [0.0, 0.0, 0.0])


def test_p4c_control_clips_3_4_to_unit_norm():
    np.testing.assert_allclose(_clip(1.0, [3.0, 4.0]), [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(_clip(10.0, [3.0, 4.0]), [3.0, 4.0])


class _Toy(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.array([1.0, 2.0]))


def test_p4b_non_finite_gradient_skips_the_update_and_counts():
    cfg = TrainConfig(learning_rate=0.1, warmup_steps=0)
    defs, state = state_lib.init_state(_Toy(), state_lib.make_optimizer(cfg, 10), seed=0)
    apply = jax.jit(lambda s, g: step_lib.apply_gradients(defs, s, g))
    grads = lambda v: jax.tree.map(lambda _: jnp.asarray(v, jnp.float32), state.params)  # noqa
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    s1, skipped = apply(state, grads([np.inf, 0.0]))
    assert bool(skipped) and int(s1.skips) == 1 and int(s1.total_skips) == 1
    after = jax.tree.map(np.asarray, (s1.params, s1.opt_state))
    jax.tree.map(np.testing.assert_array_equal, after, before)  # params and moments unchanged
    s2, skipped = apply(s1, grads([np.nan, 1.0]))
    assert int(s2.skips) == 2
    s3, skipped = apply(s2, grads([0.5, -0.5]))
    assert not bool(skipped) and int(s3.skips) == 0 and int(s3.total_skips) == 2
    assert not np.array_equal(np.asarray(s3.params["w"][...]), [1.0, 2.0])


# ----------------------------------------------------------------------------- P7 data order

def _records(n=10):
    x = np.arange(n, dtype=np.float32)[:, None]
    return input_lib.LogArrays(x, np.zeros(n, np.int32), np.zeros((n, 1), np.float32))


def _ids(it, k=None):
    """Valid row ids of the next k elements (all remaining when k is None)."""
    out = []
    for el in (it if k is None else (next(it) for _ in range(k))):
        out.extend(int(r) for r in el["row"][el["valid"]])
    return out


def test_p7_restored_iterator_state_gives_the_exact_remainder():
    ds = input_lib.make_dataset(input_lib.BatchSource(_records(), 1, 1, seed=3))
    full = _ids(iter(ds))
    assert sorted(full) == list(range(10)) and full != list(range(10))  # shuffled, complete
    it = iter(ds)
    start = it.get_state()
    head = _ids(it, 3)
    mid = it.get_state()
    for state, expected in ((start, full), (mid, full[3:])):
        fresh = iter(ds)
        fresh.set_state(json.loads(json.dumps(state)))  # survives the JSON checkpoint
        assert _ids(fresh) == expected
    assert head == full[:3]


def test_p7_two_shards_are_disjoint_and_complete():
    got = [_ids(iter(input_lib.make_dataset(input_lib.BatchSource(_records(), 2, 1, 7, k, 2))))
           for k in (0, 1)]
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == list(range(10))


def test_batches_pad_the_epoch_tail_and_reshuffle_per_epoch():
    src = input_lib.BatchSource(_records(10), 4, 2, seed=0)
    assert len(src) == 6  # 3 batches per epoch
    tail = src[2]
    assert tail["valid"].tolist() == [True, True, False, False]
    assert (tail["context"][~tail["valid"]] == 0).all()
    e0 = np.concatenate([src[i]["row"] for i in range(3)])
    e1 = np.concatenate([src[i]["row"] for i in range(3, 6)])
    assert sorted(e0[e0 >= 0]) == sorted(e1[e1 >= 0]) == list(range(10))
    assert not np.array_equal(e0, e1)


# ----------------------------------------------------------------------------- P5, P6a checkpoints

def _qnet_state(n_actions=5, J=3, hidden=(64,), seed=0):
    cfg = TrainConfig(qnet=QNetConfig(hidden=hidden, head="per_action"), seed=seed)
    model = QNetwork(cfg.qnet, 4, n_actions, ("binary",) * J, rngs=nnx.Rngs(seed))
    return state_lib.init_state(model, state_lib.make_optimizer(cfg, 10), seed)[1]


def _fail_async_saves(monkeypatch):
    async def broken(self, *args, **kwargs):
        raise OSError("simulated failure before commit")

    monkeypatch.setattr(ocp.handlers.StandardCheckpointHandler, "async_save", broken)


def test_p5_failed_async_save_surfaces_and_resume_uses_the_last_commit(tmp_path, monkeypatch):
    d = str(tmp_path / "ckpt")
    states = {s: _qnet_state(seed=s) for s in (100, 200, 300)}
    ck = checkpointing.Checkpointer(d, keep=2)
    for s in (100, 200):
        ck.save(s, state_lib.flatten(states[s]), {"next_index": s}, {"evals": []})
    ck.wait()
    with monkeypatch.context() as m:
        _fail_async_saves(m)
        with pytest.raises(OSError, match="simulated failure"):
            ck.save(300, state_lib.flatten(states[300]), {"next_index": 300}, {})
            ck.wait()  # surfaces here at the latest
    assert ck.all_steps() == [100, 200]  # 100 kept: 300 never committed
    # A fresh process resumes from 200 with the step-200 state.
    fresh = checkpointing.Checkpointer(d, keep=2)
    assert fresh.latest_step() == 200
    flat, data, _ = fresh.restore(200, state_lib.flatten(states[100]))
    jax.tree.map(np.testing.assert_array_equal, flat, state_lib.flatten(states[200]))
    assert data == {"next_index": 200}
    # A later good save of 300 replaces the partial directory; then 100 goes (keep 2).
    fresh.save(300, state_lib.flatten(states[300]), {"next_index": 300}, {})
    fresh.close()
    assert sorted(os.listdir(d)) == ["200", "300"]


def test_p5_a_killed_save_leaves_a_partial_directory_that_is_ignored(tmp_path):
    d = tmp_path / "ckpt"
    st = _qnet_state()
    ck = checkpointing.Checkpointer(str(d), keep=2)
    ck.save(200, state_lib.flatten(st), {"next_index": 2}, {})
    ck.close()
    partial = d / "300.orbax-checkpoint-tmp"
    partial.mkdir()
    (partial / "garbage").write_text("half written")
    fresh = checkpointing.Checkpointer(str(d), keep=2)
    assert fresh.latest_step() == 200
    fresh.save(300, state_lib.flatten(st), {"next_index": 3}, {})
    fresh.close()
    assert sorted(os.listdir(d)) == ["200", "300"]


@pytest.mark.parametrize("other, expected", [
    (dict(n_actions=7), ["params/out/kernel: saved (64, 15), expected (64, 21)",
                         "params/out/bias: saved (15,), expected (21,)",
                         "opt_state/opt_state/1/0/mu/out/kernel: saved (64, 15), expected (64, 21)"]),
    (dict(hidden=(64, 64)), ["params/tower/1/kernel: not in the checkpoint, expected (64, 64)",
                             "opt_state/opt_state/1/0/nu/tower/1/bias: not in the checkpoint, "
                             "expected (64,)"]),
])
def test_p6a_restore_into_a_different_network_names_each_path(tmp_path, other, expected,
                                                              monkeypatch):
    d = str(tmp_path / "ckpt")
    ck = checkpointing.Checkpointer(d, keep=1)
    ck.save(1, state_lib.flatten(_qnet_state()), {}, {})
    ck.wait()
    read = []
    monkeypatch.setattr(ck.manager, "restore", lambda *a, **k: read.append(1))
    with pytest.raises(checkpointing.CheckpointMismatchError) as err:
        ck.restore(1, state_lib.flatten(_qnet_state(**other)))
    msg = str(err.value)
    assert "nothing restored" in msg and len(err.value.mismatches) == 6
    for line in expected:
        assert line in msg
    assert "params/tower/0/kernel" not in msg  # unchanged paths are not reported
    assert not read  # the check runs before any array is read
    ck.close()


# ----------------------------------------------------------------------------- end to end

def _tiny(**kw):
    base = dict(batch_size=64, epochs=2, eval_every=5, checkpoint_every=3, keep=2)
    base.update(kw)
    return TrainConfig(**{**TrainConfig.tiny().__dict__, **base})


def _final_state(workdir):
    ck = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), keep=2)
    step = ck.latest_step()
    saved = ck.manager.item_metadata(step)["state"]
    target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in saved.items()}
    flat = ck.restore(step, target)[0]
    ck.close()
    return step, jax.tree.map(np.asarray, flat)


@pytest.fixture(scope="module")
def runs(sim_logs, tmp_path_factory):
    """Uninterrupted seed 0; seed 0 killed after step 7 then resumed; seed 1."""
    out = {}
    for name, seed, interrupt in (("a", 0, None), ("b", 0, 7), ("c", 1, None)):
        wd = str(tmp_path_factory.mktemp(f"run_{name}"))
        cfg = _tiny(seed=seed)
        if interrupt is not None:
            first = train_and_evaluate(cfg, wd, sim_logs["train"], sim_logs["heldout"],
                                       interrupt_after=interrupt)
            assert first["final_step"] == interrupt
        out[name] = (wd, train_and_evaluate(cfg, wd, sim_logs["train"], sim_logs["heldout"]))
    return out


def test_resumed_run_equals_uninterrupted_bit_for_bit(runs):
    (wa, ra), (wb, rb) = runs["a"], runs["b"]
    step_a, fa = _final_state(wa)
    step_b, fb = _final_state(wb)
    assert step_a == step_b == ra["total_steps"] == 20  # 600 rows / 64 -> 10 a epoch, 2 epochs
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    assert ra["history"] == rb["history"] and ra["step"] == rb["step"]
    read = lambda wd: open(os.path.join(wd, "metrics.jsonl")).read()  # noqa: E731
    assert read(wa) == read(wb)  # records past the restored step were truncated and redone


def test_same_seed_same_params_other_seed_different(runs):
    fa, fc = _final_state(runs["a"][0])[1], _final_state(runs["c"][0])[1]
    assert any(not np.array_equal(fa[k], fc[k]) for k in fa if k.startswith("params/"))
    ma, ia = load_selected(runs["a"][0])
    mb, ib = load_selected(runs["b"][0])
    assert ia["params_hash"] == ib["params_hash"] == model_io.params_hash(ma)


def test_metrics_selection_and_export(runs, sim_logs):
    wd, res = runs["a"]
    recs = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    train_recs = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train_recs] == list(range(1, 21))
    assert {"loss/session_success", "loss/clicks", "grad_norm"} <= set(train_recs[0])
    evals = [r for r in recs if "heldout" in r]
    assert [r["step"] for r in evals] == [5, 10, 15, 20]
    model, info = load_selected(wd)
    assert info["step"] in (5, 10, 15, 20)
    values = [h["value"] for h in info["history"]]
    assert info["value"] == max(values)  # selected by held-out SNIPS
    assert info["selection_metric"] == "heldout SNIPS of session_success"
    assert len(info["lambdas"]) == TrainConfig.tiny().report_lambdas
    assert {"snips", "snips_lo", "snips_hi", "matched", "ess"} <= set(
        info["selection"]["session_success"])
    assert info["global_heldout"]["session_success"]["n"] == 400
    choice = info["global_choice"]  # the best global action: chosen on the training log
    assert choice["action"] == info["global_action"]
    assert (choice["objective"], choice["chosen_on"], choice["estimator"]) == (
        "session_success", "training log", "snips")
    assert choice["lo"] <= choice["value"] <= choice["hi"]
    assert choice["runner_up"]["value"] <= choice["value"]
    meta = logs.read_meta(sim_logs["train"])
    q = model(jnp.zeros((3, 4)))
    assert q.shape == (3, meta.action_set.n_actions, 2)
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["18", "20"]


def test_cli_runs_the_tiny_preset(sim_logs, tmp_path, capsys):
    assert cli_main(["--config", "tiny", "--logs", sim_logs["train"], "--heldout",
                     sim_logs["heldout"], "--workdir", str(tmp_path / "wd"), "--epochs", "1"]) == 0
    cap = capsys.readouterr()
    printed = json.loads(cap.out)  # stdout is the JSON line alone: scripts parse it
    selected = json.loads((tmp_path / "wd" / "selected.json").read_text())
    assert printed["final_step"] == selected["total_steps"] == 10  # 600 rows / 64, one epoch
    sentence = cap.err.strip().splitlines()[-1]  # after it on stderr, for people
    assert sentence == selection.describe(selected)
    assert sentence.startswith(f"selected step {selected['step']}: held-out SNIPS of "
                               "session_success ")
    assert f"the best global action, action {selected['global_action']} (the highest " \
        "training-log SNIPS of session_success" in sentence
    assert sentence.endswith("shown: yes (the step's 95% interval lies entirely above the "
                             "action's)" if selected["gain_shown"] else "shown: no (the 95% "
                             "intervals overlap; shown needs the step's interval entirely above "
                             "the action's)")


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    world = sim.make_world(sim.SimConfig.tiny())
    log = sim.simulate_log(world, 256, 1)
    log["context"][200] = 3e38  # finite input that overflows the tower
    path = str(tmp_path / "bad.parquet")
    logs.write_log(path, **log)
    cfg = _tiny(epochs=1, eval_every=100, checkpoint_every=100)
    with pytest.raises(metrics_lib.NonFiniteLossError, match=r"non-finite training loss at step \d"):
        train_and_evaluate(cfg, str(tmp_path / "wd"), path, path)


def test_batch_size_must_divide_over_devices(sim_logs, tmp_path):
    with pytest.raises(ValueError, match="TrainConfig.batch_size: 66 is not divisible by the 4"):
        train_and_evaluate(_tiny(batch_size=66), str(tmp_path), sim_logs["train"],
                           sim_logs["heldout"])


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="TrainConfig.learning_rate"):
        TrainConfig(learning_rate=0.0)
    with pytest.raises(ValueError, match="TrainConfig.objective_weights: 1 weights for 2"):
        TrainConfig(objective_weights=(1.0,)).loss_weights(2)
    with pytest.raises(ValueError, match="TrainConfig.select_lambda"):
        TrainConfig(select_lambda=(0.5, 0.6))
