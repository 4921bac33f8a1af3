"""scorefn.programs.surrogate / grad: unbiased against closed forms, any order."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from closed_forms import assert_unbiased, detects_bias, variance_z
from jax.flatten_util import ravel_pytree
from program_cases import (
    PLATED_PARAMS,
    THREE_SITE_PARAMS,
    plated,
    plated_objective,
    repeated_grads,
    three_site,
    three_site_objective,
)

import scorefn
from scorefn.programs.plan import plan
from scorefn.programs.surrogate import surrogate_parts

TRUE = jax.grad(three_site_objective)(THREE_SITE_PARAMS)


def test_value_is_the_monte_carlo_estimate_of_J():
    keys = jax.random.split(jax.random.key(1), 2000)
    values = jax.jit(jax.vmap(
        lambda k: scorefn.programs.surrogate(three_site, THREE_SITE_PARAMS, k)))(keys)
    values = np.asarray(values, np.float64)
    se = values.std() / np.sqrt(len(values))
    z = (values.mean() - float(three_site_objective(THREE_SITE_PARAMS))) / se
    assert abs(z) < 4


def test_grad_is_jax_grad_of_the_surrogate():
    key = jax.random.key(3)
    g = scorefn.programs.grad(three_site, THREE_SITE_PARAMS, key, num_particles=4)
    h = jax.grad(lambda p: scorefn.programs.surrogate(three_site, p, key, num_particles=4))(THREE_SITE_PARAMS)
    jax.tree.map(np.testing.assert_array_equal, g, h)


def test_default_estimators_and_credit_structure():
    p = plan(three_site, THREE_SITE_PARAMS, (), num_particles=8)
    assert p.estimators == {"b": "score", "y": "pathwise", "c": "score"}
    assert p.upstream["fit"] == ("b",)  # y is pathwise; its distribution reads b
    assert p.upstream["reward"] == ("b", "c")
    assert p.upstream["pick"] == ("b",)
    assert p.upstream["reg"] == ()


COMBOS = [
    {"b": b, "y": y, "c": c}
    for b in ("score", "enumerate") for y in ("score", "pathwise") for c in ("score", "enumerate")
] + [
    {"b": "measure_valued", "y": "pathwise", "c": "score"},
    {"b": "score", "y": "measure_valued", "c": "enumerate"},
    {"b": "measure_valued", "y": "measure_valued", "c": "score"},
]


@pytest.mark.slow
@pytest.mark.parametrize("estimators", COMBOS, ids=lambda e: "-".join(e.values()))
def test_every_estimator_combination_is_unbiased(estimators):
    estimates = repeated_grads(three_site, THREE_SITE_PARAMS, jax.random.key(11), 3000,
                               num_particles=4, estimators=estimators)
    assert_unbiased(estimates, TRUE)


def test_unbiased_without_baselines():
    estimates = repeated_grads(three_site, THREE_SITE_PARAMS, jax.random.key(12), 3000,
                               num_particles=4, baselines={"b": None, "c": None})
    assert_unbiased(estimates, TRUE)


def test_planted_bias_batch_mean_baseline_is_detected():
    # batch_mean includes the particle's own value: shrinks the score terms by (K-1)/K.
    estimates = repeated_grads(
        three_site, THREE_SITE_PARAMS, jax.random.key(13), 3000, num_particles=2,
        baselines={"b": scorefn.baselines.batch_mean(), "c": scorefn.baselines.batch_mean()})
    assert detects_bias(estimates, TRUE)


def test_planted_wrong_dependency_is_detected():
    """A credit assignment that forgets that 'reward' reads c (through c's value) is biased,
    and the same statistical test catches it."""
    p = plan(three_site, THREE_SITE_PARAMS, (), num_particles=4)
    wrong = dataclasses.replace(p, upstream={**p.upstream, "reward": ("b",)})

    def one(k, pl):
        g = jax.grad(lambda q: surrogate_parts(three_site, q, k, (), pl, 4)[0])(THREE_SITE_PARAMS)
        return ravel_pytree(g)[0]

    keys = jax.random.split(jax.random.key(14), 3000)
    right = np.asarray(jax.jit(lambda ks: jax.lax.map(lambda k: one(k, p), ks))(keys), np.float64)
    planted = np.asarray(jax.jit(lambda ks: jax.lax.map(lambda k: one(k, wrong), ks))(keys), np.float64)
    assert_unbiased(right, TRUE)
    assert detects_bias(planted, TRUE)


def test_credit_assignment_keeps_the_mean_and_lowers_the_variance():
    options = {"num_particles": 4, "estimators": {"b": "score", "y": "score", "c": "score"}}
    key = jax.random.key(15)
    with_credit = repeated_grads(three_site, THREE_SITE_PARAMS, key, 3000, **options)
    without = repeated_grads(three_site, THREE_SITE_PARAMS, jax.random.fold_in(key, 1), 3000,
                             credit_assignment=False, **options)
    assert_unbiased(with_credit, TRUE)
    assert_unbiased(without, TRUE)
    # c's logits (the last three coordinates, ravel order a, l, m, s) get only 'reward'.
    names = [k for k in sorted(THREE_SITE_PARAMS) for _ in range(np.size(THREE_SITE_PARAMS[k]))]
    logits = [i for i, n in enumerate(names) if n == "l"]
    assert np.all(variance_z(with_credit[:, logits], without[:, logits]) < -4)


def test_plate_elements_get_only_their_own_terms():
    true = jax.grad(plated_objective)(PLATED_PARAMS)
    key = jax.random.key(16)
    local = repeated_grads(plated, PLATED_PARAMS, key, 3000, num_particles=4,
                           estimators={"g": "score"})
    whole = repeated_grads(plated, PLATED_PARAMS, jax.random.fold_in(key, 1), 3000,
                           num_particles=4, estimators={"g": "score"}, credit_assignment=False)
    assert_unbiased(local, true)
    assert_unbiased(whole, true)
    a = slice(0, 6)  # ravel order: a (6), mu
    assert np.all(variance_z(local[:, a], whole[:, a]) < -4)


def test_measure_valued_sites_inside_a_plate_are_unbiased():
    true = jax.grad(plated_objective)(PLATED_PARAMS)
    estimates = repeated_grads(plated, PLATED_PARAMS, jax.random.key(17), 2000, num_particles=4,
                               estimators={"g": "measure_valued", "z": "measure_valued"})
    assert_unbiased(estimates, true)


def test_one_site_program_matches_the_core_score_grad():
    """The single-distribution API is the one-site case: same samples, same estimate."""
    params = {"loc": jnp.array([0.5, -1.0]), "log_scale": jnp.array([0.0, -0.5])}

    def dist_fn(p):
        return dist.Normal(p["loc"], jnp.exp(p["log_scale"]))

    def f(x):
        return jnp.sum(jnp.abs(x) > 0.5, -1).astype(jnp.float32)

    def program(p):
        x = numpyro.sample("x", dist_fn(p).to_event(1))
        numpyro.factor("f", f(x))

    key, k = jax.random.key(4), 16
    g = scorefn.programs.grad(program, params, key, num_particles=k, estimators={"x": "score"})
    # particle k's i-th latent site draws with split(key, (K, num_sites + 1))[k, i]
    keys = jax.random.split(key, (k, 2))[:, 0]
    x = jax.vmap(lambda kk: dist_fn(params).sample(kk))(keys)
    core = scorefn.score_grad(dist_fn, params, x, f(x), baseline=scorefn.baselines.leave_one_out())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g, core)


@pytest.mark.parametrize("estimator", ["arm", "disarm", "rebar", "gumbel_softmax",
                                       "straight_through"])
def test_one_site_program_is_scorefn_grad_on_the_same_draws(estimator):
    """A Bernoulli site runs the same code as ``scorefn.grad`` for one distribution: with
    particle k's site key, grad on one sample (one antithetic pair) is particle k's estimate,
    so their mean is the program's gradient."""
    params = {"logits": jnp.array([0.3, -0.8, 1.2])}

    def dist_fn(p):
        return dist.Bernoulli(logits=p["logits"])

    def f(x):
        return jnp.sum((x - jnp.array([0.2, 0.9, 0.4])) ** 2)

    def program(p):
        numpyro.factor("f", f(numpyro.sample("x", dist_fn(p).to_event(1))))

    key, k = jax.random.key(4), 8
    g = scorefn.programs.grad(program, params, key, num_particles=k,
                              estimators={"x": estimator})
    keys = jax.random.split(key, (k, 2))[:, 0]  # particle k's key for its one site
    n = 2 if estimator in ("arm", "disarm") else 1
    core = jax.vmap(lambda kk: scorefn.grad(f, dist_fn, params, kk, n, estimator=estimator))(keys)
    np.testing.assert_allclose(g["logits"], np.mean(core["logits"], axis=0), rtol=1e-5,
                               atol=1e-6)
    # and not by accident: another particle's keys give another estimate
    other = jax.vmap(lambda kk: scorefn.grad(f, dist_fn, params, kk, n, estimator=estimator))(
        jax.random.split(jax.random.key(5), k))
    assert np.max(np.abs(g["logits"] - np.mean(other["logits"], axis=0))) > 1e-3


def test_same_key_same_bits_jit_and_vmap_over_seeds():
    keys = jax.random.split(jax.random.key(5), 2)

    def g(k):
        return scorefn.programs.grad(three_site, THREE_SITE_PARAMS, k, num_particles=4)

    batched = jax.vmap(g)(keys)
    jitted = jax.jit(g)
    for i in range(2):
        one = jitted(keys[i])
        jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6),
                     batched, one)
        jax.tree.map(np.testing.assert_array_equal, one, jitted(keys[i]))


# Hessians ---------------------------------------------------------------------------------

def _hessians(program, params, key, num_repeats, **options):
    def one(k):
        h = jax.hessian(lambda p: scorefn.programs.surrogate(program, p, k, **options))(params)
        return ravel_pytree(h)[0]

    return np.asarray(jax.jit(lambda ks: jax.lax.map(one, ks))(jax.random.split(key, num_repeats)),
                      np.float64)


NORMAL_PARAMS = {"loc": jnp.array(0.7), "log_scale": jnp.array(-0.3)}


def normal_square(p):
    x = numpyro.sample("x", dist.Normal(p["loc"], jnp.exp(p["log_scale"])))
    numpyro.factor("f", x**2 + jnp.where(x > 0, 1.0, 0.0))


def normal_square_objective(p):
    loc, scale = p["loc"], jnp.exp(p["log_scale"])
    return loc**2 + scale**2 + jax.scipy.stats.norm.cdf(loc / scale)


CAT_PARAMS = {"logits": jnp.array([0.1, -0.4, 0.3, 0.0])}
CAT_R = jnp.array([1.0, -1.0, 2.0, 0.5])


def categorical_table(p):
    x = numpyro.sample("x", dist.Categorical(logits=p["logits"]))
    numpyro.factor("r", CAT_R[x])


def categorical_objective(p):
    return jnp.sum(jax.nn.softmax(p["logits"]) * CAT_R)


@pytest.mark.parametrize("baseline", [None, "loo"])
@pytest.mark.parametrize("case", ["normal", "categorical"])
def test_hessian_is_unbiased(case, baseline):
    program, params, objective = {
        "normal": (normal_square, NORMAL_PARAMS, normal_square_objective),
        "categorical": (categorical_table, CAT_PARAMS, categorical_objective),
    }[case]
    baselines = {"x": scorefn.baselines.leave_one_out() if baseline else None}
    estimates = _hessians(program, params, jax.random.key(21), 4000, num_particles=4,
                          estimators={"x": "score"}, baselines=baselines)
    assert_unbiased(estimates, jax.hessian(objective)(params))


def test_hessian_enumerated_is_exact():
    h = jax.hessian(lambda p: scorefn.programs.surrogate(
        categorical_table, p, jax.random.key(0), num_particles=1, estimators={"x": "enumerate"}))(CAT_PARAMS)
    exact = jax.hessian(categorical_objective)(CAT_PARAMS)
    np.testing.assert_allclose(ravel_pytree(h)[0], ravel_pytree(exact)[0], rtol=1e-4, atol=1e-5)


def test_planted_first_order_surrogate_has_a_biased_hessian():
    """mean(stop_gradient(f) · log p) has the right gradient but a biased Hessian
    (E[f ∇² log p] misses E[f ∇log p ∇log pᵀ]): the Hessian test detects it."""

    def naive(p, k):
        x = dist.Categorical(logits=p["logits"]).sample(k, (4,))
        return jnp.mean(jax.lax.stop_gradient(CAT_R[x]) * dist.Categorical(logits=p["logits"]).log_prob(x))

    keys = jax.random.split(jax.random.key(22), 4000)
    planted = jax.jit(jax.vmap(lambda k: ravel_pytree(jax.hessian(naive)(CAT_PARAMS, k))[0]))(keys)
    assert detects_bias(np.asarray(planted, np.float64), jax.hessian(categorical_objective)(CAT_PARAMS))


def test_hessian_vector_product_through_jvp_of_grad():
    key = jax.random.key(7)

    def surrogate(p):
        return scorefn.programs.surrogate(categorical_table, p, key, num_particles=4)

    tangent = {"logits": jnp.array([1.0, -1.0, 0.5, 2.0])}
    _, hvp = jax.jvp(jax.grad(surrogate), (CAT_PARAMS,), (tangent,))
    h = jax.hessian(surrogate)(CAT_PARAMS)["logits"]["logits"]
    np.testing.assert_allclose(hvp["logits"], h @ tangent["logits"], rtol=1e-4, atol=1e-5)


# In users' loops -----------------------------------------------------------------------------

def test_trains_a_discrete_latent_model_with_optax_and_flax():
    """A Bernoulli-latent autoencoder on 4 binary patterns: a flax encoder gives z's logits,
    a linear decoder reconstructs x. Trained by optax on -surrogate, the ELBO-like objective
    (reconstruction log-likelihood) rises well above its start."""
    import flax.linen as nn

    data = jnp.array([[1, 1, 0, 0, 1, 0], [0, 0, 1, 1, 0, 1], [1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 1]],
                     jnp.float32)
    encoder = nn.Dense(2)

    def program(p, x):
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Bernoulli(logits=encoder.apply(p["enc"], x)).to_event(1))
            logits = z @ p["dec"]["w"] + p["dec"]["b"]
            numpyro.factor("fit", dist.Bernoulli(logits=logits).to_event(1).log_prob(x))

    params = {"enc": encoder.init(jax.random.key(0), data),
              "dec": {"w": jnp.zeros((2, 6)), "b": jnp.zeros(6)}}
    optimiser = optax.adam(0.05)

    @jax.jit
    def step(p, state, k):
        loss, g = jax.value_and_grad(lambda q: -scorefn.programs.surrogate(program, q, k, data,
                                                                           num_particles=8))(p)
        updates, state = optimiser.update(g, state, p)
        return optax.apply_updates(p, updates), state, loss

    state = optimiser.init(params)
    keys = jax.random.split(jax.random.key(1), 400)
    losses = []
    for k in keys:
        params, state, loss = step(params, state, k)
        losses.append(float(loss))
    # The decoder starts at zero: exactly log 2 per bit. Two latent bits can code the four
    # patterns exactly, so the loss can fall towards 0.
    np.testing.assert_allclose(losses[0], 4 * 6 * np.log(2), rtol=1e-5)
    assert np.mean(losses[-50:]) < 0.2 * losses[0], (losses[0], np.mean(losses[-50:]))


def test_ema_baseline_with_returned_signals():
    ema = scorefn.baselines.ema(0.8)

    def step(state, k):
        (value, signals), g = jax.value_and_grad(
            lambda p: scorefn.programs.surrogate(categorical_table, p, k, num_particles=4,
                                                 estimators={"x": "score"},
                                                 baselines={"x": state}, return_signals=True),
            has_aux=True)(CAT_PARAMS)
        return ema.update(signals["x"], state), ravel_pytree(g)[0]

    keys = jax.random.split(jax.random.key(8), 3000)
    state, estimates = jax.jit(lambda ks: jax.lax.scan(step, ema.init(), ks))(keys)
    assert abs(float(state.value) - float(categorical_objective(CAT_PARAMS))) < 0.3
    assert_unbiased(np.asarray(estimates, np.float64), jax.grad(categorical_objective)(CAT_PARAMS))


def test_subsampled_plate_is_unbiased_for_the_full_data_gradient():
    """plate(subsample_size=5) of 20: each particle draws its own minibatch from its key, and
    the terms carry numpyro's N/B scale."""
    x = jnp.linspace(-1.0, 1.0, 20)

    def program(p, x):
        with numpyro.plate("data", x.shape[0], subsample_size=5) as idx:
            z = numpyro.sample("z", dist.Bernoulli(logits=p["a"][idx]))
            numpyro.factor("t", z * x[idx])

    params = {"a": jnp.linspace(-1.0, 1.0, 20)}
    true = jax.grad(lambda p: jnp.sum(jax.nn.sigmoid(p["a"]) * x))(params)
    assert_unbiased(repeated_grads(program, params, jax.random.key(18), 3000, x, num_particles=4), true)
