"""Planning a stochastic program's gradient: the checks of every option against the traced
sites, and the ``Plan`` the surrogate runs.

``plan`` traces the program once, gives each latent site its estimator (an entry of
``scorefn.registry``, checked against the site's distribution by ``check_site``), works out
which terms each score site reaches (credit assignment, plate by plate) and the enumeration
grid, and returns a frozen ``Plan``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from scorefn import registry, validation
from scorefn.baselines import Baseline, as_baseline, leave_one_out
from scorefn.programs.families import FAMILIES, SiteFamily
from scorefn.programs.tracing import (
    Plate,
    SiteInfo,
    analyse,
    enumeration_grid,
    inspect_sites,
    support_moving_params,
)
from scorefn.registry import Estimator

MAX_ENUMERATION = 4096


#: The registry's estimators that a program's sites take (``scorefn.registry``), by name.
ESTIMATORS: dict[str, Estimator] = {n: registry.ESTIMATORS[n] for n in registry.names(program=True)}


def check_site(estimator: Estimator, site: SiteInfo) -> None:
    """ValueError unless ``site``'s distribution offers what ``estimator`` needs in a program
    (its family's ``check``, ``programs.families``)."""
    FAMILIES[estimator.family].check(estimator, site)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything static about one program: estimators, baselines, credit assignment."""

    sites: dict[str, SiteInfo]
    estimators: dict[str, str]  # latent site -> estimator name, in sorted site order
    baselines: dict[str, Baseline | None]  # score site -> its baseline
    # score sites upstream of each term and latent site, sorted: the order of a sum is part of
    # the compiled program, and a set's order would change with PYTHONHASHSEED
    upstream: dict[str, tuple[str, ...]]
    downstream_terms: dict[str, tuple[str, ...]]  # latent site -> the terms it reaches
    enumerated_descendants: dict[str, tuple[str, ...]]  # latent site -> enumerated sites below
    plates: tuple[Plate, ...]
    grid: dict[str, np.ndarray]  # enumerated site -> its values, one branch axis each
    credit_assignment: bool
    runtime_checks: bool
    temperature: float
    sum_and_sample_size: int = 2

    @property
    def families(self) -> dict[str, SiteFamily]:
        """Each latent site's estimator family, its implementation (``programs.families``)."""
        return {n: FAMILIES[ESTIMATORS[e].family] for n, e in self.estimators.items()}

    def of_family(self, family: str) -> tuple[str, ...]:
        """The latent sites whose estimator is of ``family``, in site order."""
        return tuple(n for n, e in self.estimators.items() if ESTIMATORS[e].family == family)

    @property
    def term_names(self) -> tuple[str, ...]:
        return tuple(sorted(n for n, s in self.sites.items() if s.is_term))

    @property
    def score_names(self) -> tuple[str, ...]:
        return self.of_family("score")

    @property
    def enumerate_names(self) -> tuple[str, ...]:
        return self.of_family("enumerate")


def _closure(parents: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    ancestors: dict[str, frozenset[str]] = {}

    def visit(s, path=()):
        if s not in ancestors:
            found = set()
            for p in parents[s]:
                if p in path:
                    continue
                found |= {p} | visit(p, path + (s,))
            ancestors[s] = frozenset(found)
        return ancestors[s]

    for s in parents:
        visit(s)
    return ancestors


def plan(
    program: Callable,
    params: Any,
    args: tuple,
    *,
    num_particles: int,
    estimators: Mapping[str, str] | None = None,
    baselines: Mapping[str, Any] | None = None,
    credit_assignment: bool = True,
    validate: bool = True,
    max_enumeration: int = MAX_ENUMERATION,
    runtime_checks: bool = True,
    temperature: float = 0.5,
    sum_and_sample_size: int = 2,
) -> Plan:
    """Trace the program abstractly and decide how each site is estimated (checks included)."""
    name = getattr(program, "__name__", repr(program))
    if not callable(program):
        raise TypeError(f"program must be a function program(params, *args); got {type(program).__name__}")
    validation.check_int(max_enumeration, "max_enumeration")
    sites = inspect_sites(program, params, args)
    terms = tuple(sorted(n for n, s in sites.items() if s.is_term))
    latents = sorted(n for n, s in sites.items() if not s.is_term)
    if not terms:
        raise ValueError(
            f"the program {name!r} has no term: J(θ) = E[Σ terms] would be a constant. Add the "
            "objective with numpyro.factor(name, value) (or an observed numpyro.sample site)"
        )
    estimators = dict(estimators or {})
    for n, e in estimators.items():
        if n not in sites:
            raise ValueError(f"estimators names the site {n!r}, which the program does not have; "
                             f"its latent sites are {latents}")
        if sites[n].is_term:
            raise ValueError(f"estimators names {n!r}, an observed site or factor (a term); "
                             f"only latent sites get estimators: {latents}")
        if e not in ESTIMATORS:
            raise ValueError(f"site {n!r}: unknown estimator {e!r}; the known ones are "
                             f"{sorted(ESTIMATORS)}")
    if not (isinstance(temperature, int | float) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    structure = analyse(program, params, args, sites)
    chosen = {}
    for n in latents:
        if n in estimators:
            chosen[n] = estimators[n]
        elif sites[n].has_rsample and structure.differentiable[n]:
            chosen[n] = "pathwise"
        else:
            chosen[n] = "score"
        check_site(ESTIMATORS[chosen[n]], sites[n])
    families = {n: ESTIMATORS[e].family for n, e in chosen.items()}
    score_names = tuple(n for n in latents if families[n] == "score")
    enumerate_names = tuple(n for n in latents if families[n] == "enumerate")

    baselines = dict(baselines or {})
    chosen_baselines: dict[str, Baseline | None] = {}
    for n in baselines:
        if n not in sites or sites[n].is_term:
            raise ValueError(f"baselines names {n!r}, which is not a latent site of the program "
                             f"(latent sites: {latents})")
        if families[n] != "score":
            raise ValueError(f"baselines names site {n!r}, whose estimator is {chosen[n]!r}: "
                             "baselines apply to score-function sites only")
    for n in score_names:
        if chosen[n] == "rloo":
            if n in baselines:
                raise ValueError(f"site {n!r}: estimator 'rloo' is 'score' with the leave-one-out "
                                 "baseline; give it no baseline (or use 'score' with yours)")
            baselines[n] = leave_one_out()
        b = as_baseline(baselines[n]) if n in baselines else (
            leave_one_out() if num_particles >= 2 else None)
        if b is not None and b.per_coordinate:
            raise ValueError(f"site {n!r}: the {b.name} baseline is per parameter coordinate; a "
                             "program's surrogate takes baselines per site element (constant, "
                             "ema state, leave_one_out, batch_mean)")
        if b is not None and b.name in ("leave_one_out", "batch_mean") and num_particles < 2:
            raise ValueError(f"site {n!r}: the {b.name} baseline needs num_particles >= 2, got "
                             f"{num_particles}")
        chosen_baselines[n] = b

    if validate:
        leaves = validation.leaf_names(params)
        unused = [leaf for leaf, used in zip(leaves, structure.params_used) if not used]
        if unused:
            raise ValueError(
                f"{', '.join(unused)} does not affect any sample site or term of the program "
                f"{name!r}: its gradient would be silently zero. Remove it from params, or check "
                "that the program uses it"
            )
        if score_names:
            moving = support_moving_params(program, params, args, sites, list(score_names))
            for n, indices in moving.items():
                if indices:
                    raise ValueError(
                        f"site {n!r}: the support of its distribution ({sites[n].distribution}) "
                        f"depends on {', '.join(leaves[i] for i in indices)}, so the "
                        "score-function estimator would be biased (differentiating under the "
                        "integral ignores the moving boundary). Use 'pathwise' (reparameterise, "
                        "e.g. x = θ·u with u ~ Uniform(0, 1))"
                    )

    ancestors = _closure(structure.parents)
    for s in latents:
        if families[s] != "control_variate":
            continue
        for d in latents:
            if s in ancestors[d] and chosen[d] not in ("pathwise", "enumerate"):
                raise ValueError(
                    f"site {s!r}: estimator {chosen[s]!r} differentiates the terms below s through a "
                    f"relaxed value of s, so every latent site below it must be 'pathwise' or "
                    f"'enumerate' (a sampled discrete value has no derivative); site {d!r} is "
                    f"{chosen[d]!r}")
    score_set = set(score_names)
    upstream, reaches = {}, {}
    for t in terms:
        reads = set(structure.term_reads[t])
        for s in list(reads):
            reads |= ancestors[s]
        reaches[t] = reads if credit_assignment else set(latents)
        upstream[t] = tuple(sorted(reads & score_set if credit_assignment else score_set))
    for s in latents:
        upstream[s] = tuple(sorted(ancestors[s] & score_set))

    order: dict[str, Plate] = {}
    for s in sites.values():
        for p in s.plates:
            order.setdefault(p.name, p)
    summed_and_sampled = [n for n in enumerate_names if chosen[n] == "sum_and_sample"]
    for n in summed_and_sampled:
        classes = len(sites[n].support_values)
        if (isinstance(sum_and_sample_size, bool) or not isinstance(sum_and_sample_size, int)
                or not 2 <= sum_and_sample_size <= classes):
            raise ValueError(f"site {n!r}: sum_and_sample_size must be an int in [2, {classes}] "
                             f"(k - 1 classes summed, one sampled); got {sum_and_sample_size!r}")
    grid = enumeration_grid(sites, [n for n in enumerate_names if n not in summed_and_sampled],
                            max_enumeration) if enumerate_names else {}
    # A sum-and-sample site's branches are indices: the values depend on θ and the particle.
    grid.update({n: np.arange(sum_and_sample_size, dtype=np.int32) for n in summed_and_sampled})
    grid = {n: grid[n] for n in enumerate_names}  # one branch axis each, in site order
    return Plan(
        sites=sites,
        estimators=chosen,
        baselines=chosen_baselines,
        upstream=upstream,
        downstream_terms={s: tuple(t for t in terms if s in reaches[t]) for s in latents},
        enumerated_descendants={s: tuple(e for e in enumerate_names if s in ancestors[e])
                                for s in latents},
        plates=tuple(order.values()),
        grid=grid,
        credit_assignment=credit_assignment,
        runtime_checks=bool(runtime_checks),
        temperature=float(temperature),
        sum_and_sample_size=int(sum_and_sample_size),
    )
