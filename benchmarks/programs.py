"""Stochastic-program benchmark: scorefn.programs against dice-mc and Storchastic (PyTorch),
and against a hand-written jitted JAX DiCE surrogate of the same program, in one run.

Protocol of ../shared/peers/dice_chain.py and storchastic_methods.py. Two programs:

- **three-site**: b ~ Bernoulli(σ(a)); y | b ~ Normal(m_b, e^s); c | b ~ Categorical(l + b·shift);
  terms -(y - 1.5)², 2b, r[c] and -0.1 Σ m² (the closed-form problem of
  tests/scorefn/programs). Score function for b and c with a leave-one-out baseline over the
  K particles, pathwise for y: scorefn's defaults. dice-mc: ``cost_node`` and
  ``batch_baseline_term`` (its leave-one-out baseline), y by ``rsample``. Storchastic:
  ``ScoreFunction(baseline_factory="batch_average")`` for b (its leave-one-out baseline over
  the K samples), ``Reparameterization`` for y, ``ScoreFunction`` for c (K = 1 inside b's
  plate, where Storchastic allows no batch baseline).
- **chain**: 20 categorical sites, c_t | c_{t-1} ~ Categorical(W[c_{t-1}] + θ_t), a term
  r(c_t) per site, as in dice_chain.py; plain DiCE (no baseline) for the speed ratio, and
  with leave-one-out baselines (scorefn's default, dice-mc's ``batch_baseline_term``) for
  the variance.

Reported, K = 8 particles:
- µs per gradient estimate after compilation: a jitted call for JAX (dispatch included), a
  forward and backward pass for PyTorch (1 torch thread); median over interleaved rounds;
- scorefn with ``runtime_checks=False`` too: its run-time finiteness check is a host
  callback, and a program with one leaves jax's C++ dispatch fast path (about 20 µs per call);
- for the JAX runners also µs per estimate inside one compiled loop of 100 estimates
  (``lax.map``): the program's own cost without dispatch, for the ratio to the hand-written
  surrogate;
- the gradient variance per parameter at a fixed θ, over R independent estimates (the peers'
  costs are negated terms: the variance is the same). Storchastic's chain takes ~0.4 s per
  estimate, so it gets fewer repeats.

    pip install ".[bench]"
    python benchmarks/programs.py                    # about 6 minutes
    python benchmarks/programs.py --markdown out.md --rounds 7
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree

import scorefn

K, T, C = 8, 20, 5
LOOP = 100  # estimates per compiled call for the dispatch-free JAX timing
TARGET = 1.5
REWARDS = np.array([1.0, -2.0, 0.5], np.float32)
SHIFT = np.array([1.0, -0.5, 0.0], np.float32)
THREE_PARAMS = {"a": 0.3, "m": [-0.5, 1.0], "s": -0.2, "l": [0.2, -0.1, 0.4]}
_rng = np.random.default_rng(0)
CHAIN_W = _rng.normal(size=(C, C)).astype(np.float32)
CHAIN_R = _rng.normal(size=C).astype(np.float32)
CHAIN_THETA = (0.3 * _rng.normal(size=(T, C))).astype(np.float32)
REWARDS_J, SHIFT_J, CHAIN_W_J, CHAIN_R_J = map(jnp.asarray, (REWARDS, SHIFT, CHAIN_W, CHAIN_R))


# ------------------------------------------------------------------ scorefn programs

def three_site(p):
    b = numpyro.sample("b", dist.Bernoulli(logits=p["a"]))
    y = numpyro.sample("y", dist.Normal(p["m"][b.astype(jnp.int32)], jnp.exp(p["s"])))
    c = numpyro.sample("c", dist.Categorical(logits=p["l"] + b * SHIFT_J))
    numpyro.factor("fit", -((y - TARGET) ** 2))
    numpyro.factor("pick", 2.0 * b)
    numpyro.factor("reward", REWARDS_J[c])
    numpyro.factor("reg", -0.1 * jnp.sum(p["m"] ** 2))


def chain(p):
    prev = 0
    for t in range(T):
        c = numpyro.sample(f"c{t}", dist.Categorical(logits=CHAIN_W_J[prev] + p["theta"][t]))
        numpyro.factor(f"r{t}", CHAIN_R_J[c])
        prev = c


# ------------------------------------------------------------------ hand-written JAX DiCE

def magic_box(x):
    return jnp.exp(x - jax.lax.stop_gradient(x))


def leave_one_out(x):
    return jax.lax.stop_gradient((jnp.sum(x) - x) / (x.shape[0] - 1))


def hand_three_site(p, key):
    kb, ky, kc = jax.random.split(key, 3)
    b = jax.random.bernoulli(kb, jax.nn.sigmoid(p["a"]), (K,)).astype(jnp.float32)
    log_b = b * jax.nn.log_sigmoid(p["a"]) + (1 - b) * jax.nn.log_sigmoid(-p["a"])
    y = p["m"][b.astype(jnp.int32)] + jnp.exp(p["s"]) * jax.random.normal(ky, (K,))
    logits = p["l"] + b[:, None] * SHIFT_J
    c = jax.random.categorical(kc, logits)
    log_c = jnp.take_along_axis(jax.nn.log_softmax(logits), c[:, None], 1)[:, 0]
    fit, pick, reward = -((y - TARGET) ** 2), 2.0 * b, REWARDS_J[c]
    surrogate = (magic_box(log_b) * (fit + pick) + magic_box(log_b + log_c) * reward
                 + (1 - magic_box(log_b)) * leave_one_out(fit + pick + reward)
                 + (1 - magic_box(log_c)) * magic_box(log_b) * leave_one_out(reward))
    return jnp.mean(surrogate) - 0.1 * jnp.sum(p["m"] ** 2)


def hand_chain(p, key, baseline=False):
    keys = jax.random.split(key, T)
    prev = jnp.zeros(K, jnp.int32)
    cumulative, out = 0.0, 0.0
    for t in range(T):
        logits = CHAIN_W_J[prev] + p["theta"][t]
        c = jax.random.categorical(keys[t], logits)
        log_c = jnp.take_along_axis(jax.nn.log_softmax(logits), c[:, None], 1)[:, 0]
        cumulative = cumulative + log_c
        out = out + magic_box(cumulative) * CHAIN_R_J[c]
        prev = c
    return jnp.mean(out)


# ------------------------------------------------------------------ PyTorch peers

def torch_peers():
    import dice_mc.torch as dice
    import storch
    import storch.method as sm
    import torch
    from torch.distributions import Bernoulli, Normal, OneHotCategorical

    torch.set_num_threads(1)
    # Storchastic's graph cleanup recurses once per node: the 20-site chain needs more depth.
    sys.setrecursionlimit(100000)
    rewards, shift = torch.tensor(REWARDS), torch.tensor(SHIFT)
    w, r = torch.tensor(CHAIN_W), torch.tensor(CHAIN_R)

    def three_params():
        return {k: torch.tensor(np.asarray(v, np.float32), requires_grad=True)
                for k, v in THREE_PARAMS.items()}

    def chain_params():
        return {"theta": torch.tensor(CHAIN_THETA, requires_grad=True)}

    def flat(p):
        return np.concatenate([p[k].grad.numpy().ravel() for k in sorted(p)])

    def dice_three(p):
        logits_b = p["a"].expand(K)
        b = torch.bernoulli(torch.sigmoid(logits_b)).detach()
        log_b = -torch.nn.functional.binary_cross_entropy_with_logits(logits_b, b, reduction="none")
        y = Normal(p["m"][b.long()], p["s"].exp()).rsample()
        logits_c = p["l"] + b[:, None] * shift
        log_c, c = dice.sample_categorical(logits_c)
        fit, pick, reward = (y - TARGET) ** 2, -2.0 * b, -rewards[c]   # costs
        total = (dice.cost_node(fit + pick, [log_b]) + dice.cost_node(reward, [log_b, log_c])
                 + dice.batch_baseline_term(fit + pick + reward, [log_b])
                 + dice.batch_baseline_term(reward, [log_c])).mean() + 0.1 * (p["m"] ** 2).sum()
        for v in p.values():
            v.grad = None
        total.backward()
        return flat(p)

    def dice_chain(p, baseline):
        prev = torch.zeros(K, dtype=torch.long)
        logps, total = [], 0.0
        for t in range(T):
            logp, c = dice.sample_categorical(w[prev] + p["theta"][t])
            logps.append(logp)
            cost = -r[c]
            total = total + dice.cost_node(cost, logps).mean()
            if baseline:  # each site gets the leave-one-out baseline of its downstream cost
                total = total + dice.batch_baseline_term(cost, logps).mean()
            prev = c
        p["theta"].grad = None
        total.backward()
        return flat(p)

    def storch_three(p):
        storch.reset()
        b = sm.ScoreFunction("b", n_samples=K, baseline_factory="batch_average")(Bernoulli(logits=p["a"]))
        y = sm.Reparameterization("y", n_samples=1)(
            Normal(p["m"][0] + b * (p["m"][1] - p["m"][0]), p["s"].exp()))
        c = sm.ScoreFunction("c", n_samples=1, baseline_factory=None)(
            OneHotCategorical(logits=p["l"] + b.unsqueeze(-1) * shift))
        storch.add_cost((y - TARGET) ** 2, "fit")
        storch.add_cost(-2.0 * b, "pick")
        storch.add_cost(-(c * rewards).sum(-1), "reward")
        storch.add_cost(0.1 * (p["m"] ** 2).sum(), "reg")
        for v in p.values():
            v.grad = None
        storch.backward()
        return flat(p)

    def storch_chain(p):
        storch.reset()
        prev = None
        for t in range(T):
            logits = p["theta"][t] if prev is None else prev @ w + p["theta"][t]
            method = sm.ScoreFunction(f"c{t}", n_samples=K if t == 0 else 1,
                                      baseline_factory="batch_average" if t == 0 else None)
            c = method(OneHotCategorical(logits=logits))
            storch.add_cost(-(c * r).sum(-1), f"r{t}")
            prev = c
        p["theta"].grad = None
        storch.backward()
        return flat(p)

    tp, cp = three_params(), chain_params()
    return {
        "three-site": {
            "dice-mc (LOO)": lambda: dice_three(tp),
            "Storchastic (batch_average)": lambda: storch_three(tp),
        },
        "chain": {
            "dice-mc (no baseline)": lambda: dice_chain(cp, False),
            "dice-mc (LOO)": lambda: dice_chain(cp, True),
            "Storchastic (batch_average)": lambda: storch_chain(cp),
        },
    }, torch.__version__


# ------------------------------------------------------------------ runners

def jax_runners():
    three = {k: jnp.asarray(v, jnp.float32) for k, v in THREE_PARAMS.items()}
    chain_p = {"theta": jnp.asarray(CHAIN_THETA)}

    def jitted(fn, params):
        g = jax.jit(lambda k: ravel_pytree(fn(params, k))[0])
        return g

    return {
        "three-site": {
            "scorefn (defaults: LOO, y pathwise)": (jitted(
                lambda p, k: scorefn.programs.grad(three_site, p, k, num_particles=K), three), three),
            "scorefn (defaults, runtime_checks=False)": (jitted(
                lambda p, k: scorefn.programs.grad(three_site, p, k, num_particles=K,
                                                   runtime_checks=False), three), three),
            "scorefn (b, c enumerated)": (jitted(
                lambda p, k: scorefn.programs.grad(three_site, p, k, num_particles=K,
                                                   estimators={"b": "enumerate", "c": "enumerate"}),
                three), three),
            "hand-written JAX DiCE (LOO)": (jitted(jax.grad(hand_three_site), three), three),
        },
        "chain": {
            "scorefn (no baseline)": (jitted(
                lambda p, k: scorefn.programs.grad(chain, p, k, num_particles=K,
                                                   baselines={f"c{t}": None for t in range(T)}),
                chain_p), chain_p),
            "scorefn (no baseline, runtime_checks=False)": (jitted(
                lambda p, k: scorefn.programs.grad(chain, p, k, num_particles=K, runtime_checks=False,
                                                   baselines={f"c{t}": None for t in range(T)}),
                chain_p), chain_p),
            "scorefn (LOO)": (jitted(
                lambda p, k: scorefn.programs.grad(chain, p, k, num_particles=K), chain_p), chain_p),
            "hand-written JAX DiCE (no baseline)": (jitted(jax.grad(hand_chain), chain_p), chain_p),
        },
    }


def time_call(fn, seconds=0.3):
    """Median µs per call of ``fn`` over a batch of calls lasting about ``seconds``."""
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or calls < 3:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls * 1e6


def variance(samples: np.ndarray) -> np.ndarray:
    return np.asarray(samples, np.float64).var(0, ddof=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--repeats", type=int, default=1000, help="estimates for the variance")
    parser.add_argument("--storch-chain-repeats", type=int, default=100)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--timing-only", action="store_true",
                        help="skip the variances (for repeated timing runs)")
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args(argv)

    jaxr = jax_runners()
    peers, torch_version = ({}, None) if args.skip_torch else torch_peers()
    key = jax.random.key(0)
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
             f"jax {jax.__version__}, numpyro {numpyro.__version__}"
             + ("" if torch_version is None else
                f", torch {torch_version}, dice-mc {importlib.metadata.version('dice-mc')}, "
                f"storchastic {importlib.metadata.version('storchastic')}") + f"; K = {K}.", ""]
    for problem in ("three-site", "chain"):
        calls, loops = {}, {}
        loop_keys = jax.random.split(key, LOOP)
        for name, (g, _) in jaxr[problem].items():
            jax.block_until_ready(g(key))  # compile
            calls[name] = lambda g=g: jax.block_until_ready(g(key))
            loop = jax.jit(lambda ks, g=g: jax.lax.map(g, ks))
            jax.block_until_ready(loop(loop_keys))
            loops[name] = lambda loop=loop, ks=loop_keys: jax.block_until_ready(loop(ks))
        for name, fn in peers.get(problem, {}).items():
            fn()
            calls[name] = fn
        times = {name: [] for name in calls}
        loop_times = {name: [] for name in loops}
        for _ in range(args.rounds):
            for name, fn in calls.items():
                slow = "Storchastic" in name and problem == "chain"
                times[name].append(time_call(fn, 0.3 if not slow else 1.0))
            for name, fn in loops.items():
                loop_times[name].append(time_call(fn, 0.3) / LOOP)
        med = {name: statistics.median(t) for name, t in times.items()}
        loop_med = {name: statistics.median(t) for name, t in loop_times.items()}
        hand = next(n for n in med if n.startswith("hand-written"))
        reference = next(n for n in med if n.startswith("scorefn"))
        # variances are compared with scorefn's leave-one-out setting, the best of each peer
        var_reference = next(n for n in med if n.startswith("scorefn") and ("LOO" in n))

        # variances at the fixed θ
        var = {}
        # Seeds by position, not hash(name): Python salts string hashes per process.
        for index, (name, (g, _)) in enumerate([] if args.timing_only else jaxr[problem].items()):
            keys = jax.random.split(jax.random.fold_in(key, index + 1), args.repeats)
            out = jax.jit(lambda ks, g=g: jax.lax.map(g, ks))(keys)
            var[name] = variance(out)
        for index, (name, fn) in enumerate(({} if args.timing_only else peers.get(problem, {})).items()):
            n = args.storch_chain_repeats if ("Storchastic" in name and problem == "chain") else args.repeats
            import torch

            torch.manual_seed(index + 1)
            var[name] = variance(np.stack([fn() for _ in range(n)]))
            var[name + " R"] = n
        lines += [f"### {problem}", "",
                  "| runner | µs / gradient, one call | ÷ first scorefn row | µs / gradient in a "
                  f"compiled loop of {LOOP} | ÷ hand-written JAX (loop) | total variance | "
                  "max per-parameter variance ÷ scorefn (LOO) | R |",
                  "|---|---|---|---|---|---|---|---|"]
        for name in calls:
            if args.timing_only:
                var[name] = var[var_reference] = np.full(1, np.nan)
            ratio = var[name] / np.maximum(var[var_reference], 1e-30)
            looped = (f"{loop_med[name]:.1f} | {loop_med[name] / loop_med[hand]:.2f}"
                      if name in loop_med else "- | -")
            lines.append(
                f"| {name} | {med[name]:.0f} | {med[name] / med[reference]:.2f} | {looped} | "
                f"{var[name].sum():.4g} | {ratio.max():.3g} | {var.get(name + ' R', args.repeats)} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
