"""``train`` and ``evaluate``: the driver shared by every algorithm.

On a gymnax or brax environment the whole loop (rollout → update, repeated) is compiled: chunks of
updates run as one ``lax.scan``; with ``seeds=[...]`` the chunk is ``vmap``-ped over seeds,
so 16 seeds train as one program. The training wall time counts the setup (environments,
networks, compilation) and the chunks. Between chunks: a deterministic evaluation (not
counted in it), the metrics row, the progress bar and the checkpoint. On a
gymnasium environment the rollout steps a vector env in Python and the update is jitted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scorefn import runs
from scorefn.rl import defaults
from scorefn.rl.envs import (
    THRESHOLDS,
    GymnasiumEnv,
    JaxEnv,
    make,
    resolve_backend,
)
from scorefn.rl.evaluation import evaluate_gymnasium, evaluate_jax
from scorefn.rl.networks import ActorCritic
from scorefn.rl.normalization import ObservationNormalizer, RewardScaler, initial_stats
from scorefn.rl.registry import algorithm
from scorefn.rl.rollout import GymnasiumRunner, jax_reset, jax_rollout
from scorefn.runs import all_finite, checkpoints
from scorefn.runs.checkpoints import restore
from scorefn.runs.compilation_cache import enable_compilation_cache
from scorefn.runs.compiler_options import BACKEND_O2, FAST_COMPILE
from scorefn.runs.devices import mesh_of, on_mesh, split
from scorefn.runs.export_cache import cached_jit
from scorefn.runs.processes import to_host
from scorefn.validation import check_int

CHECKPOINT_VERSION = 4  # 3: the hyperparameters as the run's settings; 4: data only


@dataclasses.dataclass
class TrainResult:
    """Trained parameters (a leading seed axis when several seeds were trained) and the
    metrics: one row per evaluation."""

    env_id: str
    algo: str
    params: Any
    history: list[dict]
    config: Any
    policy: ActorCritic
    seeds: list[int]
    # the running observation statistics the policy was trained with (normalize_observations)
    observation_stats: dict | None = None

    @property
    def env_steps(self) -> int:
        return int(self.history[-1]["env_steps"]) if self.history else 0

    @property
    def wall_s(self) -> float:
        return float(self.history[-1]["wall_s"]) if self.history else 0.0

    @property
    def eval_mean(self) -> float:
        return float(np.mean(self.history[-1]["eval_mean"])) if self.history else float("nan")

    def solved_at_steps(self, seed_index: int = 0) -> int | None:
        threshold = THRESHOLDS.get(self.env_id)
        if threshold is None:
            return None
        for row in self.history:
            if np.atleast_1d(row["eval_mean"])[seed_index] >= threshold:
                return int(row["env_steps"])
        return None

    def solved_wall_s(self, seed_index: int = 0) -> float | None:
        steps = self.solved_at_steps(seed_index)
        if steps is None:
            return None
        return next(float(r["wall_s"]) for r in self.history if r["env_steps"] == steps)

    def plot(self, path: str) -> None:
        steps = np.array([r["env_steps"] for r in self.history])
        evals = np.array([np.atleast_1d(r["eval_mean"]) for r in self.history])
        with runs.saved_figure(path) as (_, ax):
            for i, seed in enumerate(self.seeds):
                ax.plot(steps, evals[:, i], marker="o", ms=3, label=f"seed {seed}")
            if self.env_id in THRESHOLDS:
                ax.axhline(THRESHOLDS[self.env_id], color="k", ls="--", lw=0.8, label="solved")
            ax.set_xlabel("env steps")
            ax.set_ylabel("deterministic evaluation return")
            ax.set_title(f"{self.algo} on {self.env_id}")
            ax.grid(True, alpha=0.3)
            if len(self.seeds) <= 8:
                ax.legend()


def make_policy(env, config) -> ActorCritic:
    """The policy and value networks ``config`` describes, for ``env``'s spaces."""
    return ActorCritic.from_config(env.action_space, config, obs_ndim=len(env.obs_shape))


def _checked_seeds(seed: int, seeds: Any) -> list[int]:
    """``seeds`` as a list of distinct ints (one run each), or ``[seed]``."""
    seeds = [check_int(s, "seed", 0) for s in ([seed] if seeds is None else seeds)]
    if not seeds or len(set(seeds)) < len(seeds):
        raise ValueError(f"seeds must be distinct ints, at least one; got {seeds}")
    return seeds


def _check_policy(env, policy: ActorCritic, params) -> None:
    d = jax.eval_shape(lambda p: policy.dist(p, jnp.zeros(env.obs_shape)).sample(jax.random.key(0)),
                       params["policy"])
    want = () if env.action_space.discrete else env.action_space.shape
    if tuple(d.shape) != tuple(want):
        raise ValueError(f"the policy's actions have shape {tuple(d.shape)} but {env.id}'s action "
                         f"space needs {tuple(want)}")


def load_checkpoint(path: str, seed_index: int = 0) -> TrainResult:
    """A ``TrainResult`` (policy parameters of one seed, history, config) from a
    checkpoint written by ``train``, e.g. for ``evaluate``. The file is data only
    (``scorefn.runs.checkpoints``): reading it never runs code, and a damaged file, or one of
    another kind, is a ``CheckpointError`` naming it."""
    payload = checkpoints.load(path, kind="scorefn.rl", version=CHECKPOINT_VERSION)
    try:
        config = algorithm(payload["algo"]).module.Config(**payload["settings"])
        backend, seeds = payload["backend"], payload["seeds"]
        env = make(payload["env"], backend)
    except (KeyError, TypeError, ValueError) as error:
        raise checkpoints.CheckpointError(f"{path} does not describe an rl run ({error})") from None
    if not 0 <= seed_index < len(seeds):
        raise ValueError(f"seed_index must be in [0, {len(seeds)}) for {path}, which holds seeds "
                         f"{seeds}; got {seed_index}")
    policy = make_policy(env, config)
    if backend == "gymnasium":
        env.close()
    params = restore(payload["params"])
    stats = payload.get("observation_stats")
    if payload.get("batched"):  # the seed's parameters and statistics
        params, stats = jax.tree.map(lambda x: x[seed_index], (params, stats))
    _check_policy(env, policy, params)
    # numpy float64, as saved (not restore's JAX float32): the statistics the run used
    return TrainResult(payload["env"], payload["algo"], params, payload["history"], config, policy,
                       [payload["seeds"][seed_index]], stats)


def evaluate(result_or_env: Any, params: Any = None, *, policy: ActorCritic | None = None,
             episodes: int = 20, seed: int = 0, backend: str = "auto",
             observation_stats: dict | None = None) -> float:
    """Deterministic evaluation: ``evaluate(result)`` or ``evaluate(env_id, params, policy=...)``
    (``observation_stats``: a run's normalisation statistics; a ``TrainResult`` brings its own)."""
    check_int(episodes, "episodes")
    if isinstance(result_or_env, TrainResult):
        env_id, params, policy = result_or_env.env_id, result_or_env.params, result_or_env.policy
        observation_stats = result_or_env.observation_stats
        if len(result_or_env.seeds) > 1:  # the first seed's parameters and statistics
            params, observation_stats = jax.tree.map(lambda x: x[0], (params, observation_stats))
    else:
        env_id = result_or_env
        if params is None or policy is None:
            raise ValueError("evaluate(env_id, params, policy=...) needs the params and the policy")
    env = make(env_id, backend)
    _check_policy(env, policy, params)
    if isinstance(env, JaxEnv):
        stats = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), observation_stats)
        return float(jax.jit(lambda p, k, s: evaluate_jax(env, policy, p, k, episodes, s))(
            params["policy"], jax.random.key(seed), stats))
    env.close()
    return evaluate_gymnasium(env_id, policy, params["policy"], seed, episodes, observation_stats)


def train(
    env: str = "CartPole-v1",
    algo: str = "ppo",
    seed: int = 0,
    total_steps: int | None = None,
    *,
    seeds: list[int] | None = None,
    backend: str = "auto",
    eval_every: int | None = None,
    eval_episodes: int = 20,
    devices: Any = None,
    vectorization_mode: str = "sync",
    workers: int | None = None,
    stop_when_solved: bool = False,
    log_dir: str | None = None,
    checkpoint: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    **hyperparameters: Any,
) -> TrainResult:
    """Train ``algo`` on ``env`` and return the parameters and metrics.

    Args:
      env: an environment id: gymnax's or brax's (``"brax:hopper"``; both compiled end to
        end) or gymnasium's.
      algo: ``"reinforce"``, ``"a2c"``, ``"ppo"``, ``"trpo"`` or ``"npg"``.
      seed: the seed of one run.
      seeds: several distinct seeds trained at once (vmap; gymnax and brax), instead of ``seed``.
      total_steps: environment steps (default per algorithm and env, ``scorefn.rl.defaults``).
      eval_every: env steps between deterministic evaluations (default ~ total / 20).
      devices: split the compiled run (gymnax, brax) across devices: a count, a list of
        devices or a ``jax.sharding.Mesh`` (``scorefn.runs.devices``): the seeds, or with one
        seed its ``num_envs`` environments; the same run as on one device up to float32
        rounding. A checkpoint resumes on any device count.
      vectorization_mode: a gymnasium run's vector environment: ``"sync"`` (its copies
        stepped in turn in this process), ``"async"`` (a subprocess per copy, stepped in
        parallel on the machine's cores) or ``"ray"`` (``workers`` Ray actors, default one
        per copy, on this machine or the Ray cluster ``ray.init(address=...)`` joined): for
        simulators whose step outweighs the exchange. The same run each way; a resume may
        change it.
      stop_when_solved: stop once every seed has reached the env's threshold at an evaluation
        (with one seed: at its first evaluation at or above it).
      log_dir: write ``metrics.csv``, ``metrics.jsonl``, ``learning_curve.png`` (and TensorBoard
        events when ``tensorboardX`` is installed) there.
      checkpoint: write the run state there after every evaluation, and the state of the
        best evaluation so far beside it (``best_checkpoint_path(checkpoint)``); data only
        (``scorefn.runs.checkpoints``), so reading one never runs code.
      resume: continue from ``checkpoint`` (an error when it does not exist). A gymnax or
        brax run resumes exactly. A gymnasium run resumes its learner exactly (params, optimiser,
        key, steps) but its environments start new episodes: their Python state cannot be
        saved.
      overwrite: a fresh run refuses a ``checkpoint`` or ``log_dir`` metrics that already
        exist (earlier work is never replaced silently); ``True`` starts over in their
        place.
      hyperparameters: fields of the algorithm's ``Config`` (e.g. ``learning_rate=3e-4``).
    """
    enable_compilation_cache()
    # The wall time counts the setup too (environment, networks, compiling their init).
    setup_started = time.perf_counter()
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=<path of an earlier run's checkpoint>")
    config = defaults.make_config(algo, env, **hyperparameters)
    module = algorithm(algo).module
    seeds = _checked_seeds(seed, seeds)
    # 0 is an error, not "the default": only None asks for the default
    total_steps = (defaults.total_steps(algo, env) if total_steps is None
                   else check_int(total_steps, "total_steps"))
    eval_every = None if eval_every is None else check_int(eval_every, "eval_every")
    check_int(eval_episodes, "eval_episodes")
    if getattr(config, "anneal_lr", False) and not config.total_updates:
        # The updates the loop runs for total_steps (it runs whole updates).
        config = dataclasses.replace(config, total_updates=-(-total_steps // (
            config.num_envs * config.num_steps)))
    resolved = resolve_backend(env, backend)
    if resolved in ("gymnax", "brax"):
        if vectorization_mode != "sync" or workers is not None:
            given = (f"vectorization_mode={vectorization_mode!r}" if vectorization_mode != "sync"
                     else "workers")
            raise ValueError(f"{given} is for gymnasium environments; {env} runs on "
                             f"{resolved}, compiled with its environments vmapped")
        environment = make(env, resolved)
    else:  # gymnasium, or an unknown id: make's error lists the known ones
        environment = make(env, backend, num_envs=config.num_envs, seed=seeds[0],
                           vectorization_mode=vectorization_mode, workers=workers)
    policy = make_policy(environment, config)
    steps_per_update = config.num_envs * (environment.max_episode_steps if module.episodic
                                          else config.num_steps)
    eval_every = eval_every or max(steps_per_update, total_steps // 20)
    updates_per_chunk = max(1, round(eval_every / steps_per_update))
    if getattr(config, "scale_rewards", False) and not isinstance(environment, GymnasiumEnv):
        hint = " (backend='gymnasium' to run it there)" if environment.backend == "gymnax" else ""
        raise ValueError(f"scale_rewards applies to gymnasium environments; {env} runs on "
                         f"{environment.backend}{hint} (normalize_observations applies to "
                         "every backend)")
    mesh = mesh_of(devices, "seeds" if len(seeds) > 1 else "environments")
    if isinstance(environment, GymnasiumEnv):
        if len(seeds) > 1 or mesh is not None:
            raise ValueError(f"{'several seeds at once' if len(seeds) > 1 else 'devices='} "
                             "need a gymnax or brax environment (compiled; gymnasium steps in "
                             "Python)")
        runner = _GymnasiumLoop(environment, policy, module, config, seeds[0], updates_per_chunk)
    else:
        runner = _JaxLoop(environment, policy, module, config, seeds, updates_per_chunk,
                          eval_episodes, mesh)
    # No _check_policy here: train builds the policy from the environment's action space.
    history: list[dict] = []
    wall = time.perf_counter() - setup_started
    run = runs.Run("scorefn.rl", CHECKPOINT_VERSION, checkpoint=checkpoint, resume=resume,
                    settings=dataclasses.asdict(config), what="hyperparameters",
                    # anneal_lr's schedule is set by total_steps: then it stays
                    may_change="" if getattr(config, "anneal_lr", False) else "total_steps",
                    progress=progress, description=f"{algo} {env}",
                    total=total_steps, unit="steps", field="eval", log_dir=log_dir,
                    step_field="env_steps", overwrite=overwrite)
    if run.restored is not None:
        _check_same_run(checkpoint, run.restored, algo, env, seeds, runner.backend)
        runner.restore(run.restored)
        history = run.restored["history"]
        wall += run.restored["wall"]
        run.announce_resume(int(history[-1]["env_steps"]) if history else 0, total_steps,
                            "env step")
    with run, contextlib.closing(environment) if isinstance(environment, GymnasiumEnv) else \
            contextlib.nullcontext():  # an async vector env's subprocesses end with the run
        env_steps = int(history[-1]["env_steps"]) if history else 0
        run.advance(env_steps)
        while env_steps < total_steps:
            started = time.perf_counter()
            metrics, used_steps = runner.run_chunk()
            wall += time.perf_counter() - started
            env_steps += used_steps
            losses = [v for k, v in metrics.items() if k.endswith("loss")]
            if not all(np.all(np.isfinite(v)) for v in losses) or not runner.finite():
                kept = (f"; the last good checkpoint is {checkpoint} ({history[-1]['env_steps']:,} "
                        "env steps)") if checkpoint and history else ""
                raise FloatingPointError(
                    f"{algo} on {env}: a loss or the parameters became NaN/inf after "
                    f"{env_steps:,} env steps; lower the learning rate{kept}")
            eval_mean = runner.evaluate(eval_episodes)
            row = {"env_steps": env_steps, "wall_s": wall, "eval_mean": eval_mean, **metrics}
            history.append(row)
            run.log(row)
            if checkpoint is not None:
                run.save(**runner.state(), params=runner.final_params(), history=history,
                         wall=wall, algo=algo, env=env, seeds=seeds, backend=runner.backend)
                if _is_best(history) and run.main:
                    checkpoints.copy(checkpoint, best_checkpoint_path(checkpoint))
            run.advance(min(env_steps, total_steps), f"{np.mean(eval_mean):.1f}")
            threshold = THRESHOLDS.get(env)
            if stop_when_solved and threshold is not None and np.all(np.max(
                    [np.atleast_1d(r["eval_mean"]) for r in history], axis=0) >= threshold):
                break
    result = TrainResult(env, algo, runner.final_params(), history, config, policy, seeds,
                         runner.observation_stats())
    if log_dir is not None and history:
        result.plot(os.path.join(log_dir, "learning_curve.png"))
    return result


def best_checkpoint_path(checkpoint: str) -> str:
    """Where ``train`` keeps the best evaluation's state: ``run.ckpt`` → ``run.best.ckpt``."""
    root, ext = os.path.splitext(checkpoint)
    return f"{root}.best{ext or '.ckpt'}"


def _is_best(history: list[dict]) -> bool:
    """The last evaluation (mean over seeds) is at least every earlier one."""
    means = [float(np.mean(row["eval_mean"])) for row in history]
    return means[-1] >= max(means)


class _JaxLoop:
    """Chunks of compiled updates on gymnax or brax, vmapped over seeds."""

    def __init__(self, env: JaxEnv, policy, module, config, seeds, updates_per_chunk, episodes,
                 mesh=None):
        self.env, self.policy, self.module, self.config = env, policy, module, config
        self.seeds, self.mesh = seeds, mesh
        self.single = len(seeds) == 1
        # The carry: (learner state, environments, key), and the observation statistics
        # when the run normalises observations (scorefn.rl.normalization).
        self.normalizing = getattr(config, "normalize_observations", False)

        def init_one(seed):
            key = jax.random.key(seed)
            k_init, k_env, key = jax.random.split(key, 3)
            state = module.init(k_init, policy, env, config)
            carry = state, jax_reset(env, k_env, config.num_envs), key
            return carry + (initial_stats(env.obs_shape),) if self.normalizing else carry

        def one_update(carry, _):
            state, env_carry, key, *stats = carry
            key, k_reset, k_roll, k_update = jax.random.split(key, 4)
            if module.episodic:  # whole episodes from fresh starts: unbiased reward-to-go
                env_carry = jax_reset(env, k_reset, config.num_envs)
                num_steps = env.max_episode_steps
            else:
                num_steps = config.num_steps
            env_carry, batch, obs_stats = jax_rollout(env, policy, state.params, env_carry, k_roll,
                                                      num_steps, *stats)
            state, metrics = module.update(state, batch, k_update, policy, config)
            done = batch.terminated | batch.truncated
            metrics["train_return"] = jnp.sum(batch.episode_return) / jnp.maximum(jnp.sum(done), 1)
            metrics["env_steps"] = metrics.get("env_steps", jnp.asarray(batch.reward.size))
            return (state, env_carry, key) + ((obs_stats,) if stats else ()), metrics

        def chunk(carry):
            carry, metrics = jax.lax.scan(one_update, carry, None, length=updates_per_chunk)
            steps = jnp.sum(metrics.pop("env_steps"))
            return carry, jax.tree.map(jnp.mean, metrics), steps

        def evaluate(carry, seed, index):
            key = jax.random.fold_in(jax.random.key(seed + 10_007), index)
            return evaluate_jax(env, policy, carry[0].params["policy"], key, episodes,
                                carry[3] if self.normalizing else None)

        # One seed compiles without the seed axis (a smaller program); several are vmapped.
        batch = (lambda f: f) if self.single else jax.vmap

        def placed(carry):
            # across the mesh: the seeds, or with one seed its environments
            if self.single:
                state, env_carry, *rest = carry
                return state, jax.tree.map(lambda x: split(x, mesh), env_carry), *rest
            return jax.tree.map(lambda x: split(x, mesh), carry)

        def sharded(carry):
            carry, metrics, steps = batch(chunk)(placed(carry))
            return placed(carry), metrics, steps

        # The traced programs are cached on disk: everything they close over is named here.
        key = ("scorefn.rl", module.__name__, env.id, repr(config), policy, updates_per_chunk,
               episodes, self.single)
        packages = ("flax", env.backend, "numpyro", "optax")
        # Seeds are initialised one after another (lax.map), not vmapped: a vmapped orthogonal
        # initialisation is a batched LAPACK QR, which jaxlib's CPU kernel splits into tasks on
        # the same intra-op thread pool it runs on and then waits for; with two such QRs running
        # at once on a 2-thread pool every thread waits and the program never finishes.
        init = init_one if self.single else (lambda seeds: jax.lax.map(init_one, seeds))
        self.carry = cached_jit(init, key=key + ("init",), packages=packages,
                                compiler_options=FAST_COMPILE)(
            seeds[0] if self.single else jnp.asarray(seeds))
        if mesh is None:
            self._chunk = cached_jit(batch(chunk), key=key + ("chunk",), packages=packages,
                                     compiler_options=BACKEND_O2)
        else:  # not exported: the program is partitioned for this mesh
            self._chunk = cached_jit(sharded, key=None, compiler_options=BACKEND_O2)
        # Unoptimised, brax's 1,000-step evaluations run 5× slower (InvertedPendulum, 128
        # episodes, 2 CPU cores: 9.5 s, not 1.8); gymnax's short ones compile 2× faster.
        self._evaluate = cached_jit(batch(evaluate), key=key + ("evaluate",), packages=packages,
                                    compiler_options=FAST_COMPILE if env.backend == "gymnax"
                                    else BACKEND_O2)
        self.eval_index = 0

    def run_chunk(self):
        # The algorithms trace their updates without host callbacks (runtime_checks=False),
        # so the compiled chunk can be cached on disk; the driver checks losses and
        # parameters after each chunk instead.
        self.carry, metrics, steps = self._chunk(on_mesh(self.carry, self.mesh))
        metrics, steps = to_host((metrics, steps))  # gathered when seeds span processes
        steps = np.atleast_1d(np.asarray(steps))
        metrics = {k: np.asarray(v) for k, v in metrics.items()}
        return ({k: (float(v) if self.single else v.tolist()) for k, v in metrics.items()},
                int(steps[0]))

    def evaluate(self, episodes):
        index = np.int32(self.eval_index)
        self.eval_index += 1
        if self.single:
            return float(self._evaluate(self.carry, np.int32(self.seeds[0]), index))
        return np.asarray(to_host(self._evaluate(self.carry, np.asarray(self.seeds, np.int32),
                                                 np.full(len(self.seeds), index)))).tolist()

    def observation_stats(self) -> dict | None:
        """The observation statistics (a leading seed axis with several seeds), as numpy."""
        if not self.normalizing:
            return None
        return {k: np.asarray(v, np.float64) for k, v in to_host(self.carry[3]).items()}

    def finite(self):
        return all_finite(to_host(self.carry[0].params))

    def final_params(self):
        return to_host(self.carry[0].params)

    @property
    def backend(self) -> str:
        return self.env.backend

    def state(self) -> dict:
        """What a checkpoint needs to resume this loop exactly."""
        state = {"carry": self.carry, "eval_index": self.eval_index, "batched": not self.single}
        if self.normalizing:  # beside the carry, for load_checkpoint and evaluation
            state["observation_stats"] = self.observation_stats()
        return state

    def restore(self, payload: dict) -> None:
        self.carry = restore(payload["carry"], like=self.carry)
        self.eval_index = payload["eval_index"]


class _GymnasiumLoop:
    """Python rollouts on a gymnasium vector env, jitted updates."""

    def __init__(self, env: GymnasiumEnv, policy, module, config, seed, updates_per_chunk):
        if module.episodic:
            raise ValueError("REINFORCE's whole-episode rollouts need a gymnax environment; use "
                             "a2c, ppo, trpo or npg on gymnasium")
        self.env, self.policy, self.module, self.config, self.seed = env, policy, module, config, seed
        key = jax.random.key(seed)
        k_init, self.key = jax.random.split(key)
        # The traced programs are cached on disk: everything they close over is named here.
        cache_key = ("scorefn.rl gymnasium", module.__name__, env.id, repr(config), policy)
        packages = ("flax", "numpyro", "optax")
        self.learner = cached_jit(lambda k: module.init(k, policy, env, config),
                                key=cache_key + ("init",), packages=packages,
                                compiler_options=FAST_COMPILE)(k_init)
        self.runner = GymnasiumRunner(
            env, policy,
            ObservationNormalizer(env.obs_shape) if config.normalize_observations else None,
            RewardScaler(env.num_envs, config.gamma) if config.scale_rewards else None)
        self._update = cached_jit(lambda s, b, k: module.update(s, b, k, policy, config),
                                  key=cache_key + ("update",), packages=packages,
                                  compiler_options=BACKEND_O2)
        self.eval_index = 0
        self.updates_per_chunk = updates_per_chunk

    def run_chunk(self):
        metrics_list, steps = [], 0
        for _ in range(self.updates_per_chunk):
            self.key, k_roll, k_update = _split3(self.key)
            batch = self.runner.rollout(self.learner.params, k_roll, self.config.num_steps)
            self.learner, metrics = self._update(self.learner, batch, k_update)
            steps += int(batch.reward.size)
            metrics_list.append({k: float(v) for k, v in metrics.items()})
        return {k: float(np.mean([m[k] for m in metrics_list])) for k in metrics_list[0]}, steps

    def evaluate(self, episodes):
        self.eval_index += 1
        return evaluate_gymnasium(self.env.id, self.policy, self.learner.params["policy"],
                                  seed=self.seed * 7919 + self.eval_index, episodes=episodes,
                                  observation_stats=self.observation_stats())

    def observation_stats(self) -> dict | None:
        normalizer = self.runner.observations
        return None if normalizer is None else normalizer.state()

    def finite(self):
        return all_finite(self.learner.params)

    def final_params(self):
        return self.learner.params

    backend = "gymnasium"

    def state(self) -> dict:
        """What a checkpoint needs to resume the learner exactly (not the environments), and
        the normalisation statistics the policy depends on."""
        state = {"learner": self.learner, "key": self.key, "eval_index": self.eval_index}
        if self.runner.observations is not None:
            state["observation_stats"] = self.runner.observations.state()
        if self.runner.rewards is not None:
            state["reward_stats"] = self.runner.rewards.state()
        return state

    def restore(self, payload: dict) -> None:
        self.learner, self.key = restore((payload["learner"], payload["key"]),
                                         like=(self.learner, self.key))
        self.eval_index = payload["eval_index"]
        if self.runner.observations is not None:
            self.runner.observations = ObservationNormalizer(
                self.env.obs_shape, payload["observation_stats"])
        if self.runner.rewards is not None:
            self.runner.rewards = RewardScaler(self.env.num_envs, self.config.gamma,
                                               payload["reward_stats"])
        # New episodes, seeded by where the run stopped: the old ones' state is gone.
        self.runner.reset(seed=self.seed + 7919 * self.eval_index)



_split3 = jax.jit(lambda key: tuple(jax.random.split(key, 3)))


def _check_same_run(path, payload, algo, env, seeds, backend) -> None:
    """A checkpoint resumes only its own algorithm, environment, seeds and backend (the
    hyperparameters are the run's settings, checked by ``runs.Run``)."""
    if payload["backend"] != backend:
        raise ValueError(f"{path} holds a {payload['backend']} run; this run uses {backend} "
                         f"(resume it with backend={payload['backend']!r})")
    if (payload["algo"], payload["env"], payload["seeds"]) != (algo, env, list(seeds)):
        raise ValueError(f"{path} holds a run of {payload['algo']} on {payload['env']} with seeds "
                         f"{payload['seeds']}; resume it with the same algorithm, env and seeds")

