r"""Guides: the variational family q_θ(z) = Π_j q_{θ_j}(z_j) over blocks of latent sites.

A guide is a set of independent **blocks**; each block is a numpyro distribution
``dist_fn(params_j)`` over one latent site (mean-field) or over several sites at once
(``full_rank``: one multivariate Normal over every continuous site, flattened). The elements
of a block distribution's ``batch_shape`` are independent **factors**: the score-function
estimators weight each factor's score by its own learning signal.

- ``mean_field`` - one block per site, any ``dist_fn(params)`` per site, or automatic:
  Normal(loc, softplus(ρ)) on a continuous site's unconstrained space, Bernoulli(logits) on a
  {0, 1} site, Categorical(logits) on a {0, ..., K-1} site;
- ``full_rank`` - MultivariateNormal(loc, L L^T) over all continuous sites, with the
  discrete sites mean-field;
- ``auto_guide`` - either of them, built from a NumPyro model's latent sites.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import Distribution, constraints

from scorefn import validation
from scorefn.sampling import sample
from scorefn.scores import log_prob, per_sample_sum
from scorefn.types import DistFn
from scorefn.vi.model import LatentSite, Model


@dataclasses.dataclass(frozen=True)
class Block:
    """Latent ``sites`` drawn jointly from ``dist_fn(params)``. With one site the block's
    value is the site's value; with several it is their flattened concatenation."""

    sites: tuple[str, ...]
    dist_fn: DistFn
    init_params: Any
    shapes: tuple[tuple[int, ...], ...] = ()

    def split(self, value: jax.Array) -> dict[str, jax.Array]:
        """Block value(s) with leading sample dims → ``{site: value}``."""
        if len(self.sites) == 1 and not self.shapes:
            return {self.sites[0]: value}
        lead = value.shape[:-1]
        out, start = {}, 0
        for name, shape in zip(self.sites, self.shapes):
            size = math.prod(shape)
            out[name] = value[..., start:start + size].reshape(lead + shape)
            start += size
        return out


@dataclasses.dataclass(frozen=True)
class Guide:
    """Independent blocks keyed by name. ``params`` is a dict with one entry per block."""

    blocks: dict[str, Block]

    @property
    def sites(self) -> list[str]:
        return [s for b in self.blocks.values() for s in b.sites]

    def init(self) -> dict[str, Any]:
        return {name: b.init_params for name, b in self.blocks.items()}

    def distributions(self, params: dict[str, Any]) -> dict[str, Distribution]:
        return {name: b.dist_fn(params[name]) for name, b in self.blocks.items()}

    def block_keys(self, key: jax.Array) -> dict[str, jax.Array]:
        """One key per block (fixed by the block's position), shared by every estimator so
        that pathwise and score blocks see the same draws."""
        return {name: jax.random.fold_in(key, i) for i, name in enumerate(self.blocks)}

    def sample(self, params: dict[str, Any], key: jax.Array, num_samples: int) -> dict[str, jax.Array]:
        """Block values ``{block: (num_samples, ...)}`` (gradients stopped)."""
        keys = self.block_keys(key)
        return {name: sample(b.dist_fn, params[name], keys[name], num_samples)
                for name, b in self.blocks.items()}

    def to_sites(self, block_values: dict[str, jax.Array]) -> dict[str, jax.Array]:
        out = {}
        for name, b in self.blocks.items():
            out.update(b.split(block_values[name]))
        return out

    def factor_log_probs(self, params: dict[str, Any], block_values: dict[str, jax.Array]
                         ) -> dict[str, jax.Array]:
        """log q_b(z_b) per factor: ``{block: (num_samples, *batch_shape)}``."""
        return {name: log_prob(b.dist_fn(params[name]), block_values[name])
                for name, b in self.blocks.items()}

    def log_prob(self, params: dict[str, Any], block_values: dict[str, jax.Array]) -> jax.Array:
        """log q(z) per sample, ``(num_samples,)``."""
        total = 0.0
        for lp in self.factor_log_probs(params, block_values).values():
            total = total + per_sample_sum(lp)
        return total

    def value_shapes(self) -> dict[str, tuple[int, ...]]:
        """``batch_shape + event_shape`` of each block (read abstractly, nothing runs)."""
        shapes = {}

        def read(params):
            for name, b in self.blocks.items():
                d = b.dist_fn(params[name])
                shapes[name] = tuple(d.batch_shape) + tuple(d.event_shape)

        jax.eval_shape(read, self.init())
        return shapes

    def check(self, model: Model) -> None:
        """Every latent of the model has exactly one block, with the right shape."""
        sites = self.sites
        duplicated = sorted({s for s in sites if sites.count(s) > 1})
        if duplicated:
            raise ValueError(f"the guide has more than one block for site(s) {duplicated}")
        missing = sorted(set(model.latents) - set(sites))
        if missing:
            raise ValueError(
                f"the guide has no block for the latent site(s) {missing} of the model; its "
                f"sites are {sorted(sites)}")
        extra = sorted(set(sites) - set(model.latents))
        if extra:
            raise ValueError(f"the guide has site(s) {extra} that are not latent sites of the "
                             f"model (latents: {sorted(model.latents)})")
        shapes = self.value_shapes()
        for name, b in self.blocks.items():
            shape = shapes[name]
            if len(b.sites) == 1 and not b.shapes:
                want = model.latents[b.sites[0]].shape
                if shape != want:
                    raise ValueError(
                        f"guide block {name!r} for site {b.sites[0]!r} gives values of shape "
                        f"{shape} (batch_shape + event_shape) but the site's (unconstrained) "
                        f"value has shape {want}")


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


def _normal_block(site: LatentSite, init_scale: float) -> Block:
    def dist_fn(p):
        return dist.Normal(p["loc"], jax.nn.softplus(p["scale"]))

    dtype = jnp.result_type(float)
    params = {"loc": jnp.zeros(site.shape, dtype),
              "scale": jnp.full(site.shape, _inverse_softplus(init_scale), dtype)}
    return Block((site.name,), dist_fn, params)


def _discrete_block(site: LatentSite) -> Block:
    if site.support is constraints.boolean:
        return Block((site.name,), lambda p: dist.Bernoulli(logits=p),
                     jnp.zeros(site.shape, jnp.result_type(float)))
    if site.num_categories is None:
        raise ValueError(
            f"no automatic guide for the discrete site {site.name!r} with support "
            f"{site.support}: its support has no upper bound. Pass a dist_fn for it to mean_field")
    k = site.num_categories
    return Block((site.name,), lambda p: dist.Categorical(logits=p),
                 jnp.zeros(site.shape + (k,), jnp.result_type(float)))


def mean_field(model: Model | None = None, families: dict[str, Any] | None = None, *,
               init_scale: float = 0.1) -> Guide:
    """A mean-field guide: one independent block per latent site.

    Args:
      model: a ``scorefn.vi.model.Model`` whose sites without an entry in
        ``families`` get the automatic family (see the module docstring).
      families: ``{site: (dist_fn, init_params)}``, ``dist_fn(params) -> Distribution``
        whose ``batch_shape + event_shape`` is the site's (unconstrained) value shape. With
        a ``scorefn.vi.LogJoint`` model this defines the latents.
      init_scale: the automatic Normal's initial standard deviation (its loc starts at 0).
    """
    validation.check_real(init_scale, "init_scale", 0.0, low_open=True)
    families = dict(families or {})
    blocks = {}
    for name, entry in families.items():
        if not (isinstance(entry, tuple) and len(entry) == 2 and callable(entry[0])):
            raise TypeError(f"families[{name!r}] must be (dist_fn, init_params); got {entry!r}")
        blocks[name] = Block((name,), entry[0], jax.tree.map(jnp.asarray, entry[1]))
    if model is not None:
        for name, site in model.latents.items():
            if name in blocks:
                continue
            blocks[name] = _discrete_block(site) if site.discrete else _normal_block(site, init_scale)
    if not blocks:
        raise ValueError("mean_field needs a model or at least one family")
    return Guide(blocks)


def full_rank(model: Model, *, init_scale: float = 0.1) -> Guide:
    r"""MultivariateNormal(loc, scale_tril = L) over all continuous latents, flattened, with
    L lower triangular and a softplus diagonal (so q is never degenerate); discrete latents
    get the automatic mean-field blocks. One factor for the whole continuous block."""
    validation.check_real(init_scale, "init_scale", 0.0, low_open=True)
    continuous = [s for s in model.latents.values() if not s.discrete]
    blocks = {s.name: _discrete_block(s) for s in model.latents.values() if s.discrete}
    if continuous:
        shapes = tuple(s.shape for s in continuous)
        dim = sum(math.prod(sh) for sh in shapes)

        def dist_fn(p):
            lower = jnp.tril(p["scale_tril"], -1)
            diag = jax.nn.softplus(jnp.diagonal(p["scale_tril"]))
            return dist.MultivariateNormal(p["loc"], scale_tril=lower + jnp.diag(diag))

        dtype = jnp.result_type(float)
        params = {"loc": jnp.zeros(dim, dtype),
                  "scale_tril": jnp.diag(jnp.full(dim, _inverse_softplus(init_scale), dtype))}
        blocks["continuous"] = Block(tuple(s.name for s in continuous), dist_fn, params, shapes)
    return Guide(blocks)


def auto_guide(model: Model, kind: str = "mean_field", *, init_scale: float = 0.1) -> Guide:
    """``kind="mean_field"`` or ``"full_rank"`` guide for every latent site of ``model``."""
    if kind == "mean_field":
        return mean_field(model, init_scale=init_scale)
    if kind == "full_rank":
        return full_rank(model, init_scale=init_scale)
    raise ValueError(f"kind must be 'mean_field' or 'full_rank'; got {kind!r}")
