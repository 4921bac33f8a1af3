r"""A2C (Mnih et al. 2016, synchronous): one gradient step per short rollout.

Per update: ``num_steps`` × ``num_envs`` steps, GAE(λ) advantages Â (λ = 1: n-step returns
minus V), optionally standardised, then one step on

$$
-\frac{1}{N}\sum_t \hat A_t \log \pi_\theta(a_t \mid s_t) + c_v \left(V_\phi(s_t) - (\hat A_t +
  V(s_t))\right)^2 - c_H\, H[\pi(\cdot \mid s_t)]
$$

with the policy part from ``scorefn.rl.policy_gradient.policy_gradient``, the gradient
clipped to ``max_grad_norm`` and RMSprop (SB3's defaults, which the peer benchmark uses).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from scorefn.estimators import standardized
from scorefn.rl.networks import ActorCritic, NetworkConfig
from scorefn.rl.policy_gradient import combine, entropy_grad, policy_gradient
from scorefn.rl.returns import gae
from scorefn.rl.rollout import Transition, flatten


@dataclasses.dataclass(frozen=True)
class Config(NetworkConfig):
    num_envs: int = 8
    num_steps: int = 5
    learning_rate: float = 7e-4
    gamma: float = 0.99
    gae_lambda: float = 1.0
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float = 0.5
    normalize_advantages: bool = False
    rms_decay: float = 0.99
    rms_eps: float = 1e-5


class State(NamedTuple):
    params: Any
    opt_state: Any


episodic = False


def optimizer(config: Config) -> optax.GradientTransformation:
    # Flattened: one vector instead of a dozen small leaves (less to compile).
    return optax.flatten(optax.chain(optax.clip_by_global_norm(config.max_grad_norm),
                                     # eps outside the square root, as torch's RMSprop (SB3)
                                     optax.rmsprop(config.learning_rate, decay=config.rms_decay,
                                                   eps=config.rms_eps, eps_in_sqrt=False)))


def init(key: jax.Array, policy: ActorCritic, env: Any, config: Config) -> State:
    params = policy.init(key, env.obs_shape)
    return State(params, optimizer(config).init(params))


def update(state: State, batch: Transition, key: jax.Array, policy: ActorCritic,
           config: Config) -> tuple[State, dict]:
    advantages, targets = gae(batch.reward, batch.value, batch.next_value, batch.terminated,
                              batch.truncated, config.gamma, config.gae_lambda)
    flat = flatten(batch)
    adv = advantages.reshape(-1)
    if config.normalize_advantages:
        adv = standardized(adv, ddof=1)  # torch's unbiased std, as SB3
    params = state.params
    pg = policy_gradient(policy, params["policy"], flat.obs, flat.action, adv)
    ent_grad, entropy = entropy_grad(policy, params["policy"], flat.obs,
                                     config.entropy_coef)

    def value_loss(p):
        # SB3's convention (no ½), which the peer benchmark uses
        return jnp.mean((policy.value(p, flat.obs) - targets.reshape(-1)) ** 2)

    v_loss, v_grad = jax.value_and_grad(value_loss)(params["value"])
    grads = {"policy": combine((-1.0, pg), (-config.entropy_coef, ent_grad)),
             "value": jax.tree.map(lambda g: config.value_coef * g, v_grad)}
    updates, opt_state = optimizer(config).update(grads, state.opt_state, params)
    return (State(optax.apply_updates(params, updates), opt_state),
            {"value_loss": v_loss, "entropy": entropy})
