"""Observation normalisation and reward scaling: the statistics are those of the data seen,
the scaling is SB3's VecNormalize's, a state restores them exactly, and the compiled
runs' statistics are the same."""

import numpy as np

from scorefn.rl.normalization import (
    ObservationNormalizer,
    RewardScaler,
    initial_stats,
    normalized,
    updated_stats,
)


def test_observations_are_normalised_by_the_statistics_of_all_seen():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, (4, 3)) for _ in range(50)]
    normalizer = ObservationNormalizer((3,))
    for batch in batches[:-1]:
        normalizer(batch)
    seen = np.concatenate(batches)
    out = normalizer(batches[-1])
    expected = np.clip((batches[-1] - seen.mean(0)) / np.sqrt(seen.var(0) + 1e-8), -10, 10)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)  # the initial count 1e-4
    frozen = ObservationNormalizer((3,), normalizer.state())
    np.testing.assert_array_equal(frozen(batches[0], update=False), normalizer(batches[0],
                                                                                update=False))
    # planted: a normaliser that forgot the earlier batches gives other values
    fresh = ObservationNormalizer((3,))
    assert not np.allclose(fresh(batches[-1]), out, atol=1e-2)


def test_one_environment_batches_give_gymnasiums_statistics():
    """A batch of one takes a shortcut (mean x, variance 0): the statistics stay gymnasium's
    ``RunningMeanStd`` fed the same batches, for observations and for returns."""
    from gymnasium.wrappers.utils import RunningMeanStd

    rng = np.random.default_rng(2)
    normalizer, reference = ObservationNormalizer((3,)), RunningMeanStd(shape=(3,))
    scaler, returns = RewardScaler(1, 0.9), RunningMeanStd(shape=())
    running = np.zeros(1)
    for _ in range(40):
        obs, reward = rng.normal(1.0, 3.0, (1, 3)), rng.normal(0.5, 1.0, 1)
        normalizer(obs)
        reference.update(obs)
        scaler(reward, np.array([False]))
        running = running * 0.9 + reward
        returns.update(running)
    for state, rms in ((normalizer.state(), reference), (scaler.state(), returns)):
        np.testing.assert_allclose(state["mean"], rms.mean, rtol=1e-12)
        np.testing.assert_allclose(state["var"], rms.var, rtol=1e-12)
        assert state["count"] == rms.count


def test_rewards_are_divided_by_the_discounted_returns_std():
    rng = np.random.default_rng(1)
    gamma, scaler = 0.9, RewardScaler(2, 0.9)
    returns, history, out = np.zeros(2), [], None
    for t in range(30):
        reward = rng.normal(1.0, 0.5, 2)
        done = np.array([t % 7 == 6, t % 11 == 10])
        returns = returns * gamma + reward
        history.append(returns.copy())
        out = scaler(reward, done)
        returns[done] = 0.0
    seen = np.concatenate(history)
    np.testing.assert_allclose(out, reward / np.sqrt(seen.var() + 1e-8), rtol=1e-3)
    restored = RewardScaler(2, 0.9, scaler.state())
    np.testing.assert_array_equal(restored.returns, scaler.returns)
    np.testing.assert_array_equal(restored(reward, done), scaler(reward, done))


def test_compiled_statistics_are_those_of_all_observations_taken_in():
    """The compiled run's statistics (JAX, one update per rollout) equal gymnasium's
    RunningMeanStd fed the same batches, and normalise as the numpy normaliser does."""
    import jax.numpy as jnp

    rng = np.random.default_rng(2)
    batches = [rng.normal(-1.0, 3.0, (5, 4, 2)).astype(np.float32) for _ in range(20)]
    stats = initial_stats((2,))
    reference = ObservationNormalizer((2,))
    for batch in batches:
        stats = updated_stats(stats, jnp.asarray(batch))
        reference(batch.reshape(-1, 2))
    seen = np.concatenate([b.reshape(-1, 2) for b in batches])
    np.testing.assert_allclose(stats["mean"], seen.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["var"], seen.var(0), rtol=1e-4)
    np.testing.assert_allclose(float(stats["count"]), len(seen) + 1e-4, rtol=1e-6)
    np.testing.assert_allclose(normalized(stats, jnp.asarray(batches[0])),
                               reference(batches[0], update=False), rtol=1e-4, atol=1e-4)
    # planted: the last batch alone, as a forgetting update would keep, is far off
    alone = updated_stats(initial_stats((2,)), jnp.asarray(batches[-1]))
    assert not np.allclose(alone["var"], seen.var(0), rtol=0.05)


def test_a_compiled_rollout_acts_on_the_old_statistics_and_trains_on_the_new():
    """A compiled rollout acts on observations normalised by the statistics it was given and
    hands the update the same observations normalised by the statistics after it, which the
    next rollout acts on (brax's order): de-normalised by those, they give those statistics
    again, and the recorded log-probabilities are the policy's at the old normalisation."""
    import jax
    import jax.numpy as jnp

    from scorefn import rl
    from scorefn.rl.rollout import jax_reset, jax_rollout
    from scorefn.scores import log_prob

    env = rl.make("CartPole-v1")
    policy = rl.ActorCritic(env.action_space, hidden=(8,))
    params = policy.init(jax.random.key(0), env.obs_shape)
    params["policy"] = jax.tree.map(lambda p: 50.0 * p, params["policy"])  # logits of O(1)
    old = {"mean": jnp.full(4, 0.5), "var": jnp.full(4, 4.0), "count": jnp.asarray(10.0)}
    _, batch, new = jax_rollout(env, policy, params, jax_reset(env, jax.random.key(1), 4),
                                jax.random.key(2), 32, old)
    assert float(np.abs(batch.obs).max()) < 10.0  # no clipping: the map is invertible
    raw = batch.obs * jnp.sqrt(new["var"] + 1e-8) + new["mean"]
    again = updated_stats(old, raw)
    for name in ("mean", "var", "count"):
        np.testing.assert_allclose(again[name], new[name], rtol=1e-4, atol=1e-5)
    acted = log_prob(policy.dist(params["policy"], normalized(old, raw)), batch.action)
    np.testing.assert_allclose(batch.log_prob, acted, rtol=1e-4, atol=1e-5)
    # twin: at the new normalisation the policy gives other log-probabilities
    trained = log_prob(policy.dist(params["policy"], batch.obs), batch.action)
    assert not np.allclose(batch.log_prob, trained, atol=1e-3)
