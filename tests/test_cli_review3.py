"""Fresh-user review, third pass: each finding as a value test (exit status, the exact line,
nothing written). simulate --miscalibration is bounded where every prediction is finite; report
probes its folder and checks the frontier's blocks before any work; truth names a truth.npz
whose arrays do not fit the data set; score names a broken CURRENT as --policy; a closed
stdout ends quietly (141); a Ctrl-C during the imports ends with one line (130); plan's --days
and --max-days exclude each other; a sweep on the model's own training log warns; python -m
train settles a half-moved split pair; a chunked log error says which rows were checked."""

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from puts_jax import cli, cli_checks, model_io, report, sweep_job
from puts_jax.data import logs
from puts_jax.data import simulator as sim
from conftest import cli_error, no_work as _no_work, one_line, snapshot, tiny_cli_world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("review3")
    tiny_cli_world(d, halves=False)
    return d




# ----------------------------------------------------------------------------- 1. --miscalibration

MIS = ("must be <= 100 (the ranker's noise scale 0.5*exp(0.3*M) is already 5e12 there, every "
       "prediction 0 or 1; past about 290 it overflows float32 and predictions turn NaN), got ")


@pytest.mark.parametrize("value, why", [("1000", MIS + "1000.0"), ("1e308", MIS + "1e+308"),
                                        ("100.5", MIS + "100.5"),
                                        ("-1", "must be finite and >= 0, got -1.0"),
                                        ("nan", "must be finite and >= 0, got nan"),
                                        ("inf", "must be finite and >= 0, got inf")])
def test_miscalibration_out_of_range_is_named_before_any_work(capsys, monkeypatch, tmp_path,
                                                              value, why):
    _no_work(monkeypatch, sim, "write_simulation")
    out = tmp_path / "sim"
    assert cli.main(["simulate", "--preset", "tiny", "--out", str(out),
                     "--miscalibration", value]) == 2
    assert cli_error(capsys) == f"--miscalibration: {why}"
    assert os.listdir(tmp_path) == []


def test_the_miscalibration_bound_gives_finite_predictions_without_warnings():
    import dataclasses
    import warnings

    cfg = dataclasses.replace(sim.SimConfig.tiny(), miscalibration=sim_world_max())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow anywhere at the bound
        world = sim.make_world(cfg)
        req = sim.sample_requests(world, 2048, 0)
    assert np.isfinite(req.preds).all() and np.isfinite(world.pbar).all()
    assert (world.pbar > 0).all()


def sim_world_max():
    from puts_jax.data import sim_world
    return sim_world.MAX_MISCALIBRATION


# ----------------------------------------------------------------------------- 2. report

def _read_only(monkeypatch):
    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(cli_checks.tempfile, "mkstemp", refuse)


def _frontier_copy(run, tmp_path, edit=None):
    f = tmp_path / "fr" / "frontier.json"
    shutil.copytree(run / "frontier", f.parent)
    if edit is not None:
        doc = json.loads(f.read_text())
        edit(doc)
        f.write_text(json.dumps(doc))
    return f


@pytest.mark.parametrize("with_out", [False, True])
def test_report_into_a_read_only_folder_is_named_before_any_work(run, tmp_path, capsys,
                                                                 monkeypatch, with_out):
    f = _frontier_copy(run, tmp_path)
    before = snapshot(f.parent)
    _no_work(monkeypatch, report, "render_frontier")
    _read_only(monkeypatch)
    out = tmp_path / "rep"
    assert cli.main(["report", "--frontier", str(f)] + (["--out", str(out)] if with_out else [])
                    ) == 2
    if with_out:
        assert cli_error(capsys) == (f"--out: cannot create a file in {out} (Read-only file "
                                     "system); nothing written")
    else:
        assert cli_error(capsys) == (
            f"--frontier: cannot create a file in {f.parent} (Read-only file system); nothing "
            "written; report rewrites the frontier's files in their folder: give --out DIR to "
            "write them elsewhere")
    assert snapshot(f.parent) == before and not out.exists()


def test_report_on_a_frontier_with_a_shortened_list_names_frontier(run, tmp_path, capsys):
    f = _frontier_copy(run, tmp_path, lambda d: d["points"].update(n=d["points"]["n"][:1]))
    before = snapshot(f.parent)
    assert cli.main(["report", "--frontier", str(f)]) == 2
    n = json.loads(f.read_text())["points"]["n"]
    assert cli_error(capsys) == (f"--frontier: {f}: points.n: expected a list of P = 3 entries, "
                                 f"got {n}")
    assert snapshot(f.parent) == before


def test_report_on_a_frontier_that_cannot_be_rendered_names_frontier(run, tmp_path, capsys):
    f = _frontier_copy(run, tmp_path, lambda d: d["baselines"]["logging"].update(n=[]))
    before = snapshot(f.parent)
    assert cli.main(["report", "--frontier", str(f)]) == 2
    assert cli_error(capsys) == (f"--frontier: {f}: cannot be rendered (IndexError: list index "
                                 "out of range); nothing written")
    assert snapshot(f.parent) == before


def test_report_out_renders_the_set_elsewhere(run, tmp_path, capsys):
    out = tmp_path / "rep"
    assert cli.main(["report", "--frontier", str(run / "frontier" / "frontier.json"),
                     "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["frontier.html", "frontier.json", "frontier.png"]
    assert capsys.readouterr().out.splitlines()[-1] == f"  html      {out / 'frontier.html'}"


# ----------------------------------------------------------------------------- 3. truth.npz

def _truth(run, tmp_path, **change):
    data = tmp_path / "data"
    shutil.copytree(run / "data", data)
    with np.load(run / "data" / "truth.npz") as z:
        arrays = {k: z[k] for k in z.files}
    for k, f in change.items():
        arrays[k] = f(arrays[k])
    with open(data / "truth.npz", "wb") as fh:
        np.savez(fh, **arrays)
    return data


@pytest.mark.parametrize("change, why", [
    (dict(true_values=lambda a: a[:, :3]), "true_values [100, 3, 2] does not fit the evaluation "
     "log's A = 10 actions and J = 2 rewards (expected [n, 10, 2])"),
    (dict(true_values=lambda a: a[:, :, :1]), "true_values [100, 10, 1] does not fit the "
     "evaluation log's A = 10 actions and J = 2 rewards (expected [n, 10, 2])"),
    (dict(value_bayes=lambda a: a[:0]), "value_bayes [0]: expected [2] (J = 2 rewards)"),
    (dict(best_global_action=lambda a: np.int32(999)),
     "best_global_action [999]: expected one action index in [0, 10)"),
])
def test_truth_with_arrays_that_do_not_fit_names_data(run, tmp_path, capsys, monkeypatch,
                                                      change, why):
    data = _truth(run, tmp_path, **change)
    _no_work(monkeypatch, model_io, "load_model")
    assert cli.main(["truth", "--data", str(data), "--model", str(run / "model"),
                     "--frontier", str(run / "frontier" / "frontier.json")]) == 2
    assert cli_error(capsys) == (f"--data: {data / 'truth.npz'} is not a readable truth file of "
                                 f"simulate ({why}); 'puts-jax simulate --out {data}' writes a "
                                 "new data set")


# ----------------------------------------------------------------------------- 4. score CURRENT

@pytest.mark.parametrize("current, why", [
    ("garbage\n", "names 'garbage', not a version of {reg} (known ['v0001'])"),
    ("", "missing or empty but there are versions ['v0001']")])
def test_score_with_a_broken_current_names_policy(run, tmp_path, capsys, current, why):
    reg = tmp_path / "reg"
    assert cli.main(["policy", "publish", "--registry", str(reg), "--model", str(run / "model"),
                     "--frontier", str(run / "frontier" / "frontier.json"), "--logs",
                     str(run / "data" / "logs.parquet"), "--point", "0", "--reason", "t"]) == 0
    (reg / "CURRENT").write_text(current)
    capsys.readouterr()
    out = tmp_path / "scored.parquet"
    assert cli.main(["score", "--policy", str(reg), "--requests",
                     str(run / "data" / "requests.parquet"), "--out", str(out)]) == 2
    assert cli_error(capsys) == f"--policy: CURRENT: {why.format(reg=reg)}"
    assert not out.exists()


# ----------------------------------------------------------------------------- 5. broken pipe

PLAN = ["plan", "--actions", "36", "--share", "0.05", "--requests-per-day", "2e6",
        "--base-rate", "0.415"]


class _ClosedPipe:
    def write(self, s):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


def test_a_closed_stdout_ends_quietly_with_141(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert cli.main(PLAN) == 141
    assert capsys.readouterr().err == ""


def test_a_closed_pipe_of_the_console_script_ends_quietly_with_141():
    r, w = os.pipe()
    os.close(r)  # the reader went away, as `| head -1` does after one line
    try:
        p = subprocess.run([os.path.join(os.path.dirname(sys.executable), "puts-jax"), *PLAN],
                           stdout=w, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(w)
    assert (p.returncode, p.stderr) == (141, "")


# ----------------------------------------------------------------------------- 6. Ctrl-C on import

class _InterruptImport:
    """A meta-path finder that raises KeyboardInterrupt when ``name`` is imported, as a Ctrl-C
    during jax's import would (SIGINT arrives while the module loads)."""

    def __init__(self, name):
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.name:
            import signal
            os.kill(os.getpid(), signal.SIGINT)
        return None


@pytest.mark.parametrize("module, prog", [("puts_jax.cli", "puts-jax"),
                                          ("train.main", "python -m train")])
def test_ctrl_c_during_the_imports_is_one_line(capsys, monkeypatch, module, prog):
    import signal

    import puts_jax_entry

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler in this process")
    parent, _, child = module.rpartition(".")
    __import__(module)
    monkeypatch.setattr(sys.modules[parent], child, sys.modules[module])  # restored after
    monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(sys, "meta_path", [_InterruptImport(module)] + sys.meta_path)
    assert puts_jax_entry.imported(module, prog) is None
    assert one_line(capsys) == f"{prog}: interrupted"
    assert module in sys.modules  # the import finished; the interrupt waited for it


@pytest.mark.parametrize("argv, prog", [
    ([os.path.join(os.path.dirname(sys.executable), "puts-jax"), *PLAN], "puts-jax"),
    ([sys.executable, "-m", "train", "--logs", "x", "--heldout", "y", "--workdir", "z"],
     "python -m train")])
def test_ctrl_c_at_start_up_exits_130_with_one_line(argv, prog):
    """SIGINT 0.5 s after the start, while jax loads (about 2 s on one core)."""
    import signal
    import time

    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=ROOT)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert (p.returncode, err) == (130, f"{prog}: interrupted\n")


# ----------------------------------------------------------------------------- 7. plan days

def test_plan_days_and_max_days_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([*PLAN, "--days", "1", "--max-days", "5"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "puts-jax plan: error: argument --max-days: not allowed with argument --days")


# ----------------------------------------------------------------------------- 8. sweep seen log

@pytest.mark.parametrize("roles", [("logs",), ("heldout",), ()])
def test_a_sweep_on_a_log_training_saw_warns_and_records_it(run, tmp_path, capsys, roles):
    from train.checkpointing import input_identity

    wd = tmp_path / "wd"
    shutil.copytree(run / "model", wd / "selected_model")
    ev = str(run / "data" / "evaluation.parquet")
    other = str(run / "data" / "heldout.parquet")
    inputs = {r: input_identity(ev if r in roles else other) for r in ("logs", "heldout")}
    (wd / "inputs.json").write_text(json.dumps(inputs))
    out = tmp_path / "fr"
    assert cli.main(["sweep", "--model", str(wd / "selected_model"), "--logs", ev, "--out",
                     str(out), "--n-lambdas", "3", "--bootstrap", "0", "--no-halves"]) == 0
    doc = json.loads((out / "frontier.json").read_text())
    ti = doc["provenance"]["training_inputs"]
    assert ti == {"record": str(wd / "inputs.json"), "seen_as": list(roles)}
    err = capsys.readouterr().err
    if not roles:
        assert err == "" and not any("training did not see" in w for w in doc["warnings"])
        return
    how = {"logs": "trained on", "heldout": "checkpoint-selected on"}[roles[0]]
    warn = (f"the log is one the model was {how} (same sha256 as {roles[0]} in "
            f"{wd / 'inputs.json'}): its estimates are optimistic and the frontier is not an "
            "unseen-data estimate; sweep a log training did not see (simulate's "
            "evaluation.parquet, or a 'data split' share held out of training)")
    assert err == f"puts-jax: warning: --logs: {warn}\n"
    assert warn in doc["warnings"]


def test_a_model_outside_a_train_workdir_is_not_checked(run):
    ti = sweep_job.training_inputs(str(run / "model"), "0" * 64)
    assert ti == {"record": None, "seen_as": []}


# ----------------------------------------------------------------------------- 9. train settles

def _half_moved_pair(run, folder, monkeypatch):
    """A split pair in ``folder`` whose move was stopped after a.parquet (as a kill between the
    renames leaves it); returns the new pair's bytes."""
    src = str(run / "data" / "logs.parquet")
    logs.split_log(src, str(folder / "a.parquet"), str(folder / "b.parquet"), 0.5, 1)
    fresh = folder.parent / "fresh"
    fresh.mkdir()
    logs.split_log(src, str(fresh / "a.parquet"), str(fresh / "b.parquet"), 0.5, 2)
    real = os.replace

    def replace(s, d):
        if os.fspath(d) == str(folder / "b.parquet"):  # the second move in
            raise OSError(errno.EIO, "stopped between the renames")
        return real(s, d)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        logs.split_log(src, str(folder / "a.parquet"), str(folder / "b.parquet"), 0.5, 2)
    monkeypatch.setattr(os, "replace", real)
    assert (folder / logs.SPLIT_STAGING).is_dir()
    return {k: (fresh / k).read_bytes() for k in ("a.parquet", "b.parquet")}


def test_train_settles_a_half_moved_split_pair_before_reading(run, tmp_path, monkeypatch):
    import train.main as main_mod

    folder = tmp_path / "split"
    folder.mkdir()
    new = _half_moved_pair(run, folder, monkeypatch)
    seen = {}

    def fake_train(cfg, workdir, logs_path, heldout_path):
        seen.update({k: open(p, "rb").read() for k, p in (("a.parquet", logs_path),
                                                           ("b.parquet", heldout_path))})
        return {}
    monkeypatch.setattr(main_mod, "train_and_evaluate", fake_train)
    assert main_mod.main(["--config", "tiny", "--logs", str(folder / "a.parquet"), "--heldout",
                          str(folder / "b.parquet"), "--workdir", str(tmp_path / "wd")]) == 0
    assert seen == new and not (folder / logs.SPLIT_STAGING).exists()


def test_train_names_a_pair_it_cannot_settle(run, tmp_path, monkeypatch, capsys):
    import train.main as main_mod

    folder = tmp_path / "split"
    folder.mkdir()
    _half_moved_pair(run, folder, monkeypatch)
    _no_work(monkeypatch, main_mod, "train_and_evaluate")

    def read_only(f):
        raise PermissionError(13, "Permission denied", f)
    monkeypatch.setattr(logs, "recover_split", read_only)
    before = snapshot(folder)
    assert main_mod.main(["--config", "tiny", "--logs", str(folder / "a.parquet"), "--heldout",
                          str(folder / "b.parquet"), "--workdir", str(tmp_path / "wd")]) == 2
    assert one_line(capsys) == (
        f"python -m train: error: --logs: a killed 'data split' left its pair in {folder} half "
        f"moved and it could not be settled ([Errno 13] Permission denied: '{folder}'); run the "
        "command again where that folder is writable, or re-run the split")
    assert snapshot(folder) == before and not (tmp_path / "wd").exists()


# ----------------------------------------------------------------------------- 11. chunk rows

def test_a_chunked_error_says_which_rows_were_checked(tmp_path):
    world = sim.make_world(sim.SimConfig.tiny())
    path = str(tmp_path / "log.parquet")
    logs.write_log(path, **sim.simulate_log(world, 40, 1))
    t = pq.read_table(path)
    i = t.schema.get_field_index("propensity")
    pq.write_table(t.set_column(i, t.schema.field(i), pa.array([2.0] * 40)), path)
    with pytest.raises(logs.InputError) as e:
        list(logs.iter_log_chunks(path, 16))
    assert str(e.value) == (
        f"{path}: propensity: propensity above 1 (in rows 0 to 15 of 40: rows are checked in "
        "chunks of 16, and checking stops at the first chunk with bad rows) at rows "
        "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9] (+6 more)")
    with pytest.raises(logs.InputError) as e:  # one chunk: the count is the file's
        list(logs.iter_log_chunks(path, 64))
    assert str(e.value).endswith("propensity above 1 at rows [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] "
                                 "(+30 more)")
