r"""scorefn's estimators as the loss of numpyro's SVI: keep your model, guide and SVI loop.

:class:`ELBO` is a ``numpyro.infer.elbo.ELBO``. Its loss is minus the surrogate objective of
:mod:`scorefn.programs` for the stochastic program

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
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpyro
from numpyro import handlers
from numpyro.infer.elbo import ELBO as NumPyroELBO

from scorefn import programs
from scorefn.scores import log_prob


class ELBO(NumPyroELBO):
    """The ELBO as a numpyro SVI loss, its gradient from :func:`scorefn.programs.surrogate`.

    Args:
      num_particles: K, independent runs of guide and model per step (vectorised).
      estimators: guide site name -> per-site estimator (see
        :data:`scorefn.programs.ESTIMATORS`); default pathwise where the guide's
        distribution has ``rsample`` and every reader is differentiable, else ``"score"``.
      baselines: score site -> a baseline of :mod:`scorefn.baselines` (default leave-one-out
        over the particles when K >= 2).
      temperature: τ of ``"rebar"``, ``"gumbel_softmax"`` and ``"straight_through"`` sites.
      runtime_checks: stop with a ValueError naming the term when a log density is not
        finite (see :func:`scorefn.programs.surrogate`).

    Example::

        svi = SVI(model, guide, optax.adam(1e-3), loss=scorefn.vi.ELBO(num_particles=8))
        state = svi.init(key, x)
        state, loss = svi.update(state, x)
    """

    can_infer_discrete = True

    def __init__(self, num_particles: int = 1, *, estimators: Mapping[str, str] | None = None,
                 baselines: Mapping[str, Any] | None = None, temperature: float = 0.5,
                 runtime_checks: bool = True):
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles must be a positive int, got {num_particles!r}")
        super().__init__(num_particles=num_particles)
        self.estimators = dict(estimators or {})
        self.baselines = dict(baselines or {})
        self.temperature = temperature
        self.runtime_checks = runtime_checks

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        program = elbo_program(model, guide, kwargs)
        value = programs.surrogate(
            program, param_map, rng_key, *args, num_particles=self.num_particles,
            estimators=self.estimators, baselines=self.baselines or None,
            temperature=self.temperature, runtime_checks=self.runtime_checks, validate=False)
        return {"loss": -value, "mutable_state": None}


def elbo_program(model: Callable, guide: Callable, kwargs: Mapping[str, Any] | None = None
                 ) -> Callable:
    """The stochastic program ``program(params, *args)`` whose objective is the ELBO of
    ``model`` under ``guide`` (see the module docstring); ``params`` are the values of their
    ``numpyro.param`` sites (constrained), as SVI passes them to its loss."""
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
        latents = {n for n, s in guide_trace.items() if s["type"] == "sample"
                   and not s["is_observed"]}
        for name, site in model_trace.items():
            if site["type"] != "sample":
                continue
            if not site["is_observed"] and name not in latents:
                raise ValueError(f"the model's latent site {name!r} has no site in the guide: "
                                 "the guide must sample every latent of the model")
            _emit(f"model/{name}", site, log_prob(site["fn"], site["value"]))
        for name in latents:
            site = guide_trace[name]
            _emit(f"guide/{name}", site, -log_prob(site["fn"], site["value"]))

    return program


def _emit(name: str, site: dict, value: Any) -> None:
    """``numpyro.factor(name, value)`` inside the site's plates (so that credit assignment
    sees its plate index), with the site's mask and subsample scale applied once."""
    value = jnp.asarray(value)  # one number per batch element: events are summed already
    mask = site.get("mask")
    if mask is not None and mask is not True:
        value = jnp.where(mask, value, 0.0)
    scale = site.get("scale")
    if scale is not None:
        value = value * scale
    with contextlib.ExitStack() as plates:
        for frame in site["cond_indep_stack"]:
            plates.enter_context(numpyro.plate(frame.name, frame.size, dim=frame.dim))
        numpyro.factor(name, value)
