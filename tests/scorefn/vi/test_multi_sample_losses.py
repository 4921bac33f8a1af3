"""scorefn.vi.IWAE (DReG) and scorefn.vi.VIMCO as numpyro SVI losses: unbiased for ∇L_K, each
with a planted-bias companion the same test catches."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from closed_forms import Z_MAX, assert_unbiased, detects_bias
from numpyro.infer import SVI

import scorefn
from scorefn.vi import numpyro_loss

K = 4

# --- VIMCO: one binary latent, the bound in closed form by enumerating all K-tuples -------
XB = jnp.array([0.8, 1.5])
VIMCO_PARAMS = {"a": jnp.asarray(-0.3), "mu": jnp.asarray(0.2)}


def binary_model(x):
    mu = numpyro.param("mu", 0.2)
    z = numpyro.sample("z", dist.Bernoulli(0.3))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(2.0 * z - 1.0 + mu, 1.0), obs=x)


def binary_guide(x):
    a = numpyro.param("a", -0.3)
    numpyro.sample("z", dist.Bernoulli(logits=a))


def exact_bound(p):
    """L_K = Σ over the 2^K tuples of Π_k q(z_k) · log (1/K) Σ_k w(z_k)."""
    def log_w(z):
        log_p = (jnp.log(jnp.where(z == 1, 0.3, 0.7))
                 + jnp.sum(dist.Normal(2.0 * z - 1.0 + p["mu"], 1.0).log_prob(XB)))
        return log_p - dist.Bernoulli(logits=p["a"]).log_prob(z)

    total = 0.0
    for tup in itertools.product([0.0, 1.0], repeat=K):
        z = jnp.array(tup)
        prob = jnp.prod(jnp.exp(dist.Bernoulli(logits=p["a"]).log_prob(z)))
        total = total + prob * (jax.nn.logsumexp(jax.vmap(log_w)(z)) - math.log(K))
    return total


def loss_gradients(loss, model, guide, params, x, n, seed=0):
    def one(k):
        g = jax.grad(lambda p: -loss.loss(k, p, model, guide, x))(params)
        return jnp.stack([g[name] for name in sorted(params)])

    keys = jax.random.split(jax.random.key(seed), n)
    return np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)


def vimco_truth():
    g = jax.jit(jax.grad(exact_bound))(VIMCO_PARAMS)
    return np.array([g[name] for name in sorted(VIMCO_PARAMS)])


def test_vimco_is_unbiased_for_the_bound_gradient():
    estimates = loss_gradients(scorefn.vi.VIMCO(K), binary_model, binary_guide, VIMCO_PARAMS,
                               XB, 5000)
    assert_unbiased(estimates, vimco_truth())
    # the loss's value is the bound's estimate
    values = jax.jit(jax.vmap(lambda k: -scorefn.vi.VIMCO(K).loss(k, VIMCO_PARAMS, binary_model,
                                                          binary_guide, XB)))(
        jax.random.split(jax.random.key(1), 5000))
    assert_unbiased(np.asarray(values, np.float64)[:, None], np.array([jax.jit(exact_bound)(VIMCO_PARAMS)]))


def test_vimco_with_a_baseline_that_sees_its_own_sample_is_caught(monkeypatch):
    """The bound itself as the baseline (L̂_{-k} = L̂): the score term vanishes, biased."""
    monkeypatch.setattr(numpyro_loss, "vimco_learning_signal",  # L̂ - L̂_{-k} with L̂_{-k} = L̂
                        lambda log_w: jnp.zeros_like(log_w))
    estimates = loss_gradients(scorefn.vi.VIMCO(K), binary_model, binary_guide, VIMCO_PARAMS,
                               XB, 5000)
    assert detects_bias(estimates, vimco_truth())


def test_iwae_on_a_discrete_guide_is_unbiased_by_the_score_function(monkeypatch):
    """Σ_k (L̂ - w̃_k) ∇ log q(z_k) for a site without rsample; planted: without L̂."""
    estimates = loss_gradients(scorefn.vi.IWAE(K), binary_model, binary_guide, VIMCO_PARAMS,
                               XB, 5000)
    assert_unbiased(estimates, vimco_truth())
    monkeypatch.setattr(numpyro_loss, "log_mean_weight", lambda log_w: jnp.zeros(()))
    planted = loss_gradients(scorefn.vi.IWAE(K), binary_model, binary_guide, VIMCO_PARAMS,
                             XB, 5000)
    assert detects_bias(planted, vimco_truth())


# --- IWAE (DReG): a Gaussian model; the reference is the plain reparameterised gradient ----
XG = jnp.array([0.5, 1.2, -0.3, 0.9])
IWAE_PARAMS = {"mu": jnp.asarray(0.3), "m": jnp.asarray(-0.2), "s": jnp.asarray(0.8)}


def gaussian_model(x):
    mu = numpyro.param("mu", 0.3)
    z = numpyro.sample("z", dist.Normal(mu, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def gaussian_guide(x):
    m = numpyro.param("m", -0.2)
    s = numpyro.param("s", 0.8, constraint=dist.constraints.positive)
    numpyro.sample("z", dist.Normal(m, s))


def plain_reparameterised(n, seed):
    """∇ of log (1/K) Σ_k w(z_φ(ε_k)) through everything: unbiased, written independently."""
    def bound(p, eps):
        z = p["m"] + p["s"] * eps
        log_w = (dist.Normal(p["mu"], 1.0).log_prob(z)
                 + jax.vmap(lambda zk: jnp.sum(dist.Normal(zk, 1.0).log_prob(XG)))(z)
                 - dist.Normal(p["m"], p["s"]).log_prob(z))
        return jax.nn.logsumexp(log_w) - math.log(K)

    def one(k):
        g = jax.grad(bound)(IWAE_PARAMS, jax.random.normal(k, (K,)))
        return jnp.stack([g[name] for name in sorted(IWAE_PARAMS)])

    keys = jax.random.split(jax.random.key(seed), n)
    return np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)


def two_sample_z(a, b):
    se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
    return (a.mean(0) - b.mean(0)) / se


def test_iwae_dreg_is_unbiased_and_has_lower_variance_for_the_guide():
    reference = plain_reparameterised(100000, seed=1)
    estimates = loss_gradients(scorefn.vi.IWAE(K), gaussian_model, gaussian_guide, IWAE_PARAMS,
                               XG, 10000)
    z = two_sample_z(estimates, reference)
    assert np.all(np.abs(z) < Z_MAX), z
    # DReG's point: the guide's (m, s) gradients have lower variance than the plain one's
    names = sorted(IWAE_PARAMS)
    for name in ("m", "s"):
        i = names.index(name)
        assert estimates[:, i].var() < 0.8 * reference[:, i].var()


def test_vimco_on_a_reparameterisable_guide_is_unbiased():
    """VIMCO scores every site, continuous ones too: their draws must reach the trace
    detached (an earlier version detached them after the trace had copied them: biased)."""
    reference = plain_reparameterised(100000, seed=1)
    estimates = loss_gradients(scorefn.vi.VIMCO(K), gaussian_model, gaussian_guide,
                               IWAE_PARAMS, XG, 10000)
    z = two_sample_z(estimates, reference)
    assert np.all(np.abs(z) < Z_MAX), z


def test_iwae_without_squared_weights_is_caught(monkeypatch):
    """w̃ in place of w̃² on the path term (the 'sticking the landing' IWAE): biased."""
    monkeypatch.setattr(numpyro_loss, "doubly_reparameterized_weights",
                        lambda log_w: jax.nn.softmax(log_w))
    reference = plain_reparameterised(100000, seed=1)
    estimates = loss_gradients(scorefn.vi.IWAE(K), gaussian_model, gaussian_guide, IWAE_PARAMS,
                               XG, 10000)
    assert np.any(np.abs(two_sample_z(estimates, reference)) >= Z_MAX)


def test_iwae_trains_in_svi_to_the_exact_posterior():
    # conjugate: z | x ~ N((mu + Σx)/(n + 1), 1/(n + 1)); mu's optimum is the evidence's
    svi = SVI(gaussian_model, gaussian_guide, optax.adam(0.03), loss=scorefn.vi.IWAE(8))
    params = svi.run(jax.random.key(0), 1500, XG, progress_bar=False).params
    n = XG.shape[0]
    assert abs(float(params["mu"]) - float(jnp.mean(XG))) < 0.1
    assert abs(float(params["m"]) - float((params["mu"] + jnp.sum(XG)) / (n + 1))) < 0.1
    assert abs(float(params["s"]) - math.sqrt(1 / (n + 1))) < 0.05


def test_multi_sample_errors():
    with pytest.raises(ValueError, match="num_particles must be an int >= 2"):
        scorefn.vi.IWAE(1)

    def late_discrete_guide(x):
        m = numpyro.sample("m", dist.Normal(0.0, 1.0))
        numpyro.sample("z", dist.Bernoulli(logits=numpyro.param("a", -0.3) + m))

    def model_with_m(x):
        numpyro.sample("m", dist.Normal(0.0, 1.0))
        binary_model(x)

    with pytest.raises(ValueError, match="site 'z' .BernoulliLogits. has no rsample and comes "
                                         "after the reparameterised site 'm'"):
        scorefn.vi.IWAE(K).loss(jax.random.key(0), VIMCO_PARAMS, model_with_m,
                                late_discrete_guide, XB)

    def shared_model(x):
        m = numpyro.param("m", 0.0)
        z = numpyro.sample("z", dist.Normal(m, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ValueError, match=r"params \['m'\] belong to both the model and the guide"):
        scorefn.vi.IWAE(K).loss(jax.random.key(0), {"m": 0.0, "s": 1.0}, shared_model,
                                gaussian_guide, 0.5)

    def bad_model(x):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, jnp.sqrt(z - 100.0)), obs=x)   # NaN scale

    with pytest.raises(ValueError, match="site 'x' .* is NaN"):
        scorefn.vi.VIMCO(K).loss(jax.random.key(0), {"m": 0.0, "s": 1.0}, bad_model,
                                 gaussian_guide, 0.5)
    with pytest.raises(ValueError, match="site 'x' .* is NaN"), scorefn.guards.runtime_errors():
        jax.jit(lambda p: scorefn.vi.IWAE(K).loss(jax.random.key(0), p, bad_model,
                                                  gaussian_guide, 0.5))({"m": 0.0, "s": 1.0})


# --- ELBO(path_derivative=True): "sticking the landing" on the same Gaussian model ---------
def exact_gaussian_elbo(p):
    """E_q[log N(z; μ, 1) + Σ_i log N(x_i; z, 1)] + H[q], q = N(m, s²), in closed form."""
    n = XG.shape[0]
    log_2pi = math.log(2 * math.pi)
    prior = -0.5 * log_2pi - 0.5 * ((p["m"] - p["mu"]) ** 2 + p["s"] ** 2)
    likelihood = -0.5 * n * log_2pi - 0.5 * (jnp.sum((XG - p["m"]) ** 2) + n * p["s"] ** 2)
    entropy = 0.5 * jnp.log(2 * math.pi * math.e * p["s"] ** 2)
    return prior + likelihood + entropy


def stl_truth():
    g = jax.grad(exact_gaussian_elbo)(IWAE_PARAMS)
    return np.array([g[name] for name in sorted(IWAE_PARAMS)])


def test_path_derivative_elbo_is_unbiased_and_its_detached_twin_is_caught(monkeypatch):
    # pathwise named: a detached log q would otherwise make z's default estimator 'score'
    loss = scorefn.vi.ELBO(num_particles=1, path_derivative=True, estimators={"z": "pathwise"})
    estimates = loss_gradients(loss, gaussian_model, gaussian_guide, IWAE_PARAMS, XG, 4000)
    assert_unbiased(estimates, stl_truth())
    # planted: log q with z detached too, so the entropy's path through z (E = 1/s) is lost
    monkeypatch.setattr(numpyro_loss, "guide_log_density", lambda site, path_derivative:
                        jax.lax.stop_gradient(numpyro_loss.log_prob(site["fn"], site["value"])))
    planted = loss_gradients(loss, gaussian_model, gaussian_guide, IWAE_PARAMS, XG, 4000)
    assert detects_bias(planted, stl_truth())


def test_path_derivative_has_zero_variance_at_the_exact_posterior():
    """q = p(z | x): log p(x, z) - log q(z) is constant in z, so the guide's STL gradient is
    exactly 0 on every sample; the plain pathwise one is not."""
    n = XG.shape[0]
    posterior = {"mu": IWAE_PARAMS["mu"],
                 "m": (IWAE_PARAMS["mu"] + jnp.sum(XG)) / (n + 1),
                 "s": jnp.asarray(1 / math.sqrt(n + 1))}
    names = sorted(posterior)
    guide_params = [names.index("m"), names.index("s")]
    stl = loss_gradients(scorefn.vi.ELBO(path_derivative=True), gaussian_model, gaussian_guide,
                         posterior, XG, 200)
    plain = loss_gradients(scorefn.vi.ELBO(), gaussian_model, gaussian_guide, posterior, XG, 200)
    assert np.all(stl[:, guide_params].var(0) < 1e-10)
    assert np.all(plain[:, guide_params].var(0) > 1e-3)
