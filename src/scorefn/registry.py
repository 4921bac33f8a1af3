"""The one registry of scorefn's gradient estimators of ∇θ E_{x~p_θ}[f(x)].

Each entry says what the estimator is: its family (how it enters a gradient), whether it is
unbiased for ∇θ E[f] (the biased ones name what they estimate instead), whether only its
first-order gradient is right (the rest are exact at every order, as DiCE's surrogate is),
what the distribution must offer, and its formula. ``scorefn.grad`` (one distribution),
``scorefn.programs`` (one estimator per site of a stochastic program), the discrete VAE's
choices, the diagnostics and the docs read it; a name means the same estimator everywhere.

Families: ``score`` (the log-derivative trick, with a baseline), ``pathwise``
(reparameterisation), ``enumerate`` (a finite support summed exactly, in whole or in part),
``measure_valued`` (weak derivatives), ``antithetic`` (paired Bernoulli draws),
``control_variate`` (REBAR/RELAX: a relaxed control variate) and ``relaxed`` (the biased
Gumbel-softmax relaxations).
"""

from __future__ import annotations

import dataclasses

FAMILIES = ("score", "pathwise", "enumerate", "measure_valued", "antithetic", "control_variate",
            "relaxed")


#: ``scorefn.grad``'s keyword options that some estimators take and others refuse, with
#: their defaults (an option left at its default is not refused).
GRAD_OPTIONS = {"baseline": None, "control_variate": None, "standardize": False,
                "max_norm": None, "nan_policy": "raise", "per_sample": False,
                "vectorized": False, "temperature": 0.5}
SCORE_OPTIONS = ("baseline", "control_variate", "standardize", "max_norm", "nan_policy",
                 "per_sample", "vectorized")


@dataclasses.dataclass(frozen=True)
class Estimator:
    """One gradient estimator (module docstring). ``single_distribution``: ``scorefn.grad``
    takes it; ``options``: which of ``scorefn.grad``'s keyword options it takes (beyond
    ``validate`` and ``runtime_checks``, which every estimator takes; ``grad`` refuses the
    others by name); ``program``: ``scorefn.programs`` takes it per site; ``learned``: it
    learns parameters of its own (a network), so it needs state carried from step to step."""

    name: str
    family: str
    unbiased: bool
    first_order_only: bool
    needs: str
    formula: str
    single_distribution: bool = True
    options: tuple[str, ...] = ()
    program: bool = True
    learned: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        unknown = set(self.options) - set(GRAD_OPTIONS)
        if unknown:
            raise ValueError(f"options must be among {tuple(GRAD_OPTIONS)}, got {sorted(unknown)}")


ESTIMATORS: dict[str, Estimator] = {e.name: e for e in (
    Estimator("score", "score", True, False, "any distribution; f need not be differentiable",
              "(f(x) - b) ∇θ log p_θ(x); in a program (L_s - b_s) ∇θ log p_θ(x_s), L_s the "
              "terms downstream of s", options=SCORE_OPTIONS),
    Estimator("pathwise", "pathwise", True, False,
              "a reparameterised sampler (has_rsample) and a differentiable f",
              "∇θ f(T(ε, θ)), x = T(ε, θ)",
              options=("control_variate", "max_norm", "per_sample", "vectorized")),
    Estimator("enumerate", "enumerate", True, False,
              "a finite support known when tracing (Bernoulli, Categorical, integer intervals)",
              "∇θ Σ_v p_θ(x = v) E[f | x = v], summed exactly", single_distribution=False),
    Estimator("measure_valued", "measure_valued", True, True, "Normal, Poisson or Bernoulli",
              "Σ_ij c_ij (f(x with x_j ~ p⁺_ij) - f(x with x_j ~ p⁻_ij)) ∇θ φ_ij",
              options=("control_variate", "per_sample")),
    Estimator("rloo", "score", True, False, "any distribution and N ≥ 2 samples",
              "'score' with the leave-one-out baseline over the N samples (Kool et al. 2019)",
              options=tuple(o for o in SCORE_OPTIONS if o != "baseline")),
    Estimator("arm", "antithetic", True, True, "Bernoulli",
              "(f(b⁽¹⁾) - f(b⁽²⁾)) (u - ½) ∇θ φ (Yin & Zhou 2019)", options=("vectorized",)),
    Estimator("disarm", "antithetic", True, True, "Bernoulli",
              "½ (f(b) - f(b̃)) (-1)^b̃ 1[b ≠ b̃] σ(|φ|) ∇θ φ (Dong et al. 2020)",
              options=("vectorized",)),
    Estimator("sum_and_sample", "enumerate", True, False, "one Categorical value",
              "∇θ [Σ_{c∈C} p_θ(c) f(c) + (1 - p_θ(C)) □(log q_θ(x)) f(x)], C the k - 1 most "
              "probable classes, x ~ q = p(· | x ∉ C) (Liu et al. 2019)"),
    Estimator("rebar", "control_variate", True, True,
              "Bernoulli or Categorical (in a program: Bernoulli)",
              "(f(b) - η c(z̃)) ∇θ log p(b) + η ∇θ c(z) - η ∇θ c(z̃), c(z) = f(σ(z/τ)), z "
              "logistic-perturbed logits, z̃ ~ z | b (Tucker et al. 2017)",
              options=("temperature",)),
    Estimator("relax", "control_variate", True, True,
              "Bernoulli or Categorical (in a program: Bernoulli), and state",
              "'rebar' with a flax network in the control variate, c(z) = η f(σ(z/τ)) + "
              "r_ψ(σ(z/τ)) (Grathwohl et al. 2018)", learned=True),
    Estimator("gumbel_softmax", "relaxed", False, False,
              "Bernoulli or Categorical (in a program: Bernoulli)",
              "∇θ f(σ((φ + logistic noise)/τ)): biased, the gradient of the relaxed "
              "objective E[f(σ((φ + g)/τ))] (Jang et al. 2017; Maddison et al. 2017)",
              options=("temperature", "vectorized")),
    Estimator("straight_through", "relaxed", False, False,
              "Bernoulli or Categorical (in a program: Bernoulli)",
              "the hard b forward, the relaxed sample's gradient backward: biased, no "
              "objective it is the gradient of (Bengio et al. 2013)",
              options=("temperature", "vectorized")),
)}


def estimator(name: str) -> Estimator:
    """The registry's entry ``name``; a ValueError lists the known ones."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]


def names(*, single_distribution: bool | None = None, program: bool | None = None,
          unbiased: bool | None = None, family: tuple[str, ...] | None = None,
          learned: bool | None = None) -> tuple[str, ...]:
    """The registry's names, in its order, filtered by the given attributes."""
    wanted = {"single_distribution": single_distribution, "program": program,
              "unbiased": unbiased, "learned": learned}
    return tuple(name for name, e in ESTIMATORS.items()
                 if all(v is None or getattr(e, k) == v for k, v in wanted.items())
                 and (family is None or e.family in family))
