"""Models and guides: structure read off NumPyro models, and clear errors on bad input."""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from jaxpr_checks import primitive_count
from vi_conjugate import X, normal_normal

from scorefn import vi


def hierarchical(x):
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("groups", x.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(0.0, sigma))
        numpyro.sample("x", dist.Normal(theta, 1.0), obs=x)


def test_constrained_sites_live_on_the_unconstrained_space(key):
    model = vi.as_model(hierarchical, (X,))
    assert model.latents["sigma"].shape == ()
    z = {"sigma": jnp.array(0.0), "theta": jnp.zeros(3)}
    assert "_sigma_log_det" in model.term_values(z)  # numpyro's own Jacobian factor
    assert [p.name for p in model.latents["theta"].plates] == ["groups"]
    assert model.latents["sigma"].plates == ()
    assert model.constrain(z)["sigma"] == 1.0
    result = vi.fit(hierarchical, None, (X,), key, estimator="mixed", steps=300, progress=False)
    assert float(result.means()["sigma"]) > 0


def test_discrete_sites_get_bernoulli_and_categorical_guides():
    def model():
        numpyro.sample("coin", dist.Bernoulli(0.3))
        numpyro.sample("die", dist.Categorical(jnp.ones(6) / 6))

    guide = vi.auto_guide(vi.as_model(model))
    d = guide.distributions(guide.init())
    assert isinstance(d["coin"], dist.BernoulliLogits)
    assert isinstance(d["die"], dist.CategoricalLogits) and d["die"].logits.shape == (6,)


def test_log_density_nan_names_the_site(key):
    def bad(x):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(jnp.sqrt(z), 1.0), obs=x)  # NaN for z < 0

    model = vi.as_model(bad, (1.0,))
    guide = vi.auto_guide(model)
    with pytest.raises(ValueError, match="term 'model/x' .*is NaN"):
        vi.elbo_grad(model, guide, guide.init(), key, estimator="score", num_samples=16)
    # the run-time check fires inside the compiled step: still a ValueError, naming the step
    with pytest.raises(ValueError, match="fit step 0: term 'model/x' .*is NaN"):
        vi.fit(bad, None, (1.0,), key, estimator="score", num_samples=16, steps=10, progress=False)


def test_a_check_that_fires_after_good_steps_is_still_scorefns_error(key):
    """The replayed step that fails is not the compiled step's first call (jax then raises
    its wrapped text as a plain ValueError): the error still names the step and the site."""
    import optax

    def bad(x):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(jnp.sqrt(z + 5.0), 1.0), obs=x)  # NaN for z < -5

    # Adam at 100 moves the guide's location to about -100 in one step
    with pytest.raises(ValueError, match=r"^fit step 1: term 'model/x' .*is NaN") as caught:
        vi.fit(bad, None, (-10.0,), key, estimator="score", num_samples=16, steps=10,
               optimizer=optax.adam(100.0), progress=False)
    assert "CpuCallback" not in str(caught.value)


@pytest.mark.parametrize("estimator", ["score", "score_rb", "pathwise", "mixed", "iwae", "vimco"])
def test_one_runtime_check_per_objective(key, estimator):
    """Every term is checked by one guard, so the message cannot depend on which of several
    checks a GPU schedules first (an H200 run named the values instead of the site)."""
    def model(x):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    m = vi.as_model(model, (1.0,))
    guide = vi.auto_guide(m)
    jaxpr = jax.make_jaxpr(lambda p, k: vi.elbo_grad(m, guide, p, k, estimator=estimator,
                                                     num_samples=4).grad)(guide.init(), key)
    assert primitive_count(jaxpr, "pure_callback") == 1


def test_guide_missing_a_latent():
    model = vi.as_model(hierarchical, (X,))
    guide = vi.mean_field(families={"theta": (lambda p: dist.Normal(p, 1.0), jnp.zeros(3))})
    with pytest.raises(ValueError, match=r"no block for the latent site\(s\) \['sigma'\]"):
        guide.check(model)


def test_guide_with_the_wrong_shape():
    model = vi.as_model(hierarchical, (X,))
    guide = vi.mean_field(model, {"theta": (lambda p: dist.Normal(p, 1.0), jnp.zeros(4))})
    with pytest.raises(ValueError, match=r"'theta' gives values of shape \(4,\).*\(3,\)"):
        guide.check(model)


@pytest.mark.parametrize("kind", ["mean_field", "full_rank"])
def test_the_initial_scale_must_be_positive(kind):
    """0 ended in "math domain error" (the inverse softplus of 0)."""
    model = vi.as_model(normal_normal, (X,))
    for scale in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"init_scale must be a finite number in \(0, ∞\)"):
            vi.auto_guide(model, kind, init_scale=scale)


def test_unknown_estimator_and_impossible_combinations(key):
    x, _ = vi.examples.mixture_data(num_points=10)
    model = vi.as_model(vi.examples.gaussian_mixture, (x,))
    guide = vi.auto_guide(model)
    params = guide.init()
    with pytest.raises(ValueError, match="unknown estimator 'elbo'.*score_rb"):
        vi.elbo_grad(model, guide, params, key, estimator="elbo")
    with pytest.raises(ValueError, match=r"reparameterisable; \['z'\] \(BernoulliLogits\)"):
        vi.elbo_grad(model, guide, params, key, estimator="pathwise")
    with pytest.raises(ValueError, match="num_samples must be >= 2"):
        vi.elbo_grad(model, guide, params, key, estimator="vimco", num_samples=1)


def test_a_log_joint_passed_as_a_numpyro_model():
    def log_joint(z):
        return -jnp.sum(z["a"] ** 2)

    with pytest.raises(ValueError, match="LogJoint"):
        vi.as_model(log_joint, ())
    with pytest.raises(ValueError, match="needs a guide"):
        vi.fit(vi.LogJoint(log_joint), None, (), jax.random.key(0), progress=False)


def test_bad_fit_arguments(key):
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        vi.fit(normal_normal, None, (X,), key, steps=0)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1, got 0"):
        vi.fit(normal_normal, None, (X,), key, steps=5, chunk_size=0)  # looped without end
    with pytest.raises(ValueError, match="resume=True needs checkpoint"):
        vi.fit(normal_normal, None, (X,), key, resume=True)
    with pytest.raises(TypeError, match="key"):
        vi.fit(normal_normal, None, (X,), 0)
