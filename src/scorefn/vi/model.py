r"""Models for variational inference: a log joint log p(x, z) split into terms.

Two kinds of model are accepted:

- a **NumPyro model function** ``model(*data)`` with observed sites. Its log density comes
  from NumPyro's own tracing (``numpyro.handlers.trace`` / ``substitute``); continuous
  latent sites live on the unconstrained space z = T(u) (``biject_to(site.support)``) with
  the Jacobian log|det ∂T/∂u| added, discrete sites stay as they are;
- a **log-joint function** ``log_joint(z, *data) -> scalar``, wrapped in ``LogJoint``,
  with z a dict of named latents whose names and shapes come from the guide.

Either way the model exposes its log joint as a sum of **terms** (``term_values``: one per
NumPyro site, each an array over the site's plates) and its latent sites with their plates.
The objectives run model and guide as one stochastic program (``scorefn.vi.guide_programs``),
where ``scorefn.programs`` reads which terms each guide site reaches and gives each site only
those (credit assignment, as Pyro's TraceGraph_ELBO does with its dependency graph).
"""

from __future__ import annotations

import abc
import copy
import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro import handlers
from numpyro.distributions.transforms import biject_to

# numpyro's one private name in scorefn, used here only: _unconstrain_reparam is the
# substitution that numpyro's public potential_energy applies (each continuous value mapped
# from the unconstrained space, with its log|det J| as a factor), but potential_energy
# returns only the sum, and scorefn needs every term apart (credit assignment). Re-deriving
# it would drift from numpyro's transforms; the tests pin the log density it gives.
from numpyro.infer.util import _unconstrain_reparam, compute_log_probs

from scorefn import validation
from scorefn.programs.tracing import Plate, plates_of


@dataclasses.dataclass(frozen=True)
class LatentSite:
    """A latent variable: ``shape`` is its (unconstrained) value's shape; ``batch_ndim`` the
    number of leading batch dimensions of its prior (those the plates index)."""

    name: str
    shape: tuple[int, ...]
    discrete: bool
    batch_ndim: int
    plates: tuple[Plate, ...] = ()
    support: Any = None
    num_categories: int | None = None  # for integer supports {0, ..., K-1}
    dtype: Any = jnp.float32


class Model(abc.ABC):
    """Common interface: ``latents`` and ``term_values(z)``."""

    latents: dict[str, LatentSite]

    @abc.abstractmethod
    def term_values(self, z: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Every term of log p(x, z) at one (unconstrained) latent value z."""

    def log_joint(self, z: dict[str, jax.Array]) -> jax.Array:
        """log p(x, z) at one (unconstrained) latent value z."""
        return sum(jnp.sum(t) for t in self.term_values(z).values())

    def constrain(self, z: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return z

    def with_data(self, args: tuple, kwargs: dict) -> Model:
        """The same model on other data of the same structure and shapes (e.g. the traced
        arrays of a compiled step), with nothing inspected again."""
        other = copy.copy(self)
        other.args, other.kwargs = tuple(args), dict(kwargs)
        return other


class NumPyroModel(Model):
    """A NumPyro model function with its data, as a sum of per-site log-probability terms.

    Uses NumPyro's own machinery: ``compute_log_probs`` for the per-site log densities and
    the unconstraining reparameterisation of its ``potential_energy`` (continuous sites are
    given on the unconstrained space; their Jacobian terms appear as factor sites
    ``"_<site>_log_det"``). Discrete sites are substituted as they are.
    """

    def __init__(self, fn: Callable, args: tuple = (), kwargs: dict | None = None):
        self.fn = fn
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        name = getattr(fn, "__name__", repr(fn))
        # Inspect the model abstractly: running it eagerly would compile every small op.
        found: dict[str, LatentSite] = {}
        try:
            jax.eval_shape(lambda: self._inspect_prior(found))
        except Exception as error:
            raise ValueError(
                f"could not run the NumPyro model {name!r} with the given data "
                f"({type(error).__name__}: {error}). A plain log-joint function "
                "log_joint(z, *data) must be wrapped: scorefn.vi.LogJoint(log_joint)"
            ) from error
        if not found:
            raise ValueError(
                f"{name!r} has no latent numpyro.sample sites (no sites at all, or only observed "
                "ones): is it a log-joint function? Wrap it as scorefn.vi.LogJoint(log_joint) "
                "and pass a guide"
            )
        self.latents = found

    def _inspect_prior(self, found: dict) -> None:
        trace = handlers.trace(handlers.seed(self.fn, 0)).get_trace(*self.args, **self.kwargs)
        for name, site in trace.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            d = site["fn"]
            shape = tuple(jnp.shape(site["value"]))
            discrete = bool(getattr(d.support, "is_discrete", False))
            k = None
            if discrete:
                upper = getattr(d.support, "upper_bound", None)
                if upper is not None and not validation.is_traced(upper):
                    k = int(np.max(np.asarray(upper))) + 1
            else:
                shape = tuple(biject_to(d.support).inverse_shape(shape))
            dtype = jnp.result_type(site["value"])
            batch_ndim = len(jnp.shape(site["value"])) - len(d.event_shape)
            found[name] = LatentSite(name, shape, discrete, batch_ndim, plates_of(site), d.support,
                                     k, dtype)

    def _trace(self, z: dict[str, jax.Array]):
        missing = set(self.latents) - set(z)
        if missing:
            raise ValueError(f"no value for the latent site(s) {sorted(missing)}")
        continuous = {n: x for n, x in z.items() if not self.latents[n].discrete}
        discrete = {n: x for n, x in z.items() if self.latents[n].discrete}
        model = handlers.substitute(handlers.seed(self.fn, 0),
                                    substitute_fn=partial(_unconstrain_reparam, continuous))
        return compute_log_probs(model, self.args, self.kwargs, discrete, sum_log_prob=False)

    def constrain(self, z: dict[str, jax.Array]) -> dict[str, jax.Array]:
        _, trace = self._trace(z)
        return {n: trace[n]["value"] for n in self.latents}

    def term_values(self, z: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Each sample site's log-probability array (over its batch/plate dims), the
        Jacobian factor sites ``"_<site>_log_det"`` included."""
        log_probs, _ = self._trace(z)
        return log_probs


class LogJoint(Model):
    """A log-joint function ``log_joint(z, *data) -> scalar`` over a dict of latents.

    The latents' names and shapes come from the guide (``scorefn.vi.mean_field``): call
    ``bind`` with them, which ``scorefn.vi.fit`` does. The whole log joint is one
    term that reads every latent, so Rao-Blackwellisation can only localise the guide's own
    entropy terms; write the model in NumPyro to give it the dependency structure.
    """

    def __init__(self, fn: Callable, data: tuple = ()):
        self.fn = fn
        self.args = tuple(data)
        self.kwargs: dict = {}
        self.latents = {}

    def bind(self, latents: dict[str, LatentSite], data: tuple = ()) -> LogJoint:
        bound = LogJoint(self.fn, data or self.args)
        bound.latents = dict(latents)
        return bound

    def term_values(self, z: dict[str, jax.Array]) -> dict[str, jax.Array]:
        value = jnp.asarray(self.fn(z, *self.args))
        if value.shape != ():
            raise ValueError(f"log_joint(z, *data) must return a scalar; got shape {value.shape}")
        return {"log_joint": value}


def as_model(model: Any, data: Any = ()) -> Model:
    """A ``Model`` from a NumPyro model function (data: a tuple of positional arguments
    or a dict of keyword arguments), a ``LogJoint`` or a ``Model``."""
    if isinstance(model, LogJoint):
        return model if not data else LogJoint(model.fn, _as_args(data)[0])
    if isinstance(model, Model):
        return model
    if not callable(model):
        raise TypeError(f"model must be a NumPyro model function or a scorefn.vi.LogJoint; got "
                        f"{type(model).__name__}")
    args, kwargs = _as_args(data)
    with numpyro.validation_enabled(False):
        return NumPyroModel(model, args, kwargs)


def _as_args(data: Any) -> tuple[tuple, dict]:
    if data is None:
        return (), {}
    if isinstance(data, dict):
        return (), dict(data)
    if isinstance(data, tuple | list):
        return tuple(data), {}
    return (data,), {}
