"""gymnasium's async vector environment (a subprocess per copy) and Ray actors against the
sync vector environment."""

import pytest

from scorefn import rl


def test_async_environments_give_the_sync_run():
    options = dict(backend="gymnasium", progress=False, eval_episodes=2, eval_every=512,
                   num_envs=2, num_steps=128, num_epochs=1)
    sync = rl.train("CartPole-v1", "ppo", 0, 1024, **options)
    parallel = rl.train("CartPole-v1", "ppo", 0, 1024, vectorization_mode="async", **options)
    assert [h["eval_mean"] for h in parallel.history] == [h["eval_mean"] for h in sync.history]
    assert [h["policy_loss"] for h in parallel.history] == [h["policy_loss"] for h in sync.history]
    other = rl.train("CartPole-v1", "ppo", 1, 1024, **options)
    assert [h["policy_loss"] for h in other.history] != [h["policy_loss"] for h in sync.history]


@pytest.mark.slow  # starts Ray
def test_ray_workers_give_the_sync_run():
    """Three copies over two Ray actors (shares of 2 and 1, seeded as one vector env)."""
    options = dict(backend="gymnasium", progress=False, eval_episodes=2, eval_every=384,
                   num_envs=3, num_steps=128, num_epochs=1)
    sync = rl.train("CartPole-v1", "ppo", 0, 768, **options)
    ray = rl.train("CartPole-v1", "ppo", 0, 768, vectorization_mode="ray", workers=2, **options)
    assert [h["policy_loss"] for h in ray.history] == [h["policy_loss"] for h in sync.history]
    assert [h["eval_mean"] for h in ray.history] == [h["eval_mean"] for h in sync.history]


def test_vectorization_mode_is_checked():
    with pytest.raises(ValueError, match="vectorization_mode must be one of"):
        rl.make("CartPole-v1", "gymnasium", vectorization_mode="threads")
    with pytest.raises(ValueError, match="vectorization_mode='async' is for gymnasium"):
        rl.train("CartPole-v1", "ppo", total_steps=64, vectorization_mode="async",
                 progress=False)
    with pytest.raises(ValueError, match="workers is for gymnasium environments"):
        rl.train("CartPole-v1", "ppo", total_steps=64, workers=2, progress=False)
    with pytest.raises(ValueError, match="workers is for vectorization_mode='ray'"):
        rl.train("CartPole-v1", "ppo", total_steps=64, backend="gymnasium", workers=2,
                 progress=False)
