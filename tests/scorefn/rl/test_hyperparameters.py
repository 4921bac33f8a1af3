"""scorefn.rl.hyperparameters: every Config field the table names is checked, by name, in
every algorithm, and every shipped default is inside its range."""

import dataclasses
import math

import pytest

from scorefn import rl
from scorefn.rl import defaults, hyperparameters, registry


def _outside(allowed: hyperparameters.Range) -> list:
    """Values just outside ``allowed`` (and a NaN for the real-valued ones)."""
    if allowed.integer:
        return [int(allowed.low) - 1, 2.5, True]
    values = [math.nan, math.inf]
    if allowed.low > -math.inf:
        values.append(allowed.low if allowed.low_open else allowed.low - 0.5)
    if allowed.high < math.inf:
        values.append(allowed.high if allowed.high_open else allowed.high + 0.5)
    return values


def _inside(allowed: hyperparameters.Range):
    """A value inside ``allowed``: its closed lower end, or just above an open one."""
    if allowed.integer:
        return int(allowed.low)
    if allowed.low == -math.inf:
        return -1.0
    return allowed.low + (1e-3 if allowed.low_open else 0.0)


CASES = [(name, field.name) for name in registry.algorithms()
         for field in dataclasses.fields(registry.algorithm(name).module.Config)
         if field.name in hyperparameters.RANGES]


def test_every_algorithm_has_checked_fields():
    assert {name for name, _ in CASES} == set(registry.algorithms())
    assert len(CASES) >= 40


@pytest.mark.parametrize("algo,field", CASES)
def test_a_value_out_of_range_is_an_error_naming_the_field(algo, field):
    config = registry.algorithm(algo).module.Config
    allowed = hyperparameters.RANGES[field]
    # other fields that depend on this one (gae_horizon <= num_steps) kept consistent
    base = {"num_steps": 64} if "num_steps" in {f.name for f in dataclasses.fields(config)} \
        and field != "num_steps" else {}
    if field == "num_steps" and config is not rl.reinforce.Config:
        return  # an actor-critic asks for >= 1: below
    config(**base, **{field: _inside(allowed)})
    for value in _outside(allowed):
        with pytest.raises(ValueError, match=f"^{field} must be "):
            config(**base, **{field: value})
    if allowed.optional:
        config(**base, **{field: None})


@pytest.mark.parametrize("algo", ["a2c", "ppo", "trpo"])
def test_an_actor_critic_needs_a_step_per_update(algo):
    config = registry.algorithm(algo).module.Config
    config(num_steps=1)
    with pytest.raises(ValueError, match="^num_steps must be an int >= 1, got 0"):
        config(num_steps=0)


def test_the_layer_widths_are_positive_ints():
    rl.ppo.Config(hidden=())  # a linear policy
    for hidden in [(0,), (64, -1), (64.0,), "64", None]:
        with pytest.raises(ValueError, match="^hidden must be a list of positive layer widths"):
            rl.ppo.Config(hidden=hidden)


def test_every_shipped_default_is_in_range():
    """Each per-environment default builds (its Config checks the ranges) and is kept."""
    built = 0
    for algo, envs in defaults.OVERRIDES.items():
        for env_id, overrides in envs.items():
            config = defaults.make_config(algo, env_id)
            assert {k: getattr(config, k) for k in overrides} == overrides
            built += 1
    assert built >= 20


def test_train_refuses_before_building_anything():
    with pytest.raises(ValueError, match="gae_lambda must be a finite number in \\[0, 1\\], got 2"):
        rl.train("CartPole-v1", "ppo", total_steps=1000, progress=False, gae_lambda=2.0)


@pytest.mark.parametrize("options, match", [
    ({"total_steps": 0}, "total_steps must be an int >= 1, got 0"),  # was: the default
    ({"eval_every": 0}, "eval_every must be an int >= 1, got 0"),  # was: the default
    ({"eval_episodes": 0}, "eval_episodes must be an int >= 1"),  # was: ZeroDivisionError
    ({"seeds": []}, r"seeds must be distinct ints, at least one; got \[\]"),  # was: IndexError
    ({"seeds": [3, 3]}, r"seeds must be distinct ints"),  # the same run twice
    ({"seed": -1}, "seed must be an int >= 0, got -1"),
])
def test_train_checks_its_run_arguments(options, match):
    with pytest.raises(ValueError, match=match):
        rl.train("CartPole-v1", "ppo", **{"total_steps": 1000, **options}, progress=False)


def test_evaluate_needs_an_episode():
    with pytest.raises(ValueError, match="episodes must be an int >= 1, got 0"):
        rl.evaluate("CartPole-v1", {}, policy=None, episodes=0)
