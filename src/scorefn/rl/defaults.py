"""Default hyperparameters per algorithm and environment, in one place.

Each algorithm's ``Config`` holds its general defaults. The table below overrides them per
environment. The CartPole PPO and A2C settings are rl-zoo's, the settings of the
Stable-Baselines3 peer benchmark. PPO on gymnasium's MuJoCo tasks takes CleanRL's
``ppo_continuous_action`` settings (and ``../shared/peers/sb3_mujoco.py``'s): one
environment, 2048 steps per update, 10 epochs of minibatches of 64, Adam at 3e-4, γ 0.99,
GAE 0.95, clip 0.2, gradients clipped at norm 0.5, advantages standardised per minibatch,
observations normalised and rewards scaled (``scorefn.rl.normalization``), the learning rate
annealed linearly to 0 over the run (``anneal_lr``). A2C and TRPO on the MuJoCo tasks take
rl-zoo's (``hyperparams/a2c.yml`` and ``trpo.yml``, the "Mujoco Envs" entries): A2C is
Stable-Baselines3's A2C with ``normalize: true`` (one environment, 5 steps per update,
RMSprop at 7e-4, GAE λ 1), TRPO sb3-contrib's with rl-zoo's tuned settings (2
environments of 1,024 steps, KL bound 0.01 (HalfCheetah 0.04), 25 conjugate-gradient
iterations with damping 0.1, the critic 20 epochs of minibatches of 128 at 1e-3), both with
observations normalised and rewards scaled, over 1M steps. ``TOTAL_STEPS`` is the training
budget used when ``total_steps`` is not given. ``make_config`` builds an algorithm's Config
from these and the user's overrides (their types checked here, their ranges by the Config:
``scorefn.rl.hyperparameters``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from scorefn.rl import registry

# CleanRL's ppo_continuous_action (https://docs.cleanrl.dev/rl-algorithms/ppo/), per task.
_MUJOCO_PPO = {"num_envs": 1, "num_steps": 2048, "num_epochs": 10, "minibatch_size": 64,
               "learning_rate": 3e-4, "gamma": 0.99, "gae_lambda": 0.95, "clip_eps": 0.2,
               "value_coef": 0.5, "entropy_coef": 0.0, "max_grad_norm": 0.5,
               "normalize_advantages": True, "normalize_observations": True,
               "scale_rewards": True, "anneal_lr": True}
MUJOCO_TASKS = ("InvertedPendulum-v5", "Hopper-v5", "HalfCheetah-v5", "Walker2d-v5", "Ant-v5")
# brax's tasks, compiled end to end: CleanRL's per-minibatch settings over 4 environments
# (2,048 steps per update as CleanRL's) with its observation normalisation, without its
# reward scaling, which is gymnasium's
_BRAX_PPO = {**{k: v for k, v in _MUJOCO_PPO.items() if k != "scale_rewards"},
             "num_envs": 4, "num_steps": 512}
# rl-zoo's a2c.yml, "HalfCheetah-v4: &mujoco-defaults" (normalize: true) over SB3's A2C defaults
_MUJOCO_A2C = {"num_envs": 1, "num_steps": 5, "gamma": 0.99, "gae_lambda": 1.0,
               "learning_rate": 7e-4, "value_coef": 0.5, "entropy_coef": 0.0,
               "max_grad_norm": 0.5, "normalize_advantages": False,
               "normalize_observations": True, "scale_rewards": True}
# rl-zoo's trpo.yml, "Ant-v3: &mujoco-defaults" (pybullet-defaults: n_envs 2, n_steps 1024,
# batch_size 128, gae_lambda 0.95, cg_max_steps 25, cg_damping 0.1, n_critic_updates 20,
# learning_rate 1e-3, normalize: true), target_kl sb3-contrib's 0.01, HalfCheetah's 0.04
_MUJOCO_TRPO = {"num_envs": 2, "num_steps": 1024, "gamma": 0.99, "gae_lambda": 0.95,
                "max_kl": 0.01, "cg_iterations": 25, "cg_damping": 0.1,
                "value_epochs": 20, "value_minibatch_size": 128, "value_learning_rate": 1e-3,
                "normalize_observations": True, "scale_rewards": True}
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
        **{task: dict(_MUJOCO_A2C) for task in MUJOCO_TASKS},
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
        **{task: dict(_MUJOCO_TRPO) for task in MUJOCO_TASKS},
        "HalfCheetah-v5": {**_MUJOCO_TRPO, "max_kl": 0.04},
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
    # rl-zoo's budget: 1M steps per MuJoCo task
    "a2c": {"CartPole-v1": 500_000, "Acrobot-v1": 500_000,
            **{task: 1_000_000 for task in MUJOCO_TASKS}},
    "reinforce": {"CartPole-v1": 1_000_000, "Acrobot-v1": 1_000_000},
    "trpo": {"CartPole-v1": 200_000, "Acrobot-v1": 500_000, "Pendulum-v1": 500_000,
             **{task: 1_000_000 for task in MUJOCO_TASKS}},
    "npg": {"CartPole-v1": 200_000, "Acrobot-v1": 500_000},
}
DEFAULT_TOTAL_STEPS = 500_000


def defaults(algo: str, env_id: str) -> dict[str, Any]:
    return dict(OVERRIDES.get(algo, {}).get(env_id, {}))


def total_steps(algo: str, env_id: str) -> int:
    return TOTAL_STEPS.get(algo, {}).get(env_id, DEFAULT_TOTAL_STEPS)


def make_config(algo: str, env_id: str, **hyperparameters: Any):
    """The algorithm's Config with the per-environment defaults and the overrides."""
    registered = registry.algorithm(algo)
    module = registered.module
    fields = {f.name for f in dataclasses.fields(module.Config)}
    unknown = sorted(set(hyperparameters) - fields)
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown} for {algo}; known: {sorted(fields)}")
    # What the Config gets without overrides: its fields' defaults, the algorithm's, the
    # environment's. An override is checked against the value it replaces.
    chosen = {**registered.config_overrides, **defaults(algo, env_id)}
    replaced = {**{f.name: f.default for f in dataclasses.fields(module.Config)}, **chosen}
    for name, value in hyperparameters.items():
        _check_hyperparameter_type(algo, name, value, replaced.get(name, dataclasses.MISSING))
    return module.Config(**{**chosen, **hyperparameters})


def _check_hyperparameter_type(algo: str, name: str, value: Any, default: Any) -> None:
    """An override must have its default's type (an int may stand for a float), so that
    ``--set num_envs=abc`` is an error here, not a traceback deep in the algorithm."""
    if default is dataclasses.MISSING or default is None or value is None:
        return
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "a bool (true or false)"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an int"
    elif isinstance(default, float):
        ok, kind = isinstance(value, int | float) and not isinstance(value, bool), "a number"
    elif isinstance(default, tuple | list):
        ok, kind = isinstance(value, tuple | list), "a list, e.g. [64, 64]"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "a string"
    else:
        return
    if not ok:
        raise ValueError(f"hyperparameter {name} of {algo} must be {kind} (its default is "
                         f"{default!r}); got {value!r}")
