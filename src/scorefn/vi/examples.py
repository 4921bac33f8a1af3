"""Worked models on data that ships in packages or is generated (no downloads).

- ``logistic_regression`` on scikit-learn's breast-cancer data
  (``breast_cancer``, 569 × 30, standardised): w ~ N(0, I), b ~ N(0, 1),
  y_i ~ Bernoulli(sigmoid(x_i·w + b)). Continuous latents only.
- ``gaussian_mixture`` with sampled (not enumerated) assignments
  (``mixture_data``: N points, true means ±2, unit variance): μ ~ N(0, 10² I₂),
  z_i ~ Bernoulli(1/2), x_i ~ N(μ_{z_i}, 1). Reparameterisation is impossible for z.

Both are the models of the Pyro peer benchmark (``benchmarks/vi.py``).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist


def breast_cancer() -> tuple[jnp.ndarray, jnp.ndarray]:
    """(X, y): scikit-learn's bundled breast-cancer data, features standardised."""
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError as error:  # pragma: no cover - sklearn is in the vi/test extras
        raise ImportError("the breast-cancer data ships with scikit-learn: pip install "
                          "'scorefn[vi]'") from error
    d = load_breast_cancer()
    x = (d.data - d.data.mean(0)) / d.data.std(0)
    return jnp.asarray(x, jnp.float32), jnp.asarray(d.target, jnp.float32)


def logistic_regression(x: jnp.ndarray, y: jnp.ndarray | None = None) -> None:
    """Bayesian logistic regression with N(0, 1) priors on the weights and the bias."""
    w = numpyro.sample("w", dist.Normal(jnp.zeros(x.shape[1]), 1.0).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("obs", dist.Bernoulli(logits=x @ w + b), obs=y)


def mixture_data(seed: int = 0, num_points: int = 500) -> tuple[jnp.ndarray, np.ndarray]:
    """(x, z): points from ½N(-2, 1) + ½N(2, 1) and their true components."""
    rng = np.random.default_rng(seed)
    z = rng.integers(0, 2, num_points)
    x = np.where(z == 1, 2.0, -2.0) + rng.standard_normal(num_points)
    return jnp.asarray(x, jnp.float32), z


def gaussian_mixture(x: jnp.ndarray) -> None:
    """Two-component 1-D mixture with per-point assignments sampled as latents."""
    mu = numpyro.sample("mu", dist.Normal(jnp.zeros(2), 10.0).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        numpyro.sample("x", dist.Normal(mu[z.astype(jnp.int32)], 1.0), obs=x)
