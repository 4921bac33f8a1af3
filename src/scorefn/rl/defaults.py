"""Default hyperparameters per algorithm and environment, in one place.

Each algorithm's ``Config`` holds its general defaults. The table below overrides them per
environment. The CartPole PPO and A2C settings are rl-zoo's, the settings of the
Stable-Baselines3 peer benchmark. ``TOTAL_STEPS`` is the training budget used when
``total_steps`` is not given.
"""

from __future__ import annotations

from typing import Any

OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "ppo": {
        # rl-zoo: n_envs 8, n_steps 32, batch 256, 20 epochs, gamma 0.98, gae 0.8, lr 1e-3
        "CartPole-v1": {},
        "Acrobot-v1": {"num_envs": 16, "num_steps": 256, "gamma": 0.99, "gae_lambda": 0.94,
                       "num_epochs": 4, "minibatch_size": 1024, "entropy_coef": 0.0,
                       "learning_rate": 1e-3},
        "Pendulum-v1": {"num_envs": 4, "num_steps": 1024, "gamma": 0.9, "gae_lambda": 0.95,
                        "num_epochs": 10, "minibatch_size": 64, "learning_rate": 1e-3,
                        "clip_eps": 0.2, "normalize_advantages": True, "log_std_init": -0.5},
    },
    "a2c": {
        # rl-zoo: n_envs 8, ent_coef 0, SB3 defaults (n_steps 5, RMSprop 7e-4, gae 1.0)
        "CartPole-v1": {},
        "Acrobot-v1": {"entropy_coef": 0.0},
    },
    "reinforce": {
        "CartPole-v1": {},
        "Acrobot-v1": {},
    },
    "trpo": {
        "CartPole-v1": {},
        "Acrobot-v1": {},
        "Pendulum-v1": {"num_envs": 4, "num_steps": 1024, "gamma": 0.9, "gae_lambda": 0.95,
                        "max_kl": 0.02, "log_std_init": -0.5},
    },
    "npg": {
        "CartPole-v1": {},
        "Acrobot-v1": {},
    },
}

TOTAL_STEPS: dict[str, dict[str, int]] = {
    "ppo": {"CartPole-v1": 100_000, "Acrobot-v1": 500_000, "Pendulum-v1": 500_000},
    "a2c": {"CartPole-v1": 500_000, "Acrobot-v1": 500_000},
    "reinforce": {"CartPole-v1": 1_000_000, "Acrobot-v1": 1_000_000},
    "trpo": {"CartPole-v1": 200_000, "Acrobot-v1": 500_000, "Pendulum-v1": 500_000},
    "npg": {"CartPole-v1": 200_000, "Acrobot-v1": 500_000},
}
DEFAULT_TOTAL_STEPS = 500_000


def defaults(algo: str, env_id: str) -> dict[str, Any]:
    return dict(OVERRIDES.get(algo, {}).get(env_id, {}))


def total_steps(algo: str, env_id: str) -> int:
    return TOTAL_STEPS.get(algo, {}).get(env_id, DEFAULT_TOTAL_STEPS)
