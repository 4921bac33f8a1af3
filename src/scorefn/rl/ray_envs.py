"""gymnasium environments stepped by Ray actors, on this machine's cores or a cluster's.

``RayVectorEnv`` holds ``num_envs`` copies of a gymnasium environment in ``workers`` Ray
actors, each a synchronous vector env over its contiguous share, and offers the part of
gymnasium's vector-env interface that ``GymnasiumEnv`` uses (``reset``, ``step`` with
``AutoresetMode.SAME_STEP`` and ``info["final_obs"]``, ``close``, the spaces). Copy i is
seeded with ``seed + i`` as in gymnasium's own vector envs, so the transitions are those of
``vectorization_mode="sync"``. Ray is the engine ``scorefn.es`` already uses for its
evaluations: ``ray.init(address=...)`` before the run joins a cluster; otherwise a local
Ray starts with ``workers`` CPUs.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class _Worker:
    """One actor: a synchronous vector env over its share of the copies."""

    def __init__(self, env_id: str, num_envs: int):
        import gymnasium as gym

        self.env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                                vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})

    def reset(self, seed: int | None):
        obs, _ = self.env.reset(seed=seed)
        return obs

    def step(self, action: np.ndarray):
        obs, reward, terminated, truncated, info = self.env.step(action)
        final = info.get("final_obs")
        done = np.logical_or(terminated, truncated)
        finals = [final[i] if done[i] else None for i in range(len(done))]
        return obs, reward, terminated, truncated, finals

    def close(self) -> None:
        self.env.close()


class RayVectorEnv:
    """``num_envs`` copies of ``env_id`` over ``workers`` Ray actors (module docstring)."""

    def __init__(self, env_id: str, num_envs: int, workers: int | None = None):
        try:
            import ray
        except ImportError as error:
            raise ImportError("vectorization_mode='ray' needs Ray: pip install 'scorefn[ray]'"
                              ) from error
        import gymnasium as gym

        workers = min(num_envs, workers or num_envs)
        if not ray.is_initialized():
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        self.ray = ray
        shares = [len(part) for part in np.array_split(np.arange(num_envs), workers)]
        self.offsets = np.concatenate([[0], np.cumsum(shares)[:-1]]).astype(int).tolist()
        remote = ray.remote(num_cpus=1)(_Worker)
        self.actors = [remote.remote(env_id, share) for share in shares]
        self.shares = shares
        self.num_envs = num_envs
        probe = gym.make(env_id)
        self.single_observation_space = probe.observation_space
        self.single_action_space = probe.action_space
        probe.close()
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space,
                                                              num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)

    def _concatenate(self, parts: list[Any]) -> Any:
        """The workers' batches of observations as one batch of all the copies."""
        from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

        space = self.single_observation_space
        singles = [o for part, share in zip(parts, self.shares)
                   for o in iterate(batch_space(space, share), part)]
        return concatenate(space, singles, create_empty_array(space, self.num_envs))

    def reset(self, seed: int | None = None) -> tuple[Any, dict]:
        parts = self.ray.get([actor.reset.remote(None if seed is None else seed + offset)
                              for actor, offset in zip(self.actors, self.offsets)])
        return self._concatenate(parts), {}

    def step(self, action: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict]:
        action = np.asarray(action)
        results = self.ray.get([actor.step.remote(action[o:o + n]) for actor, o, n in
                                zip(self.actors, self.offsets, self.shares)])
        obs = self._concatenate([r[0] for r in results])
        reward, terminated, truncated = (np.concatenate([r[k] for r in results]) for k in (1, 2, 3))
        final = np.empty(self.num_envs, dtype=object)
        final[:] = [f for r in results for f in r[4]]
        return obs, reward, terminated, truncated, {"final_obs": final}

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []

