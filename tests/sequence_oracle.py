"""Exact expectations of the sequence losses' gradients on a tabular policy, written from the
formulas stated in ``scorefn.sequences.loss`` in numpy, independently of scorefn's code.

The batch is P = 2 prompts × K = 2 completions (B = 4); every one of the 15⁴ batches of the
15 completions is enumerated, so estimators whose weights couple the whole batch (token means,
REINFORCE++'s batch std) get their exact expectation too.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from scorefn import sequences

PROMPTS = np.array([[1], [2]], np.int32)
K = 2
STD_EPS = 1e-4


def reward_fn(prompt, tokens, length):
    """Content and length both matter: 2s pay, the prompt's own token pays more, EOS pays a
    little and length costs."""
    return (float(np.sum(tokens == 2)) + 1.5 * float(np.sum(tokens == prompt[0]))
            + 0.7 * float(tokens[-1] == 0) - 0.4 * length)


@dataclasses.dataclass
class World:
    policy: sequences.TabularPolicy
    params: jax.Array       # θ
    behaviour: jax.Array    # μ, for the off-policy variants
    ref: jax.Array          # π_ref, for the KL penalties
    rewards: np.ndarray     # [P, N]
    mask: np.ndarray        # [N, T]
    logp: np.ndarray        # [P, N, T] under θ
    logp_mu: np.ndarray     # under μ
    logp_ref: np.ndarray    # under π_ref
    scores: np.ndarray      # [P, N, T, D]: ∇θ log π(y_t | …) of every token, D = table size

    @property
    def num_completions(self) -> int:
        return self.mask.shape[0]


def make_world() -> World:
    policy = sequences.TabularPolicy(vocab_size=3, prompt_length=1, max_new_tokens=3, eos_id=0)
    params = policy.init(jax.random.key(11), scale=0.8)
    behaviour = params + 0.35 * jax.random.normal(jax.random.key(12), params.shape)
    ref = params + 0.5 * jax.random.normal(jax.random.key(13), params.shape)
    prompts = jnp.asarray(PROMPTS)
    _, mask = policy.completions()
    logp_of = jax.jit(lambda p: policy.token_log_probs(p, prompts))
    jac = jax.jacrev(logp_of)(params)  # [P, N, T, rows, V]
    return World(policy, params, behaviour, ref, policy.rewards(PROMPTS, reward_fn), mask,
                 np.asarray(logp_of(params), float), np.asarray(logp_of(behaviour), float),
                 np.asarray(logp_of(ref), float),
                 np.asarray(jac, float).reshape(*jac.shape[:3], -1))


def batches(n: int) -> np.ndarray:
    """Every batch of B = 4 completion indices, [n⁴, 4]; rows 0-1 answer prompt 0, 2-3 prompt 1."""
    return np.array(list(itertools.product(range(n), repeat=2 * K)), np.int64)


def advantages(r: np.ndarray, kind: str) -> np.ndarray:
    """[..., B] rewards to advantages, groups of K = 2 along the last axis."""
    g = r.reshape(*r.shape[:-1], -1, K)
    mean = g.mean(-1, keepdims=True)
    if kind == "none":
        out = g
    elif kind == "rloo":
        out = g - (g.sum(-1, keepdims=True) - g) / (K - 1)
    elif kind == "dr_grpo":
        out = g - mean
    elif kind == "grpo":
        out = (g - mean) / (g.std(-1, ddof=1, keepdims=True) + STD_EPS)
    elif kind == "reinforce_pp":
        c = (g - mean).reshape(r.shape)
        return c / (c.std(-1, keepdims=True) + STD_EPS)
    else:
        raise ValueError(kind)
    return out.reshape(r.shape)


def weights(m: np.ndarray, aggregation: str) -> np.ndarray:
    """[..., B, T] mask to the aggregation weights."""
    b, t = m.shape[-2:]
    length = m.sum(-1, keepdims=True)
    if aggregation == "sequence_sum":
        return np.ones_like(m) / b
    if aggregation == "constant":
        return np.ones_like(m) / (b * t)
    if aggregation == "sequence_mean":
        return np.ones_like(m) / (b * length)
    if aggregation == "token_mean":
        return np.ones_like(m) / m.sum((-2, -1), keepdims=True)
    if aggregation == "token_mean_per_group":
        per_group = m.reshape(*m.shape[:-2], -1, K * t).sum(-1)
        return np.ones_like(m) / (b // K * np.repeat(per_group, K, axis=-1)[..., None])
    raise ValueError(aggregation)


def kl_values(lp, ref, estimator):
    """k̂ per token and its derivative in log π."""
    d = ref - lp
    if estimator == "k1":
        return -d, np.ones_like(d)
    if estimator == "k2":
        return 0.5 * d**2, -d
    return np.expm1(d) - d, 1 - np.exp(d)


def expected_gradient(world: World, *, advantage="rloo", aggregation="sequence_sum",
                      off_policy=False, clip=None, ratio="token", kl_coef=0.0, kl_estimator="k1",
                      kl_in="reward", entropy_coef=0.0) -> np.ndarray:
    """E[−∇L] from the stated formulas, by enumerating every batch: [D]."""
    ys = batches(world.num_completions)                        # [S, B]
    prompt = np.repeat(np.arange(len(PROMPTS)), K)             # [B]
    sampler = world.logp_mu if off_policy else world.logp
    seq_lp = sampler.sum(-1)                                   # [P, N]
    prob = np.exp(seq_lp[prompt, ys].sum(-1))                  # [S]
    m = world.mask[ys].astype(float)                           # [S, B, T]
    lp, ref = world.logp[prompt, ys], world.logp_ref[prompt, ys]
    r = world.rewards[prompt, ys]                              # [S, B]
    if kl_coef and kl_in == "reward":
        r = r - kl_coef * (kl_values(lp, ref, kl_estimator)[0] * m).sum(-1)
    if entropy_coef:
        r = r - entropy_coef * (lp * m).sum(-1)
    a = advantages(r, advantage)[..., None]                    # [S, B, 1]
    w = weights(m, aggregation) * m
    if off_policy:
        log_rho = (lp - world.logp_mu[prompt, ys]) * m
        length = m.sum(-1, keepdims=True)
        if ratio == "sequence":
            s = np.exp(log_rho.sum(-1, keepdims=True) / length)   # [S, B, 1]
            keep = _not_binding(s, a, clip)
            coef = (w.sum(-1, keepdims=True) * s * a * keep / length) * m
        else:
            rho = np.exp(log_rho)
            coef = w * rho * a * _not_binding(rho, a, clip)
    else:
        coef = w * a
    if kl_coef and kl_in == "loss":
        coef = coef - kl_coef * w * kl_values(lp, ref, kl_estimator)[1]
    return _contract(world, ys, prompt, prob[:, None, None] * coef)


def _not_binding(rho, a, clip):
    if clip is None:
        return np.ones_like(rho * a)
    low, high = clip
    return ~(((rho > 1 + high) & (a > 0)) | ((rho < 1 - low) & (a < 0)))


def _contract(world: World, ys, prompt, weighted):
    """Σ_batches Σ_{i,t} weighted[s, i, t] · scores[prompt_i, ys[s, i], t]."""
    n = world.num_completions
    total = np.zeros(world.scores.shape[-1])
    for i, p in enumerate(prompt):
        per_completion = np.zeros((n, weighted.shape[-1]))
        np.add.at(per_completion, ys[:, i], weighted[:, i])
        total += np.einsum("nt,ntd->d", per_completion, world.scores[p])
    return total


def objective_gradient(world: World, rewards: np.ndarray | None = None) -> np.ndarray:
    """∇θ of Σ_y π(y|x) R(x, y) averaged over prompts, by automatic differentiation."""
    rewards = world.rewards if rewards is None else rewards
    g = jax.grad(world.policy.objective)(world.params, jnp.asarray(PROMPTS), jnp.asarray(rewards))
    return np.asarray(g, float).reshape(-1)


def kl_gradient(world: World) -> np.ndarray:
    g = jax.grad(world.policy.kl)(world.params, world.ref, jnp.asarray(PROMPTS))
    return np.asarray(g, float).reshape(-1)


def state_kl_gradient(world: World) -> np.ndarray:
    """E_{y~π}[Σ_t ∇θ KL(π_ref(·|s_t) ‖ π_θ(·|s_t))] with the visited states s_t held fixed,
    averaged over prompts, by automatic differentiation of the per-state KLs."""
    policy, prompts = world.policy, jnp.asarray(PROMPTS)
    tokens, mask = policy.completions()
    n, steps = mask.shape
    full = jnp.concatenate([jnp.repeat(prompts, n, axis=0), jnp.tile(jnp.asarray(tokens), (2, 1))], 1)
    reach = jnp.asarray(np.exp(world.logp.sum(-1)).reshape(-1, 1) * np.tile(mask, (2, 1)))

    def weighted_kl(params):
        log_pi = jax.nn.log_softmax(policy.logits_fn(params, full)[:, :steps], -1)
        log_ref = jax.nn.log_softmax(policy.logits_fn(world.ref, full)[:, :steps], -1)
        kl = jnp.sum(jnp.exp(log_ref) * (log_ref - log_pi), -1)
        return jnp.sum(reach * kl) / len(PROMPTS)

    return np.asarray(jax.grad(weighted_kl)(world.params), float).reshape(-1)


def _completion_index(world):
    tokens, _ = world.policy.completions()
    codes = tokens @ (3 ** np.arange(tokens.shape[1]))
    lookup = np.full(3 ** tokens.shape[1], -1)
    lookup[codes] = np.arange(len(tokens))
    return jnp.asarray(lookup), jnp.asarray(3 ** np.arange(tokens.shape[1]))


def gradient_drawer(world: World, options: dict, chunk: int):
    """A compiled function of a key: −∇θ L of ``chunk`` independent batches through the real
    pipeline, sample → log_probs → loss → jax.grad (B = 4: 2 prompts × 2 samples), [chunk, D].
    ``options`` go to ``sequences.loss``; ``off_policy=True`` samples from ``world.behaviour``."""
    options = dict(options)
    off_policy = options.pop("off_policy", False)
    policy, prompts = world.policy, jnp.asarray(PROMPTS)
    lookup, powers = _completion_index(world)
    rewards_table = jnp.asarray(world.rewards, jnp.float32)
    sampler = world.behaviour if off_policy else world.params
    with_ref = options.get("kl_coef", 0.0) > 0

    def one(key):
        roll = sequences.sample(policy.logits_fn, sampler, prompts, key, max_new_tokens=3,
                                num_samples=K, eos_id=0)
        index = lookup[roll.tokens @ powers]
        rewards = rewards_table[jnp.repeat(jnp.arange(2), K), index]
        ref = sequences.log_probs(policy.logits_fn, world.ref, prompts, roll) if with_ref else None

        def objective(params):
            logp = sequences.log_probs(policy.logits_fn, params, prompts, roll)
            return sequences.loss(logp, rewards, roll.mask, group_size=K, ref_logp=ref,
                                  behaviour_logp=roll.logp if off_policy else None, **options)

        return -jax.grad(objective)(world.params).reshape(-1)

    run = jax.jit(lambda key: jax.vmap(one)(jax.random.split(key, chunk))).lower(
        jax.random.key(0)).compile()
    return lambda key: np.asarray(run(key), np.float64)
