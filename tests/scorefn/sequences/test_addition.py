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
    """A short warm start leaves room to learn: the sampled reward rises by more than three
    standard errors of the windows' means, and the greedy reward on held-out pairs rises."""
    config = addition.Config(warmup_steps=250, steps=80, advantage="rloo",
                             aggregation="sequence_sum")
    warm_key = jax.random.split(jax.random.key(0))[0]  # what train(seed=0) would use
    warm = addition.warm_start(config, warm_key, addition.split(0)[0])
    out = addition.train(config, seed=0, params=warm)
    assert not any(x.is_deleted() for x in jax.tree.leaves(warm))  # the step donates copies
    rewards = np.array([h["reward"] for h in out["history"]])
    first, last = rewards[:10], rewards[-10:]
    standard_error = np.sqrt(first.var(ddof=1) / 10 + last.var(ddof=1) / 10)
    assert last.mean() - first.mean() > 3 * standard_error, (first, last)
    assert out["greedy_last"] > out["greedy_first"] + 0.1, out
    assert 0 < out["wall_first_step"] < out["wall_rl"]
