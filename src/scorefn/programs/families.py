r"""Each estimator family's part in a stochastic program, behind one protocol.

A family (``scorefn.registry.FAMILIES``) enters a program in up to five ways, the members
of ``SiteFamily``: which sites it accepts (``check``), how the site's value is drawn
(``draw``: numpyro's own sampler unless the family draws it itself) or forced (``force``:
an enumerated branch), whether the program sees that value detached (``detached``: the
gradient then flows through the log-probability or a rerun term instead), and the term of
value 0 whose first derivative is its estimate (``term``, from reruns of the program with
the site's value replaced; ``programs.reruns``).
``plan`` checks each site through ``FAMILIES``, the ``Recorder`` draws through it and the
particle loop adds its terms through it: none of them branches on a family's name.

The score family's weighting (the DiCE surrogate's □(W) and baselines) and the enumerate
family's branches are the surrogate's own assembly (``programs.surrogate``), since they shape
every term rather than add one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax

from scorefn.discrete import antithetic_pair, bernoulli_logits, relaxed_sample, sample_dtype_of
from scorefn.programs import reruns
from scorefn.programs.tracing import sum_and_sample_branch

if TYPE_CHECKING:
    from scorefn.programs.reruns import Particle
    from scorefn.programs.tracing import SiteInfo
    from scorefn.registry import Estimator


def _require_bernoulli(site: SiteInfo, why: str) -> None:
    if site.distribution_class not in ("BernoulliLogits", "BernoulliProbs"):
        raise ValueError(f"site {site.name!r}: {why}")


class SiteFamily:
    """The protocol; the defaults are the score family's: any site, numpyro's draw, the value
    detached, no rerun term."""

    name = "score"
    detached = True  # the program sees stop_gradient(x): the score carries the gradient

    def check(self, estimator: Estimator, site: SiteInfo) -> None:
        """ValueError unless the site's distribution offers what ``estimator`` needs."""

    def force(self, estimator: str, d: Any, value: Any, key: jax.Array | None,
              sum_and_sample_size: int) -> tuple[Any, jax.Array | None]:
        """The value the program sees when the plan forces ``value`` (an enumerated branch),
        and the branch's log-weight where it is not log p(value) (else None)."""
        return value, None

    def draw(self, estimator: str, d: Any, key: jax.Array, sample_shape: tuple[int, ...],
             temperature: float) -> tuple[jax.Array, Any] | None:
        """The site's value and what its term needs later (``Recorder.drawn``), or None:
        numpyro draws it with ``key``."""
        return None

    def term(self, particle: Particle, site: str, index: int,
             relax: tuple[Mapping[str, Any], Mapping[str, Any]]) -> jax.Array | None:
        """A term of value 0 whose gradient is the site's estimate, or None (no rerun
        term). ``index``: the site's position among its family's sites (a key offset)."""
        return None


class Pathwise(SiteFamily):
    name = "pathwise"
    detached = False

    def check(self, estimator, site):
        if not site.has_rsample:
            raise ValueError(
                f"site {site.name!r}: estimator 'pathwise' needs a reparameterised sampler, but "
                f"its distribution {site.distribution} has none (has_rsample=False; discrete "
                "distributions never do). Use 'score' or, for a finite support, 'enumerate'")


class Enumerate(SiteFamily):
    """Summed exactly over the plan's grid: the value is always forced (a grid value, or
    for ``"sum_and_sample"`` a branch index, ``tracing.sum_and_sample_branch``)."""

    name = "enumerate"
    detached = False

    def check(self, estimator, site):
        if estimator.name == "sum_and_sample" and (
                site.distribution_class not in ("CategoricalLogits", "CategoricalProbs")
                or site.shape != ()):
            raise ValueError(
                f"site {site.name!r}: in a program 'sum_and_sample' is for one Categorical "
                f"value (shape (), outside plates); {site.distribution} with shape {site.shape} "
                "is not one. Use 'enumerate' or 'rloo'")
        if site.support_values is None:
            raise ValueError(
                f"site {site.name!r}: estimator 'enumerate' needs a finite support known when "
                f"tracing (Bernoulli, Categorical, integer intervals with fixed bounds); "
                f"{site.distribution} has none. Use 'score'")

    def force(self, estimator, d, value, key, sum_and_sample_size):
        if estimator == "sum_and_sample":
            return sum_and_sample_branch(d, value, key, sum_and_sample_size)
        return value, None


class MeasureValued(SiteFamily):
    name = "measure_valued"

    def check(self, estimator, site):
        if not site.measure_valued:
            raise ValueError(
                f"site {site.name!r}: estimator 'measure_valued' has weak-derivative "
                f"decompositions for Normal, Poisson and Bernoulli (also inside to_event and "
                f"plates); {site.distribution} has none. Use 'score' or 'pathwise'")

    def term(self, particle, site, index, relax):
        return reruns.measure_valued_term(particle, index, site)


class Antithetic(SiteFamily):
    """ARM and DisARM: the site's value is the pair's first sample, drawn from one uniform."""

    name = "antithetic"
    detached = False  # a Bernoulli value: nothing to differentiate

    def check(self, estimator, site):
        _require_bernoulli(site, (
            f"estimator {estimator.name!r} is for Bernoulli sites (batched, to_event or in "
            f"plates); {site.distribution} is not one. Use 'score' (with 'rloo', the "
            "leave-one-out baseline) or 'enumerate'"))

    def draw(self, estimator, d, key, sample_shape, temperature):
        shape = tuple(d.shape(sample_shape))
        logits = jax.lax.stop_gradient(bernoulli_logits(d, shape, estimator))
        u = jax.random.uniform(key, shape, dtype=logits.dtype)
        first, second = antithetic_pair(logits, u, estimator)
        dtype = sample_dtype_of(d)
        return first.astype(dtype), (u, logits, first, second.astype(dtype))

    def term(self, particle, site, index, relax):
        return reruns.antithetic_term(particle, site)


class ControlVariate(SiteFamily):
    """REBAR and RELAX: b = 1[z > 0] for logistic-perturbed logits z = φ + log u − log(1 − u);
    the second uniform w draws z̃ | b (``reruns.rebar_term``)."""

    name = "control_variate"
    detached = False

    def check(self, estimator, site):
        _require_bernoulli(site, (
            f"in a program {estimator.name!r} is for Bernoulli sites (batched, to_event or in "
            f"plates); {site.distribution} is not one: a program reads a Categorical value as "
            "an index, where a relaxed (one-hot) value cannot go. For one Categorical "
            f"distribution, scorefn.grad(..., estimator={estimator.name!r}) and "
            f"scorefn.discrete.{estimator.name}()"))

    def draw(self, estimator, d, key, sample_shape, temperature):
        shape = tuple(d.shape(sample_shape))
        logits = jax.lax.stop_gradient(bernoulli_logits(d, shape, "rebar"))
        k_u, k_w = jax.random.split(key)
        u, w = (jax.random.uniform(k, shape, logits.dtype, 1e-6, 1 - 1e-6) for k in (k_u, k_w))
        return (u > jax.nn.sigmoid(-logits)).astype(sample_dtype_of(d)), (u, w)

    def term(self, particle, site, index, relax):
        relax_params, relax_networks = relax
        return reruns.rebar_term(particle, site, relax_params.get(site), relax_networks.get(site))


class Relaxed(SiteFamily):
    """Gumbel-softmax and straight-through (biased): the program sees a relaxed value,
    differentiable in θ."""

    name = "relaxed"
    detached = False

    def check(self, estimator, site):
        _require_bernoulli(site, (
            f"in a program the {estimator.name!r} relaxation is for Bernoulli sites (a relaxed "
            f"Categorical would change the value's shape to one-hot; use scorefn.grad for "
            f"that); {site.distribution} is not one"))

    def draw(self, estimator, d, key, sample_shape, temperature):
        return relaxed_sample(d, key, sample_shape, temperature,
                              estimator == "straight_through"), None


#: One implementation per family of ``scorefn.registry.FAMILIES``, by name.
FAMILIES: dict[str, SiteFamily] = {f.name: f for f in (
    SiteFamily(), Pathwise(), Enumerate(), MeasureValued(), Antithetic(), ControlVariate(),
    Relaxed())}
