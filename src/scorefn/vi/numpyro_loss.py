r"""scorefn's estimators as the loss of numpyro's SVI: keep your model, guide and SVI loop.

``ELBO`` is a ``numpyro.infer.elbo.ELBO``. Its loss is minus the surrogate objective of
``scorefn.programs`` for the stochastic program

    guide(*args) → z (the guide's sample sites are the program's latent sites),
    terms: log p(x, z) of every model site (the model replayed on z) and -log q(z),

so ``jax.grad`` of the loss, which is what ``SVI.update`` takes, is an unbiased estimate of
-∇ELBO with per-site estimators (``"score"``, ``"rloo"``, ``"arm"``, ``"disarm"``,
``"rebar"``, ``"enumerate"``, ``"pathwise"``, ...), baselines and credit assignment through
both the guide and the model: a local latent z_i in a plate is weighted only by the terms
with its index i. Guides may hold networks (``numpyro.contrib.module.flax_module``), discrete
sites and ``numpyro.plate(..., subsample_size=B)``: each step's key draws a fresh minibatch,
and the terms carry the plate's N/B scale once, so the gradient is unbiased for the
full-data ELBO (numpyro 0.22's ``TraceGraph_ELBO`` applies the scale twice to its score
term; tested here against the closed form).

``IWAE`` and ``VIMCO`` are the multi-sample bound L_K = E[log (1/K) Σ_k w_k],
w_k = p(x, z_k) / q(z_k), as losses of the same kind: IWAE with the doubly reparameterised
gradient (DReG) for reparameterisable guides, VIMCO with its leave-one-out learning signal
(``scorefn.baselines.leave_one_out_log_mean``) for any guide. Their K particles share
one minibatch: the bound is a log-mean over particles of the same data.

``amortized_posterior`` gives q(z | x_new) of a trained guide for new data.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro import handlers
from numpyro.infer.elbo import ELBO as NumPyroELBO
from numpyro.primitives import Messenger, mutable

from scorefn import guards, programs, validation
from scorefn.baselines import Ema, EmaState, vimco_learning_signal
from scorefn.control_variates import ControlVariate
from scorefn.importance import (
    doubly_reparameterized_weights,
    log_mean_weight,
    self_normalized_weights,
)
from scorefn.scores import log_prob

#: Prefix of the mutable-state sites that carry ``ELBO``'s EMA baselines.
STATE_PREFIX = "scorefn/ema/"


def _nonfinite_density_message(name: str) -> Callable[[np.ndarray], str | None]:
    """The message of ``scorefn.guards.finite_guard`` for a term ``(K, ...)`` of the
    model's log density: the site, NaN or inf, and the first bad sample."""
    return guards.nonfinite_message(lambda kind, first, bad, total: (
        f"the model's log density is not finite at the guide's samples: site "
        f"{name.split(':')[0]!r} (term {name!r}) is {kind} at {bad} of {total} samples "
        f"(first: sample {first}). Check that the guide's support matches the site's support "
        "and that the model is defined for every value the guide can draw"))


class ELBO(NumPyroELBO):
    """The ELBO as a numpyro SVI loss, its gradient from ``scorefn.programs.surrogate``.

    Args:
      num_particles: K, independent runs of guide and model per step (vectorised).
      estimators: guide site name -> per-site estimator (see
        ``scorefn.programs.ESTIMATORS``); default pathwise where the guide's
        distribution has ``rsample`` and every reader is differentiable, else ``"score"``.
      baselines: score site -> a baseline of ``scorefn.baselines`` (default leave-one-out
        over the particles when K >= 2). ``scorefn.baselines.ema(decay)`` keeps one moving
        average of the site's learning signal in numpyro's mutable state: give SVI the guide
        ``loss.with_baseline_state(guide)`` so that SVI carries it from step to step.
      temperature: τ of ``"rebar"``, ``"gumbel_softmax"`` and ``"straight_through"`` sites.
      runtime_checks: stop with a ValueError naming the term when a log density is not
        finite (see ``scorefn.programs.surrogate``).
      path_derivative: "sticking the landing" (Roeder et al. 2017): the guide's log q(z)
        terms are differentiated through z only, with q's parameters held fixed. The
        dropped term, -E[∇φ log q_φ(z)], has mean zero, so the gradient stays unbiased
        (first order), and for pathwise sites its variance vanishes as q approaches the
        posterior. ``scorefn.vi.fit``'s ``"pathwise"`` estimator does the same.
      credit_assignment: weight each score site by the terms downstream of it (and of its
        plate index) only; False weights it by the whole log w = log p - log q (the plain
        score-function ELBO gradient, ``fit``'s ``"score"``).
      control_variates: score site -> a control variate of ``scorefn.control_variates`` on
        the site's value (see ``scorefn.programs.surrogate``; one learning signal per
        particle: a site outside plates, or ``credit_assignment=False``).

    For example:

    ```python
    svi = SVI(model, guide, optax.adam(1e-3), loss=scorefn.vi.ELBO(num_particles=8))
    state = svi.init(key, x)
    state, loss = svi.update(state, x)
    ```
    """

    can_infer_discrete = True

    def __init__(self, num_particles: int = 1, *, estimators: Mapping[str, str] | None = None,
                 baselines: Mapping[str, Any] | None = None, temperature: float = 0.5,
                 runtime_checks: bool = True, path_derivative: bool = False,
                 credit_assignment: bool = True,
                 control_variates: Mapping[str, ControlVariate] | None = None):
        super().__init__(num_particles=validation.check_int(num_particles, "num_particles"))
        self.path_derivative = bool(path_derivative)
        self.credit_assignment = bool(credit_assignment)
        self.control_variates = dict(control_variates or {})
        self.estimators = dict(estimators or {})
        self.baselines = dict(baselines or {})
        self.temperature = temperature
        self.runtime_checks = runtime_checks
        self.emas = {site: b for site, b in self.baselines.items() if isinstance(b, Ema)}

    def with_baseline_state(self, guide: Callable) -> Callable:
        """``guide`` with one ``numpyro.mutable`` site per EMA baseline, so that ``SVI.init``
        creates the baselines' state and ``SVI.update`` passes it back each step."""
        if not self.emas:
            raise ValueError("with_baseline_state: this loss has no ema baseline (baselines="
                             f"{self.baselines!r})")
        emas = dict(self.emas)

        def guide_with_state(*args, **kwargs):
            for site, ema in emas.items():
                mutable(STATE_PREFIX + site, ema.init())
            return guide(*args, **kwargs)

        guide_with_state.guide_without_state = guide
        return guide_with_state

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        guide = getattr(guide, "guide_without_state", guide)
        params = {k: p for k, p in param_map.items() if not k.startswith(STATE_PREFIX)}
        baselines = dict(self.baselines)
        states = {}
        for site, ema in self.emas.items():
            state = param_map.get(STATE_PREFIX + site)
            if state is None:
                warnings.warn(
                    f"the ema baseline of site {site!r} found no state in numpyro's mutable "
                    "state and uses 0 (still unbiased): give SVI the guide "
                    "loss.with_baseline_state(guide) to carry it (SVI.evaluate passes no "
                    "state; its value does not depend on the baseline)", stacklevel=2)
                state = ema.init()
            states[site] = EmaState(*state)
            baselines[site] = states[site]
        value, signals = self.surrogate(rng_key, params, model, guide, *args,
                                        baselines=baselines, **kwargs)
        mutable_state = {
            STATE_PREFIX + site: self.emas[site].update(
                jax.lax.stop_gradient(signals[site]), state)
            for site, state in states.items()} or None
        return {"loss": -value, "mutable_state": mutable_state}

    def surrogate(self, rng_key, params, model, guide, *args,
                  baselines: Mapping[str, Any] | None = None, **kwargs) -> tuple[jax.Array, dict]:
        """The surrogate objective (the ELBO estimate; its gradient the estimator's) and each
        score site's learning signal, at the guide's and model's ``params`` (their
        ``numpyro.param`` values, constrained). ``baselines`` replaces the loss's own (an EMA's
        current state, say)."""
        baselines = self.baselines if baselines is None else baselines
        # An ema baseline without its state: its first value, 0.
        baselines = {s: b.init() if isinstance(b, Ema) else b for s, b in baselines.items()}
        arrays, with_arrays = _static_split(args)
        program = elbo_program(model, guide, kwargs, path_derivative=self.path_derivative)
        return programs.surrogate(
            lambda p, *a: program(p, *with_arrays(a)), params, rng_key, *arrays,
            num_particles=self.num_particles, estimators=self.estimators,
            baselines=baselines or None, temperature=self.temperature,
            runtime_checks=self.runtime_checks, validate=False, return_signals=True,
            credit_assignment=self.credit_assignment,
            control_variates=self.control_variates or None)


def _static_split(args: tuple) -> tuple[list, Callable[[Sequence[Any]], tuple]]:
    """The array leaves of the model's positional arguments, and the function that puts
    them back among the rest (Python ints, floats, strings, None: static, as in numpyro's
    own ELBOs, where a subsample size or a site name stays a Python value)."""
    leaves, treedef = jax.tree.flatten(args)
    dynamic = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array | np.ndarray)]

    def with_arrays(arrays: Sequence[Any]) -> tuple:
        full = list(leaves)
        for i, x in zip(dynamic, arrays):
            full[i] = x
        return jax.tree.unflatten(treedef, full)

    return [leaves[i] for i in dynamic], with_arrays


def elbo_program(model: Callable, guide: Callable, kwargs: Mapping[str, Any] | None = None,
                 path_derivative: bool = False) -> Callable:
    """The stochastic program ``program(params, *args)`` whose objective is the ELBO of
    ``model`` under ``guide`` (see the module docstring); ``params`` are the values of their
    ``numpyro.param`` sites (constrained), as SVI passes them to its loss. With
    ``path_derivative`` the guide's log q terms hold q's parameters fixed (see ``ELBO``)."""
    kwargs = dict(kwargs or {})

    def program(params, *args):
        guide_trace = handlers.trace(handlers.substitute(guide, data=params)).get_trace(
            *args, **kwargs)
        # The model runs hidden from the program's handlers: its latent sites take the
        # guide's values, and only the log densities come out, as terms below.
        with handlers.block():
            model_trace = handlers.trace(handlers.replay(
                handlers.substitute(model, data=params), trace=guide_trace)).get_trace(
                *args, **kwargs)
        latents = _check_traces(model_trace, guide_trace)
        for name, site in model_trace.items():
            if site["type"] == "sample":
                _emit(f"model/{name}", site, log_prob(site["fn"], site["value"]))
        for name in latents:
            site = guide_trace[name]
            _emit(f"guide/{name}", site, -guide_log_density(site, path_derivative))

    return program


def guide_log_density(site: Mapping, path_derivative: bool) -> jax.Array:
    """log q(z) of a guide site; with ``path_derivative``, q's parameters held fixed, so its
    gradient reaches them only through the value z (Roeder et al. 2017)."""
    fn = jax.tree.map(jax.lax.stop_gradient, site["fn"]) if path_derivative else site["fn"]
    return log_prob(fn, site["value"])


def _check_traces(model_trace: Mapping, guide_trace: Mapping) -> list[str]:
    """The guide's latent sites, after the checks that model and guide agree."""
    latents = [n for n, s in guide_trace.items() if s["type"] == "sample"
               and not s["is_observed"]]
    model_latents = [n for n, s in model_trace.items() if s["type"] == "sample"
                     and not s["is_observed"]]
    for name in model_latents:
        if name not in latents:
            raise ValueError(f"the model's latent site {name!r} has no site in the guide: "
                             "the guide must sample every latent of the model")
    for name in latents:
        if name not in model_trace:
            raise ValueError(f"the guide's site {name!r} is not a site of the model: every "
                             "latent the guide samples must be a latent of the model "
                             f"(the model's latents: {model_latents})")
        if model_trace[name]["type"] != "sample" or model_trace[name]["is_observed"]:
            raise ValueError(f"the guide samples {name!r}, which the model observes")
    for trace, who in ((guide_trace, "guide"), (model_trace, "model")):
        for name, site in trace.items():
            if site["type"] == "mutable":
                raise ValueError(
                    f"the {who} has the mutable site {name!r} (e.g. flax batch statistics): "
                    "scorefn.vi's losses do not update a model's or guide's own mutable state")
            if site["type"] == "plate":
                size, subsample_size = site["args"]
                if subsample_size is not None and subsample_size > size:
                    raise ValueError(
                        f"{who}'s plate {name!r}: subsample_size={subsample_size} is larger "
                        f"than the plate's size {size}")
    return latents


def _emit(name: str, site: dict, value: Any) -> None:
    """``numpyro.factor(name, value)`` inside the site's plates (so that credit assignment
    sees its plate index), with the site's mask and subsample scale applied once."""
    with contextlib.ExitStack() as plates:
        for frame in site["cond_indep_stack"]:
            plates.enter_context(numpyro.plate(frame.name, frame.size, dim=frame.dim))
        numpyro.factor(name, _scaled(site, value))


def _scaled(site: dict, value: Any) -> jax.Array:
    """A site's log density with its mask and its plates' subsample scale."""
    value = jnp.asarray(value)  # one number per batch element: events are summed already
    mask = site.get("mask")
    if mask is not None and mask is not True:
        value = jnp.where(mask, value, 0.0)
    scale = site.get("scale")
    return value if scale is None else value * scale


class _DetachSamples(Messenger):
    """The score-function view of a guide: its draws carry no gradient, also into the
    distributions of the sites after them. With ``without_rsample``, only the draws of
    distributions without ``rsample`` (whose ``sample`` may still be differentiable)."""

    def __init__(self, fn=None, without_rsample: bool = False):
        self.without_rsample = without_rsample
        super().__init__(fn)

    def postprocess_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"] and not (
                self.without_rsample and msg["fn"].has_rsample):
            msg["value"] = jax.lax.stop_gradient(msg["value"])


def _detached_trace(guide: Callable, params: Any, args: tuple, kwargs: Mapping,
                    without_rsample: bool = False) -> Mapping:
    """The guide's trace with its draws detached (``_DetachSamples``). The detaching handler
    sits outside the trace: a handler's post-processing runs from the outermost one in, and
    the trace copies each site as it sees it, so an inner detach would reach the program's
    later sites but not the trace."""
    with _DetachSamples(without_rsample=without_rsample):
        return handlers.trace(handlers.substitute(guide, data=params)).get_trace(*args, **kwargs)


def _site_log_densities(trace: Mapping, names: list[str] | None = None) -> dict[str, jax.Array]:
    """Σ over each sample site's elements of its scaled, masked log density."""
    names = names if names is not None else [n for n, s in trace.items() if s["type"] == "sample"]
    return {n: jnp.sum(_scaled(trace[n], log_prob(trace[n]["fn"], trace[n]["value"])))
            for n in names}


class _MultiSampleBound(NumPyroELBO):
    """Shared by ``IWAE`` and ``VIMCO``: K particles of guide and model on one
    minibatch, the bound L̂ = log (1/K) Σ_k w_k and the run-time finiteness check."""

    can_infer_discrete = True

    def __init__(self, num_particles: int = 8, *, runtime_checks: bool = True):
        super().__init__(num_particles=validation.check_int(num_particles, "num_particles", 2))
        self.runtime_checks = runtime_checks

    def _particles(self, rng_key, particle: Callable) -> Any:
        plate_key, particles_key = jax.random.split(rng_key)

        def one(key):
            # One minibatch for all particles: the plates draw from the shared key.
            with handlers.seed(rng_seed=plate_key), handlers.seed(rng_seed=key,
                                                                   hide_types=["plate"]):
                return particle()

        return jax.vmap(one)(jax.random.split(particles_key, self.num_particles))

    def _guard(self, model_terms: Mapping[str, jax.Array], log_q: Mapping[str, jax.Array]
               ) -> jax.Array:
        if not self.runtime_checks:
            return jnp.zeros(())
        checks = [(jax.lax.stop_gradient(t), _nonfinite_density_message(n))
                  for n, t in model_terms.items()]
        checks += [(jax.lax.stop_gradient(t), _nonfinite_density_message(f"guide {n}"))
                   for n, t in log_q.items()]
        return guards.finite_guard(*checks)

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        # each subclass's ``surrogate``: value L̂, gradient its estimator of ∇L_K
        return {"loss": -self.surrogate(rng_key, param_map, model, guide, *args, **kwargs),
                "mutable_state": None}


class IWAE(_MultiSampleBound):
    r"""The importance-weighted bound (Burda et al. 2016) as a numpyro SVI loss, with the
    doubly reparameterised gradient (DReG, Tucker et al. 2019):

    $$
    \begin{aligned} L_K &= \mathbb{E}\Big[\log \frac{1}{K}\sum_k w_k\Big], \quad w_k = p_\theta(x, z_k) /
      q_\phi(z_k), \quad z_k = z_\phi(\epsilon_k) \\ \nabla_\phi L_K &= \mathbb{E}\Big[\sum_k \tilde
      w_k^2\, \frac{\partial \log w_k}{\partial z_k} \frac{\partial z_k}{\partial \phi}\Big], \quad
      \nabla_\theta L_K = \mathbb{E}\Big[\sum_k \tilde w_k\, \nabla_\theta \log p_\theta(x, z_k)\Big]
      \end{aligned}
    $$

    with w̃_k = w_k / Σ_m w_m and log q's own dependence on φ held fixed. **Unbiased** for
    ∇L_K; its φ-gradient's signal does not vanish as K grows, unlike the plain
    reparameterised one (Rainforth et al. 2018). Guide sites without ``rsample`` (discrete
    ones) get the score-function gradient of the same bound, Σ_k (L̂ - w̃_k) ∇_φ log q_φ(z_k)
    (no baseline: ``VIMCO`` is the variance-reduced one); they must come before every
    reparameterised site of the guide, so that they do not depend on its draws. A param may
    belong to the model or to the guide, not both. ``SVI`` reports the loss -L̂.

    Args:
      num_particles: K >= 2, the samples inside the bound (vectorised).
      runtime_checks: a ValueError naming the site when a log density is not finite.

    For example:

    ```python
    svi = SVI(model, guide, optax.adam(1e-3), loss=scorefn.vi.IWAE(num_particles=8))
    ```
    """

    can_infer_discrete = True  # discrete sites: the score function (drawn before the rest)

    def surrogate(self, rng_key, params, model, guide, *args, **kwargs) -> jax.Array:
        detached = jax.lax.stop_gradient(params)

        def particle():
            guide_trace = _detached_trace(guide, params, args, kwargs, without_rsample=True)
            # log p_θ(x, z) at fixed z: θ's gradient
            fixed_z = {n: ({**s, "value": jax.lax.stop_gradient(s["value"])}
                           if s["type"] == "sample" else s) for n, s in guide_trace.items()}
            p_theta = _model_trace(model, params, fixed_z, args, kwargs)
            latents = _check_traces(p_theta, guide_trace)
            self._check_guide(guide_trace, p_theta, latents)
            # log q_{φ fixed}(z_φ(ε)) and log p_{θ fixed}(x, z_φ(ε)): their z-path is DReG's
            q_path = handlers.trace(handlers.replay(handlers.substitute(guide, data=detached),
                                                    trace=guide_trace)).get_trace(*args, **kwargs)
            p_path = _model_trace(model, detached, guide_trace, args, kwargs)
            # log q_φ(z_s) of the sites without rsample, φ live: their score function
            scored = [n for n in latents if not guide_trace[n]["fn"].has_rsample]
            return (_site_log_densities(p_path), _site_log_densities(q_path, latents),
                    _site_log_densities(p_theta), _site_log_densities(guide_trace, scored))

        p_path, q_path, p_theta, q_scored = self._particles(rng_key, particle)
        log_w_path = sum(p_path.values()) - sum(q_path.values())
        log_p_theta = sum(p_theta.values())
        log_w = jax.lax.stop_gradient(log_w_path)
        bound = log_mean_weight(log_w)
        surrogate = (bound + jnp.sum(doubly_reparameterized_weights(log_w) * (log_w_path - log_w))
                     + jnp.sum(self_normalized_weights(log_w)
                               * (log_p_theta - jax.lax.stop_gradient(log_p_theta))))
        if q_scored:
            log_q = sum(q_scored.values())
            signal = jax.lax.stop_gradient(bound - self_normalized_weights(log_w))
            surrogate = surrogate + jnp.sum(signal * (log_q - jax.lax.stop_gradient(log_q)))
        return guards.guarded(surrogate, self._guard(p_theta, q_path))

    @staticmethod
    def _check_guide(guide_trace: Mapping, model_trace: Mapping, latents: list[str]) -> None:
        reparameterised = None
        for name in latents:
            if guide_trace[name]["fn"].has_rsample:
                reparameterised = reparameterised or name
            elif reparameterised is not None:
                raise ValueError(
                    f"IWAE: the guide site {name!r} ({type(guide_trace[name]['fn']).__name__}) "
                    f"has no rsample and comes after the reparameterised site "
                    f"{reparameterised!r}: its score-function gradient is unbiased only when it "
                    "does not depend on reparameterised draws, so draw it first, or use "
                    "scorefn.vi.VIMCO (the score-function gradient of the same bound)")
        shared = sorted(n for n, s in guide_trace.items() if s["type"] == "param"
                        and n in model_trace and model_trace[n]["type"] == "param")
        if shared:
            raise ValueError(f"IWAE: the params {shared} belong to both the model and the guide; "
                             "DReG weighs the guide's and the model's gradients differently, so "
                             "each param must belong to one of them")


class VIMCO(_MultiSampleBound):
    r"""The importance-weighted bound with VIMCO's score-function gradient (Mnih & Rezende
    2016), as a numpyro SVI loss, for any guide (discrete sites included):

    $$
    \hat L = \log \frac{1}{K}\sum_k w_k, \quad \nabla_\phi L_K = \mathbb{E}\Big[\sum_k (\hat L - \hat
      L_{-k} - \tilde w_k)\, \nabla_\phi \log q_\phi(z_k)\Big], \quad \nabla_\theta L_K =
      \mathbb{E}\Big[\sum_k \tilde w_k\, \nabla_\theta \log p_\theta(x, z_k)\Big]
    $$

    L̂_{-k} is ``scorefn.baselines.leave_one_out_log_mean`` (w_k replaced by the
    geometric mean of the others): independent of z_k, so the gradient is **unbiased** for
    ∇L_K. Every guide site goes through the score function (its draws carry no gradient).

    Args:
      num_particles: K >= 2, the samples inside the bound (vectorised).
      runtime_checks: a ValueError naming the site when a log density is not finite.
    """


    def surrogate(self, rng_key, params, model, guide, *args, **kwargs) -> jax.Array:
        def particle():
            guide_trace = _detached_trace(guide, params, args, kwargs)
            model_trace = _model_trace(model, params, guide_trace, args, kwargs)
            latents = _check_traces(model_trace, guide_trace)
            return _site_log_densities(model_trace), _site_log_densities(guide_trace, latents)

        log_p, log_q = self._particles(rng_key, particle)
        log_q_total = sum(log_q.values())
        log_w_live = sum(log_p.values()) - log_q_total
        log_w = jax.lax.stop_gradient(log_w_live)
        bound = log_mean_weight(log_w)
        signal = jax.lax.stop_gradient(vimco_learning_signal(log_w))
        surrogate = (bound + jnp.sum(self_normalized_weights(log_w) * (log_w_live - log_w))
                     + jnp.sum(signal * (log_q_total - jax.lax.stop_gradient(log_q_total))))
        return guards.guarded(surrogate, self._guard(log_p, log_q))


def _model_trace(model: Callable, params: Any, guide_trace: Mapping, args: tuple,
                 kwargs: Mapping) -> Mapping:
    return handlers.trace(handlers.replay(handlers.substitute(model, data=params),
                                          trace=guide_trace)).get_trace(*args, **kwargs)


def amortized_posterior(guide: Callable, params: Mapping[str, Any], key: jax.Array, *args: Any,
                        **kwargs: Any) -> dict[str, Any]:
    """q(z | x_new): the trained guide's distribution at each latent site, for new data.

    Runs ``guide(*args, **kwargs)`` with ``params`` (``svi.get_params(state)`` or
    ``svi.run(...).params``; an encoder registered with ``flax_module`` included) and returns
    ``{site: distribution}``. A site whose distribution depends on earlier sites' draws is
    conditional on the draws made with ``key``. Plates run whole (pass no subsample size
    for new data). For posterior samples of every site, numpyro's
    ``Predictive(model, guide=guide, params=params, num_samples=S)`` is the recipe.
    """
    validation.check_key(key)
    guide = getattr(guide, "guide_without_state", guide)
    trace = handlers.trace(handlers.seed(handlers.substitute(guide, data=dict(params)),
                                         rng_seed=key)).get_trace(*args, **kwargs)
    return {n: s["fn"] for n, s in trace.items() if s["type"] == "sample" and not s["is_observed"]}
