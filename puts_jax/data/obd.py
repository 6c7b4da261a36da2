"""Open Bandit Dataset (ZOZOTOWN, Saito et al. 2021) -> puts_jax exploration log and request set.

Each OBD row is one (request, slot) observation: an item shown at a position (1-based in the file,
0-based here), a click, and the logging policy's per-position propensity (uniform random: 1/N for
N items). The conversion gives every row the N items as candidates with K = 3 ranker heads:

  p_click         posterior mean alpha / (alpha + beta) of the production Bernoulli Thompson
                  sampling prior (``obp/policy/conf/prior_bts.yaml``, the campaign's section),
                  min-max scaled to [0, 1] over the N items;
  affinity        the row's user-item affinity of the item divided by ``AFFINITY_SCALE`` (no other
                  scaling: values can exceed 1 in the men/women campaigns);
  item_feature_0  min-max scaled to [0, 1] over the N items.

The action set is a simplex grid over the three heads. An action ranks the items by
``W[a] . preds`` (float64 over the stored float32 values, ties to the lower item_id) and shows the
top ``OBD_POSITIONS``; a row is CONSISTENT with the action when that ranking puts the logged item
at the logged position (slot-level matching, DESIGN.md section 4), and ``propensity`` is the
file's ``propensity_score``, the logging probability of that (item, position) decision.

Most rows are consistent with no action: ``action`` is then ``logs.OUTSIDE_ACTION`` (-1, "the
logged decision is outside the action set"), otherwise the lowest consistent action. Such rows stay
in the log (they are the zero terms of IPS); the extra columns ``item_id`` and ``position``
(0-based) are kept for audits.

Context: one-hots of user_feature_0..3 over the categorical values seen in the file (sorted; kept
in the metadata ``extra`` so that another file converts with the same columns), then the N raw
affinity columns. Rewards (J = 2): click, and click x (item_feature_0 - min over items + 1).

The package files are found with ``importlib.util.find_spec("obp")``; obp itself is never imported.
Reading and validating the CSVs and the prior is ``obd_files``'s part (re-exported here:
``read_obd``, ``read_items``, ``obd_paths``); this module builds the heads, context, rewards and
the slot matching, and writes the files.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from puts_jax import staging
from puts_jax.action_set import ActionSet, atomic_write_text, simplex_grid
from puts_jax.checks import InputError
from puts_jax.data import logs
from puts_jax.data.obd_files import OBD_POSITIONS, ObdData, obd_paths, read_items, read_obd

__all__ = ["AFFINITY_SCALE", "HEAD_NAMES", "OBD_POSITIONS", "OUTSIDE_ACTION", "REWARD_KINDS",
           "REWARD_NAMES", "ObdData", "build_meta", "build_preds", "build_rewards",
           "consistent_mask", "convert_obd", "encode_context", "minmax", "obd_paths", "rank_items",
           "read_items", "read_obd"]

HEAD_NAMES = ("p_click", "affinity", "item_feature_0")
REWARD_NAMES = ("click", "click_x_item_value")
REWARD_KINDS = ("binary", "real")
AFFINITY_SCALE = 3.0
OUTSIDE_ACTION = logs.OUTSIDE_ACTION  # logged decision matches no action of the action set
_CHUNK_ROWS = 4096
FILES = {"logs": "logs.parquet", "requests": "requests.parquet", "summary": "obd_summary.json"}
STAGING = ".obd-staging"  # the set is written here inside out_dir, then moved in (``staging``)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- ranker heads, context, rewards


def minmax(x: np.ndarray) -> np.ndarray:
    """Min-max scale f[N] to [0, 1]; a constant vector maps to zeros."""
    x = np.asarray(x, np.float64)
    lo, hi = (x.min(), x.max()) if x.size else (0.0, 0.0)
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def build_preds(data: ObdData) -> np.ndarray:
    """Ranker predictions f32[B, N, K=3]: (scaled BTS posterior mean, affinity / AFFINITY_SCALE,
    scaled item_feature_0) per (row, item)."""
    p_click = minmax(data.alpha / (data.alpha + data.beta))
    f0 = minmax(data.item_feature_0)
    B, N = data.affinity.shape
    preds = np.empty((B, N, 3), np.float32)
    preds[:, :, 0] = p_click[None, :]
    preds[:, :, 1] = data.affinity / AFFINITY_SCALE
    preds[:, :, 2] = f0[None, :]
    return preds


def encode_context(user_features: list, affinity: np.ndarray,
                   categories: dict[str, list[str]] | None = None):
    """Dense context f32[B, D]: one-hots of user_feature_0..3, then the raw affinity columns.

    ``categories`` (feature name -> sorted values, from an earlier file's metadata) fixes the
    one-hot columns; None uses the sorted values seen here. A value outside ``categories`` gets an
    all-zero block and is counted.
    Returns (context, categories, context_names, unseen: dict feature -> rows with unseen values).
    """
    names = [f"user_feature_{j}" for j in range(len(user_features))]
    if categories is None:
        categories = {n: sorted(set(v.tolist())) for n, v in zip(names, user_features)}
    blocks, col_names, unseen = [], [], {}
    for name, values in zip(names, user_features):
        cats = list(categories[name])
        lookup = {c: i for i, c in enumerate(cats)}
        idx = np.array([lookup.get(v, -1) for v in values.tolist()], np.int64)
        onehot = (idx[:, None] == np.arange(len(cats))[None, :]).astype(np.float32)
        blocks.append(onehot)
        col_names += [f"{name}={c}" for c in cats]
        unseen[name] = int((idx < 0).sum())
    blocks.append(np.asarray(affinity, np.float32))
    col_names += [f"user-item_affinity_{i}" for i in range(affinity.shape[1])]
    return np.concatenate(blocks, axis=1), categories, col_names, unseen


def build_rewards(data: ObdData) -> np.ndarray:
    """Rewards f32[B, 2]: click, and click x (item_feature_0[item] - min over items + 1)."""
    value = data.item_feature_0 - data.item_feature_0.min() + 1.0
    click = data.click.astype(np.float64)
    return np.stack([click, click * value[data.item_id]], axis=1).astype(np.float32)


# ---------------------------------------------------------------- rankings and slot matching


def rank_items(preds: np.ndarray, w: np.ndarray, k: int = OBD_POSITIONS) -> np.ndarray:
    """Item indices i64[k] of the top k under weights ``w: f[K]`` for one request's
    ``preds: f[N, K]``: score = w . preds (float64), ties to the lower item index. Reference."""
    s = np.asarray(preds, np.float64) @ np.asarray(w, np.float64)
    return np.lexsort((np.arange(len(s)), -s))[:k]


def consistent_mask(preds: np.ndarray, W: np.ndarray, item: np.ndarray, position: np.ndarray,
                    chunk_rows: int = _CHUNK_ROWS) -> np.ndarray:
    """bool[B, A]: True where action a's ranking of ``preds: f[B, N, K]`` (weights ``W: f[A, K]``,
    float64 scores, ties to the lower item index) puts ``item[b]`` at 0-based ``position[b]``.

    The logged item's rank is the number of items scoring higher plus the number of lower-index
    items scoring equal, so no sort is needed; rows are processed in chunks to bound memory.
    """
    B, N, _ = preds.shape
    W64 = np.asarray(W, np.float64)
    out = np.zeros((B, W64.shape[0]), bool)
    for lo in range(0, B, chunk_rows):
        hi = min(lo + chunk_rows, B)
        s = np.einsum("bnk,ak->ban", preds[lo:hi].astype(np.float64), W64)  # [b, A, N]
        it = item[lo:hi]
        s_item = np.take_along_axis(s, it[:, None, None], axis=2)  # [b, A, 1]
        lower = np.arange(N)[None, None, :] < it[:, None, None]
        rank = (s > s_item).sum(2) + ((s == s_item) & lower).sum(2)
        out[lo:hi] = rank == position[lo:hi, None]
    return out


# ---------------------------------------------------------------- writing


def _logging_policy(behavior: str, n_items: int) -> dict:
    if behavior == "random":
        return {"kind": "uniform_random_slots", "source": "Open Bandit Dataset",
                "propensity": f"1/{n_items} per (item, position)", "n_items": n_items}
    return {"kind": "bernoulli_thompson_sampling", "source": "Open Bandit Dataset",
            "propensity": "file propensity_score per (item, position)", "n_items": n_items}


def build_meta(data: ObdData, campaign: str, behavior: str, grid_steps: int,
               categories: dict, context_names: list[str], hashes: dict) -> logs.LogMeta:
    """LogMeta: the simplex-grid action set over HEAD_NAMES, rewards, and what a later file needs to
    convert consistently (categories, scalings) in ``extra``."""
    aset = simplex_grid(HEAD_NAMES, HEAD_NAMES, grid_steps)
    post = data.alpha / (data.alpha + data.beta)
    f0 = data.item_feature_0
    extra = {"source": "obd", "campaign": campaign, "behavior": behavior,
             "n_items": len(f0), "n_positions": OBD_POSITIONS, "position_base": 0,
             "position_base_in_file": 1, "matching": "slot", "outside_action": OUTSIDE_ACTION,
             "user_feature_categories": categories, "context_names": context_names,
             "heads": {"p_click": {"bts_posterior_mean_min": float(post.min()),
                                   "bts_posterior_mean_max": float(post.max())},
                       "affinity": {"divided_by": AFFINITY_SCALE},
                       "item_feature_0": {"min": float(f0.min()), "max": float(f0.max())}},
             "reward_value": "click * (item_feature_0 - min + 1)", "ranking_ties": "lower item_id",
             "files_sha256": hashes}
    return logs.LogMeta(aset, REWARD_NAMES, REWARD_KINDS, _logging_policy(behavior, len(f0)), extra)


def _summary(data: ObdData, aset: ActionSet, consistent: np.ndarray, action: np.ndarray,
             unseen: dict, meta: logs.LogMeta) -> dict:
    matched = consistent.sum(0)
    clicks = (consistent & (data.click[:, None] == 1)).sum(0)
    per_action = [{"action": a, "weights": aset.weights[a].tolist(), "matched_rows": int(matched[a]),
                   "matched_clicks": int(clicks[a])} for a in range(aset.n_actions)]
    return {"rows": int(len(action)), "clicks": int(data.click.sum()),
            "propensity_values": sorted({float(p) for p in np.unique(data.propensity)}),
            "n_items": int(len(data.item_feature_0)), "K": len(HEAD_NAMES), "A": aset.n_actions,
            "J": len(REWARD_NAMES), "campaign": meta.extra["campaign"],
            "behavior": meta.extra["behavior"],
            "rows_consistent_with_some_action": int((action >= 0).sum()),
            "rows_outside_action_set": int((action < 0).sum()),
            "matched_rows": {"min": int(matched.min()), "median": float(np.median(matched)),
                             "max": int(matched.max())},
            "per_action": per_action, "unseen_categories": unseen,
            "action_set_hash": aset.hash(), "files_sha256": meta.extra["files_sha256"]}


MAX_GRID_STEPS = 14  # C(16, 2) = 120 actions: see ``check_grid_steps``


def check_grid_steps(grid_steps: int) -> None:
    """InputError("grid_steps") unless 1 <= ``grid_steps`` <= ``MAX_GRID_STEPS``. The grid over
    the 3 heads has A = C(steps + 2, 2) actions (14 -> 120): the sweep's fused argmax unrolls up
    to 128 actions (``kernels._UNROLL_MAX_A``), every log row stores a bool[A] ``consistent``
    list, the conversion scores f64[4096, A, N] per chunk (315 MB at 120 actions and OBD's 80
    items) and builds the grid from (steps + 1)^3 candidates; and on OBD's 3 shown slots a finer
    grid only thins each action's matched rows. ``--grid-steps 100000`` ran without end."""
    if not 1 <= grid_steps <= MAX_GRID_STEPS:
        raise InputError("grid_steps", [], f"must be in [1, {MAX_GRID_STEPS}] (the grid has "
                         f"(steps + 1)(steps + 2)/2 actions: {MAX_GRID_STEPS} gives "
                         f"{(MAX_GRID_STEPS + 1) * (MAX_GRID_STEPS + 2) // 2}), got {grid_steps}")


def convert_obd(out_dir: str, data_root: str | None = None, campaign: str = "all",
                behavior: str = "random", grid_steps: int = 4, *,
                categories: dict[str, list[str]] | None = None) -> dict[str, str]:
    """Convert an OBD campaign into ``out_dir``/logs.parquet (exploration log), requests.parquet
    (request set, the N items as candidates) and obd_summary.json.

    Args:
      data_root: None for the 10,000-row sample shipped with obp, or the full dataset's root
        (``<root>/<behavior>/<campaign>/<campaign>.csv`` and ``item_context.csv``).
      campaign: "all", "men" or "women"; behavior: "random" (uniform logging) or "bts".
      grid_steps: simplex grid resolution over the 3 heads (4 -> 15 actions).
      categories: user-feature categories from an earlier conversion's ``meta.extra`` so that
        this file's context has the same columns; None uses the values seen in this file.
    The three files are written as one set (``staging.publish``): after an error, a full disk
    or Ctrl-C ``out_dir`` keeps its earlier files and nothing of the new set.
    Returns: {"logs": path, "requests": path, "summary": path}.
    Raises: InputError naming the column and the data rows of malformed CSVs, or ``grid_steps``
      outside [1, ``MAX_GRID_STEPS``] (before anything is read).
    """
    check_grid_steps(grid_steps)
    data, paths = read_obd(data_root, campaign, behavior)
    preds = build_preds(data)
    context, categories, names, unseen = encode_context(data.user_features, data.affinity,
                                                        categories)
    hashes = {k: _sha256(p) for k, p in paths.items()}
    meta = build_meta(data, campaign, behavior, grid_steps, categories, names, hashes)
    aset = meta.action_set
    consistent = consistent_mask(preds, aset.weights, data.item_id, data.position)
    action = np.where(consistent.any(1), consistent.argmax(1), OUTSIDE_ACTION).astype(np.int32)
    rid = np.arange(len(action), dtype=np.int64)
    summary = _summary(data, aset, consistent, action, unseen, meta)
    N = preds.shape[1]

    def write(stage: str) -> None:  # the three files into the staging folder
        logs.write_log(os.path.join(stage, FILES["logs"]), meta, request_id=rid, context=context,
                       action=action, propensity=data.propensity, rewards=build_rewards(data),
                       consistent=consistent, preds=preds,
                       extra_columns={"item_id": data.item_id.astype(np.int64),
                                      "position": data.position.astype(np.int32)})
        logs.write_requests(os.path.join(stage, FILES["requests"]), meta, request_id=rid,
                            context=context, preds=preds, candidate_ids=np.broadcast_to(
                                np.arange(N, dtype=np.int64), (len(rid), N)))
        atomic_write_text(os.path.join(stage, FILES["summary"]), json.dumps(summary, indent=1))
    staging.publish(staging.Target(out_dir, STAGING, "the converted data set",
                                   f"the next 'data obd' into {out_dir}"),
                    list(FILES.values()), write)
    return {k: os.path.join(out_dir, f) for k, f in FILES.items()}
