"""Command line: python -m train --config tiny|default|obd --logs PATH --heldout PATH --workdir DIR.

Parses arguments and calls ``train_and_evaluate``; nothing else lives here (STYLE.md 7). Bad input
stops with one line, ``python -m train: error: --logs FILE: FIELD: what is wrong at rows [...]``
(the flag and file named where the error came from one of them), and exit status 2, like
``puts-jax``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import select
import signal
import socket
import sys
import threading

import numpy as np

from puts_jax.checks import InputError
from puts_jax.cli_checks import ArgumentParser, UsageError, settle_split
from train import selection
from train.config import TrainConfig
from train.loop import train_and_evaluate
from train.metrics import NonFiniteLossError
from train.workdir_lock import WorkdirInUseError

PRESETS = {"tiny": TrainConfig.tiny, "default": TrainConfig.default, "obd": TrainConfig.obd}
PROG = "python -m train"
JOINED = False  # this process joined a multi-process run (``_distributed``)


def _preset_values(field: str) -> str:
    """'tiny 2, default 8, obd 30': ``field`` of each preset, for the help of its override."""
    return ", ".join(f"{name} {getattr(make(), field)}" for name, make in PRESETS.items())


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m train`` parser; ``--help`` shows every option's default (``cli_checks``)."""
    p = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(PRESETS), default="default",
                   help="TrainConfig preset (train/config.py)")
    p.add_argument("--logs", required=True, help="training exploration log (Parquet)")
    p.add_argument("--heldout", required=True, help="held-out exploration log (Parquet)")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, selected model")
    p.add_argument("--seed", type=int, default=None,
                   help="override TrainConfig.seed, 0 to 2**32 - 1 (default: the preset's: "
                        f"{_preset_values('seed')})")
    p.add_argument("--epochs", type=int, default=None,
                   help="override TrainConfig.epochs (default: the preset's: "
                        f"{_preset_values('epochs')})")
    p.add_argument("--coordinator", default=None,
                   help="multi-process (multi-host) training: HOST:PORT of process 0, given "
                        "with --num-processes and --process-id to every process "
                        "(jax.distributed.initialize); every process reads the same --logs, "
                        "--heldout and --workdir paths")
    p.add_argument("--num-processes", type=int, default=None,
                   help="multi-process training: how many processes (with --coordinator)")
    p.add_argument("--process-id", type=int, default=None,
                   help="multi-process training: this process's index, 0 to --num-processes - 1")
    p.add_argument("--join-timeout", type=int, default=300,
                   help="multi-process training: seconds a process waits for all "
                        "--num-processes to join at --coordinator before it gives up")
    return p


def _port_free(port: int) -> bool:
    """Whether process 0 can listen on ``port`` (all interfaces, as JAX's coordinator does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _distributed(args: argparse.Namespace) -> str | None:
    """Join a multi-process run when --coordinator, --num-processes and --process-id are given
    (``jax.distributed.initialize``; on CPU with gloo collectives). Returns '--flag: what is
    wrong' for flags that do not fit together, else None. Must run before JAX starts a backend."""
    flags = {"--coordinator": args.coordinator, "--num-processes": args.num_processes,
             "--process-id": args.process_id}
    given = [f for f, v in flags.items() if v is not None]
    if not given:
        return None
    if len(given) < 3:
        missing = ", ".join(f for f in flags if f not in given)
        return f"{given[0]}: multi-process training needs {missing} as well"
    host, _, port = args.coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"--coordinator: expected HOST:PORT, got {args.coordinator!r}"
    if args.num_processes < 1:
        return f"--num-processes: must be >= 1, got {args.num_processes}"
    if not 0 <= args.process_id < args.num_processes:
        return (f"--process-id: must be in [0, {args.num_processes - 1}] "
                f"(--num-processes {args.num_processes}), got {args.process_id}")
    if args.join_timeout < 1:
        return f"--join-timeout: must be >= 1 second, got {args.join_timeout}"
    if args.process_id == 0 and not _port_free(int(port)):  # JAX would segfault (exit 139)
        return (f"--coordinator: port {port} is in use on this machine, where process 0 "
                "listens: choose a free port (the same --coordinator for every process)")
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes; else unused
    print(f"{PROG}: process {args.process_id} of {args.num_processes}: joining at "
          f"{args.coordinator} (waiting up to {args.join_timeout} s for all processes)",
          file=sys.stderr, flush=True)
    # a watchdog thread (the GIL is released while JAX waits): Ctrl-C, which Python would only
    # raise once JAX returns, and --join-timeout (JAX itself would abort later, exit 134 with a
    # C++ stack trace) end the wait with one line; the signal handler's wakeup byte wakes it
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    old_fd = signal.set_wakeup_fd(wake_w.fileno())

    def give_up() -> None:
        ready = select.select([wake_r], [], [], args.join_timeout)[0]
        got = wake_r.recv(64) if ready else b""
        if b"\0" in got:  # joined
            return
        if got:  # a signal: SIGINT
            print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
            os._exit(130)
        print(f"{PROG}: error: --coordinator: process {args.process_id}: not all "
              f"{args.num_processes} processes joined at {args.coordinator} within "
              f"{args.join_timeout} s (--join-timeout); start every process with the same "
              "--coordinator and --num-processes, each --process-id once, process 0 on "
              "HOST", file=sys.stderr, flush=True)
        os._exit(2)

    watchdog = threading.Thread(target=give_up, daemon=True)
    watchdog.start()
    try:
        jax.distributed.initialize(coordinator_address=args.coordinator,
                                   num_processes=args.num_processes, process_id=args.process_id,
                                   initialization_timeout=2 * args.join_timeout + 30)
    finally:
        signal.set_wakeup_fd(old_fd)
        wake_w.send(b"\0")
        watchdog.join()
        wake_r.close()
        wake_w.close()
    global JOINED
    JOINED = True
    # JAX's preemption notifier now holds SIGTERM and the process would train on: a `kill`
    # stops it as Ctrl-C does instead (the step in progress, exit 130; the peers exit 1)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return None


def parse_args(argv=None) -> argparse.Namespace:
    """The parsed arguments (``build_parser``)."""
    return build_parser().parse_args(argv)


def _flag(err: InputError, args: argparse.Namespace) -> str:
    """'--logs ', '--heldout ' or '--workdir ' when ``err`` came from that flag's path, else ''."""
    for flag, path in (("--logs", args.logs), ("--heldout", args.heldout),
                       ("--workdir", args.workdir)):
        if err.source is not None and os.path.abspath(err.source) == os.path.abspath(path):
            return flag + " "
    return ""


def _check_paths(args: argparse.Namespace) -> str | None:
    """'--flag: what is wrong' for the first path flag that cannot be used, checked before
    anything is read or created; None when all can. A log pair that a killed ``data split``
    left half moved beside --logs or --heldout (the README's split -> train flow) is settled
    first, as ``puts-jax`` does (``cli_checks.settle_split``), so the file read is the new one
    of a whole pair."""
    for flag, path in (("--workdir", args.workdir), ("--logs", args.logs),
                       ("--heldout", args.heldout)):
        if not path.strip():
            return f"{flag}: empty path"
    for flag, path in (("--logs", args.logs), ("--heldout", args.heldout)):
        try:
            settle_split(path, flag)
        except UsageError as err:
            return str(err)
    if os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
        return f"--workdir: {args.workdir} is a file"
    near = os.path.abspath(args.workdir)
    while not os.path.exists(near):
        near = os.path.dirname(near)
    if not os.path.isdir(near):
        return f"--workdir: {args.workdir} cannot be created ({near} is a file)"
    if not os.access(near, os.W_OK | os.X_OK):
        return f"--workdir: cannot write in {near}"
    for flag, path in (("--logs", args.logs), ("--heldout", args.heldout)):
        if not os.path.exists(path):
            return f"{flag}: no such file {path}"
        if os.path.isdir(path):
            return f"{flag}: {path} is a directory"
    return None


def _flag_of_path(err: Exception, args: argparse.Namespace) -> str:
    """'--workdir: ' (or --logs / --heldout) when an OSError names a file under that path (a
    full disk, a folder made read-only meanwhile), else ''."""
    name = getattr(err, "filename", None)
    if not isinstance(err, OSError) or not name:
        return ""
    full = os.path.abspath(str(name))
    for flag, path in (("--workdir", args.workdir), ("--logs", args.logs),
                       ("--heldout", args.heldout)):
        base = os.path.abspath(path)
        if full == base or full.startswith(base + os.sep):
            return f"{flag}: "
    return ""


def _overrides(args: argparse.Namespace) -> dict:
    return {k: v for k, v in (("seed", args.seed), ("epochs", args.epochs)) if v is not None}


def _as_flag(err: ValueError, args: argparse.Namespace) -> InputError | None:
    """``TrainConfig.FIELD: msg`` for a field set by a flag as InputError('--FIELD', msg)."""
    field = re.fullmatch(r"TrainConfig\.(\w+): (.*)", str(err), re.S)
    if field and field[1] in _overrides(args):
        return InputError(f"--{field[1]}", [], field[2])
    return None


def _config(args: argparse.Namespace) -> TrainConfig:
    """The --config preset with the --seed / --epochs overrides; a value the config rejects is an
    InputError naming its flag ('--epochs: must be >= 1, got 0'), not the config field."""
    try:
        return dataclasses.replace(PRESETS[args.config](), **_overrides(args))
    except ValueError as err:
        named = _as_flag(err, args)
        if named is not None:
            raise named from None
        raise


def _run(args: argparse.Namespace) -> dict:
    """``train_and_evaluate`` of the arguments; a config error that a flag caused (``--epochs``
    too many for the log) is an InputError naming the flag."""
    try:
        return train_and_evaluate(_config(args), args.workdir, args.logs, args.heldout)
    except InputError:
        raise
    except ValueError as err:
        named = _as_flag(err, args)
        if named is not None:
            raise named from None
        raise


def _non_finite_message(err: NonFiniteLossError, logs: str) -> str:
    """One line for a training loss that became NaN/inf: the step, the loss terms that did, and
    per objective the log row whose reward is largest in magnitude (rewards near f32's range,
    e.g. a count of 1e30, overflow the loss while every value is finite and passes the reader)."""
    bad = sorted(k for k, v in err.record.items()
                 if isinstance(v, float) and not math.isfinite(v))
    where = ""
    try:
        import pyarrow.parquet as pq

        from puts_jax.data.log_schema import read_meta

        names = read_meta(logs).reward_names
        col = pq.read_table(logs, columns=["rewards"]).column("rewards").combine_chunks()
        r = np.abs(np.asarray(col.flatten(), np.float64).reshape(len(col), -1))
        if r.size:
            rows = r.argmax(axis=0)
            parts = [f"{names[j] if j < len(names) else j} {r[rows[j], j]:.4g} at row {rows[j]}"
                     for j in range(r.shape[1])]
            where = "; largest |reward| per objective: " + ", ".join(parts)
    except Exception:  # noqa: BLE001 - the message must not fail; the step alone still helps
        where = ""
    return (f"the training loss became non-finite at step {err.step} "
            f"({', '.join(bad) or 'loss'}): rewards this large overflow the loss in float32"
            f"{where}")


def main(argv=None) -> int:
    """Train; print the selection summary as one sentence on stderr (``selection.describe``)
    and as one JSON line on stdout; returns the exit status (0, or 2 after a one-line
    ``error:`` message on stderr for bad input or arguments, or 130 after one line on Ctrl-C)."""
    args = parse_args(argv)
    problem = _check_paths(args) or _distributed(args)
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    if args.coordinator is not None:  # gloo prints '[Gloo] Rank I is connected ...' on fd 1:
        sys.stdout.flush()  # keep stdout for the JSON line alone (scripts parse it)
        json_fd = os.dup(1)
        os.dup2(2, 1)
    else:
        json_fd = None
    if os.path.samefile(args.logs, args.heldout):
        print(f"{PROG}: warning: --heldout is the same file as --logs: checkpoints are then "
              "selected on the rows they were trained on, and the selected value and gain are "
              "optimistic ('puts-jax data split' makes a held-out log)", file=sys.stderr,
              flush=True)
    try:
        out = _run(args)
    except WorkdirInUseError as err:
        print(f"{PROG}: error: --workdir: {err}", file=sys.stderr)
        return 2
    except InputError as err:
        print(f"{PROG}: error: {_flag(err, args)}{err}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError, IndexError) as err:
        print(f"{PROG}: error: {_flag_of_path(err, args)}{type(err).__name__}: {err}",
              file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"{PROG}: error: --logs: {_non_finite_message(err, args.logs)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - only a peer's failure, below; others re-raised
        import jax

        if json_fd is None or not isinstance(err, jax.errors.JaxRuntimeError):
            raise
        # another process stopped (Ctrl-C, kill, crash): a collective failed here; exit now,
        # without JAX's shutdown barrier, which would wait minutes for the gone process
        first = (str(err).strip().splitlines() or [""])[0][:300]
        print(f"{PROG}: error: process {args.process_id}: another process of the run stopped "
              f"({first}); committed checkpoints stay: rerun every process with the same "
              "command to resume", file=sys.stderr, flush=True)
        os._exit(1)
    except KeyboardInterrupt:  # committed checkpoints and exports stay; the next run resumes
        print(f"{PROG}: interrupted (resume with the same command)", file=sys.stderr)
        return 130
    # the sentence for people on stderr, then the JSON line alone on stdout (scripts parse it)
    print(selection.describe(out), file=sys.stderr, flush=True)
    if json_fd is not None:
        sys.stdout.flush()
        os.dup2(json_fd, 1)
        os.close(json_fd)
    print(json.dumps({k: out.get(k) for k in ("step", "value", "gain_over_global", "gain_shown",
                                               "global_action", "final_step")}))
    return 0
