"""Importance-sampled score-function gradients against closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from closed_forms import assert_unbiased, categorical_table, detects_bias, normal_square
from jax.flatten_util import ravel_pytree

import scorefn
from scorefn import importance


def _gaussian_case():
    problem = normal_square()
    loc = problem.params["loc"]
    scale = jnp.exp(problem.params["log_scale"])
    behaviour = dist.Normal(loc + 0.3, 1.5 * scale)  # shifted mean, wider scale
    return problem, behaviour


def _categorical_case():
    problem = categorical_table()
    behaviour = dist.Categorical(probs=jnp.array([0.1, 0.4, 0.2, 0.3]))
    return problem, behaviour


def _repeated_is(problem, behaviour, n, r, key, **options):
    def one(k):
        x = behaviour.sample(k, (n,))
        values = jax.vmap(problem.f)(x)
        g = importance.is_score_grad(problem.dist_fn, problem.params, x, values, behaviour,
                                     **options)
        return ravel_pytree(g)[0]

    return np.asarray(jax.jit(lambda ks: jax.lax.map(one, ks))(jax.random.split(key, r)),
                      np.float64)


@pytest.mark.parametrize("case", [_gaussian_case, _categorical_case], ids=["gaussian", "categorical"])
@pytest.mark.parametrize("baseline", [None, "leave_one_out"])
def test_ordinary_importance_sampling_is_unbiased(case, baseline):
    problem, behaviour = case()
    b = scorefn.baselines.leave_one_out() if baseline else None
    estimates = _repeated_is(problem, behaviour, 50, 2000, jax.random.key(60), baseline=b)
    assert_unbiased(estimates, problem.true_grad)


def test_check_fails_when_the_behaviour_density_is_wrong():
    """A planted bias: weights computed with a q that did not generate the samples."""
    problem, behaviour = _gaussian_case()
    wrong = dist.Normal(behaviour.loc, behaviour.scale * 1.3)

    def one(k):
        x = behaviour.sample(k, (50,))
        g = importance.is_score_grad(problem.dist_fn, problem.params, x, jax.vmap(problem.f)(x),
                                     wrong)
        return ravel_pytree(g)[0]

    estimates = np.asarray(jax.jit(lambda ks: jax.lax.map(one, ks))(
        jax.random.split(jax.random.key(61), 2000)), np.float64)
    assert detects_bias(estimates, problem.true_grad)


def test_stored_log_q_equals_passing_the_distribution(key):
    problem, behaviour = _gaussian_case()
    x = behaviour.sample(key, (64,))
    values = jax.vmap(problem.f)(x)
    a = importance.is_score_grad(problem.dist_fn, problem.params, x, values, behaviour)
    b = importance.is_score_grad(problem.dist_fn, problem.params, x, values,
                                 behaviour.log_prob(x).sum(-1))
    np.testing.assert_allclose(ravel_pytree(a)[0], ravel_pytree(b)[0], rtol=1e-6)


def test_on_policy_weights_reduce_to_the_plain_estimator(key):
    problem = normal_square()
    d = problem.dist_fn(problem.params)
    x = scorefn.sample(problem.dist_fn, problem.params, key, 64)
    values = jax.vmap(problem.f)(x)
    a = importance.is_score_grad(problem.dist_fn, problem.params, x, values, d)
    b = scorefn.score_grad(problem.dist_fn, problem.params, x, values)
    np.testing.assert_allclose(ravel_pytree(a)[0], ravel_pytree(b)[0], rtol=1e-5, atol=1e-6)
    assert float(importance.effective_sample_size(importance.log_weights(
        problem.dist_fn, problem.params, x, d))) == pytest.approx(64, rel=1e-5)


def test_self_normalised_bias_shrinks_with_n():
    """Biased at N = 5, consistent: no detectable bias at N = 500 with the same test."""
    problem, behaviour = _gaussian_case()
    small = _repeated_is(problem, behaviour, 5, 4000, jax.random.key(62),
                         weighting="self_normalized")
    large = _repeated_is(problem, behaviour, 500, 2000, jax.random.key(63),
                         weighting="self_normalized")
    assert detects_bias(small, problem.true_grad)
    assert_unbiased(large, problem.true_grad)


def test_truncated_weights_bound_the_variance_and_bias_the_mean():
    problem, behaviour = _gaussian_case()
    plain = _repeated_is(problem, behaviour, 50, 2000, jax.random.key(64))
    truncated = _repeated_is(problem, behaviour, 50, 2000, jax.random.key(64),
                             weighting="truncated", truncation=1.0)
    assert np.all(truncated.var(0) < plain.var(0))
    assert detects_bias(truncated, problem.true_grad)


def test_effective_sample_size():
    assert float(importance.effective_sample_size(jnp.zeros(10))) == pytest.approx(10)
    assert float(importance.effective_sample_size(jnp.array([0.0, -1e4, -1e4]))) == pytest.approx(1)
    # No overflow for huge log weights: ESS is scale-free.
    assert float(importance.effective_sample_size(jnp.array([1000.0, 1000.0]))) == pytest.approx(2)
    diag = importance.weight_diagnostics(jnp.log(jnp.array([1.0, 1.0, 2.0])))
    assert float(diag["max_normalized_weight"]) == pytest.approx(0.5)
    assert float(diag["ess_fraction"]) == pytest.approx(16 / 6 / 3)


def test_low_ess_warns_or_raises(key):
    problem = normal_square()
    far = dist.Normal(problem.params["loc"] + 3.0, 0.3)
    x = far.sample(key, (100,))
    values = jax.vmap(problem.f)(x)
    with pytest.warns(RuntimeWarning, match="effective sample size"):
        importance.is_score_grad(problem.dist_fn, problem.params, x, values, far,
                                 ess_threshold=0.5)
    with pytest.raises(ValueError, match="importance weights are degenerate"):
        importance.is_score_grad(problem.dist_fn, problem.params, x, values, far,
                                 ess_threshold=0.5, on_low_ess="raise")
    jitted = jax.jit(lambda x, v: importance.is_score_grad(
        problem.dist_fn, problem.params, x, v, far, ess_threshold=0.5, on_low_ess="raise"))
    with pytest.raises(Exception, match="importance weights are degenerate"):
        jax.block_until_ready(jitted(x, values))


def test_degenerate_weights_warn_by_default_and_never_return_a_silent_zero():
    """q far from p: the weights underflow (ordinary, truncated: the estimate would be an
    exact 0) or one weight takes everything (self-normalised: a huge number)."""
    def dist_fn(p):
        return dist.Normal(p["mu"], 0.1)

    params, q = {"mu": jnp.asarray(0.0)}, dist.Normal(55.0, 3.0)
    x = jnp.linspace(50.0, 60.0, 100)
    for weighting in ("ordinary", "truncated"):
        with pytest.warns(RuntimeWarning, match="every importance weight underflows to 0"):
            importance.is_score_grad(dist_fn, params, x, x**2, q, weighting=weighting)
        with pytest.raises(ValueError, match="every importance weight underflows to 0"):
            importance.is_score_grad(dist_fn, params, x, x**2, q, weighting=weighting,
                                     on_low_ess="raise")
    with pytest.warns(RuntimeWarning, match=r"effective sample size 1.0 of 100 \(1.0% < threshold 5%\)"):
        importance.is_score_grad(dist_fn, params, x, x**2, q, weighting="self_normalized")
    jitted = jax.jit(lambda p: importance.is_score_grad(dist_fn, p, x, x**2, q, on_low_ess="raise"))
    with pytest.raises(Exception, match="every importance weight underflows to 0"):
        jax.block_until_ready(jitted(params))


def test_every_weight_zero_is_reported():
    def dist_fn(p):
        return dist.Normal(p["mu"], 1.0)

    log_q = jnp.full((10,), jnp.inf)  # stored log q(x) = +inf: every weight exp(-inf) = 0
    with pytest.raises(ValueError, match="every importance weight is zero"):
        importance.is_score_grad(dist_fn, {"mu": jnp.asarray(0.0)}, jnp.zeros(10), jnp.ones(10),
                                 log_q, on_low_ess="raise")


def test_overflowing_weights_raise_instead_of_nan(key):
    params = {"loc": jnp.array([0.0])}

    def dist_fn(p):
        return dist.Normal(p["loc"], 1.0)

    tiny = dist.Normal(jnp.array([30.0]), 0.01)  # log p - log q at its samples is ~ -450...
    x = jnp.array([[-20.0], [0.0]])  # ...but here q is vanishingly small: log w ≈ 4.5e6
    with pytest.raises(ValueError, match="importance weights overflow"):
        importance.is_score_grad(dist_fn, params, x, jnp.ones(2), tiny)
    # Self-normalised weights are scale-free and stay finite.
    g = importance.is_score_grad(dist_fn, params, x, jnp.ones(2), tiny, weighting="self_normalized")
    assert np.all(np.isfinite(ravel_pytree(g)[0]))


def test_argument_errors(key):
    problem, behaviour = _gaussian_case()
    x = behaviour.sample(key, (8,))
    values = jax.vmap(problem.f)(x)
    with pytest.raises(ValueError, match="weighting must be one of"):
        importance.is_score_grad(problem.dist_fn, problem.params, x, values, behaviour,
                                 weighting="clipped")
    with pytest.raises(ValueError, match=r"stored log q\(x_n\) .* shape \(num_samples,\) = \(8,\)"):
        importance.is_score_grad(problem.dist_fn, problem.params, x, values, jnp.zeros(7))
    with pytest.raises(ValueError, match="on_low_ess must be one of"):
        importance.is_score_grad(problem.dist_fn, problem.params, x, values, behaviour,
                                 on_low_ess="log")
    for threshold in (2.0, -0.1, float("nan")):  # a fraction of N
        with pytest.raises(ValueError, match=r"ess_threshold must be a finite number in \[0, 1\]"):
            importance.is_score_grad(problem.dist_fn, problem.params, x, values, behaviour,
                                     ess_threshold=threshold)


def test_the_power_heuristic_needs_a_finite_power(key):
    """A NaN β was reported as proposals that do not cover p_θ."""
    problem, behaviour = _gaussian_case()
    x = behaviour.sample(key, (8,))
    values = jax.vmap(problem.f)(x)
    with pytest.raises(ValueError, match="power must be a finite number, got nan"):
        importance.mis_score_grad(problem.dist_fn, problem.params, [x, x], [values, values],
                                  [behaviour, behaviour], heuristic="power", power=float("nan"))


@pytest.mark.parametrize("heuristic", ["balance", "power"])
def test_multiple_importance_sampling_is_unbiased_and_beats_the_worse_proposal(heuristic):
    problem = normal_square()
    loc, scale = problem.params["loc"], jnp.exp(problem.params["log_scale"])
    proposals = [dist.Normal(loc - 0.8, scale), dist.Normal(loc + 0.2, 2.0 * scale)]

    def mis(k):
        k1, k2 = jax.random.split(k)
        xs = [proposals[0].sample(k1, (25,)), proposals[1].sample(k2, (25,))]
        vs = [jax.vmap(problem.f)(x) for x in xs]
        g = importance.mis_score_grad(problem.dist_fn, problem.params, xs, vs, proposals,
                                      heuristic=heuristic)
        return ravel_pytree(g)[0]

    def single(q):
        def one(k):
            x = q.sample(k, (50,))
            # the worse proposal is degenerate on purpose: no warning per estimate
            g = importance.is_score_grad(problem.dist_fn, problem.params, x,
                                         jax.vmap(problem.f)(x), q, on_low_ess="ignore")
            return ravel_pytree(g)[0]
        return one

    keys = jax.random.split(jax.random.key(65), 2000)
    run = jax.jit(lambda fn, ks: jax.lax.map(fn, ks), static_argnums=0)
    combined = np.asarray(run(mis, keys), np.float64)
    singles = [np.asarray(run(single(q), keys), np.float64) for q in proposals]
    assert_unbiased(combined, problem.true_grad)
    worse = max(singles, key=lambda e: e.var(0).sum())
    # Total variance lower than the worse proposal's by more than 4 standard errors of the
    # log-variance ratio (≈ √(2·2/R) for near-Gaussian estimates).
    log_ratio = math.log(combined.var(0).sum() / worse.var(0).sum())
    assert log_ratio < -4 * math.sqrt(4 / 2000)


def test_per_decision_log_weights():
    log_p = jnp.log(jnp.array([[0.5, 0.5, 0.2]]))
    log_q = jnp.log(jnp.array([[0.25, 0.5, 0.4]]))
    np.testing.assert_allclose(jnp.exp(importance.per_decision_log_weights(log_p, log_q)),
                               [[2.0, 2.0, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(
        jnp.exp(importance.per_decision_log_weights(log_p, log_q, truncation=1.0)),
        [[1.0, 1.0, 0.5]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"shape \(num_sequences, num_steps\)"):
        importance.per_decision_log_weights(jnp.zeros(3), jnp.zeros(3))


def test_per_decision_weights_are_unbiased_for_prefix_functions():
    """Sequences of 3 Bernoulli steps: E_μ[ρ_{1:t} h(a_{1:t})] = E_π[h(a_{1:t})] for each t,
    with h(a_{1:t}) = Σ_{k≤t} a_k, whose π-expectation is t·p."""
    p_target, p_behaviour, n = 0.7, 0.4, 200_000
    a = jax.random.bernoulli(jax.random.key(66), p_behaviour, (n, 3)).astype(jnp.float32)
    log_p = jnp.where(a > 0, jnp.log(p_target), jnp.log1p(-p_target))
    log_q = jnp.where(a > 0, jnp.log(p_behaviour), jnp.log1p(-p_behaviour))
    rho = np.asarray(jnp.exp(importance.per_decision_log_weights(log_p, log_q)), np.float64)
    h = np.cumsum(np.asarray(a, np.float64), axis=1)
    terms = rho * h
    z = (terms.mean(0) - p_target * np.arange(1, 4)) / (terms.std(0) / math.sqrt(n))
    assert np.all(np.abs(z) < 4), z
    # Using the full-sequence weight for every step is also unbiased but noisier; a planted
    # wrong weight (ρ_{1:t} of the target at 0.6) is caught.
    wrong = np.exp(np.cumsum(np.where(np.asarray(a) > 0, np.log(0.6 / 0.4), np.log(0.4 / 0.6)),
                             axis=1))
    z_wrong = ((wrong * h).mean(0) - p_target * np.arange(1, 4)) / ((wrong * h).std(0) / math.sqrt(n))
    assert np.any(np.abs(z_wrong) > 4)


def test_log_weights_per_factor_is_the_per_decision_log_ratio_with_the_fixed_gradient():
    """RL's per-decision ratio (PPO, TRPO): one log-weight per factor of a batched policy,
    exactly log π - log μ; at logits 0 its gradient is y - ½ (numpyro's own is y)."""
    logits = jnp.array([0.0, 1.5, -2.0])
    actions = jnp.array([1.0, 0.0, 1.0])
    behaviour = dist.Bernoulli(logits=logits - 0.3).log_prob(actions)
    ell = importance.log_weights_per_factor(dist.Bernoulli(logits=logits), actions, behaviour)
    np.testing.assert_allclose(ell, dist.Bernoulli(logits=logits).log_prob(actions) - behaviour,
                               rtol=1e-6)
    assert ell.shape == (3,)
    at_behaviour = importance.log_weights_per_factor(dist.Bernoulli(logits=logits), actions,
                                                     dist.Bernoulli(logits=logits).log_prob(actions))
    np.testing.assert_allclose(jnp.exp(at_behaviour), 1.0)  # the ratio is 1 on-policy
    grad = jax.grad(lambda lg: importance.log_weights_per_factor(
        dist.Bernoulli(logits=lg), actions, behaviour).sum())(logits)
    np.testing.assert_allclose(grad, actions - jax.nn.sigmoid(logits), atol=1e-6)
    assert float(grad[0]) == pytest.approx(0.5)


def test_multi_sample_weights_and_bound():
    log_w = jnp.array([-1.0, 0.5, -3.0, 0.0])
    w = np.exp(np.asarray(log_w, np.float64))
    np.testing.assert_allclose(importance.log_mean_weight(log_w), np.log(w.mean()), rtol=1e-6)
    np.testing.assert_allclose(importance.self_normalized_weights(log_w), w / w.sum(), rtol=1e-6)
    np.testing.assert_allclose(importance.doubly_reparameterized_weights(log_w),
                               (w / w.sum()) ** 2, rtol=1e-6)
    # stable where exp would overflow
    assert np.isfinite(importance.log_mean_weight(log_w + 1e4))


def test_clipped_objective_gradient_is_zero_where_the_clip_binds():
    from scorefn.importance import clip_binds, clipped_objective

    log_w = jnp.log(jnp.array([0.5, 0.5, 1.0, 1.5, 1.5, 1.1]))
    adv = jnp.array([-1.0, 2.0, 3.0, 2.0, -1.0, 0.5])
    grad = jax.grad(lambda lw: jnp.sum(clipped_objective(lw, adv, (0.2, 0.3))))(log_w)
    binds = np.array([True, False, False, True, False, False])
    np.testing.assert_array_equal(np.asarray(clip_binds(log_w, adv, (0.2, 0.3))), binds)
    # ∂(ρA)/∂ℓ = ρA where the clip does not bind
    np.testing.assert_allclose(grad, np.where(binds, 0.0, np.exp(log_w) * adv), rtol=1e-6)
    values = clipped_objective(log_w, adv, (0.2, 0.3))
    np.testing.assert_allclose(values[3], 1.3 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(clipped_objective(log_w, adv), np.exp(log_w) * adv, rtol=1e-6)
    # On policy (ℓ = log π − sg(log π)): value A, gradient A per unit of log π.
    lp = jnp.log(jnp.array([0.3, 0.6]))
    g = jax.grad(lambda x: jnp.sum(clipped_objective(x - jax.lax.stop_gradient(x), adv[:2],
                                                     (0.2, 0.2))))(lp)
    np.testing.assert_allclose(g, adv[:2])
