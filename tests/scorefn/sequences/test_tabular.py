"""TabularPolicy: the enumeration the sequence tests and the docs' table rest on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sequence_oracle as so

from scorefn import sequences


def test_completions_and_their_probabilities(world):
    tokens, mask = world.policy.completions()
    assert tokens.shape == (15, 3)  # EOS first; a token then EOS; 2·2 ending in EOS; 2·2·2 without
    assert sorted(mask.sum(1).tolist()) == [1] + [2] * 2 + [3] * 12
    probs = np.exp(np.asarray(world.policy.sequence_log_probs(world.params, jnp.asarray(so.PROMPTS))))
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert world.policy.index(tokens).tolist() == list(range(15))
    no_eos = sequences.TabularPolicy(vocab_size=2, max_new_tokens=3, eos_id=None)
    assert no_eos.completions()[0].shape == (8, 3)


def test_loss_moments_mean_is_the_stated_expectation(world):
    prompts = jnp.asarray(so.PROMPTS)
    for options, oracle in (({"advantage": "grpo", "aggregation": "token_mean"}, {}),
                            ({"behaviour": world.behaviour, "clip": (0.2, 0.28)},
                             {"off_policy": True})):
        mean, variance = world.policy.loss_moments(world.params, prompts, world.rewards, 2,
                                                   **options)
        args = {k: v for k, v in options.items() if k != "behaviour"}
        truth = so.expected_gradient(world, **args, **oracle)
        np.testing.assert_allclose(mean, truth, atol=1e-5 * np.abs(truth).max())
        assert variance > 0


def test_loss_moments_variance_matches_draws(world):
    """E‖ĝ − E ĝ‖² by enumeration against the spread of 4,000 drawn batches."""
    options = {"advantage": "rloo"}
    _, variance = world.policy.loss_moments(world.params, jnp.asarray(so.PROMPTS),
                                            world.rewards, 2, **options)
    draws = so.gradient_drawer(world, options, 4_000)(jax.random.key(5))
    drawn = float(np.sum(draws.var(0, ddof=1)))
    assert drawn == pytest.approx(variance, rel=0.1)


def test_too_many_batches_to_enumerate(world):
    with pytest.raises(ValueError, match="too many to enumerate"):
        world.policy.loss_moments(world.params, jnp.asarray(so.PROMPTS), world.rewards, 4)
