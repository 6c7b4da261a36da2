"""What a sweep can be asked for, checked before anything is built or allocated: the number of
lambda points (``check_grid_size``) and of bootstrap resamples (``check_bootstrap_size``), with
the memory each costs, and the bootstrap seed (``check_seed``)."""

from __future__ import annotations

import math

from puts_jax.checks import InputError


MAX_LAMBDA_POINTS = 1001  # lambda points a sweep evaluates at most (see ``check_grid_size``)


def grid_points(n_objectives: int, n_lambdas: int) -> int:
    """P, the number of points of ``lambda_grid(n_objectives, n_lambdas)``, computed without
    building the grid: 1 for J = 1, n_lambdas for J = 2, C(n_lambdas - 2 + J, J - 1) beyond."""
    J, n = int(n_objectives), int(n_lambdas)
    return 1 if J == 1 else n if J == 2 else math.comb(n - 2 + J, J - 1)


def check_grid_size(n_objectives: int, n_lambdas: int, bootstrap: int) -> int:
    """P (``grid_points``), or InputError("n_lambdas") before anything is built or allocated when
    P > ``MAX_LAMBDA_POINTS``. Memory grows with P: the compiled sweep holds one row block's
    f32[rows, P] terms and the [R, P, J] bootstrap sums (J = 2, R = 200, 65,536-row chunks, 1,001
    points: 35 MiB of compiled scratch memory, whatever the chunk's rows), and the pairwise
    verdicts and the bootstrap dominance matrix hold P^2 (x R x J) entries, written into
    frontier.json as a P x P table. (Before the sweep accumulated over row blocks, its per-row
    terms of a whole chunk took 6 GiB there and the run peaked at 6.8 GB of resident memory.)"""
    J, n = int(n_objectives), int(n_lambdas)
    if n < 2:
        raise InputError("n_lambdas", [], "must be >= 2")  # as SweepConfig says it
    P = grid_points(J, n)
    if P <= MAX_LAMBDA_POINTS:
        return P
    most, too_many = 2, n  # bisect: the largest n_lambdas whose grid fits (P grows with it)
    while too_many - most > 1:
        mid = (most + too_many) // 2
        fits = grid_points(J, mid) <= MAX_LAMBDA_POINTS
        most, too_many = (mid, too_many) if fits else (most, mid)
    gib = max(int(bootstrap), 1) * float(P) ** 2 * J / 2 ** 30  # R x P x P x J booleans
    raise InputError("n_lambdas", [], f"{n} gives {P:,} lambda points for J = {J} objectives; a "
                     f"sweep evaluates at most {MAX_LAMBDA_POINTS:,} (memory grows as points^2: "
                     f"the pairwise comparisons alone would take {gib:.3g} GiB); use at most "
                     f"{most:,} for J = {J} (nothing written)")


MAX_RESAMPLES = 100_000  # past this a 95% percentile interval gains no precision, only time
MAX_BOOTSTRAP_BYTES = 2 << 30  # what the bootstrap's per-resample tables may take (bytes)


def check_bootstrap_size(n_objectives: int, points: int, bootstrap: int) -> None:
    """InputError("bootstrap") before anything is built or allocated when R = ``bootstrap``
    resamples cannot be used: R < 0, R > ``MAX_RESAMPLES``, or their tables over
    ``MAX_BOOTSTRAP_BYTES``: the R x P x P x J dominance comparisons and the [R, P, J] resample
    sums and estimates, about R J (P^2 + 128 P) bytes for P lambda points and J objectives
    (``--bootstrap 100000000`` at the default 21 points grew past 20 GB before this check)."""
    R, J, P = int(bootstrap), int(n_objectives), int(points)
    if R < 0:
        raise InputError("bootstrap", [], f"must be >= 0 (0: no bootstrap), got {R}")
    per = J * (P * P + 128 * P)  # bytes a resample takes
    most = min(MAX_RESAMPLES, MAX_BOOTSTRAP_BYTES // per)
    if R > most:
        why = (f"more adds no precision to a 95% interval, only time" if most == MAX_RESAMPLES
               else f"{R:,} would take about {R * per / 2**30:.3g} GiB for {P:,} lambda points "
                    f"and J = {J}")
        raise InputError("bootstrap", [], f"at most {most:,} resamples ({why}); got {R:,} "
                                          f"(nothing written)")


MAX_SEED = 2**32 - 1  # jax.random.key(seed) without x64 keeps the low 32 bits of the seed


def check_seed(seed: int) -> None:
    """InputError("seed") unless 0 <= ``seed`` <= ``MAX_SEED``: ``jax.random.key`` (x64 off)
    keeps the seed's low 32 bits, so 2**32 would draw what 0 draws, and a seed past 64 bits
    raised OverflowError after the model was loaded."""
    if seed < 0:
        raise InputError("seed", [], f"must be >= 0, got {seed}")
    if seed > MAX_SEED:
        raise InputError("seed", [], f"must be <= {MAX_SEED} (the 32 bits of a JAX key), got "
                                     f"{seed}")
