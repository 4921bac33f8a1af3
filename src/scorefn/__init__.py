r"""scorefn: score-function (REINFORCE) gradients of expectations on JAX.

$$
\nabla_\theta\, \mathbb{E}_{x \sim p_\theta}[f(x)] = \mathbb{E}_{x \sim p_\theta}\left[f(x)\, \nabla_\theta
  \log p_\theta(x)\right]
$$

The core: ``sample``, ``score_grad`` and ``grad`` (score-function and pathwise
estimators), ``baselines``, ``control_variates``, ``diagnostics`` and
``compare``; ``fisher`` (Fisher information, Fisher-vector products, natural
gradients, ``natural_gradient`` as an optax transformation); ``programs`` (stochastic programs:
several sampling sites, the surrogate objective for any training loop). Applications:
``sequences`` (policy gradients for autoregressive models), ``es``, ``vi`` and ``rl``.
"""

from scorefn import (
    baselines,
    control_variates,
    diagnostics,
    discrete,
    divergences,
    es,
    fisher,
    importance,
    measure_valued,
    numerics,
    programs,
    rao_blackwell,
    sequences,
    vi,
)
from scorefn.diagnostics import compare
from scorefn.estimators import f_values, grad, pathwise_grad, score_grad, standardized
from scorefn.fisher import fisher_information, natural_gradient
from scorefn.runs.compilation_cache import enable_compilation_cache
from scorefn.sampling import sample
from scorefn.scores import joint_log_prob, per_sample_scores

__version__ = "0.1.0"


def __getattr__(name: str):
    # scorefn.rl needs the optional `rl` extra (gymnax, gymnasium, flax): import it on use.
    if name == "rl":
        import importlib

        return importlib.import_module("scorefn.rl")
    raise AttributeError(f"module 'scorefn' has no attribute {name!r}")


__all__ = [
    "baselines",
    "compare",
    "control_variates",
    "diagnostics",
    "discrete",
    "divergences",
    "enable_compilation_cache",
    "es",
    "f_values",
    "fisher",
    "fisher_information",
    "importance",
    "grad",
    "joint_log_prob",
    "measure_valued",
    "natural_gradient",
    "numerics",
    "pathwise_grad",
    "programs",
    "rao_blackwell",
    "per_sample_scores",
    "sample",
    "score_grad",
    "sequences",
    "standardized",
    "vi",
]
