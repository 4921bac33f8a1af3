"""Returns and advantages on hand-made episodes: termination ends, truncation bootstraps."""

import jax.numpy as jnp
import numpy as np

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
