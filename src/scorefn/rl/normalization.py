r"""Running observation normalisation and reward scaling, as Stable-Baselines3's
``VecNormalize`` and CleanRL's gymnasium wrappers do them on gymnasium rollouts, and
observation normalisation inside compiled (gymnax, brax) runs, as brax's PPO does it.

- Observations: o ↦ clip((o − μ) / √(σ² + ε), −10, 10), with μ, σ² the running mean and
  variance of every observation seen in training (gymnasium's ``RunningMeanStd``, Chan et
  al.'s parallel update). Evaluation and ``rl eval`` use the statistics frozen, as saved in
  the checkpoint.
- Rewards: r_t ↦ clip(r_t / √(Var[R] + ε), −10, 10), with R_t = γ R_{t−1} + r_t the discounted
  return accumulated along each episode (reset at its end) and Var[R] its running variance.
  Only the learner sees scaled rewards; returns are logged and evaluated unscaled.

Both change what the policy gradient sees, not its estimator: the policy and value network
read normalised observations, and the scaled rewards rescale every advantage of a batch by
nearly the same factor.

On gymnasium (``ObservationNormalizer``, numpy) the statistics take in each step's
observations as they come; in a compiled run (``initial_stats``, ``normalized``,
``updated_stats``, JAX) they are fixed during a rollout, which the policy reads normalised by
them, and take in the rollout's observations after it; the update then trains on those
observations normalised by the new statistics, which the next rollout reads (brax's order).
Both keep the same statistics, ``{"mean", "var", "count"}``, which checkpoints and evaluation
use.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from gymnasium.wrappers.utils import RunningMeanStd

CLIP = 10.0
EPSILON = 1e-8


def _state(rms: RunningMeanStd) -> dict[str, Any]:
    return {"mean": np.asarray(rms.mean), "var": np.asarray(rms.var), "count": float(rms.count)}


def _update(rms: RunningMeanStd, batch: np.ndarray) -> None:
    """``rms.update(batch)``; a batch of one (one environment, every step) has mean x and
    variance 0 without numpy's reductions, the costliest part of a step's normalisation."""
    if batch.shape[0] == 1:
        rms.update_from_moments(batch[0], np.zeros_like(batch[0]), 1)
    else:
        rms.update(batch)


def _load(rms: RunningMeanStd, state: dict[str, Any]) -> None:
    rms.mean = np.asarray(state["mean"], np.float64).reshape(np.shape(rms.mean))
    rms.var = np.asarray(state["var"], np.float64).reshape(np.shape(rms.var))
    rms.count = float(state["count"])


class ObservationNormalizer:
    """Observations (batch first) normalised by the running statistics of those seen."""

    def __init__(self, shape: tuple[int, ...], state: dict[str, Any] | None = None):
        self.rms = RunningMeanStd(shape=shape)
        if state is not None:
            _load(self.rms, state)

    def __call__(self, obs: np.ndarray, update: bool = True) -> np.ndarray:
        """``obs`` normalised, after adding it to the statistics when ``update``."""
        if update:
            _update(self.rms, np.asarray(obs, np.float64))
        return np.clip((obs - self.rms.mean) / np.sqrt(self.rms.var + EPSILON), -CLIP,
                       CLIP).astype(np.float32)

    def state(self) -> dict[str, Any]:
        """The statistics (mean, variance, count), for a checkpoint."""
        return _state(self.rms)


class RewardScaler:
    """Rewards divided by the running standard deviation of the discounted return."""

    def __init__(self, num_envs: int, gamma: float, state: dict[str, Any] | None = None):
        self.gamma = gamma
        self.rms = RunningMeanStd(shape=())
        self.returns = np.zeros(num_envs)
        if state is not None:
            _load(self.rms, state)
            self.returns = np.asarray(state["returns"], np.float64).reshape(num_envs)

    def __call__(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        """This step's rewards scaled; the returns of finished episodes start again at 0."""
        self.returns = self.returns * self.gamma + reward
        _update(self.rms, self.returns)
        scaled = np.clip(reward / np.sqrt(self.rms.var + EPSILON), -CLIP, CLIP)
        self.returns[done] = 0.0
        return scaled.astype(np.float32)

    def state(self) -> dict[str, Any]:
        return {**_state(self.rms), "returns": np.asarray(self.returns)}


def initial_stats(shape: tuple[int, ...]) -> dict[str, jax.Array]:
    """The statistics before any observation: μ = 0, σ² = 1, a count of 1e-4 (gymnasium's
    ``RunningMeanStd``, so that the first batch all but replaces them)."""
    return {"mean": jnp.zeros(shape, jnp.float32), "var": jnp.ones(shape, jnp.float32),
            "count": jnp.asarray(1e-4, jnp.float32)}


def normalized(stats: dict[str, Any], obs: jax.Array) -> jax.Array:
    """clip((o − μ) / √(σ² + ε), −10, 10), the statistics frozen."""
    return jnp.clip((obs - stats["mean"]) / jnp.sqrt(stats["var"] + EPSILON), -CLIP, CLIP)


def updated_stats(stats: dict[str, Any], obs: jax.Array) -> dict[str, jax.Array]:
    """The statistics after taking in ``obs`` (any leading axes, then the observation's):
    Chan et al.'s parallel update of mean and variance, the formula of gymnasium's
    ``update_mean_var_count_from_moments``, here in jax.numpy (gymnasium's calls numpy, which
    cannot trace)."""
    batch = obs.reshape((-1,) + stats["mean"].shape)
    n = jnp.asarray(batch.shape[0], jnp.float32)
    mean, var = jnp.mean(batch, axis=0), jnp.var(batch, axis=0)
    total = stats["count"] + n
    delta = mean - stats["mean"]
    m2 = stats["var"] * stats["count"] + var * n + delta ** 2 * stats["count"] * n / total
    return {"mean": stats["mean"] + delta * n / total, "var": m2 / total, "count": total}
