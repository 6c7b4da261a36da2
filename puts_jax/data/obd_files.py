"""Reading and validating the Open Bandit Dataset's files (Saito et al. 2021): the log CSV, the
item CSV and obp's production BTS prior (``obp/policy/conf/prior_bts.yaml``), as host numpy.

Errors name the column and the data rows (0-based, header excluded). The package files are found
with ``importlib.util.find_spec("obp")``; obp itself is never imported. ``obd`` turns the parsed
arrays into an exploration log and a request set.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import yaml

from puts_jax import checks
from puts_jax.checks import InputError

OBD_POSITIONS = 3  # slots shown per impression in ZOZOTOWN's OBD (positions 1..3 in the file)
# A uniform-random file's propensity_score must equal 1/N within this relative tolerance.
PROPENSITY_RTOL = 1e-9
CAMPAIGNS = ("all", "men", "women")
BEHAVIORS = ("random", "bts")
N_USER_FEATURES = 4


# ---------------------------------------------------------------- files


def obp_package_dir() -> str:
    """Folder of the installed obp package, located without importing it."""
    spec = importlib.util.find_spec("obp")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("obp", [], "package not installed: pip install --no-deps obp==0.4.1 "
                         "(its data files are read, the package is never imported)")
    return list(spec.submodule_search_locations)[0]


def obd_paths(data_root: str | None, campaign: str, behavior: str) -> dict[str, str]:
    """Paths of the log CSV, the item CSV and the BTS prior; ``data_root`` None -> the sample
    shipped with obp, else ``<root>/<behavior>/<campaign>/{<campaign>,item_context}.csv``.
    A ``data_root`` that is no folder or lacks those files is an InputError("data_root")."""
    if campaign not in CAMPAIGNS:
        raise InputError("campaign", [], f"{campaign!r} not in {CAMPAIGNS}")
    if behavior not in BEHAVIORS:
        raise InputError("behavior", [], f"{behavior!r} not in {BEHAVIORS}")
    if data_root is not None and not os.path.isdir(data_root):
        raise InputError("data_root", [], f"no such directory {data_root}")
    root = data_root or os.path.join(obp_package_dir(), "dataset", "obd")
    folder = os.path.join(root, behavior, campaign)
    paths = {"log": os.path.join(folder, f"{campaign}.csv"),
             "items": os.path.join(folder, "item_context.csv"),
             "prior": os.path.join(obp_package_dir(), "policy", "conf", "prior_bts.yaml")}
    for name, p in paths.items():
        if os.path.isfile(p):
            continue
        if data_root is not None and name != "prior":  # the given root lacks the dataset's file
            raise InputError("data_root", [], f"{data_root} has no {os.path.relpath(p, root)} "
                             "(the Open Bandit Dataset's layout: ROOT/<behavior>/<campaign>/"
                             "<campaign>.csv and item_context.csv)")
        raise InputError(name, [], f"file not found: {p}")
    return paths


def _header(path: str) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def _bad_value_rows(path: str, column: str, dtype) -> list[int]:
    """Data rows (0-based, header excluded) whose ``column`` does not parse as ``dtype``."""
    t = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        include_columns=[column], column_types={column: pa.string()}))
    bad = []
    for i, v in enumerate(t[column].to_pylist()):
        try:
            dtype(v)
        except (TypeError, ValueError):
            bad.append(i)
    return bad


def read_csv_columns(path: str, types: dict[str, pa.DataType]) -> dict[str, np.ndarray]:
    """Read the named columns with fixed types. Errors name the column and the data rows (0-based,
    header excluded): missing column, unparsable value, empty cell."""
    header = _header(path)
    missing = [c for c in types if c not in header]
    if missing:
        raise InputError(missing[0], [], f"column missing from {path} (also missing: {missing[1:]})")
    opts = pacsv.ConvertOptions(include_columns=list(types), column_types=types,
                                null_values=[""], strings_can_be_null=True)
    try:
        t = pacsv.read_csv(path, convert_options=opts)
    except pa.ArrowInvalid as e:
        m = re.search(r"column #(\d+)", str(e))
        suspects = [header[int(m.group(1))]] if m and int(m.group(1)) < len(header) else list(types)
        for col in suspects:
            if col in types and types[col] != pa.string():
                py = int if pa.types.is_integer(types[col]) else float
                rows = _bad_value_rows(path, col, py)
                if rows:
                    raise InputError(col, rows, f"not a {types[col]} value in {path}") from e
        raise InputError(suspects[0], [], f"unparsable in {path}: {e}") from e
    out = {}
    for col in types:
        arr = t[col]
        checks.raise_if(np.asarray(arr.is_null()), col, f"empty cell in {path}")
        out[col] = arr.to_numpy(zero_copy_only=False)
    return out


# ---------------------------------------------------------------- parsing and validation


class ObdData(NamedTuple):
    """Parsed, validated OBD arrays (host numpy).

    Fields:
      item_id:        i64[B] logged item.
      position:       i64[B] logged position, 0-based (the file's is 1-based).
      click:          i64[B] in {0, 1}.
      propensity:     f64[B] the file's propensity_score.
      user_features:  4 object (str) arrays [B], user_feature_0..3.
      affinity:       f64[B, N] user-item affinity, column n = item_id n.
      item_feature_0: f64[N] indexed by item_id.
      alpha, beta:    f64[N] the production BTS prior, indexed by item_id.
    """

    item_id: np.ndarray
    position: np.ndarray
    click: np.ndarray
    propensity: np.ndarray
    user_features: list
    affinity: np.ndarray
    item_feature_0: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray


def read_items(path: str) -> np.ndarray:
    """item_feature_0 f64[N] indexed by item_id; item ids must be exactly 0..N-1."""
    cols = read_csv_columns(path, {"item_id": pa.int64(), "item_feature_0": pa.float64()})
    ids, f0 = cols["item_id"], cols["item_feature_0"]
    n = len(ids)
    checks.raise_if((ids < 0) | (ids >= n), "item_id", f"outside [0, {n}) in {path}")
    _, first = np.unique(ids, return_index=True)
    checks.raise_if(~np.isin(np.arange(n), first), "item_id", f"duplicate item id in {path}")
    checks.check_finite("item_feature_0", f0)
    out = np.empty(n, np.float64)
    out[ids] = f0  # join on item_id, not on row order
    return out


def read_prior(path: str, campaign: str, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta) f64[N] of the production BTS prior for ``campaign``, indexed by item_id."""
    with open(path) as f:
        conf = yaml.safe_load(f)
    if not isinstance(conf, dict) or campaign not in conf:
        raise InputError(f"prior_bts.{campaign}", [], f"section missing from {path}")
    ab = []
    for key in ("alpha", "beta"):
        v = np.asarray(conf[campaign].get(key, []), np.float64)
        field = f"prior_bts.{campaign}.{key}"
        if v.shape != (n_items,):
            raise InputError(field, [], f"expected {n_items} values, got {v.shape} in {path}")
        checks.raise_if(~np.isfinite(v) | (v <= 0), field, "must be finite and > 0")
        ab.append(v)
    return ab[0], ab[1]


def read_obd(data_root: str | None = None, campaign: str = "all",
             behavior: str = "random") -> tuple[ObdData, dict[str, str]]:
    """Read and validate one OBD campaign/behavior; returns (data, paths). Errors name the column
    and the data rows (0-based, header excluded)."""
    paths = obd_paths(data_root, campaign, behavior)
    f0 = read_items(paths["items"])
    n = len(f0)
    uf = [f"user_feature_{j}" for j in range(N_USER_FEATURES)]
    aff = [f"user-item_affinity_{i}" for i in range(n)]
    types = {"item_id": pa.int64(), "position": pa.int64(), "click": pa.int64(),
             "propensity_score": pa.float64(), **{c: pa.string() for c in uf},
             **{c: pa.float64() for c in aff}}
    cols = read_csv_columns(paths["log"], types)
    item, pos, click, p = (cols[c] for c in ("item_id", "position", "click", "propensity_score"))
    checks.raise_if((item < 0) | (item >= n), "item_id", f"outside the {n} items of "
                    f"{paths['items']}")
    checks.raise_if((pos < 1) | (pos > OBD_POSITIONS), "position",
                    f"OBD positions are 1-based in [1, {OBD_POSITIONS}]")
    checks.raise_if((click != 0) & (click != 1), "click", "must be 0 or 1")
    checks.check_propensity(p, field="propensity_score")
    if behavior == "random":
        checks.raise_if(~np.isclose(p, 1.0 / n, rtol=PROPENSITY_RTOL, atol=0.0), "propensity_score",
                        f"uniform-random logging needs 1/{n} per position")
    affinity = np.stack([cols[c] for c in aff], axis=1) if n else np.zeros((len(item), 0))
    bad = ~np.isfinite(affinity)
    if bad.any():
        col = int(np.flatnonzero(bad.any(0))[0])
        checks.raise_if(bad[:, col], aff[col], "non-finite value")
    alpha, beta = read_prior(paths["prior"], campaign, n)
    data = ObdData(item_id=item.astype(np.int64), position=(pos - 1).astype(np.int64),
                   click=click.astype(np.int64), propensity=p.astype(np.float64),
                   user_features=[np.asarray(cols[c], dtype=object) for c in uf],
                   affinity=affinity, item_feature_0=f0, alpha=alpha, beta=beta)
    return data, paths
