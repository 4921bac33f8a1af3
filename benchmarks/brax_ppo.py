"""brax: scorefn's PPO against brax's own ``brax.training.agents.ppo`` on the same tasks.

Both sides get brax's tuned PPO settings for the task (brax's training notebook: 5-step
unrolls, 32 minibatches, 4 epochs, Adam at 3e-4, γ 0.97, GAE 0.95, clip 0.3, entropy 1e-2,
2,048 environments (Ant: 4,096) and batches of 1,024 (2,048) unrolls) and the same networks
(``--networks``: tanh MLPs of 64 × 64 for the policy and the value, or brax's default ones,
a policy of 4 × 32 and a value function of 5 × 256 with silu; brax is given them through its
``network_factory``) with brax's state-dependent scale, σ = softplus(x) + 0.001 for the
policy network's second half of outputs x (scorefn's ``state_dependent_std`` with
``std_transform="softplus"`` and σ₀ = softplus(0) + 0.001), gradients clipped at norm 0.5, a
constant learning rate and brax's weight of the value loss (0.25 × the mean squared error).
One update is ``num_envs × 80`` env steps on both sides: brax collects 16 unrolls of 5 steps
per environment, scorefn 80 steps per environment, cut into 16 segments of 5. Both normalise
observations (running statistics, updated with each batch before the update trains on it),
both squash a Gaussian with tanh (brax's default; scorefn's ``squash_actions``, or with
``--clip-actions`` a Gaussian clipped to [-1, 1]), and both compute the advantages in every
minibatch of whole 5-step segments with the critic being trained (scorefn's
``recompute_advantages`` with ``gae_horizon=5``; with ``--advantages epoch``, GAE over the
80 steps, recomputed before each epoch instead). What stays each side's own: brax scales
rewards by 10 (its notebook's setting; scorefn's reward scaling is for gymnasium); each side
keeps its own initialisation (brax's lecun-uniform, scorefn's orthogonal, its policy's last
layer scaled by 0.01); brax's policy advantage is r_t + γ v_{t+1} − V(s_t) with v the
λ-return (V-trace's form), scorefn's GAE; brax resets an ended episode to its environment's
first initial state (``--fresh-resets``: fresh ones, as scorefn's), and does not bootstrap
at the time limit (its default), scorefn does.

Reported per task: env steps per second of training once compiled (between the second and
the last evaluation after training began; rollouts and updates, the evaluations (128
deterministic episodes on both sides) not counted: brax's ``training/walltime`` and
scorefn's ``wall_s``), the seconds of the whole call (the process's start, imports,
compilation and evaluations included), the first evaluation at or above the task's
threshold with its training seconds (scorefn's include building the environment and the
networks; both sides compile from scratch, scorefn's compilation caches off), and the last
evaluation. Each side runs in its own process, bounded by ``--timeout``; a side cut short
reports the evaluations it reached.

    python benchmarks/brax_ppo.py --networks brax --out brax.md   # on a GPU
    python benchmarks/brax_ppo.py --quick --out /tmp/brax.md      # small sizes, for a CPU
    # InvertedPendulum on a CPU, an evaluation after each update (about 9 minutes on 2 cores)
    python benchmarks/brax_ppo.py --tasks inverted_pendulum --networks brax --evals 11 \
        --steps 1638400 --timeout 600 --seed 0 --out ip.md
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple


class Task(NamedTuple):
    """brax's notebook settings for a task, and what the benchmark allows it."""

    num_envs: int
    batch_size: int       # unrolls per minibatch (brax's batch_size)
    steps: int            # env steps asked for
    threshold: float      # the return whose first reaching is timed
    physics: str          # brax's default pipeline, which rl.train runs
    timeout: float        # seconds allowed each side


TASKS = {
    # on an H200 its 1,000-step evaluations took about 35 s each (2026-12-04, both sides)
    "inverted_pendulum": Task(2048, 1024, 2_000_000, 950.0, "generalized", 300),
    # 30M steps: on an H200 (2026-12-04) about 55 s of training a side once compiled, and
    # whole calls of about 170 s, so that both sides fit one 10-minute device command
    "ant": Task(4096, 2048, 30_000_000, 2000.0, "generalized", 240),
}
QUICK = {"inverted_pendulum": Task(64, 32, 40_960, 950.0, "generalized", 300)}
UNROLL, MINIBATCHES, EPOCHS, EVALS, EVAL_EPISODES = 5, 32, 4, 6, 128
# Both sides' networks: (policy's hidden layers, value function's, their nonlinearity)
NETWORKS = {"tanh64": ((64, 64), (64, 64), "tanh"),
            "brax": ((32,) * 4, (256,) * 5, "silu")}   # brax's make_ppo_networks defaults
COMMON = dict(learning_rate=3e-4, gamma=0.97, gae_lambda=0.95, clip=0.3, entropy=1e-2,
              max_grad_norm=0.5)


def _restore_device_put_replicated() -> None:
    """brax 0.14's PPO calls ``jax.device_put_replicated``, which jax 0.10 removed: put
    back the replacement JAX's pmap migration guide gives (the value stacked once per
    device, sharded along that axis), so the peer runs unchanged on current jax."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    try:
        jax.device_put_replicated  # noqa: B018
        return
    except AttributeError:
        pass

    def device_put_replicated(value, devices):
        sharding = NamedSharding(Mesh(list(devices), ("devices",)), PartitionSpec("devices"))
        return jax.tree.map(lambda x: jax.device_put(
            jnp.stack([jnp.asarray(x)] * len(devices)), sharding), value)

    jax.device_put_replicated = device_put_replicated


def fresh_reset_wrap(env, episode_length: int, action_repeat: int, randomization_fn=None):
    """brax's training wrappers (``brax.envs.training.wrap``) with one change: an ended
    episode restarts from a fresh initial state, drawn with a key carried in the state,
    instead of from the environment's first one (``AutoResetWrapper`` keeps each
    environment's first reset and returns to it), as scorefn's brax environments do."""
    import jax
    import jax.numpy as jnp
    from brax.envs.wrappers import training

    if randomization_fn is not None:
        raise ValueError("fresh_reset_wrap: domain randomisation is not supported")

    class FreshResetWrapper(training.AutoResetWrapper):
        def reset(self, rng):
            state = self.env.reset(rng)
            state.info["reset_rng"] = rng
            return state

        def step(self, state, action):
            state.info.update(steps=jnp.where(state.done, 0.0, state.info["steps"]))
            state = self.env.step(state.replace(done=jnp.zeros_like(state.done)), action)
            keys = jax.vmap(jax.random.split)(state.info["reset_rng"])
            fresh = self.env.reset(keys[:, 1])
            state.info["reset_rng"] = keys[:, 0]

            def where_done(new, old):
                return jnp.where(state.done.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)

            return state.replace(
                pipeline_state=jax.tree.map(where_done, fresh.pipeline_state,
                                            state.pipeline_state),
                obs=jax.tree.map(where_done, fresh.obs, state.obs))

    env = training.EpisodeWrapper(training.VmapWrapper(env), episode_length, action_repeat)
    return FreshResetWrapper(env)


def run_brax(name: str, task: Task, evals: int, seed: int, networks: str,
             fresh_resets: bool = False) -> None:
    """brax's PPO, printing one JSON row per evaluation as it comes; ``fresh_resets``:
    its training environments restart from fresh initial states (``fresh_reset_wrap``)."""
    import functools

    import flax.linen as nn
    from brax import envs
    from brax.training.agents.ppo import networks as ppo_networks
    from brax.training.agents.ppo import train as ppo

    _restore_device_put_replicated()

    def progress(step, metrics):
        # training/walltime: the epochs' time so far (the first one's compilation included),
        # the evaluations not counted, as scorefn's wall_s
        print(json.dumps({"env_steps": int(step),
                          "wall_s": float(metrics.get("training/walltime", 0.0)),
                          "eval": float(metrics["eval/episode_reward"])}), flush=True)

    policy, value, activation = NETWORKS[networks]
    network = functools.partial(ppo_networks.make_ppo_networks,
                                policy_hidden_layer_sizes=policy,
                                value_hidden_layer_sizes=value,
                                activation={"tanh": nn.tanh, "silu": nn.silu}[activation])
    ppo.train(environment=envs.get_environment(name, backend=task.physics),
              num_timesteps=task.steps, num_envs=task.num_envs, batch_size=task.batch_size,
              unroll_length=UNROLL,
              num_minibatches=MINIBATCHES, num_updates_per_batch=EPOCHS,
              learning_rate=COMMON["learning_rate"], discounting=COMMON["gamma"],
              gae_lambda=COMMON["gae_lambda"], clipping_epsilon=COMMON["clip"],
              entropy_cost=COMMON["entropy"], max_grad_norm=COMMON["max_grad_norm"],
              normalize_observations=True, reward_scaling=10.0, episode_length=1000,
              num_evals=evals, num_eval_envs=EVAL_EPISODES, deterministic_eval=True,
              network_factory=network, seed=seed, progress_fn=progress,
              wrap_env_fn=fresh_reset_wrap if fresh_resets else None)


def run_scorefn(name: str, task: Task, evals: int, seed: int, log_dir: str,
                networks: str, clip_actions: bool = False, advantages: str = "minibatch"
                ) -> None:
    """scorefn's PPO with the same settings; its rows go to ``log_dir/metrics.jsonl``."""
    from scorefn import rl

    policy, value, activation = NETWORKS[networks]

    per_env = task.batch_size * UNROLL * MINIBATCHES // task.num_envs
    per_update = task.num_envs * per_env
    # brax's schedule: an evaluation after each of (evals - 1) stretches of whole updates,
    # as many as reach ``steps`` (brax's also evaluates before training)
    updates = -(-task.steps // ((evals - 1) * per_update))
    # rl.train runs brax's default physics (task.physics names it); the rows are written as
    # they come, so the parent reads them after a time-out too
    rl.train(f"brax:{name}", "ppo", seed, total_steps=updates * (evals - 1) * per_update,
             eval_every=updates * per_update, eval_episodes=EVAL_EPISODES,
             num_envs=task.num_envs, num_steps=per_env, num_epochs=EPOCHS,
             minibatch_size=task.batch_size * UNROLL,
             learning_rate=COMMON["learning_rate"], gamma=COMMON["gamma"],
             gae_lambda=COMMON["gae_lambda"], clip_eps=COMMON["clip"],
             entropy_coef=COMMON["entropy"], max_grad_norm=COMMON["max_grad_norm"],
             # brax's constant learning rate (scorefn's brax default anneals it), and its
             # value loss, 0.5 · vf_loss_coefficient (0.5) · mean squared error
             anneal_lr=False, value_coef=0.25, normalize_observations=True,
             hidden=policy, value_hidden=value, activation=activation,
             squash_actions=not clip_actions,
             # brax's σ: softplus of the policy network's second head, plus 0.001
             state_dependent_std=True, std_transform="softplus",
             log_std_init=math.log(math.log(2.0) + 0.001),
             # brax's: each minibatch's advantages over its 5-step unrolls, current critic
             recompute_advantages=True,
             gae_horizon=UNROLL if advantages == "minibatch" else None,
             progress=False, log_dir=log_dir)


def side(library: str, name: str, task: Task, evals: int, seed: int, timeout: float,
         networks: str, options: dict | None = None) -> dict:
    """One side in a subprocess: its evaluation rows, status and wall seconds;
    ``options`` are the side's own keyword arguments (``run_brax``'s or ``run_scorefn``'s)."""
    log_dir = tempfile.mkdtemp(prefix="brax_ppo_")
    command = [sys.executable, __file__, "--worker", library, "--task", name, "--settings",
               json.dumps([list(task), evals, seed, log_dir, networks, options or {}])]
    # Both sides compile from scratch: scorefn's caches of traced and compiled programs (on
    # by default, keyed by the settings, not the seed) would let a second seed skip it
    env = dict(os.environ, SCOREFN_COMPILATION_CACHE="0")
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env=env)
        status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
        out, err = done.stdout, done.stderr
    except subprocess.TimeoutExpired as error:
        status = f"timed out after {timeout:.0f} s"
        out = (error.stdout or b"").decode(errors="replace")
        err = (error.stderr or b"").decode(errors="replace")
    if library == "scorefn":
        metrics = os.path.join(log_dir, "metrics.jsonl")
        logged = open(metrics).read().splitlines() if os.path.exists(metrics) else []
        rows = [{"env_steps": row["env_steps"], "wall_s": row["wall_s"],
                 "eval": row["eval_mean"]} for row in map(json.loads, logged)]
    else:  # brax's rows are the JSON lines among its output
        rows = [json.loads(line) for line in out.splitlines() if line.startswith('{"env_steps"')]
    shutil.rmtree(log_dir, ignore_errors=True)
    tail = "" if status == "ok" else "\n".join(err.strip().splitlines()[-15:])
    return {"status": status, "rows": rows, "call_s": time.perf_counter() - started,
            "error": tail}


def summary(result: dict, threshold: float) -> dict:
    rows = result["rows"]
    # From the second evaluation after training began: brax compiles its training epoch
    # again on its second call (on 2 CPU cores, quick sizes: 11 s against 0.6 s for the
    # later ones; on an H200, Ant: 14 s against 4 s)
    trained = [r for r in rows if r["env_steps"] > 0][1:]
    rate = None
    if len(trained) >= 2:
        first, last = trained[0], trained[-1]
        rate = (last["env_steps"] - first["env_steps"]) / (last["wall_s"] - first["wall_s"])
    solved = next((r for r in rows if r["eval"] >= threshold), None)
    return {"rate": rate, "solved": solved, "last": rows[-1] if rows else None}


def versions() -> str:
    names = ("jax", "jaxlib", "brax", "mujoco", "flax", "optax")
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="brax_ppo.md")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a CPU")
    parser.add_argument("--tasks", default=None, help="comma-separated, default every task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evals", type=int, default=None,
                        help=f"evaluations, the one before training included (default {EVALS})")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per side (default per task: TASKS)")
    parser.add_argument("--networks", choices=tuple(NETWORKS), default="tanh64",
                        help="both sides' networks: tanh MLPs of 64 × 64 (tanh64) or brax's "
                             "defaults (brax: policy 4 × 32, value 5 × 256, silu)")
    parser.add_argument("--clip-actions", action="store_true",
                        help="scorefn's policy: a Gaussian clipped to the bounds instead of "
                             "brax's tanh-squashed Gaussian (squash_actions)")
    parser.add_argument("--advantages", choices=("minibatch", "epoch"), default="minibatch",
                        help="scorefn's advantages: in each minibatch over 5-step segments, "
                             "as brax's (default), or over the 80 steps before each epoch")
    parser.add_argument("--fresh-resets", action="store_true",
                        help="brax's training environments restart from fresh initial states "
                             "(as scorefn's), not from each one's first (brax's AutoReset)")
    parser.add_argument("--steps", type=int, default=None,
                        help="env steps asked for (default per task: TASKS)")
    parser.add_argument("--libraries", default="brax,scorefn",
                        help="the sides to run, comma-separated (one alone: to rerun it)")
    parser.add_argument("--worker", choices=("brax", "scorefn"), help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        task, evals, seed, log_dir, networks, options = json.loads(args.settings)
        if args.worker == "brax":
            run_brax(args.task, Task(*task), evals, seed, networks, **options)
        else:
            run_scorefn(args.task, Task(*task), evals, seed, log_dir, networks, **options)
        return 0

    import jax

    table = QUICK if args.quick else TASKS
    names = args.tasks.split(",") if args.tasks else list(table)
    if set(names) - set(table):
        parser.error(f"--tasks: unknown {', '.join(sorted(set(names) - set(table)))}; "
                     f"known{' with --quick' if args.quick else ''}: {', '.join(table)}")
    if not set(args.libraries.split(",")) <= {"brax", "scorefn"}:
        parser.error(f"--libraries: brax, scorefn or both; got {args.libraries!r}")
    evals = args.evals or (4 if args.quick else EVALS)
    options = {"brax": {"fresh_resets": args.fresh_resets},
               "scorefn": {"clip_actions": args.clip_actions, "advantages": args.advantages}}
    results = {}
    lines = [f"brax PPO against scorefn PPO ({'quick' if args.quick else 'full'} run), "
             f"{time.strftime('%Y-%m-%d')}, device {jax.devices()[0]}, {versions()}", "",
             "| task (physics) | envs | steps | library | env steps/s once compiled | "
             "call s | first eval ≥ threshold: steps, s | last eval: steps, return | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        task = table[name]._replace(steps=args.steps) if args.steps else table[name]
        results[name] = {}
        summaries = {}
        for library in args.libraries.split(","):
            result = side(library, name, task, evals, args.seed, args.timeout or task.timeout,
                          args.networks, options[library])
            results[name][library] = result
            s = summaries[library] = summary(result, task.threshold)
            rate = f"{s['rate']:,.0f}" if s["rate"] else "–"
            solved = (f"{s['solved']['env_steps']:,}, {s['solved']['wall_s']:.1f}"
                      if s["solved"] else f"not reached ({task.threshold:g})")
            last = (f"{s['last']['env_steps']:,}, {s['last']['eval']:.1f}" if s["last"]
                    else "–")
            lines.append(f"| {name} ({task.physics}) | {task.num_envs:,} | {task.steps:,} | "
                         f"{library} | {rate} | {result['call_s']:.0f} | {solved} | {last} | "
                         f"{result['status']} |")
            print(lines[-1], flush=True)
        if all(summaries.get(lib, {}).get("rate") for lib in ("brax", "scorefn")):
            ratio = summaries["scorefn"]["rate"] / summaries["brax"]["rate"]
            lines.append(f"| {name} | | | scorefn / brax | {ratio:.2f}× | | | | |")
    errors = [(t, lib, r["error"]) for t, sides in results.items() for lib, r in sides.items()
              if r["error"]]
    for task, library, error in errors:
        lines += ["", f"{library} on {task}:", "```", error, "```"]
    text = "\n".join(lines)
    with open(args.out, "w") as fh:
        fh.write(text + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
