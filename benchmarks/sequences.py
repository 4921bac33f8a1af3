"""Sequence-model benchmark: scorefn.sequences against TRL's and tunix's GRPO in one run.

The task and protocol of ../shared/peers/trl_grpo.py: "a+b=" with two-digit a, b, partial-
credit reward in [0, 2], a 2-layer GPT-2 of 406,912 parameters, 750 supervised warm-start
steps, then 200 RL steps of P = 16 prompts × K = 8 completions (T = 4), Adam at 1e-4,
gradients clipped at norm 1, temperature 1, one optimiser step per batch (the ratio is 1).
scorefn runs ``scorefn.sequences.addition.train`` (the same settings) with three estimators:
GRPO as TRL computes it (``advantage="grpo"``, ``aggregation="sequence_mean"``), RLOO
(``"rloo"``, ``"sequence_sum"``: unbiased) and Dr. GRPO (``"dr_grpo"``, ``"constant"``).
tunix's GRPOLearner runs the same protocol (``benchmarks/peers/tunix_grpo.py``: tunix's own
Qwen2 at the same size, since tunix ships no GPT-2; its "vanilla" JAX rollout engine).

The runs go seed by seed (scorefn's three, then each peer's), and a ratio is the median over
seeds of that seed's ratio: this machine's speed drifts by up to 25% over minutes. Each side
warm-starts on its own, so their rewards start from different points; TRL then runs a second
time from scorefn's warm start of the seed (``benchmarks/peers/trl_grpo_from.py``: the same
weights as GPT-2's state dict, checked against scorefn's logits), so that scorefn's GRPO and
TRL's compare at equal samples from the same weights.

Reported per run: RL steps/s and completion tokens/s over the whole RL phase (compilation of
scorefn's step included; TRL: the whole ``trainer.train()``; tunix: ``learner.train()``,
its compilation included), scorefn's steady-state steps/s (after the first step, which
compiles the step for a new configuration), the mean sampled reward of the first and last 10
steps, the greedy reward on 256 held-out prompts before and after RL. Then
the samplers' throughput (plain and cached, at the task's T = 4 and at T = 56), and the
variants' gradients on one batch of the warm-started model (norms and cosines).

    pip install ".[vi]"                                          # flax
    python benchmarks/sequences.py --peer-python /path/to/venv-with-trl/bin/python
    python benchmarks/sequences.py --seeds 0 --skip-peer         # scorefn alone
    ... --tunix-python /path/to/venv-with-tunix/bin/python       # and tunix's GRPOLearner

The TRL peer's venv: ``pip install torch==2.13.0 && pip install trl transformers datasets``;
the tunix peer's (``benchmarks/peers/tunix_grpo.py``): ``pip install google-tunix``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT.parent / "shared" / "peers" / "trl_grpo.py"
TUNIX_PEER = ROOT / "benchmarks" / "peers" / "tunix_grpo.py"
TRL_FROM = ROOT / "benchmarks" / "peers" / "trl_grpo_from.py"
VARIANTS = {"grpo": ("grpo", "sequence_mean"), "rloo": ("rloo", "sequence_sum"),
            "dr_grpo": ("dr_grpo", "constant")}


def gpt2_weights(params, path):
    """scorefn's ``CausalTransformer`` parameters as GPT-2 state-dict arrays in an ``.npz``
    (transformers' ``GPT2LMHeadModel`` names; its Conv1D weights are [in, out], as flax's
    kernels; a head's query columns are h·D … h·D + D − 1 in both), with four prompts and
    answers and the logits scorefn's model gives them, for the peer to check the mapping."""
    import jax
    import numpy as np

    from scorefn.sequences import addition

    p = jax.device_get(params)
    layers = addition.model().num_layers
    out = {"transformer.wte.weight": p["wte"]["embedding"],
           "transformer.wpe.weight": p["wpe"]["embedding"]}
    for i in range(layers):
        attn, h = p[f"CausalSelfAttention_{i}"], f"transformer.h.{i}."
        features = attn["out_bias"].shape[0]
        for name, norm in (("ln_1", p[f"LayerNorm_{2 * i}"]), ("ln_2", p[f"LayerNorm_{2 * i + 1}"])):
            out[h + name + ".weight"], out[h + name + ".bias"] = norm["scale"], norm["bias"]
        qkv = ("query", "key", "value")
        out[h + "attn.c_attn.weight"] = np.concatenate(
            [attn[f"{n}_kernel"].reshape(features, -1) for n in qkv], axis=1)
        out[h + "attn.c_attn.bias"] = np.concatenate([attn[f"{n}_bias"].reshape(-1) for n in qkv])
        out[h + "attn.c_proj.weight"] = attn["out_kernel"].reshape(-1, features)
        out[h + "attn.c_proj.bias"] = attn["out_bias"]
        for name, dense in (("c_fc", p[f"Dense_{2 * i}"]), ("c_proj", p[f"Dense_{2 * i + 1}"])):
            out[h + f"mlp.{name}.weight"], out[h + f"mlp.{name}.bias"] = dense["kernel"], dense["bias"]
    final = p[f"LayerNorm_{2 * layers}"]
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = final["scale"], final["bias"]
    pairs = addition.split(0)[1][:4]
    tokens = np.concatenate([addition.prompts_of(pairs), addition.answers_of(pairs)[0]], axis=1)
    np.savez(path, **{k: np.asarray(v, np.float32) for k, v in out.items()},
             check_tokens=tokens, check_logits=np.asarray(addition.logits_fn(params, tokens)))


def scorefn_runs(seeds, steps, weights_dir=None):
    """scorefn's three estimators from one warm start per seed; with ``weights_dir``, that
    warm start is also written there as GPT-2 weights (``seed<S>.npz``) for the TRL peer."""
    import jax

    from scorefn.sequences import addition

    runs = []
    for seed in seeds:
        config = addition.Config(steps=steps)
        train_pairs, _ = addition.split(0)
        start = time.perf_counter()
        warm = jax.block_until_ready(addition.warm_start(
            config, jax.random.split(jax.random.key(seed))[0], train_pairs))
        wall_warm = time.perf_counter() - start
        if weights_dir is not None:
            gpt2_weights(warm, Path(weights_dir) / f"seed{seed}.npz")
        for name, (advantage, aggregation) in VARIANTS.items():
            out = addition.train(addition.Config(steps=steps, advantage=advantage,
                                                 aggregation=aggregation), seed, params=warm)
            rewards = [h["reward"] for h in out["history"]]
            k = max(1, min(10, steps // 10))
            runs.append({"side": "scorefn", "variant": name, "seed": seed, "steps": steps,
                         "wall_warm_start": wall_warm, "wall_rl": out["wall_rl"],
                         "steps_per_s": steps / out["wall_rl"],
                         "steady_steps_per_s": (steps - 1) / (out["wall_rl"] - out["wall_first_step"]),
                         "tokens_per_s": out["tokens"] / out["wall_rl"],
                         "reward_first": statistics.mean(rewards[:k]),
                         "reward_last": statistics.mean(rewards[-k:]),
                         "greedy_first": out["greedy_first"], "greedy_last": out["greedy_last"],
                         "curve": rewards})
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "curve"}), flush=True)
    return runs


def peer_runs(side, python, script, seeds, steps, extra=()):
    """The peer script's runs, one process per seed: its line of ``key=value`` results, the
    versions line before it and, where printed, the per-step rewards (``curve [...]``)."""
    runs = []
    for seed in seeds:
        completed = subprocess.run([python, str(script), "--steps", str(steps), "--seed", str(seed),
                                    *extra], capture_output=True, text=True, timeout=1800)
        if completed.returncode:
            raise RuntimeError(f"the {side} peer failed:\n{completed.stderr[-3000:]}")
        lines = completed.stdout.strip().splitlines()
        at = max(i for i, line in enumerate(lines) if "steps_per_s=" in line)
        fields = dict(re.findall(r"(\w+)=([^\s]+)", lines[at]))
        curve = [json.loads(line[len("curve "):]) for line in lines if line.startswith("curve ")]
        runs.append({"side": side, "variant": "grpo", "seed": seed, "steps": steps,
                     "versions": lines[at - 1],
                     **{k: float(fields[k].rstrip("s")) for k in
                        ("wall_sft", "wall_rl", "steps_per_s", "tokens_per_s", "reward_first",
                         "reward_last", "greedy_first", "greedy_last")},
                     **({"curve": curve[-1]} if curve else {})})
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "curve"}), flush=True)
    return runs


def sampler_throughput(repeats=5):
    """Completion tokens/s of the plain and cached samplers, B = 128 (16 prompts × 8)."""
    import jax
    import jax.numpy as jnp

    from scorefn import sequences
    from scorefn.sequences import addition

    net = addition.model()
    params = net.init(jax.random.key(0), jnp.zeros((1, 6), jnp.int32))["params"]
    prompts = jnp.asarray(addition.prompts_of(addition.split(0)[0][:16]))
    rows = []
    for new_tokens in (4, 56):
        for name, run in (("plain", lambda k, t=new_tokens: sequences.sample(
                sequences.flax_logits_fn(net), params, prompts, k, max_new_tokens=t, num_samples=8)),
                          ("cached", lambda k, t=new_tokens: sequences.sample_cached(
                              net, params, prompts, k, max_new_tokens=t, num_samples=8))):
            jax.block_until_ready(run(jax.random.key(0)).tokens)
            times = []
            for i in range(repeats):
                start = time.perf_counter()
                jax.block_until_ready(run(jax.random.key(i + 1)).tokens)
                times.append(time.perf_counter() - start)
            rows.append({"sampler": name, "new_tokens": new_tokens,
                         "tokens_per_s": 128 * new_tokens / statistics.median(times)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _gradient_ms(scoring, params, prompts, roll, rewards, k, repeats):
    import jax

    from scorefn import sequences

    step = jax.jit(jax.grad(lambda p: sequences.loss(scoring(p, prompts, roll), rewards,
                                                     roll.mask, group_size=k)))
    jax.block_until_ready(step(params))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(params))
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def scoring_passes(repeats=10):
    """The loss gradient through ``log_probs`` (teacher-forced) and ``log_probs_cached`` (each
    prompt's positions once per group), ms per call, median of ``repeats``."""
    import jax
    import jax.numpy as jnp

    from scorefn import sequences

    net = sequences.CausalTransformer(vocab_size=15, max_length=128, num_layers=2, num_heads=4,
                                      features=128)
    params = net.init(jax.random.key(0), jnp.zeros((1, 6), jnp.int32))["params"]
    rows = []
    for num_prompts, prompt_length, new_tokens, k in ((16, 6, 4, 8), (16, 48, 8, 8), (8, 96, 4, 16)):
        prompts = jax.random.randint(jax.random.key(1), (num_prompts, prompt_length), 2, 15)
        roll = sequences.sample_cached(net, params, prompts, jax.random.key(0),
                                       max_new_tokens=new_tokens, num_samples=k)
        rewards = jax.random.uniform(jax.random.key(3), (num_prompts * k,))
        row = {"prompts": num_prompts, "prompt_length": prompt_length, "new_tokens": new_tokens,
               "k": k}
        plain = functools.partial(sequences.log_probs, sequences.flax_logits_fn(net))
        cached = functools.partial(sequences.log_probs_cached, net)
        for name, scoring in (("teacher_forced_ms", plain), ("cached_ms", cached)):
            row[name] = _gradient_ms(scoring, params, prompts, roll, rewards, k, repeats)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def gradient_comparison(seed=0, batches=64):
    """The variants' gradients on the warm-started model: mean over ``batches`` batches, each
    variant's norm and cosine with RLOO's (the unbiased direction)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.flatten_util import ravel_pytree

    from scorefn import sequences
    from scorefn.sequences import addition

    config = addition.Config()
    train_pairs, _ = addition.split(0)
    params = addition.warm_start(config, jax.random.split(jax.random.key(seed))[0], train_pairs)
    net = addition.model()
    prompts = jnp.asarray(addition.prompts_of(train_pairs))
    answers, lengths = (jnp.asarray(a) for a in addition.answers_of(train_pairs))
    variants = {**VARIANTS, "dapo": ("grpo", "token_mean")}

    @jax.jit
    def gradients(key):
        pick, draw = jax.random.split(key)
        rows = jax.random.choice(pick, len(train_pairs), (16,), replace=False)
        roll = sequences.sample_cached(net, params, prompts[rows], draw, max_new_tokens=4,
                                       num_samples=8, eos_id=addition.EOS)
        r = addition.reward(roll.tokens, jnp.repeat(answers[rows], 8, 0), jnp.repeat(lengths[rows], 8))
        out = {}
        for name, (advantage, aggregation) in variants.items():
            g = jax.grad(lambda p, a=advantage, agg=aggregation: sequences.loss(
                sequences.log_probs(addition.logits_fn, p, prompts[rows], roll), r, roll.mask,
                group_size=8, advantage=a, aggregation=agg))(params)
            out[name] = -ravel_pytree(g)[0]
        return out

    total = None
    for key in jax.random.split(jax.random.key(100 + seed), batches):
        g = gradients(key)
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    mean = {k: np.asarray(v) / batches for k, v in total.items()}
    ref = mean["rloo"]
    rows = [{"variant": k, "norm": float(np.linalg.norm(v)),
             "norm_over_rloo": float(np.linalg.norm(v) / np.linalg.norm(ref)),
             "cosine_with_rloo": float(v @ ref / np.linalg.norm(v) / np.linalg.norm(ref))}
            for k, v in mean.items()]
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--peer-python", default=os.environ.get("TRL_PYTHON"),
                        help="a venv's python with torch, trl, transformers (the TRL peer)")
    parser.add_argument("--tunix-python", default=os.environ.get("TUNIX_PYTHON"),
                        help="a venv's python with google-tunix (the tunix peer); omitted: skipped")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--only", choices=["scoring"], help="run one part alone")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sequences.json"))
    args = parser.parse_args()

    import jax

    info = {"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
            "cpus": os.cpu_count(), "jax": jax.__version__,
            "flax": importlib.metadata.version("flax"),
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                     capture_output=True, text=True).stdout.strip()}
    print(json.dumps(info), flush=True)
    if args.only == "scoring":
        return scoring_passes() and 0
    results = {"info": info, "samplers": sampler_throughput(), "scoring": scoring_passes(),
               "gradients": gradient_comparison()}
    if not args.skip_peer and not args.peer_python:
        parser.error("--peer-python (a venv with torch, trl, transformers) or --skip-peer")
    # Seed by seed, each side in turn: this machine's speed drifts by up to 25% over minutes,
    # so each seed's ratio compares runs made minutes apart, not a block of runs an hour apart.
    results["runs"] = []
    with tempfile.TemporaryDirectory(prefix="scorefn_gpt2_") as weights_dir:
        for seed in args.seeds:
            results["runs"] += scorefn_runs([seed], args.steps, weights_dir)
            if not args.skip_peer:
                results["runs"] += peer_runs("trl", args.peer_python, PEER, [seed], args.steps)
                # TRL again from scorefn's warm start of this seed: rewards from an equal start
                results["runs"] += peer_runs("trl_from_scorefn", args.peer_python, TRL_FROM,
                                             [seed], args.steps,
                                             ["--weights", f"{weights_dir}/seed{seed}.npz"])
            if args.tunix_python:
                results["runs"] += peer_runs("tunix", args.tunix_python, TUNIX_PEER, [seed],
                                             args.steps)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    report(results)
    plot(results, Path(args.out).with_suffix(".png"))


def report(results):
    runs = results["runs"]
    print("\nside     variant   steps/s   steady   tokens/s  reward first→last   greedy first→last"
          "  (median of seeds)")
    peers = [(side, "grpo") for side in ("trl", "tunix") if any(r["side"] == side for r in runs)]
    matched = [r for r in runs if r["side"] == "trl_from_scorefn"]
    for side, variant in ([("scorefn", v) for v in VARIANTS] + peers
                          + [("trl_from_scorefn", "grpo")] * bool(matched)):
        rs = [r for r in runs if r["side"] == side and r["variant"] == variant]
        med = {k: statistics.median(r[k] for r in rs) for k in
               ("steps_per_s", "tokens_per_s", "reward_first", "reward_last", "greedy_first", "greedy_last")}
        ratio, steady = "", "-"
        if side == "scorefn":
            steady = f"{statistics.median(r['steady_steps_per_s'] for r in rs):.2f}"
            for peer, _ in peers:
                # the ratio of each seed's runs (made one after the other), median over seeds
                speed = {r["seed"]: r["steps_per_s"] for r in runs if r["side"] == peer}
                paired = [(r["steps_per_s"] / speed[r["seed"]],
                           r["steady_steps_per_s"] / speed[r["seed"]]) for r in rs]
                ratio += (f"  ×{statistics.median(p[0] for p in paired):.2f} {peer}'s steps/s"
                          f" (steady ×{statistics.median(p[1] for p in paired):.2f})")
        print(f"{side:8s} {variant:8s} {med['steps_per_s']:8.2f} {steady:>8s} {med['tokens_per_s']:9.0f}  "
              f"{med['reward_first']:.3f} → {med['reward_last']:.3f}      "
              f"{med['greedy_first']:.3f} → {med['greedy_last']:.3f}{ratio}")
    if matched:
        print("\nGRPO from the same weights (scorefn's warm start of the seed): sampled reward, "
              "first → last 10 steps; greedy reward, before → after (each side's 256 held out)")
        for m in matched:
            ours = next(r for r in runs if r["side"] == "scorefn" and r["variant"] == "grpo"
                        and r["seed"] == m["seed"])
            print(f"seed {m['seed']}: " + "; ".join(
                f"{name} {r['reward_first']:.3f} → {r['reward_last']:.3f} "
                f"({r['greedy_first']:.3f} → {r['greedy_last']:.3f})"
                for name, r in (("scorefn", ours), ("TRL", m))))


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def mean_curve(side, variant):
        curves = np.array([r["curve"] for r in results["runs"]
                           if r["side"] == side and r["variant"] == variant and "curve" in r])
        smooth = np.array([np.convolve(c, np.ones(10) / 10, mode="valid") for c in curves])
        return smooth.mean(0), len(curves)

    matched = any(r["side"] == "trl_from_scorefn" for r in results["runs"])
    fig, axes = plt.subplots(1, 1 + matched, figsize=(7 + 5 * matched, 4), sharey=True,
                             squeeze=False)
    for variant in VARIANTS:
        curve, n = mean_curve("scorefn", variant)
        axes[0, 0].plot(curve, label=f"scorefn {variant} (mean of {n} seeds)")
    axes[0, 0].set_title("scorefn's estimators, one warm start per seed")
    if matched:
        for side, label in (("scorefn", "scorefn GRPO"), ("trl_from_scorefn", "TRL GRPO")):
            curve, n = mean_curve(side, "grpo")
            axes[0, 1].plot(curve, label=f"{label} (mean of {n} seeds)")
        axes[0, 1].set_title("GRPO from the same weights (scorefn's warm starts)")
    for ax in axes[0]:
        ax.set_xlabel("RL step (16 prompts × 8 completions)")
        ax.legend()
    axes[0, 0].set_ylabel("sampled reward (10-step mean)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
