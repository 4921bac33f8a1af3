"""Default hyperparameters per algorithm and environment, in one place.

Each algorithm's ``Config`` holds its general defaults. The table below overrides them per
environment. The CartPole PPO and A2C settings are rl-zoo's, the settings of the
Stable-Baselines3 peer benchmark. PPO on gymnasium's MuJoCo tasks takes CleanRL's
``ppo_continuous_action`` settings (and ``../shared/peers/sb3_mujoco.py``'s): one
environment, 2048 steps per update, 10 epochs of minibatches of 64, Adam at 3e-4, γ 0.99,
GAE 0.95, clip 0.2, gradients clipped at norm 0.5, advantages standardised per minibatch,
observations normalised and rewards scaled (``scorefn.rl.normalization``), the learning rate
annealed linearly to 0 over the run (``anneal_lr``). ``TOTAL_STEPS`` is the training budget
used when ``total_steps`` is not given.
"""

from __future__ import annotations

from typing import Any

# CleanRL's ppo_continuous_action (https://docs.cleanrl.dev/rl-algorithms/ppo/), per task.
_MUJOCO_PPO = {"num_envs": 1, "num_steps": 2048, "num_epochs": 10, "minibatch_size": 64,
               "learning_rate": 3e-4, "gamma": 0.99, "gae_lambda": 0.95, "clip_eps": 0.2,
               "value_coef": 0.5, "entropy_coef": 0.0, "max_grad_norm": 0.5,
               "normalize_advantages": True, "normalize_observations": True,
               "scale_rewards": True, "anneal_lr": True}
MUJOCO_TASKS = ("InvertedPendulum-v5", "Hopper-v5", "HalfCheetah-v5", "Walker2d-v5", "Ant-v5")
# brax's tasks, compiled end to end: CleanRL's per-minibatch settings over 4 environments
# (2,048 steps per update as CleanRL's, without the normalisations, which are gymnasium's)
_BRAX_PPO = {**{k: v for k, v in _MUJOCO_PPO.items()
                if k not in ("normalize_observations", "scale_rewards")},
             "num_envs": 4, "num_steps": 512}
BRAX_TASKS = ("brax:inverted_pendulum", "brax:reacher", "brax:hopper", "brax:halfcheetah",
              "brax:ant")

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
        **{task: dict(_MUJOCO_PPO) for task in MUJOCO_TASKS},
        **{task: dict(_BRAX_PPO) for task in BRAX_TASKS},
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
    "ppo": {"CartPole-v1": 100_000, "Acrobot-v1": 500_000, "Pendulum-v1": 500_000,
            # CleanRL's budget: 1M steps per MuJoCo task
            "InvertedPendulum-v5": 100_000, "brax:inverted_pendulum": 100_000,
            **{task: 1_000_000 for task in MUJOCO_TASKS[1:]}},
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
