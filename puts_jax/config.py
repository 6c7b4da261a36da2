"""Frozen configuration dataclasses with presets and field-naming validation.

One field list per config; presets are ``tiny()`` (tests, seconds) and ``default()`` (the demo).
"""

from __future__ import annotations

import dataclasses


def _require(cond: bool, cls: str, field: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{cls}.{field}: {msg}")


@dataclasses.dataclass(frozen=True)
class QNetConfig:
    """Q-network architecture: context -> Q: f32[A, J].

    head:
      "mixture"   Q[a, j] = link(sum_r pi_r(x) * V[r, a, j]): a soft latent-segment model that
                  shares strength across actions (the context only picks mixture weights pi).
      "per_action" a plain MLP with A * J outputs (the baseline SIMULATOR.md warns about).
    """

    hidden: tuple[int, ...] = (64, 64)  # MLP widths of the context tower
    head: str = "mixture"  # "mixture" or "per_action"
    n_components: int = 8  # latent segments R of the mixture head
    id_vocab_sizes: tuple[int, ...] = ()  # one vocabulary size per categorical id column (C)
    id_embed_dim: int = 8  # embedding width of each categorical id

    def __post_init__(self) -> None:
        _require(len(self.hidden) >= 1 and all(h > 0 for h in self.hidden), "QNetConfig",
                 "hidden", f"needs positive widths, got {self.hidden}")
        _require(self.head in ("mixture", "per_action"), "QNetConfig", "head",
                 f"must be 'mixture' or 'per_action', got {self.head!r}")
        _require(self.n_components >= 1, "QNetConfig", "n_components", "must be >= 1")
        _require(all(v > 0 for v in self.id_vocab_sizes), "QNetConfig", "id_vocab_sizes",
                 "must be positive")

    @classmethod
    def tiny(cls) -> "QNetConfig":
        return cls(hidden=(16,), n_components=4)

    @classmethod
    def default(cls) -> "QNetConfig":
        return cls()


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
    """Serve-pass settings. Sizes here are static (structural); lambda is always traced."""

    top_k: int = 10  # candidates returned per request
    batch_buckets: tuple[int, ...] = (1, 16, 128, 1024, 8192)  # B is padded up to one of these
    candidate_buckets: tuple[int, ...] = (16, 64, 256, 512, 1024)  # N is padded up to one of these
    fallback_action: int = 0  # action used when a request's Q is non-finite

    def __post_init__(self) -> None:
        _require(self.top_k >= 1, "ScoringConfig", "top_k", "must be >= 1")
        for name in ("batch_buckets", "candidate_buckets"):
            b = getattr(self, name)
            _require(len(b) >= 1 and list(b) == sorted(set(b)) and b[0] >= 1, "ScoringConfig",
                     name, f"must be strictly increasing positive sizes, got {b}")
        _require(self.fallback_action >= 0, "ScoringConfig", "fallback_action", "must be >= 0")

    @classmethod
    def tiny(cls) -> "ScoringConfig":
        return cls(top_k=3, batch_buckets=(8, 32), candidate_buckets=(8, 64))

    @classmethod
    def default(cls) -> "ScoringConfig":
        return cls()


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Pareto sweep settings."""

    n_lambdas: int = 21  # L: grid points on the J-simplex (for J = 2: alpha in [0, 1])
    chunk_rows: int = 65536  # log rows per streamed chunk (bounded memory)
    lambda_chunk: int = 8  # lambdas per lax.map step in bench's per-lambda variants; the fused
    # sweep (engine.build_sweep) evaluates every lambda at once on row blocks and ignores it
    confidence: float = 0.95  # interval level

    def __post_init__(self) -> None:
        _require(self.n_lambdas >= 2, "SweepConfig", "n_lambdas", "must be >= 2")
        _require(self.chunk_rows >= 1, "SweepConfig", "chunk_rows", "must be >= 1")
        _require(self.lambda_chunk >= 1, "SweepConfig", "lambda_chunk", "must be >= 1")
        _require(0.5 < self.confidence < 1.0, "SweepConfig", "confidence", "must be in (0.5, 1)")

    @classmethod
    def tiny(cls) -> "SweepConfig":
        return cls(n_lambdas=5, chunk_rows=512, lambda_chunk=2)

    @classmethod
    def default(cls) -> "SweepConfig":
        return cls()
