"""Reading a program's structure, and the errors a bad program or call gets."""

import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from program_cases import THREE_SITE_PARAMS, three_site

import scorefn
from scorefn.programs.tracing import Plate, analyse, canonical, enumeration_grid, inspect_sites


def test_structure_of_the_three_site_program():
    sites = inspect_sites(three_site, THREE_SITE_PARAMS, ())
    assert {n for n, s in sites.items() if s.is_term} == {"fit", "pick", "reward", "reg"}
    s = analyse(three_site, THREE_SITE_PARAMS, (), sites)
    assert s.term_reads == {"fit": {"y"}, "pick": {"b"}, "reward": {"c"}, "reg": frozenset()}
    assert s.parents == {"b": frozenset(), "y": {"b"}, "c": {"b"}}
    assert s.differentiable["y"]
    assert all(s.params_used)


def test_non_differentiable_reader_makes_the_default_score():
    def program(p):
        x = numpyro.sample("x", dist.Normal(p["m"], 1.0))
        u = numpyro.sample("u", dist.Normal(p["m"], 1.0))
        numpyro.factor("step", jnp.where(x > 0, 1.0, 0.0) + u**2)

    p = scorefn.programs.plan(program, {"m": jnp.array(0.1)}, (), num_particles=4)
    assert p.estimators == {"x": "score", "u": "pathwise"}


def test_without_jax_dead_code_pass_planning_raises_instead_of_guessing(monkeypatch):
    """The dependency analysis reads a private jax function; if it disappears, planning must
    fail with a clear error, not treat x (read through x > 0) as pathwise."""
    def program(p):
        x = numpyro.sample("x", dist.Normal(p["m"], 1.0))
        numpyro.factor("step", jnp.where(x > 0, 1.0, 0.0))

    monkeypatch.delattr(importlib.import_module(scorefn.dependencies.DCE_MODULE), "dce_jaxpr")
    with pytest.raises(ImportError, match="dependency analysis needs jax._src.interpreters"):
        scorefn.programs.plan(program, {"m": jnp.array(0.1)}, (), num_particles=4)


def test_canonical_layout_sums_non_plate_axes_and_orders_plates():
    order = (Plate("a", -2, 3), Plate("b", -1, 4), Plate("c", -1, 5))
    x = jnp.arange(3 * 4 * 2, dtype=jnp.float32).reshape(3, 4, 2)  # plates a, b, then an event-like axis
    out = canonical(x, (Plate("a", -3, 3), Plate("b", -2, 4)), order)
    assert out.shape == (3, 4, 1)
    np.testing.assert_allclose(out[..., 0], x.sum(-1))
    scalar = canonical(jnp.array(2.0), (Plate("b", -1, 4),), order)  # broadcast inside a plate
    np.testing.assert_allclose(scalar, jnp.full((1, 4, 1), 2.0))


def test_enumeration_grid_and_its_limit():
    sites = inspect_sites(three_site, THREE_SITE_PARAMS, ())
    grid = enumeration_grid(sites, ["b", "c"], 100)
    np.testing.assert_array_equal(grid["b"], [0, 1])
    np.testing.assert_array_equal(grid["c"], [0, 1, 2])
    with pytest.raises(ValueError, match="more than the limit of 5"):
        enumeration_grid(sites, ["b", "c"], 5)

    def wide(p):
        z = numpyro.sample("z", dist.Bernoulli(logits=p["a"]).to_event(1))
        numpyro.factor("f", z.sum())

    with pytest.raises(ValueError, match="'enumerate' for site 'z' would sum over 2\\^20"):
        scorefn.programs.grad(wide, {"a": jnp.zeros(20)}, jax.random.key(0), estimators={"z": "enumerate"})


# Errors ------------------------------------------------------------------------------------

KEY = jax.random.key(0)


def test_support_depending_on_theta_under_score():
    def program(p):
        x = numpyro.sample("x", dist.Uniform(0.0, jnp.exp(p["h"])))
        numpyro.factor("f", x)

    with pytest.raises(ValueError, match=r"site 'x'.*support.*params\['h'\].*'pathwise'"):
        scorefn.programs.grad(program, {"h": jnp.array(0.0)}, KEY, estimators={"x": "score"})
    # pathwise is fine: d/dh E[x] = d/dh e^h / 2 = 1/2
    g = scorefn.programs.grad(program, {"h": jnp.array(0.0)}, KEY, estimators={"x": "pathwise"},
                              num_particles=4000)
    assert abs(float(g["h"]) - 0.5) < 0.05


def test_pathwise_without_rsample():
    with pytest.raises(ValueError, match="site 'b'.*'pathwise' needs a reparameterised sampler"):
        scorefn.programs.grad(three_site, THREE_SITE_PARAMS, KEY, estimators={"b": "pathwise"})


def test_measure_valued_needs_a_supported_family():
    with pytest.raises(ValueError, match="site 'c': estimator 'measure_valued' has weak-derivative"):
        scorefn.programs.grad(three_site, THREE_SITE_PARAMS, KEY, estimators={"c": "measure_valued"})


def test_nonfinite_term_names_the_term_and_particle_eagerly_and_under_jit():
    def program(p):
        y = numpyro.sample("y", dist.Normal(p["m"], 1.0))
        numpyro.factor("logy", jnp.log(y))

    params = {"m": jnp.array(0.5)}
    with pytest.raises(ValueError, match=r"term 'logy' of the program is NaN at particle \d"):
        scorefn.programs.grad(program, params, KEY)
    # Under jit the same message comes back from the run-time check (the gradient alone
    # would otherwise be a silent NaN).
    with pytest.raises(Exception, match=r"term 'logy' of the program is NaN at particle \d"):
        jax.block_until_ready(jax.jit(lambda k: scorefn.programs.grad(program, params, k))(KEY))


def test_runtime_checks_off_leaves_no_callback_and_a_nan():
    def program(p):
        y = numpyro.sample("y", dist.Normal(p["m"], 1.0))
        numpyro.factor("logy", jnp.log(y))

    params = {"m": jnp.array(0.5)}

    def g(k, checks):
        return scorefn.programs.grad(program, params, k, runtime_checks=checks)["m"]

    def callbacks(checks):
        text = jax.jit(lambda k: g(k, checks)).lower(KEY).compile().as_text()
        return re.findall(r'custom_call_target="[^"]*callback[^"]*"', text)

    assert callbacks(True) and not callbacks(False)
    # Unchecked, the objective is NaN while the gradient (1/y) looks finite: why the check is on
    # by default.
    value = jax.jit(lambda k: scorefn.programs.surrogate(program, params, k, runtime_checks=False))(KEY)
    assert np.isnan(value) and np.isfinite(jax.jit(lambda k: g(k, False))(KEY))


def test_program_without_terms():
    def program(p):
        numpyro.sample("x", dist.Normal(p["m"], 1.0))

    with pytest.raises(ValueError, match="has no term"):
        scorefn.programs.surrogate(program, {"m": jnp.array(0.0)}, KEY)


def test_unknown_estimator_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown estimator 'reinforce'.*\['arm', 'disarm', 'enumerate',"):
        scorefn.programs.grad(three_site, THREE_SITE_PARAMS, KEY, estimators={"b": "reinforce"})


def test_estimator_for_a_missing_site_or_a_term():
    with pytest.raises(ValueError, match="does not have; its latent sites are"):
        scorefn.programs.grad(three_site, THREE_SITE_PARAMS, KEY, estimators={"q": "score"})
    with pytest.raises(ValueError, match="only latent sites get estimators"):
        scorefn.programs.grad(three_site, THREE_SITE_PARAMS, KEY, estimators={"fit": "score"})


def test_unused_params():
    params = {**THREE_SITE_PARAMS, "temperature": jnp.array(1.0)}
    with pytest.raises(ValueError, match=r"params\['temperature'\] does not affect any sample site or term"):
        scorefn.programs.grad(three_site, params, KEY)


def test_bad_baselines_and_calls():
    with pytest.raises(ValueError, match="whose estimator is 'pathwise'"):
        scorefn.programs.grad(three_site, THREE_SITE_PARAMS, KEY,
                              baselines={"y": scorefn.baselines.leave_one_out()})
    with pytest.raises(ValueError, match="per parameter coordinate"):
        scorefn.programs.grad(three_site, THREE_SITE_PARAMS, KEY,
                              baselines={"b": scorefn.baselines.optimal()})
    with pytest.raises(ValueError, match="needs num_particles >= 2"):
        scorefn.programs.grad(three_site, THREE_SITE_PARAMS, KEY, num_particles=1,
                              baselines={"b": scorefn.baselines.leave_one_out()})
    with pytest.raises(ValueError, match="num_particles must be an int >= 1"):
        scorefn.programs.grad(three_site, THREE_SITE_PARAMS, KEY, num_particles=0)
    with pytest.raises(ValueError, match="max_enumeration must be an int >= 1, got 0"):
        scorefn.programs.grad(three_site, THREE_SITE_PARAMS, KEY, max_enumeration=0)
    with pytest.raises(ValueError, match="num_repeats must be an int >= 2, got 0"):  # was: 1/0
        scorefn.programs.compare(three_site, THREE_SITE_PARAMS, KEY, choices={"default": {}},
                                 num_repeats=0, print_table=False)
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        scorefn.programs.grad(three_site, THREE_SITE_PARAMS, 0)
    with pytest.raises(TypeError, match=r"params\['a'\] must be a floating-point array"):
        scorefn.programs.grad(three_site, {**THREE_SITE_PARAMS, "a": jnp.array(0)}, KEY)


def test_errors_are_raised_when_tracing_under_jit_too():
    @jax.jit
    def g(k):
        return scorefn.programs.grad(three_site, THREE_SITE_PARAMS, k, estimators={"b": "pathwise"})

    with pytest.raises(ValueError, match="site 'b'"):
        g(KEY)


def test_a_program_that_cannot_run():
    def program(p):
        numpyro.sample("x", dist.Normal(p["missing"], 1.0))

    with pytest.raises(ValueError, match="could not trace the program 'program'"):
        scorefn.programs.grad(program, {"m": jnp.array(0.0)}, KEY)
