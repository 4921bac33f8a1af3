"""The addition task: its reward by hand, the model's size, and a short run that learns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorefn import sequences
from scorefn.sequences import addition


def _tokens(*completions):
    """Completions as text, "|" for EOS, padded with EOS to 4 tokens."""
    rows = [[addition.EOS if c == "|" else addition.VOCAB.index(c) for c in text]
            for text in completions]
    return jnp.array([row + [addition.EOS] * (4 - len(row)) for row in rows])


def test_reward_by_hand():
    answers, lengths = addition.answers_of(np.array([[12, 34]] * 6 + [[55, 66]] * 2))  # 46, 121
    tokens = _tokens("46", "4|", "64", "46|6", "466", "|46", "121", "12|")
    got = np.asarray(addition.reward(tokens, jnp.asarray(answers), jnp.asarray(lengths)))
    # exact; one digit; none in place; exact then junk after EOS; no EOS after the answer;
    # EOS first; exact (three digits); two of three
    np.testing.assert_allclose(got, [2, 0.5, 0, 2, 1, 0, 2, 2 / 3], rtol=1e-6)


def test_model_has_the_peer_size():
    net = addition.model()
    params = net.init(jax.random.key(0), jnp.zeros((1, 6), jnp.int32))["params"]
    assert sum(x.size for x in jax.tree.leaves(params)) == 406_912  # TRL's GPT-2 configuration


def expected_reward_per_prompt(params, pairs, key, samples=8):
    """Each held-out prompt's mean reward over ``samples`` completions at temperature 1."""
    answers, lengths = (jnp.asarray(a) for a in addition.answers_of(pairs))
    roll = sequences.sample_cached(addition.model(), params, jnp.asarray(addition.prompts_of(pairs)),
                                   key, max_new_tokens=4, num_samples=samples, eos_id=addition.EOS)
    rewards = addition.reward(roll.tokens, jnp.repeat(answers, samples, axis=0),
                              jnp.repeat(lengths, samples))
    return np.asarray(rewards).reshape(-1, samples).mean(axis=1)


@pytest.mark.slow
def test_a_short_run_learns():
    """80 RL steps after a short warm start raise the expected reward on 256 held-out prompts
    by more than three standard errors (paired over prompts, the same sampling keys)."""
    config = addition.Config(warmup_steps=400, steps=80, advantage="rloo",
                             aggregation="sequence_sum")
    train_pairs, held_out = addition.split(0)
    warm_key = jax.random.split(jax.random.key(0))[0]  # what train(seed=0) would use
    warm = addition.warm_start(config, warm_key, train_pairs)
    out = addition.train(config, seed=0, params=warm)
    assert not any(x.is_deleted() for x in jax.tree.leaves(warm))  # the step donates copies
    gain = (expected_reward_per_prompt(out["params"], held_out, jax.random.key(99))
            - expected_reward_per_prompt(warm, held_out, jax.random.key(99)))
    assert gain.mean() > 3 * gain.std(ddof=1) / np.sqrt(len(gain)), gain.mean()
    assert len(out["history"]) == 80 and 0 < out["wall_first_step"] < out["wall_rl"]
