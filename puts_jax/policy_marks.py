"""The marks on a frontier's files (``operating_point``, ``selected_point``; ``report.place_mark``)
that ``puts-jax policy`` keeps true: ``select --out`` marks a selection ("selected, not
published", ``mark_selection``); after publish, set-lambda and rollback (``sync_marks``) the
frontier the new CURRENT was published from marks it as the published operating point, with its
version and registry, when its lambda is a point there and the frontier is the one it was
published from (same ``frontier_sha256``), and the frontier of the version current before drops
its mark. The change to the registry is made first: a frontier that cannot be read or
rewritten is a note on stdout, never a failure.
"""

from __future__ import annotations

import os

import numpy as np

from puts_jax import report
from puts_jax.checks import InputError
from puts_jax.cli_checks import print_line as _print
from puts_jax.policy_checks import frontier_sha256, readable_lambda
from puts_jax.registry_files import _read_policy_json, read_audit


def mark_selection(frontier: str, doc: dict, sel: dict) -> None:
    """``select --out``: mark ``sel`` on frontier.json/png/html as a selection, not published
    (``report.place_mark``: below a published operating point, as the ``selected_point``)."""
    mark = {**{k: sel[k] for k in ("index", "reason", "lambda", "name")}, "status": "selected"}
    why = _rewrite(frontier, report.place_mark(doc, mark))
    if why:
        _print(f"note: the operating point is not marked on {frontier} ({why}); the selection "
               "is written")


def _rewrite(frontier: str, doc: dict) -> str | None:
    """Rewrite the frontier set of ``frontier`` from ``doc`` (``report.write_frontier``, all or
    nothing); None when done, else why not (a read-only folder, a file named otherwise)."""
    if os.path.basename(frontier) != "frontier.json":
        return "its file is not named frontier.json, so its set cannot be rewritten"
    try:
        report.write_frontier(os.path.dirname(os.path.abspath(frontier)), doc)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


def sync_marks(registry: str) -> None:
    """After publish, set-lambda or rollback: the frontier the new CURRENT was published from
    (its policy.json ``source.frontier``, when its ``frontier_sha256`` still matches and the
    lambda is a point there) marks it as the published operating point; the frontier of the
    version current before no longer marks that one. One line each on stdout; the change is
    made, so a frontier that cannot be read or rewritten is a note, never a failure."""
    reg, lines = os.path.abspath(registry), []
    try:
        entry = read_audit(registry)[-1]
        cur, before = entry["current_after"], entry.get("current_before")
        metas = {cur: _read_policy_json(os.path.join(registry, cur, "policy.json"))}
        if before and before != cur:
            try:  # an unreadable earlier version: only its frontier is not unmarked
                metas[before] = _read_policy_json(os.path.join(registry, before, "policy.json"))
            except (InputError, OSError):
                pass
        src = metas[cur].get("source") or {}
        for path in dict.fromkeys((m.get("source") or {}).get("frontier") for m in
                                  metas.values()):
            if not path or not os.path.isfile(path):
                continue
            report.recover_frontier(os.path.dirname(path))
            doc = report.read_frontier(path)
            i = _point_of(doc, metas[cur]["lambda"]) if path == src.get("frontier") and \
                src.get("frontier_sha256") == frontier_sha256(doc) else None
            old = (doc.get("operating_point") or {}).get("version")
            if i is not None:
                new = report.place_mark(doc, _published_mark(doc, i, cur, reg, metas[cur]))
                done = f"marked {cur} as the operating point on {path} (lambda " \
                       f"{readable_lambda(doc['lambdas'][i])})"
            else:
                new = report.unmark_published(doc, reg)
                done = f"{path} no longer marks {old} as the operating point (CURRENT is {cur}," \
                       " not a point of it)"
            if new != doc:
                why = _rewrite(path, new)
                lines.append(done if why is None else f"note: the operating point is not "
                             f"updated on {path} ({why}); the change above is made")
    except Exception as e:  # noqa: BLE001 - the change is made; the marks are a courtesy
        why = (str(e).strip().splitlines() or [""])[0][:200]
        lines.append(f"note: the operating point is not updated on the frontier "
                     f"({type(e).__name__}: {why}); the change above is made")
    for line in lines:
        _print(line)


def _point_of(doc: dict, lam) -> int | None:
    """The index of the frontier point whose lambda is ``lam`` at float32 precision, or None."""
    want = np.asarray(lam, np.float32)
    for i, x in enumerate(doc["lambdas"]):
        if np.asarray(x, np.float32).shape == want.shape and np.array_equal(
                np.asarray(x, np.float32), want):
            return i
    return None


def _published_mark(doc: dict, i: int, version: str, registry: str, meta: dict) -> dict:
    """The ``operating_point`` of version ``version`` (its policy.json ``meta``) at point i."""
    why = ((meta.get("frontier_point") or {}).get("selection") or {}).get("reason")
    return {"index": i, "lambda": doc["lambdas"][i], "name": doc["points"]["names"][i],
            "reason": why or f"{meta.get('action')}: {meta.get('reason')}",
            "status": "published", "version": version, "registry": registry}
