"""``fit``: stochastic optimisation of the ELBO, compiled in chunks of steps.

Each step draws K samples from the guide with ``fold_in(key, step)``, estimates ∇L with
``scorefn.vi.elbo_grad`` (the SVI loss objects ``ELBO``, ``IWAE``, ``VIMCO`` on the model
and the guide as NumPyro programs) and applies an optax update (ascent). Steps run inside one
``lax.scan`` per chunk; between chunks the run reports progress and writes its checkpoint,
so an interrupted run resumes at its last finished chunk and reproduces the uninterrupted
run exactly (every step's key depends only on the step's index).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scorefn import guards, validation
from scorefn.baselines import Ema
from scorefn.runs import (
    Run,
    all_finite,
    describe,
    plot_with_running_mean,
    saved_figure,
    tree_digest,
)
from scorefn.runs.checkpoints import restore
from scorefn.runs.compilation_cache import enable_compilation_cache
from scorefn.runs.compiler_options import BACKEND_O2
from scorefn.runs.devices import mesh_of, on_mesh
from scorefn.runs.export_cache import cached_jit
from scorefn.vi.guides import Guide, auto_guide
from scorefn.vi.model import LatentSite, LogJoint, Model, NumPyroModel, as_model
from scorefn.vi.objectives import elbo, elbo_grad, ema_states, estimator_name

CHECKPOINT_VERSION = 3  # 2: the settings that determine the run; 3: the loss objects draw the samples


@dataclasses.dataclass
class FitResult:
    """The fitted guide and the run's record.

    ``objective`` holds every step's one-sample-set estimate of the ELBO (of L_K for
    ``iwae``/``vimco``); ``final_elbo`` averages the last 100. ``steps_per_s``: the steady
    rate, over the chunks after the first (which compiles); NaN with one chunk.
    """

    model: Model
    guide: Guide
    params: dict[str, Any]
    objective: np.ndarray
    estimator: str
    num_samples: int
    wall_s: float
    steps_per_s: float = float("nan")

    @property
    def steps(self) -> int:
        return int(self.objective.shape[0])

    @property
    def final_elbo(self) -> float:
        return float(np.mean(self.objective[-100:]))

    def elbo(self, key: jax.Array, num_samples: int = 4000) -> float:
        """A fresh Monte Carlo ELBO of the fitted guide, with ``num_samples`` samples."""
        return float(elbo(self.model, self.guide, self.params, key, num_samples))

    def sample(self, key: jax.Array, num_samples: int = 1000) -> dict[str, jax.Array]:
        """Posterior samples from the guide, on the model's (constrained) space."""
        z = self.guide.to_sites(self.guide.sample(self.params, key, num_samples))
        return jax.vmap(self.model.constrain)(z)

    def means(self, key: jax.Array | None = None, num_samples: int = 4000) -> dict[str, jax.Array]:
        """Posterior means under the guide (Monte Carlo over ``num_samples`` draws)."""
        key = jax.random.key(0) if key is None else key
        return {n: jnp.mean(s, axis=0) for n, s in self.sample(key, num_samples).items()}

    def predictive(self, key: jax.Array, num_samples: int = 1000, *args: Any, **kwargs: Any
                   ) -> dict[str, jax.Array]:
        """Draws of every site of the NumPyro model under posterior samples of the latents
        (``numpyro.infer.Predictive``); ``args``/``kwargs`` default to the fitting data."""
        if not isinstance(self.model, NumPyroModel):
            raise TypeError("predictive needs a NumPyro model (a LogJoint has no generative sites)")
        from numpyro.infer import Predictive

        key_z, key_x = jax.random.split(key)
        posterior = self.sample(key_z, num_samples)
        if not args and not kwargs:
            args, kwargs = self.model.args, self.model.kwargs
        return Predictive(self.model.fn, posterior_samples=posterior)(key_x, *args, **kwargs)

    def plot(self, path: str, title: str = "") -> None:
        """Save the ELBO curve (raw per-step estimates and a 100-step running mean)."""
        y = self.objective
        with saved_figure(path) as (_, ax):
            plot_with_running_mean(ax, y, 100)
            finite = y[np.isfinite(y)]
            if finite.size:  # the first steps can be far below the rest: show the converged part
                lo = (np.percentile(finite[len(finite) // 10:], 1) if finite.size > 10
                      else finite.min())
                ax.set_ylim(lo - 0.1 * abs(lo), finite.max() + 0.05 * abs(finite.max()) + 1)
            ax.set_xlabel("step")
            ax.set_ylabel("ELBO" if self.estimator not in ("iwae", "vimco")
                          else f"L_{self.num_samples}")
            ax.set_title(title or f"{self.estimator}, K = {self.num_samples}")
            ax.legend()
            ax.grid(True, alpha=0.3)

    def as_dict(self) -> dict[str, Any]:
        return {"elbo": self.final_elbo, "steps": self.steps, "wall_s": self.wall_s,
                "steps_per_s": None if np.isnan(self.steps_per_s) else self.steps_per_s,
                "estimator": self.estimator, "num_samples": self.num_samples}


def _latents_from_guide(guide: Guide) -> dict[str, LatentSite]:
    params = guide.init()
    latents = {}
    for name, block in guide.blocks.items():
        if len(block.sites) != 1 or block.shapes:
            raise ValueError("a LogJoint model takes a mean_field guide (one block per latent)")
        d = block.dist_fn(params[name])
        shape = tuple(d.batch_shape) + tuple(d.event_shape)
        discrete = bool(getattr(d.support, "is_discrete", False))
        latents[block.sites[0]] = LatentSite(block.sites[0], shape, discrete, len(d.batch_shape),
                                             support=d.support)
    return latents


def _resolve(model: Any, guide: Any, data: Any) -> tuple[Model, Guide]:
    if isinstance(model, LogJoint):
        if not isinstance(guide, Guide):
            raise ValueError("a LogJoint model needs a guide: scorefn.vi.mean_field(families={...})")
        bound = model.bind(_latents_from_guide(guide), tuple(data) if data else ())
        return bound, guide
    m = as_model(model, data)
    if guide is None or isinstance(guide, str):
        guide = auto_guide(m, guide or "mean_field")
    if not isinstance(guide, Guide):
        raise TypeError(f"guide must be a scorefn.vi Guide, 'mean_field', 'full_rank' or None; "
                        f"got {type(guide).__name__}")
    guide.check(m)
    return m, guide


def fit(
    model: Any,
    guide: Guide | str | None,
    data: Any,
    key: jax.Array,
    *,
    estimator: str = "mixed",
    optimizer: optax.GradientTransformation | None = None,
    steps: int = 3000,
    num_samples: int = 1,
    baseline: Any = None,
    control_variate: Any = None,
    checkpoint: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    chunk_size: int = 100,
    progress: bool = True,
    plot: str | None = None,
    devices: int | Sequence[Any] | Mesh | None = None,
) -> FitResult:
    """Maximise the ELBO (``iwae``/``vimco``: L_K) over the guide's parameters.

    Args:
      model: a NumPyro model function, or a ``scorefn.vi.LogJoint``.
      guide: a ``scorefn.vi.guides.Guide``; ``None``/``"mean_field"`` or
        ``"full_rank"`` for the automatic one (NumPyro models).
      data: the model's positional arguments (a tuple) or keyword arguments (a dict).
      key: a PRNG key; step t uses ``fold_in(key, t)``.
      estimator: one of ``"score"``, ``"score_rb"``, ``"pathwise"``, ``"mixed"``, ``"iwae"``,
        ``"vimco"`` (see ``scorefn.vi.objectives``).
      optimizer: an optax optimiser (default ``optax.adam(0.01)``); fed ``-∇L``.
      steps: total number of steps (a resumed run continues up to it).
      num_samples: K, samples from the guide per step.
      baseline: for score-function blocks: a core baseline (``leave_one_out()`` ...) or
        ``scorefn.baselines.ema(decay)``, whose per-site state ``fit`` keeps.
      control_variate: for ``estimator="score"``.
      checkpoint: a file written after every chunk (data only, ``scorefn.runs.checkpoints``);
        ``resume=True`` continues from it (an error when the file does not exist).
      overwrite: a fresh run refuses a ``checkpoint`` that already exists (earlier work is
        never replaced silently); ``overwrite=True`` starts over in its place.
      chunk_size: steps per compiled chunk (progress and checkpoints happen between chunks).
      progress: show a rich progress bar with the running ELBO.
      plot: save the ELBO curve as a PNG there.
      devices: split the data across devices (a count, a device list or a ``jax.sharding.Mesh``;
        ``scorefn.runs.devices``): each data array whose leading axis the device count divides
        is sharded along it, the rest and the parameters replicated, so each device evaluates
        the likelihood of its share of the observations for every guide sample. The same run
        as on one device up to the order of the sums (float32 rounding). A checkpoint resumes
        on any device count.

    JAX's persistent compilation cache is turned on (see
    ``scorefn.enable_compilation_cache``), so a second run of the same fit does not
    compile again.
    """
    validation.check_key(key)
    estimator = estimator_name(estimator)
    validation.check_int(steps, "steps")
    validation.check_int(chunk_size, "chunk_size")  # 0 would loop without end
    enable_compilation_cache()
    model, guide = _resolve(model, guide, data)
    # The default is flattened into one vector (the same steps; a smaller program to compile).
    optimizer = optax.flatten(optax.adam(0.01)) if optimizer is None else optimizer
    params = guide.init()
    opt_state = optimizer.init(params)
    ema = baseline if isinstance(baseline, Ema) else None
    baseline_state = (ema_states(model, guide, params, estimator, num_samples, ema.init)
                      if ema is not None else {})
    settings = None if checkpoint is None else _settings(
        model, guide, data, key, estimator, num_samples, optimizer, params, baseline,
        control_variate)
    run = Run("scorefn.vi", CHECKPOINT_VERSION, checkpoint=checkpoint, resume=resume,
              settings=settings, may_change="steps", progress=progress,
              description=f"vi {estimator}", total=steps, unit="steps", field="ELBO",
              overwrite=overwrite)
    done, history = 0, []
    if run.restored is not None:
        state = run.restored
        params, opt_state, baseline_state = restore(
            (state["params"], state["opt_state"], state["baseline_state"]),
            like=(params, opt_state, baseline_state))
        done, history = int(state["step"]), list(state["history"])
        run.announce_resume(done, steps)

    mesh = mesh_of(devices, "data")
    arrays, bind = _data_arrays(model)
    arrays = [jax.device_put(x, _data_sharding(x, mesh)) if mesh is not None else x
              for x in arrays]

    def step(carry, index, arrays, runtime_checks=True):
        params, opt_state, bstate = carry
        out = elbo_grad(bind(arrays), guide, params, jax.random.fold_in(key, index),
                        estimator=estimator, num_samples=num_samples,
                        baseline=bstate if ema is not None else baseline,
                        control_variate=control_variate, runtime_checks=runtime_checks)
        ascent = jax.tree.map(jnp.negative, out.grad)
        updates, opt_state = optimizer.update(ascent, opt_state, params)
        params = optax.apply_updates(params, updates)
        if ema is not None:
            bstate = {n: ema.update(out.signals[n], s) for n, s in bstate.items()}
        return (params, opt_state, bstate), out.objective

    # key=None: the model cannot be named; the compilation cache still applies. The data's
    # arrays are arguments (not constants), so that they can live split across devices.
    # Without host callbacks (runtime_checks=False), so the compiled chunk can be cached on
    # disk; the loop checks each chunk's ELBO and parameters instead.
    unchecked_step = functools.partial(step, runtime_checks=False)
    run_chunk = cached_jit(lambda carry, idx, arrays: jax.lax.scan(
        lambda c, i: unchecked_step(c, i, arrays), carry, idx), key=None,
        compiler_options=BACKEND_O2)
    checked_step = jax.jit(step)  # with the run-time checks, to replay a failing chunk
    started = time.perf_counter()
    chunks = []  # (steps, seconds) of each chunk run here
    with run:
        run.advance(done)
        while done < steps:
            n = min(chunk_size, steps - done)
            tic = time.perf_counter()
            start = on_mesh((params, opt_state, baseline_state), mesh)
            carry, values = run_chunk(start, jnp.arange(done, done + n), arrays)
            values = np.asarray(values)
            chunks.append((n, time.perf_counter() - tic))
            if not np.all(np.isfinite(values)) or not all_finite(carry[0]):
                # raises, naming the site, if it can
                _replay(functools.partial(checked_step, arrays=arrays), start, done, n)
                bad = done + int(np.flatnonzero(~np.isfinite(values))[0]) if not np.all(
                    np.isfinite(values)) else done + n
                kept = f"; the last good state is in {checkpoint} (step {done})" if checkpoint else ""
                raise FloatingPointError(
                    f"the ELBO estimate became non-finite at step {bad}: lower the learning rate, "
                    f"add a baseline or more samples{kept}")
            params, opt_state, baseline_state = carry
            history.extend(values.tolist())
            done += n
            run.save(params=params, opt_state=opt_state, baseline_state=baseline_state,
                     step=done, history=list(history))
            run.advance(done, f"{np.mean(history[-100:]):.2f}")
    steady = chunks[1:]
    result = FitResult(model, guide, params, np.asarray(history), estimator, num_samples,
                       time.perf_counter() - started,
                       sum(n for n, _ in steady) / sum(t for _, t in steady) if steady
                       else float("nan"))
    if plot:
        result.plot(plot)
    return result


def _data_arrays(model: Model) -> tuple[list[jax.Array], Callable[[list], Model]]:
    """The model's data arrays (the leaves of its arguments with at least one axis) and a
    function that binds other arrays of the same shapes in their place; the other leaves
    (numbers, strings, None) stay as they are."""
    leaves, tree = jax.tree.flatten((model.args, model.kwargs))
    dynamic = [i for i, x in enumerate(leaves)
               if isinstance(x, np.ndarray | jax.Array) and np.ndim(x) >= 1]

    def bind(arrays: list) -> Model:
        replaced = list(leaves)
        for i, x in zip(dynamic, arrays):
            replaced[i] = x
        return model.with_data(*jax.tree.unflatten(tree, replaced))

    return [jnp.asarray(leaves[i]) for i in dynamic], bind


def _data_sharding(x: jax.Array, mesh: Mesh) -> NamedSharding:
    """Split along the leading axis when the device count divides it, else replicated."""
    if x.shape[0] % mesh.size == 0:
        return NamedSharding(mesh, PartitionSpec(mesh.axis_names))
    return NamedSharding(mesh, PartitionSpec())


def _replay(checked_step, carry, start: int, n: int) -> None:
    """Run the chunk's steps one by one with the checks on: the first non-finite log
    density raises its error (which names the model site)."""
    for index in range(start, start + n):
        with guards.runtime_errors(f"fit step {index}"):
            carry, value = checked_step(carry, jnp.asarray(index))
            finite = np.isfinite(np.asarray(value))
        if not finite:
            return


def _settings(model, guide, data, key, estimator, num_samples, optimizer, params, baseline,
              control_variate) -> dict:
    """What determines a fit's trajectory, as its checkpoint records it. The model by its
    function's name and a digest of its data; the guide by its blocks and initial values; the
    optimiser, which optax gives no name to, by its first update of a fixed gradient (another
    learning rate or another optimiser gives another one). ``steps`` may grow on resume."""
    fn = getattr(model, "fn", model)
    probe = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    first_update, _ = optimizer.update(probe, optimizer.init(params), params)
    return {"key": np.asarray(jax.random.key_data(key)).tolist(), "estimator": estimator,
            "num_samples": int(num_samples),
            "model": f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}",
            "data": tree_digest(data), "guide": describe(sorted(guide.blocks)),
            "initial_params": tree_digest(params), "optimizer": tree_digest(first_update),
            "baseline": describe(baseline), "control_variate": describe(control_variate)}
