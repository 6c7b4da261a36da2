"""Build, register and call the bench's native kernels (``native.cc``) on XLA:CPU: the sweep's
all-lambda greedy select (an experiment) and the latency suite's in-program wait for the agent's
weights. (The native top-k and re-weight experiments that were here became the library's serve
tail, ``puts_jax.native``.)

An experiment, not a dependency: ``available()`` is False (and the suites skip the variant)
without a C++ compiler, off CPU, or if the build fails. The library is built once per source
hash into a cache folder with ``g++ -O3 -march=native -ffp-contract=off``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native.cc")
_SWEEP = "bench_sweep_select"
_AWAIT = "bench_await_weights"
_POST = "bench_post_request"
_state: dict = {}


def _build() -> str | None:
    import jax

    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        return None
    src = open(_SRC, "rb").read()
    tag = hashlib.sha256(src + jax.__version__.encode()).hexdigest()[:16]
    folder = os.path.join(tempfile.gettempdir(), "puts_bench_native")
    os.makedirs(folder, exist_ok=True)
    lib = os.path.join(folder, f"libnative_{tag}.so")
    if not os.path.exists(lib):
        tmp = lib + f".{os.getpid()}.tmp"
        cmd = [cxx, "-O3", "-march=native", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC",
               f"-I{jax.ffi.include_dir()}", _SRC, "-o", tmp]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            _state["error"] = out.stderr[-2000:]
            return None
        os.replace(tmp, lib)
    return lib


def available() -> bool:
    """Build and register once; False where the experiment cannot run."""
    if "ok" in _state:
        return _state["ok"]
    import jax

    ok = False
    try:
        if jax.devices()[0].platform == "cpu":
            path = _build()
            if path is not None:
                lib = ctypes.cdll.LoadLibrary(path)
                jax.ffi.register_ffi_target(_SWEEP, jax.ffi.pycapsule(lib.BenchSweepSelect),
                                            platform="cpu")
                jax.ffi.register_ffi_target(_AWAIT, jax.ffi.pycapsule(lib.BenchAwaitWeights),
                                            platform="cpu")
                jax.ffi.register_ffi_target(_POST, jax.ffi.pycapsule(lib.BenchPostRequest),
                                            platform="cpu")
                ok = True
    except Exception as e:  # noqa: BLE001 - an experiment: report, never fail the suite
        _state["error"] = repr(e)
    _state["ok"] = ok
    return ok


def error() -> str | None:
    return _state.get("error")


def sweep_select(q_BxAxJ, lams_LxJ, consistent_BxA, fallback: int = 0):
    """Greedy target of every lambda in one native pass over Q: (pi f32[B, L] = consistent[b, a*],
    qhat(x, pi) f32[B, L, J] = q[b, a*, :]), a* the first argmax of q[b] @ lam (fallback where
    q[b] is non-finite)."""
    import jax
    import jax.numpy as jnp

    B, _, J = q_BxAxJ.shape
    L = lams_LxJ.shape[0]
    out = (jax.ShapeDtypeStruct((B, L), jnp.float32), jax.ShapeDtypeStruct((B, L, J), jnp.float32))
    return jax.ffi.ffi_call(_SWEEP, out)(q_BxAxJ.astype(jnp.float32),
                                         lams_LxJ.astype(jnp.float32),
                                         consistent_BxA.astype(bool), fallback=np.int64(fallback))


def await_weights(after, shape: tuple[int, int], hdr_addr: int, weights_addr: int,
                  timeout_ms: int = 10_000):
    """f32[B, K] weights read from the agent's shared-memory channel once it has answered the
    posted request (``bench.agent_worker.Channel``: RESP == REQ), ordered after ``after`` (any
    array: the ranker's predictions) inside the calling program. Addresses are this process's
    mapping of the channel (compile-time attributes).

    Declared without side effects on purpose: with ``has_side_effect=True`` XLA:CPU ran the
    whole B = 1 program about 2.4x slower (263 vs 110 us). That is safe here because the call
    has a real operand (it cannot be hoisted above the ranker or constant-folded) and the
    program calls it once (nothing to merge)."""
    import jax
    import jax.numpy as jnp

    out = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
    return jax.ffi.ffi_call(_AWAIT, out, has_side_effect=False)(
        after, hdr_addr=np.int64(hdr_addr), weights_addr=np.int64(weights_addr),
        timeout_ms=np.int64(timeout_ms))


def post_request(context, hdr_addr: int, ctx_addr: int):
    """Post a request to the agent's shared-memory channel from inside the calling program: copy
    ``context: f32[B, D]`` to the channel, set SIZE = B and REQ += 1 (``bench.agent_worker``).
    Returns a f32[] 0.0 token; add it to something the ranker reads (its biases) so the post is
    ordered before the ranker. Declared without side effects for the reason given in
    ``await_weights``; the token's use keeps it from being dropped."""
    import jax
    import jax.numpy as jnp

    out = jax.ShapeDtypeStruct((), jnp.float32)
    return jax.ffi.ffi_call(_POST, out, has_side_effect=False)(
        context.astype(jnp.float32), hdr_addr=np.int64(hdr_addr), ctx_addr=np.int64(ctx_addr))

