"""Rollouts: T steps of ``num_envs`` environments under the current policy.

The gymnax path is a ``lax.scan`` over time of a ``vmap`` over environments, so a whole
training run compiles into one function. The gymnasium path steps a vector environment in
Python with the policy jitted. Both return the same ``Transition`` batch, time first.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scorefn import scores
from scorefn.rl.envs import GymnasiumEnv, JaxEnv
from scorefn.rl.networks import ActorCritic
from scorefn.rl.normalization import (
    ObservationNormalizer,
    RewardScaler,
    normalized,
    updated_stats,
)
from scorefn.runs.compiler_options import FAST_COMPILE, cpu_options
from scorefn.sampling import sample


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array  # the policy's draw (squashed actions: u, before c + w·tanh u)
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    log_prob: jax.Array  # log π_old(a | s), for importance ratios
    value: jax.Array  # V(s)
    next_value: jax.Array  # V(s'), s' the observation reached before any reset
    episode_return: jax.Array  # the finished episode's undiscounted return where d, else 0


class EnvCarry(NamedTuple):
    state: Any
    obs: jax.Array
    episode_return: jax.Array


def act(policy: ActorCritic, params: dict[str, Any], obs: jax.Array, key: jax.Array):
    """a ~ π(· | obs) with its log-probability and V(obs), for a batch of observations."""
    action = sample(lambda p: policy.dist(p, obs), params["policy"], key, 1)[0]
    log_prob = scores.log_prob(policy.dist(params["policy"], obs), action)
    return action, log_prob, policy.value(params["value"], obs)


def jax_reset(env: JaxEnv, key: jax.Array, num_envs: int) -> EnvCarry:
    obs, state = jax.vmap(env.reset)(jax.random.split(key, num_envs))
    return EnvCarry(state, obs, jnp.zeros(num_envs, jnp.float32))


def jax_rollout(env: JaxEnv, policy: ActorCritic, params: dict[str, Any], carry: EnvCarry,
                key: jax.Array, num_steps: int, obs_stats: dict[str, jax.Array] | None = None
                ) -> tuple[EnvCarry, Transition, dict[str, jax.Array] | None]:
    """``num_steps`` steps of every environment, inside jit. With ``obs_stats``
    (``scorefn.rl.normalization``) the policy and the critic read observations normalised by
    them, as the transitions hold them, and the statistics returned have taken in the
    rollout's observations; without, the observations are the environment's and None is
    returned."""
    num_envs = carry.obs.shape[0]
    normalize = (lambda o: o) if obs_stats is None else functools.partial(normalized, obs_stats)

    def one_step(carry: EnvCarry, key):
        key_act, key_env = jax.random.split(key)
        seen = normalize(carry.obs)
        # The critic inside the loop, beside the policy: on a CPU, XLA fuses these small
        # products with the step (one batched call after the loop was 1.6× slower on CartPole).
        action, log_prob, value = act(policy, params, seen, key_act)
        obs, state, reward, terminated, truncated, final_obs = jax.vmap(env.step)(
            jax.random.split(key_env, num_envs), carry.state, policy.env_action(action))
        next_value = policy.value(params["value"], normalize(final_obs))
        done = jnp.logical_or(terminated, truncated)
        total = carry.episode_return + reward
        transition = Transition(seen, action, reward, terminated, truncated, log_prob, value,
                                next_value, jnp.where(done, total, 0.0))
        raw = None if obs_stats is None else carry.obs  # for the statistics, when normalising
        return EnvCarry(state, obs, jnp.where(done, 0.0, total)), (transition, raw)

    carry, (transition, raw) = jax.lax.scan(one_step, carry, jax.random.split(key, num_steps))
    return carry, transition, None if obs_stats is None else updated_stats(obs_stats, raw)


class GymnasiumRunner:
    """The same rollout on a gymnasium vector environment (policy calls jitted)."""

    def __init__(self, env: GymnasiumEnv, policy: ActorCritic,
                 observations: ObservationNormalizer | None = None,
                 rewards: RewardScaler | None = None):
        self.env = env
        self.policy = policy
        # Optional: the learner sees normalised observations and scaled rewards; the episode
        # returns recorded are the environment's own.
        self.observations, self.rewards = observations, rewards
        self.reset()
        # Plain jit: called every env step, where cached_jit's ~50 µs per call would show.
        # Fast-compile options: 0.15 s instead of 0.46 s to compile, the same per-call time
        # (dispatch dominates such a small program).
        options = cpu_options(FAST_COMPILE)

        def act_now(params, obs, key, t):  # and the action as the environment gets it
            action, log_prob, value = act(policy, params, obs, jax.random.fold_in(key, t))
            return action, policy.env_action(action), log_prob, value

        self._act = jax.jit(act_now, compiler_options=options)
        self._value = jax.jit(lambda p, o: policy.value(p["value"], o), compiler_options=options)

    def reset(self, seed: int | None = None) -> None:
        """New episodes in every environment (``seed``: the vector env's reset seed)."""
        obs = self.env.reset(seed=seed)
        self.obs = obs if self.observations is None else self.observations(obs)
        self.episode_return = np.zeros(self.env.num_envs, np.float32)

    def rollout(self, params: dict[str, Any], key: jax.Array, num_steps: int) -> Transition:
        fields = {name: [] for name in Transition._fields if name != "next_value"}
        finals = {}  # (t, env) -> the observation an episode ended on
        for t in range(num_steps):
            action, env_action, log_prob, value = jax.device_get(
                self._act(params, self.obs, key, np.int32(t)))
            action_np = np.asarray(action)
            obs, reward, terminated, truncated, final = self.env.step(np.asarray(env_action))
            done = np.logical_or(terminated, truncated)
            if self.observations is not None:
                obs = self.observations(obs)
            learner_reward = reward if self.rewards is None else self.rewards(reward, done)
            for i in np.flatnonzero(done):  # the episode's last observation, as the policy reads it
                finals[(t, i)] = (final[i] if self.observations is None
                                  else self.observations(final[i:i + 1], update=False)[0])
            total = self.episode_return + reward
            for name, value_t in zip(fields, (
                    self.obs, action_np, learner_reward, terminated, truncated,
                    np.asarray(log_prob), np.asarray(value), np.where(done, total, 0.0))):
                fields[name].append(value_t)
            self.episode_return = np.where(done, 0.0, total).astype(np.float32)
            self.obs = obs
        # V(s'_t) is the next step's V(s_{t+1}) inside an episode (already computed when
        # acting): only episode ends and the window's last step need the critic again, in
        # one call, instead of one jitted call per step.
        values = np.stack(fields["value"])
        ends = np.zeros((num_steps,) + self.obs.shape, np.float32)
        ends[-1] = self.obs  # the window's last step continues from here
        for (t, i), o in finals.items():
            ends[t, i] = o
        # one fixed-shape call (no recompilation), for the few entries that need it
        end_values = np.asarray(self._value(params, jnp.asarray(ends)))
        next_values = np.concatenate([values[1:], end_values[-1:]])
        for (t, i) in finals:
            next_values[t, i] = end_values[t, i]
        batch = {name: np.stack(v) for name, v in fields.items()}
        batch["next_value"] = next_values
        return Transition(**{name: jnp.asarray(batch[name]) for name in Transition._fields})


def flatten(batch: Transition) -> Transition:
    """(T, E, ...) → (T·E, ...)."""
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), batch)
