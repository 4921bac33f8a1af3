"""Environments: gymnax and brax (pure JAX, inside jit) and gymnasium (vectorised, in Python).

All expose the same step contract, with termination and truncation kept apart:

    obs, state, reward, terminated, truncated, final_obs = env.step(key, state, action)

``obs`` is already reset when the episode ended; ``final_obs`` is the observation the step
reached (before the reset), whose value bootstraps the return when the episode was
*truncated* (a time limit), never when it *terminated*.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Evaluation thresholds: the return at which an environment counts as solved.
THRESHOLDS = {
    "CartPole-v1": 475.0,
    "Acrobot-v1": -100.0,
    "MountainCar-v0": -110.0,
    "MountainCarContinuous-v0": 90.0,
    "Pendulum-v1": -200.0,
    "InvertedPendulum-v5": 950.0,  # gymnasium's reward_threshold for the task
    "brax:inverted_pendulum": 950.0,  # the same task (a reward of 1 per step, 1,000 steps)
}


@dataclasses.dataclass(frozen=True)
class Space:
    """What the policy must output: ``num_actions`` for discrete actions, else the ``shape``
    and bounds of continuous ones."""

    discrete: bool
    num_actions: int = 0
    shape: tuple[int, ...] = ()
    low: Any = None
    high: Any = None


def check_gymnax_version(version: str) -> None:
    """An ImportError for gymnax before 1.0, whose step returns one ``done`` for termination
    and truncation, which must stay apart here (only a truncation bootstraps)."""
    head = version.split(".")[0]
    if not head.isdigit() or int(head) < 1:
        raise ImportError(f"scorefn.rl needs gymnax >= 1.0 (termination apart from truncation); "
                          f"gymnax {version} is installed: pip install 'gymnax>=1.0' (it needs "
                          "gymnasium < 1.4)")


def _gymnax_ids() -> list[str]:
    import gymnax

    return list(gymnax.registered_envs)


def _gymnasium_ids() -> list[str]:
    import gymnasium

    return sorted(k for k in gymnasium.envs.registry if "/" not in k)


# brax's tasks (``brax.envs``), named here with brax's prefix: ``brax:hopper``
BRAX_ENVS = ("ant", "halfcheetah", "hopper", "humanoid", "humanoidstandup", "inverted_pendulum",
             "inverted_double_pendulum", "pusher", "reacher", "swimmer", "walker2d")
BACKENDS = ("auto", "gymnax", "gymnasium", "brax")


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")


def resolve_backend(env_id: str, backend: str = "auto") -> str:
    """The backend ``backend="auto"`` (or the given one) runs ``env_id`` on: ``"brax"`` for a
    ``brax:`` id, ``"gymnax"`` when gymnax has the id, else ``"gymnasium"``."""
    _check_backend(backend)
    if backend == "auto":
        if env_id.startswith("brax:"):
            return "brax"
        return "gymnax" if env_id in _gymnax_ids() else "gymnasium"
    return backend


def known_envs() -> dict[str, list[str]]:
    return {"gymnax": _gymnax_ids(), "gymnasium": _gymnasium_ids(),
            "brax": [f"brax:{name}" for name in BRAX_ENVS]}


class JaxEnv:
    """A gymnax environment, stepped inside jit; vmap it over keys for many copies."""

    backend = "gymnax"

    def __init__(self, env_id: str):
        import gymnax

        self.id = env_id
        self.env, self.params = gymnax.make(env_id)
        space = self.env.action_space(self.params)
        obs_space = self.env.observation_space(self.params)
        self.obs_shape = tuple(obs_space.shape)
        if hasattr(space, "n"):
            self.action_space = Space(True, int(space.n))
        else:
            self.action_space = Space(False, shape=tuple(space.shape) or (1,),
                                      low=np.asarray(space.low, np.float32),
                                      high=np.asarray(space.high, np.float32))
        self.max_episode_steps = int(getattr(self.params, "max_steps_in_episode", 1000))

    def reset(self, key: jax.Array):
        obs, state = self.env.reset(key, self.params)
        return obs.astype(jnp.float32), state

    def step(self, key: jax.Array, state: Any, action: jax.Array):
        if not self.action_space.discrete:
            action = jnp.clip(action, self.action_space.low, self.action_space.high)
            if self.action_space.shape == (1,) and not self._vector_action:
                action = action[0]
        obs, state, reward, terminated, truncated, info = self.env.step(key, state, action,
                                                                        self.params)
        return (obs.astype(jnp.float32), state, reward.astype(jnp.float32),
                terminated.astype(bool), truncated.astype(bool),
                info["final_observation"].astype(jnp.float32))

    @property
    def _vector_action(self) -> bool:
        # gymnax's Pendulum and MountainCarContinuous take a scalar action
        return self.id not in ("Pendulum-v1", "MountainCarContinuous-v0")


class BraxEnv(JaxEnv):
    """A brax task (``brax:hopper``), stepped inside jit like a gymnax one.

    Episodes last ``episode_length`` steps (brax's default, 1,000): reaching it is a
    truncation, which bootstraps; brax's ``done`` is a termination, which does not. An ended
    episode is reset with the step's key (a fresh initial state, not brax's
    ``AutoResetWrapper``'s cached first state) and the step returns the observation it
    reached as ``final_obs``. Actions are clipped to brax's [-1, 1].
    """

    backend = "brax"

    def __init__(self, env_id: str, physics: str | None = None, episode_length: int = 1000):
        try:
            import brax.envs
        except ImportError as error:
            raise ImportError(f"{env_id} needs brax, which is not installed ({error}): "
                              "pip install 'scorefn[brax]'") from None
        name = env_id.removeprefix("brax:")
        if name not in BRAX_ENVS:
            raise ValueError(f"unknown brax environment {env_id!r}; known: "
                             f"{', '.join('brax:' + n for n in BRAX_ENVS)}")
        self.id = env_id
        self.env = brax.envs.get_environment(name, **({"backend": physics} if physics else {}))
        # brax's observation_size runs a reset op by op (16 s for Ant on 2 CPU cores, each
        # op compiled on its own); its shape needs only a trace
        self.obs_shape = tuple(jax.eval_shape(self.env.reset, jax.random.key(0)).obs.shape)
        size = int(self.env.action_size)
        self.action_space = Space(False, shape=(size,), low=-np.ones(size, np.float32),
                                  high=np.ones(size, np.float32))
        self.max_episode_steps = int(episode_length)

    def reset(self, key: jax.Array):
        state = self.env.reset(key)
        return state.obs.astype(jnp.float32), (state, jnp.zeros((), jnp.int32))

    def step(self, key: jax.Array, state: Any, action: jax.Array):
        brax_state, steps = state
        action = jnp.clip(action, self.action_space.low, self.action_space.high)
        reached = self.env.step(brax_state, action)
        steps = steps + 1
        terminated = jnp.asarray(reached.done) > 0
        truncated = (steps >= self.max_episode_steps) & ~terminated
        fresh_obs, fresh = self.reset(key)
        ended = terminated | truncated

        def pick(new, old):
            return jnp.where(ended, new, old)

        next_state = jax.tree.map(pick, fresh, (reached, steps))
        final_obs = reached.obs.astype(jnp.float32)
        return (pick(fresh_obs, final_obs), next_state, jnp.asarray(reached.reward, jnp.float32),
                terminated, truncated, final_obs)


def observation_encoder(space: Any, env_id: str = "the environment"):
    """``(obs_shape, encode)`` for a gymnasium observation space: a Box keeps its shape; a
    Discrete, MultiDiscrete, MultiBinary or a Tuple/Dict of supported spaces becomes one
    flat float vector through gymnasium's own ``spaces.flatten`` (a Discrete one-hot:
    FrozenLake, Taxi, CliffWalking; Blackjack's Tuple concatenated). ``encode`` maps one
    observation to float32."""
    from gymnasium import spaces

    def supported(sp):
        if isinstance(sp, spaces.Tuple):
            return all(supported(s) for s in sp.spaces)
        if isinstance(sp, spaces.Dict):
            return all(supported(s) for s in sp.spaces.values())
        return isinstance(sp, spaces.Box | spaces.Discrete | spaces.MultiDiscrete |
                          spaces.MultiBinary)

    if not supported(space):
        raise ValueError(f"{env_id}: observation space {space} is not supported; scorefn's "
                         "policies take Box, Discrete, MultiDiscrete, MultiBinary and Tuples or "
                         "Dicts of them")
    if isinstance(space, spaces.Box):
        return tuple(space.shape), lambda obs: np.asarray(obs, np.float32)
    flat = spaces.flatten_space(space)
    return tuple(flat.shape), lambda obs: np.asarray(spaces.flatten(space, obs), np.float32)


def _missing_extra_message(env_id: str, error: Exception) -> str:
    text = str(error)
    extra = next((e for e in ("box2d", "mujoco", "atari", "toy-text", "classic-control")
                  if e in text.lower()), None)
    hint = f"pip install 'gymnasium[{extra}]'" if extra else "install what the message names"
    return f"gymnasium's {env_id} needs a package that is not installed ({text}): {hint}"


VECTORIZATION_MODES = ("sync", "async", "ray")


class OneEnv:
    """One gymnasium environment behind the vector-env interface ``GymnasiumEnv`` uses, with
    ``SyncVectorEnv``'s same-step autoreset and seeding: the same transitions as a
    one-copy ``SyncVectorEnv``, without its batching machinery (a Hopper step through
    ``GymnasiumEnv``: 146 µs over ``SyncVectorEnv``, 121 µs over this). For Box observations,
    which are then batched by adding an axis."""

    def __init__(self, env_id: str):
        import gymnasium as gym

        self.env = gym.make(env_id)
        self.single_action_space = self.env.action_space
        self.single_observation_space = self.env.observation_space

    def reset(self, seed: int | None = None):
        obs, info = self.env.reset(seed=seed)
        return np.asarray(obs)[None], info

    def step(self, action: np.ndarray):
        obs, reward, terminated, truncated, info = self.env.step(action[0])
        info = {}
        if terminated or truncated:
            info = {"final_obs": [obs]}
            obs, _ = self.env.reset()
        return (np.asarray(obs)[None], np.array([reward], np.float64),
                np.array([terminated]), np.array([truncated]), info)

    def close(self) -> None:
        self.env.close()


class GymnasiumEnv:
    """``num_envs`` copies of a gymnasium environment in one vector env, reset on the same
    step (``AutoresetMode.SAME_STEP``) so that ``final_obs`` is at hand.
    ``vectorization_mode``: gymnasium's ``"sync"`` (one process steps every copy in turn),
    ``"async"`` (``AsyncVectorEnv``: a subprocess per copy, stepped in parallel on the
    machine's cores) or ``"ray"`` (``rl.ray_envs.RayVectorEnv``: ``workers`` Ray actors, on
    this machine or a Ray cluster); the same transitions each way."""

    backend = "gymnasium"

    def __init__(self, env_id: str, num_envs: int = 1, seed: int = 0,
                 vectorization_mode: str = "sync", workers: int | None = None):
        import gymnasium as gym

        if vectorization_mode not in VECTORIZATION_MODES:
            raise ValueError(f"vectorization_mode must be one of {VECTORIZATION_MODES}, got "
                             f"{vectorization_mode!r}")
        if workers is not None and vectorization_mode != "ray":
            raise ValueError(f"workers is for vectorization_mode='ray' (Ray actors); got "
                             f"vectorization_mode={vectorization_mode!r}")
        self.id = env_id
        self.num_envs = num_envs
        try:
            if vectorization_mode == "ray":
                from scorefn.rl.ray_envs import RayVectorEnv

                self.env = RayVectorEnv(env_id, num_envs, workers)
            else:
                one = OneEnv(env_id) if (num_envs, vectorization_mode) == (1, "sync") else None
                if one is not None and isinstance(one.single_observation_space, gym.spaces.Box):
                    self.env = one
                else:  # several copies, or observations that need gymnasium's batching
                    if one is not None:
                        one.close()
                    self.env = gym.make_vec(
                        env_id, num_envs=num_envs, vectorization_mode=vectorization_mode,
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
        except gym.error.DependencyNotInstalled as error:
            raise ImportError(_missing_extra_message(env_id, error)) from None
        space = self.env.single_action_space
        single = self.env.single_observation_space
        self.obs_shape, encode_one = observation_encoder(single, env_id)
        from gymnasium import spaces

        if isinstance(single, spaces.Box):
            self._encode_batch = lambda obs: np.asarray(obs, np.float32)
        else:
            self._encode_batch = lambda obs: np.stack([encode_one(o) for o in gym.vector.utils.iterate(
                self.env.observation_space, obs)])
        self._encode_one = encode_one
        if hasattr(space, "n"):
            self.action_space = Space(True, int(space.n))
        else:
            self.action_space = Space(False, shape=tuple(space.shape),
                                      low=np.asarray(space.low, np.float32),
                                      high=np.asarray(space.high, np.float32))
        spec = gym.spec(env_id)
        self.max_episode_steps = int(spec.max_episode_steps or 1000)
        self.seed = seed

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs, _ = self.env.reset(seed=self.seed if seed is None else seed)
        return self._encode_batch(obs)

    def step(self, action: np.ndarray):
        if not self.action_space.discrete:
            action = np.clip(action, self.action_space.low, self.action_space.high)
        obs, reward, terminated, truncated, info = self.env.step(action)
        obs = self._encode_batch(obs)
        final = obs.copy()
        done = np.logical_or(terminated, truncated)
        if done.any():
            for i in np.flatnonzero(done):
                final[i] = self._encode_one(info["final_obs"][i])
        return obs, np.asarray(reward, np.float32), terminated, truncated, final

    def close(self) -> None:
        self.env.close()


def make(env_id: str, backend: str = "auto", **options: Any) -> JaxEnv | GymnasiumEnv:
    """An environment by id. ``backend="auto"`` prefers gymnax (the fully compiled path);
    ``brax:`` ids are brax's (``options``: ``physics``, brax's pipeline backend, e.g.
    ``"positional"``; ``episode_length``)."""
    _check_backend(backend)
    if resolve_backend(env_id, backend) == "brax":
        return BraxEnv(env_id, **{k: v for k, v in options.items()
                                  if k in ("physics", "episode_length")})
    if backend in ("auto", "gymnax") and env_id in _gymnax_ids():
        return JaxEnv(env_id)
    if backend in ("auto", "gymnasium"):
        try:
            ids = _gymnasium_ids()
        except ImportError:
            ids = []
        if env_id in ids:
            return GymnasiumEnv(env_id, **options)
    known = known_envs() if backend == "auto" else {backend: known_envs()[backend]}
    listing = "; ".join(f"{b}: {', '.join(v)}" for b, v in known.items())
    raise ValueError(f"unknown environment {env_id!r} for backend {backend!r}. Known ids - "
                     f"{listing}")
