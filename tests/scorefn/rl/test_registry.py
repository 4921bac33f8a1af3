"""scorefn.rl.registry: the contract every algorithm follows, checked, and one registry."""

import types

import jax
import numpy as np
import pytest

from scorefn import rl
from scorefn.rl import a2c, registry
from scorefn.rl.registry import check_contract


@pytest.fixture
def fresh_registry(monkeypatch):
    """The tests' registrations end with the test (other tests list the known algorithms)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.mark.parametrize("name", rl.ALGORITHMS)
def test_every_built_in_algorithm_follows_the_contract(name):
    check_contract(rl.algorithm(name).module)


def test_npg_is_trpo_without_the_line_search_unless_asked():
    assert rl.algorithm("npg").module is rl.algorithm("trpo").module
    assert rl.make_config("npg", "CartPole-v1").line_search is False
    assert rl.make_config("npg", "CartPole-v1", line_search=True).line_search is True
    assert rl.make_config("trpo", "CartPole-v1").line_search is True


def _scaled_a2c():
    """A user's algorithm: A2C with its policy step halved, as a module of its own."""
    module = types.ModuleType("my_half_step_a2c")
    module.Config, module.State, module.episodic, module.init = a2c.Config, a2c.State, False, a2c.init

    def update(state, batch, key, policy, config):
        new, metrics = a2c.update(state, batch, key, policy, config)
        halfway = jax.tree.map(lambda old, step: old + 0.5 * (step - old), state.params, new.params)
        return new._replace(params=halfway), metrics

    module.update = update
    return module


def test_a_registered_algorithm_of_ones_own_trains_like_a_built_in_one(tmp_path, fresh_registry):
    rl.register("half_step_a2c", _scaled_a2c())
    assert "half_step_a2c" in rl.algorithms()
    options = dict(total_steps=800, eval_every=400, progress=False, num_envs=4, num_steps=20)
    ours = rl.train("CartPole-v1", "half_step_a2c", seed=0, checkpoint=str(tmp_path / "c.ckpt"),
                    **options)
    plain = rl.train("CartPole-v1", "a2c", seed=0, **options)
    assert ours.env_steps == plain.env_steps == 800
    # Same rollouts at the first update, then the halved steps make the parameters differ.
    differ = jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b),
                                          ours.params, plain.params))
    assert any(differ)
    assert rl.load_checkpoint(str(tmp_path / "c.ckpt")).algo == "half_step_a2c"


def test_register_refuses_what_breaks_the_contract(fresh_registry):
    broken = types.ModuleType("broken")
    broken.Config = a2c.Config
    with pytest.raises(TypeError, match="broken is not an RL algorithm: it has no State, episodic, "
                                        "init, update"):
        rl.register("broken", broken)
    with pytest.raises(ValueError, match="an algorithm named 'ppo' is already registered"):
        rl.register("ppo", _scaled_a2c())
    with pytest.raises(ValueError, match=r"config_overrides \['max_kl'\] are not fields"):
        rl.register("a2c_with_kl", a2c, max_kl=0.1)
    with pytest.raises(ValueError, match="unknown algorithm 'dqn'; known: a2c,"):
        rl.algorithm("dqn")
