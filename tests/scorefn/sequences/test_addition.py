"""The addition task: its reward by hand, the model's size, and a short run that learns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


@pytest.mark.slow
def test_a_short_run_learns():
    config = addition.Config(warmup_steps=400, steps=80, advantage="rloo",
                             aggregation="sequence_sum")
    out = addition.train(config, seed=0)
    rewards = [h["reward"] for h in out["history"]]
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 0.05, (rewards[:10], rewards[-10:])
    assert out["greedy_last"] > out["greedy_first"]
