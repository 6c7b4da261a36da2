"""Results of one suite: a printed table and ``bench/results/<device-kind>/<suite>.json``.

The JSON holds the device and versions (``harness.device_info``), the shapes, the measured
roofline, one record per (case, variant) with compile time, median / p50 / p99 and throughput,
the ratios the issue's targets are stated in (each next to its target and whether it is met),
and free-form notes (what fell back, what was skipped and why).
"""

from __future__ import annotations

import os
from typing import Any

from bench import harness

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


class Report:
    """Accumulates one suite's rows, ratios and notes; prints and writes them."""

    def __init__(self, suite: str, quick: bool, shapes: dict[str, Any] | None = None):
        self.suite = suite
        self.quick = quick
        self.meta: dict[str, Any] = {"suite": suite, "quick": quick, "shapes": shapes or {}}
        self.rows: list[dict[str, Any]] = []
        self.ratios: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.extra: dict[str, Any] = {}

    def add(self, case: str, variant: str, summary: harness.Summary | None = None,
            **fields: Any) -> dict[str, Any]:
        """One (case, variant) record; ``summary`` adds its times in microseconds."""
        row: dict[str, Any] = {"case": case, "variant": variant}
        if summary is not None:
            row.update(summary.as_dict())
        row.update(fields)
        self.rows.append(row)
        return row

    def ratio(self, name: str, value: float, target: float | None = None,
              higher_is_better: bool = True, **fields: Any) -> dict[str, Any]:
        """A ratio measured in this run, with its target (if any) and whether it is met."""
        met = None
        if target is not None and value == value:
            met = value >= target if higher_is_better else value <= target
        r = {"name": name, "value": value, "target": target,
             "direction": ">=" if higher_is_better else "<=", "met": met, **fields}
        self.ratios.append(r)
        return r

    def note(self, text: str) -> None:
        self.notes.append(text)

    # ---------------------------------------------------------------------------------- output

    def payload(self) -> dict[str, Any]:
        return {**self.meta, "device": harness.device_info(), "rows": self.rows,
                "ratios": self.ratios, "notes": self.notes, **self.extra}

    def write(self, root: str | None = None) -> str:
        """Write the JSON to ``<root>/<device-kind>/<suite>.json`` (root defaults to
        bench/results) and return the path."""
        payload = self.payload()
        folder = os.path.join(root or RESULTS_DIR, payload["device"]["device_kind"])
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{self.suite}.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(harness.to_json(payload))
            f.write("\n")
        os.replace(tmp, path)
        return path

    def table(self, columns: list[str] | None = None) -> str:
        """The rows as a fixed-width text table, then the ratios and notes."""
        cols = columns or ["case", "variant", "compile_s", "p50_us", "p99_us", "per_s"]
        lines = [format_table(self.rows, cols)]
        if self.ratios:
            lines.append("")
            lines.append(format_table(
                [{**r, "met": {True: "yes", False: "NO", None: "-"}[r["met"]],
                  "target": "-" if r["target"] is None else f"{r['direction']} {r['target']}"}
                 for r in self.ratios], ["name", "value", "target", "met"]))
        for n in self.notes:
            lines.append(f"note: {n}")
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "nan"
        a = abs(v)
        if a >= 1e5:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows (dicts) as aligned text columns; missing cells print '-'."""
    cells = [[c for c in columns]] + [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    out = []
    for j, row in enumerate(cells):
        out.append("  ".join(c.rjust(w) if j and i > 1 else c.ljust(w)
                             for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


EXPERIMENTAL = ("fused_exp", "fused_native")  # bench-only variants (bench/fast.py, native.cc)


def targets_markdown(folder: str, suites: tuple[str, ...] = ("serve", "sweep", "latency",
                                                                "train"),
                     library_only: bool = True) -> str:
    """A markdown table of every ratio that has a target, from the suite JSONs in ``folder``
    (``bench/results/<device-kind>``), with each suite's run (commit, time, load average,
    quick or full), so the README can show the latest numbers with what made them.
    ``library_only`` leaves out the experimental variants' ratios (``EXPERIMENTAL``).

    Raises FileNotFoundError if ``folder`` holds none of the suites' JSON."""
    import json

    lines = ["| suite | ratio | measured | target | met |", "| --- | --- | --- | --- | --- |"]
    runs, found = [], 0
    for suite in suites:
        path = os.path.join(folder, f"{suite}.json")
        if not os.path.exists(path):
            continue
        found += 1
        with open(path) as f:
            d = json.load(f)
        dev = d.get("device", {})
        load = dev.get("load_avg") or []
        runs.append(f"`{suite}`: commit {dev.get('git_commit')}, {dev.get('time')}, "
                    f"{'--quick' if d.get('quick') else 'full'}, load average "
                    f"{load[0]:.2f}" if load else f"`{suite}`: commit {dev.get('git_commit')}")
        for r in d.get("ratios", []):
            if r.get("target") is None or (
                    library_only and any(e in r["name"] for e in EXPERIMENTAL)):
                continue
            v = r["value"]
            met = {True: "yes", False: "**no**", None: "-"}[r.get("met")]
            shown = "n/a" if v is None else f"{v:.3g}"
            lines.append(f"| {suite} | {r['name']} | {shown} | {r['direction']} {r['target']:g} "
                         f"| {met} |")
    if not found:
        raise FileNotFoundError(f"no suite JSON ({', '.join(suites)}) in {folder}")
    return "\n".join(lines) + "\n\nRuns: " + "; ".join(runs) + "\n"


def replace_between_markers(path: str, name: str, text: str) -> None:
    """Replace what lies between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in the file
    at ``path`` with ``text`` (written atomically). Raises ValueError if a marker is missing."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    with open(path) as f:
        doc = f.read()
    i, j = doc.find(begin), doc.find(end)
    if i < 0 or j < i:
        raise ValueError(f"{path}: markers {begin} ... {end} not found")
    doc = doc[:i + len(begin)] + "\n" + text.rstrip("\n") + "\n" + doc[j:]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(doc)
    os.replace(tmp, path)
