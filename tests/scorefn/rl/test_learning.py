"""Every algorithm learns: fixed seeds, fixed budgets, deterministic 20-episode evaluations.

Budgets are about twice the steps each run needed when measured (noted per test), so that
a change that slows learning down noticeably fails.
"""

import pytest

from scorefn import rl


def _solve(env, algo, budget, **options):
    result = rl.train(env, algo, seed=0, total_steps=budget, stop_when_solved=True,
                      progress=False, **options)
    return result


@pytest.mark.slow
@pytest.mark.parametrize("algo,budget,eval_every", [
    ("ppo", 60_000, 5120),         # measured: solved at 20,480 steps
    ("a2c", 300_000, 10_000),      # measured: 140,000
    ("reinforce", 150_000, 16_000),  # measured: about 51,000
    ("trpo", 60_000, 10_240),      # measured: 10,240
])
def test_cartpole_jax_path(algo, budget, eval_every):
    result = _solve("CartPole-v1", algo, budget, eval_every=eval_every)
    assert result.solved_at_steps() is not None, result.history[-1]
    assert result.eval_mean >= 475


@pytest.mark.slow
def test_cartpole_gymnasium_path():
    result = _solve("CartPole-v1", "ppo", 60_000, eval_every=5120, backend="gymnasium")
    assert result.solved_at_steps() is not None, result.history[-1]  # measured: 20,480


@pytest.mark.slow
def test_pendulum_ppo_reaches_minus_200():
    # Continuous actions, state-independent log σ. Measured: -157 after 131,072 steps.
    result = _solve("Pendulum-v1", "ppo", 300_000, eval_every=16_384)
    assert result.eval_mean >= -200, result.history[-1]


@pytest.mark.slow
def test_npg_solves_cartpole():
    # NPG has no line search: a fixed KL step. Measured: 500 at 71,680 steps.
    result = _solve("CartPole-v1", "npg", 150_000, eval_every=10_240)
    assert result.solved_at_steps() is not None, result.history[-1]


@pytest.mark.slow
def test_several_seeds_stop_once_every_seed_has_solved():
    result = rl.train("CartPole-v1", "ppo", seeds=[0, 1, 2], total_steps=100_000, eval_every=5120,
                      stop_when_solved=True, progress=False)
    solved = [result.solved_at_steps(i) for i in range(3)]
    assert None not in solved, result.history[-1]
    # it stops at the evaluation where the last seed first solves, not later, not earlier
    assert result.history[-1]["env_steps"] == max(solved)
