r"""REINFORCE (Williams 1992) on whole episodes.

Each update plays one episode in each of ``num_envs`` environments from a fresh reset, and
steps

$$
\hat g = \frac{1}{E}\sum_e \sum_t (G_t^e - b_t^e)\, \nabla_\theta \log \pi_\theta(a_t^e \mid s_t^e), \qquad
  G_t = \sum_{k \ge t} \gamma^{k-t} r_k
$$

(reward-to-go; the γ^t weighting of later states is dropped, as is usual). The baseline b:

- ``"none"``;
- ``"ema"``: the core's EMA of past batches' G_t, one per time step t (unbiased: it uses
  earlier episodes only);
- ``"leave_one_out"``: the core's leave-one-out mean of the *other* episodes' G_t
  (unbiased: episodes are independent);
- ``"value"``: a learned V_φ(s_t), fitted to G_t by regression (unbiased: V does not depend
  on the action taken at s_t).

Only a truncated episode (time limit) is bootstrapped, and only with ``baseline="value"``,
whose critic is trained; terminated episodes never are.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from scorefn import baselines
from scorefn.rl.networks import ActorCritic, NetworkConfig
from scorefn.rl.policy_gradient import combine, entropy_grad, policy_gradient
from scorefn.rl.returns import discounted_returns
from scorefn.rl.rollout import Transition

BASELINES = ("none", "ema", "leave_one_out", "value")


@dataclasses.dataclass(frozen=True)
class Config(NetworkConfig):
    num_envs: int = 16
    num_steps: int = 0  # unused: rollouts are whole episodes
    learning_rate: float = 3e-3
    value_learning_rate: float = 1e-2
    gamma: float = 0.99
    baseline: str = "leave_one_out"
    ema_decay: float = 0.9
    entropy_coef: float = 0.0
    max_grad_norm: float = 1.0
    value_epochs: int = 5

    def __post_init__(self):
        super().__post_init__()
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}; got {self.baseline!r}")


class State(NamedTuple):
    params: Any
    opt_state: Any
    value_opt_state: Any
    ema: baselines.EmaState


episodic = True


def _optimizers(config: Config):
    policy_opt = optax.chain(optax.clip_by_global_norm(config.max_grad_norm),
                             optax.adam(config.learning_rate))
    return policy_opt, optax.adam(config.value_learning_rate)


def init(key: jax.Array, policy: ActorCritic, env: Any, config: Config) -> State:
    params = policy.init(key, env.obs_shape)
    policy_opt, value_opt = _optimizers(config)
    return State(params, policy_opt.init(params["policy"]), value_opt.init(params["value"]),
                 baselines.ema(config.ema_decay).init((env.max_episode_steps,)))


def gradient(params: Any, ema_state: baselines.EmaState, batch: Transition, policy: ActorCritic,
             config: Config):
    """ĝ from a batch of whole episodes (time first); also the returns, the mask of the
    transitions inside each environment's first episode and the updated EMA state."""
    done = batch.terminated | batch.truncated
    # Transitions up to and including each environment's first episode end.
    alive = jnp.cumprod(jnp.concatenate([jnp.ones_like(done[:1]), ~done[:-1]]), axis=0).astype(bool)
    bootstrap = batch.next_value if config.baseline == "value" else jnp.zeros_like(batch.next_value)
    returns = discounted_returns(batch.reward, batch.terminated, batch.truncated, bootstrap,
                                 config.gamma)
    returns = jnp.where(alive, returns, 0.0)
    per_episode = returns.T  # (E, T): episodes are the samples the core's baselines average over
    if config.baseline == "leave_one_out":
        b = baselines.leave_one_out()(per_episode).T
    elif config.baseline == "ema":
        b = jnp.broadcast_to(ema_state.value, per_episode.shape).T
        ema_state = baselines.ema(config.ema_decay).update(per_episode, ema_state)
    elif config.baseline == "value":
        b = batch.value
    else:
        b = jnp.zeros_like(returns)
    signal = jnp.where(alive, returns - b, 0.0)
    obs = batch.obs.reshape((-1,) + batch.obs.shape[2:])
    actions = batch.action.reshape((-1,) + batch.action.shape[2:])
    pg = policy_gradient(policy, params["policy"], obs, actions, signal.reshape(-1),
                         normalizer=batch.reward.shape[1], runtime_checks=False)
    return pg, returns, alive, ema_state


def update(state: State, batch: Transition, key: jax.Array, policy: ActorCritic,
           config: Config) -> tuple[State, dict]:
    pg, returns, alive, ema_state = gradient(state.params, state.ema, batch, policy, config)
    obs = batch.obs.reshape((-1,) + batch.obs.shape[2:])
    num_envs = batch.reward.shape[1]
    ent_grad, entropy = entropy_grad(policy, state.params["policy"], obs,
                                     config.entropy_coef)
    policy_opt, value_opt = _optimizers(config)
    grads = combine((-1.0, pg), (-config.entropy_coef, ent_grad))
    updates, opt_state = policy_opt.update(grads, state.opt_state, state.params["policy"])
    new_policy = optax.apply_updates(state.params["policy"], updates)

    value_params, value_opt_state = state.params["value"], state.value_opt_state
    value_loss = jnp.zeros(())
    if config.baseline == "value":
        mask = alive.reshape(-1)
        targets = returns.reshape(-1)

        def loss(p):
            v = policy.value(p, obs)
            return jnp.sum(jnp.where(mask, (v - targets) ** 2, 0.0)) / jnp.maximum(mask.sum(), 1)

        def fit(carry, _):
            p, s = carry
            value, g = jax.value_and_grad(loss)(p)
            u, s = value_opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), value

        (value_params, value_opt_state), losses = jax.lax.scan(
            fit, (value_params, value_opt_state), None, length=config.value_epochs)
        value_loss = losses[-1]
    params = {"policy": new_policy, "value": value_params}
    metrics = {"value_loss": value_loss, "entropy": entropy,
               "env_steps": jnp.sum(alive), "episode_length": jnp.sum(alive) / num_envs}
    return State(params, opt_state, value_opt_state, ema_state), metrics
