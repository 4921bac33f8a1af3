"""Every sequence-loss variant's expected gradient, exactly: the real pipeline (sample →
log_probs → loss → jax.grad) averaged over many batches against the expectation enumerated
from the stated formula (tests/sequence_oracle.py), with z-tests from the standard error and
a planted-bias twin (the exact value off by 10%) that each test must reject."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sequence_oracle as so
from closed_forms import z_scores

from scorefn import sequences

Z_MAX = 4.5  # per coordinate, ~100 coordinates: a false alarm has probability ~7e-4 per test
TWIN = 1.10  # the planted bias: a 10% error in scale, as a wrong normaliser would make
CHUNK, MAX_BATCHES = 4_000, 400_000

ON_POLICY = [dict(advantage=a, aggregation=g) for a in sequences.ADVANTAGES
             for g in sequences.AGGREGATIONS]
OFF_POLICY = [
    dict(off_policy=True),
    dict(off_policy=True, clip=(0.2, 0.28)),
    dict(off_policy=True, clip=(0.1, 0.1), advantage="grpo", aggregation="token_mean"),
    dict(off_policy=True, ratio="sequence", clip=(0.03, 0.04), aggregation="sequence_mean"),
    dict(off_policy=True, ratio="sequence", aggregation="sequence_mean"),
]
PENALTIES = [dict(kl_coef=0.3, kl_estimator=e, kl_in=p) for p in sequences.KL_PLACES
             for e in ("k1", "k2", "k3")] + [dict(entropy_coef=0.2),
                                             dict(kl_coef=0.3, kl_in="loss", kl_estimator="k3",
                                                  aggregation="token_mean", advantage="grpo")]
VARIANTS = ON_POLICY + OFF_POLICY + PENALTIES


def _label(options):
    return ",".join(f"{k}={v}" for k, v in options.items()) or "default"


def projection_z(draws: np.ndarray, truth: np.ndarray) -> float:
    """z of the mean along the truth's direction: sensitive to an error in scale."""
    unit = truth / np.linalg.norm(truth)
    along = draws @ unit
    return float((along.mean() - np.linalg.norm(truth)) / (along.std(ddof=1) / math.sqrt(len(along))))


def sized_draws(world, options: dict, truth: np.ndarray, seed: int) -> np.ndarray:
    """Enough batches that the twin's 10% error sits 9 standard errors from the truth,
    sized from a pilot chunk's own spread."""
    draw = so.gradient_drawer(world, options, CHUNK)
    keys = iter(jax.random.split(jax.random.key(seed), MAX_BATCHES // CHUNK))
    pilot = draw(next(keys))
    spread = (pilot @ (truth / np.linalg.norm(truth))).std(ddof=1)
    needed = math.ceil((9 * spread / ((TWIN - 1) * np.linalg.norm(truth))) ** 2)
    assert needed <= MAX_BATCHES, f"{needed} batches needed: the test would be too slow"
    chunks = [pilot] + [draw(next(keys)) for _ in range(math.ceil(needed / CHUNK) - 1)]
    return np.concatenate(chunks)


@pytest.mark.parametrize("options", VARIANTS, ids=_label)
def test_expected_gradient_matches_enumeration(world, options):
    truth = so.expected_gradient(world, **options)
    draws = sized_draws(world, options, truth, seed=7)
    z = z_scores(draws, truth)
    assert np.all(np.abs(z) < Z_MAX), f"max |z| = {np.abs(z).max():.2f} ({len(draws)} batches)"
    assert abs(projection_z(draws, truth)) < Z_MAX
    # The planted-bias twin: the same test against a value 10% off must fail.
    assert abs(projection_z(draws, TWIN * truth)) >= Z_MAX


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_stated_expectations_in_closed_form(world):
    """The table of ``sequences.loss``: the enumerated expectations equal the closed forms
    computed by automatic differentiation of exact objectives (∇J, ∇E[R/|y|], ∇KL, …)."""
    grad_j = so.objective_gradient(world)
    lengths = world.mask.sum(-1)
    length_normalised = so.objective_gradient(world, world.rewards / lengths)
    per_prompt_j = (np.exp(world.logp.sum(-1)) * world.rewards).sum(1, keepdims=True)
    score_of_inverse_length = so.objective_gradient(world, per_prompt_j / lengths)
    grad_kl = so.kl_gradient(world)

    def entropy(params):
        log_p = world.policy.sequence_log_probs(params, jnp.asarray(so.PROMPTS))
        return -jnp.mean(jnp.sum(jnp.exp(log_p) * log_p, axis=1))

    grad_entropy = np.asarray(jax.grad(entropy)(world.params), float).reshape(-1)
    e = lambda **o: so.expected_gradient(world, **o)  # noqa: E731
    claims = {
        "none": (e(advantage="none"), grad_j),
        "rloo": (e(), grad_j),
        "dr_grpo: (K-1)/K": (e(advantage="dr_grpo"), (so.K - 1) / so.K * grad_j),
        "constant: 1/T": (e(aggregation="constant"), grad_j / 3),
        "none x sequence_mean": (e(advantage="none", aggregation="sequence_mean"), length_normalised),
        "rloo x sequence_mean": (e(aggregation="sequence_mean"),
                                 length_normalised - score_of_inverse_length),
        "dr_grpo x sequence_mean": (e(advantage="dr_grpo", aggregation="sequence_mean"),
                                    (so.K - 1) / so.K * (length_normalised - score_of_inverse_length)),
        "k1 in the reward": (e(kl_coef=0.3), grad_j - 0.3 * grad_kl),
        "k1 in the loss": (e(kl_coef=0.3, kl_in="loss"), grad_j),
        "entropy bonus": (e(entropy_coef=0.2), grad_j + 0.2 * grad_entropy),
        "k3 in the loss": (e(kl_coef=0.3, kl_in="loss", kl_estimator="k3"),
                           grad_j - 0.3 * so.state_kl_gradient(world)),
    }
    for name, (enumerated, closed_form) in claims.items():
        assert _rel(enumerated, closed_form) < 1e-5, name
    # ... and the biased ones are not their target (nor a multiple of it): the claims of bias.
    # (The KL penalties' parts alone against -β ∇KL.)
    plain = e()
    for biased, target in ((dict(advantage="grpo"), grad_j), (dict(aggregation="token_mean"), grad_j),
                           (dict(off_policy=True), grad_j),
                           (dict(kl_coef=0.3, kl_estimator="k3"), -0.3 * grad_kl),
                           (dict(kl_coef=0.3, kl_estimator="k2", kl_in="loss"), -0.3 * grad_kl)):
        value = e(**biased) - (plain if "kl_coef" in biased else 0)
        best_scale = value @ target / (target @ target)
        assert _rel(value, best_scale * target) > 0.02, biased
