"""The ELBO and its gradient estimators against the closed form of a conjugate model."""

import dataclasses
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from closed_forms import assert_unbiased, detects_bias, variance_z
from jax.flatten_util import ravel_pytree
from vi_conjugate import PARAMS, X, closed_form_elbo, repeated_grads

from scorefn import baselines, vi

# the module (scorefn.programs.surrogate is also the name of its function)
program_surrogate = importlib.import_module("scorefn.programs.surrogate")

TRUE_GRAD = jax.grad(closed_form_elbo)(PARAMS)
R = 3000


def test_model_latents_plates_and_log_joint(conjugate):
    model, _ = conjugate
    assert set(model.latents) == {"z"}
    assert model.latents["z"].shape == (3,)
    assert [p.name for p in model.latents["z"].plates] == ["dims"]
    z = {"z": jnp.array([0.1, 0.2, 0.3])}
    assert jnp.allclose(model.log_joint(z), jnp.sum(jax.scipy.stats.norm.logpdf(z["z"]))
                        + jnp.sum(jax.scipy.stats.norm.logpdf(X, z["z"], 0.5)))


def test_elbo_estimate_is_unbiased(conjugate, key):
    model, guide = conjugate
    estimates = jax.jit(jax.vmap(lambda k: vi.elbo(model, guide, PARAMS, k, 10)))(
        jax.random.split(key, 4000))
    estimates = np.asarray(estimates, np.float64)[:, None]
    assert_unbiased(estimates, closed_form_elbo(PARAMS))
    assert detects_bias(estimates, closed_form_elbo(PARAMS) + 0.2)  # ≈ 12 s.e.


@pytest.mark.parametrize("estimator,num_samples,baseline", [
    ("score", 1, None),
    ("score", 8, baselines.leave_one_out()),
    ("score", 8, baselines.optimal()),
    ("score_rb", 1, None),
    ("score_rb", 8, baselines.leave_one_out()),
    ("pathwise", 1, None),
    ("mixed", 4, None),
])
def test_gradient_is_unbiased(conjugate, key, estimator, num_samples, baseline):
    model, guide = conjugate
    estimates = repeated_grads(model, guide, PARAMS, key, R, estimator=estimator,
                               num_samples=num_samples, baseline=baseline)
    assert_unbiased(estimates, TRUE_GRAD)


def test_score_with_control_variate_is_unbiased(conjugate, key):
    from scorefn import control_variates

    model, guide = conjugate
    estimates = repeated_grads(model, guide, PARAMS, key, R, estimator="score", num_samples=8,
                               control_variate=control_variates.score())
    assert_unbiased(estimates, TRUE_GRAD)


def test_optimal_baseline_and_a_control_variate_are_refused_together(conjugate, key):
    from scorefn import control_variates

    model, guide = conjugate
    with pytest.raises(ValueError, match=r"optimal\(\) is itself a control variate"):
        vi.elbo_grad(model, guide, PARAMS, key, estimator="score", num_samples=8,
                     baseline=baselines.optimal(), control_variate=control_variates.score())


def test_planted_biases_are_detected(conjugate, key, monkeypatch):
    model, guide = conjugate
    # A baseline that includes each sample's own value: biased by (K-1)/K.
    own = repeated_grads(model, guide, PARAMS, key, R, estimator="score", num_samples=4,
                         baseline=baselines.batch_mean())
    assert detects_bias(own, TRUE_GRAD)
    # A Rao-Blackwellisation that forgets that the likelihood reads z.
    real_plan = program_surrogate.plan

    def forgetful_plan(*args, **kwargs):
        p = real_plan(*args, **kwargs)
        return dataclasses.replace(
            p, upstream={**p.upstream, "model/x": ()},
            downstream_terms={**p.downstream_terms, "z": tuple(
                t for t in p.downstream_terms["z"] if t != "model/x")})

    monkeypatch.setattr(program_surrogate, "plan", forgetful_plan)
    estimates = repeated_grads(model, guide, PARAMS, key, R, estimator="score_rb", num_samples=8,
                               baseline=baselines.leave_one_out())
    assert detects_bias(estimates, TRUE_GRAD)


def test_rao_blackwellisation_and_baselines_lower_the_variance(conjugate, key):
    model, guide = conjugate
    plain = repeated_grads(model, guide, PARAMS, key, R, estimator="score", num_samples=8)
    loo = repeated_grads(model, guide, PARAMS, key, R, estimator="score", num_samples=8,
                         baseline=baselines.leave_one_out())
    rb = repeated_grads(model, guide, PARAMS, key, R, estimator="score_rb", num_samples=8)
    rb_loo = repeated_grads(model, guide, PARAMS, key, R, estimator="score_rb", num_samples=8,
                            baseline=baselines.leave_one_out())
    # Each step lowers the variance of every coordinate, significantly (z of log-variance).
    assert np.all(variance_z(loo, plain) < -3)
    assert np.all(variance_z(rb, plain) < -3)
    assert np.all(variance_z(rb_loo, rb) < -3)


def test_local_signals_localise_plates(conjugate, key):
    model, guide = conjugate
    out = vi.elbo_grad(model, guide, PARAMS, key, estimator="score_rb", num_samples=4)
    signals = out.signals["z"]
    assert signals.shape == (4, 1, 3)  # (K, enumerated branches, the plate 'dims')
    # element d's signal holds its own prior, likelihood and entropy terms only, so the
    # elements add up to each sample's log w (a whole-signal weighting would give 3 log w)
    np.testing.assert_allclose(jnp.mean(jnp.sum(signals, axis=(1, 2))), out.objective,
                               rtol=1e-5)
    plain = vi.elbo_grad(model, guide, PARAMS, key, estimator="score", num_samples=4)
    np.testing.assert_allclose(plain.signals["z"], jnp.sum(signals, axis=2, keepdims=True)
                               * jnp.ones(3), rtol=1e-5)


def test_iwae_and_vimco_agree_and_bound_the_elbo(conjugate, key):
    model, guide = conjugate
    dreg = repeated_grads(model, guide, PARAMS, key, R, estimator="iwae", num_samples=8)
    vimco = repeated_grads(model, guide, PARAMS, jax.random.fold_in(key, 1), R, estimator="vimco",
                           num_samples=8)
    # Two unbiased estimators of ∇L_K: their means agree within their standard errors.
    se = np.sqrt(dreg.var(0, ddof=1) / R + vimco.var(0, ddof=1) / R)
    assert np.all(np.abs(dreg.mean(0) - vimco.mean(0)) / se < 4), (dreg.mean(0), vimco.mean(0))
    # L_1 = ELBO ≤ L_8: the bound is tighter (here by far more than its standard error).
    bounds = np.asarray(jax.jit(jax.vmap(lambda k: vi.iwae_bound(model, guide, PARAMS, k, 8)))(
        jax.random.split(key, 2000)))
    assert bounds.mean() - 4 * bounds.std() / np.sqrt(len(bounds)) > float(closed_form_elbo(PARAMS))


def test_vimco_beats_the_plain_multi_sample_score(conjugate, key):
    model, guide = conjugate
    guide_discrete_like = vi.Guide({"z": dataclasses.replace(
        guide.blocks["z"], dist_fn=lambda p: _no_rsample(guide.blocks["z"].dist_fn(p)))})
    plain = repeated_grads(model, guide_discrete_like, PARAMS, key, R, estimator="iwae",
                           num_samples=8)
    vimco = repeated_grads(model, guide, PARAMS, key, R, estimator="vimco", num_samples=8)
    assert np.all(variance_z(vimco, plain) < -3)


def _no_rsample(d):
    return _ScoreOnly(d.loc, d.scale)


class _ScoreOnly(dist.Normal):
    """A Normal the estimators must treat by the score function."""

    has_rsample = False

    def rsample(self, key, sample_shape=()):  # pragma: no cover - must not be called
        raise AssertionError("rsample used")


def test_same_key_same_estimate(conjugate, key):
    model, guide = conjugate
    a = vi.elbo_grad(model, guide, PARAMS, key, estimator="score_rb", num_samples=4)
    b = vi.elbo_grad(model, guide, PARAMS, key, estimator="score_rb", num_samples=4)
    assert np.array_equal(ravel_pytree(a.grad)[0], ravel_pytree(b.grad)[0])
