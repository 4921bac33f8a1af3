"""brax tasks through scorefn.rl: the step contract (termination apart from truncation, the
observation reached before a reset), and PPO compiled end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorefn import rl

pytest.importorskip("brax")


@pytest.fixture(scope="module")
def short_pendulum():
    return rl.make("brax:inverted_pendulum", episode_length=3)


def test_a_time_limit_truncates_and_returns_the_observation_it_reached(short_pendulum):
    env = short_pendulum
    step = jax.jit(env.step)
    obs, state = env.reset(jax.random.key(0))
    assert env.obs_shape == obs.shape == (4,)  # traced, not run: brax's reset's shape
    brax_state = state[0]
    action = jnp.zeros(1)
    for t in range(3):
        key = jax.random.key(10 + t)
        obs, state, reward, terminated, truncated, final_obs = step(key, state, action)
        brax_state = env.env.step(brax_state, action)  # brax's own step, for comparison
        np.testing.assert_allclose(final_obs, brax_state.obs, rtol=1e-5, atol=1e-6)
        assert not bool(terminated)
        assert bool(truncated) == (t == 2)  # the twin: steps 1 and 2 are not truncated
    # the episode ended: the next observation is a fresh reset with the step's key
    np.testing.assert_allclose(obs, env.reset(jax.random.key(12))[0], rtol=1e-6)
    assert not np.allclose(obs, final_obs)
    assert int(state[1]) == 0


def test_a_fall_terminates_without_truncation():
    env = rl.make("brax:inverted_pendulum")
    step = jax.jit(env.step)
    _, state = env.reset(jax.random.key(0))
    for t in range(200):  # pushed one way the pole falls within a few dozen steps
        _, state, _, terminated, truncated, _ = step(jax.random.key(t), state, jnp.ones(1))
        if bool(terminated):
            break
    assert bool(terminated) and not bool(truncated) and t < 199


def test_brax_ids_resolve_and_unknown_ones_are_refused():
    assert rl.resolve_backend("brax:hopper") == "brax"
    assert "brax:halfcheetah" in rl.known_envs()["brax"]
    with pytest.raises(ValueError, match="unknown brax environment 'brax:nope'"):
        rl.make("brax:nope")
    with pytest.raises(ValueError, match="scale_rewards applies to gymnasium"):
        rl.train("brax:inverted_pendulum", "ppo", total_steps=512, progress=False,
                 scale_rewards=True)


@pytest.mark.slow
def test_ppo_balances_the_brax_pendulum_for_three_seeds_at_once(tmp_path):
    """CleanRL's settings over 4 environments (``rl.defaults``), seeds vmapped in one
    program: every seed reaches 950 (a random policy scores about 80)."""
    result = rl.train("brax:inverted_pendulum", "ppo", seeds=[0, 1, 2], total_steps=61_440,
                      eval_every=8192, eval_episodes=8, stop_when_solved=True, progress=False)
    first = np.asarray(result.history[0]["eval_mean"])
    assert np.all(first < 500)  # not solved before learning
    assert all(result.solved_at_steps(i) is not None for i in range(3))


@pytest.mark.slow
def test_a_brax_run_resumes_exactly_and_evaluates_from_its_checkpoint(tmp_path):
    path = str(tmp_path / "run.ckpt")
    # total_updates given: the annealing schedule of the whole run (2 updates of 128 steps),
    # which the interrupted first part then shares
    small = dict(total_steps=256, eval_every=128, num_envs=2, num_steps=64, num_epochs=1,
                 minibatch_size=64, eval_episodes=2, total_updates=2, progress=False)
    full = rl.train("brax:inverted_pendulum", "ppo", seed=3, **small)
    rl.train("brax:inverted_pendulum", "ppo", seed=3, checkpoint=path,
             **{**small, "total_steps": 128})
    resumed = rl.train("brax:inverted_pendulum", "ppo", seed=3, checkpoint=path, resume=True,
                       **small)
    assert [r["eval_mean"] for r in resumed.history] == [r["eval_mean"] for r in full.history]
    for x, y in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
        np.testing.assert_array_equal(x, y)
    loaded = rl.load_checkpoint(path)
    assert loaded.env_id == "brax:inverted_pendulum"
    assert np.isfinite(rl.evaluate(loaded, episodes=2))
