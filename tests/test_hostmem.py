"""hostmem.keep_scratch_resident: after it, a compiled program's large scratch is reused from
call to call instead of being mapped and faulted in again (counted with getrusage, in a fresh
process each, so this process's own allocations do not decide the outcome)."""

import os
import subprocess
import sys

import pytest

from puts_jax import hostmem

# The serve pass's Q-network at the benchmark's shapes (B = 8192, MLP 256 x 256, mixture head,
# A = 64, J = 2): ~17 MB of scratch a call, and a 4 MB output.
SCRIPT = r"""
import resource, sys
import jax, jax.numpy as jnp
from flax import nnx
from puts_jax import hostmem
from puts_jax.config import QNetConfig
from puts_jax.qnet import QNetwork
if sys.argv[1] == "keep":
    assert hostmem.keep_scratch_resident()
model = QNetwork(QNetConfig(hidden=(256, 256)), 64, 64, ("binary", "binary"), rngs=nnx.Rngs(0))
graphdef, params = nnx.split(model)
f = jax.jit(lambda p, c: nnx.merge(graphdef, p)(c))
c = jnp.ones((8192, 64), jnp.float32)
for _ in range(3):
    f(params, c).block_until_ready()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    f(params, c).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 10)
"""


def _faults_per_call(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items()
                              if not k.startswith(("MALLOC_", "XLA_FLAGS"))}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip().splitlines()[-1])


def test_scratch_is_reused_not_faulted_in_on_every_call():
    if hostmem._glibc_mallopt() is None:
        pytest.skip("not glibc: keep_scratch_resident changes nothing here")
    kept = _faults_per_call("keep")
    assert kept < 100, f"{kept} minor faults a call with the thresholds set"
    default = _faults_per_call("default")  # glibc 2.36 here: every call maps it afresh
    assert default > 1000, f"only {default} faults a call without: is the test still needed?"


def test_the_environment_and_bad_sizes(monkeypatch):
    monkeypatch.setattr(hostmem, "_applied", None)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert hostmem.keep_scratch_resident() is False  # the user's glibc setting wins
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setattr(hostmem, "_glibc_mallopt", lambda: None)
    assert hostmem.keep_scratch_resident() is False  # not glibc: nothing to set
    for bad in (0, 1 << 19, (1 << 30) + 1):
        with pytest.raises(ValueError, match=r"^max_block_bytes: \d+ outside \[1 MiB, 1 GiB\]"):
            hostmem.keep_scratch_resident(bad)
