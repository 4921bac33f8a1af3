"""Bad input gets a clear error naming the argument and what was expected."""


import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from closed_forms import bernoulli_rebar, normal_square

import scorefn


@pytest.fixture
def problem():
    return normal_square()


def test_nonfinite_values_name_count_and_first_index(problem, key):
    x = scorefn.sample(problem.dist_fn, problem.params, key, 20)
    values = np.ones(20)
    values[[4, 9]] = [np.nan, np.inf]
    with pytest.raises(ValueError, match=r"f returned 2 non-finite value\(s\).*index 4"):
        scorefn.score_grad(problem.dist_fn, problem.params, x, values)


def test_nonfinite_values_raise_under_jit_too(problem, key):
    def f(x):
        return jnp.where(x[0] > 0, jnp.nan, jnp.sum(x**2))

    run = jax.jit(lambda k: scorefn.grad(f, problem.dist_fn, problem.params, k, 50))
    with pytest.raises(Exception, match=r"non-finite value\(s\)"):
        jax.block_until_ready(run(key))


def test_nan_policy_errors(problem, key):
    x = scorefn.sample(problem.dist_fn, problem.params, key, 5)
    with pytest.raises(ValueError, match="nan_policy must be one of"):
        scorefn.score_grad(problem.dist_fn, problem.params, x, jnp.ones(5), nan_policy="skip")
    with pytest.raises(ValueError, match="no finite value"):
        scorefn.score_grad(problem.dist_fn, problem.params, x, jnp.full(5, jnp.nan),
                           nan_policy="drop")
    run = jax.jit(lambda k: scorefn.grad(problem.f, problem.dist_fn, problem.params, k, 5,
                                         nan_policy="drop"))
    with pytest.raises(ValueError, match="nan_policy='drop' .* needs concrete values"):
        run(key)


@pytest.mark.parametrize(
    "values, hint",
    [(np.ones((20, 3)), "reduce its output"), (np.float32(1.0), "returned a scalar"),
     (np.ones(19), "got shape \\(19,\\)")],
)
def test_values_of_the_wrong_shape(problem, key, values, hint):
    x = scorefn.sample(problem.dist_fn, problem.params, key, 20)
    with pytest.raises(ValueError, match=r"values must have shape \(num_samples,\) = \(20,\)"):
        scorefn.score_grad(problem.dist_fn, problem.params, x, values)
    with pytest.raises(ValueError, match=hint):
        scorefn.score_grad(problem.dist_fn, problem.params, x, values)


def test_f_returning_wrong_shape_through_grad(problem, key):
    with pytest.raises(ValueError, match="one scalar per sample"):
        scorefn.grad(lambda x: x**2, problem.dist_fn, problem.params, key, 8)


def test_samples_of_the_wrong_shape(problem, key):
    with pytest.raises(ValueError, match=r"samples must have shape \(num_samples, \*batch_shape"):
        scorefn.score_grad(problem.dist_fn, problem.params, jnp.ones((10, 4)), jnp.ones(10))


def test_float_samples_of_a_categorical_are_named_up_front():
    def dist_fn(p):
        return dist.Categorical(logits=p["logits"])

    params, x = {"logits": jnp.zeros(3)}, jnp.array([0.0, 1.0, 2.0, 1.0])
    message = r"samples must be integers for CategoricalLogits \(it draws int32\); got float32"
    with pytest.raises(ValueError, match=message):
        scorefn.score_grad(dist_fn, params, x, x)
    with pytest.raises(ValueError, match=message):  # under jit too: the check is structural
        jax.jit(lambda p, x: scorefn.score_grad(dist_fn, p, x, x))(params, x)
    g = scorefn.score_grad(dist_fn, params, x.astype(jnp.int32), x)  # the fix it names works
    assert np.all(np.isfinite(g["logits"]))
    # Bernoulli's log_prob takes 0.0 and 1.0: float samples stay accepted
    b = scorefn.score_grad(lambda p: dist.Bernoulli(logits=p["l"]), {"l": jnp.zeros(())},
                           jnp.array([0.0, 1.0, 1.0]), jnp.array([0.0, 1.0, 1.0]))
    assert float(b["l"]) == pytest.approx(1 / 3, rel=1e-5)


def test_parameter_the_distribution_does_not_use(problem, key):
    params = dict(problem.params, temperature=jnp.ones(()))
    with pytest.raises(ValueError, match=r"params\['temperature'\] does not affect"):
        scorefn.grad(problem.f, problem.dist_fn, params, key, 8)
    # Also when traced under jit: the check is structural.
    with pytest.raises(ValueError, match=r"params\['temperature'\] does not affect"):
        jax.jit(lambda p: scorefn.grad(problem.f, problem.dist_fn, p, key, 8))(params)


def test_support_that_depends_on_theta(key):
    def dist_fn(p):
        return dist.Uniform(0.0, p["high"])

    params = {"high": jnp.array(2.0)}
    with pytest.raises(ValueError, match=r"support .* depends on params\['high'\].*pathwise"):
        scorefn.grad(lambda x: x, dist_fn, params, key, 8)
    # The pathwise estimator handles it: d/dθ E[x] = 1/2 for Uniform(0, θ).
    g = scorefn.grad(lambda x: x, dist_fn, params, key, 4000, estimator="pathwise")
    assert float(g["high"]) == pytest.approx(0.5, abs=0.03)


@pytest.mark.filterwarnings("ignore:Out-of-support values")
def test_samples_with_minus_infinite_log_prob(key):
    def dist_fn(p):
        return dist.Exponential(p["rate"])

    params = {"rate": jnp.array(1.0)}
    samples = jnp.array([0.5, -1.0, 2.0, -3.0])
    with pytest.raises(ValueError, match=r"2 sample\(s\) have log_prob = -inf.*index 1"):
        scorefn.score_grad(dist_fn, params, samples, jnp.ones(4))
    # A caller that drew the samples itself says so, and that one check is skipped (the
    # gradient is then whatever numpyro's log_prob gives: here from in-support samples).
    inside = jnp.array([0.5, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(
        scorefn.score_grad(dist_fn, params, inside, jnp.ones(4), samples_from_dist=True)["rate"],
        scorefn.score_grad(dist_fn, params, inside, jnp.ones(4))["rate"])
    scorefn.score_grad(dist_fn, params, samples, jnp.ones(4), samples_from_dist=True)


@pytest.mark.parametrize("bad_key", [0, np.uint32(3), jnp.array([1.0, 2.0]), "seed"])
def test_non_key_passed_as_key(problem, bad_key):
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        scorefn.grad(problem.f, problem.dist_fn, problem.params, bad_key, 8)


def test_legacy_uint32_keys_are_accepted(problem):
    g = scorefn.grad(problem.f, problem.dist_fn, problem.params, jax.random.PRNGKey(0), 8)
    assert g["loc"].shape == (3,)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_num_samples(problem, key, n):
    with pytest.raises((TypeError, ValueError), match="num_samples must be"):
        scorefn.grad(problem.f, problem.dist_fn, problem.params, key, n)


def test_unknown_estimator_lists_the_known_ones(problem, key):
    known = (r"estimator must be one of \('score', 'pathwise', 'measure_valued', 'rloo', 'arm', "
             r"'disarm', 'sum_and_sample', 'rebar', 'relax', 'gumbel_softmax', 'straight_through'\)")
    with pytest.raises(ValueError, match=known):
        scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 8, estimator="reinforce")


def test_pathwise_without_reparameterised_sampler(key):
    problem = bernoulli_rebar()
    with pytest.raises(ValueError, match="BernoulliLogits, which has none.*estimator='score'"):
        scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 8, estimator="pathwise")


def test_pathwise_takes_no_baseline(problem, key):
    with pytest.raises(ValueError, match="apply to the score-function estimator"):
        scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 8, estimator="pathwise",
                     baseline=scorefn.baselines.leave_one_out())


def test_max_norm_with_per_sample_is_refused(problem, key):
    with pytest.raises(ValueError, match="max_norm clips the averaged estimate"):
        scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 8, max_norm=1.0,
                     per_sample=True)


@pytest.mark.parametrize("estimator", ["score", "pathwise"])
def test_max_norm_must_be_positive(problem, key, estimator):
    """0 returned a zero gradient, -1 flipped its sign and NaN made it NaN, without a word."""
    for max_norm in (0.0, -1.0, float("nan"), jnp.asarray(-1.0)):
        with pytest.raises(ValueError, match="max_norm must be a finite number in \\(0, ∞\\)"):
            scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 8, max_norm=max_norm,
                         estimator=estimator)
    scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 8, max_norm=jnp.asarray(1.0),
                 estimator=estimator)
    # a traced bound is the caller's: it still compiles
    jax.jit(lambda m: scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 8,
                                   max_norm=m, estimator=estimator))(1.0)


def test_compilation_cache_respects_an_existing_folder_and_the_opt_out(monkeypatch, tmp_path):
    import jax

    from scorefn import enable_compilation_cache

    assert enable_compilation_cache() == jax.config.jax_compilation_cache_dir  # conftest's
    monkeypatch.setenv("SCOREFN_COMPILATION_CACHE", "0")
    assert enable_compilation_cache() is None


def test_sample_count_errors_name_what_needs_more_samples():
    import numpyro.distributions as dist

    def dist_fn(p):
        return dist.Normal(p["mu"], 1.0)

    params, key = {"mu": jnp.asarray(0.5)}, jax.random.key(0)
    one = jnp.ones((1,))
    for baseline in (scorefn.baselines.optimal(), scorefn.baselines.batch_mean(),
                     scorefn.baselines.leave_one_out()):
        with pytest.raises(ValueError, match=f"the {baseline.name} baseline needs num_samples >= 2"):
            scorefn.grad(lambda x: x**2, dist_fn, params, key, 1, baseline=baseline)
        with pytest.raises(ValueError, match=f"the {baseline.name} baseline needs num_samples >= 2"):
            scorefn.score_grad(dist_fn, params, one, one, baseline=baseline)
    with pytest.raises(ValueError, match="standardize=True .* needs num_samples >= 2"):
        scorefn.score_grad(dist_fn, params, one, one, standardize=True)
    with pytest.raises(ValueError, match=r"samples holds no sample \(N = 0\)"):
        scorefn.score_grad(dist_fn, params, jnp.zeros((0,)), jnp.zeros((0,)))


def test_dist_fn_and_params_type_errors_name_the_argument():
    import numpyro.distributions as dist

    key = jax.random.key(0)
    with pytest.raises(TypeError, match=r"dist_fn\(params\) must return a numpyro.distributions"):
        scorefn.grad(lambda x: x, lambda p: p["mu"], {"mu": jnp.asarray(0.5)}, key, 8)
    with pytest.raises(TypeError, match=r"params\['mu'\] must be a floating-point array"):
        scorefn.grad(lambda x: x, lambda p: dist.Normal(p["mu"], 1.0), {"mu": jnp.asarray(1)},
                     key, 8)


def test_is_key():
    assert scorefn.validation.is_key(jax.random.key(0))
    assert not scorefn.validation.is_key(jax.random.PRNGKey(0))  # raw uint32 data
    assert not scorefn.validation.is_key(np.zeros(2))


def test_one_list_of_nan_policies():
    assert scorefn.validation.check_nan_policy("drop", ("raise", "drop")) == "drop"
    with pytest.raises(ValueError, match=r"nan_policy must be one of \('penalize', 'raise'\), "
                                         r"got 'drop'"):
        scorefn.validation.check_nan_policy("drop", ("penalize", "raise"))
    assert set(scorefn.validation.NAN_POLICIES) == {"raise", "drop", "penalize"}


def test_check_real_names_the_argument_and_its_interval():
    from scorefn.validation import check_real

    assert check_real(np.float32(0.5), "gamma", 0.0, 1.0) == 0.5
    assert check_real(1, "gamma", 0.0, 1.0) == 1.0  # a closed end is inside
    cases = [((1.5, "gamma", 0.0, 1.0), {}, r"gamma must be a finite number in \[0, 1\], got 1.5"),
             ((0.0, "lr", 0.0), {"low_open": True}, r"lr must be a finite number in \(0, ∞\), "),
             ((1.0, "decay", 0.0, 1.0), {"high_open": True}, r"in \[0, 1\), got 1.0"),
             ((float("nan"), "x"), {}, r"^x must be a finite number, got nan"),
             ((True, "x"), {}, "got True"), (("0.5", "x"), {}, "got '0.5'")]
    for args, options, match in cases:
        with pytest.raises(ValueError, match=match):
            check_real(*args, **options)
