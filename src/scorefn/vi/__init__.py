r"""Black-box variational inference on the scorefn core.

$$
L(\theta) = \mathbb{E}_{z \sim q_\theta}[\log p(x, z) - \log q_\theta(z)], \qquad \nabla_\theta L =
  \mathbb{E}_q\left[(\log p(x, z) - \log q_\theta(z))\, \nabla_\theta \log q_\theta(z)\right]
$$

- models: a NumPyro model function with its data, or ``LogJoint`` (``log_joint(z, *data)``);
- guides: ``mean_field``, ``full_rank``, ``auto_guide``;
- estimators (``scorefn.vi.objectives``): ``score``, ``score_rb`` (Rao-Blackwellised, local
  learning signals), ``pathwise``, ``mixed``, ``iwae``, ``vimco``; each one of the loss
  objects below, on the model and guide as NumPyro programs (``guide_program``,
  ``model_program``);
- ``fit``: the training loop, with checkpoints and posterior helpers;
- ``ELBO``: the same estimators as the loss of ``numpyro.infer.SVI`` (any guide program,
  networks and subsampled plates included), built on ``scorefn.programs``; ``IWAE``
  (DReG) and ``VIMCO`` for the multi-sample bound; ``amortized_posterior`` for
  q(z | x_new);
- ``scorefn.vi.discrete_vae``: a discrete VAE on digits with the discrete estimators.
"""

from scorefn.vi import examples
from scorefn.vi.fit import FitResult, fit
from scorefn.vi.guide_programs import guide_program, model_program
from scorefn.vi.guides import Block, Guide, auto_guide, full_rank, mean_field
from scorefn.vi.model import LogJoint, Model, NumPyroModel, as_model
from scorefn.vi.numpyro_loss import ELBO, IWAE, VIMCO, amortized_posterior, elbo_program
from scorefn.vi.objectives import (
    OBJECTIVES,
    ElboGradient,
    elbo,
    elbo_grad,
    iwae_bound,
)

__all__ = [
    "ELBO",
    "OBJECTIVES",
    "IWAE",
    "Block",
    "ElboGradient",
    "VIMCO",
    "FitResult",
    "Guide",
    "LogJoint",
    "Model",
    "NumPyroModel",
    "amortized_posterior",
    "as_model",
    "auto_guide",
    "elbo",
    "elbo_grad",
    "elbo_program",
    "fit",
    "full_rank",
    "iwae_bound",
    "guide_program",
    "model_program",
    "mean_field",
    "examples",
]
