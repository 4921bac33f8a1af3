r"""PPO (Schulman et al. 2017): clipped importance ratios, several epochs of minibatches.

Per update: a rollout of ``num_steps`` × ``num_envs`` steps, GAE(λ) advantages, then
``num_epochs`` passes over shuffled minibatches, one optimiser step on each for

$$
L = -\frac{1}{B}\sum \min\left(\rho \hat A,\ \operatorname{clip}(\rho, 1 - \epsilon, 1 + \epsilon)\,
  \hat A\right) + c_v (V - V_{\text{target}})^2 - c_H\, H[\pi], \qquad \rho = \pi_\theta(a \mid s)
  / \pi_{\text{old}}(a \mid s)
$$

(``scorefn.rl.actor_critic.loss``), whose policy gradient is the score-function estimate with
signal ρ Â 1[unclipped]. Options: value clipping (``clip_value``), stopping the epochs once
the approximate KL(π_old ‖ π_θ) of a minibatch exceeds ``target_kl``, advantage
standardisation per minibatch, CleanRL's linear learning-rate annealing (``anneal_lr``):
update i = 0, 1, ... of ``total_updates`` steps at α (1 − i / ``total_updates``), and at 0 past
the last (``rl.train`` sets ``total_updates`` from ``total_steps``), and advantages computed
again with the current critic (``recompute_advantages``; Andrychowicz et al. 2021, "What
Matters in On-Policy Reinforcement Learning?", recommend it): before each epoch, or, with
truncated GAE (``gae_horizon`` H), in each minibatch, as brax's PPO does. The minibatches are
then made of whole H-step segments of one environment each, shuffled, and a minibatch's
advantages are the segments' GAE under the critic being trained, its values those of the
loss's own forward pass (one extra value per segment, at the observation that follows it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from scorefn.rl import actor_critic
from scorefn.rl.actor_critic import State
from scorefn.rl.networks import ActorCritic
from scorefn.rl.returns import gae
from scorefn.rl.rollout import Transition


@dataclasses.dataclass(frozen=True)
class Config(actor_critic.Config):
    num_steps: int = 32
    gamma: float = 0.98
    gae_lambda: float = 0.8
    num_epochs: int = 20
    minibatch_size: int = 256
    learning_rate: float = 1e-3
    clip_eps: float = 0.2
    clip_value: float | None = None
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float = 0.5
    target_kl: float | None = None
    normalize_advantages: bool = True
    anneal_lr: bool = False
    # GAE again with the current critic: before each epoch, or per minibatch with gae_horizon
    recompute_advantages: bool = False
    total_updates: int = 0  # of the annealing; rl.train fills it in from total_steps

    def __post_init__(self):
        super().__post_init__()
        if self.anneal_lr and self.target_kl is not None:
            raise ValueError("anneal_lr counts optimiser steps (num_epochs × minibatches per "
                             "update), which target_kl's early stop skips: use one or the other")
        if self.recompute_advantages and self.gae_horizon is not None and (
                self.num_steps % self.gae_horizon or self.minibatch_size % self.gae_horizon):
            raise ValueError(
                "recompute_advantages with gae_horizon computes advantages per minibatch of "
                f"whole {self.gae_horizon}-step segments: num_steps ({self.num_steps}) and "
                f"minibatch_size ({self.minibatch_size}) must be multiples of gae_horizon")


episodic = False


def optimizer_steps_per_update(config: Config) -> int:
    """num_epochs × minibatches: the optimiser steps of one update."""
    n = config.num_envs * config.num_steps
    return config.num_epochs * max(1, n // config.minibatch_size)


def learning_rate(config: Config) -> float | optax.Schedule:
    """α, or with ``anneal_lr`` the schedule α (1 − i / total_updates)₊ at optimiser step c,
    i = c // ``optimizer_steps_per_update``: constant within an update, as CleanRL's."""
    if not config.anneal_lr:
        return config.learning_rate
    if not (isinstance(config.total_updates, int) and config.total_updates >= 1):
        raise ValueError("anneal_lr needs total_updates >= 1 (the updates the learning rate "
                         f"falls to 0 over; rl.train sets it), got {config.total_updates!r}")
    per_update, total, rate = (optimizer_steps_per_update(config), config.total_updates,
                               config.learning_rate)

    def schedule(count: jax.Array) -> jax.Array:
        return rate * jnp.maximum(1.0 - (count // per_update) / total, 0.0)

    return schedule


def optimizer(config: Config) -> optax.GradientTransformation:
    # Flattened: one vector instead of a dozen small leaves (a third less to compile).
    return optax.flatten(optax.chain(optax.clip_by_global_norm(config.max_grad_norm),
                                     optax.adam(learning_rate(config), eps=1e-5)))


def init(key: jax.Array, policy: ActorCritic, env: Any, config: Config) -> State:
    return actor_critic.init(key, policy, env, optimizer(config))


def per_minibatch(config: Config) -> bool:
    """Whether the advantages are computed in each minibatch (of whole segments)."""
    return config.recompute_advantages and config.gae_horizon is not None


def minibatch_step(policy: ActorCritic, config: Config, state: State, minibatch: dict
                   ) -> tuple[State, dict]:
    """One optimiser step on the loss of one minibatch (of steps, or of ``segments``); the
    loss's parts as metrics."""
    advantages = None
    if per_minibatch(config):  # a minibatch of ``segments``, advantages inside the loss
        segment_data = minibatch
        minibatch = {name: segment_data[name].reshape((-1,) + segment_data[name].shape[2:])
                     for name in ("obs", "action", "log_prob", "value")}

        def advantages(value_params, values):
            advantage, target = segment_advantages(
                policy, value_params, values.reshape(segment_data["reward"].shape),
                segment_data, config)
            return advantage.reshape(-1), target.reshape(-1)

    (_, metrics), grads = jax.value_and_grad(actor_critic.loss, has_aux=True)(
        state.params, policy, minibatch, clip_eps=config.clip_eps,
        value_coef=config.value_coef, entropy_coef=config.entropy_coef,
        normalize_advantages=config.normalize_advantages, clip_value=config.clip_value,
        advantages=advantages)
    updates, opt_state = optimizer(config).update(grads, state.opt_state, state.params)
    return State(optax.apply_updates(state.params, updates), opt_state), metrics


def _next_values(values: jax.Array, end_values: jax.Array, end_kept: Any,
                 terminated: jax.Array, truncated: jax.Array, recorded: jax.Array) -> jax.Array:
    """V(s'_t), time first, under a critic whose values at s_t are ``values``: V(s_{t+1})
    within an episode, ``end_values`` after the last step where ``end_kept``; where an episode
    was truncated, and at an end not kept, the ``recorded`` V(s') of the rollout."""
    following = jnp.concatenate([values[1:], end_values[None]])
    within = ~(terminated | truncated)
    within = within.at[-1].set(within[-1] & end_kept)
    return jnp.where(within, following, recorded)


def fresh_advantages(policy: ActorCritic, value_params: Any, batch: Transition,
                     config: Config) -> dict[str, jax.Array]:
    """GAE(λ) advantages and targets of ``batch`` under the critic ``value_params``: V(s_t)
    anew, and V(s'_t) = V(s_{t+1}) anew within an episode; where an episode was truncated
    and at the window's end, where s' was not kept, the value recorded in the rollout."""
    values = policy.value(value_params, batch.obs)
    next_values = _next_values(values, batch.next_value[-1], False, batch.terminated,
                               batch.truncated, batch.next_value)
    data = actor_critic.rollout_data(batch._replace(value=values, next_value=next_values),
                                     config.gamma, config.gae_lambda, config.gae_horizon)
    return {"advantage": data["advantage"], "target": data["target"]}


def segments(batch: Transition, horizon: int) -> dict[str, jax.Array]:
    """The rollout (T, N) cut into its K·N segments of H = ``horizon`` steps of one
    environment (K = T / H), as (K·N, H, ...) arrays of the fields the loss and
    ``segment_advantages`` read; ``end_obs`` (K·N, ...) is the observation after each
    segment's last step, s_{t+1} of its environment, and ``end_kept`` is False for the
    window's last segments, whose s_{t+1} the rollout did not keep."""
    steps, num_envs = batch.reward.shape
    count = steps // horizon

    def cut(x):
        x = x.reshape((count, horizon, num_envs) + x.shape[2:])
        return jnp.moveaxis(x, 2, 1).reshape((count * num_envs, horizon) + x.shape[3:])

    # s_{kH} for the segments k = 1..K-1 follows segment k - 1; the last ones get s_0 as a
    # stand-in, never read (end_kept)
    end_obs = jnp.concatenate([batch.obs[horizon::horizon], batch.obs[:1]])
    end_kept = jnp.broadcast_to((jnp.arange(count) < count - 1)[:, None], (count, num_envs))
    return {**{name: cut(getattr(batch, name)) for name in (
                "obs", "action", "log_prob", "value", "reward", "terminated", "truncated",
                "next_value")},
            "end_obs": end_obs.reshape((count * num_envs,) + end_obs.shape[2:]),
            "end_kept": end_kept.reshape(-1)}


def segment_advantages(policy: ActorCritic, value_params: Any, values: jax.Array,
                       data: dict[str, jax.Array], config: Config
                       ) -> tuple[jax.Array, jax.Array]:
    """GAE(λ) advantages and targets, (S, H), of S ``segments`` under the critic
    ``value_params``, whose values V(s_t) there are ``values``: V(s'_t) = V(s_{t+1}) within
    an episode, V(``end_obs``) after a segment's last step; where an episode was truncated,
    and at the window's end, the value recorded in the rollout (as ``fresh_advantages``)."""
    # time first, as the rollout: (H, S)
    values, reward, terminated, truncated, recorded = (x.T for x in (
        values, data["reward"], data["terminated"], data["truncated"], data["next_value"]))
    next_values = _next_values(values, policy.value(value_params, data["end_obs"]),
                               data["end_kept"], terminated, truncated, recorded)
    advantages, targets = gae(reward, values, next_values, terminated, truncated, config.gamma,
                              config.gae_lambda)
    return advantages.T, targets.T


def update(state: State, batch: Transition, key: jax.Array, policy: ActorCritic,
           config: Config) -> tuple[State, dict]:
    if per_minibatch(config):  # minibatches of whole segments, advantages in the loss
        data = segments(batch, config.gae_horizon)
        size = config.minibatch_size // config.gae_horizon
    else:
        data = actor_critic.rollout_data(batch, config.gamma, config.gae_lambda,
                                         config.gae_horizon)
        size = config.minibatch_size
    n = data["obs"].shape[0]
    num_minibatches = max(1, n // size)

    def epoch(carry, step):
        state, stopped = carry
        index, key = step
        data_now = data
        if config.recompute_advantages and not per_minibatch(config):
            # The first epoch's critic is the rollout's, whose advantages ``data`` holds. The
            # index is the same for every seed, so under vmap this stays a branch.
            data_now = {**data, **jax.lax.cond(
                index == 0, lambda _: {name: data[name] for name in ("advantage", "target")},
                lambda value_params: fresh_advantages(policy, value_params, batch, config),
                state.params["value"])}
        if n == size:  # the whole batch: its mean loss needs no shuffle
            shuffled = jax.tree.map(lambda x: x[None], data_now)
        else:
            order = jax.random.permutation(key, n)[: num_minibatches * size]
            shuffled = jax.tree.map(
                lambda x: x[order].reshape((num_minibatches, -1) + x.shape[1:]), data_now)

        def minibatch(carry, mb):
            state, stopped = carry
            new_state, metrics = minibatch_step(policy, config, state, mb)
            # KL early stop: once a minibatch overshoots, keep the state and skip the rest.
            keep = stopped
            state = jax.tree.map(lambda old, new: jnp.where(keep, old, new), state, new_state)
            if config.target_kl is not None:
                stopped = stopped | (metrics["approx_kl"] > 1.5 * config.target_kl)
            return (state, stopped), metrics

        (state, stopped), metrics = jax.lax.scan(minibatch, (state, stopped), shuffled)
        return (state, stopped), metrics

    (state, stopped), metrics = jax.lax.scan(
        epoch, (state, jnp.array(False)),
        (jnp.arange(config.num_epochs), jax.random.split(key, config.num_epochs)))
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics["early_stopped"] = stopped
    return state, metrics
