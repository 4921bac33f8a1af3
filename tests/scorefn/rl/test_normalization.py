"""Observation normalisation and reward scaling: the statistics are those of the data seen,
the scaling is SB3's VecNormalize's, and a state restores them exactly."""

import numpy as np

from scorefn.rl.normalization import ObservationNormalizer, RewardScaler


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
