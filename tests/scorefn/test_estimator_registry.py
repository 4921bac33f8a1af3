"""scorefn.registry: one list of estimators that grad, programs, the discrete VAE and the
docs all read."""

import inspect
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import pytest

import scorefn
from scorefn import estimators, programs, registry
from scorefn.vi import discrete_vae


def test_every_reader_takes_its_names_from_the_registry():
    assert estimators.ESTIMATORS == registry.names(single_distribution=True)
    assert tuple(programs.ESTIMATORS) == registry.names(program=True)
    assert set(discrete_vae.ESTIMATORS) <= set(registry.names(program=True))
    assert "relax" not in discrete_vae.ESTIMATORS  # it learns a network: needs state
    # only the relaxations are biased, and they say what they estimate instead
    biased = registry.names(unbiased=False)
    assert biased == ("gumbel_softmax", "straight_through")
    assert all("biased" in registry.ESTIMATORS[n].formula for n in biased)
    assert registry.estimator("rloo").family == "score"


def test_unknown_names_and_families_are_errors():
    with pytest.raises(ValueError, match="unknown estimator 'reinforce'; known: score, pathwise"):
        registry.estimator("reinforce")
    with pytest.raises(ValueError, match="family must be one of"):
        registry.Estimator("mine", "magic", True, False, "", "")


def test_the_docs_table_lists_every_estimator():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs"))
    try:
        import hooks
    finally:
        sys.path.pop(0)
    table = hooks.registry_table()
    assert all(f"| `{name}` |" in table for name in registry.ESTIMATORS)
    assert len(table.strip().splitlines()) == 2 + len(registry.ESTIMATORS)


def test_grad_runs_every_family_and_takes_exactly_the_registry_options():
    parameters = inspect.signature(estimators.grad).parameters
    for name, default in registry.GRAD_OPTIONS.items():
        assert parameters[name].default == default
    single = {registry.ESTIMATORS[n].family for n in registry.names(single_distribution=True)}
    assert single <= set(estimators.ONE_DISTRIBUTION)
    with pytest.raises(ValueError, match="options must be among"):
        registry.Estimator("mine", "score", True, False, "", "", options=("tempo",))


@pytest.mark.parametrize("estimator, option, message", [
    ("score", {"temperature": 0.3}, "estimator='score' takes no temperature \\(the estimators "
     "that do: rebar, gumbel_softmax, straight_through\\)"),
    ("sum_and_sample", {"vectorized": True}, "'sum_and_sample' takes no vectorized.*takes none"),
    ("pathwise", {"nan_policy": "drop"}, "'pathwise' takes no nan_policy.*takes control_variate"),
    ("arm", {"per_sample": True}, "'arm' takes no per_sample"),
])
def test_grad_refuses_an_option_its_estimator_does_not_take(estimator, option, message):
    def dist_fn(p):
        return dist.Normal(p["a"]) if estimator == "pathwise" else dist.Bernoulli(logits=p["a"])

    with pytest.raises(ValueError, match=message):
        scorefn.grad(jnp.sum, dist_fn, {"a": jnp.zeros(2)}, jax.random.key(0), 4,
                     estimator=estimator, **option)
    # the same option at its default is no error
    scorefn.grad(jnp.sum, lambda p: dist.Bernoulli(logits=p["a"]), {"a": jnp.zeros(2)},
                 jax.random.key(0), 4, estimator="disarm",
                 **{k: registry.GRAD_OPTIONS[k] for k in option})
