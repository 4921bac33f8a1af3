"""Per-site contributions and compare on a user's program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from program_cases import THREE_SITE_PARAMS, three_site, three_site_objective

import scorefn


def test_site_contribution_of_a_single_score_site_is_its_score_term():
    """With one score site and no other path, the contribution is the whole estimate."""
    import numpyro
    import numpyro.distributions as dist

    def program(p):
        x = numpyro.sample("x", dist.Categorical(logits=p["l"]))
        numpyro.factor("r", jnp.array([1.0, -1.0, 2.0])[x])

    params = {"l": jnp.array([0.1, 0.2, -0.3])}
    key = jax.random.key(0)
    parts = scorefn.programs.site_contributions(program, params, key, num_particles=8)
    g = scorefn.programs.grad(program, params, key, num_particles=8)
    np.testing.assert_allclose(parts["x"]["l"], g["l"], rtol=1e-6)


def test_pathwise_contribution_only_reaches_the_params_it_depends_on():
    parts = scorefn.programs.site_contributions(three_site, THREE_SITE_PARAMS, jax.random.key(1),
                                                num_particles=4)
    assert set(parts) == {"b", "y", "c"}
    # y (pathwise) reaches m and s through its value, never c's logits l or b's logit a.
    np.testing.assert_array_equal(parts["y"]["l"], 0.0)
    np.testing.assert_array_equal(parts["y"]["a"], 0.0)
    # c's score reaches only l.
    assert float(parts["c"]["a"]) == 0.0 and float(jnp.abs(parts["c"]["l"]).sum()) > 0


def test_site_variances_rank_enumeration_below_score():
    score = scorefn.programs.site_variances(three_site, THREE_SITE_PARAMS, jax.random.key(2),
                                           num_repeats=300, num_particles=4)
    enumerated = scorefn.programs.site_variances(three_site, THREE_SITE_PARAMS, jax.random.key(3),
                                                 num_repeats=300, num_particles=4,
                                                 estimators={"c": "enumerate"})
    assert score.estimators["c"] == "score" and enumerated.estimators["c"] == "enumerate"
    assert enumerated.total["c"] < 0.5 * score.total["c"]
    with pytest.raises(ValueError, match="num_repeats must be at least 2"):
        scorefn.programs.site_variances(three_site, THREE_SITE_PARAMS, jax.random.key(2), num_repeats=1)


def test_compare_table():
    true = jax.grad(three_site_objective)(THREE_SITE_PARAMS)
    result = scorefn.programs.compare(
        three_site, THREE_SITE_PARAMS, jax.random.key(4),
        choices={"default": {"num_particles": 4},
                 "enumerate b, c": {"num_particles": 4, "estimators": {"b": "enumerate", "c": "enumerate"}},
                 "batch_mean": {"num_particles": 4, "baselines": {"b": scorefn.baselines.batch_mean()}}},
        num_repeats=300, reference=true, print_table=False)
    assert result["default"].unbiased and not result["batch_mean"].unbiased
    assert result["enumerate b, c"].total_variance < result["default"].total_variance
    assert result["default"].max_abs_z < 4
    assert result.sites["enumerate b, c"].estimators == {"b": "enumerate", "y": "pathwise", "c": "enumerate"}
    assert np.isfinite(ravel_pytree(result["default"].unravel(result["default"].mean))[0]).all()
    tables = result.rich_tables()
    assert len(tables) == 2
    with pytest.raises(ValueError, match="unknown option"):
        scorefn.programs.compare(three_site, THREE_SITE_PARAMS, jax.random.key(4),
                                 choices={"x": {"baseline": None}}, print_table=False)


def test_compare_takes_every_surrogate_option():
    """Control variates, ψ of a REBAR site and sum-and-sample's k are choices too."""
    import numpyro
    import numpyro.distributions as dist

    def program(p):
        b = numpyro.sample("b", dist.Bernoulli(logits=p["a"]))
        x = numpyro.sample("x", dist.Normal(p["m"] + b, 1.0).expand([2]).to_event(1))
        numpyro.factor("f", jnp.sum(x**2))

    params = {"a": jnp.asarray(0.3), "m": jnp.array([0.5, -1.0])}
    # E[Σ x²] = Σ_i (m_i² + 2 m_i σ(a) + σ(a) + 1)
    true = jax.grad(lambda p: jnp.sum(p["m"] ** 2 + 2 * p["m"] * jax.nn.sigmoid(p["a"])
                                      + jax.nn.sigmoid(p["a"]) + 1))(params)
    score = {"b": "score", "x": "score"}
    result = scorefn.programs.compare(
        program, params, jax.random.key(6),
        choices={"score": {"estimators": score},
                 # h ≈ f takes the place of the baseline (β is fitted to f·g, not (f - b)·g)
                 "delta method": {"estimators": score, "baselines": {"x": None},
                                  "control_variates": {
                     "x": scorefn.control_variates.delta_method(lambda x: jnp.sum(x**2))}},
                 "rebar": {"estimators": {"b": "rebar", "x": "pathwise"},
                           "relax_params": {"b": {"eta": jnp.asarray(0.5),
                                                  "log_temperature": jnp.asarray(0.0)}}}},
        num_repeats=300, reference=true, print_table=False)
    for name in ("score", "delta method", "rebar"):
        assert result[name].unbiased and result[name].max_abs_z < 4, name
    # h = f here, so what is left of x's variance is ∇E[h | b] = 2(m + b), from b (0.31×)
    assert result.sites["delta method"].total["x"] < 0.5 * result.sites["score"].total["x"]
