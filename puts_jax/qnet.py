"""The Q-network (flax.nnx): request context -> Q: f32[B, A, J], expected reward per action and
objective, in reward units (probabilities for binary rewards).

PRL-PUTS (arXiv 2605.16344) scores every utility-weight vector of the action set for each reward
objective from the request context alone, so the agent runs in parallel with the ranker.

Heads (``QNetConfig.head``):
  "mixture":    Q[a, j] = sum_r pi_r(x) * link_j(V[r, a, j]), pi = softmax(tower(x) @ P).
                A soft latent-segment model: the context only chooses mixture weights over R
                latent user types whose per-action values V are shared by all requests. This has
                the structure of the Bayes context policy (sum_s p(s|x) Vbar[s, a]) and shares
                strength across requests, which a per-action head lacks (SIMULATOR.md).
  "per_action": Q[a, j] = link_j(tower(x) @ P)[a, j], a plain MLP with A * J outputs.
link_j is the sigmoid for "binary" rewards, the identity otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from puts_jax.config import QNetConfig


class QNetwork(nnx.Module):
    """context f32[B, D] (+ optional context_ids i32[B, C]) -> Q f32[B, A, J]."""

    def __init__(self, cfg: QNetConfig, context_dim: int, n_actions: int,
                 reward_kinds: tuple[str, ...], *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.context_dim = int(context_dim)
        self.n_actions = int(n_actions)
        self.reward_kinds = tuple(reward_kinds)
        J = len(self.reward_kinds)
        self.embeds = nnx.List([nnx.Embed(v, cfg.id_embed_dim, rngs=rngs)
                                for v in cfg.id_vocab_sizes])
        width = self.context_dim + cfg.id_embed_dim * len(cfg.id_vocab_sizes)
        layers = []
        for h in cfg.hidden:
            layers.append(nnx.Linear(width, h, rngs=rngs))
            width = h
        self.tower = nnx.List(layers)
        if cfg.head == "mixture":
            R = cfg.n_components
            self.mix = nnx.Linear(width, R, rngs=rngs)
            init = jax.random.normal(rngs.params(), (R, self.n_actions, J)) * 0.01
            self.values = nnx.Param(init)
        else:
            self.out = nnx.Linear(width, self.n_actions * J, rngs=rngs)
        self.binary = tuple(k == "binary" for k in self.reward_kinds)  # static, not state

    def features(self, context: jax.Array, context_ids: jax.Array | None = None) -> jax.Array:
        """Tower output f32[B, H]."""
        h = context.astype(jnp.float32)
        if len(self.embeds):
            if context_ids is None:
                raise ValueError("context_ids: the network has embeddings but none were given")
            h = jnp.concatenate([h] + [e(context_ids[:, c]) for c, e in enumerate(self.embeds)], -1)
        for layer in self.tower:
            h = nnx.relu(layer(h))
        return h

    def _link(self, raw: jax.Array) -> jax.Array:
        return jnp.where(jnp.asarray(self.binary), jax.nn.sigmoid(raw), raw)

    def __call__(self, context: jax.Array, context_ids: jax.Array | None = None) -> jax.Array:
        """Q-values f32[B, A, J] in reward units."""
        h = self.features(context, context_ids)
        if self.cfg.head == "mixture":
            pi = jax.nn.softmax(self.mix(h), axis=-1)  # f32[B, R]
            per_type = self._link(self.values[...])  # f32[R, A, J]
            return jnp.einsum("br,raj->baj", pi, per_type)
        raw = self.out(h).reshape(h.shape[0], self.n_actions, len(self.reward_kinds))
        return self._link(raw)

    def spec(self) -> dict:
        """JSON-able description that ``from_spec`` rebuilds (shapes, not values)."""
        c = self.cfg
        return {"hidden": list(c.hidden), "head": c.head, "n_components": c.n_components,
                "id_vocab_sizes": list(c.id_vocab_sizes), "id_embed_dim": c.id_embed_dim,
                "context_dim": self.context_dim, "n_actions": self.n_actions,
                "reward_kinds": list(self.reward_kinds)}

    @classmethod
    def from_spec(cls, spec: dict, seed: int = 0) -> "QNetwork":
        cfg = QNetConfig(hidden=tuple(spec["hidden"]), head=spec["head"],
                         n_components=spec["n_components"],
                         id_vocab_sizes=tuple(spec["id_vocab_sizes"]),
                         id_embed_dim=spec["id_embed_dim"])
        return cls(cfg, spec["context_dim"], spec["n_actions"], tuple(spec["reward_kinds"]),
                   rngs=nnx.Rngs(seed))
