"""scorefn: score-function (REINFORCE) gradients of expectations on JAX.

    ∇θ E_{x~p_θ}[f(x)] = E_{x~p_θ}[f(x) ∇θ log p_θ(x)]

The core: :func:`sample`, :func:`score_grad` and :func:`grad` (score-function and pathwise
estimators), :mod:`baselines`, :mod:`control_variates`, :mod:`diagnostics` and
:func:`compare`.
"""

from scorefn import baselines, control_variates, diagnostics
from scorefn.diagnostics import compare
from scorefn.estimators import evaluate, grad, pathwise_grad, score_grad, standardized
from scorefn.sampling import sample
from scorefn.scores import joint_log_prob, per_sample_scores

__version__ = "0.1.0"

__all__ = [
    "baselines",
    "compare",
    "control_variates",
    "diagnostics",
    "evaluate",
    "grad",
    "joint_log_prob",
    "pathwise_grad",
    "per_sample_scores",
    "sample",
    "score_grad",
    "standardized",
]
