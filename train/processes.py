"""Checks that the processes of a multi-process run (``python -m train --coordinator ...``) were
started alike: the same effective config (``--config``, ``--seed``, ``--epochs``), the same
``--logs`` and ``--heldout`` bytes and the same ``--workdir`` folder.

Processes started otherwise do not fail by themselves: each trains its own number of steps on its
own rows and the collectives of the one with more steps wait for the others until JAX's heartbeat
timeout, while the checkpoints of a process with another ``--workdir`` land apart from process 0's
(a run that cannot resume). So every process gathers a fingerprint of what it was given (two
``process_allgather`` calls) and all of them stop with the same one-line error before the first
step when any differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets

import numpy as np

from puts_jax.checks import InputError

TOKEN_FILE = ".processes_token"  # process 0's random token, read back by the others


def _h32(value) -> int:
    """A 31-bit hash of a JSON-able value (int32-safe for the gather)."""
    raw = json.dumps(value, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(raw).digest()[:4], "little") & 0x7FFFFFFF


def _gather(vec: np.ndarray) -> np.ndarray:
    """i32[P, F]: ``vec`` (i32[F]) of every process, in process order."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(vec)).reshape(-1, vec.shape[0])


def check_processes_agree(config: dict, inputs: dict[str, dict], workdir: str) -> None:
    """Refuse a multi-process run whose processes were given different flags; a no-op alone.

    config: the effective ``TrainConfig.to_dict()``; inputs: role ("logs", "heldout") ->
    ``checkpointing.input_identity``; workdir: this process's ``--workdir`` (already created).
    Collective: every process must call it at the same point. Raises InputError on every process
    ("--seed", "--epochs", ... "--logs", "--heldout" or "--workdir") naming the processes that
    differ from process 0; nothing has been trained or written then, except the token file.
    """
    import jax

    if jax.process_count() == 1:
        return
    me = jax.process_index()
    keys = sorted(config)
    token = secrets.randbits(31) if me == 0 else 0
    if me == 0:
        tmp = os.path.join(workdir, TOKEN_FILE + ".tmp")
        with open(tmp, "w") as f:
            f.write(str(token))
        os.replace(tmp, os.path.join(workdir, TOKEN_FILE))
    vec = np.array([_h32(config[k]) for k in keys]
                   + [_h32([inputs[r]["size"], inputs[r]["sha256"]]) for r in sorted(inputs)]
                   + [token], np.int32)
    got = _gather(vec)
    names = ([f"--{k}" if k in ("seed", "epochs") else f"config {k}" for k in keys]
             + [f"--{r}" for r in sorted(inputs)])
    differ = {}
    for p in range(1, got.shape[0]):
        for i, name in enumerate(names):
            if got[p, i] != got[0, i]:
                differ.setdefault(name, []).append(p)
    try:
        with open(os.path.join(workdir, TOKEN_FILE)) as f:
            seen = int(f.read().strip() or 0)
    except (OSError, ValueError):
        seen = -1
    same_dir = _gather(np.array([int(seen == got[0, -1])], np.int32))[:, 0]
    apart = [p for p in range(got.shape[0]) if not same_dir[p]]
    if apart:
        differ["--workdir"] = apart
    if differ:
        flag = next(iter(differ))
        parts = "; ".join(f"{name} differs from process 0's on "
                          f"process{'es' if len(ps) > 1 else ''} {', '.join(map(str, ps))}"
                          for name, ps in differ.items())
        why = (" (not the folder process 0 writes in: every process needs the same --workdir, "
               "on a shared file system)" if "--workdir" in differ else "")
        raise InputError(flag if flag.startswith("--") else "--config", [],
                         f"the {got.shape[0]} processes were not started alike: {parts}{why}; "
                         "start every process with the same command, only --process-id changing")
