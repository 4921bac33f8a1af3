r"""What A2C, PPO and TRPO share: the rollout fields of their Config, their state, its
initialisation, a rollout's advantages; and A2C's and PPO's one loss for a minibatch,
written as in the PPO paper (Schulman et al. 2017, eq. 9):

$$
L(\theta, \phi) = -L^{CLIP}(\theta) + c_v L^{V}(\phi) - c_H\, \frac{1}{B}\sum_n H[\pi_\theta(\cdot
  \mid s_n)], \qquad L^{CLIP}(\theta) = \frac{1}{B}\sum_n \min\big(\rho_n \hat A_n,\
  \operatorname{clip}(\rho_n, 1 - \epsilon, 1 + \epsilon)\, \hat A_n\big),
$$

ρ_n = π_θ(a_n | s_n) / π_old(a_n | s_n) the importance ratio of the action taken (PPO), or
ρ_n = π_θ / stop_gradient(π_θ) = 1 for an on-policy step (A2C, no clip: L^CLIP is then the
policy-gradient surrogate whose gradient is (1/B) Σ Â ∇ log π). L^V = (1/B) Σ (V_φ(s_n) −
V^target_n)², SB3's convention (no ½), optionally clipped around the old values. The
clipped term is the core's ``scorefn.importance.clipped_objective``: its gradient in θ is the
score-function estimate with signal ρ Â 1[unclipped] (∇ρ = ρ ∇ log π_θ), which the tests
check against ``scorefn.rl.policy_gradient.policy_gradient``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from scorefn.estimators import standardized
from scorefn.importance import clipped_objective, log_weights_per_factor
from scorefn.rl.networks import ActorCritic, NetworkConfig
from scorefn.rl.returns import gae
from scorefn.rl.rollout import Transition, flatten
from scorefn.scores import log_prob
from scorefn.validation import check_int


@dataclasses.dataclass(frozen=True)
class Config(NetworkConfig):
    """The fields A2C, PPO and TRPO share: ``num_envs`` environments stepped ``num_steps``
    times per update, the discount γ, GAE's λ, observation normalisation and, on gymnasium
    environments, reward scaling (``scorefn.rl.normalization``). Each algorithm's Config
    subclasses it, with its own defaults and fields."""

    num_envs: int = 8
    num_steps: int = 32
    gamma: float = 0.99
    gae_lambda: float = 0.95
    gae_horizon: int | None = None  # truncated GAE over segments of this many steps (returns.gae)
    # scorefn.rl.normalization: running observation normalisation (every backend), and
    # rewards scaled by the discounted return's running std (gymnasium environments)
    normalize_observations: bool = False
    scale_rewards: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_int(self.num_steps, "num_steps")
        if self.gae_horizon is not None and not (
                isinstance(self.gae_horizon, int) and not isinstance(self.gae_horizon, bool)
                and 1 <= self.gae_horizon <= self.num_steps):
            raise ValueError(f"gae_horizon must be None or an int from 1 to num_steps "
                             f"({self.num_steps}), got {self.gae_horizon!r}")


class State(NamedTuple):
    """The networks' ``{"policy": ..., "value": ...}`` and the optimiser's state."""

    params: Any
    opt_state: Any


def init(key: jax.Array, policy: ActorCritic, env: Any,
         optimizer: optax.GradientTransformation) -> State:
    """Fresh network parameters and the optimiser's state for them."""
    params = policy.init(key, env.obs_shape)
    return State(params, optimizer.init(params))


def rollout_data(batch: Transition, gamma: float, gae_lambda: float,
                 gae_horizon: int | None = None) -> dict[str, jax.Array]:
    """A rollout (num_steps, num_envs) as flat arrays: observations, actions, their
    log-probabilities and values when taken, GAE(λ) advantages (truncated to segments of
    ``gae_horizon`` steps if given) and value targets Â + V."""
    advantages, targets = gae(batch.reward, batch.value, batch.next_value, batch.terminated,
                              batch.truncated, gamma, gae_lambda, gae_horizon)
    flat = flatten(batch)
    return {"obs": flat.obs, "action": flat.action, "log_prob": flat.log_prob,
            "value": flat.value, "advantage": advantages.reshape(-1),
            "target": targets.reshape(-1)}


def loss(params: Any, policy: ActorCritic, data: dict[str, jax.Array], *,
         clip_eps: float | None, value_coef: float, entropy_coef: float,
         normalize_advantages: bool, clip_value: float | None = None,
         advantages: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]] | None = None
         ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L(θ, φ) above on a minibatch ``data`` (``rollout_data``'s keys), and its parts:
    ``policy_loss`` (−L^CLIP), ``value_loss``, ``entropy``; with ``clip_eps`` (PPO) also
    ``approx_kl`` (Schulman's k3 estimate of KL(π_old ‖ π_θ)) and ``clip_fraction`` (the
    share of |ρ − 1| > ε, SB3's). ``clip_eps=None``: the on-policy step (A2C), ρ = 1.

    ``advantages``: None to take Â and V^target from ``data``; else a function of the
    critic's parameters and its values V_φ(s_n) (both held constant) that returns them, for
    advantages from the critic being trained (PPO's per-minibatch GAE), its forward pass
    shared with L^V."""
    dist = policy.dist(params["policy"], data["obs"])
    values = policy.value(params["value"], data["obs"])
    if advantages is None:
        advantages, targets = data["advantage"], data["target"]
    else:
        advantages, targets = advantages(jax.lax.stop_gradient(params["value"]),
                                         jax.lax.stop_gradient(values))
    if normalize_advantages:
        advantages = standardized(advantages, ddof=1)  # torch's unbiased std, as SB3
    if clip_eps is None:
        taken = log_prob(dist, data["action"])
        log_ratio = taken - jax.lax.stop_gradient(taken)
        clip = None
    else:
        log_ratio = log_weights_per_factor(dist, data["action"], data["log_prob"])
        clip = (clip_eps, clip_eps)
    policy_loss = -jnp.mean(clipped_objective(log_ratio, advantages, clip))

    value_loss = (values - targets) ** 2
    if clip_value is not None:
        clipped = data["value"] + jnp.clip(values - data["value"], -clip_value, clip_value)
        value_loss = jnp.maximum(value_loss, (clipped - targets) ** 2)
    value_loss = jnp.mean(value_loss)
    entropy = jnp.mean(policy.entropy(dist))

    total = policy_loss + value_coef * value_loss
    if entropy_coef:  # a zero coefficient leaves the entropy's gradient out of the program
        total = total - entropy_coef * entropy
    metrics = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy}
    if clip_eps is not None:
        log_ratio = jax.lax.stop_gradient(log_ratio)
        ratio = jnp.exp(log_ratio)
        metrics["approx_kl"] = jnp.mean((ratio - 1) - log_ratio)
        metrics["clip_fraction"] = jnp.mean(jnp.abs(ratio - 1) > clip_eps)
    return total, metrics
