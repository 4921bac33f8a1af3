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
    (``scorefn.rl.normalization``) the policy and the critic act on observations normalised
    by them; the statistics returned have taken in the rollout's observations, and the
    transitions hold the observations normalised by these (brax's order: the update trains on
    what the next rollout will read; ``log_prob``, ``value`` and ``next_value`` stay those
    computed when acting). Without, the observations are the environment's and None is
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
    if obs_stats is None:
        return carry, transition, None
    obs_stats = updated_stats(obs_stats, raw)
    return carry, transition._replace(obs=normalized(obs_stats, raw)), obs_stats


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
        self._act = jax.jit(functools.partial(_act_packed, policy), compiler_options=options)
        self._value = jax.jit(lambda p, o: policy.value(p["value"], o), compiler_options=options)

    def reset(self, seed: int | None = None) -> None:
        """New episodes in every environment (``seed``: the vector env's reset seed)."""
        obs = self.env.reset(seed=seed)
        self.obs = obs if self.observations is None else self.observations(obs)
        self.episode_return = np.zeros(self.env.num_envs, np.float32)

    def rollout(self, params: dict[str, Any], key: jax.Array, num_steps: int) -> Transition:
        num_envs, space = self.env.num_envs, self.policy.space
        action_shape = () if space.discrete else (self.policy.action_dim,)
        batch = {"obs": np.empty((num_steps,) + self.obs.shape, np.float32),
                 "action": np.empty((num_steps, num_envs) + action_shape,
                                    np.int32 if space.discrete else np.float32)}
        for name in ("reward", "log_prob", "value", "episode_return"):
            batch[name] = np.empty((num_steps, num_envs), np.float32)
        for name in ("terminated", "truncated"):
            batch[name] = np.empty((num_steps, num_envs), bool)
        finals = {}  # (t, env) -> the observation an episode ended on
        for t in range(num_steps):
            # one array from the device per step: [action, env action, log π, V] per env
            packed = np.asarray(self._act(params, self.obs, key, np.int32(t)))
            action, env_action, log_prob, value = _unpacked(packed, self.policy)
            obs, reward, terminated, truncated, final = self.env.step(env_action)
            done = terminated | truncated
            if self.observations is not None:
                obs = self.observations(obs)
            batch["obs"][t] = self.obs
            batch["action"][t] = action
            batch["reward"][t] = reward if self.rewards is None else self.rewards(reward, done)
            batch["terminated"][t], batch["truncated"][t] = terminated, truncated
            batch["log_prob"][t], batch["value"][t] = log_prob, value
            total = self.episode_return + reward
            if done.any():
                for i in np.flatnonzero(done):  # the last observation, as the policy reads it
                    finals[(t, i)] = (final[i] if self.observations is None
                                      else self.observations(final[i:i + 1], update=False)[0])
                batch["episode_return"][t] = np.where(done, total, 0.0)
                total = np.where(done, 0.0, total)
            else:
                batch["episode_return"][t] = 0.0
            self.episode_return = total.astype(np.float32)
            self.obs = obs
        # V(s'_t) is the next step's V(s_{t+1}) inside an episode (already computed when
        # acting): only episode ends and the window's last step need the critic again, in
        # one call, instead of one jitted call per step.
        values = batch["value"]
        ends = np.zeros((num_steps,) + self.obs.shape, np.float32)
        ends[-1] = self.obs  # the window's last step continues from here
        for (t, i), o in finals.items():
            ends[t, i] = o
        # one fixed-shape call (no recompilation), for the few entries that need it
        end_values = np.asarray(self._value(params, jnp.asarray(ends)))
        next_values = np.concatenate([values[1:], end_values[-1:]])
        for (t, i) in finals:
            next_values[t, i] = end_values[t, i]
        batch["next_value"] = next_values
        return Transition(**{name: jnp.asarray(batch[name]) for name in Transition._fields})


def _act_packed(policy: ActorCritic, params: dict[str, Any], obs: jax.Array, key: jax.Array,
                t: jax.Array) -> jax.Array:
    """``act``'s results and the action as the environment gets it, as one float32 array
    [num_envs, 2·action_dim + 2] (a discrete action, an integer below 2²⁴, is exact in it):
    one transfer from the device per step instead of four."""
    action, log_prob, value = act(policy, params, obs, jax.random.fold_in(key, t))
    flat = action.reshape(action.shape[0], -1).astype(jnp.float32)
    env_flat = policy.env_action(action).reshape(action.shape[0], -1).astype(jnp.float32)
    return jnp.concatenate([flat, env_flat, log_prob[:, None], value[:, None]], axis=1)


def _unpacked(packed: np.ndarray, policy: ActorCritic):
    """(action, env action, log π, V) from ``_act_packed``'s array."""
    width = (packed.shape[1] - 2) // 2
    if policy.space.discrete:
        action = packed[:, 0].astype(np.int32)
        return action, action.astype(np.int64), packed[:, -2], packed[:, -1]
    action = packed[:, :width]
    env_action = packed[:, width:2 * width].reshape((-1,) + tuple(policy.space.shape))
    return action, env_action, packed[:, -2], packed[:, -1]


def flatten(batch: Transition) -> Transition:
    """(T, E, ...) → (T·E, ...)."""
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), batch)
