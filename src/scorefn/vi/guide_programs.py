r"""``fit``'s models and guides as NumPyro programs, so that they run on the loss objects.

``scorefn.vi.fit`` and ``scorefn.vi.elbo_grad`` estimate the ELBO's gradient with the same
loss objects a NumPyro user gives to ``SVI`` (``ELBO``, ``IWAE``, ``VIMCO``): one
implementation of the estimators. This module turns their inputs into what those losses
take:

- ``guide_program(model, guide)``: a NumPyro guide function. Each block's parameters are one
  ``numpyro.param`` site, ``"<block>/params"`` (``param_map`` names them). A continuous site's
  value is drawn on the unconstrained space and mapped to the site's support with
  ``biject_to(support)`` inside a ``TransformedDistribution``, so the guide's log density
  carries the Jacobian and the model is scored on its own (constrained) values: the ELBO is
  the same as on the unconstrained space. Sites sit in the model site's plates, so credit
  assignment gives each plate element its own learning signal. A ``full_rank`` block, one
  MultivariateNormal u = loc + L ε over several sites, is drawn site by site from its exact
  conditionals, u_j | u_{<j} ~ N(loc_j + L_{j,<j} ε_{<j}, L_jj L_jjᵀ) with ε_{<j} recovered
  from the earlier sites: the same joint density and the same reparameterisation. Blocks
  without ``rsample`` are drawn first (``IWAE`` needs them upstream of none of the
  reparameterised draws).
- ``model_program(model)``: the NumPyro model function (a ``LogJoint``: one
  ``numpyro.factor`` with its latents as improper-uniform sites, so that they exist to be
  replayed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import ComposeTransform, ReshapeTransform, biject_to

from scorefn.control_variates import ControlVariate
from scorefn.types import DistFn
from scorefn.vi.guides import Block, Guide
from scorefn.vi.model import LatentSite, LogJoint, Model, NumPyroModel

#: The suffix of a block's ``numpyro.param`` site in ``guide_program``.
PARAM_SUFFIX = "/params"


def param_map(guide: Guide, params: dict[str, Any]) -> dict[str, Any]:
    """``fit``'s params ``{block: pytree}`` as the param sites of ``guide_program``."""
    return {name + PARAM_SUFFIX: params[name] for name in guide.blocks}


def _plates(site: LatentSite) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for plate in site.plates:
        stack.enter_context(numpyro.plate(plate.name, plate.size, dim=plate.dim))
    return stack


def _to_support(site: LatentSite | None) -> Any:
    """The bijection from the site's unconstrained value to its support (None: keep)."""
    if site is None or site.discrete or site.support is None:
        return None
    support = site.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    # A real site needs no map (and an identity transform would cost its Jacobian's zeros).
    return None if support is constraints.real else biject_to(site.support)


def _single_site_distribution(block: Block, site: LatentSite | None, params: Any):
    d = block.dist_fn(params)
    if site is None:
        return d
    if not site.discrete:
        # The block's batch dims cover the site's whole unconstrained value: declare the
        # site's event dims as events, so that its plates index the right axes.
        event_ndim = len(site.shape) - site.batch_ndim - len(d.event_shape)
        if event_ndim > 0:
            d = d.to_event(event_ndim)
    transform = _to_support(site)
    return d if transform is None else dist.TransformedDistribution(d, transform)


def _sample_full_rank(block: Block, latents: dict[str, LatentSite], params: Any) -> None:
    d = block.dist_fn(params)
    loc, scale_tril = d.loc, d.scale_tril
    noise: list[jax.Array] = []  # ε of the sites drawn so far
    start = 0
    for name, shape in zip(block.sites, block.shapes):
        size = math.prod(shape)
        rows = slice(start, start + size)
        mean = loc[rows]
        if noise:
            mean = mean + scale_tril[rows, :start] @ jnp.concatenate(noise)
        diagonal_block = scale_tril[rows, rows]
        conditional = dist.MultivariateNormal(mean, scale_tril=diagonal_block)
        transforms = [ReshapeTransform(shape, (size,))]
        to_support = _to_support(latents.get(name))
        if to_support is not None:
            transforms.append(to_support)
        value = numpyro.sample(name, dist.TransformedDistribution(
            conditional, ComposeTransform(transforms)))
        u = value if to_support is None else to_support.inv(value)
        noise.append(jax.scipy.linalg.solve_triangular(
            diagonal_block, jnp.reshape(u, (size,)) - mean, lower=True))
        start += size


def guide_program(model: Model, guide: Guide) -> Callable:
    """The NumPyro guide function of ``guide`` for ``model`` (see the module docstring)."""
    # A LogJoint's latents are the guide's own values: no support to map to, no plates.
    latents = {} if isinstance(model, LogJoint) else dict(model.latents)
    blocks = dict(guide.blocks)
    initial = guide.distributions(guide.init())
    order = sorted(blocks, key=lambda n: bool(initial[n].has_rsample))

    def program(*args, **kwargs):
        for name in order:
            block = blocks[name]
            params = numpyro.param(name + PARAM_SUFFIX, block.init_params)
            if len(block.sites) == 1 and not block.shapes:
                site = latents.get(block.sites[0])
                with _plates(site) if site is not None else contextlib.nullcontext():
                    numpyro.sample(block.sites[0],
                                   _single_site_distribution(block, site, params))
            else:
                _sample_full_rank(block, latents, params)

    program.__name__ = f"guide_of_{getattr(getattr(model, 'fn', None), '__name__', 'model')}"
    return program


def model_program(model: Model) -> Callable:
    """The NumPyro model function of ``model`` (call it with ``model_arguments(model)``)."""
    if isinstance(model, NumPyroModel):
        return model.fn
    if not isinstance(model, LogJoint):
        raise TypeError(f"model must be a NumPyroModel or a LogJoint; got {type(model).__name__}")
    latents = dict(model.latents)
    fn = model.fn

    def program(*args):
        z = {}
        for name, site in latents.items():
            support = site.support if site.support is not None else constraints.real
            z[name] = numpyro.sample(name, dist.ImproperUniform(
                support, site.shape[:site.batch_ndim], site.shape[site.batch_ndim:]))
        numpyro.factor("log_joint", fn(z, *args))

    program.__name__ = getattr(fn, "__name__", "log_joint")
    return program


def model_arguments(model: Model) -> tuple[tuple, dict]:
    """The positional and keyword arguments ``model_program(model)`` runs with."""
    return tuple(getattr(model, "args", ())), dict(getattr(model, "kwargs", {}) or {})


def _unconstrained(d: Any) -> Any:
    """The distribution a guide block draws from (before the map to the site's support)."""
    return d.base_dist if isinstance(d, dist.TransformedDistribution) else d


@dataclasses.dataclass(frozen=True)
class _UnconstrainedControlVariate(ControlVariate):
    """``inner`` applied to the value the guide block draws: a guide site's value is
    mapped to the model site's support (``guide_program``), but ``fit``'s control variates,
    like its guides, are written for the unconstrained value."""

    inner: ControlVariate | None = None

    def prepare(self, dist_fn: DistFn, params: Any) -> tuple[Callable, Callable]:
        h, mean_fn = self.inner.prepare(lambda p: _unconstrained(dist_fn(p)), params)
        d = dist_fn(params)
        if not isinstance(d, dist.TransformedDistribution):
            return h, mean_fn

        def h_unconstrained(x):
            for transform in reversed(d.transforms):
                x = transform.inv(x)
            return h(x)

        return h_unconstrained, mean_fn


def unconstrained_control_variate(cv: ControlVariate) -> ControlVariate:
    """``cv`` on the unconstrained value of a ``guide_program`` site (see the module
    docstring)."""
    return _UnconstrainedControlVariate(h=cv.h, expectation=cv.expectation,
                                        coefficient=cv.coefficient, name=cv.name, inner=cv)
