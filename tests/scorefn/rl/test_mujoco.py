"""Continuous control on gymnasium's MuJoCo tasks: bounded actions and a short learning run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorefn import rl
from scorefn.rl.envs import GymnasiumEnv
from scorefn.rl.networks import ActorCritic

pytest.importorskip("mujoco")
ENV = "InvertedPendulum-v5"


@pytest.fixture(scope="module")
def env():
    env = GymnasiumEnv(ENV, num_envs=1, seed=0)
    yield env
    env.close()


def test_the_policy_density_is_the_gaussian_of_the_unclipped_action(env):
    """Bounded actions are clipped for the environment, and the score is that of the Gaussian
    the action was drawn from: its density integrates to 1 over the real line, mass beyond
    the bounds included (a density renormalised to the box would not)."""
    policy = ActorCritic(env.action_space, hidden=(8,), log_std_init=0.5)
    params = policy.init(jax.random.key(0), env.obs_shape)
    dist = policy.dist(params["policy"], jnp.zeros((1, *env.obs_shape)))
    low, high = float(env.action_space.low[0]), float(env.action_space.high[0])
    grid = np.linspace(-40.0, 40.0, 80_001)
    density = np.exp(np.asarray(dist.log_prob(jnp.asarray(grid[:, None, None], jnp.float32)),
                                np.float64))[:, 0]
    total = np.trapezoid(density, grid)  # summed in float64
    box = (grid >= low) & (grid <= high)
    inside = np.trapezoid(density[box], grid[box])
    assert abs(total - 1.0) < 1e-4
    assert inside < 0.99  # this wide policy puts mass outside [-3, 3], which clipping maps in
    # the environment receives the clipped action: an action beyond the bound acts as the bound
    first = env.reset(seed=5)
    beyond = env.step(np.array([[10.0]], np.float32))[0]
    second = env.reset(seed=5)
    bound = env.step(np.array([[high]], np.float32))[0]
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(beyond, bound)


@pytest.mark.slow  # about 15 s: 2048-step PPO updates until the evaluation reaches 950
def test_ppo_solves_inverted_pendulum_with_cleanrl_settings():
    result = rl.train(ENV, "ppo", seed=0, total_steps=60_000, eval_every=4096,
                      stop_when_solved=True, progress=False)
    assert result.solved_at_steps() is not None and result.solved_at_steps() <= 60_000
    assert max(float(np.mean(row["eval_mean"])) for row in result.history) >= 950


@pytest.mark.slow  # about 20 s each
@pytest.mark.parametrize("algo", ["a2c", "trpo"])
def test_a2c_and_trpo_solve_inverted_pendulum_with_rl_zoo_settings(algo):
    assert rl.defaults.defaults(algo, ENV)["normalize_observations"]
    result = rl.train(ENV, algo, seed=0, total_steps=60_000, eval_every=4096,
                      stop_when_solved=True, progress=False)
    assert result.solved_at_steps() is not None and result.solved_at_steps() <= 60_000


def test_normalisation_statistics_are_checkpointed_evaluated_with_and_resumed(tmp_path):
    path = str(tmp_path / "run.ckpt")
    # total_updates: the annealing schedule of the whole run (4 updates of 256 steps), which
    # its first part then shares, so that the run may be extended on resume
    options = dict(seed=0, progress=False, num_steps=256, num_epochs=2, eval_every=512,
                   total_updates=4)
    first = rl.train(ENV, "ppo", total_steps=512, checkpoint=path, **options)
    stats = first.observation_stats
    assert stats is not None and stats["count"] > 512  # every observation seen, and the resets
    loaded = rl.load_checkpoint(path)
    for name in ("mean", "var", "count"):
        np.testing.assert_array_equal(loaded.observation_stats[name], stats[name])
    # evaluation reads the frozen statistics: with others, the same policy acts otherwise
    assert rl.evaluate(loaded, episodes=3) == rl.evaluate(first, episodes=3)
    shifted = {**stats, "mean": np.asarray(stats["mean"]) + 5.0}
    assert rl.evaluate(loaded.env_id, loaded.params, policy=loaded.policy, episodes=3,
                       observation_stats=shifted) != rl.evaluate(loaded, episodes=3)
    resumed = rl.train(ENV, "ppo", total_steps=1024, checkpoint=path, resume=True, **options)
    assert resumed.observation_stats["count"] > stats["count"]  # continued, not restarted


def test_reward_scaling_is_refused_on_gymnax():
    with pytest.raises(ValueError, match="scale_rewards applies to gymnasium environments; "
                                         "CartPole-v1 runs on gymnax"):
        rl.train("CartPole-v1", "ppo", total_steps=256, scale_rewards=True, progress=False)
