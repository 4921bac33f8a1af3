"""Returns and advantages on hand-made episodes: termination ends, truncation bootstraps."""

import jax.numpy as jnp
import numpy as np
import pytest

from scorefn.rl.returns import discounted_returns, gae

GAMMA = 0.9
# One environment, 5 steps: an episode terminates at t=1, the next is truncated at t=3,
# a third runs past the end of the window.
REWARDS = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])[:, None]
TERMINATED = jnp.array([False, True, False, False, False])[:, None]
TRUNCATED = jnp.array([False, False, False, True, False])[:, None]
NEXT_VALUES = jnp.array([10.0, 20.0, 30.0, 40.0, 50.0])[:, None]  # V(s'_t)
VALUES = jnp.array([0.5, 1.5, 2.5, 3.5, 4.5])[:, None]  # V(s_t)


def test_reward_to_go_cuts_at_termination_and_bootstraps_truncation():
    g = np.asarray(discounted_returns(REWARDS, TERMINATED, TRUNCATED, NEXT_VALUES, GAMMA))[:, 0]
    g4 = 5 + GAMMA * 50  # window end: bootstrap with V(s'_4)
    g3 = 4 + GAMMA * 40  # truncated: bootstrap with V(s'_3), not with g4
    g2 = 3 + GAMMA * g3
    g1 = 2.0  # terminated: no bootstrap
    g0 = 1 + GAMMA * g1
    np.testing.assert_allclose(g, [g0, g1, g2, g3, g4], rtol=1e-6)


def test_reward_to_go_without_bootstrap():
    g = np.asarray(discounted_returns(REWARDS, TERMINATED, TRUNCATED, 0 * NEXT_VALUES, GAMMA))[:, 0]
    np.testing.assert_allclose(g, [1 + GAMMA * 2, 2, 3 + GAMMA * 4, 4, 5], rtol=1e-6)


def test_gae_bootstraps_truncation_only():
    lam = 0.8
    adv, targets = gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED, TRUNCATED, GAMMA, lam)
    adv = np.asarray(adv)[:, 0]
    v, nv, r = np.asarray(VALUES)[:, 0], np.asarray(NEXT_VALUES)[:, 0], np.asarray(REWARDS)[:, 0]
    delta = r + GAMMA * nv * np.array([1, 0, 1, 1, 1]) - v  # terminated step: no V(s')
    a4 = delta[4]
    a3 = delta[3]  # episode ended (truncated): no carry from t=4, but δ_3 used V(s'_3)
    a2 = delta[2] + GAMMA * lam * a3
    a1 = delta[1]
    a0 = delta[0] + GAMMA * lam * a1
    np.testing.assert_allclose(adv, [a0, a1, a2, a3, a4], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(targets)[:, 0], adv + v, rtol=1e-6)
    # λ = 1 with V = 0 except where the return bootstraps: the advantages are the
    # bootstrapped reward-to-go.
    bootstrap = jnp.array([0.0, 0.0, 0.0, 40.0, 50.0])[:, None]
    adv1, _ = gae(REWARDS, 0 * VALUES, bootstrap, TERMINATED, TRUNCATED, GAMMA, 1.0)
    g = discounted_returns(REWARDS, TERMINATED, TRUNCATED, bootstrap, GAMMA)
    np.testing.assert_allclose(np.asarray(adv1), np.asarray(g), rtol=1e-6)


def test_truncated_gae_sums_each_segment_alone():
    """With a horizon n, A_t = Σ_{l=0}^{e-t} (γλ)^l δ_{t+l} up to its segment's last step e (or
    an episode's end): GAE run on each n-step segment alone. Twin: the untruncated GAE."""
    lam, n, steps = 0.8, 3, 8   # segments [0, 3), [3, 6), [6, 8): the last one shorter
    rng = np.random.default_rng(0)
    rewards, values, next_values = (jnp.asarray(rng.normal(size=(steps, 2)), jnp.float32)
                                    for _ in range(3))
    terminated = jnp.zeros((steps, 2), bool).at[4, 1].set(True)
    truncated = jnp.zeros((steps, 2), bool).at[1, 0].set(True)
    adv, targets = gae(rewards, values, next_values, terminated, truncated, GAMMA, lam, n)
    segments = [gae(rewards[a:a + n], values[a:a + n], next_values[a:a + n],
                    terminated[a:a + n], truncated[a:a + n], GAMMA, lam)[0]
                for a in range(0, steps, n)]
    np.testing.assert_allclose(np.asarray(adv), np.concatenate(segments), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(targets), np.asarray(adv + values), rtol=1e-6)
    # by the formula, env 0 at t = 3 (no episode end in its segment [3, 6))
    delta = np.asarray(rewards + GAMMA * next_values - values)[:, 0]
    np.testing.assert_allclose(float(adv[3, 0]), sum((GAMMA * lam) ** k * delta[3 + k]
                                                     for k in range(3)), rtol=1e-5)
    whole, _ = gae(rewards, values, next_values, terminated, truncated, GAMMA, lam)
    assert not np.allclose(np.asarray(whole), np.asarray(adv), rtol=1e-3)
    # a horizon of the whole window is plain GAE; a horizon of 1 leaves the δ's
    same, _ = gae(rewards, values, next_values, terminated, truncated, GAMMA, lam, steps)
    np.testing.assert_allclose(np.asarray(same), np.asarray(whole), rtol=1e-6)
    ones, _ = gae(rewards, values, next_values, terminated, truncated, GAMMA, lam, 1)
    np.testing.assert_allclose(np.asarray(ones), np.asarray(
        rewards + GAMMA * jnp.where(terminated, 0.0, next_values) - values), rtol=1e-6)


def test_truncated_gae_horizon_is_checked():
    from scorefn.rl import ppo

    for bad in (0, -2, 2.5, "5"):
        with pytest.raises(ValueError, match="horizon must be None or a positive int"):
            gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED, TRUNCATED, GAMMA, 0.9, bad)
        with pytest.raises(ValueError, match="gae_horizon must be None or an int from 1"):
            ppo.Config(num_steps=4, gae_horizon=bad)
    with pytest.raises(ValueError, match=r"from 1 to num_steps \(4\), got 5"):
        ppo.Config(num_steps=4, gae_horizon=5)
