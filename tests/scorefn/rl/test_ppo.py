"""PPO's learning-rate annealing (CleanRL's anneal_lr): the schedule, through optax, and its
place in rl.train."""

import jax.numpy as jnp
import numpy as np
import pytest

from scorefn import rl
from scorefn.rl import defaults, ppo


def _config(**overrides):
    # 1 env × 4 steps in minibatches of 4, 2 epochs: 2 optimiser steps per update
    fields = dict(num_envs=1, num_steps=4, minibatch_size=4, num_epochs=2, learning_rate=0.1,
                  anneal_lr=True, total_updates=3)
    return ppo.Config(**{**fields, **overrides})


def test_the_learning_rate_falls_linearly_per_update_to_zero():
    config = _config()
    assert ppo.optimizer_steps_per_update(config) == 2
    # Adam's step under a constant gradient is the learning rate itself (m̂/√v̂ = 1).
    optimizer = ppo.optimizer(config)
    params = {"w": jnp.zeros(())}
    state = optimizer.init(params)
    steps = []
    for _ in range(8):
        update, state = optimizer.update({"w": jnp.ones(())}, state, params)
        steps.append(-float(update["w"]))
    expected = 0.1 * np.array([1, 1, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 0, 0])
    np.testing.assert_allclose(steps, expected, rtol=1e-4, atol=1e-9)
    # The twin: annealed per optimiser step instead of per update, as count / total steps.
    per_step = 0.1 * np.maximum(1 - np.arange(8) / 6, 0)
    assert not np.allclose(steps, per_step, rtol=1e-3)
    # Without anneal_lr the rate stays.
    assert ppo.learning_rate(_config(anneal_lr=False)) == 0.1


def test_annealing_needs_its_length_and_refuses_target_kl():
    with pytest.raises(ValueError, match="anneal_lr needs total_updates >= 1"):
        ppo.optimizer(_config(total_updates=0))
    with pytest.raises(ValueError, match="target_kl's early stop"):
        _config(target_kl=0.01)


def test_train_anneals_over_its_total_steps_and_a_resume_keeps_them(tmp_path):
    assert defaults.defaults("ppo", "Hopper-v5")["anneal_lr"] is True
    checkpoint = str(tmp_path / "run.ckpt")
    result = rl.train("CartPole-v1", "ppo", 0, 512, checkpoint=checkpoint, progress=False,
                      anneal_lr=True, num_epochs=1)
    # rl-zoo's CartPole PPO: 8 envs × 32 steps, so 512 steps are 2 updates
    assert result.config.total_updates == 2
    with pytest.raises(ValueError, match=r"total_updates=2, now 4"):
        rl.train("CartPole-v1", "ppo", 0, 1024, checkpoint=checkpoint, resume=True,
                 progress=False, anneal_lr=True, num_epochs=1)
