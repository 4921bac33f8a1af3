r"""A2C (Mnih et al. 2016, synchronous): one gradient step per short rollout.

Per update: ``num_steps`` × ``num_envs`` steps, GAE(λ) advantages Â (λ = 1: n-step returns
minus V), optionally standardised, then one step on

$$
L = -\frac{1}{N}\sum_t \hat A_t \log \pi_\theta(a_t \mid s_t) + c_v \left(V_\phi(s_t) - (\hat A_t +
  V(s_t))\right)^2 - c_H\, H[\pi(\cdot \mid s_t)]
$$

(``scorefn.rl.actor_critic.loss`` without clipping: its policy gradient is the
score-function estimate with signal Â), the gradient clipped to ``max_grad_norm`` and RMSprop
(SB3's defaults, which the peer benchmark uses).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

from scorefn.rl import actor_critic
from scorefn.rl.actor_critic import State
from scorefn.rl.networks import ActorCritic
from scorefn.rl.rollout import Transition


@dataclasses.dataclass(frozen=True)
class Config(actor_critic.Config):
    num_steps: int = 5
    gamma: float = 0.99
    gae_lambda: float = 1.0
    learning_rate: float = 7e-4
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float = 0.5
    normalize_advantages: bool = False
    rms_decay: float = 0.99
    rms_eps: float = 1e-5


episodic = False


def optimizer(config: Config) -> optax.GradientTransformation:
    # Flattened: one vector instead of a dozen small leaves (less to compile).
    return optax.flatten(optax.chain(optax.clip_by_global_norm(config.max_grad_norm),
                                     # eps outside the square root, as torch's RMSprop (SB3)
                                     optax.rmsprop(config.learning_rate, decay=config.rms_decay,
                                                   eps=config.rms_eps, eps_in_sqrt=False)))


def init(key: jax.Array, policy: ActorCritic, env: Any, config: Config) -> State:
    return actor_critic.init(key, policy, env, optimizer(config))


def update(state: State, batch: Transition, key: jax.Array, policy: ActorCritic,
           config: Config) -> tuple[State, dict]:
    data = actor_critic.rollout_data(batch, config.gamma, config.gae_lambda, config.gae_horizon)
    (_, metrics), grads = jax.value_and_grad(actor_critic.loss, has_aux=True)(
        state.params, policy, data, clip_eps=None, value_coef=config.value_coef,
        entropy_coef=config.entropy_coef, normalize_advantages=config.normalize_advantages)
    updates, opt_state = optimizer(config).update(grads, state.opt_state, state.params)
    return State(optax.apply_updates(state.params, updates), opt_state), metrics
