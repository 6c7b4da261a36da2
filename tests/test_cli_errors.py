"""CLI input errors: each is one line ``puts-jax: error: ...`` naming the flag, exit status 2 (3
when nothing is selected), no traceback, and nothing already written is lost or replaced."""

import json

import numpy as np
import pytest

from puts_jax import cli, planning, policy
from puts_jax.checks import InputError
from puts_jax.data import logs
from conftest import one_line as _err, tiny_cli_world


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny simulated world, an untrained model and a 3-point frontier (with halves)."""
    d = tmp_path_factory.mktemp("cli_errors")
    tiny_cli_world(d)
    return d


def _select(d, *extra):
    return cli.main(["policy", "select", "--frontier", str(d / "frontier" / "frontier.json"),
                     "--maximize", "session_success", *extra])


def test_select_that_selects_nothing_keeps_an_existing_out(run, capsys):
    out = run / "sel_keep.json"
    assert _select(run, "--out", str(out)) == 0
    before = out.read_text()
    assert json.loads(before)["index"] is not None
    capsys.readouterr()
    assert _select(run, "--guardrail", "clicks >= +50%", "--out", str(out)) == 3
    err = _err(capsys)
    assert err.startswith("puts-jax: nothing selected: ")
    assert f"--out {out} not written (an existing file is kept)" in err
    assert out.read_text() == before
    # and no file appears where there was none
    assert _select(run, "--guardrail", "clicks >= +50%", "--out", str(run / "sel_new.json")) == 3
    assert not (run / "sel_new.json").exists()


def _publish(d, registry, *extra):
    return cli.main(["policy", "publish", "--registry", str(registry), "--model", str(d / "model"),
                     "--frontier", str(d / "frontier" / "frontier.json"), "--logs",
                     str(d / "data" / "logs.parquet"), "--reason", "test", *extra])


@pytest.mark.parametrize("point", ["-1", "3", "99"])
def test_publish_point_outside_the_frontier(run, capsys, point):
    reg = run / f"reg_point{point}"
    assert _publish(run, reg, "--point", point) == 2
    assert _err(capsys) == (f"puts-jax: error: --point: {point} is not a point of --frontier "
                            "(it has 3: 0 to 2)")
    assert policy.current_version(str(reg)) is None  # -1 is not the last point


def test_publish_selection_index_outside_the_frontier(run, capsys):
    sel = run / "sel_bad_index.json"
    sel.write_text(json.dumps({"index": 7}))
    assert _publish(run, run / "reg_sel7", "--selection", str(sel)) == 2
    assert _err(capsys) == (f"puts-jax: error: --selection: {sel}: index: 7 is not a point of "
                            "--frontier (it has 3: 0 to 2)")


@pytest.mark.parametrize("value", ["nan", "-inf", "inf", "+nan"])
def test_guardrail_non_finite_is_malformed(run, capsys, value):
    assert _select(run, "--guardrail", f"clicks >= {value}%") == 2
    assert _err(capsys) == ("puts-jax: error: --guardrail: expected a finite relative change in "
                            f"percent such as 'clicks >= -1%', got 'clicks >= {value}%'")


def test_guardrail_below_minus_100_percent(run, capsys):
    assert _select(run, "--guardrail", "clicks >= -200%") == 2
    assert _err(capsys) == ("puts-jax: error: --guardrail: 'clicks >= -200%': a relative change "
                            "below -100% means nothing (-100% already allows clicks to drop to 0)")
    capsys.readouterr()
    assert _select(run, "--guardrail", "clicks >= -100%") == 0  # the limit itself is legal


def test_plan_with_too_few_rows_names_requests_per_day(capsys):
    assert cli.main(["plan", "--actions", "36", "--share", "0.05", "--requests-per-day", "1e-3",
                     "--base-rate", "0.4"]) == 2
    assert _err(capsys) == ("puts-jax: error: --requests-per-day: 0.001 requests/day x share 0.05 "
                            "x 1 day(s) = 5e-05 logged rows; every day count needs at least 1 "
                            "logged row")
    with pytest.raises(InputError, match="^requests_per_day: 1 requests/day"):
        planning.plan(36, 0.05, 1.0, 0.4, [1, 7])


def test_plan_with_undetectable_lifts_is_not_a_base_rate_error(capsys):
    # 1000 x 0.05 = 50 rows/day: the disjoint-interval lift saturates (rate 1) -> not detectable
    p = planning.plan(36, 0.05, 1000.0, 0.4, [1, 28])
    np.testing.assert_array_equal(p.rows, [50, 1400])
    assert np.isinf(p.lift_disjoint).all() and np.isinf(p.lift[0])
    # paired: n = c^2 Var Z(d) / d^2 at the reported d (the quadratic's root), A = 36, p = 0.4
    c2 = (planning.z_quantile(0.975) + planning.z_quantile(0.8)) ** 2
    d = p.lift[1]
    np.testing.assert_allclose(c2 * (2 * 36 * 0.4 + 36 * d - d * d) / d ** 2, 1400, rtol=1e-9)
    assert cli.main(["plan", "--actions", "36", "--share", "0.05", "--requests-per-day", "1000",
                     "--base-rate", "0.4", "--days", "1,28"]) == 0
    assert "not detectable" in capsys.readouterr().out


def test_registry_commands_need_an_existing_registry_and_create_nothing(run, capsys, tmp_path):
    missing = tmp_path / "nope"
    for cmd in (["show"], ["set-lambda", "--lam", "0.5,0.5", "--reason", "r"],
                ["rollback", "--version", "v0001", "--reason", "r"]):
        assert cli.main(["policy", cmd[0], "--registry", str(missing), *cmd[1:]]) == 2, cmd
        assert _err(capsys) == f"puts-jax: error: --registry: no registry at {missing}"
        assert not missing.exists()
    # an existing directory that is not a registry: named, and no .lock left in it
    assert cli.main(["policy", "set-lambda", "--registry", str(run / "data"), "--lam", "0.5,0.5",
                     "--reason", "r"]) == 2
    assert _err(capsys) == (f"puts-jax: error: --registry: {run / 'data'} is not a registry (no "
                            "CURRENT, audit.jsonl or versions)")
    assert not (run / "data" / ".lock").exists()
    # the library call creates nothing either
    with pytest.raises(InputError, match="^CURRENT: .* has no current policy"):
        policy.set_lambda(str(missing), [0.5, 0.5], "r")
    with pytest.raises(InputError, match="^version: 'v0001' is not a version"):
        policy.rollback(str(missing), "v0001", "r")
    assert not missing.exists()


def test_show_with_a_broken_current_lists_the_versions(run, capsys):
    reg = run / "reg_broken"
    assert _publish(run, reg, "--point", "0") == 0 and _publish(run, reg, "--point", "1") == 0
    (reg / "CURRENT").write_text("garbage\n")
    capsys.readouterr()
    assert cli.main(["policy", "show", "--registry", str(reg)]) == 2
    out, err = capsys.readouterr()
    shown = json.loads(out)
    assert [v["version"] for v in shown["versions"]] == ["v0001", "v0002"]
    assert shown["current"] is None and shown["policy"] is None
    problem = f"names 'garbage', not a version of {reg} (known ['v0001', 'v0002'])"
    assert shown["current_problem"] == problem
    assert err == (f"puts-jax: error: --registry: CURRENT {problem}; the versions are listed "
                   "above ('policy rollback --version V' makes one current)\n")
    with pytest.raises(InputError, match="^CURRENT: names 'garbage'"):
        policy.load(str(reg))
    assert cli.main(["policy", "rollback", "--registry", str(reg), "--version", "v0001",
                     "--reason", "repair"]) == 0
    assert policy.show(str(reg))["current"] == "v0001"
    (reg / "CURRENT").write_text("")
    assert policy.show(str(reg))["current_problem"] == ("missing or empty but there are versions "
                                                        "['v0001', 'v0002']")


def test_score_out_is_checked_before_scoring(run, capsys):
    reg = run / "reg_score"
    assert _publish(run, reg, "--point", "0") == 0
    (run / "outdir").mkdir()
    score = ["score", "--policy", str(reg), "--requests", str(run / "data" / "requests.parquet")]
    capsys.readouterr()
    assert cli.main([*score, "--out", str(run / "outdir")]) == 2
    assert _err(capsys) == (f"puts-jax: error: --out: {run / 'outdir'} is a directory; give a "
                            "file path (nothing written)")
    assert list((run / "outdir").iterdir()) == []
    bad = run / "data" / "requests.parquet" / "sub" / "s.parquet"
    assert cli.main([*score, "--out", str(bad)]) == 2
    assert _err(capsys) == (f"puts-jax: error: --out: cannot create the folder {bad.parent}: "
                            f"{run / 'data' / 'requests.parquet'} is not a directory")
    assert cli.main(["score", "--policy", str(run / "noreg"), "--requests",
                     str(run / "data" / "requests.parquet"), "--out", str(run / "s.parquet")]) == 2
    assert _err(capsys) == f"puts-jax: error: --policy: no registry at {run / 'noreg'}"
    assert not (run / "s.parquet").exists()
    # select --out too, before the frontier is marked
    assert _select(run, "--out", str(run / "outdir")) == 2
    assert "--out: " in _err(capsys)


def _sweep(d, *extra, model="model", logs="evaluation.parquet"):
    return cli.main(["sweep", "--model", str(d / model), "--logs", str(d / "data" / logs),
                     "--out", str(d / "frontier_err"), *extra])


def test_sweep_inputs_are_named(run, capsys):
    assert _sweep(run, logs="nope.parquet") == 2
    assert _err(capsys) == f"puts-jax: error: --logs: no such file {run / 'data' / 'nope.parquet'}"
    train = run / "train"  # a training run directory holding the exported model
    (train / "selected_model").mkdir(parents=True)
    (train / "selected_model" / "spec.json").write_text((run / "model" / "spec.json").read_text())
    assert _sweep(run, model="train") == 2
    assert _err(capsys) == (f"puts-jax: error: --model: {train} is not a saved model (no "
                            f"spec.json); did you mean {train / 'selected_model'}?")
    assert _sweep(run, model="data") == 2
    assert _err(capsys) == (f"puts-jax: error: --model: {run / 'data'} is not a saved model (no "
                            "spec.json)")
    for flag, value, msg in (("--chunk-rows", "0", "must be >= 1, got 0"),
                             ("--n-lambdas", "1", "must be >= 2")):
        assert _sweep(run, flag, value) == 2
        assert _err(capsys) == f"puts-jax: error: {flag}: {msg}"
    assert not (run / "frontier_err").exists()


def test_score_flags_are_named(run, capsys):
    reg = run / "reg_flags"
    assert _publish(run, reg, "--point", "0") == 0
    score = ["score", "--policy", str(reg), "--requests", str(run / "data" / "requests.parquet"),
             "--out", str(run / "scored_flags.parquet")]
    capsys.readouterr()
    assert cli.main([*score, "--chunk-rows", "0"]) == 2
    assert _err(capsys) == "puts-jax: error: --chunk-rows: must be >= 1, got 0"
    assert cli.main([*score, "--top-k", "0"]) == 2
    assert _err(capsys) == "puts-jax: error: --top-k: must be >= 1"
    assert not (run / "scored_flags.parquet").exists()


def test_number_lists_name_their_flag(run, capsys):
    assert cli.main(["policy", "set-lambda", "--registry", str(run / "reg_flags"), "--lam", "a,b",
                     "--reason", "r"]) == 2
    assert _err(capsys) == ("puts-jax: error: --lam: expected comma-separated numbers such as "
                            "0.7,0.3, got 'a,b'")
    assert cli.main(["plan", "--actions", "36", "--share", "0.05", "--requests-per-day", "1e4",
                     "--base-rate", "0.4", "--days", "1,x"]) == 2
    assert _err(capsys) == ("puts-jax: error: --days: expected comma-separated numbers such as "
                            "1,7,28, got '1,x'")


@pytest.mark.parametrize("text, why", [
    ("not json", "JSONDecodeError: Expecting value: line 1 column 1 (char 0)"),
    ('{"a": 1}', "missing keys ['schema', 'objectives', "),
    ("[1, 2]", "")])
def test_a_file_that_is_not_a_frontier(run, capsys, tmp_path, text, why):
    bad = tmp_path / "frontier.json"
    bad.write_text(text)
    for cmd in (["report", "--frontier", str(bad)],
                ["policy", "select", "--frontier", str(bad), "--maximize", "clicks"]):
        assert cli.main(cmd) == 2
        assert _err(capsys).startswith(f"puts-jax: error: --frontier: not a frontier.json ({bad}: "
                                       f"{why}")
    assert bad.read_text() == text


def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(planning, "plan", interrupted)
    assert cli.main(["plan", "--actions", "36", "--share", "0.05", "--requests-per-day", "1e4",
                     "--base-rate", "0.4"]) == 130
    assert capsys.readouterr().err == "puts-jax: interrupted\n"


def test_a_file_that_is_not_a_selection(run, capsys, tmp_path):
    bad = tmp_path / "sel.json"
    bad.write_text("{}")
    assert _publish(run, tmp_path / "reg", "--selection", str(bad)) == 2
    assert _err(capsys) == (f"puts-jax: error: --selection: not a selection of 'policy select "
                            f"--out' ({bad}: KeyError: 'index')")
    assert not (tmp_path / "reg").exists()


# ----------------------------------------------------------------------------- context ids

ID_VOCAB = (5, 64)


def _add_ids(src, dst, bad: dict | None = None):
    """``src`` (a simulated log or request set, metadata kept) with a context_ids column inside
    ID_VOCAB (row r: [r % 5, r % 64]); ``bad`` {row: id} replaces column 1."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(str(src))
    ids = np.stack([np.arange(t.num_rows) % 5, np.arange(t.num_rows) % 64], 1)
    for row, value in (bad or {}).items():
        ids[row, 1] = value
    pq.write_table(t.append_column("context_ids", pa.array(ids.tolist(), pa.list_(pa.int64()))),
                   str(dst))
    return dst


@pytest.fixture(scope="module")
def id_run(run):
    """An untrained model embedding two id columns (ID_VOCAB) and its frontier on the evaluation
    log with valid ids; the log and the request set with ids: {"model", "logs", "requests",
    "frontier"}."""
    from flax import nnx

    from puts_jax import model_io
    from puts_jax.config import QNetConfig
    from puts_jax.qnet import QNetwork

    spec = json.loads((run / "model" / "spec.json").read_text())["spec"]
    net = QNetwork(QNetConfig(hidden=(16,), n_components=4, id_vocab_sizes=ID_VOCAB),
                   spec["context_dim"], spec["n_actions"], tuple(spec["reward_kinds"]),
                   rngs=nnx.Rngs(0))
    model_io.save_model(str(run / "id_model"), net)
    paths = {"model": run / "id_model", "frontier": run / "id_frontier" / "frontier.json",
             "logs": _add_ids(run / "data" / "evaluation.parquet", run / "ids_eval.parquet"),
             "requests": _add_ids(run / "data" / "requests.parquet", run / "ids_req.parquet")}
    assert cli.main(["sweep", "--model", str(paths["model"]), "--logs", str(paths["logs"]),
                     "--out", str(run / "id_frontier"), "--n-lambdas", "3", "--bootstrap", "0"]) == 0
    return paths


def test_sweep_id_beyond_the_models_vocabulary_is_one_error_line(id_run, run, capsys):
    bad = _add_ids(run / "data" / "evaluation.parquet", run / "ids_eval_bad.parquet",
                   {17: 64, 700: 99})
    capsys.readouterr()
    for extra in ([], ["--halves"]):
        assert cli.main(["sweep", "--model", str(id_run["model"]), "--logs", str(bad), "--out",
                         str(run / "id_frontier_bad"), "--n-lambdas", "3", "--bootstrap", "0",
                         *extra]) == 2
        assert _err(capsys) == (f"puts-jax: error: {bad}: context_ids[:, 1]: id 64 >= the "
                                "model's vocabulary of 64 (embedding rows 0 to 63) at rows "
                                "[17, 700]")
    assert not (run / "id_frontier_bad").exists()
    # the frontier of the valid ids is finite: no point fell back to NaN
    doc = json.loads(id_run["frontier"].read_text())
    assert np.isfinite(np.asarray(doc["estimators"]["snips"]["value"], np.float64)).all()


def _last_err(capsys) -> str:
    """The one error line of the captured stderr, after score's progress bar (its last line)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1, err
    return err.splitlines()[-1]


def test_score_id_beyond_the_policys_vocabulary_is_one_error_line(id_run, run, capsys):
    from puts_jax import score_job

    reg = run / "reg_ids"
    assert cli.main(["policy", "publish", "--registry", str(reg), "--model", str(id_run["model"]),
                     "--frontier", str(id_run["frontier"]), "--logs", str(id_run["logs"]),
                     "--reason", "ids", "--point", "0"]) == 0
    stats = score_job.score_file(str(reg), str(id_run["requests"]), str(run / "ids_scored.parquet"),
                                 progress=False)
    assert stats["rows"] == 40 and stats["fallback_rows"] == 0  # valid ids: finite Q everywhere
    bad = _add_ids(run / "data" / "requests.parquet", run / "ids_req_bad.parquet", {31: 70})
    out = run / "ids_scored_bad.parquet"
    capsys.readouterr()
    assert cli.main(["score", "--policy", str(reg), "--requests", str(bad), "--out", str(out),
                     "--chunk-rows", "16"]) == 2  # row 31 is in the second chunk
    assert _last_err(capsys) == (f"puts-jax: error: {bad}: context_ids[:, 1]: id 70 >= the "
                                 "model's vocabulary of 64 (embedding rows 0 to 63) at rows [31]")
    plain = run / "data" / "requests.parquet"  # no context_ids column at all
    assert cli.main(["score", "--policy", str(reg), "--requests", str(plain), "--out",
                     str(out)]) == 2
    assert _last_err(capsys) == (f"puts-jax: error: {plain}: context_ids: missing column: the "
                                 "model embeds 2 id columns (vocabularies [5, 64])")
    assert not out.exists()


def test_model_left_at_tmp_old_by_a_killed_save_is_accepted(run, capsys):
    import shutil

    from puts_jax import model_io

    killed = run / "killed_model"  # save_model killed between its renames: only .tmp-old is left
    shutil.copytree(run / "model", str(killed) + model_io.OLD_SUFFIX)
    assert model_io.model_folder(str(killed)) == str(killed) + model_io.OLD_SUFFIX
    reg = run / "reg_killed"
    capsys.readouterr()
    assert cli.main(["policy", "publish", "--registry", str(reg), "--model", str(killed),
                     "--frontier", str(run / "frontier" / "frontier.json"), "--logs",
                     str(run / "data" / "logs.parquet"), "--reason", "t", "--point", "0"]) == 0
    # the frontier's params hash matched: the model read is the one moved aside
    assert policy.show(str(reg))["current"] == "v0001"
    train = run / "train_killed"  # and a workdir whose selected_model was left that way
    shutil.copytree(run / "model", train / ("selected_model" + model_io.OLD_SUFFIX))
    assert _sweep(run, model="train_killed") == 2
    assert _err(capsys) == (f"puts-jax: error: --model: {train} is not a saved model (no "
                            f"spec.json); did you mean {train / 'selected_model'}?")
    assert _sweep(run, model="no_such_model") == 2
    assert _err(capsys) == f"puts-jax: error: --model: no such directory {run / 'no_such_model'}"
