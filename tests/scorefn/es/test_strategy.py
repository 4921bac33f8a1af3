"""scorefn.es.Strategy: the protocol minimize drives, for the built-in strategies and one of
the user's own."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import pytest

from scorefn import es


class RandomSearchState(NamedTuple):
    mean: jax.Array
    sigma: jax.Array
    key: jax.Array


@dataclasses.dataclass(frozen=True)
class RandomSearch(es.Strategy):
    """(1, λ) random search with a fixed shrink: no gradient at all, just the protocol."""

    popsize: int | None = 8
    shrink: float = 0.9
    name: str = "random_search"

    def init(self, key, x0, sigma0=1.0):
        x0 = jnp.asarray(x0, jnp.result_type(float))
        return RandomSearchState(x0, jnp.asarray(sigma0, x0.dtype), key)

    def ask(self, state):
        key, sub = jax.random.split(state.key)
        eps = jax.random.normal(sub, (self.popsize, state.mean.shape[0]), state.mean.dtype)
        return state.mean + state.sigma * eps, state._replace(key=key)

    def tell(self, state, x, fitness):
        best = jnp.argmin(jnp.where(jnp.isnan(fitness), jnp.inf, fitness))
        return state._replace(mean=x[best], sigma=state.sigma * self.shrink)

    def mean(self, state):
        return state.mean

    def scale(self, state):
        return state.sigma


@pytest.mark.parametrize("name", sorted(es.STRATEGIES))
def test_every_built_in_strategy_is_a_natural_evolution_strategy(name):
    strategy = es.STRATEGIES[name]()
    assert isinstance(strategy, es.NES) and isinstance(strategy, es.Strategy)
    assert strategy.name == name


def test_a_strategy_of_ones_own_runs_in_minimize_with_restarts():
    result = es.minimize(es.sphere, jnp.ones(3), RandomSearch(), sigma0=1.0,
                         max_evaluations=4000, tol_x=1e-3, restarts=2, seed=0)
    # σ = 0.9^g falls below tol_x after 66 generations in each run; each restart doubles λ
    # through with_popsize: 66 · (8 + 16 + 32) evaluations.
    assert result.stop_reason == "tol_x (after 2 restarts)"
    assert result.evaluations == 66 * (8 + 16 + 32)
    assert result.f < 1e-3


def test_with_popsize_keeps_openai_es_pairs_even():
    assert es.openai_es(popsize=10).with_popsize(15).popsize == 16
    assert es.snes().with_popsize(15).popsize == 15
    state = es.snes().with_popsize(15).init(jax.random.key(0), jnp.zeros(4))
    assert es.snes().with_popsize(15).population_size(state) == 15


def test_a_strategy_that_is_not_one_is_a_clear_type_error():
    class Duck:
        def init(self, key, x0, sigma0):
            return x0

    with pytest.raises(TypeError, match=r"strategy must be a name of scorefn.es.STRATEGIES.*got Duck"):
        es.minimize(es.sphere, jnp.ones(3), Duck())
    with pytest.raises(TypeError, match="abstract"):
        type("Incomplete", (es.Strategy,), {})()


@pytest.mark.parametrize("make, options, match", [
    (es.xnes, {"popsize": 1}, "popsize must be an int >= 2, got 1"),  # every utility 0
    (es.snes, {"popsize": 0}, "popsize must be an int >= 2"),
    (es.bernoulli, {"popsize": 2.5}, "popsize must be an int >= 2"),
    (es.xnes, {"lr_mean": 0.0}, r"lr_mean must be a finite number in \(0, ∞\)"),
    (es.xnes, {"lr_b": float("nan")}, "lr_b must be a finite number"),
    (es.snes, {"lr_scale": -0.1}, "lr_scale must be a finite number"),
    (es.bernoulli, {"learning_rate": -1.0}, "learning_rate must be a finite number"),
    (es.categorical, {"damping": -1e-3}, r"damping must be a finite number in \[0, ∞\)"),
    (es.openai_es, {"learning_rate": float("nan")}, "learning_rate must be a finite number"),
    (es.openai_es, {"sigma_decay": 0.0}, "sigma_decay must be a finite number"),
    (es.openai_es, {"weight_decay": -0.5}, "weight_decay must be a finite number"),
])
def test_options_out_of_range_are_errors_naming_them(make, options, match):
    with pytest.raises(ValueError, match=match):
        make(**options)


def test_an_optax_schedule_is_a_learning_rate():
    """A schedule is not a number: the range check leaves it to optax, which runs it."""
    import optax

    strategy = es.openai_es(popsize=4, learning_rate=optax.linear_schedule(0.1, 0.01, 100))
    result = es.minimize(es.sphere, jnp.ones(3), strategy, max_evaluations=40, progress=False)
    assert result.evaluations == 40 and result.f < 3.0  # it moved from f(x0) = 3


def test_minimize_checks_its_restarts_and_box():
    x0 = jnp.zeros(3)
    for options, match in [({"restarts": 1.5}, "restarts must be an int >= 0"),
                           ({"restarts": 1, "popsize_factor": float("nan")}, "popsize_factor"),
                           ({"bounds": (-1.0, 1.0), "bound_penalty": -1.0}, "bound_penalty must"),
                           ({"bounds": (float("nan"), 1.0)}, "bounds must not be NaN")]:
        with pytest.raises(ValueError, match=match):
            es.minimize(es.sphere, x0, "snes", max_evaluations=50, **options)
    # an infinite end is a one-sided box
    result = es.minimize(es.sphere, x0, "snes", max_evaluations=200, bounds=(-jnp.inf, 1.0),
                         progress=False)
    assert result.evaluations > 0
