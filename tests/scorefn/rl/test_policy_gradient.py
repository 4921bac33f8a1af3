"""The REINFORCE estimate through the real rollout is unbiased on a closed-form MDP."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from closed_forms import assert_unbiased, detects_bias
from jax.flatten_util import ravel_pytree
from rl_chain import TwoStepChain, exact_return

from scorefn.rl import reinforce
from scorefn.rl.networks import ActorCritic
from scorefn.rl.policy_gradient import policy_gradient
from scorefn.rl.returns import discounted_returns
from scorefn.rl.rollout import jax_reset, jax_rollout

ENV = TwoStepChain()
POLICY = ActorCritic(ENV.action_space, hidden=(8,))
PARAMS = POLICY.init(jax.random.key(3), ENV.obs_shape)
# Not a uniform policy, so that every coordinate of ∇J is far from 0.
PARAMS = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(4), x.shape), PARAMS)
TRUE = jax.grad(lambda p: exact_return(POLICY, p))(PARAMS["policy"])
EPISODES = 4
R = 3000


def _estimates(key, config, signal_fn=None):
    ema = reinforce.init(jax.random.key(0), POLICY, ENV, config).ema
    ema = ema._replace(value=jnp.full_like(ema.value, 0.7))  # any fixed baseline values

    def one(k):
        k_reset, k_roll = jax.random.split(k)
        carry = jax_reset(ENV, k_reset, EPISODES)
        _, batch, _ = jax_rollout(ENV, POLICY, PARAMS, carry, k_roll, ENV.max_episode_steps)
        if signal_fn is None:
            g, *_ = reinforce.gradient(PARAMS, ema, batch, POLICY, config)
        else:
            g = signal_fn(batch)
        return ravel_pytree(g)[0]

    keys = jax.random.split(key, R)
    return np.asarray(jax.jit(lambda ks: jax.lax.map(one, ks))(keys), np.float64)


@pytest.mark.parametrize("baseline", ["none", "leave_one_out", "ema", "value"])
def test_reinforce_is_unbiased(key, baseline):
    config = reinforce.Config(num_envs=EPISODES, gamma=1.0, baseline=baseline)
    assert_unbiased(_estimates(key, config), TRUE)


def test_a_baseline_from_the_episodes_own_return_is_caught(key):
    def own_mean_baseline(batch):
        g = discounted_returns(batch.reward, batch.terminated, batch.truncated,
                               0 * batch.next_value, 1.0)
        signal = g - g.mean(axis=1, keepdims=True)  # includes the episode itself: biased
        obs = batch.obs.reshape(-1, 3)
        return policy_gradient(POLICY, PARAMS["policy"], obs, batch.action.reshape(-1),
                               signal.reshape(-1), normalizer=EPISODES)

    config = reinforce.Config(num_envs=EPISODES, gamma=1.0)
    assert detects_bias(_estimates(key, config, own_mean_baseline), TRUE)


def test_leave_one_out_lowers_the_variance(key):
    from closed_forms import variance_z

    none = _estimates(key, reinforce.Config(num_envs=EPISODES, gamma=1.0, baseline="none"))
    loo = _estimates(key, reinforce.Config(num_envs=EPISODES, gamma=1.0, baseline="leave_one_out"))
    assert np.median(variance_z(loo, none)) < -3


def test_config_rejects_unknown_baselines():
    with pytest.raises(ValueError, match="baseline must be one of"):
        dataclasses.replace(reinforce.Config(), baseline="mean")
