"""Fisher information (exact and empirical), Fisher-vector products and natural gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest
from jax.flatten_util import ravel_pytree
from jaxpr_checks import dot_precisions

import scorefn
from scorefn import fisher


def normal_fn(p):
    return dist.Normal(p["loc"], p["scale"])


def test_normal_fisher_in_mean_and_scale_is_diag_one_and_two_over_sigma_squared():
    sigma = 0.7
    got = scorefn.fisher_information(normal_fn, {"loc": jnp.array(0.3), "scale": jnp.array(sigma)})
    np.testing.assert_allclose(got, np.diag([1 / sigma**2, 2 / sigma**2]), rtol=1e-5, atol=1e-6)


def test_batched_normal_fisher_is_block_diagonal_in_ravel_order():
    params = {"loc": jnp.array([0.0, 1.0, -1.0]), "scale": jnp.array([0.5, 1.0, 2.0])}
    got = scorefn.fisher_information(normal_fn, params)
    sigma2 = np.asarray(params["scale"]) ** 2
    np.testing.assert_allclose(got, np.diag(np.concatenate([1 / sigma2, 2 / sigma2])), rtol=1e-5,
                               atol=1e-6)


def test_bernoulli_and_categorical_fisher_in_logits():
    logits = jnp.array([-1.0, 0.0, 2.0])
    p = jax.nn.sigmoid(logits)
    got = scorefn.fisher_information(lambda q: dist.Bernoulli(logits=q["l"]), {"l": logits})
    np.testing.assert_allclose(got, np.diag(p * (1 - p)), rtol=1e-5, atol=1e-7)
    probs = jax.nn.softmax(logits)
    got = scorefn.fisher_information(lambda q: dist.Categorical(logits=q["l"]), {"l": logits})
    np.testing.assert_allclose(got, np.diag(probs) - np.outer(probs, probs), rtol=1e-5, atol=1e-7)


def test_enumeration_fisher_agrees_with_the_kl_hessian():
    """Categorical(probs) has both a closed-form KL in numpyro and a finite support."""
    probs = {"p": jnp.array([0.2, 0.5, 0.3])}

    def dist_fn(q):
        return dist.Categorical(probs=q["p"])

    by_kl = fisher._kl_fisher(dist_fn, probs)
    by_enumeration = fisher._enumeration_fisher(dist_fn, probs)
    np.testing.assert_allclose(by_enumeration, by_kl, rtol=1e-4, atol=1e-5)


def test_binomial_fisher_by_enumeration():
    """n p (1 - p) in logits; numpyro has no Binomial KL, so the support is enumerated."""
    logits = jnp.array([0.0, 1.2])
    p = jax.nn.sigmoid(logits)
    got = scorefn.fisher_information(lambda q: dist.Binomial(6, logits=q["l"]), {"l": logits})
    np.testing.assert_allclose(got, np.diag(6 * p * (1 - p)), rtol=1e-5, atol=1e-6)


def test_mvn_fisher_for_the_mean_is_the_precision():
    cov = jnp.array([[1.0, 0.3], [0.3, 0.5]])
    params = {"mean": jnp.array([0.1, -0.2])}
    got = scorefn.fisher_information(lambda q: dist.MultivariateNormal(q["mean"], cov), params)
    np.testing.assert_allclose(got, np.linalg.inv(np.asarray(cov)), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["normal", "categorical", "mvn-tril"])
def test_empirical_fisher_is_unbiased_for_the_exact_one(case):
    if case == "normal":
        dist_fn, params = normal_fn, {"loc": jnp.array([0.2, -0.4]), "scale": jnp.array([0.6, 1.3])}
    elif case == "categorical":
        dist_fn, params = (lambda q: dist.Categorical(logits=q["l"])), {"l": jnp.array([0.2, -0.5, 1.0])}
    else:
        def dist_fn(q):
            return dist.MultivariateNormal(q["m"], scale_tril=jnp.tril(q["L"]))

        params = {"m": jnp.zeros(2), "L": jnp.array([[1.0, 0.0], [0.4, 0.8]])}
    exact = np.asarray(scorefn.fisher_information(dist_fn, params), np.float64)
    n = 40_000
    x = scorefn.sample(dist_fn, params, jax.random.key(3), n)
    g = np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(scorefn.per_sample_scores(dist_fn, params, x)),
                   np.float64)
    outer = g[:, :, None] * g[:, None, :]
    mean, se = outer.mean(0), outer.std(0, ddof=1) / math.sqrt(n)
    empirical = np.asarray(scorefn.fisher_information(dist_fn, params, jax.random.key(3), n))
    np.testing.assert_allclose(empirical, mean, rtol=1e-4, atol=1e-5)
    z = np.where(se > 0, (mean - exact) / np.where(se > 0, se, 1), mean - exact)
    assert np.all(np.abs(z) < 4), np.round(z, 1)
    # The same test catches a Fisher off by 10%.
    z_wrong = np.where(se > 0, (mean - 1.1 * exact) / np.where(se > 0, se, 1), 0)
    assert np.any(np.abs(z_wrong) > 4)


def test_empirical_fisher_multiplies_at_full_precision():
    """Its off-diagonal sums cancel: traced at HIGHEST precision, so a GPU does not use TF32."""
    dist_fn = lambda q: dist.Categorical(logits=q["l"])  # noqa: E731
    params = {"l": jnp.array([0.2, -0.5, 1.0])}
    x = scorefn.sample(dist_fn, params, jax.random.key(0), 8)
    precisions = dot_precisions(lambda p: fisher.empirical_fisher(dist_fn, p, x), params)
    assert precisions and all("HIGHEST" in p for p in precisions), precisions


def test_fisher_information_argument_errors():
    params = {"loc": jnp.array(0.0), "scale": jnp.array(1.0)}
    with pytest.raises(ValueError, match="num_samples needs a key"):
        scorefn.fisher_information(normal_fn, params, num_samples=10)
    with pytest.raises(ValueError, match="needs num_samples"):
        scorefn.fisher_information(normal_fn, params, jax.random.key(0))
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        scorefn.fisher_information(normal_fn, params, 3, 10)
    def zip_fn(q):
        return dist.ZeroInflatedPoisson(gate=0.2, rate=q["r"])

    with pytest.raises(ValueError, match="no exact Fisher for ZeroInflatedPoisson"):
        scorefn.fisher_information(zip_fn, {"r": jnp.array(2.0)})
    # The empirical one works for it.
    assert scorefn.fisher_information(zip_fn, {"r": jnp.array(2.0)}, jax.random.key(0),
                                      100).shape == (1, 1)
    with pytest.raises(ValueError, match="Fisher information in total_count has no closed form"):
        scorefn.fisher_information(
            lambda q: dist.NegativeBinomialProbs(jnp.exp(q["r"]), 0.3), {"r": jnp.array(1.0)})


# θ = (a₁, a₂, b), two factors with their parameter φ_i = link(a_i + b): the chain rule mixes
FAMILY_PARAMS = {"a": jnp.array([0.3, -0.2]), "b": jnp.array(0.1)}
FAMILIES = {
    "poisson": lambda q: dist.Poisson(jnp.exp(q["a"] + q["b"])),
    "exponential": lambda q: dist.Exponential(jnp.exp(q["a"] + q["b"])),
    "geometric-probs": lambda q: dist.GeometricProbs(jax.nn.sigmoid(q["a"] + q["b"])),
    "geometric-logits": lambda q: dist.GeometricLogits(q["a"] + q["b"]),
    "negative-binomial-probs": lambda q: dist.NegativeBinomialProbs(
        3.0, jax.nn.sigmoid(q["a"] + q["b"])),
    "negative-binomial-logits": lambda q: dist.NegativeBinomialLogits(3.0, q["a"] + q["b"]),
}


def fisher_by_summation(dist_fn, params):
    """Σ_factors E[g gᵀ] by brute force, independent of the formulas: the support 0..399 for
    the counting families, 200,000 midpoint quantiles for the Exponential."""
    flat, unravel = ravel_pytree(params)
    d = dist_fn(params)
    if isinstance(d, dist.Exponential):
        u = (jnp.arange(200000) + 0.5) / 200000
        points = -jnp.log1p(-u)[:, None] / d.rate                    # quantiles, (M, 2)
        weights = jnp.full(points.shape, 1.0 / 200000)
    else:
        points = jnp.broadcast_to(jnp.arange(400.0)[:, None], (400, 2))
        weights = jnp.exp(d.log_prob(points))

    def log_prob(f, x):
        return dist_fn(unravel(f)).log_prob(x)   # (2,): one per factor

    scores = jax.vmap(jax.jacrev(log_prob), in_axes=(None, 0))(flat, points)   # (M, 2, P)
    return jnp.einsum("mk,mkp,mkq->pq", weights, scores, scores)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_exact_fisher_by_formula_for_families_without_kl(name):
    exact = scorefn.fisher_information(FAMILIES[name], FAMILY_PARAMS)
    reference = fisher_by_summation(FAMILIES[name], FAMILY_PARAMS)
    np.testing.assert_allclose(exact, reference, rtol=2e-3, atol=1e-5)
    assert exact.shape == (3, 3)
    # a 10% error in a formula would not pass
    assert not np.allclose(1.1 * exact, reference, rtol=2e-3, atol=1e-5)


def test_family_fisher_through_to_event_and_plates():
    plain = scorefn.fisher_information(FAMILIES["poisson"], FAMILY_PARAMS)
    event = scorefn.fisher_information(
        lambda q: FAMILIES["poisson"](q).to_event(1), FAMILY_PARAMS)
    expanded = scorefn.fisher_information(
        lambda q: FAMILIES["poisson"](q).expand((4, 2)), FAMILY_PARAMS)
    np.testing.assert_allclose(event, plain, rtol=1e-6)
    np.testing.assert_allclose(expanded, 4 * plain, rtol=1e-6)
    masked = dist.Poisson(jnp.exp(FAMILY_PARAMS["a"])).mask(jnp.array([True, False]))
    with pytest.raises(ValueError, match="no exact Fisher"):
        scorefn.fisher_information(lambda q: masked, FAMILY_PARAMS)


def test_fisher_vector_product_equals_the_dense_empirical_fisher():
    params = {"loc": jnp.array([0.2, -0.4, 1.0]), "scale": jnp.array([0.6, 1.3, 0.9])}
    x = scorefn.sample(normal_fn, params, jax.random.key(1), 500)
    dense = fisher.empirical_fisher(normal_fn, params, x)
    fvp = fisher.fisher_vector_product(normal_fn, params, x)
    v = {"loc": jnp.array([1.0, -2.0, 0.5]), "scale": jnp.array([0.3, 0.0, -1.0])}
    np.testing.assert_allclose(ravel_pytree(fvp(v))[0], dense @ ravel_pytree(v)[0], rtol=1e-4,
                               atol=1e-4)


def test_kl_fisher_vector_product_equals_the_exact_fisher():
    params = {"loc": jnp.array([0.2, -0.4]), "scale": jnp.array([0.6, 1.3])}
    exact = scorefn.fisher_information(normal_fn, params)
    v = {"loc": jnp.array([1.0, -2.0]), "scale": jnp.array([0.3, -1.0])}
    total = fisher.kl_fisher_vector_product(normal_fn, params, reduction="sum")(v)
    np.testing.assert_allclose(ravel_pytree(total)[0], exact @ ravel_pytree(v)[0], rtol=1e-5)
    mean = fisher.kl_fisher_vector_product(normal_fn, params)(v)
    np.testing.assert_allclose(ravel_pytree(mean)[0], ravel_pytree(total)[0] / 2, rtol=1e-5)
    with pytest.raises(ValueError, match="reduction must be"):
        fisher.kl_fisher_vector_product(normal_fn, params, reduction="max")


@pytest.mark.parametrize("damping", [0.0, 1e-2])
def test_dense_and_conjugate_gradient_agree(damping):
    params = {"loc": jnp.linspace(-1, 1, 6), "scale": jnp.linspace(0.5, 2, 6)}
    x = scorefn.sample(normal_fn, params, jax.random.key(2), 400)
    grad = {"loc": jnp.linspace(0.1, 1, 6), "scale": -jnp.linspace(0.1, 1, 6)}
    dense = fisher.natural_gradient_dense(fisher.empirical_fisher(normal_fn, params, x), grad,
                                          damping=damping + 1e-6)
    cg = fisher.natural_gradient_cg(fisher.fisher_vector_product(normal_fn, params, x), grad,
                                    damping=damping + 1e-6, maxiter=100, tol=1e-8)
    np.testing.assert_allclose(ravel_pytree(cg)[0], ravel_pytree(dense)[0], rtol=1e-3, atol=1e-4)
    kl_cg = fisher.natural_gradient_cg(
        fisher.kl_fisher_vector_product(normal_fn, params, reduction="sum"), grad,
        damping=damping, maxiter=100, tol=1e-8)
    exact = fisher.natural_gradient_dense(scorefn.fisher_information(normal_fn, params), grad,
                                          damping=damping + 1e-9)
    np.testing.assert_allclose(ravel_pytree(kl_cg)[0], ravel_pytree(exact)[0], rtol=1e-3, atol=1e-4)


def test_natural_gradient_of_a_gaussian_matches_the_closed_form():
    """E[x²] under N(μ, σ²): ∇ = (2μ, 2σ), I = diag(1/σ², 2/σ²), so Ĩ⁻¹∇ = (2μσ², σ³)."""
    mu, sigma = 0.8, 0.6
    params = {"loc": jnp.array(mu), "scale": jnp.array(sigma)}
    grad = {"loc": jnp.array(2 * mu), "scale": jnp.array(2 * sigma)}
    nat = fisher.natural_gradient_dense(scorefn.fisher_information(normal_fn, params), grad, 0.0)
    assert float(nat["loc"]) == pytest.approx(2 * mu * sigma**2, rel=1e-5)
    assert float(nat["scale"]) == pytest.approx(sigma**3, rel=1e-5)


def test_natural_gradient_is_invariant_to_reparameterising_the_scale():
    """A step in (μ, σ) and a step in (μ, log σ) move σ by the same amount, to first order,
    with the natural gradient; the plain gradient moves it by different amounts."""
    mu, sigma = 0.8, 0.5

    def f_expectation(loc, scale):
        return loc**2 + scale**2  # E[x²]

    by_scale = {"loc": jnp.array(mu), "scale": jnp.array(sigma)}
    by_log_scale = {"loc": jnp.array(mu), "log_scale": jnp.log(jnp.array(sigma))}

    def log_fn(p):
        return dist.Normal(p["loc"], jnp.exp(p["log_scale"]))

    grad_scale = jax.grad(lambda p: f_expectation(p["loc"], p["scale"]))(by_scale)
    grad_log = jax.grad(lambda p: f_expectation(p["loc"], jnp.exp(p["log_scale"])))(by_log_scale)
    nat_scale = fisher.natural_gradient_dense(
        scorefn.fisher_information(normal_fn, by_scale), grad_scale, 0.0)
    nat_log = fisher.natural_gradient_dense(
        scorefn.fisher_information(log_fn, by_log_scale), grad_log, 0.0)
    # dσ = σ · d(log σ)
    assert float(nat_scale["scale"]) == pytest.approx(sigma * float(nat_log["log_scale"]), rel=1e-5)
    assert float(nat_scale["loc"]) == pytest.approx(float(nat_log["loc"]), rel=1e-5)
    plain_moves = (float(grad_scale["scale"]), sigma * float(grad_log["log_scale"]))
    assert abs(plain_moves[0] - plain_moves[1]) > 0.1 * abs(plain_moves[0])


@pytest.mark.parametrize("method", ["exact", "empirical", "cg"])
def test_optax_natural_gradient_transformation(method):
    params = {"loc": jnp.array([0.5, -0.5]), "scale": jnp.array([0.8, 1.5])}
    grad = {"loc": jnp.array([1.0, 2.0]), "scale": jnp.array([0.5, -0.5])}
    tx = optax.chain(
        scorefn.natural_gradient(normal_fn, damping=1e-6, method=method, num_samples=20_000,
                                 key=None if method == "exact" else jax.random.key(0)),
        optax.sgd(0.1),
    )
    state = tx.init(params)
    updates, state = tx.update(grad, state, params)
    expected = fisher.natural_gradient_dense(scorefn.fisher_information(normal_fn, params), grad, 0.0)
    tol = 1e-4 if method == "exact" else 0.1
    np.testing.assert_allclose(ravel_pytree(updates)[0], -0.1 * ravel_pytree(expected)[0], rtol=tol,
                               atol=tol * 0.1)
    # Jittable, with the key carried in the state.
    jax.jit(tx.update)(grad, state, params)


def test_natural_gradient_transformation_errors():
    with pytest.raises(ValueError, match="method must be"):
        scorefn.natural_gradient(normal_fn, method="kfac")
    with pytest.raises(ValueError, match="pass key"):
        scorefn.natural_gradient(normal_fn, method="cg")
    for damping in (-1.0, float("nan")):
        with pytest.raises(ValueError, match=r"damping must be a finite number in \[0, ∞\)"):
            scorefn.natural_gradient(normal_fn, damping=damping)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="maxiter must be an int >= 1, got 0"):
        scorefn.natural_gradient(normal_fn, method="cg", key=key, maxiter=0)
    with pytest.raises(ValueError, match="num_samples must be an int >= 1, got 0"):
        scorefn.natural_gradient(normal_fn, method="empirical", key=key, num_samples=0)
    tx = scorefn.natural_gradient(normal_fn)
    with pytest.raises(ValueError, match="needs params"):
        tx.update({"loc": jnp.zeros(())}, tx.init(None))
    with pytest.raises(ValueError, match=r"fisher must be \(2, 2\)"):
        fisher.natural_gradient_dense(jnp.eye(3), {"a": jnp.zeros(2)})


def test_natural_gradient_descent_converges_on_an_expected_loss():
    """Minimise E_{x~N(μ,σ²)}[(x - 3)²] = (μ - 3)² + σ² with score-function gradients
    preconditioned by the exact Fisher: μ → 3, σ shrinks."""
    params = {"loc": jnp.array(0.0), "scale": jnp.array(1.0)}
    tx = optax.chain(scorefn.natural_gradient(normal_fn, damping=1e-3), optax.sgd(0.3))
    state = tx.init(params)

    @jax.jit
    def step(params, state, key):
        g = scorefn.grad(lambda x: (x - 3.0) ** 2, normal_fn, params, key, 256,
                         baseline=scorefn.baselines.leave_one_out())
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    for key in jax.random.split(jax.random.key(0), 100):
        params, state = step(params, state, key)
    assert float(params["loc"]) == pytest.approx(3.0, abs=0.15)
    assert 0 < float(params["scale"]) < 0.5


def test_kl_fisher_vector_product_for_a_categorical_logits_policy():
    """numpyro has no Categorical(logits) KL: it is enumerated, and its Hessian is the Fisher."""
    logits = jnp.array([[0.2, -0.5, 1.0], [0.0, 0.3, -0.2]])

    def dist_fn(q):
        return dist.Categorical(logits=q["l"])

    exact = scorefn.fisher_information(dist_fn, {"l": logits})
    v = {"l": jnp.array([[1.0, -1.0, 0.5], [0.2, 0.0, -0.3]])}
    product = fisher.kl_fisher_vector_product(dist_fn, {"l": logits}, reduction="sum")(v)
    np.testing.assert_allclose(ravel_pytree(product)[0], exact @ ravel_pytree(v)[0], rtol=1e-5,
                               atol=1e-6)
    p, q = dist.Categorical(probs=jnp.array([0.2, 0.8])), dist.Categorical(probs=jnp.array([0.5, 0.5]))
    closed = dist.kl_divergence(p, q)
    p_logits = dist.Categorical(logits=jnp.log(jnp.array([0.2, 0.8])))
    q_logits = dist.Categorical(logits=jnp.zeros(2))
    assert float(fisher.kl(p_logits, q_logits)) == pytest.approx(float(closed), rel=1e-5)
    with pytest.raises(NotImplementedError, match="no KL for Poisson"):
        fisher.kl(dist.Poisson(1.0), dist.Poisson(2.0))


def test_elementwise_fisher_blocks_and_solve():
    params = {"loc": jnp.array([0.0, 1.0, -2.0]), "log_scale": jnp.log(jnp.array([0.5, 1.0, 2.0]))}

    def dist_fn(q):
        return dist.Normal(q["loc"], jnp.exp(q["log_scale"]))

    blocks = fisher.elementwise_fisher(dist_fn, params)
    sigma = np.exp(np.asarray(params["log_scale"]))
    expected = np.stack([np.diag([1 / s**2, 2.0]) for s in sigma])
    np.testing.assert_allclose(blocks, expected, rtol=1e-5, atol=1e-6)
    grad = {"loc": jnp.array([1.0, 2.0, 3.0]), "log_scale": jnp.array([0.2, 0.4, -0.6])}
    nat = fisher.natural_gradient_elementwise(blocks, grad)
    dense = fisher.natural_gradient_dense(scorefn.fisher_information(dist_fn, params), grad, 0.0)
    np.testing.assert_allclose(ravel_pytree(nat)[0], ravel_pytree(dense)[0], rtol=1e-4)
    with pytest.raises(ValueError, match="every parameter leaf shaped like the batch"):
        fisher.elementwise_fisher(lambda q: dist.Normal(q["loc"], q["s"]),
                                  {"loc": jnp.zeros(3), "s": jnp.ones(())})


def test_diagonal_gaussian_natural_gradient_is_the_elementwise_fisher_solve():
    log_scale = jnp.log(jnp.array([0.05, 0.5, 1.0, 3.0]))
    params = {"loc": jnp.array([0.0, 1.0, -2.0, 4.0]), "log_scale": log_scale}
    grad = {"loc": jnp.array([1.0, 2.0, 3.0, -1.0]), "log_scale": jnp.array([0.2, 0.4, -0.6, 1.0])}

    def dist_fn(q):
        return dist.Normal(q["loc"], jnp.exp(q["log_scale"]))

    blocks = fisher.elementwise_fisher(dist_fn, params)
    expected = fisher.natural_gradient_elementwise(blocks, grad)
    loc, scale = fisher.diagonal_gaussian_natural_gradient(grad["loc"], grad["log_scale"], log_scale)
    np.testing.assert_allclose(loc, expected["loc"], rtol=1e-5)
    np.testing.assert_allclose(scale, expected["log_scale"], rtol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_natural_gradient_elementwise_solves_general_blocks(k):
    key1, key2 = jax.random.split(jax.random.key(5))
    m = jax.random.normal(key1, (4, k, k))
    blocks = m @ jnp.swapaxes(m, 1, 2) + jnp.eye(k)  # symmetric positive definite, not diagonal
    grad = {f"g{i}": jax.random.normal(jax.random.fold_in(key2, i), (4,)) for i in range(k)}
    got = fisher.natural_gradient_elementwise(blocks, grad, damping=0.1)
    stacked = jnp.stack([grad[f"g{i}"] for i in range(k)], axis=-1)
    want = jnp.linalg.solve(blocks + 0.1 * jnp.eye(k), stacked[..., None])[..., 0]
    for i in range(k):
        np.testing.assert_allclose(got[f"g{i}"], want[:, i], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_solve_small_systems_matches_a_dense_solve(k):
    key = jax.random.key(k)
    a = jax.random.normal(key, (6, k, k)) + 3.0 * jnp.eye(k)
    rhs = jax.random.normal(jax.random.fold_in(key, 1), (6, k))
    x = scorefn.numerics.solve_small_systems(a, rhs)
    np.testing.assert_allclose(jnp.einsum("bij,bj->bi", a, x), rhs, atol=1e-5)
