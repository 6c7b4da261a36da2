"""Host-side validation. Every error names the field and the first bad rows.

These run on numpy inputs before anything is compiled or written; kernels assume valid input.
"""

from __future__ import annotations

import os

import numpy as np

# Rows of a probability table must sum to 1 within this absolute tolerance (PITFALLS P1).
PROB_SUM_TOL = 1e-6
_MAX_ROWS_SHOWN = 10


class InputError(ValueError):
    """Bad input: ``field`` names the column or argument, ``rows`` the offending row indices,
    ``source`` (optional) the file or flag the input came from; the message reads
    ``[SOURCE: ]FIELD: MSG[ at rows [...]]``."""

    def __init__(self, field: str, rows, msg: str, source: str | None = None):
        self.field, self.msg, self.source = field, msg, source
        self.rows = [int(r) for r in rows]
        shown = self.rows[:_MAX_ROWS_SHOWN]
        more = "" if len(self.rows) <= _MAX_ROWS_SHOWN else f" (+{len(self.rows) - len(shown)} more)"
        where = f" at rows {shown}{more}" if self.rows else ""
        super().__init__(f"{source + ': ' if source else ''}{field}: {msg}{where}")

    def in_source(self, source: str) -> "InputError":
        """This error naming ``source`` (e.g. the file being read); one that already names a
        source is returned as it is."""
        return self if self.source else InputError(self.field, self.rows, self.msg, source)


def bad_rows(bad: np.ndarray) -> np.ndarray:
    """Indices of rows (axis 0) where ``bad`` has any True entry."""
    bad = np.asarray(bad)
    if bad.ndim > 1:
        bad = bad.reshape(bad.shape[0], int(np.prod(bad.shape[1:]))).any(axis=1)  # B = 0 too
    return np.flatnonzero(bad)


def raise_if(bad: np.ndarray, field: str, msg: str, row_offset: int = 0) -> None:
    """Raise InputError naming the rows where ``bad`` (bool[B, ...]) is True."""
    rows = bad_rows(bad)
    if rows.size:
        raise InputError(field, rows + row_offset, msg)


def check_finite(field: str, x: np.ndarray, row_offset: int = 0) -> None:
    """Reject NaN/inf anywhere in ``x`` (rows along axis 0)."""
    raise_if(~np.isfinite(np.asarray(x, dtype=np.float64)), field, "non-finite value", row_offset)


def check_propensity(propensity: np.ndarray, floor: float | None = None,
                     field: str = "propensity", row_offset: int = 0) -> np.ndarray:
    """Validate logging propensities p: f[B] and return them as f64.

    Raises InputError for NaN, p > 1, and p <= 0 (positivity: IPS weights 1/p would be inf).
    With an explicit ``floor`` (documented clipping), p is raised to ``max(p, floor)`` instead of
    rejecting zeros, as in PITFALLS P1(b): floor 0.01 turns p = 0 into weight 100.
    """
    p = np.asarray(propensity, dtype=np.float64)
    raise_if(~np.isfinite(p), field, "non-finite propensity", row_offset)
    raise_if(p > 1.0, field, "propensity above 1", row_offset)
    if floor is not None:
        if not 0.0 < floor <= 1.0:
            raise InputError("floor", [], f"must be in (0, 1], got {floor}")
        return np.maximum(p, floor)
    raise_if(p <= 0.0, field, "propensity must be > 0 (positivity); pass an explicit floor to clip",
             row_offset)
    return p


def check_distribution(probs: np.ndarray, field: str = "action_probs", tol: float = PROB_SUM_TOL,
                       row_offset: int = 0) -> None:
    """Validate a table of per-row probability distributions f[B, A] (PITFALLS P1(a)).

    Rows with a negative or non-finite entry, or whose sum differs from 1 by more than ``tol``,
    are rejected; the error lists all of them.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise InputError(field, [], f"expected f[B, A], got shape {p.shape}")
    bad = (~np.isfinite(p)).any(1) | (p < 0).any(1) | (np.abs(p.sum(1) - 1.0) > tol)
    raise_if(bad, field, f"rows must be non-negative and sum to 1 (tol {tol})", row_offset)


def check_lambda(lam: np.ndarray, field: str = "lambda", tol: float = PROB_SUM_TOL) -> np.ndarray:
    """Validate scalarization coefficients f[J] or f[L, J]: non-negative, summing to 1."""
    lam = np.asarray(lam, dtype=np.float32)
    lam2 = lam.reshape(-1, lam.shape[-1]) if lam.ndim else lam.reshape(1, 1)
    tol = max(tol, 1e-5)
    if lam.ndim > 1:
        check_distribution(lam2, field=field, tol=tol)
        return lam
    try:  # one lambda: its values, not "at rows [0]"
        check_distribution(lam2, field=field, tol=tol)
    except InputError:
        shown = ", ".join(str(v) for v in lam)  # float32 as given: 0.3, not 0.30000001192...
        raise InputError(field, [], f"must be non-negative, finite and sum to 1 (tol {tol}), "
                         f"got [{shown}]") from None
    return lam


def check_index(field: str, idx: np.ndarray, size: int, row_offset: int = 0) -> None:
    """Reject integer indices outside [0, size)."""
    idx = np.asarray(idx)
    raise_if((idx < 0) | (idx >= size), field, f"index outside [0, {size})", row_offset)


def check_width(field: str, lengths: np.ndarray, expected: int, row_offset: int = 0) -> None:
    """Reject list rows whose length differs from ``expected``."""
    raise_if(np.asarray(lengths) != expected, field, f"expected length {expected}", row_offset)


def check_unique(field: str, ids: np.ndarray, what: str, row_offset: int = 0) -> None:
    """Reject repeated entries of ``ids`` (i[B]), naming every row that holds a repeated one."""
    ids = np.asarray(ids)
    order = np.argsort(ids, kind="stable")
    same = ids[order][1:] == ids[order][:-1]
    if same.any():
        mark = np.zeros(len(ids), bool)
        mark[1:] |= same
        mark[:-1] |= same
        example = ids[order][1:][same][0]
        raise InputError(field, np.sort(order[mark]) + row_offset,
                         f"repeated {what} (e.g. {example})")


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def check_distinct_paths(outputs: dict[str, str], inputs: dict[str, str] | None = None) -> None:
    """Reject an output path that names the same file as an input or another output, before
    anything is written (its atomic rename would replace that file). Keys name the flags or
    arguments, e.g. {"--out": path}; paths are compared resolved (symlinks, ``..``) and, where
    both exist, as files (hard links). Raises InputError naming both keys."""
    named = list(outputs.items())
    for i, (out_name, out) in enumerate(named):
        for other_name, other in [*named[i + 1:], *(inputs or {}).items()]:
            if _same_file(out, other):
                raise InputError(f"{out_name} and {other_name}", [], f"both name {out}; an output "
                                 "must not replace an input or another output (nothing written)")
