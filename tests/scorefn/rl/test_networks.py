"""The squashed Gaussian policy (``squash_actions``): its density and entropy against
numerical integrals, its score against the Gaussian's, and the action the environment gets;
the Gaussian's σ under each ``std_transform``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy import integrate, stats

from scorefn.rl import ppo
from scorefn.rl.envs import Space
from scorefn.rl.networks import ActorCritic, mean_log_sech2
from scorefn.rl.rollout import GymnasiumRunner, jax_reset, jax_rollout

LOW, HIGH = -3.0, 1.0  # an asymmetric box: centre −1, half-width 2
BOX = Space(False, shape=(1,), low=np.array([LOW], np.float32), high=np.array([HIGH], np.float32))


def _policy(mean: float, log_std: float, space: Space = BOX) -> tuple[ActorCritic, dict]:
    """A squashed policy whose Gaussian over u is N(mean, exp(log_std)²) at every state."""
    policy = ActorCritic(space, hidden=(4,), squash_actions=True, log_std_init=log_std)
    params = policy.init(jax.random.key(0), (3,))
    net = jax.tree.map(jnp.zeros_like, params["policy"]["net"])  # the mean is the head's bias
    net["params"]["Dense_1"]["bias"] = jnp.full_like(net["params"]["Dense_1"]["bias"], mean)
    return policy, {**params, "policy": {**params["policy"], "net": net}}


def _density(policy, params):
    """a ↦ π(a | s) for scalar a, in float64: a saturated policy puts much of its mass
    closer to a bound than float32 resolves."""
    d = policy.action_dist(params["policy"], jnp.zeros((1, 3)))

    def density(a):
        if not 0.0 < (a - LOW) / (HIGH - LOW) < 1.0:
            return 0.0  # within float64's rounding of an edge: mass below 1e-9 in these cases
        with jax.enable_x64(True):
            return float(np.exp(d.log_prob(jnp.full((1, 1), a, jnp.float64))[0]))
    return density


CASES = [(0.0, 0.0), (0.7, -1.0), (-1.5, 0.5), (2.5, 1.0)]  # (μ, log σ): narrow to saturated


@pytest.mark.parametrize("mean,log_std", CASES)
def test_the_squashed_density_is_that_of_the_squashed_gaussian_draw(mean, log_std):
    """∫ π(a) da over the box is 1, and P(a ≤ x) = Φ((atanh((x − c)/w) − μ)/σ), the
    Gaussian's probability of the u that map below x. Twin: the Gaussian's density at
    u = atanh((a − c)/w) without the Jacobian 1/(w (1 − tanh² u)) fails both."""
    policy, params = _policy(mean, log_std)
    density = _density(policy, params)
    sigma, center, width = np.exp(log_std), (LOW + HIGH) / 2, (HIGH - LOW) / 2

    def without_jacobian(a):
        return stats.norm.pdf(np.arctanh((a - center) / width), mean, sigma)

    total = integrate.quad(density, LOW, HIGH, limit=200, epsabs=1e-9)[0]
    assert abs(total - 1.0) < 1e-4
    for x in (-2.5, -1.0, 0.0, 0.9):
        below = integrate.quad(density, LOW, x, limit=200, epsabs=1e-9)[0]
        exact = stats.norm.cdf(np.arctanh((x - center) / width), mean, sigma)
        assert abs(below - exact) < 1e-4, (x, below, exact)
    planted = integrate.quad(without_jacobian, LOW, HIGH, limit=200)[0]
    assert abs(planted - 1.0) > 0.1


@pytest.mark.parametrize("mean,log_std", CASES)
def test_the_squashed_entropy_is_minus_the_integral_of_p_log_p(mean, log_std):
    """``entropy`` against −∫ π(a) log π(a) da, integrated in u (a = c + w tanh u, da =
    w (1 − tanh² u) du: the density of a saturated policy is unbounded at the box's edges).
    Twin: the Gaussian's entropy, which ignores the squashing, is off by more than the
    tolerance."""
    policy, params = _policy(mean, log_std)
    density = _density(policy, params)
    sigma, center, width = np.exp(log_std), (LOW + HIGH) / 2, (HIGH - LOW) / 2

    def integrand(u):
        p = density(center + width * np.tanh(u))
        return -stats.norm.pdf(u, mean, sigma) * np.log(p) if p > 0 else 0.0

    exact = integrate.quad(integrand, mean - 12 * sigma, mean + 12 * sigma, limit=400,
                           epsabs=1e-10)[0]
    d = policy.dist(params["policy"], jnp.zeros((1, 3)))
    assert abs(float(policy.entropy(d)[0]) - exact) < 1e-4
    assert abs(float(d.entropy()[0]) - exact) > 1e-2


def test_the_entropy_of_a_squashed_vector_action_sums_its_components():
    space = Space(False, shape=(2,), low=np.array([LOW, -1.0], np.float32),
                  high=np.array([HIGH, 1.0], np.float32))
    both, params = _policy(0.7, -0.5, space)
    d = both.dist(params["policy"], jnp.zeros((1, 3)))
    first = _policy(0.7, -0.5)
    second = _policy(0.7, -0.5, Space(False, shape=(1,), low=np.array([-1.0], np.float32),
                                      high=np.array([1.0], np.float32)))
    parts = [p.entropy(p.dist(q["policy"], jnp.zeros((1, 3))))[0] for p, q in (first, second)]
    np.testing.assert_allclose(both.entropy(d)[0], sum(parts), rtol=1e-6)


def test_the_score_of_the_squashed_action_is_the_gaussians_at_u():
    """∇θ log π(c + w tanh u | s) = ∇θ log N(u; μ_θ(s), σ_θ²): the Jacobian is free of θ, so
    the rollout's u and the Gaussian give the policy gradient and PPO's ratio exactly."""
    policy = ActorCritic(BOX, hidden=(8,), squash_actions=True, log_std_init=-0.5)
    params = policy.init(jax.random.key(1), (3,))["policy"]
    obs = jax.random.normal(jax.random.key(2), (16, 3))
    u = policy.dist(params, obs).sample(jax.random.key(3))
    a = policy.env_action(u)

    def squashed(p):
        return jnp.sum(policy.action_dist(p, obs).log_prob(a))

    def gaussian(p):
        return jnp.sum(policy.dist(p, obs).log_prob(u))

    np.testing.assert_allclose(ravel_pytree(jax.grad(squashed)(params))[0],
                               ravel_pytree(jax.grad(gaussian)(params))[0], rtol=2e-3,
                               atol=1e-4)
    # the log-densities differ by the Jacobian's log, the same for every θ
    other = jax.tree.map(lambda x: x + 0.1, params)
    gap = policy.action_dist(params, obs).log_prob(a) - policy.dist(params, obs).log_prob(u)
    gap_other = policy.action_dist(other, obs).log_prob(a) - policy.dist(other, obs).log_prob(u)
    np.testing.assert_allclose(gap, gap_other, atol=1e-4)
    np.testing.assert_allclose(policy.mode(params, obs),
                               -1.0 + 2.0 * jnp.tanh(policy.dist(params, obs).base_dist.loc),
                               rtol=1e-6)


class _EchoEnv:
    """A JAX environment whose reward is the action it receives (one dimension)."""

    backend, id, obs_shape, max_episode_steps = "gymnax", "echo", (3,), 100
    action_space = BOX

    def reset(self, key):
        return jnp.zeros(3), jnp.zeros(())

    def step(self, key, state, action):
        return (jnp.zeros(3), state, action[0], jnp.array(False), jnp.array(False),
                jnp.zeros(3))


class _EchoVectorEnv:
    """The same as a gymnasium vector environment."""

    num_envs, obs_shape = 4, (3,)

    def reset(self, seed=None):
        return np.zeros((self.num_envs, 3), np.float32)

    def step(self, action):
        zeros = np.zeros(self.num_envs, bool)
        return (np.zeros((self.num_envs, 3), np.float32), np.asarray(action)[:, 0], zeros,
                zeros, np.zeros((self.num_envs, 3), np.float32))


@pytest.mark.parametrize("squash", [True, False])
def test_rollouts_store_the_draw_and_step_the_environment_with_the_squashed_action(squash):
    policy = ActorCritic(BOX, hidden=(4,), squash_actions=squash, log_std_init=1.0)
    params = policy.init(jax.random.key(0), (3,))
    carry = jax_reset(_EchoEnv(), jax.random.key(0), 4)
    _, compiled, _ = jax_rollout(_EchoEnv(), policy, params, carry, jax.random.key(1), 8)
    python = GymnasiumRunner(_EchoVectorEnv(), policy).rollout(params, jax.random.key(1), 8)
    for batch in (compiled, python):
        received = np.asarray(batch.reward)
        np.testing.assert_allclose(received, np.asarray(policy.env_action(batch.action))[..., 0],
                                   rtol=1e-6, atol=1e-6)
        # σ = e: draws beyond the box are stored as drawn; squashed, the environment's are in it
        assert np.abs(np.asarray(batch.action) + 1.0).max() > 2.0
        assert ((received >= LOW) & (received <= HIGH)).all() == squash


def test_squashing_needs_a_bounded_continuous_action_space():
    with pytest.raises(ValueError, match="squash_actions applies to continuous"):
        ActorCritic(Space(True, num_actions=3), squash_actions=True)
    with pytest.raises(ValueError, match="squash_actions needs finite action bounds"):
        ActorCritic(Space(False, shape=(1,), low=np.array([-np.inf]), high=np.array([1.0])),
                    squash_actions=True)
    with pytest.raises(ValueError, match="squash_actions must be True or False"):
        ppo.Config(squash_actions="yes")


def test_the_expected_log_jacobian_is_exact_for_narrow_and_wide_gaussians():
    """``mean_log_sech2`` against E[log(1 − tanh² u)] by adaptive integration, σ from 0.01
    to 100. Twin: Gauss–Hermite alone, which serves only narrow Gaussians, fails wide ones."""
    def log_sech2(u):
        return 2 * (np.log(2) - u - np.logaddexp(0, -2 * u))

    def exact(mu, sigma):
        return integrate.quad(lambda u: log_sech2(u) * stats.norm.pdf(u, mu, sigma),
                              mu - 12 * sigma, mu + 12 * sigma, epsabs=1e-12, limit=1000,
                              points=[0.0] if abs(mu) < 12 * sigma else None)[0]

    grid = [(mu, sigma) for mu in (-6.0, -1.0, 0.0, 0.5, 3.0)
            for sigma in (0.01, 0.3, 0.99, 1.0, 3.0, 10.0, 100.0)]
    with jax.enable_x64(True):
        got = np.asarray(mean_log_sech2(jnp.array([m for m, _ in grid], jnp.float64),
                                        jnp.array([s for _, s in grid], jnp.float64)))
    want = np.array([exact(mu, sigma) for mu, sigma in grid])
    np.testing.assert_allclose(got, want, atol=1e-6)
    nodes, weights = np.polynomial.hermite.hermgauss(32)
    hermite = [np.sum(weights * log_sech2(mu + np.sqrt(2) * s * nodes)) / np.sqrt(np.pi)
               for mu, s in grid]
    assert np.max(np.abs(np.array(hermite) - want)) > 1e-2
    # finite, gradients too, at extreme scales (each branch sees only its own range)
    for scale in (1e-30, 1e-3, 1.0, 1e3, 1e30):
        value, grads = jax.value_and_grad(mean_log_sech2, argnums=(0, 1))(
            jnp.float32(0.5), jnp.float32(scale))
        assert np.isfinite(value) and np.all(np.isfinite(grads)), scale


def _softplus_std(x):
    return np.logaddexp(0.0, x) + 1e-3


@pytest.mark.parametrize("state_dependent", [False, True])
@pytest.mark.parametrize("transform", ["exp", "softplus"])
def test_sigma_is_the_transform_of_its_parameter_and_starts_at_exp_log_std_init(
        transform, state_dependent):
    """σ = g(x + g⁻¹(exp(log_std_init))) for the head x (or the free vector's x), g = exp or
    softplus(·) + 10⁻³: σ = exp(log_std_init) where x is 0. Twin: the other g at the same x."""
    log_std_init, x = -0.7, 0.3
    policy = ActorCritic(BOX, hidden=(4,), log_std_init=log_std_init, std_transform=transform,
                         state_dependent_std=state_dependent)
    params = policy.init(jax.random.key(0), (3,))["policy"]
    net = jax.tree.map(jnp.zeros_like, params["net"])  # σ no longer depends on the state
    params = {**params, "net": net}
    obs = jax.random.normal(jax.random.key(1), (5, 3))
    np.testing.assert_allclose(policy.dist(params, obs).base_dist.scale, np.exp(log_std_init),
                               rtol=1e-5)
    if state_dependent:  # the head's bias: [mean, x]
        net["params"]["Dense_1"]["bias"] = jnp.array([0.0, x])
    else:
        name = {"exp": "log_std", "softplus": "std_param"}[transform]
        params[name] = params[name] + x
    offset = {"exp": log_std_init,
              "softplus": np.log(np.expm1(np.exp(log_std_init) - 1e-3))}
    g = {"exp": np.exp, "softplus": _softplus_std}
    got = np.asarray(policy.dist(params, obs).base_dist.scale)
    np.testing.assert_allclose(got, g[transform](x + offset[transform]), rtol=1e-5)
    other = "softplus" if transform == "exp" else "exp"
    assert np.all(np.abs(got - g[other](x + offset[other])) > 1e-2)


def test_softplus_std_at_brax_initial_sigma_is_brax_parametrisation():
    """log_std_init = log(softplus(0) + 10⁻³) makes σ = softplus(head) + 10⁻³ exactly, brax's
    ``NormalTanhDistribution`` over its policy network's second half of outputs."""
    policy = ActorCritic(BOX, hidden=(4,), std_transform="softplus", state_dependent_std=True,
                         log_std_init=float(np.log(np.log(2.0) + 1e-3)))
    params = policy.init(jax.random.key(0), (3,))["policy"]
    for head in (-3.0, 0.0, 2.0):
        net = jax.tree.map(jnp.zeros_like, params["net"])
        net["params"]["Dense_1"]["bias"] = jnp.array([0.0, head])
        scale = policy.dist({**params, "net": net}, jnp.zeros((1, 3))).base_dist.scale
        np.testing.assert_allclose(scale, _softplus_std(head), rtol=1e-5)


def test_std_transform_and_its_initial_sigma_are_checked():
    with pytest.raises(ValueError, match="std_transform must be one of exp, softplus"):
        ppo.Config(std_transform="log")
    with pytest.raises(ValueError, match="log_std_init must exceed log 0.001"):
        ActorCritic(BOX, std_transform="softplus", log_std_init=-8.0)
    ActorCritic(BOX, std_transform="exp", log_std_init=-8.0)  # exp has no floor
