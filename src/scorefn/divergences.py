r"""Sample-based estimators of KL(p ‖ q) from log-densities at samples x ~ p.

With the log-ratio \(\ell = \log q(x) - \log p(x)\) at a sample x ~ p (Schulman 2020, "Approximating
KL divergence"):

$$
k_1 = -\ell, \qquad k_2 = \tfrac{1}{2}\,\ell^2, \qquad k_3 = (e^{\ell} - 1) - \ell .
$$

E_p[k1] = E_p[k3] = KL(p ‖ q) (k3 because E_p[e^ℓ] = 1 wherever q is normalised on p's
support); k3 ≥ 0 always, with lower variance when p ≈ q. E_p[k2] is KL only to second order
in p - q. These are estimates of the *value*; what their gradients estimate depends on where
they are placed (inside a reward, through the score function, or differentiated directly
inside a loss): ``scorefn.sequences.loss`` states each case.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(log_p: jax.Array, log_q: jax.Array, estimator: str = "k1") -> jax.Array:
    r"""The estimate of KL(p ‖ q) at each sample, elementwise: k1, k2 or k3 (module docstring).

    ``log_p``, ``log_q``: log-densities of the same samples x ~ p under p and q (same shape).
    Differentiable in both.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    log_ratio = jnp.asarray(log_q) - jnp.asarray(log_p)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    return jnp.expm1(log_ratio) - log_ratio
