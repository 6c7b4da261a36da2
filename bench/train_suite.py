"""Train suite: examples/s of one optimizer step of the Q-network, on 1 device and data-parallel.

The step is the trainer's own (``train.step.build_train_step``, imported only inside ``run``)
where ``train`` imports; otherwise (``train.input`` needs grain, which the GPU machines lack) a
local equivalent, said so in the results: ``puts_jax.losses.batch_loss`` (one-step regression of
the logged action's Q on the observed rewards), optax AdamW with global-norm clipping, parameters
and optimizer state donated, under one ``jax.jit``. Data-parallel runs
in a child process with 2 CPU devices (``JAX_NUM_CPU_DEVICES=2``) and the batch sharded over a
``Mesh``: on CPU that is two virtual devices sharing the process (FACTS: slower than one device
there; it measures the sharded program, not a speed-up). On an accelerator host with several
devices the same code shards over the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


from bench import harness, workload
from bench.report import Report

BATCHES = (256, 1024, 8192)


def build_step(s: workload.Shapes, mesh=None):
    """(step, state, batch_fn): jit(params, opt_state, batch) -> (params, opt_state, loss)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from puts_jax.losses import batch_loss

    model = workload.make_model(s)
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=1e-4))
    opt_state = tx.init(params)
    binary = jnp.ones(s.J, bool)
    weights = jnp.ones(s.J, jnp.float32)

    def loss_fn(p, batch):
        q = nnx.merge(graphdef, p)(batch["context"])
        return batch_loss(q, batch["action"], batch["rewards"], batch["valid"], binary, weights)[0]

    def step(p, o, batch):
        loss, grads = jax.value_and_grad(loss_fn)(p, batch)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    kw: dict[str, Any] = {"donate_argnums": (0, 1)}
    if mesh is not None:
        from jax.sharding import NamedSharding, PartitionSpec as P

        rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        params = jax.device_put(params, rep)
        opt_state = jax.device_put(opt_state, rep)
        kw.update(in_shardings=(rep, rep, data), out_shardings=(rep, rep, rep))

    def batch_fn(B: int) -> dict[str, Any]:
        a = workload.logged_arrays(s, B)
        b = {k: a[k] for k in ("context", "action", "rewards", "valid")}
        if mesh is not None:
            from jax.sharding import NamedSharding, PartitionSpec as P

            return jax.device_put(b, NamedSharding(mesh, P("data")))
        return jax.device_put(b)

    return jax.jit(step, **kw), (params, opt_state), batch_fn


def trainer_step(s: workload.Shapes, mesh=None):
    """The trainer's own step (``train.step.build_train_step``: nnx.Optimizer, safe clipping,
    non-finite skip, donated replicated state, row-sharded batch) as (step, state, batch_fn),
    or None where ``train`` cannot be imported here: ``train.step`` imports ``train.input``,
    which imports grain (absent on the GPU machines)."""
    try:
        from train import state as tstate, step as tstep
        from train.config import TrainConfig
        from train.input import TrainBatch
    except ImportError:
        return None
    from puts_jax.config import QNetConfig

    cfg = TrainConfig(qnet=QNetConfig(hidden=s.hidden, head=s.head, n_components=s.n_components))
    kinds = ("binary",) * s.J
    model = tstate.make_model(cfg, s.D, s.A, kinds, None)
    defs, state = tstate.init_state(model, tstate.make_optimizer(cfg, 10_000), cfg.seed)
    mesh = tstep.make_mesh() if mesh is None else mesh
    step = tstep.build_train_step(defs, kinds, (1.0,) * s.J, mesh)

    def batch_fn(B: int):
        a = workload.logged_arrays(s, B)
        return tstep.device_batch(TrainBatch(a["context"], a["action"], a["rewards"],
                                             a["valid"]), mesh)

    def call(compiled, st, batch):
        return compiled(st, batch)  # (state, metrics)

    return step, state, batch_fn, call


def local_step(s: workload.Shapes, mesh=None):
    """``build_step`` in the trainer's (step, state, batch_fn, call) shape."""
    step, (params, opt), batch_fn = build_step(s, mesh)

    def call(compiled, st, batch):
        p, o, loss = compiled(st[0], st[1], batch)
        return (p, o), loss

    class _Step:  # lower(state, batch) like the trainer's jit(state, batch)
        def lower(self, st, batch):
            return step.lower(st[0], st[1], batch)

    return _Step(), (params, opt), batch_fn, call


def measure(s: workload.Shapes, batches: tuple[int, ...], quick: bool, mesh=None,
            use_trainer: bool = True) -> tuple[list[dict], str]:
    """Per batch size: compile time and per-step times (state carried, donated)."""
    built = trainer_step(s, mesh) if use_trainer else None
    source = "train.step.build_train_step"
    if built is None:
        built, source = local_step(s, mesh), "bench.train_suite.build_step (local equivalent)"
    step, state0, batch_fn, call = built
    out = []
    st = {"s": state0}
    for B in batches:
        batch = batch_fn(B)
        c = harness.aot_compile(step, st["s"], batch)

        def one():
            st["s"], metrics = call(c.fn, st["s"], batch)
            return metrics

        per = harness.probe(one)
        xs = harness.interleave({"step": one}, rounds=2 if quick else 5,
                                reps=harness.reps_for(per, 0.5 if quick else 2.0))["step"]
        summ = harness.Summary.of(xs)
        out.append({"B": B, "compile_s": round(c.compile_s, 3), **summ.as_dict(),
                    "per_s": B / summ.median})
    return out, source


def _child(batches: tuple[int, ...], quick: bool) -> None:
    """Entry of the data-parallel child: print one JSON line of results."""
    import jax

    mesh = jax.make_mesh((len(jax.devices()),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))
    res, source = measure(workload.Shapes(), batches, quick, mesh)
    print(json.dumps({"devices": len(jax.devices()), "results": res, "source": source}))


def run(quick: bool = False, batches: tuple[int, ...] = BATCHES, multi: bool = True) -> Report:
    s = workload.Shapes()
    rep = Report("train", quick, s.as_dict())
    import jax

    results, source = measure(s, batches, quick)
    rep.meta["step_source"] = source
    if source != "train.step.build_train_step":
        rep.note("train/ not importable here (train.step -> train.input -> grain): timed the local "
                 "equivalent step (puts_jax.losses + optax adamw + clip, donated state)")
    for r in results:
        rep.add(f"B={r['B']}", f"1 device ({jax.devices()[0].platform})", None, **r)
    if multi:
        dp = run_data_parallel(batches, quick)
        if dp is None:
            rep.note("data-parallel child failed; see stderr")
        else:
            one = {r["B"]: r["per_s"] for r in rep.rows}
            for r in dp["results"]:
                rep.add(f"B={r['B']}", f"data-parallel {dp['devices']} devices", None, **r)
                rep.ratio(f"B={r['B']} data-parallel vs 1 device (x examples/s)",
                          r["per_s"] / one[r["B"]])
            if jax.devices()[0].platform == "cpu":
                rep.note("data-parallel on CPU = 2 virtual devices in one process "
                         "(JAX_NUM_CPU_DEVICES=2): tests the sharded "
                         "program; FACTS says it is slower than 1 device on CPU")
    return rep


def run_data_parallel(batches: tuple[int, ...], quick: bool) -> dict | None:
    env = dict(os.environ)
    import jax

    if jax.devices()[0].platform == "cpu":
        env["JAX_NUM_CPU_DEVICES"] = "2"
    code = ("import sys; from bench import train_suite; "
            f"train_suite._child({tuple(batches)!r}, {quick!r})")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                         text=True, timeout=900)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-3000:])
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


