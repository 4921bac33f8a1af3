"""Deterministic evaluation: the mean return of episodes under the policy's mode (argmax for
discrete actions, the mean for continuous ones), compiled on gymnax and brax, side by side in
one vector env on gymnasium."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scorefn.rl.envs import GymnasiumEnv, JaxEnv
from scorefn.rl.networks import ActorCritic
from scorefn.rl.normalization import ObservationNormalizer, normalized
from scorefn.runs.compiler_options import FAST_COMPILE, cpu_options


def evaluate_jax(env: JaxEnv, policy: ActorCritic, policy_params: Any, key: jax.Array,
                 episodes: int = 20, observation_stats: dict | None = None) -> jax.Array:
    """Mean undiscounted return of ``episodes`` deterministic episodes (argmax / mean action);
    with ``observation_stats`` the policy reads observations normalised by them, frozen."""
    obs, state = jax.vmap(env.reset)(jax.random.split(key, episodes))

    def step(carry, key):
        obs, state, total, alive = carry
        action = policy.mode(policy_params, obs if observation_stats is None
                             else normalized(observation_stats, obs))
        obs, state, reward, terminated, truncated, _ = jax.vmap(env.step)(
            jax.random.split(key, episodes), state, action)
        total = total + jnp.where(alive, reward, 0.0)
        alive = alive & ~(terminated | truncated)
        return (obs, state, total, alive), None

    init = (obs, state, jnp.zeros(episodes), jnp.ones(episodes, bool))
    (_, _, total, _), _ = jax.lax.scan(step, init, jax.random.split(key, env.max_episode_steps))
    return jnp.mean(total)


def evaluate_gymnasium(env_id: str, policy: ActorCritic, policy_params: Any, seed: int = 0,
                       episodes: int = 20, observation_stats: dict | None = None) -> float:
    """Mean return of ``episodes`` deterministic episodes, run side by side in one vector
    env (one policy call per time step for all of them); episode i starts from
    ``reset(seed=seed * 1000 + i)``. With ``observation_stats`` (a trained run's, see
    ``scorefn.rl.normalization``) the policy reads observations normalised by them, frozen."""
    env = GymnasiumEnv(env_id, num_envs=episodes, seed=seed * 1000)
    normalize = (lambda o: o) if observation_stats is None else functools.partial(
        ObservationNormalizer(env.obs_shape, observation_stats), update=False)
    # Some gymnasium envs (CliffWalking) have no time limit, and a deterministic policy can
    # walk in circles: cap the episode as training's rollouts do.
    limit = env.max_episode_steps
    act = jax.jit(lambda p, o: policy.mode(p, o), compiler_options=cpu_options(FAST_COMPILE))
    totals = np.zeros(episodes)
    running = np.ones(episodes, bool)
    try:
        obs = env.reset()
        for _ in range(limit):
            action = np.asarray(act(policy_params, jnp.asarray(normalize(obs))))
            if policy.space.discrete:
                action = action.astype(np.int64)  # toy-text envs index tables with it
            # finished episodes restart in the vector env; their later rewards are not counted
            obs, reward, terminated, truncated, _ = env.step(action)
            totals += np.where(running, reward, 0.0)
            running &= ~(terminated | truncated)
            if not running.any():
                break
    finally:
        env.close()
    return float(np.mean(totals))
