"""The sweep on logs too small for some estimates, its size bound, and its outputs as one set.

A fresh-user review found: a 200-row log made ``puts-jax sweep`` crash (a NaN bootstrap critical
value in frontier.json; an estimate outside its own exact interval in the plot) and leave an
empty --out folder; --n-lambdas 100000 ran out of memory with a traceback; Ctrl-C mid-write left
frontier.json/png of the new run next to frontier.html of the old one; and the summary did not
say that the simultaneous band rests on the SNIPS estimates.
"""

import json
import os
import re
import signal

import numpy as np
import pyarrow.parquet as pq
import pytest

from puts_jax import cli, report, report_html, sweep_job
from puts_jax.checks import InputError
from puts_jax.scalarization import lambda_grid
from conftest import make_tiny_world


def _strict_json(path):
    """frontier.json parsed with NaN / Infinity rejected (they are not JSON)."""
    def reject(name):
        raise ValueError(f"{path}: non-JSON constant {name}")
    with open(path) as f:
        return json.load(f, parse_constant=reject)


def _head(src, dst, n):
    t = pq.read_table(src)
    pq.write_table(t.slice(0, n).replace_schema_metadata(t.schema.metadata), dst)
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    make_tiny_world(d, n_logs=600, n_heldout=200, n_evaluation=400, n_eval=100, n_requests=10)
    ev = str(d / "data" / "evaluation.parquet")
    return {"dir": d, "model": str(d / "model"), "ev": ev,
            "small": _head(ev, str(d / "ev30.parquet"), 30),
            "empty": _head(ev, str(d / "ev0.parquet"), 0)}


def _sweep(w, logs, out, *extra):
    return cli.main(["sweep", "--model", w["model"], "--logs", logs, "--out", str(out),
                     "--n-lambdas", "5", *extra])


@pytest.mark.parametrize("extra", [("--bootstrap", "20"), ("--no-halves", "--bootstrap", "0")])
def test_small_log_completes_with_unestimable_numbers_as_null(world, tmp_path, capsys, extra):
    out = tmp_path / "front"
    assert _sweep(world, world["small"], out, *extra) == 0
    stdout = capsys.readouterr().out
    doc = _strict_json(out / "frontier.json")  # no NaN / Infinity anywhere
    assert doc["points"]["n"] == [30] * 5
    prim = doc["primary_estimator"]
    # Every action with no matched row among 30 has no SNIPS value: null, not a number.
    acts = doc["baselines"]["actions"]
    unmatched = [i for i, m in enumerate(acts["matched"]) if m == 0]
    assert unmatched, "30 rows over 10 actions should leave an action unmatched"
    for i in unmatched:
        assert acts["estimators"]["snips"]["value"][i] == [None, None]
    # A point is not estimable exactly when one of its primary numbers is null.
    for i, v in enumerate(doc["verdicts"]):
        nulls = any(x is None for q in ("value", "lo", "hi")
                    for x in doc["estimators"][prim][q][i])
        assert (v == "not estimable") == nulls, (i, v)
    # The band's critical value is a number or null (a NaN made the file invalid JSON before).
    crit = doc["band"]["critical"]
    assert crit is None or np.isfinite(crit)
    if crit is None:
        assert set(doc["band"]["verdicts"]) == {"not estimable"}
        assert "the band is undefined" in stdout
    # The table and the page say so (the page lists every action, the unmatched ones too).
    lines = stdout.splitlines()[1:1 + len(doc["verdicts"])]
    for line, v in zip(lines, doc["verdicts"]):
        assert (v == "not estimable") <= ("n/a" in line or "not estimable" in line), line
    html = (out / "frontier.html").read_text()
    assert html.count("not estimable</span>") >= len(unmatched)
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(os.listdir(out)) == ["frontier.html", "frontier.json", "frontier.png"]


def test_empty_log_is_one_error_naming_logs_and_writes_nothing(world, tmp_path, capsys):
    out = tmp_path / "a" / "front"
    assert _sweep(world, world["empty"], out, "--no-halves") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("puts-jax: error: --logs: ")
    assert "has no rows" in err[0] and world["empty"] in err[0]
    assert not (tmp_path / "a").exists()


def test_a_failed_render_leaves_no_folder_behind(world, tmp_path, monkeypatch, capsys):
    def broken(*a, **k):
        raise ValueError("render failed")
    monkeypatch.setattr(report_html, "render_html", broken)
    out = tmp_path / "new" / "front"
    assert _sweep(world, world["small"], out, "--no-halves", "--bootstrap", "0") == 2
    assert "render failed" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_n_lambdas_upper_bound_is_one_error_line(world, tmp_path, capsys):
    out = tmp_path / "front"
    assert cli.main(["sweep", "--model", world["model"], "--logs", world["ev"], "--out", str(out),
                     "--n-lambdas", "100000", "--no-halves", "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("puts-jax: error: --n-lambdas: 100000 gives 100,000 lambda points "
                             "for J = 2 objectives; a sweep evaluates at most 1,001")
    assert "use at most 1,001 for J = 2" in err[0]
    assert not out.exists()
    # The largest grid allowed still runs (J = 2: n_lambdas = MAX_LAMBDA_POINTS).
    assert sweep_job.check_grid_size(2, sweep_job.MAX_LAMBDA_POINTS, 200) == 1001


@pytest.mark.parametrize("R,why", [
    ("100000000", r"at most 100,000 resamples \(more adds no precision to a 95% interval, only "
                  r"time\); got 100,000,000 \(nothing written\)$"),
    ("-1", r"must be >= 0 \(0: no bootstrap\), got -1$")])
def test_bootstrap_bounds_are_one_error_line_before_any_work(world, tmp_path, capsys, R, why):
    out = tmp_path / "front"  # --bootstrap 100000000 used to grow past 20 GB, then be killed
    assert cli.main(["sweep", "--model", world["model"], "--logs", world["ev"], "--out", str(out),
                     "--no-halves", "--bootstrap", R]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"puts-jax: error: --bootstrap: " + why, err[0]), err
    assert not out.exists()


def test_the_bootstrap_bound_follows_the_tables_memory():
    # P = 1,001 points, J = 2: a resample takes 2 (1001^2 + 128 * 1001) bytes = 2.26 MB
    per = 2 * (1001 ** 2 + 128 * 1001)
    most = sweep_job.MAX_BOOTSTRAP_BYTES // per
    assert most == 950
    sweep_job.check_bootstrap_size(2, 1001, most)  # the largest allowed passes
    with pytest.raises(InputError, match=rf"^bootstrap: at most 950 resamples \(951 would take "
                                         rf"about 2 GiB for 1,001 lambda points and J = 2\)"):
        sweep_job.check_bootstrap_size(2, 1001, most + 1)
    sweep_job.check_bootstrap_size(2, 21, sweep_job.MAX_RESAMPLES)  # the default grid: 100,000


@pytest.mark.parametrize("J", [1, 2, 3, 4])
def test_grid_points_counts_the_grid_and_the_bound_is_tight(J):
    for n in (2, 3, 5, 9):
        assert sweep_job.grid_points(J, n) == len(lambda_grid(J, n))
    if J < 3:
        return
    with pytest.raises(InputError, match=r"n_lambdas: 100 gives [\d,]+ lambda points") as e:
        sweep_job.check_grid_size(J, 100, 0)
    most = int(e.value.msg.split("use at most ")[1].split(" ")[0].replace(",", ""))
    assert sweep_job.grid_points(J, most) <= sweep_job.MAX_LAMBDA_POINTS
    assert sweep_job.grid_points(J, most + 1) > sweep_job.MAX_LAMBDA_POINTS
    assert sweep_job.check_grid_size(J, most, 200) == sweep_job.grid_points(J, most)


def _doc(tmp_path, shift=0.0):
    """A frontier whose point 1 lies outside its own interval (an IPS value 1.08 with an exact
    interval clipped at 1), point 2 has no value and point 3 no interval."""
    lam = lambda_grid(2, 4)
    v = np.array([[0.3, 0.2], [1.08, 0.3], [np.nan, 0.1], [0.5, 0.4]]) + shift
    lo, hi = v - 0.05, v + 0.05
    lo[1, 0], hi[1, 0] = 0.4, 1.0
    lo[3], hi[3] = np.nan, np.nan
    pts = {"names": [f"p{i}" for i in range(4)], "estimates": {"auto": {"value": v, "lo": lo,
                                                                        "hi": hi}},
           "n": 200, "matched": [10, 10, 0, 1], "ess": [10.0, 10.0, 0.0, 1.0]}
    base = {"logging": {"names": ["logging"], "n": 200, "matched": 200, "ess": 200.0,
                        "estimates": {"auto": {"value": [[np.nan, 0.2]], "lo": [[np.nan, 0.1]],
                                               "hi": [[np.nan, 0.3]]}}}}
    (tmp_path / "log").write_bytes(b"x")
    prov = report.make_provenance([str(tmp_path / "log")], 200, 0, "h")
    doc = report.build_frontier(lam, pts, objective_names=("a", "b"), provenance=prov,
                                baselines=base)
    doc["band"] = {"estimator": "snips", "method": "Bonferroni", "confidence": 0.95,
                   "critical": float("nan"), "verdicts": ["not estimable"] * 4}
    return doc


def test_figure_draws_intervals_from_lo_to_hi_and_skips_undefined(tmp_path):
    doc = _doc(tmp_path)
    fig = report.frontier_figure(doc)  # errorbar raised "'xerr' must not contain negative values"
    ax = fig.axes[0]
    from matplotlib.collections import LineCollection
    segs = [s for c in ax.collections if isinstance(c, LineCollection) for s in c.get_segments()]
    horizontal = {tuple(np.round(s[:, 0], 6)) for s in segs if s[0, 1] == s[1, 1]}
    assert (0.4, 1.0) in horizontal  # point 1's interval as given, though its value is 1.08
    # No bar for point 3 (no interval) nor point 2 (no value): 2 points x 2 axes, plus the
    # logging baseline's one finite axis is not drawn either (its value on "a" is not a number).
    assert len(segs) == 4
    labels = ax.get_legend_handles_labels()[1]
    assert any("interval not estimable" in lab for lab in labels)
    assert any("not estimable, not drawn: 1 of 4 lambda points, 1 baselines" in t.get_text()
               for t in ax.texts)
    paths = report.write_frontier(str(tmp_path / "out"), doc)
    back = _strict_json(paths["json"])
    assert back["band"]["critical"] is None  # dumps writes a NaN added after build as null
    assert back["estimators"]["auto"]["value"][2] == [None, 0.1]
    table = report.format_table(back)
    assert "not estimable" in table.splitlines()[3]
    assert "[n/a, n/a]" in table.splitlines()[4]
    html = open(paths["html"], encoding="utf-8").read()
    assert "interval not estimable" in html and "not estimable</span>" in html


def test_summary_names_the_estimates_behind_verdict_and_band(tmp_path):
    table = report.format_table(_doc(tmp_path))
    verdict = [ln for ln in table.splitlines() if ln.startswith("verdict")]
    band = [ln for ln in table.splitlines() if ln.startswith("simultaneous")]
    assert verdict[0].startswith("verdict (per-point 95% intervals of the auto estimates): ")
    assert band[0].startswith("simultaneous 95% band on the SNIPS estimates (Bonferroni): ")
    assert "the band is undefined" in band[0]


def _files(folder):
    return {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder))}


@pytest.mark.parametrize("at_call", [1, 2, 3])
def test_interrupt_while_writing_keeps_the_old_set(tmp_path, monkeypatch, at_call):
    out = tmp_path / "out"
    report.write_frontier(str(out), _doc(tmp_path))
    old = _files(out)
    real, calls = report.atomic_write_bytes, []

    def interrupted(path, data):
        calls.append(path)
        if len(calls) == at_call:
            raise KeyboardInterrupt
        real(path, data)
    monkeypatch.setattr(report, "atomic_write_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report.write_frontier(str(out), _doc(tmp_path, shift=0.01))
    assert _files(out) == old  # the whole old set, no staging folder left


def test_ctrl_c_during_the_move_is_deferred_and_gives_the_new_set(tmp_path, monkeypatch):
    out = tmp_path / "out"
    report.write_frontier(str(out), _doc(tmp_path))
    real = os.replace
    sent = []

    def replace_with_sigint(src, dst):  # os.replace is global: staging uses it too
        if not sent and os.path.dirname(dst) == str(out):  # the first move into the folder
            sent.append(dst)
            os.kill(os.getpid(), signal.SIGINT)  # held until all three files are in
        real(src, dst)
    monkeypatch.setattr(os, "replace", replace_with_sigint)
    new = _doc(tmp_path, shift=0.01)
    with pytest.raises(KeyboardInterrupt):
        report.write_frontier(str(out), new)
    monkeypatch.undo()
    assert sent and sorted(os.listdir(out)) == ["frontier.html", "frontier.json", "frontier.png"]
    assert _files(out) == {f"frontier.{k}": b for k, b in report.render_frontier(new).items()}
    assert _strict_json(out / "frontier.json")["estimators"]["auto"]["value"][0] == \
        pytest.approx([0.31, 0.21])


def test_cli_interrupt_over_an_existing_folder_keeps_the_old_set(world, tmp_path, monkeypatch,
                                                                 capsys):
    out = tmp_path / "front"
    assert _sweep(world, world["ev"], out, "--no-halves", "--bootstrap", "0") == 0
    old = _files(out)
    real, calls = report.atomic_write_bytes, []

    def interrupted(path, data):
        calls.append(path)
        if len(calls) == 2:  # frontier.json staged, frontier.png not yet
            raise KeyboardInterrupt
        real(path, data)
    monkeypatch.setattr(report, "atomic_write_bytes", interrupted)
    assert _sweep(world, world["small"], out, "--no-halves", "--bootstrap", "0") == 130
    assert "interrupted" in capsys.readouterr().err
    assert _files(out) == old


def test_one_row_logging_interval_is_not_a_zero_width_interval():
    pe = sweep_job.on_policy_estimates(1, [1.0, 0.5], [1.0, 0.25], ("binary", "real"), 0.95)
    auto = pe.estimates["auto"]
    assert auto["value"][0].tolist() == [1.0, 0.5]
    assert 0.0 < auto["lo"][0, 0] < 1.0 and auto["hi"][0, 0] == 1.0  # Clopper-Pearson, 1 of 1
    assert np.isnan(auto["lo"][0, 1]) and np.isnan(auto["hi"][0, 1])  # was [0.5, 0.5]


def test_a_log_too_small_to_split_names_halves_and_the_way_out(world, tmp_path, capsys):
    one = _head(world["ev"], str(tmp_path / "ev1.parquet"), 1)
    out = tmp_path / "b" / "front"
    assert _sweep(world, one, out, "--bootstrap", "0") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("puts-jax: error: --halves: the ")
    assert f"{one} has 1 row: rerun with halves off (--no-halves" in err[0]
    assert not (tmp_path / "b").exists()
    assert _sweep(world, one, out, "--no-halves", "--bootstrap", "0") == 0  # the way out works
    doc = _strict_json(out / "frontier.json")
    logging = doc["baselines"]["logging"]["estimators"]
    assert doc["points"]["n"] == [1] * 5 and logging["snips"]["lo"] == [[None, None]]
