"""scorefn.vi.ELBO against numpyro's TraceGraph_ELBO under plate subsampling, in one run.

An amortised Bernoulli-Gaussian model (z_i ~ Bernoulli(½), x_i | z_i ~ N(2 z_i - 1, 1),
N = 40; guide q(z_i | x_i) = Bernoulli(σ(a x_i + b))) has a closed-form ELBO. Both losses
estimate its gradient in (a, b) with K = 4 particles, over the full data and with
``numpyro.plate(subsample_size=10)``; the mean of 4,000 estimates and its standard error are
printed beside the closed form, with z = (mean - truth) / se. The model and guide are those
of tests/scorefn/vi/test_numpyro_loss.py.

    python benchmarks/svi_subsample.py        # about 1 minute
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import TraceGraph_ELBO

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "scorefn", "vi"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_numpyro_loss import PARAMS, X, exact_elbo, guide, model  # noqa: E402

import scorefn  # noqa: E402

REPEATS = 4000


def estimates(loss, batch):
    def one(k):
        g = jax.grad(lambda p: -loss.loss(k, p, model, guide, X, batch=batch))(PARAMS)
        return jnp.stack([g["a"], g["b"]])

    out = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), REPEATS)))
    return out.mean(0), out.std(0, ddof=1) / np.sqrt(REPEATS)


def main():
    truth = jax.grad(exact_elbo)(PARAMS)
    truth = np.array([truth["a"], truth["b"]])
    print(f"closed form: ∂a = {truth[0]:.3f}, ∂b = {truth[1]:.3f}")
    print("| loss | batch | ∂a (± se) | ∂b (± se) | z |")
    print("|---|---|---|---|---|")
    for name, loss in (("scorefn.vi.ELBO", scorefn.vi.ELBO(num_particles=4)),
                       ("numpyro TraceGraph_ELBO", TraceGraph_ELBO(num_particles=4))):
        for batch in (None, 10):
            mean, se = estimates(loss, batch)
            z = (mean - truth) / se
            print(f"| {name} | {batch or 'all 40'} | {mean[0]:.2f} ± {se[0]:.2f} | "
                  f"{mean[1]:.2f} ± {se[1]:.2f} | {z[0]:.1f}, {z[1]:.1f} |")


if __name__ == "__main__":
    main()
