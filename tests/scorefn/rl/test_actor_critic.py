"""A2C's and PPO's one loss: its policy gradient is the core's score-function estimate with
signal ρ Â 1[unclipped] (Â for A2C), its parts are reported, and PPO/A2C/TRPO share state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from scorefn.rl import a2c, actor_critic, ppo, trpo
from scorefn.rl.envs import Space
from scorefn.rl.networks import ActorCritic
from scorefn.rl.policy_gradient import policy_gradient

N = 64


@pytest.fixture(scope="module", params=["discrete", "continuous"])
def minibatch(request):
    space = (Space(True, num_actions=3) if request.param == "discrete"
             else Space(False, shape=(2,), low=-1.0, high=1.0))
    policy = ActorCritic(space, hidden=(8,))
    params = policy.init(jax.random.key(0), (4,))
    keys = jax.random.split(jax.random.key(1), 5)
    obs = jax.random.normal(keys[0], (N, 4))
    dist = policy.dist(params["policy"], obs)
    action = dist.sample(keys[1])
    # the old policy's log-probabilities: the current ones moved by up to ±0.5, so that the
    # clip binds for some rows and not for others
    log_prob = dist.log_prob(action) + jax.random.uniform(keys[2], (N,), minval=-0.5, maxval=0.5)
    data = {"obs": obs, "action": action, "log_prob": log_prob,
            "value": jax.random.normal(keys[3], (N,)),
            "advantage": jax.random.normal(keys[4], (N,)),
            "target": jax.random.normal(keys[3], (N,)) + 1.0}
    return policy, params, data


def _policy_grad(policy, params, data, **options):
    grads = jax.grad(lambda p: actor_critic.loss(p, policy, data, value_coef=0.0,
                                                 entropy_coef=0.0, **options)[0])(params)
    return ravel_pytree(grads["policy"])[0]


def test_ppo_policy_gradient_is_the_core_score_gradient(minibatch):
    policy, params, data = minibatch
    eps = 0.2
    got = _policy_grad(policy, params, data, clip_eps=eps, normalize_advantages=False)
    ratio = jnp.exp(policy.dist(params["policy"], data["obs"]).log_prob(data["action"])
                    - data["log_prob"])
    adv = data["advantage"]
    unclipped = ratio * adv <= jnp.clip(ratio, 1 - eps, 1 + eps) * adv
    assert 0.2 < float(jnp.mean(unclipped)) < 0.95  # both cases occur

    def core(signal):
        return -ravel_pytree(policy_gradient(policy, params["policy"], data["obs"],
                                             data["action"], signal))[0]

    np.testing.assert_allclose(got, core(jnp.where(unclipped, ratio * adv, 0.0)), rtol=1e-4,
                               atol=1e-6)
    # planted bias: without the indicator (the clip ignored) the gradient differs
    assert not np.allclose(got, core(ratio * adv), rtol=1e-2, atol=1e-4)


def test_a2c_policy_gradient_is_the_core_score_gradient(minibatch):
    policy, params, data = minibatch
    got = _policy_grad(policy, params, data, clip_eps=None, normalize_advantages=False)
    core = -ravel_pytree(policy_gradient(policy, params["policy"], data["obs"], data["action"],
                                         data["advantage"]))[0]
    np.testing.assert_allclose(got, core, rtol=1e-4, atol=1e-6)
    # the stored log-probabilities play no part on-policy; a stale ratio would change it
    stale = _policy_grad(policy, params, data, clip_eps=1e6, normalize_advantages=False)
    assert not np.allclose(got, stale, rtol=1e-2, atol=1e-4)


def test_loss_is_the_sum_of_its_reported_parts(minibatch):
    policy, params, data = minibatch
    total, parts = actor_critic.loss(params, policy, data, clip_eps=0.2, value_coef=0.5,
                                     entropy_coef=0.01, normalize_advantages=True, clip_value=0.3)
    np.testing.assert_allclose(total, parts["policy_loss"] + 0.5 * parts["value_loss"]
                               - 0.01 * parts["entropy"], rtol=1e-6)
    assert set(parts) == {"policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"}
    _, on_policy = actor_critic.loss(params, policy, data, clip_eps=None, value_coef=0.5,
                                     entropy_coef=0.0, normalize_advantages=False)
    assert set(on_policy) == {"policy_loss", "value_loss", "entropy"}
    # ρ = 1 on-policy: −L^CLIP is minus the mean advantage
    np.testing.assert_allclose(on_policy["policy_loss"], -jnp.mean(data["advantage"]), rtol=1e-5)


def test_a2c_ppo_trpo_share_config_fields_and_state():
    for module in (a2c, ppo, trpo):
        assert issubclass(module.Config, actor_critic.Config)
        assert module.State is actor_critic.State
    assert (a2c.Config().num_steps, ppo.Config().num_steps, trpo.Config().num_steps) == (5, 32, 128)


def test_the_value_network_may_have_its_own_layers_and_the_nonlinearity_is_chosen():
    space = Space(False, shape=(2,), low=-1.0, high=1.0)
    policy = ActorCritic(space, hidden=(8,), value_hidden=(16, 16), activation="silu")
    params = policy.init(jax.random.key(0), (4,))
    kernels = [x.shape for x in jax.tree.leaves(params["value"]) if x.ndim == 2]
    assert kernels == [(4, 16), (16, 16), (16, 1)]
    assert [x.shape for x in jax.tree.leaves(params["policy"]) if x.ndim == 2] == [(4, 8), (8, 2)]
    obs = jax.random.normal(jax.random.key(1), (3, 4))
    hidden = params["value"]["params"]["Dense_0"]
    first = obs @ hidden["kernel"] + hidden["bias"]
    out = params["value"]["params"]
    rest = jax.nn.silu(jax.nn.silu(first) @ out["Dense_1"]["kernel"] + out["Dense_1"]["bias"])
    expected = (rest @ out["Dense_2"]["kernel"] + out["Dense_2"]["bias"])[:, 0]
    np.testing.assert_allclose(policy.value(params["value"], obs), expected, rtol=1e-5,
                               atol=1e-6)
    # planted: the default tanh computes another function of the same parameters
    tanh = ActorCritic(space, hidden=(8,), value_hidden=(16, 16))
    assert not np.allclose(tanh.value(params["value"], obs), expected, atol=1e-3)
    with pytest.raises(ValueError, match="activation must be one of tanh, relu, silu; got 'gelu'"):
        ppo.Config(activation="gelu")
    with pytest.raises(ValueError, match="value_hidden must be None .* got 'abc'"):
        ppo.Config(value_hidden="abc")
