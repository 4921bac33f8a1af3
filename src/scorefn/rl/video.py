"""A rendered video of a trained policy on a gymnasium environment, without a display.

The policy acts deterministically (its mean action, as in evaluation), reading observations
normalised by the run's frozen statistics when it was trained with them. Frames come from
gymnasium's ``render_mode="rgb_array"``; MuJoCo renders off screen through EGL, which
``record_video`` selects when ``MUJOCO_GL`` is unset and no display is named (it must be
chosen before MuJoCo's renderer is first imported, so set ``MUJOCO_GL=egl`` or ``osmesa``
yourself in a process that rendered before). A ``.gif`` is written with Pillow (through
imageio); an ``.mp4`` needs ``imageio-ffmpeg``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scorefn import validation
from scorefn.rl.envs import observation_encoder, resolve_backend
from scorefn.rl.normalization import ObservationNormalizer

FORMATS = (".gif", ".mp4")


def record_video(result: Any, path: str, *, episodes: int = 1, seed: int = 0,
                 width: int = 480, height: int = 480, max_steps: int | None = None) -> list[float]:
    """Render ``episodes`` deterministic episodes of a ``TrainResult`` (from ``rl.train`` or
    ``rl.load_checkpoint``; its first seed) one after another into ``path`` (``.gif`` or
    ``.mp4``), episode i reset with ``seed * 1000 + i`` as in ``rl.evaluate``. Returns the
    episodes' returns. ``width`` and ``height`` apply to MuJoCo tasks; ``max_steps`` caps
    each episode (default: the task's time limit)."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in FORMATS:
        raise ValueError(f"path must end in one of {FORMATS}; got {path!r}")
    episodes = validation.check_int(episodes, "episodes")
    if resolve_backend(result.env_id) != "gymnasium":
        raise ValueError(f"record_video renders gymnasium environments; {result.env_id} runs on "
                         f"{resolve_backend(result.env_id)}")
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"
    import gymnasium as gym
    import imageio.v2 as imageio

    mujoco = "mujoco" in str(gym.spec(result.env_id).entry_point)
    env = gym.make(result.env_id, render_mode="rgb_array",
                   **({"width": width, "height": height} if mujoco else {}))
    obs_shape, encode = observation_encoder(env.observation_space, result.env_id)
    stats = result.observation_stats
    normalize = (lambda o: o) if stats is None else functools.partial(
        ObservationNormalizer(obs_shape, stats), update=False)
    params = result.params["policy"]
    if len(result.seeds) > 1:
        params = jax.tree.map(lambda x: x[0], params)
    act = jax.jit(lambda p, o: result.policy.mode(p, o[None])[0])
    limit = max_steps or env.spec.max_episode_steps or 1000
    frames, returns = [], []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed * 1000 + i)
            frames.append(_render(env))
            total = 0.0
            for _ in range(limit):
                action = np.asarray(act(params, jnp.asarray(normalize(encode(obs)[None])[0])))
                if result.policy.space.discrete:
                    action = int(action)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                frames.append(_render(env))
                if terminated or truncated:
                    break
            returns.append(total)
    finally:
        env.close()
    fps = int(env.metadata.get("render_fps") or 30)
    if extension == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise ImportError("an .mp4 needs imageio-ffmpeg (pip install imageio-ffmpeg); a .gif "
                              "needs nothing more") from None
        imageio.mimwrite(path, frames, fps=fps)
    else:
        imageio.mimwrite(path, frames, duration=1000 / fps, loop=0)
    return returns


def _render(env: Any) -> np.ndarray:
    try:
        frame = env.render()
    except Exception as error:  # the OpenGL back end's own error types vary
        raise RuntimeError(
            f"rendering {env.spec.id} failed ({type(error).__name__}: {error}): MuJoCo needs an "
            "OpenGL context; without a display set MUJOCO_GL=egl (or osmesa) before the first "
            "render in this process") from None
    return np.asarray(frame, np.uint8)
