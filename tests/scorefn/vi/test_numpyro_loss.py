"""scorefn.vi.ELBO as the loss of numpyro's SVI: unbiased for the full-data ELBO gradient
(also under plate subsampling), and SVI runs with it unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from closed_forms import assert_unbiased, detects_bias
from numpyro.infer import SVI

import scorefn
from scorefn.vi import numpyro_loss

N = 40
X = jnp.asarray(np.random.default_rng(0).normal(size=N)
                + 2.0 * (np.random.default_rng(1).random(N) < 0.5) - 1.0)
PARAMS = {"a": jnp.asarray(0.5), "b": jnp.asarray(0.0)}


def model(x, batch=None):
    with numpyro.plate("data", N, subsample_size=batch) as i:
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        numpyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0), obs=x[i])


def guide(x, batch=None):
    """Amortised: q(z_i | x_i) = Bernoulli(σ(a x_i + b))."""
    a, b = numpyro.param("a", 0.5), numpyro.param("b", 0.0)
    with numpyro.plate("data", N, subsample_size=batch) as i:
        numpyro.sample("z", dist.Bernoulli(logits=a * x[i] + b))


def exact_elbo(p):
    q1 = jax.nn.sigmoid(p["a"] * X + p["b"])
    total = 0.0
    for z, q in ((1.0, q1), (0.0, 1.0 - q1)):
        total = total + jnp.sum(q * (jnp.log(0.5) + dist.Normal(2 * z - 1, 1.0).log_prob(X)
                                     - jnp.log(q)))
    return total


def gradient_estimates(loss, batch, n, seed=0):
    def one(k):
        g = jax.grad(lambda p: -loss.loss(k, p, model, guide, X, batch=batch))(PARAMS)
        return jnp.stack([g["a"], g["b"]])

    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), n)),
                      np.float64)


@pytest.mark.parametrize("batch", [None, 10])
@pytest.mark.parametrize("estimator,particles", [("rloo", 4), ("disarm", 1)])
def test_gradient_is_unbiased_for_the_full_data_elbo(batch, estimator, particles):
    truth = jax.grad(exact_elbo)(PARAMS)
    truth = np.array([truth["a"], truth["b"]])
    loss = scorefn.vi.ELBO(num_particles=particles, estimators={"z": estimator})
    estimates = gradient_estimates(loss, batch, 4000)
    assert_unbiased(estimates, truth)


def test_planted_double_subsample_scale_is_detected(monkeypatch):
    """The bias numpyro 0.22's TraceGraph_ELBO has under subsampling (the plate's N/B scale
    applied twice) is caught by the same test."""
    real_emit = numpyro_loss._emit

    def scaled_twice(name, site, value):
        real_emit(name, site, value * (site.get("scale") or 1.0))

    monkeypatch.setattr(numpyro_loss, "_emit", scaled_twice)
    truth = jax.grad(exact_elbo)(PARAMS)
    estimates = gradient_estimates(scorefn.vi.ELBO(num_particles=4), 10, 4000)
    assert detects_bias(estimates, np.array([truth["a"], truth["b"]]))


def test_svi_runs_and_reaches_the_exact_optimum():
    svi = SVI(model, guide, optax.adam(0.05), loss=scorefn.vi.ELBO(num_particles=4))
    result = svi.run(jax.random.key(1), 600, X, batch=10, progress_bar=False)
    # the exact ELBO's maximiser, by Adam on the closed form (one compiled loop)
    opt = optax.adam(0.05)

    def adam_step(carry, _):
        p, state = carry
        updates, state = opt.update(jax.grad(lambda q: -exact_elbo(q))(p), state)
        return (optax.apply_updates(p, updates), state), None

    (p, _), _ = jax.jit(lambda p: jax.lax.scan(adam_step, (p, opt.init(p)), None, length=600))(
        PARAMS)
    assert float(exact_elbo(result.params)) > float(exact_elbo(p)) - 0.5
    state = svi.init(jax.random.key(2), X)
    assert np.isfinite(float(svi.evaluate(state, X)))
    assert scorefn.vi.ELBO.can_infer_discrete


def test_flax_encoder_guide_in_svi():
    import flax.linen as nn
    from numpyro.contrib.module import flax_module

    def encoder_guide(x, batch=None):
        net = flax_module("encoder", nn.Dense(1), input_shape=(1, 1))
        with numpyro.plate("data", N, subsample_size=batch) as i:
            logits = net(x[i][:, None])[:, 0]
            numpyro.sample("z", dist.Bernoulli(logits=logits))

    svi = SVI(model, encoder_guide, optax.adam(0.05), loss=scorefn.vi.ELBO(num_particles=4))
    result = svi.run(jax.random.key(3), 300, X, batch=20, progress_bar=False)
    assert np.mean(result.losses[-50:]) < np.mean(result.losses[:20]) - 5


def test_errors():
    def partial_guide(x, batch=None):
        numpyro.param("a", 0.5)

    with pytest.raises(ValueError, match="model's latent site 'z' has no site in the guide"):
        scorefn.vi.ELBO().loss(jax.random.key(0), {"a": jnp.asarray(0.5)}, model,
                               partial_guide, X)
    with pytest.raises(ValueError, match="num_particles must be an int >= 1, got 0"):
        scorefn.vi.ELBO(num_particles=0)


@pytest.mark.slow
def test_ema_baseline_from_svi_mutable_state_is_unbiased():
    """An EMA baseline whose state is far from the signal (b = 50) keeps the gradient
    unbiased; SVI carries the state from step to step."""
    loss = scorefn.vi.ELBO(num_particles=2, baselines={"z": scorefn.baselines.ema(0.9)})
    state = scorefn.baselines.EmaState(jnp.asarray(45.0), jnp.asarray(1, jnp.int32),
                                       jnp.asarray(50.0))
    stateful = loss.with_baseline_state(guide)

    def one(k):
        p = {**PARAMS, numpyro_loss.STATE_PREFIX + "z": state}
        g = jax.grad(lambda q: -loss.loss(k, {**p, **q}, model, stateful, X))(PARAMS)
        return jnp.stack([g["a"], g["b"]])

    estimates = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(4), 4000)),
                           np.float64)
    truth = jax.grad(exact_elbo)(PARAMS)
    assert_unbiased(estimates, np.array([truth["a"], truth["b"]]))

    svi = SVI(model, stateful, optax.adam(0.05), loss=loss)
    result = svi.run(jax.random.key(5), 200, X, batch=10, progress_bar=False)
    carried = result.state.mutable_state[numpyro_loss.STATE_PREFIX + "z"]
    assert int(carried.count) == 200 and np.isfinite(float(carried.value))
    assert float(exact_elbo(result.params)) > float(exact_elbo(PARAMS))
    with pytest.warns(UserWarning, match="found no state in numpyro's mutable state"):
        loss.loss(jax.random.key(0), PARAMS, model, guide, X)
    with pytest.raises(ValueError, match="has no ema baseline"):
        scorefn.vi.ELBO(num_particles=2).with_baseline_state(guide)


# --- a mixture with per-point assignments and an encoder guide, against exact enumeration --
MIX_N = 200
MIX_Z = np.random.default_rng(2).random(MIX_N) < 0.5
MIX_X = jnp.asarray(np.where(MIX_Z, 2.0, -2.0) + np.random.default_rng(3).normal(size=MIX_N))


def mixture_model(x, batch=None):
    mu = numpyro.param("mu", jnp.array([-0.5, 0.5]))
    with numpyro.plate("data", MIX_N, subsample_size=batch) as i:
        z = numpyro.sample("z", dist.Categorical(probs=jnp.array([0.5, 0.5])))
        numpyro.sample("x", dist.Normal(mu[z], 1.0), obs=x[i])


def encoder_guide(x, batch=None):
    """q(z_i | x_i): logits (0, a x_i + b), which can represent the exact posterior."""
    a, b = numpyro.param("a", 0.0), numpyro.param("b", 0.0)
    with numpyro.plate("data", x.shape[0], subsample_size=batch) as i:
        logits = jnp.stack([jnp.zeros_like(x[i]), a * x[i] + b], -1)
        numpyro.sample("z", dist.Categorical(logits=logits))


def exact_assignment(mu, x):
    """p(z = 1 | x, μ) with equal weights and unit variances."""
    return jax.nn.sigmoid(x * (mu[1] - mu[0]) - (mu[1] ** 2 - mu[0] ** 2) / 2)


def exact_mu(steps, opt):
    """The maximum-likelihood μ by Adam on the marginal likelihood, z summed out exactly."""
    def nll(mu):
        return -jnp.sum(jax.nn.logsumexp(dist.Normal(mu, 1.0).log_prob(MIX_X[:, None]), -1))

    def step(carry, _):
        mu, state = carry
        updates, state = opt.update(jax.grad(nll)(mu), state)
        return (optax.apply_updates(mu, updates), state), None

    mu = jnp.array([-0.5, 0.5])
    return jax.jit(lambda c: jax.lax.scan(step, c, length=steps))((mu, opt.init(mu)))[0][0]


@pytest.mark.slow
def test_mixture_recovers_components_and_assignments_like_exact_enumeration():
    steps, opt = 1500, optax.adam(0.03)
    exact = {"mu": exact_mu(steps, opt)}
    ours = SVI(mixture_model, encoder_guide, opt,
               loss=scorefn.vi.ELBO(num_particles=4, estimators={"z": "rloo"})).run(
        jax.random.key(1), steps, MIX_X, batch=50, progress_bar=False).params
    assert np.allclose(np.sort(ours["mu"]), np.sort(exact["mu"]), atol=0.15)
    assert np.allclose(np.sort(exact["mu"]), [-2.0, 2.0], atol=0.3)
    # the amortised posterior for new points against the exact one at the exact μ
    x_new = jnp.linspace(-4.0, 4.0, 17)
    q = scorefn.vi.amortized_posterior(encoder_guide, ours, jax.random.key(2), x_new)["z"]
    assert q.batch_shape == (17,)
    # the guide's target is the posterior at the model's own μ; minibatch noise in μ
    # (B = 50, constant step size) moves it a little from the exact one
    assert np.max(np.abs(q.probs[:, 1] - exact_assignment(ours["mu"], x_new))) < 0.05
    assert np.max(np.abs(q.probs[:, 1] - exact_assignment(exact["mu"], x_new))) < 0.1


def test_model_and_guide_mismatches_are_errors():
    def guide_with_extra(x, batch=None):
        guide(x, batch)
        numpyro.sample("extra", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="guide's site 'extra' is not a site of the model"):
        scorefn.vi.ELBO(2).loss(jax.random.key(0), PARAMS, model, guide_with_extra, X)
    with pytest.raises(ValueError, match="plate 'data': subsample_size=50 is larger than the "
                                         "plate's size 40"), pytest.warns(UserWarning):
        scorefn.vi.ELBO(2).loss(jax.random.key(0), PARAMS, model, guide, X, batch=50)

    def observing_guide(x, batch=None):
        guide(x, batch)
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="guide samples 'x', which the model observes"):
        scorefn.vi.ELBO(2).loss(jax.random.key(0), PARAMS, model, observing_guide, X)

    def nan_model(x, batch=None):
        with numpyro.plate("data", N, subsample_size=batch) as i:
            z = numpyro.sample("z", dist.Bernoulli(0.5))
            numpyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0), obs=x[i])
            numpyro.factor("penalty", jnp.log(z - 2.0))  # NaN at every z

    svi = SVI(nan_model, guide, optax.adam(0.05), loss=scorefn.vi.ELBO(num_particles=2))
    state = svi.init(jax.random.key(0), X)
    with pytest.raises(ValueError, match="model/penalty"), scorefn.guards.runtime_errors():
        jax.block_until_ready(jax.jit(svi.update)(state, X))


@pytest.mark.parametrize("loss", [scorefn.vi.ELBO(), scorefn.vi.ELBO(num_particles=2),
                                  scorefn.vi.IWAE(num_particles=2),
                                  scorefn.vi.VIMCO(num_particles=2)],
                         ids=["ELBO", "ELBO-2", "IWAE-2", "VIMCO-2"])
def test_model_arguments_as_numpyro_passes_them(loss):
    """numpyro's idioms for a model's arguments: a positional and a keyword Python int (a
    subsample size), None, a string (a site name) and a dict of arrays. Non-arrays stay
    Python values, as numpyro's own ELBOs leave them; the loss is numpyro's on the same
    arguments (a Delta guide: both are exact, so they agree to rounding)."""
    from numpyro.infer import Trace_ELBO

    seen = []

    def model(x, subsample_size, name, scale=None, extras=None, repeats=1):
        assert isinstance(subsample_size, int) and isinstance(name, str)
        assert scale is None and isinstance(repeats, int)
        seen.append((subsample_size, name, repeats))
        loc = numpyro.sample("loc", dist.Normal(extras["prior_loc"], 10.0))
        with numpyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            numpyro.sample(name, dist.Normal(loc, 1.0), obs=x[idx])

    def guide(x, subsample_size, name, scale=None, extras=None, repeats=1):
        numpyro.sample("loc", dist.Delta(numpyro.param("loc_value", 0.5)))

    x = jnp.arange(100.0) / 10
    args, kwargs = (x, 100, "obs"), dict(extras={"prior_loc": jnp.zeros(())}, repeats=3)
    params = {"loc_value": jnp.asarray(0.5)}
    ours = loss.loss(jax.random.key(0), params, model, guide, *args, **kwargs)
    theirs = Trace_ELBO().loss(jax.random.key(0), params, model, guide, *args, **kwargs)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
    svi = SVI(model, guide, optax.adam(0.05), loss)
    result = svi.run(jax.random.key(1), 5, x, 50, "obs", progress_bar=False, **kwargs)
    assert np.all(np.isfinite(result.losses))
    assert (50, "obs", 3) in seen and (100, "obs", 3) in seen
