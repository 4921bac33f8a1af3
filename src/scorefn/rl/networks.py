"""Policies and value functions: flax MLPs whose policy head is a numpyro distribution.

- discrete actions: Categorical(logits = MLP(s));
- continuous actions: Normal(MLP(s), exp(log σ)) over the action vector (``to_event(1)``),
  with log σ a free parameter vector (state-independent, the default) or a second head
  of the MLP (``state_dependent_std=True``).

The policy and the value function have separate parameters, ``params["policy"]`` and
``params["value"]``, so that the policy's distribution reads only its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from scorefn.rl.envs import Space

# The hidden layers' nonlinearities, by name (silu is brax's "swish")
ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "silu": nn.silu}


class MLP(nn.Module):
    """MLP with orthogonal initialisation (gain √2 inside, ``out_scale`` at the head)."""

    hidden: Sequence[int]
    out: int
    out_scale: float = 1.0
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        for width in self.hidden:
            x = act(nn.Dense(width, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x))
        return nn.Dense(self.out, kernel_init=nn.initializers.orthogonal(self.out_scale))(x)


def check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; "
                         f"got {activation!r}")


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """The network fields every algorithm's ``Config`` shares (it subclasses this)."""

    hidden: tuple[int, ...] = (64, 64)
    log_std_init: float = 0.0  # continuous actions: initial log σ
    state_dependent_std: bool = False  # continuous actions: log σ from the MLP, not a vector
    value_hidden: tuple[int, ...] | None = None  # the value MLP's layers; None: ``hidden``
    activation: str = "tanh"  # the hidden layers' nonlinearity: tanh, relu or silu

    def __post_init__(self):
        check_activation(self.activation)
        if self.value_hidden is not None and not (
                isinstance(self.value_hidden, tuple | list)
                and all(isinstance(w, int) and w > 0 for w in self.value_hidden)):
            raise ValueError("value_hidden must be None (the policy's layers) or a list of "
                             f"positive layer widths, e.g. [256, 256]; got {self.value_hidden!r}")


@dataclasses.dataclass(frozen=True)
class ActorCritic:
    """A policy π_θ(a | s) and a value function V_φ(s)."""

    space: Space
    hidden: tuple[int, ...] = (64, 64)
    state_dependent_std: bool = False
    log_std_init: float = 0.0
    obs_ndim: int = 1  # trailing observation dims, flattened for the MLP (e.g. MinAtar's 10×10×C)
    value_hidden: tuple[int, ...] | None = None  # None: the policy's ``hidden``
    activation: str = "tanh"

    def __post_init__(self):
        check_activation(self.activation)

    @property
    def action_dim(self) -> int:
        return self.space.num_actions if self.space.discrete else int(np.prod(self.space.shape))

    def _actor(self) -> MLP:
        heads = 2 if (not self.space.discrete and self.state_dependent_std) else 1
        return MLP(self.hidden, heads * self.action_dim, out_scale=0.01,
                   activation=self.activation)

    def _critic(self) -> MLP:
        hidden = self.hidden if self.value_hidden is None else self.value_hidden
        return MLP(hidden, 1, out_scale=1.0, activation=self.activation)

    def _flat(self, obs: jax.Array) -> jax.Array:
        if self.obs_ndim == 1:
            return obs
        return obs.reshape(obs.shape[: obs.ndim - self.obs_ndim] + (-1,))

    def init(self, key: jax.Array, obs_shape: tuple[int, ...]) -> dict[str, Any]:
        k_actor, k_critic = jax.random.split(key)
        dummy = self._flat(jnp.zeros(obs_shape, jnp.float32))
        policy = {"net": self._actor().init(k_actor, dummy)}
        if not self.space.discrete and not self.state_dependent_std:
            policy["log_std"] = jnp.full((self.action_dim,), self.log_std_init, jnp.float32)
        return {"policy": policy, "value": self._critic().init(k_critic, dummy)}

    def dist(self, policy_params: dict[str, Any], obs: jax.Array) -> dist.Distribution:
        """π(· | obs) for a batch of observations ``(..., *obs_shape)``."""
        out = self._actor().apply(policy_params["net"], self._flat(obs))
        if self.space.discrete:
            return dist.Categorical(logits=out)
        if self.state_dependent_std:
            mean, log_std = jnp.split(out, 2, axis=-1)
            log_std = jnp.clip(log_std, -5.0, 2.0)
        else:
            mean, log_std = out, jnp.broadcast_to(policy_params["log_std"], out.shape)
        return dist.Normal(mean, jnp.exp(log_std)).to_event(1)

    def value(self, value_params: Any, obs: jax.Array) -> jax.Array:
        return self._critic().apply(value_params, self._flat(obs))[..., 0]

    def mode(self, policy_params: dict[str, Any], obs: jax.Array) -> jax.Array:
        """The deterministic action: argmax of the logits, or the Gaussian's mean."""
        d = self.dist(policy_params, obs)
        if self.space.discrete:
            return jnp.argmax(d.logits, axis=-1)
        return d.base_dist.loc
