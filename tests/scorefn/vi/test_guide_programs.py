"""fit's guides and models as NumPyro programs: the same ELBO as on the unconstrained space,
full-rank blocks drawn from their exact conditionals, control variates on the unconstrained
value."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from closed_forms import Z_MAX
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from vi_conjugate import X

from scorefn import control_variates, vi
from scorefn.vi.guide_programs import param_map, unconstrained_control_variate


def hierarchical(x):
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("groups", x.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(0.0, sigma))
        numpyro.sample("x", dist.Normal(theta, 1.0), obs=x)


def unconstrained_elbo(model, guide, params, key, n):
    """E_u[log p(x, T(u)) + log|det ∂T/∂u| - log q(u)] on the unconstrained space, written
    from the model's terms (numpyro's Jacobian factors included): (mean, standard error)."""
    u = guide.sample(params, key, n)
    log_p = jax.vmap(lambda z: model.log_joint(z))(guide.to_sites(u))
    log_w = np.asarray(log_p - guide.log_prob(params, u), np.float64)
    return log_w.mean(), log_w.std() / np.sqrt(n)


@pytest.mark.parametrize("kind", ["mean_field", "full_rank"])
def test_the_program_elbo_is_the_unconstrained_one(key, kind):
    model = vi.as_model(hierarchical, (X,))
    guide = vi.auto_guide(model, kind)
    # away from the initial values, so that the positive site and the correlations matter
    flat, unravel = ravel_pytree(guide.init())
    params = unravel(flat + 0.3 * jax.random.normal(jax.random.key(5), flat.shape))
    n = 20000
    program = float(vi.elbo(model, guide, params, key, n))
    reference, se = unconstrained_elbo(model, guide, params, jax.random.key(9), n)
    assert abs(program - reference) < Z_MAX * np.sqrt(2) * se, (program, reference, se)


def test_full_rank_conditionals_give_the_joint_density(key):
    model = vi.as_model(hierarchical, (X,))
    guide = vi.full_rank(model)
    flat, unravel = ravel_pytree(guide.init())
    params = unravel(flat + 0.3 * jax.random.normal(jax.random.key(2), flat.shape))
    trace = handlers.trace(handlers.seed(handlers.substitute(
        vi.guide_program(model, guide), data=param_map(guide, params)), key)).get_trace()
    # the draws, back on the unconstrained space, scored by the block's one MultivariateNormal
    u = jnp.concatenate([jnp.log(trace["sigma"]["value"])[None], trace["theta"]["value"]])
    joint = guide.blocks["continuous"].dist_fn(params["continuous"]).log_prob(u)
    program = sum(trace[n]["fn"].log_prob(trace[n]["value"]).sum() for n in ("sigma", "theta"))
    # the program's density is on the constrained sigma: minus log|dσ/du| = u_σ
    np.testing.assert_allclose(program, joint - u[0], rtol=1e-5)


def test_control_variate_is_applied_to_the_unconstrained_value():
    cv = control_variates.generic(lambda u: u**2, lambda d: d.mean**2 + d.variance)
    base = dist.Normal(0.3, 0.7)

    def dist_fn(p):
        return dist.TransformedDistribution(dist.Normal(p, 0.7), dist.transforms.ExpTransform())

    h, mean_fn = unconstrained_control_variate(cv).prepare(dist_fn, jnp.asarray(0.3))
    np.testing.assert_allclose(h(jnp.exp(1.5)), 1.5**2, rtol=1e-6)
    np.testing.assert_allclose(mean_fn(jnp.asarray(0.3)), base.mean**2 + base.variance, rtol=1e-6)


def test_score_with_a_control_variate_on_a_positive_site_is_unbiased(key):
    """The score estimator with a control variate on the unconstrained log σ agrees with the
    pathwise estimate (both unbiased; a two-sample test on their means)."""
    model = vi.as_model(hierarchical, (X,))
    guide = vi.auto_guide(model)
    params = guide.init()
    cv = control_variates.delta_method(lambda u: -0.5 * jnp.sum(u**2))

    def grads(estimator, **options):
        def one(k):
            return ravel_pytree(vi.elbo_grad(model, guide, params, k, estimator=estimator,
                                             num_samples=8, **options).grad)[0]

        keys = jax.random.split(key, 4000)
        return np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)

    scored = grads("score", control_variate=cv)
    pathwise = grads("pathwise")
    se = np.sqrt(scored.var(0) / len(scored) + pathwise.var(0) / len(pathwise))
    assert np.all(np.abs(scored.mean(0) - pathwise.mean(0)) / se < Z_MAX)
