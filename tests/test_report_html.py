"""frontier.html: self-contained (no external resources), well-formed, and carrying every number,
verdict, the operating point, the warnings and the provenance of the frontier document."""

import html.parser
import os

import numpy as np
import pytest

from puts_jax import pareto, report, report_html

VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr", "source"}


class Page(html.parser.HTMLParser):
    """Collects table rows (attributes, cell texts), all text, every attribute, and checks that
    every non-void element is closed in order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.rows, self.attrs, self.text, self.tags = [], [], [], [], set()
        self._cell = None

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs += attrs
        if tag == "tr":
            self.rows.append((dict(attrs), []))
        if tag in ("td", "th"):
            self._cell = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs += attrs

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1][1].append(" ".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    p.close()
    assert p.stack == [], f"unclosed elements {p.stack}"
    return p


def _point_rows(page: Page) -> dict:
    """{point index: the row's cell texts joined}."""
    return {int(a["data-index"]): " ".join(c) for a, c in page.rows
            if "point" in a.get("class", "").split()}


def _est(v, half):
    v = np.asarray(v, np.float64)
    return {"value": v, "lo": v - half, "hi": v + half}


def _doc(tmp_path, op=True, nan=False):
    lam = np.array([[1.0, 0.0], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [0.0, 1.0]])
    v = np.array([[0.30, 0.10], [0.29, 0.15], [0.20, 0.12], [0.25, 0.18], [0.20, 0.20]])
    snips = _est(v, 0.01)
    if nan:
        snips["value"][4, 0] = np.nan
    pts = {"names": [f"lambda=({a:.2f}, {b:.2f})" for a, b in lam],
           "estimates": {"snips": snips, "ips": _est(v * 1.01, 0.02), "exact": _est(v, 0.03)},
           "n": 1000, "matched": [120, 130, 0, 125, 110], "ess": [118.0, 125.0, 0.0, 20.0, 100.0]}
    def one(val, name):
        return {"names": [name], "estimates": {"snips": _est([val], 0.01)}, "n": 1000,
                "matched": 1000, "ess": 1000.0}
    base = {"logging": one([0.22, 0.15], "uniform <logging>"),
            "production": one([0.22, 0.17], "action 1"),
            "actions": {"names": ["action 0", "action 1", "action 2"],
                        "estimates": {"snips": _est(np.array([[0.28, 0.09], [0.22, 0.17],
                                                              [0.15, 0.19]]), 0.01)},
                        "n": 1000, "matched": [333, 333, 334], "ess": [333.0, 333.0, 334.0]}}
    sel = pareto.select_operating_point(v, snips["lo"], snips["hi"], 0, [(1, 0.0, 0.15)],
                                        names=pts["names"]) if op else None
    data = tmp_path / "log.parquet"
    data.write_bytes(b"rows")
    prov = report.make_provenance([str(data)], 1000, 200, "abc123", seed=7)
    doc = report.build_frontier(lam, pts, objective_names=("click", "save"), provenance=prov,
                                baselines=base, operating_point=sel)
    doc["points"]["matched_rewards"] = [[36.0, 12.0], [38.0, 19.0], [0.0, 0.0], [31.0, 22.0],
                                        [22.0, 22.0]]
    return doc


def _fmt(x):
    return "\u2014" if x is None else f"{x:.4f}"


def test_page_is_self_contained_and_has_every_number(tmp_path):
    doc = _doc(tmp_path)
    paths = report.write_frontier(str(tmp_path / "out"), doc)
    assert set(paths) == {"json", "png", "html"}
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".tmp")]
    text = open(paths["html"], encoding="utf-8").read()
    page = _parse(text)
    # No network: no http(s) anywhere, no scripts or external stylesheets, only in-page references.
    assert "http://" not in text and "https://" not in text and "@import" not in text
    assert not page.tags & {"script", "link", "img", "iframe", "object", "embed"}
    for name, value in page.attrs:
        if name in ("href", "src", "xlink:href"):
            assert value.startswith("#"), (name, value)
    assert text.count("url(") == text.count("url(#")
    assert "svg" in page.tags and text.count("<svg") == 2
    ids = [v for k, v in page.attrs if k == "id"]
    assert len(ids) == len(set(ids)), "two figures share an element id"
    alltext = " ".join(page.text)
    assert doc["verdict"] in alltext
    # Every lambda point: each estimator's value and interval, n, matched, rewards, ESS, verdict.
    rows = _point_rows(page)
    assert sorted(rows) == list(range(5))
    for i, row in rows.items():
        for e, b in doc["estimators"].items():
            for j in range(2):
                for q in ("value", "lo", "hi"):
                    assert _fmt(b[q][i][j]) in row, (i, e, q, j, row)
        assert f"{doc['points']['matched'][i]:,}" in row and "1,000" in row
        assert f"{doc['points']['ess'][i]:,.1f}" in row and doc["verdicts"][i] in row
        assert " / ".join(f"{int(x)}" for x in doc["points"]["matched_rewards"][i]) in row
    # Baselines: every row with its value, escaped names, the best global actions marked.
    base = [" ".join(c) for a, c in page.rows if "baseline" in a.get("class", "")]
    assert len(base) == 5 and any("uniform <logging>" in r and "0.2200" in r for r in base)
    assert "&lt;logging&gt;" in text and "<logging>" not in text
    assert sum("best global action on" in r for r in base) == 2
    assert any("best global action on click (highest snips estimate; 95% intervals disjoint "
               "from the runner-up's (action 1))" in r for r in base)
    # Operating point (index 3): starred row, its own section, the star in the frontier plot.
    op = doc["operating_point"]["index"]
    assert op == 3 and "\u2605" in rows[op]
    assert [a["data-index"] for a, _ in page.rows if "op" in a.get("class", "").split()] == ["3"]
    assert "Operating point: lambda=(0.25, 0.75)" in alltext
    assert "operating point" in text[text.index('<svg'):text.index('</svg>')]
    for w in doc["warnings"]:
        assert w in alltext
    assert "abc123" in alltext and report.file_sha256(str(tmp_path / "log.parquet")) in alltext
    assert 'class="verdict ok"' in text or 'class="verdict caution"' in text


def test_no_operating_point_nan_and_caution(tmp_path):
    doc = _doc(tmp_path, op=False, nan=True)
    close = {"names": ["a", "b"], "estimates": {"snips": _est([[0.2, 0.1], [0.21, 0.11]], 0.5)},
             "n": 10, "matched": 2, "ess": 2.0}
    doc2 = report.build_frontier(np.array([[1.0, 0.0], [0.0, 1.0]]), close,
                                 objective_names=("click", "save"), provenance=doc["provenance"])
    for d, cls in ((doc, None), (doc2, "caution")):
        svg = report_html.figure_svg(report.frontier_figure(d), "f-")
        text = report_html.render_html(d, svg)
        page = _parse(text)
        alltext = " ".join(page.text)
        assert "none selected" in alltext
        assert not [c for a, c in page.rows
                    if "\u2605" in " ".join(c) or "op" in a.get("class", "").split()]
        assert "http://" not in text and "https://" not in text
        if cls:
            assert f'class="verdict {cls}"' in text and "cannot tell" in alltext
            assert "effective sample size 2.0" in alltext
    rows = _point_rows(_parse(report_html.render_html(doc, "<svg></svg>")))
    assert "not estimable" in rows[4] and "\u2014" in rows[4]


def test_page_is_deterministic(tmp_path):
    doc = _doc(tmp_path)
    a = report_html.render_html(doc, report_html.figure_svg(report.frontier_figure(doc), "f-"))
    b = report_html.render_html(doc, report_html.figure_svg(report.frontier_figure(doc), "f-"))
    assert a == b


@pytest.mark.parametrize("J", [1, 3])
def test_other_objective_counts_render(tmp_path, J):
    rng = np.random.default_rng(J)
    v = rng.uniform(size=(4, J))
    lam = np.full((4, J), 1.0 / J)
    pts = {"names": [f"p{i}" for i in range(4)], "estimates": {"ips": _est(v, 0.01)}, "n": 50,
           "matched": 10, "ess": 9.0}
    doc = report.build_frontier(lam, pts, objective_names=[f"o{j}" for j in range(J)],
                                provenance=_doc(tmp_path)["provenance"], reference=[0.0] * J)
    path = report.write_frontier(str(tmp_path / f"j{J}"), doc)["html"]
    page = _parse(open(path, encoding="utf-8").read())
    assert len([a for a, _ in page.rows if "point" in a.get("class", "")]) == 4
