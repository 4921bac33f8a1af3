r"""Running a stochastic program under scorefn's control, and reading its structure.

A program is ``program(params, *args)``, plain JAX code with ``numpyro.sample`` for stochastic
nodes and ``numpyro.factor`` (or observed ``numpyro.sample``) for objective terms. One
``Recorder`` handler, inside numpyro's ``seed``, does everything scorefn needs from a run:

- it records every latent site (its distribution, value, plates) and every term (its
  log-probability array, scaled and masked as numpyro would);
- it applies the site's estimator to the value the program sees: ``stop_gradient`` for a
  score-function site (its gradient flows through the log-probability instead), the value as
  sampled for a pathwise site (numpyro's samplers are reparameterised where ``has_rsample``),
  a given value for an enumerated site.

The structure (which terms read which sites, which sites' distributions read which other
sites, which parameters anything reads) comes from a dead-code pass over the traced program
with every latent value substituted, the same structural analysis the core's validation uses.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.handlers import Messenger

from scorefn import dependencies, validation
from scorefn.discrete import base_distribution, sum_and_sample_branches
from scorefn.measure_valued import as_supported
from scorefn.scores import log_prob as fixed_log_prob


@dataclasses.dataclass(frozen=True)
class Plate:
    """A ``numpyro.plate`` a site sits in: ``dim`` counts from the right of its batch shape."""

    name: str
    dim: int
    size: int


@dataclasses.dataclass(frozen=True)
class SiteInfo:
    """What a first, abstract run of the program says about one site."""

    name: str
    is_term: bool
    plates: tuple[Plate, ...]
    shape: tuple[int, ...]
    dtype: Any
    distribution: str
    has_rsample: bool
    discrete: bool
    support_values: tuple | None  # a finite support known at trace time, else None
    measure_valued: bool = False  # a weak-derivative decomposition exists for its class
    distribution_class: str = ""  # the distribution under to_event / plate wrappers


def _support_values(support: Any) -> tuple | None:
    """The values of a finite support that is known when tracing (bool, integer interval)."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if support is constraints.boolean:
        return (0, 1)
    if isinstance(support, constraints.integer_interval):
        low, high = support.lower_bound, support.upper_bound
        if validation.is_traced([low, high]) or np.ndim(low) or np.ndim(high):
            return None
        return tuple(range(int(low), int(high) + 1))
    return None


def plates_of(msg: dict) -> tuple[Plate, ...]:
    """The plates of a numpyro site (its message or trace entry), innermost last."""
    return tuple(Plate(f.name, f.dim, f.size) for f in msg.get("cond_indep_stack", ()))


def _masked(log_prob: jax.Array, msg: dict) -> jax.Array:
    mask = msg.get("mask")
    if mask is not None and mask is not True:
        log_prob = jnp.where(mask, log_prob, 0.0)
    return log_prob


class Recorder(Messenger):
    """Records a program's sites and applies each latent site's estimator to its value.

    Args:
      families: site name -> its estimator's family, an implementation of
        ``programs.families.SiteFamily`` (None: record only). The family draws the value
        (or leaves it to numpyro), says whether the program sees it detached, and forces an
        enumerated value.
      forced: site name -> value to use instead of sampling (enumerated sites, or every site
        in the structural analysis).
      cut: sites whose value is detached whatever their family (for per-site diagnostics).
      site_keys: one PRNG key per latent site, in the order the program reaches them (from
        one batched split); None leaves the keys to numpyro's ``seed`` (one split per site,
        in sequence: about 1.4x the time of a whole small program on CPU).
      estimators: site name -> estimator name (the family's draw reads it: ARM or DisARM,
        Gumbel-softmax or straight-through).
      temperature: the relaxations' temperature.
      sum_and_sample_size: k of the ``"sum_and_sample"`` sites, whose forced value is a
        branch index (see ``sum_and_sample_branch``).

    After the run, ``drawn`` holds what each family's draw kept for its rerun term.
    """

    def __init__(self, families: dict[str, Any] | None = None, forced: dict | None = None,
                 cut: frozenset = frozenset(), site_keys: jax.Array | None = None,
                 estimators: dict[str, str] | None = None, temperature: float = 0.5,
                 sum_and_sample_size: int = 2):
        super().__init__()
        self.families = families
        self.forced = forced or {}
        self.cut = cut
        self.site_keys = site_keys
        self.estimators = estimators or {}
        self.temperature = temperature
        self.latents: dict[str, dict] = {}
        self.terms: dict[str, dict] = {}
        self.drawn: dict[str, Any] = {}
        self.sum_and_sample_size = sum_and_sample_size
        self.branch_log_weights: dict[str, jax.Array] = {}
        self._count = 0

    def process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        name = msg["name"]
        key = None if self.site_keys is None else self.site_keys[self._count]
        self._count += 1
        family = None if self.families is None else self.families[name]
        if name in self.forced:
            if family is None:
                msg["value"] = self.forced[name]
                return
            msg["value"], log_weight = family.force(self.estimators[name], msg["fn"],
                                                    self.forced[name], key,
                                                    self.sum_and_sample_size)
            if log_weight is not None:
                self.branch_log_weights[name] = log_weight
            return
        drawn = None
        if family is not None and key is not None:
            drawn = family.draw(self.estimators[name], msg["fn"], key,
                                tuple(msg["kwargs"].get("sample_shape", ())), self.temperature)
        if drawn is not None:
            msg["value"], self.drawn[name] = drawn
        elif key is not None and msg["kwargs"].get("rng_key") is None:
            msg["kwargs"]["rng_key"] = key

    def postprocess_message(self, msg):
        if msg["type"] != "sample":
            return
        name = msg["name"]
        if name in self.latents or name in self.terms:
            raise ValueError(f"the program has two sample sites named {name!r}")
        d = msg["fn"]
        if msg["is_observed"]:
            log_prob = _masked(fixed_log_prob(d, msg["value"]), msg)
            scale = msg.get("scale")
            if scale is not None:
                log_prob = log_prob * scale
            self.terms[name] = {"value": log_prob, "plates": plates_of(msg), "fn": d}
            return
        family = None if self.families is None else self.families[name]
        if family is not None and (family.detached or name in self.cut):
            msg["value"] = jax.lax.stop_gradient(msg["value"])
        self.latents[name] = {"value": msg["value"], "plates": plates_of(msg), "fn": d,
                              "mask": msg.get("mask")}

    def latent_log_prob(self, name: str) -> jax.Array:
        """log p(x_s) of the recorded value; for a sum-and-sample site, its branch's log
        weight (``sum_and_sample_branch``)."""
        if name in self.branch_log_weights:
            return self.branch_log_weights[name]
        site = self.latents[name]
        return _masked(fixed_log_prob(site["fn"], site["value"]), site)


def sum_and_sample_branch(d: Any, index: jax.Array, key: jax.Array | None,
                          k: int) -> tuple[jax.Array, jax.Array]:
    """Branch ``index`` of a sum-and-sample site with k branches, its value and log weight
    (``scorefn.discrete.sum_and_sample_branches``: the k - 1 most probable classes, then one
    drawn from the rest with the site's key)."""
    values, log_weights = sum_and_sample_branches(d.logits, key if key is not None else
                                                  jax.random.key(0), k)
    return values[index], log_weights[index]


def record(program: Callable, params: Any, key: jax.Array, args: tuple, recorder: Recorder) -> Recorder:
    """Run ``program(params, *args)`` once under ``recorder``, seeded with ``key``."""
    with handlers.seed(rng_seed=key), recorder:
        program(params, *args)
    return recorder


def inspect_sites(program: Callable, params: Any, args: tuple) -> dict[str, SiteInfo]:
    """Every site of the program, from one abstract run (nothing is computed)."""
    infos: dict[str, SiteInfo] = {}

    def abstract_run(p, a):
        rec = record(program, p, jax.random.key(0), a, Recorder())
        for name, site in rec.latents.items():
            d = site["fn"]
            infos[name] = SiteInfo(
                name, False, site["plates"], tuple(jnp.shape(site["value"])),
                jnp.result_type(site["value"]), type(d).__name__, bool(d.has_rsample),
                bool(getattr(d.support, "is_discrete", False)), _support_values(d.support),
                as_supported(d, tuple(jnp.shape(site["value"]))) is not None,
                type(base_distribution(d)).__name__,
            )
        for name, site in rec.terms.items():
            infos[name] = SiteInfo(name, True, site["plates"], tuple(jnp.shape(site["value"])),
                                   jnp.result_type(site["value"]), type(site["fn"]).__name__,
                                   False, False, None)
        return 0

    name = getattr(program, "__name__", repr(program))
    try:
        with numpyro.validation_enabled(False):
            jax.eval_shape(abstract_run, params, args)
    except ValueError:
        raise
    except Exception as error:
        raise ValueError(
            f"could not trace the program {name!r} as program(params, *args) "
            f"({type(error).__name__}: {error})"
        ) from error
    return infos


@dataclasses.dataclass(frozen=True)
class Structure:
    """Structural dependencies read off the traced program.

    ``term_reads[t]``: latent sites whose value term t reads directly; ``parents[s]``: the
    latent sites whose values the distribution of s reads; ``params_used``: for each params
    leaf, whether any term or site reads it; ``differentiable[s]``: whether every term and
    site that reads s's value does so through differentiable operations.
    """

    term_reads: dict[str, frozenset[str]]
    parents: dict[str, frozenset[str]]
    params_used: tuple[bool, ...]
    differentiable: dict[str, bool]


def _example_values(latents: dict[str, SiteInfo]) -> dict[str, jax.ShapeDtypeStruct]:
    return {n: jax.ShapeDtypeStruct(s.shape, s.dtype) for n, s in latents.items()}


def analyse(program: Callable, params: Any, args: tuple, sites: dict[str, SiteInfo]) -> Structure:
    """Read the program's dependency structure (see ``Structure``)."""
    latents = {n: s for n, s in sites.items() if not s.is_term}
    term_names = sorted(n for n, s in sites.items() if s.is_term)
    latent_names = sorted(latents)
    num_params = len(jax.tree.leaves(params))

    def substituted(p, values):
        rec = record(program, p, jax.random.key(0), args, Recorder(forced=values))
        return ({n: rec.terms[n]["value"] for n in term_names},
                {n: rec.latent_log_prob(n) for n in latent_names})

    example = _example_values(latents)
    with numpyro.validation_enabled(False):
        rows = dependencies.output_dependencies(substituted, params, example)
    outputs = term_names + latent_names  # dicts flatten in sorted-key order
    if rows is None:  # a program jax cannot trace abstractly: everything reads everything,
        # through operations that are not assumed differentiable (the score function then)
        everything = frozenset(latent_names)
        return Structure({t: everything for t in term_names},
                         {s: everything - {s} for s in latent_names},
                         (True,) * num_params, {s: False for s in latent_names})
    reads = {}
    for out, row in zip(outputs, rows):
        reads[out] = frozenset(latent_names[i] for i, used in enumerate(row[num_params:]) if used)
    params_used = tuple(any(row[i] for row in rows) for i in range(num_params))
    float_names = [n for n in latent_names if jnp.issubdtype(latents[n].dtype, jnp.floating)]

    def tangent_outputs(p, values, tangents):
        def of_values(vals):
            return substituted(p, {**values, **vals})

        floats = {n: values[n] for n in float_names}
        return jax.jvp(of_values, (floats,), (tangents,))[1]

    differentiable = {s: False for s in latent_names}
    if float_names:
        with numpyro.validation_enabled(False):
            tangent_rows = dependencies.output_dependencies(
                tangent_outputs, params, example, {n: example[n] for n in float_names})
        offset = num_params + len(latent_names)
        for j, s in enumerate(float_names):
            # Without the tangents' structure (a program jax cannot differentiate abstractly)
            # no site is assumed differentiable: the score function needs no derivative.
            differentiable[s] = tangent_rows is not None and all(
                trow[offset + j] for out, trow in zip(outputs, tangent_rows)
                if out != s and s in reads[out])
    return Structure(
        {t: reads[t] for t in term_names},
        {s: reads[s] - {s} for s in latent_names},
        params_used,
        differentiable,
    )


def support_moving_params(program: Callable, params: Any, args: tuple,
                          sites: dict[str, SiteInfo], names: list[str]) -> dict[str, list[int]]:
    """For each named latent site, the params leaves its support's arrays depend on."""
    latents = {n: s for n, s in sites.items() if not s.is_term}

    def support_arrays(p, values):
        rec = record(program, p, jax.random.key(0), args, Recorder(forced=values))
        out = []
        for n in names:
            support = rec.latents[n]["fn"].support
            fields = vars(support) if hasattr(support, "__dict__") else {}
            leaves = [x for x in jax.tree.leaves(fields) if isinstance(x, jax.Array | jax.core.Tracer)]
            out.append(sum((jnp.sum(x) for x in leaves), jnp.zeros(())))
        return out

    num_params = len(jax.tree.leaves(params))
    with numpyro.validation_enabled(False):
        rows = dependencies.output_dependencies(support_arrays, params, _example_values(latents))
    if rows is None:
        return {}
    return {n: [i for i in range(num_params) if row[i]] for n, row in zip(names, rows)}


def enumeration_grid(sites: dict[str, SiteInfo], names: list[str], limit: int) -> dict[str, np.ndarray]:
    """Every joint value of each enumerated site: ``{site: (M_e, *shape)}``; the program runs
    once per combination, Π_e M_e times per particle, which must not exceed ``limit``."""
    grids = {}
    for n in names:
        info = sites[n]
        size = math.prod(info.shape)
        count = len(info.support_values) ** size
        if count > limit:
            raise ValueError(
                f"estimator 'enumerate' for site {n!r} would sum over {len(info.support_values)}^"
                f"{size} = {count} joint values (shape {info.shape}), more than the limit of "
                f"{limit}. Use 'score' for this site (it scales with the site's size), or pass "
                "max_enumeration= to allow more"
            )
        values = np.array(list(itertools.product(info.support_values, repeat=size)))
        grids[n] = values.reshape((count,) + info.shape).astype(np.dtype(info.dtype))
    total = math.prod(len(x) for x in grids.values())
    if total > limit:
        raise ValueError(
            f"enumerating sites {names} jointly needs {total} program runs per particle, more "
            f"than the limit of {limit}; enumerate fewer sites or pass max_enumeration="
        )
    return grids


def canonical(x: jax.Array, plates: tuple[Plate, ...], order: tuple[Plate, ...]) -> jax.Array:
    """A site's array (its batch shape) summed over every axis but its plates, laid out with
    one axis per plate of the program in ``order`` (size 1 for plates it is not in)."""
    x = jnp.asarray(x)
    depth = max((-p.dim for p in plates), default=0)
    if x.ndim < depth:
        x = x.reshape((1,) * (depth - x.ndim) + x.shape)
    axis_of = {p.name: x.ndim + p.dim for p in plates}
    target = list(x.shape)
    for p in plates:
        target[axis_of[p.name]] = p.size
    x = jnp.broadcast_to(x, target)
    kept = sorted(axis_of.values())
    x = jnp.sum(x, axis=tuple(a for a in range(x.ndim) if a not in kept))
    mine = [p for p in order if p.name in axis_of]
    x = jnp.transpose(x, [kept.index(axis_of[p.name]) for p in mine])
    return x.reshape([p.size if p.name in axis_of else 1 for p in order])
