"""Agreement of puts_jax's IPS / SNIPS / DR with the Open Bandit Pipeline (obp) on the Open Bandit
Dataset sample (issue 4, "obp agreement").

Run with the project's interpreter (it needs puts_jax; the project itself never imports obp):

    .venv/bin/python scripts/obp_agreement.py            # ~2 min the first time (venv + wheels)
    .venv/bin/python scripts/obp_agreement.py --venv /tmp/obp-venv --keep-venv   # reusable venv

What it does:
  1. Project side (this interpreter): converts the 10,000-row OBD sample shipped with obp
     (``puts_jax.data.obd.convert_obd(grid_steps=12)``: item, position, click, propensity, the
     91-vector simplex grid and its slot-level ``consistent`` mask) and selects the compared
     policies (``select_actions``: the 15 vectors of the product's default grid, steps of 1/4,
     plus every other vector whose ranking matches a click; with 38 clicks most rankings match
     none, and IPS / SNIPS are then exactly 0). For each it derives the deterministic top-3
     ranking per row; it fits a cross-fitted per-item click-rate reward model, writes all of it to
     ``inputs.npz``, and estimates every policy with ``evaluation.evaluate_fixed`` (IPS, SNIPS, DR).
  2. Peer side: creates a THROWAWAY venv (default: a fresh folder under the system temp dir,
     deleted at the end), installs ``obp==0.4.1 --no-deps`` plus the packages its imports need
     (numpy, scipy, scikit-learn, pandas, torch==2.13.0 -- the CPU wheel on disk --, matplotlib,
     seaborn, tqdm, pyyaml, mypy-extensions), and runs this same file there in ``peer`` mode: it
     loads ``inputs.npz`` and calls obp's ``InverseProbabilityWeighting``,
     ``SelfNormalizedInverseProbabilityWeighting`` and ``DoublyRobust`` on the arrays (obp's
     ``OpenBanditDataset`` loader is not used: it breaks on pandas 2).
  3. Prints the table policy x estimator: ours, obp, |difference|; exits 1 if any pair disagrees
     beyond tolerance (``TOL``). ``--emit-test-table`` prints the literal pasted into
     tests/test_obp_agreement.py.

Inputs, identical on both sides (row i: logged item m_i at 0-based position k_i, click r_i,
propensity p_i = 1/80; obp calls the item the "action"):
  action_dist[i, m, k] = 1 where the policy's ranking (score W . preds in float64, ties to the
    lower item id, the rule of ``obd.consistent_mask``) puts item m at position k, else 0. Row i
    is consistent with the policy exactly when action_dist[i, m_i, k_i] = 1 (checked against
    the log's mask).
  qhat[i, m, k] = per-item click rate fitted on the OTHER fold (rows alternate between folds
    0 and 1: cross-fitting), shrunk toward that fold's global rate with SMOOTHING pseudo-shows,
    the same for every position. Model "grid": qhat rounded to a multiple of QHAT_GRID = 2^-14,
    so that every DR term and every partial sum is exactly representable in float32 (puts_jax
    accumulates on the device in f32 by design, PITFALLS P2): ours and obp's must then agree to
    float64 rounding, which isolates the definitions from precision. Model "raw": the unrounded
    rates; the differences are then float32 accumulation error (|diff| ~ 1e-9 on values ~ 1e-2;
    relative up to ~1e-5 where the DR value cancels to ~3e-6).

Definitions compared (obp 0.4.1, ``obp/ope/estimators.py``), w_i = action_dist[i, m_i, k_i] / p_i:
  IPW:   mean_i w_i r_i.                                     ours: sum w r / n
  SNIPW: mean_i [w_i r_i / mean_j w_j].                      ours: sum w r / sum w
  DR:    mean_i [sum_m action_dist[i, m, k_i] qhat[i, m, k_i] + w_i (r_i - qhat[i, m_i, k_i])]
         (the first sum is np.average with those weights, which sum to 1 for a ranking).
         ours: (1/n) sum [qhat(x, pi) + w (r - qhat(x, logged))] with the reward model given to
         the engine as a table-lookup Q-network (``TableQ``) whose Q[i, a] is qhat at the item
         policy a puts at k_i; the engine's qhat(x, logged) is Q at the row's lowest consistent
         policy, i.e. qhat[i, m_i, k_i], and 0 on rows consistent with none of them, where w = 0
         for every policy, so those rows contribute qhat(x, pi) on both sides.
  Not compared: intervals (obp's are bootstrap, ours normal / delta-method / Clopper-Pearson).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

OBP_VERSION = "0.4.1"
# Everything ``import obp.ope`` pulls in (obp's Requires-Dist); torch pinned to the CPU wheel on
# this machine's disk (any other spec resolves to GBs of CUDA wheels).
PEER_DEPS = ("numpy", "scipy", "scikit-learn", "pandas", "torch==2.13.0", "matplotlib", "seaborn",
             "tqdm", "pyyaml", "mypy-extensions")
ESTIMATORS = ("ips", "snips", "dr_grid", "dr_raw")
# Agreement: |ours - obp| <= rtol * |obp| + atol. IPS, SNIPS and DR with the grid model are
# exact in float32 on our side, so only float64 rounding remains. DR with the raw model carries
# puts_jax's float32 device accumulation (PITFALLS P2): its error scales with the magnitude of
# the summed terms (mean |term| <= ~0.03 here, times 2^-24 per rounding), not with the value,
# which cancels to ~1e-6 for some policies; hence an absolute floor of 1e-8.
TOL = {"ips": (1e-9, 1e-15), "snips": (1e-9, 1e-15), "dr_grid": (1e-9, 1e-15),
       "dr_raw": (1e-6, 1e-8)}
QHAT_GRID = 2.0 ** -14
SMOOTHING = 50.0  # pseudo-shows at the fold's global click rate
CHUNK_ROWS = 4096  # several streamed chunks, merged in float64
N_FOLDS = 2
GRID_STEPS = 12  # convert_obd(grid_steps=12): 91 weight vectors, steps of 1/12
DEFAULT_GRID_STEPS = 4  # the product's default OBD action set (15 vectors, steps of 1/4)
MARKER = ".obp_agreement_venv"  # only a venv carrying this file is reused or deleted


# ----------------------------------------------------------------------------- project side


def select_actions(W: np.ndarray, consistent: np.ndarray, click: np.ndarray) -> np.ndarray:
    """Indices of the compared policies in the GRID_STEPS action set: the weight vectors of the
    product's default grid (multiples of 1/DEFAULT_GRID_STEPS) and every other one whose ranking
    matches at least one click (elsewhere IPS and SNIPS are 0 on this 38-click sample)."""
    on_default = np.all(np.abs(W * DEFAULT_GRID_STEPS - np.round(W * DEFAULT_GRID_STEPS)) < 1e-9,
                        axis=1)
    clicked = (consistent & (click[:, None] > 0)).any(0)
    return np.flatnonzero(on_default | clicked)


def build_inputs(workdir: str) -> dict[str, np.ndarray]:
    """The shared inputs (host numpy), from the OBD sample converted by puts_jax.

    Keys: reward f64[n] (click), item i64[n], position i64[n] (0-based), pscore f64[n];
    actions i64[P] (indices into the GRID_STEPS action set), weights f64[P, K]; consistent
    bool[n, P] (the log's slot-level mask, those columns); action i32[n] (lowest consistent of the
    P, -1 where none); top i64[P, n, L] (the item each policy puts at each position); fold i64[n];
    qhat_grid / qhat_raw f64[n, N] (per-row, per-item reward model, position-independent).
    """
    import pyarrow.parquet as pq

    from puts_jax.data import logs, obd

    paths = obd.convert_obd(workdir, grid_steps=GRID_STEPS)
    meta, _, lb = logs.read_log(paths["logs"])
    extra = pq.read_table(paths["logs"], columns=["item_id", "position"])
    item = extra["item_id"].to_numpy().astype(np.int64)
    position = extra["position"].to_numpy().astype(np.int64)
    click = lb.rewards[:, 0].astype(np.float64)
    W_all = np.asarray(meta.action_set.weights, np.float64)
    actions = select_actions(W_all, lb.consistent, click)
    W = W_all[actions]
    consistent = lb.consistent[:, actions]
    action = np.where(consistent.any(1), consistent.argmax(1), -1).astype(np.int32)

    data, _ = obd.read_obd()
    preds = obd.build_preds(data).astype(np.float64)  # the f32 predictions convert_obd ranked
    n, N, _ = preds.shape
    L = obd.OBD_POSITIONS
    top = np.empty((len(actions), n, L), np.int64)
    for p, w in enumerate(W):
        # stable sort of -score: ties to the lower item id, as obd.consistent_mask
        top[p] = np.argsort(-(preds @ w), axis=1, kind="stable")[:, :L]
    hit = top[:, np.arange(n), position] == item[None, :]  # [P, n]
    if not np.array_equal(hit.T, consistent):
        bad = np.argwhere(hit.T != consistent)[:5].tolist()
        raise AssertionError(f"rankings disagree with the log's consistent mask at (row, p) {bad}")

    fold = np.arange(n, dtype=np.int64) % N_FOLDS
    rates = np.zeros((N_FOLDS, N))
    for f in range(N_FOLDS):
        on = fold == f
        shows = np.bincount(item[on], minlength=N).astype(np.float64)
        clicks = np.bincount(item[on], weights=click[on], minlength=N)
        rates[f] = (clicks + SMOOTHING * click[on].mean()) / (shows + SMOOTHING)
    other = (fold + 1) % N_FOLDS  # cross-fitting: a row's model never saw its fold
    qhat_raw = rates[other]
    qhat_grid = np.round(qhat_raw / QHAT_GRID) * QHAT_GRID
    return {"reward": click, "item": item, "position": position,
            "pscore": np.asarray(lb.propensity, np.float64), "actions": actions.astype(np.int64),
            "weights": W, "consistent": consistent, "action": action, "top": top,
            "fold": fold, "qhat_grid": qhat_grid, "qhat_raw": qhat_raw}


def policy_q(inputs: dict, qhat: np.ndarray) -> np.ndarray:
    """Q f64[n, P]: the reward model at the item each policy puts at the row's logged position,
    qhat(x_i, p) = qhat[i, top[p, i, k_i]] (obp's q_hat_at_position under a one-hot action_dist)."""
    n = len(inputs["item"])
    at_k = inputs["top"][:, np.arange(n), inputs["position"]]  # [P, n] item at the logged slot
    return np.take_along_axis(qhat, at_k.T, axis=1)


def our_estimates(inputs: dict) -> dict[str, dict[str, float]]:
    """puts_jax's estimates {estimator: {action index (str): value}} (plus "matched") through
    ``evaluation.evaluate_fixed``: one-hot policies over the log's slot-level ``consistent`` mask,
    streamed in CHUNK_ROWS pieces; DR with the reward model as a table-lookup Q-network."""
    from flax import nnx

    from puts_jax import evaluation
    from puts_jax.config import SweepConfig
    from puts_jax.types import LoggedBatch

    class TableQ(nnx.Module):
        """Q f32[B, A, 1] read from the context, which carries the reward-model table."""

        def __call__(self, context, context_ids=None):
            return context[:, :, None]

    P = inputs["consistent"].shape[1]
    n = len(inputs["reward"])
    keys = [str(a) for a in inputs["actions"]]
    cfg = SweepConfig(chunk_rows=CHUNK_ROWS)
    probs = evaluation.fixed_action_probs(np.arange(P), P)
    out: dict[str, dict[str, float]] = {}
    for name in ("grid", "raw"):
        q = policy_q(inputs, inputs[f"qhat_{name}"]).astype(np.float32)
        if name == "grid" and not np.array_equal(q.astype(np.float64),
                                                 policy_q(inputs, inputs["qhat_grid"])):
            raise AssertionError("grid reward model is not exact in float32")
        lb = LoggedBatch(context=q, action=inputs["action"].astype(np.int32),
                         propensity=inputs["pscore"], rewards=inputs["reward"][:, None],
                         consistent=inputs["consistent"], valid=np.ones(n, bool))
        chunks = [LoggedBatch(*(None if x is None else x[lo:lo + CHUNK_ROWS] for x in lb))
                  for lo in range(0, n, CHUNK_ROWS)]
        est = evaluation.evaluate_fixed(probs, chunks, cfg, model=TableQ(), n_actions=P).estimates
        out[f"dr_{name}"] = {k: float(est.dr[p, 0]) for p, k in enumerate(keys)}
        if name == "grid":
            out["ips"] = {k: float(est.ips[p, 0]) for p, k in enumerate(keys)}
            out["snips"] = {k: float(est.snips[p, 0]) for p, k in enumerate(keys)}
            out["matched"] = {k: int(est.matched[p]) for p, k in enumerate(keys)}
    return out


# ----------------------------------------------------------------------------- peer side (obp venv)


def peer(npz_path: str, out_path: str) -> None:
    """Runs inside the throwaway venv: obp's estimators on the arrays of ``inputs.npz``."""
    import importlib.metadata as md
    import warnings

    warnings.filterwarnings("ignore")
    import obp
    from obp.ope import (DoublyRobust, InverseProbabilityWeighting,
                         SelfNormalizedInverseProbabilityWeighting)

    z = np.load(npz_path)
    reward, item, position, pscore = z["reward"], z["item"], z["position"], z["pscore"]
    top, keys = z["top"], [str(a) for a in z["actions"]]
    P, n, L = top.shape
    N = z["qhat_grid"].shape[1]
    rows = np.arange(n)
    q3 = {name: np.repeat(z[f"qhat_{name}"][:, :, None], L, axis=2) for name in ("grid", "raw")}
    out: dict = {e: {} for e in ESTIMATORS}
    out["matched"] = {}
    for p, a in enumerate(keys):
        action_dist = np.zeros((n, N, L))
        action_dist[rows[:, None], top[p], np.arange(L)[None, :]] = 1.0
        kw = dict(reward=reward, action=item, position=position, pscore=pscore,
                  action_dist=action_dist)
        out["ips"][a] = float(InverseProbabilityWeighting().estimate_policy_value(**kw))
        out["snips"][a] = float(
            SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(**kw))
        for name in ("grid", "raw"):
            out[f"dr_{name}"][a] = float(DoublyRobust().estimate_policy_value(
                estimated_rewards_by_reg_model=q3[name], **kw))
        out["matched"][a] = int(action_dist[rows, item, position].sum())
    versions = {"python": sys.version.split()[0], "obp": obp.__version__}
    for pkg, dist in (("numpy", "numpy"), ("scipy", "scipy"), ("sklearn", "scikit-learn"),
                      ("pandas", "pandas"), ("torch", "torch")):
        versions[pkg] = md.version(dist)
    out["versions"] = versions
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)


# ----------------------------------------------------------------------------- driver


def _run(cmd: list[str], log) -> None:
    print("+", " ".join(cmd), file=log, flush=True)
    subprocess.run(cmd, check=True)


def make_peer_venv(path: str, log) -> str:
    """Create (or reuse, when it carries MARKER and imports obp) the throwaway venv; its python."""
    py = os.path.join(path, "bin", "python")
    if os.path.exists(os.path.join(path, MARKER)) and os.path.exists(py):
        ok = subprocess.run([py, "-W", "ignore", "-c", "import obp.ope"],
                            capture_output=True).returncode == 0
        if ok:
            print(f"reusing venv {path}", file=log)
            return py
    if os.path.exists(path) and os.listdir(path) and not os.path.exists(os.path.join(path, MARKER)):
        raise SystemExit(f"--venv {path} exists and was not made by this script; choose another")
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", "--clear", path], log)
    open(os.path.join(path, MARKER), "w").close()
    pip = [py, "-m", "pip", "install", "-q"]
    _run(pip + ["--no-deps", f"obp=={OBP_VERSION}"], log)
    _run(pip + list(PEER_DEPS), log)
    return py


def table(ours: dict, theirs: dict) -> tuple[str, bool]:
    """The agreement table and whether every pair is within tolerance."""
    lines = [f"{'action':>6} {'weights':>26} {'matched':>7}  {'estimator':<8} {'ours':>22} "
             f"{'obp':>22} {'|diff|':>9} {'rel':>9}"]
    ok = True
    W = ours["_weights"]
    for a in sorted(ours["ips"], key=int):
        w = "(" + ", ".join(f"{x:.4g}" for x in W[a]) + ")"
        for e in ESTIMATORS:
            mine, peer_v = ours[e][a], theirs[e][a]
            both_nan = np.isnan(mine) and np.isnan(peer_v)
            diff = 0.0 if both_nan else abs(mine - peer_v)
            rel = 0.0 if both_nan or diff == 0 else diff / max(abs(peer_v), 1e-300)
            good = both_nan or diff <= TOL[e][0] * abs(peer_v) + TOL[e][1]
            ok &= bool(good) and ours["matched"][a] == theirs["matched"][a]
            lines.append(f"{a:>6} {w:>26} {ours['matched'][a]:>7}  {e:<8} {mine:>22.17g} "
                         f"{peer_v:>22.17g} {diff:>9.2e} {rel:>9.2e}{'' if good else '  FAIL'}")
    return "\n".join(lines), ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", help="throwaway venv folder (default: a new temp folder)")
    ap.add_argument("--keep-venv", action="store_true", help="do not delete the venv at the end")
    ap.add_argument("--workdir", help="where inputs.npz / obp.json go (default: a temp folder)")
    ap.add_argument("--emit-test-table", action="store_true",
                    help="print the OBP_VALUES literal for tests/test_obp_agreement.py")
    ap.add_argument("mode", nargs="?", default="compare", choices=("compare", "peer"))
    ap.add_argument("peer_args", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mode == "peer":
        peer(*args.peer_args)
        return 0

    t0 = time.time()
    log = sys.stderr
    workdir = args.workdir or tempfile.mkdtemp(prefix="obp-agreement-")
    os.makedirs(workdir, exist_ok=True)
    inputs = build_inputs(workdir)
    npz = os.path.join(workdir, "inputs.npz")
    np.savez_compressed(npz, **{k: inputs[k] for k in ("reward", "item", "position", "pscore",
                                                        "actions", "top", "qhat_grid",
                                                        "qhat_raw")})
    ours = our_estimates(inputs)
    ours["_weights"] = {str(a): w for a, w in zip(inputs["actions"], inputs["weights"])}
    t_ours = time.time() - t0

    venv = args.venv or tempfile.mkdtemp(prefix="obp-agreement-venv-")
    throwaway = not args.keep_venv and (args.venv is None or not os.path.exists(venv))
    t1 = time.time()
    try:
        py = make_peer_venv(venv, log)
        t_venv = time.time() - t1
        t2 = time.time()
        out_json = os.path.join(workdir, "obp.json")
        _run([py, "-W", "ignore", os.path.abspath(__file__), "peer", npz, out_json], log)
        t_peer = time.time() - t2
    finally:
        if throwaway or (not args.keep_venv and os.path.exists(os.path.join(venv, MARKER))):
            shutil.rmtree(venv, ignore_errors=True)
    with open(out_json) as f:
        theirs = json.load(f)

    text, ok = table(ours, theirs)
    print(f"OBD sample (obp {OBP_VERSION} package files), {len(inputs['reward'])} rows, "
          f"{int(inputs['reward'].sum())} clicks; peer versions {theirs['versions']}")
    print(text)
    print(f"timing: project side {t_ours:.1f} s, venv {t_venv:.1f} s, obp {t_peer:.1f} s, "
          f"total {time.time() - t0:.1f} s; inputs.npz and obp.json in {workdir}")
    if args.emit_test_table:
        print("OBP_VALUES = {  # action: (matched, ips, snips, dr_grid, dr_raw)")
        for a in sorted(theirs["ips"], key=int):
            vals = ", ".join(repr(theirs[e][a]) for e in ("matched",) + ESTIMATORS)
            print(f"    {a}: ({vals}),")
        print("}")
    print("AGREE" if ok else "DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
