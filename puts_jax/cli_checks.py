"""Argument checks of the ``puts-jax`` console script, run before any work: every failure is one
line naming the flag (``UsageError``, exit status 2), never a traceback and never a file
written. ``cli`` wires them; this module only reads paths and the parsed arguments. It also
holds the parser class every ``puts-jax`` subcommand and ``python -m train`` use
(``ArgumentParser``), so each option's ``--help`` line shows its default.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import signal
import tempfile
import threading

import numpy as np

from puts_jax.checks import InputError, check_distinct_paths
from puts_jax.sweep_limits import MAX_SEED  # every --seed: a JAX key keeps 32 bits


def parse_guardrail(text: str, names: list[str],
                     directions: list[str] | None = None) -> tuple[int, float]:
    """'clicks >= -1%' -> (index of clicks, -0.01). The percentage must be finite (nan% and inf%
    are malformed) and, for a "max" objective (the default), at least -100%: a drop of more
    than 100% of the baseline means nothing. (For a "min" objective -200% reads "may grow by up
    to 200%".)"""
    try:
        name, rhs = (s.strip() for s in text.split(">="))
        if not rhs.endswith("%"):
            raise ValueError("no %")
        value = float(rhs[:-1]) / 100.0
        if not np.isfinite(value):
            raise ValueError("not finite")
    except ValueError:
        raise UsageError(f"--guardrail: expected a finite relative change in percent such as "
                         f"'clicks >= -1%', got {text!r}")
    if name not in names:
        raise UsageError(f"--guardrail: unknown objective {name!r}; known {names}")
    j = names.index(name)
    if value < -1.0 and (directions or ["max"] * len(names))[j] == "max":
        raise UsageError(f"--guardrail: {text!r}: a relative change below -100% means nothing "
                         f"(-100% already allows {name} to drop to 0)")
    return j, value


def print_line(msg: str = "") -> None:
    """Print one line of a command's output, flushed: every line reaches a pipe at once."""
    print(msg, flush=True)


class HelpFormatter(argparse.RawDescriptionHelpFormatter,
                    argparse.ArgumentDefaultsHelpFormatter):
    """Help that keeps descriptions as written (the module docstrings' layout) and ends each
    option's help with its default, ``(default: 10)``, except where there is none to show: no
    default (None: the option is required, or its help says what applies), a suppressed one
    (``-h``), an empty list (``--guardrail``), an on/off flag (``store_true``: off unless
    given), or a help text that already names the default (it contains "(default")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        if (default is None or default is argparse.SUPPRESS or default == []
                or (action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction))
                or "(default" in text):
            return text
        return super()._get_help_string(action)


# A value, not an option: '-' then a digit, '.digit', 'inf' or 'nan' ('-0.5,1.5', '-1e-3');
# argparse's own pattern took plain numbers only ('--lam -0.5,1.5': "expected one argument").
NEGATIVE_VALUE = re.compile(r"^-(\.?\d|inf|nan)", re.IGNORECASE)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``HelpFormatter`` by default; its subparsers are of
    this class too (argparse makes them of the parent's class), so every ``--help`` of
    ``puts-jax`` and ``python -m train`` lists the defaults. An argument that starts like a
    negative number (``NEGATIVE_VALUE``: ``--lam -0.5,1.5``, ``--days -1,7``, ``--share -1e-3``)
    is the option's value, so the command's own check names what is wrong with it ("--lam:
    coefficients must be non-negative ...") instead of argparse's "expected one argument". No
    option of these parsers starts with '-' and a digit, so nothing else changes meaning."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)
        self._negative_number_matcher = NEGATIVE_VALUE


class UsageError(ValueError):
    """A command-line argument that cannot be used (exit status 2)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``) while a command runs, raised as Ctrl-C's KeyboardInterrupt is: the
    same cleanup runs (no uncommitted staging folder or temp file is left; a commit in progress
    finishes first, ``action_set.deferred_interrupt``); exit status 143 = 128 + SIGTERM."""


@contextlib.contextmanager
def sigterm_raises():
    """While the block runs, SIGTERM raises ``Terminated`` in the main thread; where SIGTERM is
    not at its default (ignored, or an embedding program's) or outside the main thread, the
    block runs as it is."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def terminate(signum, frame):
        raise Terminated()
    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class NothingSelected(RuntimeError):
    """No frontier point passed the guardrails (exit status 3)."""


def check_frontier_matches(doc: dict, model, logs_path: str) -> None:
    """Refuse to publish evidence from another model or action set."""
    from puts_jax import model_io
    from puts_jax.data import logs

    prov = doc.get("provenance", {})
    want = prov.get("model_params_hash")
    if want is not None and want != model_io.params_hash(model):
        raise UsageError(f"--frontier: evaluated a model with params hash {want}; --model has "
                         f"{model_io.params_hash(model)}")
    aset = logs.read_meta(logs_path).action_set
    if prov.get("action_set_hash") not in (None, aset.hash()):
        raise UsageError(f"--frontier: action set {prov.get('action_set_hash')}; --logs has "
                         f"{aset.hash()}")


def floats(flag: str, text: str, example: str) -> list[float]:
    """'0.7,0.3' -> [0.7, 0.3]; anything else is a UsageError naming ``flag``."""
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag}: expected comma-separated numbers such as {example}, got "
                         f"{text!r}") from None


def read_frontier(path: str) -> dict:
    """``report.read_frontier``; a file that is not a frontier.json is named as --frontier.

    A frontier set that a killed sweep left half-moved in the file's folder (its staging folder
    holds the rest) is settled first (``report.recover_frontier``), so a reader never sees new
    and old files mixed; when that fails (a read-only folder), the error says so, naming the
    folder, instead of reading a possibly mixed set."""
    from puts_jax import report

    _settle("--frontier", path, report.recover_frontier, "a killed sweep left the frontier set",
            "re-run the sweep")
    try:
        return report.read_frontier(path)
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSON, InputError, shape
        why = e.msg if isinstance(e, InputError) else f"{type(e).__name__}: {e}"
        why = why if len(why) <= 120 else why[:117] + "..."
        raise UsageError(f"--frontier: not a frontier.json ({path}: {why})") from None


def _check_can_make(flag: str, folder: str) -> str:
    """UsageError unless ``folder`` exists or can be made: its nearest existing ancestor is a
    directory. Returns that ancestor (``folder`` itself when it exists)."""
    parent = folder
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"{flag}: cannot create the folder {folder}: {parent} is not a directory")
    return parent


def _check_writable(flag: str, folder: str, existing: str) -> None:
    """UsageError unless a file can be created in ``existing`` (``folder`` or its nearest
    existing ancestor, where the command would create ``folder``): a probe file is created and
    removed at once, so a read-only folder or file system is named before any work (``os.access``
    alone says yes to root on a read-only bind mount's folders and to /proc)."""
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".puts-jax-probe-")
    except OSError as e:
        raise UsageError(f"{flag}: cannot create a file in {folder} ({e.strerror or e}); nothing "
                         "written") from None
    os.close(fd)
    os.unlink(probe)


def _check_not_empty(flag: str, path: str, what: str) -> None:
    if not path:
        raise UsageError(f"{flag}: an empty path; give a {what} (nothing written)")


def check_out_file(flag: str, path: str) -> None:
    """Before any work: an output file path is not empty or a directory, and its folder exists
    or can be made (the nearest existing ancestor is a directory) and takes new files."""
    _check_not_empty(flag, path, "file path")
    if os.path.isdir(path):
        raise UsageError(f"{flag}: {path} is a directory; give a file path (nothing written)")
    folder = os.path.dirname(os.path.abspath(path))
    _check_writable(flag, folder, _check_can_make(flag, folder))


def check_out_dir(flag: str, path: str) -> None:
    """Before any work: an output folder path is not empty or an existing file (the command
    writes several files into it), can be made and takes new files."""
    _check_not_empty(flag, path, "folder")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag}: {path} is a file; {flag} must be a folder (it writes several "
                         "files there; nothing written)")
    folder = os.path.abspath(path)
    _check_writable(flag, path, _check_can_make(flag, folder))


def check_parquet(flag: str, path: str) -> None:
    """Before any work: ``path`` reads as a Parquet file (not empty, truncated or text); else
    ``--flag FILE: file: not a readable Parquet file (why)``, as ``python -m train`` says."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise InputError("file", [], f"not a readable Parquet file ({err})",
                         f"{flag} {path}") from None


@contextlib.contextmanager
def fields_as_flags(flags: dict[str, str]):
    """Re-raise an InputError of a library field (no source) named in ``flags`` as that flag,
    e.g. {"out_path": "--out"} for ``score_job.score_file``'s argument."""
    try:
        yield
    except InputError as e:
        if e.source or e.field not in flags:
            raise
        raise InputError(flags[e.field], e.rows, e.msg) from None


INPUT_FILES = ("logs", "requests", "frontier", "selection")  # flags naming an existing file
PARQUET_FILES = ("logs", "requests")  # of those, the Parquet ones
PATH_FLAGS = ("out", "out_a", "out_b", "logs", "requests", "frontier", "selection", "data",
              "model", "registry", "policy", "root")  # flags naming a file or folder


def check_inputs(args) -> None:
    """Before any work: no path flag is empty, --out names no input file, input files exist
    (--logs and --requests as readable Parquet files; a split pair a killed ``data split`` left
    half moved beside --logs is settled first), --model is a saved model (``check_model_dir``),
    --data a directory, --chunk-rows >= 1, --seed in range (``check_seed``); each failure an
    error naming its flag."""
    for name in PATH_FLAGS:
        if getattr(args, name, None) == "":
            raise UsageError(f"--{name.replace('_', '-')}: an empty path (nothing written)")
    check_seed(getattr(args, "seed", None))
    out = getattr(args, "out", None)
    for name in INPUT_FILES:
        path = getattr(args, name, None)
        if path is not None and out is not None:  # --out naming an input: the clearer error
            check_distinct_paths({"--out": out}, {f"--{name}": path})
        if path is not None and name == "logs":
            settle_split(path)
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"--{name}: {path} is a directory, not a file" if os.path.isdir(path)
                             else f"--{name}: no such file {path}")
        if path is not None and name in PARQUET_FILES:
            check_parquet(f"--{name}", path)
    if getattr(args, "data", None) is not None and not os.path.isdir(args.data):
        raise UsageError(f"--data: no such directory {args.data}")
    if getattr(args, "model", None) is not None:
        check_model_dir(args.model)
    if getattr(args, "chunk_rows", 1) < 1:
        raise UsageError(f"--chunk-rows: must be >= 1, got {args.chunk_rows}")


def check_seed(seed: int | None) -> None:
    """--seed (``simulate``, ``data split``, ``sweep``) is in [0, ``MAX_SEED``]: one range for
    every command, as ``python -m train --seed``. The sweep's bootstrap key (``jax.random.key``
    without x64) keeps the low 32 bits, so seeds that differ only above them would repeat its
    draws; a seed beyond 64 bits or below 0 overflowed the split's unsigned 64-bit hash with a
    traceback."""
    if seed is not None and seed < 0:
        raise UsageError(f"--seed: must be >= 0, got {seed}")
    if seed is not None and seed > MAX_SEED:
        raise UsageError(f"--seed: must be <= {MAX_SEED} (the 32 bits of a JAX key; one range "
                         f"for every command's --seed), got {seed}")


def settle_split(logs_path: str, flag: str = "--logs") -> None:
    """Before reading ``logs_path``: a pair that a killed ``data split`` left half moved in its
    folder (``logs.recover_split``) is moved in, so the file read is the new one of a whole
    pair; a UsageError naming ``flag`` when that fails (a read-only folder). ``python -m train``
    calls it for --logs and --heldout."""
    from puts_jax.data import logs

    if os.path.isdir(os.path.join(os.path.dirname(os.path.abspath(logs_path)),
                                  logs.SPLIT_STAGING)):
        _settle(flag, logs_path, logs.recover_split, "a killed 'data split' left its pair",
                "re-run the split")


def _settle(flag: str, path: str, recover, what: str, redo: str) -> None:
    """``recover(folder of path)``: a staged set of files half moved into the folder is moved in
    (or discarded when not committed); a UsageError naming ``flag`` when that fails (a
    read-only folder) instead of reading a possibly mixed set."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        recover(folder)
    except OSError as e:
        raise UsageError(f"{flag}: {what} in {folder} half moved and it could not be settled "
                         f"({e}); run the command again where that folder is writable, or "
                         f"{redo}") from None


def check_model_dir(model: str) -> None:
    """--model names a saved model: where ``model_io.load_model`` reads it (``model_folder``:
    the directory, or ``DIR.tmp-old`` left by a save killed between its renames) holds
    spec.json; else a UsageError, suggesting ``DIR/selected_model`` (a training workdir)."""
    from puts_jax import model_io

    def saved(d: str) -> bool:
        return os.path.isfile(os.path.join(model_io.model_folder(d), model_io.SPEC_FILE))

    if saved(model):
        return
    if not os.path.exists(model):
        raise UsageError(f"--model: no such directory {model}")
    hint = os.path.join(model, "selected_model")
    tip = f"; did you mean {hint}?" if saved(hint) else ""
    raise UsageError(f"--model: {model} is not a saved model (no spec.json){tip}")


def as_flag(field: str, args) -> str:
    """A library field named like this command's argument ('requests_per_day',
    'SweepConfig.n_lambdas') as that flag ('--requests-per-day', '--n-lambdas'); else unchanged."""
    name = field.rsplit(".", 1)[-1] if re.fullmatch(r"\w+Config\.\w+", field) else field
    return "--" + name.replace("_", "-") if name in vars(args) and name != "fn" else field


# errno values that mean "this output cannot be written here": a full disk or quota, a file too
# large for the file system, a read-only file system, no permission (the inputs were read first)
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)
FILE_OUTPUTS = ("score", "data split", "policy select")  # commands whose --out (-a/-b) is one file
REGISTRY_WRITES = ("policy publish", "policy set-lambda", "policy rollback")


def _command(args) -> str:
    """'score', 'data split', 'policy select', ...: the command the parsed ``args`` run."""
    return " ".join(filter(None, (getattr(args, "cmd", None), getattr(args, "policy_cmd", None),
                                  getattr(args, "data_cmd", None))))


def _outputs(args) -> list[tuple[str, str, str]]:
    """(flag, its path, the folder written into: a file's folder, where its temp file sits, or
    the output folder) for each output: --out (-a/-b); ``report`` without --out writes into the
    frontier's folder (--frontier), ``policy`` publish/set-lambda/rollback into --registry."""
    cmd, found = _command(args), []
    for name in ("out", "out_a", "out_b"):
        path = getattr(args, name, None)
        if path:
            folder = os.path.abspath(path)
            folder = os.path.dirname(folder) if cmd in FILE_OUTPUTS else folder
            found.append((f"--{name.replace('_', '-')}", path, folder))
    if cmd == "report" and getattr(args, "out", None) is None:
        found.append(("--frontier", args.frontier, os.path.dirname(os.path.abspath(args.frontier))))
    if cmd in REGISTRY_WRITES:
        found.append(("--registry", args.registry, os.path.abspath(args.registry)))
    return found


def write_error(err: BaseException, args) -> str | None:
    """'--out: cannot write PATH (No space left on device); nothing written' for an OSError of
    ``WRITE_ERRNOS`` that writing one of this command's outputs raised (a full disk, a folder
    made read-only meanwhile; the outputs are written atomically, so nothing of them is left);
    None for any other error. An error naming a file (``err.filename``) is matched to the
    output whose folder holds it (a file elsewhere is not an output's: None); one naming no
    file (Arrow's and orbax's writers) is the outputs' (every flag named: the inputs were read
    before it)."""
    if not isinstance(err, OSError) or err.errno not in WRITE_ERRNOS:
        return None
    outs, cmd = _outputs(args), _command(args)
    if err.filename:
        full = os.path.abspath(os.fsdecode(err.filename))
        if any(getattr(args, n, None) and os.path.abspath(getattr(args, n)) == full
               for n in INPUT_FILES):  # an input in the output's folder: not the output's
            return None
        outs = [o for o in outs if full == o[2] or full.startswith(o[2].rstrip(os.sep) + os.sep)]
    if not outs:
        return None
    flags = " / ".join(flag for flag, _, _ in outs)
    paths = " / ".join(path for _, path, _ in outs)
    what = {"policy select": "the selection is not written",  # nor the frontier marked
            "policy rollback": "CURRENT unchanged"}.get(cmd, "nothing written")
    what = "no new version (CURRENT unchanged)" if cmd in REGISTRY_WRITES[:2] else what
    return f"{flags}: cannot write {paths} ({os.strerror(err.errno)}); {what}"
