"""The serve math outside JAX: numpy (vectorized, single-threaded BLAS) and PyTorch eager.

Both compute exactly what ``puts_jax.engine``'s serve pass computes (Q-network forward ->
scalarize -> first argmax with fallback -> gather W[a*] -> re-weight -> masked top-k, best
first), written the way a careful engineer would in that library: whole-batch matmuls,
``argpartition`` / ``torch.topk`` for the top k. They are speed baselines; correctness is
``puts_jax.reference``'s job (the suites still check that the variants agree).
"""

from __future__ import annotations

from typing import Any

import numpy as np


# --------------------------------------------------------------------------------------------
# numpy
# --------------------------------------------------------------------------------------------

def numpy_q(p: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Q f32[B, A, J] from context f32[B, D] with the parameters of ``workload.numpy_params``."""
    h = x
    for k, b in p["tower"]:
        h = np.maximum(h @ k + b, 0.0)
    binary = p["binary"]
    if "mix" in p:
        logits = h @ p["mix"][0] + p["mix"][1]
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        pi = e / e.sum(axis=1, keepdims=True)
        v = p["values"]
        v = np.where(binary, 1.0 / (1.0 + np.exp(-v)), v).astype(np.float32)
        R, A, J = v.shape
        return (pi @ v.reshape(R, A * J)).reshape(-1, A, J)
    raw = h @ p["out"][0] + p["out"][1]
    raw = raw.reshape(raw.shape[0], -1, binary.shape[0])
    return np.where(binary, 1.0 / (1.0 + np.exp(-raw)), raw).astype(np.float32)


def numpy_select(q: np.ndarray, lam: np.ndarray,
                 fallback: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """First argmax of q @ lam per row, fallback where a row is non-finite."""
    s = q @ lam
    finite = np.isfinite(s).all(axis=1)
    a = np.where(finite, np.argmax(s, axis=1), fallback).astype(np.int32)
    return a, ~finite


def numpy_top_k(u: np.ndarray, mask: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masked top-k of scores u f32[B, N]: (idx i32[B, k] best first, -1 past the real finite
    ones; score f32[B, k]; n_nonfinite i32[B])."""
    B, N = u.shape
    finite = np.isfinite(u)
    bad = (mask & ~finite).sum(axis=1, dtype=np.int32)
    u = np.where(mask & finite, u, -np.inf).astype(np.float32)
    if k < N:
        part = np.argpartition(-u, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(N), (B, N))
    vals = np.take_along_axis(u, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    if k > N:
        idx = np.concatenate([idx, np.full((B, k - N), -1)], axis=1)
        vals = np.concatenate([vals, np.full((B, k - N), -np.inf, np.float32)], axis=1)
    return np.where(vals > -np.inf, idx, -1).astype(np.int32), vals, bad


def numpy_serve(p: dict[str, Any], W: np.ndarray, lam: np.ndarray, batch: dict[str, np.ndarray],
                k: int, fallback: int = 0) -> dict[str, np.ndarray]:
    """The whole serve pass in numpy."""
    q = numpy_q(p, batch["context"])
    a, fb = numpy_select(q, lam, fallback)
    w = W[a]
    u = np.matmul(batch["preds"], w[:, :, None])[..., 0]
    idx, vals, bad = numpy_top_k(u, batch["mask"], k)
    return {"action": a, "topk_index": idx, "topk_score": vals, "n_nonfinite": bad,
            "q_fallback": fb}


# --------------------------------------------------------------------------------------------
# PyTorch eager (optional)
# --------------------------------------------------------------------------------------------

def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def make_torch_serve(p: dict[str, Any], W: np.ndarray, k: int, fallback: int = 0, threads: int = 1):
    """serve(lam_t, batch_t) in torch eager with ``threads`` intra-op threads, inference mode.
    Inputs are torch tensors (``torch.from_numpy`` of the numpy batch: zero copy)."""
    import torch

    torch.set_num_threads(threads)
    def T(a):
        return torch.from_numpy(np.array(a, copy=True))
    tower = [(T(np.ascontiguousarray(a)), T(b)) for a, b in p["tower"]]
    binary = T(p["binary"])
    Wt = T(W)
    mix = (T(p["mix"][0]), T(p["mix"][1])) if "mix" in p else None
    values = T(p["values"]) if "values" in p else None
    out = (T(p["out"][0]), T(p["out"][1])) if "out" in p else None
    neg_inf = torch.tensor(-float("inf"))

    @torch.inference_mode()
    def serve(lam: "torch.Tensor", batch: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
        h = batch["context"]
        for kk, b in tower:
            h = torch.relu(torch.addmm(b, h, kk))
        if mix is not None:
            pi = torch.softmax(torch.addmm(mix[1], h, mix[0]), dim=1)
            v = torch.where(binary, torch.sigmoid(values), values)
            R, A, J = v.shape
            q = (pi @ v.reshape(R, A * J)).reshape(-1, A, J)
        else:
            raw = torch.addmm(out[1], h, out[0]).reshape(h.shape[0], -1, binary.shape[0])
            q = torch.where(binary, torch.sigmoid(raw), raw)
        s = q @ lam
        finite = torch.isfinite(s).all(dim=1)
        a = torch.where(finite, torch.argmax(s, dim=1), fallback)
        w = Wt[a]
        u = torch.bmm(batch["preds"], w.unsqueeze(2)).squeeze(2)
        fin = torch.isfinite(u)
        mask = batch["mask"]
        bad = (mask & ~fin).sum(dim=1, dtype=torch.int32)
        u = torch.where(mask & fin, u, neg_inf)
        vals, idx = torch.topk(u, min(k, u.shape[1]), dim=1, largest=True, sorted=True)
        idx = torch.where(vals > neg_inf, idx, -1)
        return {"action": a, "topk_index": idx, "topk_score": vals, "n_nonfinite": bad,
                "q_fallback": ~finite}

    return serve
