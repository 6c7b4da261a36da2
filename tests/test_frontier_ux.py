"""The frontier as a decision maker reads it: which points the data cannot tell apart from each
nondominated point (frontier.json "within_noise", the table's lines, the page's section), with
hand-computed cases."""

import json
import shutil

import numpy as np
import pytest

from puts_jax import cli, cli_policy, pareto, report, report_html
from conftest import tiny_cli_world


def _est(value, half):
    value = np.asarray(value, np.float64)
    return {"value": value, "lo": value - half, "hi": value + half}


# Six lambdas on J = 2, maximize both, intervals +-0.015: two points are within noise when they
# differ by at most 0.03 on both objectives. Point 1 is dominated by point 2.
LAM = np.array([[1.0, 0.0], [0.8, 0.2], [0.6, 0.4], [0.4, 0.6], [0.2, 0.8], [0.0, 1.0]])
V = np.array([[0.30, 0.10], [0.285, 0.105], [0.29, 0.11], [0.28, 0.12], [0.20, 0.20],
              [0.19, 0.21]])


def _doc(tmp_path, lam=LAM, v=V, half=0.015, op=None):
    data = tmp_path / "log.parquet"
    data.write_bytes(b"x")
    prov = report.make_provenance([str(data)], rows=1000, checkpoint_step=1,
                                  action_set_hash="abc", seed=0)
    pts = {"names": [f"lambda={tuple(x)}" for x in np.asarray(lam).tolist()],
           "estimates": {"snips": _est(v, half)}, "n": 1000, "matched": 100, "ess": 100.0}
    return report.build_frontier(lam, pts, objective_names=("click", "save"), provenance=prov,
                                 operating_point=op)


def test_within_noise_matches_a_pairwise_loop():
    rng = np.random.default_rng(0)
    v = rng.uniform(0, 1, (9, 3))
    half = rng.uniform(0.05, 0.3, (9, 3))
    lo, hi = v - half, v + half
    lo[4, 1] = np.nan  # not estimable: within noise of nothing
    got = pareto.within_noise(lo, hi)
    for p in range(9):
        for q in range(9):
            want = (p != q and p != 4 and q != 4
                    and all(lo[p, j] <= hi[q, j] and lo[q, j] <= hi[p, j] for j in range(3)))
            assert got[p, q] == want, (p, q)
    # the complement of separable_pairs among estimable distinct points
    ok = np.ones(9, bool)
    ok[4] = False
    assert np.array_equal(got, ~pareto.separable_pairs(lo, hi) & ok[:, None] & ok[None, :]
                          & ~np.eye(9, dtype=bool))


def test_frontier_json_lists_the_points_within_noise_of_each_nondominated_point(tmp_path):
    doc = _doc(tmp_path)
    assert doc["nondominated"] == [True, False, True, True, True, True]
    w = doc["within_noise"]
    assert w["estimator"] == "snips" and w["confidence"] == 0.95
    assert w["nondominated"] == [
        {"index": 0, "within_noise_of": [1, 2, 3], "nondominated_within_noise_of": [2, 3]},
        {"index": 2, "within_noise_of": [0, 1, 3], "nondominated_within_noise_of": [0, 3]},
        {"index": 3, "within_noise_of": [0, 1, 2], "nondominated_within_noise_of": [0, 2]},
        {"index": 4, "within_noise_of": [5], "nondominated_within_noise_of": [5]},
        {"index": 5, "within_noise_of": [4], "nondominated_within_noise_of": [4]}]
    assert json.loads(report.dumps(doc))["within_noise"] == w


def test_the_table_names_the_points_within_noise(tmp_path):
    lines = report.within_noise_lines(_doc(tmp_path))
    assert lines == [
        "within noise (the data cannot tell them apart: 95% intervals of the snips estimates "
        "overlap on every objective), per nondominated point:",
        "    (1, 0): 2 of 4 other nondominated: (0.6, 0.4), (0.4, 0.6); of all points, 3 of 5 "
        "others: all but (0.2, 0.8), (0, 1)",
        "    (0.6, 0.4): 2 of 4 other nondominated: (1, 0), (0.4, 0.6); of all points, 3 of 5 "
        "others: all but (0.2, 0.8), (0, 1)",
        "    (0.4, 0.6): 2 of 4 other nondominated: (1, 0), (0.6, 0.4); of all points, 3 of 5 "
        "others: all but (0.2, 0.8), (0, 1)",
        "    (0.2, 0.8): 1 of 4 other nondominated: (0, 1); of all points, 1 of 5 others: (0, 1)",
        "    (0, 1): 1 of 4 other nondominated: (0.2, 0.8); of all points, 1 of 5 others: "
        "(0.2, 0.8)"]
    table = report.format_table(_doc(tmp_path))
    assert "\n".join(lines) in table


def test_a_dominated_operating_point_gets_its_line_marked(tmp_path):
    doc = _doc(tmp_path, op=(1, "picked by hand"))
    lines = report.within_noise_lines(doc)
    assert lines[0].endswith("per nondominated point (* operating point):")
    assert lines[2] == ("  * (0.8, 0.2): 3 of 5 other nondominated: (1, 0), (0.6, 0.4), "
                        "(0.4, 0.6); of all points, 3 of 5 others: all but (0.2, 0.8), (0, 1)")
    page = report.render_frontier(doc)["html"].decode()
    sec = page[page.index('id="within-noise"'):page.index('id="operating-point"')]
    assert sec.count("<tr>") == 7  # head + 5 nondominated + the operating point
    assert "not separable, operating point" in sec and "\u2605" in sec


def test_many_nondominated_points_are_summarized(tmp_path):
    # 101 lambdas on a straight trade-off, all nondominated: each is within noise of its
    # neighbours within 0.02 (intervals +-0.015 around steps of 0.01 on both objectives).
    t = np.linspace(0.0, 1.0, 101)
    lam = np.stack([1 - t, t], 1)
    v = np.stack([1 - t, t], 1)
    doc = _doc(tmp_path, lam=lam, v=v, half=0.015)
    lines = report.within_noise_lines(doc)
    assert len(lines) == 1 + report.MAX_NOISE_LINES + 1
    assert lines[-1] == ("  ... and 89 more nondominated points (frontier.html and "
                         "frontier.json's \"within_noise\" list each)")
    assert lines[1] == ("    (1, 0): 3 of 100 other nondominated: (0.99, 0.01) to (0.97, 0.03);"
                        " of all points, 3 of 100 others: (0.99, 0.01) to (0.97, 0.03)")
    assert len(doc["within_noise"]["nondominated"]) == 101
    page = report.render_frontier(doc)["html"].decode()
    assert page.count("</tr>", page.index('id="within-noise"'),
                      page.index('id="operating-point"')) == 102  # every one on the page


def test_point_runs_cap_and_pairs():
    labels = [f"p{i}" for i in range(20)]
    assert report_html.point_runs([0, 1, 2, 5, 7, 8], labels) == "p0 to p2, p5, p7, p8"
    assert report_html.point_runs([0, 2, 4, 6, 8, 9, 11], labels, max_runs=3) == \
        "p0, p2, p4 and 4 more"


def test_a_frontier_written_before_within_noise_still_renders_it(tmp_path):
    doc = _doc(tmp_path)
    old = {k: v for k, v in doc.items() if k != "within_noise"}
    assert report.within_noise_lines(old) == report.within_noise_lines(doc)
    assert "Within noise" in report.render_frontier(old)["html"].decode()


# ----------------------------------------------------------------------------- marks (M4)

def _m(i, status="selected", **kw):
    return {"index": i, "reason": f"r{i}", "lambda": [0.5, 0.5], "name": f"p{i}",
            "status": status, **kw}


def test_place_mark_keeps_the_published_point_and_the_selection_apart():
    doc = {"operating_point": None, "x": 1}
    sel = report.place_mark(doc, _m(2))
    assert sel == {"operating_point": _m(2), "x": 1}
    pub = report.place_mark(sel, _m(3, "published", version="v0001", registry="/r"))
    # the selection it replaces is another point: kept as the selected point
    assert pub["operating_point"]["status"] == "published" and pub["selected_point"] == _m(2)
    again = report.place_mark(pub, _m(4))  # a selection after the publish: next to it
    assert again["operating_point"] == pub["operating_point"] and again["selected_point"] == _m(4)
    same = report.place_mark(again, _m(3))  # the published point selected: nothing extra
    assert same["operating_point"] == pub["operating_point"] and "selected_point" not in same
    assert "selected_point" not in report.place_mark(
        sel, _m(2, "published", version="v0001", registry="/r"))
    # the version is no longer current: the selection is the mark again
    assert report.unmark_published(again, "/r") == {"operating_point": _m(4), "x": 1}
    assert report.unmark_published(again, "/other") == again  # another registry's mark stays


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("marks")
    tiny_cli_world(d, frontiers=(("f5", 5),))
    return d


def _publish(world, reg, f, *extra):
    return cli.main(["policy", "publish", "--registry", str(reg), "--model",
                     str(world / "model"), "--frontier", str(f), "--logs",
                     str(world / "data" / "logs.parquet"), "--reason", "test", *extra])


def _html_svg(f):
    page = (f.parent / "frontier.html").read_text()
    return page, page[page.index("<svg"):page.index("</svg>")]


def test_the_frontier_marks_the_published_version_not_the_last_selection(world, tmp_path,
                                                                         capsys):
    shutil.copytree(world / "f5", tmp_path / "f5")
    f, reg = tmp_path / "f5" / "frontier.json", tmp_path / "reg"
    s1, s2 = tmp_path / "s1.json", tmp_path / "s2.json"
    assert cli.main(["policy", "select", "--frontier", str(f), "--maximize", "session_success",
                     "--out", str(s1)]) == 0
    i = json.loads(s1.read_text())["index"]
    doc = json.loads(f.read_text())
    assert doc["operating_point"]["status"] == "selected"
    page, svg = _html_svg(f)
    assert "selected with <code>policy select --out</code>, not published" in page
    assert "operating point (selected, not published)" in svg
    capsys.readouterr()
    assert _publish(world, reg, f, "--selection", str(s1)) == 0
    lam = cli_policy.readable_lambda(doc["lambdas"][i])
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"marked v0001 as the operating point on {f} (lambda {lam})")
    op = json.loads(f.read_text())["operating_point"]
    assert (op["index"], op["status"], op["version"], op["registry"]) == (
        i, "published", "v0001", str(reg))
    assert "operating point (published v0001)" in _html_svg(f)[1]
    # another selection is shown next to the published point, never in its place
    j = (i + 2) % 5
    assert cli.main(["policy", "select", "--frontier", str(f), "--maximize", "clicks",
                     "--out", str(s2)]) == 0
    doc = json.loads(f.read_text())
    k = json.loads(s2.read_text())["index"]
    assert doc["operating_point"]["version"] == "v0001" and doc["operating_point"]["index"] == i
    assert (doc.get("selected_point") or {}).get("index") == (None if k == i else k)
    table = report.format_table(doc)
    assert f"operating point (*): {doc['points']['names'][i]}, published as v0001 (registry " \
           f"{reg})" in table
    # set-lambda off the frontier: the frontier no longer claims a production point
    capsys.readouterr()
    assert cli.main(["policy", "set-lambda", "--registry", str(reg), "--lam", "0.123,0.877",
                     "--reason", "off the grid"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"{f} no longer marks v0001 as the operating point (CURRENT is v0002, not a point of it)")
    doc = json.loads(f.read_text())
    assert (doc["operating_point"] or {}).get("status") != "published"
    # rollback to v0001: marked again
    assert cli.main(["policy", "rollback", "--registry", str(reg), "--version", "v0001",
                     "--reason", "back"]) == 0
    assert json.loads(f.read_text())["operating_point"]["version"] == "v0001"
    # set-lambda onto another point of the frontier: that point is the published one
    lam_j = json.loads(f.read_text())["lambdas"][j]
    assert cli.main(["policy", "set-lambda", "--registry", str(reg), "--lam",
                     ",".join(map(str, lam_j)), "--reason", "on the grid"]) == 0
    op = json.loads(f.read_text())["operating_point"]
    assert (op["index"], op["version"], op["reason"]) == (j, "v0003", "set-lambda: on the grid")
    # the marks never change the frontier's digest: the old selection still publishes
    assert cli_policy.frontier_sha256(json.loads(f.read_text())) == \
        json.loads(s1.read_text())["frontier"]["sha256"]


# ----------------------------------------------------------------------------- figure labels

def test_lambda_labels_in_the_figure_never_overlap(tmp_path):
    # 101 nondominated points on a short arc: labelling all would pile them on each other
    t = np.linspace(0.0, 1.0, 101)
    lam = np.stack([1 - t, t], 1)
    v = np.stack([0.20 + 0.02 * np.cos(t * np.pi / 2), 0.20 + 0.02 * np.sin(t * np.pi / 2)], 1)
    doc = _doc(tmp_path, lam=lam, v=v, half=0.001, op=(50, "by hand"))
    assert all(doc["nondominated"])
    fig = report.frontier_figure(doc)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_text().startswith("(")]
    assert 2 <= len(labels) < 101
    boxes = [t.get_window_extent(r) for t in labels]
    assert not any(a.overlaps(b) for k, a in enumerate(boxes) for b in boxes[k + 1:])
    texts = {t.get_text() for t in labels}
    assert {"(1.00, 0.00)", "(0.50, 0.50)"} <= texts  # an end and the operating point
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"nondominated ({len(labels)} of 101 labelled)" in legend
    # a front that fits is labelled whole
    few = report.frontier_figure(_doc(tmp_path))
    assert sorted(t.get_text() for t in few.axes[0].texts) == [
        "(0.00, 1.00)", "(0.20, 0.80)", "(0.40, 0.60)", "(0.60, 0.40)", "(1.00, 0.00)"]
