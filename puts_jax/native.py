"""The native serve tail on XLA:CPU: re-weight + mask + exact top-k in one pass over the ranker
predictions (``csrc/rerank.cc``, an XLA FFI custom call), used by ``kernels.rerank`` on CPU.

The C++ source ships with the package and is compiled on first use with the system compiler
(``$CXX``, else ``g++``; ``-O3 -march=native -ffp-contract=off``: the kernel spells out XLA's
own roundings, so the scores equal ``kernels._scores`` bit for bit) into a cache folder keyed by
the source, the jax version, the compiler and this CPU's feature flags: ``$PUTS_JAX_CACHE/native``
or ``~/.cache/puts_jax/native``; where that is not writable, ``$TMPDIR/puts_jax_native_<uid>``.
A folder is used only if it is owned by this user and writable by no one else (else a fresh
``mkdtemp`` folder), and a cached library only if its sha256 matches the one recorded at build
time (else it is rebuilt). Builds are written to a temporary name and renamed in, so concurrent
first uses are safe.

``available()`` is False, and ``kernels.rerank(method="auto")`` keeps the pure-XLA tail, when
there is no compiler, the build fails, the default device is not a CPU, or
``PUTS_JAX_NATIVE=0``; ``why_unavailable()`` says which. Asking for ``method="native"`` where it
is unavailable raises ``RuntimeError`` with that reason.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "rerank.cc")
RERANK_TARGET = "puts_jax_rerank"
SERVE_TAIL_TARGET = "puts_jax_serve_tail"
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC")
_state: dict = {}


def cache_dir() -> str:
    """Preferred folder of the compiled library: ``$PUTS_JAX_CACHE/native`` or
    ``~/.cache/puts_jax/native``."""
    root = os.environ.get("PUTS_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                            "puts_jax")
    return os.path.join(root, "native")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    import platform

    return platform.processor() + platform.machine()


def _private(folder: str) -> bool:
    """Create ``folder`` (mode 0700) if missing; True when it is a directory owned by this user
    that no one else can write (a library loaded from it runs in this process)."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    st = os.stat(folder, follow_symlinks=False)
    import stat

    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _build_folder() -> str:
    """``cache_dir()`` when it is private and writable; else ``$TMPDIR/puts_jax_native_<uid>``
    under the same checks; else a fresh ``mkdtemp`` folder (a build per process)."""
    for folder in (cache_dir(),
                   os.path.join(tempfile.gettempdir(), f"puts_jax_native_{os.getuid()}")):
        try:
            if _private(folder):
                tempfile.NamedTemporaryFile(dir=folder).close()  # writable
                return folder
        except OSError:
            pass
    return tempfile.mkdtemp(prefix="puts_jax_native_")


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _build() -> str:
    """Path of the compiled library, built if missing. A cached build is used only if its
    sha256 matches the one recorded next to it at build time (a truncated or replaced file is
    rebuilt, never loaded)."""
    import jax

    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        raise RuntimeError("no C++ compiler (set CXX or install g++)")
    with open(_SRC, "rb") as f:
        src = f.read()
    tag = hashlib.sha256(b"\0".join([src, jax.__version__.encode(), cxx.encode(),
                                     " ".join(FLAGS).encode(), _cpu_flags().encode()]))
    lib = os.path.join(_build_folder(), f"librerank_{tag.hexdigest()[:16]}.so")
    try:
        with open(lib + ".sha256") as f:
            if os.path.exists(lib) and f.read().strip() == _digest(lib):
                return lib
    except OSError:
        pass
    tmp = f"{lib}.{os.getpid()}.tmp"
    cmd = [cxx, *FLAGS, f"-I{jax.ffi.include_dir()}", _SRC, "-o", tmp]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    with open(f"{tmp}.sha256", "w") as f:
        f.write(_digest(tmp))
    os.replace(tmp, lib)
    os.replace(f"{tmp}.sha256", lib + ".sha256")
    return lib


def available() -> bool:
    """Build (once per process, cached on disk) and register the native kernel; False where it
    cannot run here (see ``why_unavailable``)."""
    if "ok" in _state:
        return _state["ok"]
    import jax

    why = None
    if os.environ.get("PUTS_JAX_NATIVE", "1") == "0":
        why = "disabled by PUTS_JAX_NATIVE=0"
    elif jax.devices()[0].platform != "cpu":
        why = f"default device is {jax.devices()[0].platform}, the native tail is CPU-only"
    else:
        try:
            lib = ctypes.cdll.LoadLibrary(_build())
            jax.ffi.register_ffi_target(RERANK_TARGET, jax.ffi.pycapsule(lib.PutsJaxRerank),
                                        platform="cpu")
            jax.ffi.register_ffi_target(SERVE_TAIL_TARGET,
                                        jax.ffi.pycapsule(lib.PutsJaxServeTail), platform="cpu")
        except (RuntimeError, OSError, AttributeError) as e:
            why = str(e)
    _state["ok"], _state["why"] = why is None, why
    return why is None


def why_unavailable() -> str | None:
    """None where ``available()``; otherwise the reason."""
    available()
    return _state["why"]


def rerank(preds_BxNxK, w_BxK, mask_BxN, k: int):
    """``kernels.rerank``'s answer in one native pass: (idx i32[B, k] best first, -1 past the
    real finite candidates; score f32[B, k], -inf there; n_nonfinite i32[B]).

    Args:
      preds_BxNxK: f32[B, N, K] (other float dtypes are cast); w_BxK: f32[B, K];
      mask_BxN: bool[B, N]; k >= 1 static.
    Raises:
      RuntimeError: the kernel is unavailable here (``why_unavailable``).
    """
    import jax
    import jax.numpy as jnp

    if not available():
        raise RuntimeError(f"native rerank unavailable: {why_unavailable()}")
    B = preds_BxNxK.shape[0]
    out = (jax.ShapeDtypeStruct((B, k), jnp.float32), jax.ShapeDtypeStruct((B, k), jnp.int32),
           jax.ShapeDtypeStruct((B,), jnp.int32))
    val, idx, bad = jax.ffi.ffi_call(RERANK_TARGET, out)(
        preds_BxNxK.astype(jnp.float32), w_BxK.astype(jnp.float32), mask_BxN.astype(bool),
        k=np.int64(k))
    return idx, val, bad


def serve_tail(s_BxA, W_AxK, preds_BxNxK, mask_BxN, k: int, fallback):
    """``kernels.serve_scores``' answer in one native call per batch: the first argmax of each
    row of s (``fallback`` where a row has a NaN/inf entry), that action's utility weights, and
    the re-weight + masked top-k of ``rerank``.

    Args:
      s_BxA: f32[B, A] scalarized Q-values; W_AxK: f32[A, K] action set; preds_BxNxK: f32[B, N, K];
      mask_BxN: bool[B, N]; k >= 1 static; fallback: int or i32[] action in [0, A).
    Returns:
      (action i32[B], used_fallback bool[B], idx i32[B, k], score f32[B, k], n_nonfinite i32[B]).
    Raises:
      RuntimeError: the kernel is unavailable here (``why_unavailable``).
    """
    import jax
    import jax.numpy as jnp

    if not available():
        raise RuntimeError(f"native serve tail unavailable: {why_unavailable()}")
    B = preds_BxNxK.shape[0]
    out = (jax.ShapeDtypeStruct((B,), jnp.int32), jax.ShapeDtypeStruct((B,), jnp.bool_),
           jax.ShapeDtypeStruct((B, k), jnp.float32), jax.ShapeDtypeStruct((B, k), jnp.int32),
           jax.ShapeDtypeStruct((B,), jnp.int32))
    action, used, val, idx, bad = jax.ffi.ffi_call(SERVE_TAIL_TARGET, out)(
        s_BxA.astype(jnp.float32), W_AxK.astype(jnp.float32), preds_BxNxK.astype(jnp.float32),
        mask_BxN.astype(bool), jnp.asarray(fallback, jnp.int32), k=np.int64(k))
    return action, used, idx, val, bad

