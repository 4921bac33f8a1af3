"""RL benchmark: scorefn.rl against Stable-Baselines3 in one run.

Protocol of ../shared/peers/sb3_cartpole.py and sb3_throughput.py: rl-zoo hyperparameters
(PPO on CartPole: 8 envs, n_steps 32, batch 256, 20 epochs, γ 0.98, λ 0.8, lr 1e-3, clip 0.2;
A2C: 8 envs and SB3's defaults). Both sides use the same settings. Every 5000 env steps
(scorefn: every 20 updates = 5120) a 20-episode deterministic evaluation runs. A run is
solved at the first evaluation with mean ≥ 475 (Acrobot: ≥ -100).

Reported per seed: env steps and training wall seconds until solved. The clock starts
before the environments and the model are built (SB3: make_vec_env and the PPO object;
scorefn: the whole ``rl.train`` call, its compilation included). Evaluation time is
excluded on both sides. Each run is in a fresh process:
- cold: JAX's compilation cache is off;
- warm: the cache was filled by an earlier run of the same program.

Then:
- raw training throughput in env steps/s (updates included);
- 16 seeds trained at once with vmap;
- the compiled rollout's env steps/s for an MLP policy;
- the gymnasium path against SB3.

torch runs with 1 thread, as in the peer scripts.

    pip install ".[bench]"
    python benchmarks/rl.py                     # about 15 minutes
    python benchmarks/rl.py --only ppo --seeds 0

Continuous control (gymnasium MuJoCo, ``pip install "gymnasium[mujoco]"``), not in the default
run: ``--only continuous --peer-python PYTHON``, PYTHON a venv's with stable-baselines3,
torch and gymnasium[mujoco], which runs ``../shared/peers/sb3_mujoco.py`` (SB3 PPO with
CleanRL's settings and observation/reward normalisation). InvertedPendulum-v5: env steps
and wall seconds until the deterministic evaluation (every 10,000 steps on both sides)
reaches 950; both clocks cover the whole run, setup and evaluations included (10 episodes
each). Other tasks run a budget: ``--env Hopper-v5 --steps 1000000 --every 100000`` (about
35 minutes a seed) gives each side's wall time and evaluations; ``--budget`` runs the
budget on InvertedPendulum-v5 too (CleanRL's 1M-step protocol).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

EVAL_EVERY_SB3 = 5000
THRESHOLD = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0}
SB3_SETTINGS = {
    ("ppo", "CartPole-v1"): (dict(n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                                  ent_coef=0.0, learning_rate=1e-3, clip_range=0.2), 8, 100_000),
    ("a2c", "CartPole-v1"): (dict(ent_coef=0.0), 8, 500_000),
    ("ppo", "Acrobot-v1"): (dict(n_steps=256, batch_size=1024, gae_lambda=0.94, gamma=0.99, n_epochs=4,
                                 ent_coef=0.0, learning_rate=1e-3), 16, 500_000),
}


# ------------------------------------------------------------------ workers (fresh processes)
def sb3_solve(algo, env_id, seed):
    import gymnasium as gym
    import torch
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    torch.set_num_threads(1)
    kwargs, n_envs, budget = SB3_SETTINGS[(algo, env_id)]
    t0 = time.time()  # the setup counts, as on scorefn's side
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    model = (PPO if algo == "ppo" else A2C)("MlpPolicy", env, seed=seed, verbose=0, **kwargs)
    eval_env = gym.make(env_id)

    class Stop(BaseCallback):
        def __init__(self):
            super().__init__()
            self.solved, self.t0, self.next, self.eval_time = None, t0, EVAL_EVERY_SB3, 0.0

        def _on_step(self):
            if self.num_timesteps >= self.next:
                self.next += EVAL_EVERY_SB3
                te = time.time()
                m, _ = evaluate_policy(self.model, eval_env, n_eval_episodes=20, deterministic=True)
                self.eval_time += time.time() - te
                if m >= THRESHOLD[env_id]:
                    self.solved = (self.num_timesteps, time.time() - self.t0 - self.eval_time)
                    return False
            return True

    callback = Stop()
    model.learn(budget, callback=callback)
    steps, wall = callback.solved or (None, time.time() - callback.t0 - callback.eval_time)
    return {"solved_at_steps": steps, "wall": wall}


def sb3_throughput(algo, seed, steps=50_000):
    import torch
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    kwargs, n_envs, _ = SB3_SETTINGS[(algo, "CartPole-v1")]
    model = (PPO if algo == "ppo" else A2C)("MlpPolicy", make_vec_env("CartPole-v1", n_envs=n_envs,
                                                                      seed=seed),
                                            seed=seed, verbose=0, **kwargs)
    t0 = time.perf_counter()
    model.learn(steps)
    return {"steps_per_s": model.num_timesteps / (time.perf_counter() - t0)}


def update_equivalence(algo, num_updates=5, seed=0):
    """Feed SB3's own rollouts to scorefn's update, starting from SB3's initial weights, and
    compare the parameters after each update with SB3's: the same algorithm gives the same
    numbers up to float32 rounding."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.env_util import make_vec_env

    from scorefn.rl import defaults, training
    from scorefn.rl.envs import make
    from scorefn.rl.registry import algorithm
    from scorefn.rl.rollout import Transition

    torch.set_num_threads(1)
    kwargs, n_envs, _ = SB3_SETTINGS[(algo, "CartPole-v1")]
    model = (PPO if algo == "ppo" else A2C)("MlpPolicy", make_vec_env("CartPole-v1", n_envs=n_envs,
                                                                      seed=seed),
                                            seed=seed, verbose=0, **kwargs)
    sb3 = model.policy

    def weights():
        def net(layers):
            return {"params": {f"Dense_{i}": {"kernel": jnp.asarray(layer.weight.detach().numpy().T),
                                              "bias": jnp.asarray(layer.bias.detach().numpy())}
                               for i, layer in enumerate(layers)}}
        extractor = sb3.mlp_extractor
        return {"policy": {"net": net([extractor.policy_net[0], extractor.policy_net[2],
                                       sb3.action_net])},
                "value": net([extractor.value_net[0], extractor.value_net[2], sb3.value_net])}

    config = defaults.make_config(algo, "CartPole-v1")
    module = algorithm(algo).module
    policy = training.make_policy(make("CartPole-v1", "gymnax"), config)
    params = weights()
    state = module.State(params, module.optimizer(config).init(params))
    update = jax.jit(lambda s, b: module.update(s, b, jax.random.key(0), policy, config))
    _, callback = model._setup_learn(num_updates * model.n_steps * n_envs, None)
    callback.on_training_start(locals(), globals())
    worst = 0.0
    for _ in range(num_updates):
        model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
        buf = model.rollout_buffer
        # SB3 stores episode starts; a step terminated if the next one starts an episode (no
        # time-limit truncation happens this early).
        terminated = np.concatenate([buf.episode_starts[1:], model._last_episode_starts[None]]).astype(bool)
        with torch.no_grad():
            last_value = sb3.predict_values(torch.as_tensor(model._last_obs)).numpy().reshape(-1)
        batch = Transition(
            obs=jnp.asarray(buf.observations), action=jnp.asarray(buf.actions[..., 0].astype(np.int32)),
            reward=jnp.asarray(buf.rewards), terminated=jnp.asarray(terminated),
            truncated=jnp.zeros(terminated.shape, bool), log_prob=jnp.asarray(buf.log_probs),
            value=jnp.asarray(buf.values), next_value=jnp.asarray(np.concatenate([buf.values[1:],
                                                                               last_value[None]])),
            episode_return=jnp.zeros(terminated.shape))
        before = weights()
        state, _ = update(state, batch)
        model.train()
        after = weights()
        step = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(after),
                                                                jax.tree.leaves(before)))
        gap = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(state.params),
                                                               jax.tree.leaves(after)))
        worst = max(worst, gap / step)
    return {"max_relative_gap": worst, "updates": num_updates}


def scorefn_solve(algo, env_id, seed, backend="auto"):
    from scorefn import rl

    steps_per_update = 256 if (algo, env_id) == ("ppo", "CartPole-v1") else None
    eval_every = 20 * steps_per_update if steps_per_update else 5000
    t0 = time.perf_counter()
    result = rl.train(env_id, algo, seed, SB3_SETTINGS[(algo, env_id)][2], backend=backend,
                      eval_every=eval_every, stop_when_solved=True, progress=False)
    return {"solved_at_steps": result.solved_at_steps(),
            "wall": result.solved_wall_s() if result.solved_at_steps() else result.wall_s,
            "process_s": time.perf_counter() - t0}


def scorefn_mujoco(env_id, seed, steps, every, stop=1):
    """PPO with CleanRL's settings (``scorefn.rl.defaults``) until the env's threshold (with
    ``stop``), or for ``steps`` (tasks without one, or ``stop=0``)."""
    import numpy as np

    from scorefn import rl

    t0 = time.perf_counter()
    # 10 evaluation episodes, as the peer script's
    result = rl.train(env_id, "ppo", seed, steps, eval_every=every, stop_when_solved=bool(stop),
                      eval_episodes=10, progress=False)
    evals = [float(np.mean(row["eval_mean"])) for row in result.history]
    return {"solved_at_steps": result.solved_at_steps(), "wall": time.perf_counter() - t0,
            "best_eval": max(evals), "last_eval": evals[-1],
            "env_steps": int(result.history[-1]["env_steps"])}


def sb3_mujoco(python, env_id, seed, steps, threshold, every):
    """``../shared/peers/sb3_mujoco.py`` in ``python``'s venv: its one line, parsed."""
    import re
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "shared" / "peers" / "sb3_mujoco.py"
    done = subprocess.run([python, str(script), env_id, str(seed), str(steps), str(threshold),
                           str(every)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"sb3_mujoco.py failed:\n{done.stderr[-3000:]}")
    fields = dict(re.findall(r"(\w+)=(\S+)", done.stdout.strip().splitlines()[-1]))
    solved = None if fields["solved_at"] == "None" else int(fields["solved_at"])
    return {"solved_at_steps": solved, "wall": float(fields["wall"]),
            "best_eval": float(fields["best_eval"]), "last_eval": float(fields["last_eval"])}


def continuous_table(seeds, peer_python, env_id="InvertedPendulum-v5", steps=100_000,
                     every=10_000, budget=False):
    """To the task's threshold (``rl.THRESHOLDS``: InvertedPendulum-v5) or, for a task
    without one (Hopper-v5, HalfCheetah-v5) or with ``budget``, ``steps`` each: wall time and
    evaluations."""
    from scorefn import rl

    threshold = rl.THRESHOLDS.get(env_id)
    if threshold is None or budget:
        return budget_table(seeds, peer_python, env_id, steps, every)
    med = statistics.median
    rows = []
    for seed in seeds:  # seed by seed, each side in turn: the machine's speed drifts
        ours = fresh("scorefn_mujoco", env_id, seed, steps, every)
        peer = sb3_mujoco(peer_python, env_id, seed, steps, threshold, every)
        rows.append((ours, peer))
        print(f"ppo {env_id} seed {seed}: SB3 solved at {peer['solved_at_steps']} steps in "
              f"{peer['wall']:.1f}s; scorefn at {ours['solved_at_steps']} steps in "
              f"{ours['wall']:.1f}s", flush=True)
    ratio = med(peer["wall"] / ours["wall"] for ours, peer in rows)
    print(f"ppo {env_id} MEDIAN to {threshold:g}: SB3 {med(p['wall'] for _, p in rows):.1f}s at "
          f"{med(p['solved_at_steps'] or steps for _, p in rows):,.0f} steps; scorefn "
          f"{med(o['wall'] for o, _ in rows):.1f}s at "
          f"{med(o['solved_at_steps'] or steps for o, _ in rows):,.0f} steps; scorefn "
          f"{ratio:.2f}x faster (median of per-seed ratios)", flush=True)


def budget_table(seeds, peer_python, env_id, steps, every):
    med = statistics.median
    rows = []
    for seed in seeds:
        ours = fresh("scorefn_mujoco", env_id, seed, steps, every, 0)
        peer = sb3_mujoco(peer_python, env_id, seed, steps, float("inf"), every)
        rows.append((ours, peer))
        print(f"ppo {env_id} seed {seed}, {steps:,} steps: SB3 {peer['wall']:.0f}s, eval last "
              f"{peer['last_eval']:.0f} best {peer['best_eval']:.0f}; scorefn "
              f"{ours['wall']:.0f}s ({ours['env_steps']:,} steps), eval last "
              f"{ours['last_eval']:.0f} best {ours['best_eval']:.0f}", flush=True)
    ratio = med(p["wall"] / o["wall"] * o["env_steps"] / steps for o, p in rows)
    print(f"ppo {env_id} MEDIAN over {len(rows)} seeds: last eval SB3 "
          f"{med(p['last_eval'] for _, p in rows):.0f}, scorefn "
          f"{med(o['last_eval'] for o, _ in rows):.0f}; scorefn {ratio:.2f}x SB3's steps/s "
          "(median of per-seed ratios)", flush=True)


def scorefn_throughput(algo, seed, steps=200_000):
    from scorefn import rl

    result = rl.train("CartPole-v1", algo, seed, steps, eval_every=steps // 10, progress=False)
    rows = result.history
    first_chunk = rows[0]["wall_s"]
    steady = (rows[-1]["env_steps"] - rows[0]["env_steps"]) / (rows[-1]["wall_s"] - first_chunk)
    return {"steps_per_s": rows[-1]["env_steps"] / rows[-1]["wall_s"], "steady_steps_per_s": steady,
            "first_chunk_s": first_chunk}


def scorefn_many_seeds(num_seeds, steps=100_000):
    """Seeds 0..n-1 in one vmapped PPO run, evaluated every 5120 steps (as in the solve table),
    until every seed has reached 475 at an evaluation."""
    from scorefn import rl

    t0 = time.perf_counter()
    result = rl.train("CartPole-v1", "ppo", seeds=list(range(num_seeds)), total_steps=steps,
                      eval_every=5120, stop_when_solved=True, progress=False)
    solved = [result.solved_at_steps(i) for i in range(num_seeds)]
    return {"wall": result.wall_s, "process_s": time.perf_counter() - t0,
            "solved": sum(s is not None for s in solved), "env_steps": result.history[-1]["env_steps"],
            "median_solved_at": statistics.median(s for s in solved if s is not None)}


def scorefn_rollout_rate(num_envs=2048, num_steps=128, repeats=5):
    import jax

    from scorefn import rl
    from scorefn.rl.rollout import jax_reset, jax_rollout

    env = rl.make("CartPole-v1")
    policy = rl.ActorCritic(env.action_space)
    params = policy.init(jax.random.key(0), env.obs_shape)
    run = jax.jit(lambda c, k: jax_rollout(env, policy, params, c, k, num_steps))
    carry = jax_reset(env, jax.random.key(1), num_envs)
    carry, batch, _ = run(carry, jax.random.key(2))
    jax.block_until_ready(batch)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        carry, batch, _ = run(carry, jax.random.key(3 + i))
        jax.block_until_ready(batch)
        times.append(time.perf_counter() - t0)
    return {"steps_per_s": num_envs * num_steps / statistics.median(times)}


def sample_efficiency(num_seeds=10):
    """Steps to solve PPO CartPole for seeds 0..n-1: scorefn (all seeds in one vmapped run,
    evaluations every 5120 steps) and SB3 (one run per seed, every 5000 steps)."""
    from scorefn import rl

    result = rl.train("CartPole-v1", "ppo", seeds=list(range(num_seeds)), total_steps=61_440,
                      eval_every=5120, progress=False)
    ours = [result.solved_at_steps(i) for i in range(num_seeds)]
    sb3 = [sb3_solve("ppo", "CartPole-v1", s)["solved_at_steps"] for s in range(num_seeds)]
    return {"scorefn": ours, "sb3": sb3}


WORKERS = {"sb3_solve": sb3_solve, "sb3_throughput": sb3_throughput, "scorefn_solve": scorefn_solve,
           "scorefn_throughput": scorefn_throughput, "scorefn_many_seeds": scorefn_many_seeds,
           "scorefn_rollout_rate": scorefn_rollout_rate, "sample_efficiency": sample_efficiency,
           "update_equivalence": update_equivalence, "scorefn_mujoco": scorefn_mujoco}


def fresh(name, *args, cache=None):
    env = dict(os.environ)
    env["SCOREFN_COMPILATION_CACHE"] = cache or "0"
    done = subprocess.run([sys.executable, __file__, "--worker", name, *map(str, args)], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name}{args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _convert(text):
    try:
        return int(text)
    except ValueError:
        return text


# ------------------------------------------------------------------ main
def solve_table(algo, env_id, seeds, backend="auto"):
    med = statistics.median
    with tempfile.TemporaryDirectory() as cache:
        rows = []
        for seed in seeds:
            sb3 = fresh("sb3_solve", algo, env_id, seed)
            cold = fresh("scorefn_solve", algo, env_id, seed, backend)
            fresh("scorefn_solve", algo, env_id, seed, backend, cache=cache)
            warm = fresh("scorefn_solve", algo, env_id, seed, backend, cache=cache)
            rows.append((seed, sb3, cold, warm))
            print(f"{algo} {env_id} [{backend}] seed {seed}: SB3 solved at {sb3['solved_at_steps']} "
                  f"steps in {sb3['wall']:.2f}s; scorefn at {cold['solved_at_steps']} steps in "
                  f"{cold['wall']:.2f}s cold, {warm['wall']:.2f}s warm", flush=True)
    sb3_wall = med(r[1]["wall"] for r in rows)
    cold_wall = med(r[2]["wall"] for r in rows)
    warm_wall = med(r[3]["wall"] for r in rows)
    print(f"{algo} {env_id} [{backend}] MEDIAN: SB3 {sb3_wall:.2f}s, scorefn cold {cold_wall:.2f}s "
          f"({cold_wall / sb3_wall:.3f} of SB3), warm {warm_wall:.2f}s "
          f"({warm_wall / sb3_wall:.3f} of SB3)", flush=True)
    return sb3_wall


def machine():
    versions = {p: importlib.metadata.version(p) for p in
                ("jax", "gymnax", "gymnasium", "flax", "optax", "torch", "stable-baselines3")}
    return f"{platform.machine()}, {os.cpu_count()} cores; " + ", ".join(
        f"{k} {v}" for k, v in versions.items())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", default=["equivalence", "ppo", "throughput", "seeds",
                                                   "rollout", "gymnasium", "a2c", "acrobot",
                                                   "efficiency"])
    ap.add_argument("--worker", nargs="+")
    ap.add_argument("--peer-python", default=None,
                    help="continuous: a venv's python with stable-baselines3 and gymnasium[mujoco]")
    ap.add_argument("--env", default="InvertedPendulum-v5",
                    help="continuous: the MuJoCo task (InvertedPendulum-v5 to its threshold; "
                         "others for --steps)")
    ap.add_argument("--steps", type=int, default=100_000,
                    help="continuous: the step budget (each side)")
    ap.add_argument("--every", type=int, default=10_000,
                    help="continuous: env steps between evaluations (10 episodes each side)")
    ap.add_argument("--budget", action="store_true",
                    help="continuous: run --steps even on a task with a threshold "
                         "(InvertedPendulum-v5 at 1M steps, CleanRL's protocol)")
    args = ap.parse_args()
    if args.worker:
        name, *rest = args.worker
        print(json.dumps(WORKERS[name](*map(_convert, rest))))
        return
    if "continuous" in args.only:
        if not args.peer_python:
            ap.error("--only continuous needs --peer-python (a venv with stable-baselines3)")
        import jax

        print(f"{platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__}, gymnasium "
              f"{importlib.metadata.version('gymnasium')}, mujoco "
              f"{importlib.metadata.version('mujoco')}", flush=True)
        continuous_table(args.seeds, args.peer_python, args.env, args.steps, args.every,
                         args.budget)
        if args.only == ["continuous"]:
            return
    print(machine(), flush=True)
    sb3_ppo_wall = None
    if "equivalence" in args.only:
        for algo in ("ppo", "a2c"):
            gap = fresh("update_equivalence", algo)
            print(f"{algo} update vs SB3's on SB3's rollouts and weights, {gap['updates']} updates: "
                  f"largest parameter gap {gap['max_relative_gap']:.1e} of the update's size",
                  flush=True)
    if "ppo" in args.only:
        sb3_ppo_wall = solve_table("ppo", "CartPole-v1", args.seeds)
    if "throughput" in args.only:
        sb3 = statistics.median(fresh("sb3_throughput", "ppo", s)["steps_per_s"] for s in args.seeds)
        ours = [fresh("scorefn_throughput", "ppo", s) for s in args.seeds]
        total = statistics.median(r["steps_per_s"] for r in ours)
        steady = statistics.median(r["steady_steps_per_s"] for r in ours)
        print(f"PPO throughput (env steps/s, updates included): SB3 {sb3:,.0f}; scorefn "
              f"{total:,.0f} over 200k steps with compilation ({total / sb3:.1f}x), {steady:,.0f} "
              f"after it ({steady / sb3:.1f}x)", flush=True)
    if "seeds" in args.only:
        many = fresh("scorefn_many_seeds", 16)
        reference = f" (SB3 one seed solved in {sb3_ppo_wall:.2f}s)" if sb3_ppo_wall else ""
        print(f"16 PPO seeds at once until all solved: {many['wall']:.2f}s of training "
              f"(compilation included), {many['solved']}/16 solved, the last at "
              f"{many['env_steps']:,} steps, median {many['median_solved_at']:,.0f}{reference}",
              flush=True)
    if "rollout" in args.only:
        rate = fresh("scorefn_rollout_rate")
        print(f"compiled rollout, MLP policy, 2048 CartPole envs × 128 steps: "
              f"{rate['steps_per_s']:,.0f} env steps/s", flush=True)
    if "gymnasium" in args.only:
        solve_table("ppo", "CartPole-v1", args.seeds, backend="gymnasium")
    if "a2c" in args.only:
        solve_table("a2c", "CartPole-v1", args.seeds)
    if "acrobot" in args.only:
        solve_table("ppo", "Acrobot-v1", args.seeds)
    if "efficiency" in args.only:
        steps = fresh("sample_efficiency")
        med = lambda xs: statistics.median(x if x else float("inf") for x in xs)  # noqa: E731
        print(f"PPO CartPole env steps to solve, seeds 0-9: scorefn {steps['scorefn']} (median "
              f"{med(steps['scorefn']):,.0f}); SB3 {steps['sb3']} (median {med(steps['sb3']):,.0f})",
              flush=True)


if __name__ == "__main__":
    main()
