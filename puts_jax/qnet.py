"""The Q-network (flax.nnx): request context -> Q: f32[B, A, J], expected reward per action and
objective, in reward units (probabilities for binary rewards).

PRL-PUTS (arXiv 2605.16344) scores every utility-weight vector of the action set for each reward
objective from the request context alone, so the agent runs in parallel with the ranker.

Heads (``QNetConfig.head``):
  "mixture":    Q[a, j] = sum_r pi_r(x) * link_j(V[r, a, j]), pi = softmax(tower(x) @ P).
                A soft latent-segment model: the context only chooses mixture weights over R
                latent user types whose per-action values V are shared by all requests. This has
                the structure of the Bayes context policy (sum_s p(s|x) Vbar[s, a]) and shares
                strength across requests, which a per-action head lacks (SIMULATOR.md). For a
                binary reward the mixture of Bernoullis is itself a Bernoulli, so cross-entropy on
                Q is the exact marginal likelihood of this latent-class model.
                V is either a free table (``action_features=None``) or, given the actions' own
                features (the weight vectors W[a]), ``V[:, a, :] = g(phi_a)`` with g a small MLP
                shared by all actions: neighbouring weight vectors then share strength too
                (SIMULATOR.md: "Q built from the context and the weight vector's own features").
  "per_action": Q[a, j] = link_j(tower(x) @ P)[a, j], a plain MLP with A * J outputs.
link_j is the sigmoid for "binary" rewards, the identity otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from puts_jax.config import QNetConfig

ACTION_HIDDEN = 32  # width of the action-feature MLP g(phi_a) of the mixture head
VALUE_INIT_STD = 0.5  # std of the initial per-type values (breaks the symmetry between types)


def _standardize(features: np.ndarray) -> tuple[tuple[float, ...], ...]:
    """f[A, F] -> per-column standardized rows as a hashable tuple (constant columns -> 0)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2:
        raise ValueError(f"action_features: expected f32[A, F], got shape {f.shape}")
    sd = f.std(0)
    z = (f - f.mean(0)) / np.where(sd > 0, sd, 1.0)
    return tuple(tuple(float(v) for v in row) for row in z)


class QNetwork(nnx.Module):
    """context f32[B, D] (+ optional context_ids i32[B, C]) -> Q f32[B, A, J].

    action_features: optional f[A, F] features of each action (the utility-weight vectors W);
      used by the mixture head to share strength across actions; stored (standardized) as a
      static constant, and in ``spec()``.
    """

    def __init__(self, cfg: QNetConfig, context_dim: int, n_actions: int,
                 reward_kinds: tuple[str, ...], *, rngs: nnx.Rngs,
                 action_features: np.ndarray | None = None):
        self.cfg = cfg
        self.context_dim = int(context_dim)
        self.n_actions = int(n_actions)
        self.reward_kinds = tuple(reward_kinds)
        J = len(self.reward_kinds)
        self.raw_action_features = (None if action_features is None else
                                    tuple(tuple(float(v) for v in r) for r in
                                          np.asarray(action_features, np.float64)))
        self.action_features = None if action_features is None else _standardize(action_features)
        if self.action_features is not None and len(self.action_features) != self.n_actions:
            raise ValueError(f"action_features: {len(self.action_features)} rows for "
                             f"n_actions = {self.n_actions}")
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
            if self.action_features is None:
                init = jax.random.normal(rngs.params(), (R, self.n_actions, J)) * VALUE_INIT_STD
                self.values = nnx.Param(init)
            else:
                F = len(self.action_features[0])
                self.value_hidden = nnx.Linear(F, ACTION_HIDDEN, rngs=rngs)
                self.value_out = nnx.Linear(
                    ACTION_HIDDEN, R * J, rngs=rngs,
                    kernel_init=nnx.initializers.normal(VALUE_INIT_STD))
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

    def type_values(self) -> jax.Array:
        """Per-type values f32[R, A, J] in reward units (mixture head only)."""
        if self.action_features is None:
            raw = self.values[...]
        else:
            phi = jnp.asarray(self.action_features, jnp.float32)  # f32[A, F]
            out = self.value_out(jnp.tanh(self.value_hidden(phi)))  # f32[A, R * J]
            raw = out.reshape(self.n_actions, self.cfg.n_components, -1).transpose(1, 0, 2)
        return self._link(raw)

    def __call__(self, context: jax.Array, context_ids: jax.Array | None = None) -> jax.Array:
        """Q-values f32[B, A, J] in reward units."""
        h = self.features(context, context_ids)
        if self.cfg.head == "mixture":
            pi = jax.nn.softmax(self.mix(h), axis=-1)  # f32[B, R]
            return jnp.einsum("br,raj->baj", pi, self.type_values())
        raw = self.out(h).reshape(h.shape[0], self.n_actions, len(self.reward_kinds))
        return self._link(raw)

    def spec(self) -> dict:
        """JSON-able description that ``from_spec`` rebuilds (shapes, not values)."""
        c = self.cfg
        spec = {"hidden": list(c.hidden), "head": c.head, "n_components": c.n_components,
                "id_vocab_sizes": list(c.id_vocab_sizes), "id_embed_dim": c.id_embed_dim,
                "context_dim": self.context_dim, "n_actions": self.n_actions,
                "reward_kinds": list(self.reward_kinds)}
        if self.raw_action_features is not None:
            spec["action_features"] = [list(r) for r in self.raw_action_features]
        return spec

    @classmethod
    def from_spec(cls, spec: dict, seed: int = 0) -> "QNetwork":
        cfg = QNetConfig(hidden=tuple(spec["hidden"]), head=spec["head"],
                         n_components=spec["n_components"],
                         id_vocab_sizes=tuple(spec["id_vocab_sizes"]),
                         id_embed_dim=spec["id_embed_dim"])
        feats = spec.get("action_features")
        return cls(cfg, spec["context_dim"], spec["n_actions"], tuple(spec["reward_kinds"]),
                   rngs=nnx.Rngs(seed),
                   action_features=None if feats is None else np.asarray(feats, np.float64))
