"""Bayesian logistic regression on the breast-cancer data: pathwise vs score-function VI.

Fits the mean-field guide three ways, compares the ELBOs and the posterior means with a
NUTS run, and saves the ELBO curves. About a minute on 2 CPU cores.

    python examples/vi_logistic_regression.py
"""

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

from scorefn import baselines, vi  # noqa: E402

x, y = vi.examples.breast_cancer()
mcmc = MCMC(NUTS(vi.examples.logistic_regression), num_warmup=500, num_samples=1000,
            progress_bar=False)
mcmc.run(jax.random.key(1), x, y)
w_nuts = np.asarray(mcmc.get_samples()["w"])

runs = {
    "pathwise, K = 1": dict(estimator="pathwise"),
    "score_rb, K = 16, leave-one-out": dict(estimator="score_rb", num_samples=16,
                                             baseline=baselines.leave_one_out()),
    "score, K = 1, EMA": dict(estimator="score", baseline=baselines.ema(0.9)),
}
fig, ax = plt.subplots(figsize=(7, 4))
for name, options in runs.items():
    result = vi.fit(vi.examples.logistic_regression, "mean_field", (x, y), jax.random.key(0),
                    steps=3000, **options)
    error = np.abs(np.asarray(result.means()["w"]) - w_nuts.mean(0)) / w_nuts.std(0)
    print(f"{name:32s} ELBO {result.elbo(jax.random.key(2)):8.2f}   max |mean - NUTS| / sd "
          f"{error.max():.2f}   {result.wall_s:.1f} s")
    smooth = np.convolve(result.objective, np.ones(50) / 50, mode="valid")
    ax.plot(np.arange(50, len(result.objective) + 1), smooth, label=name)
ax.set_ylim(-120, -60)
ax.set_xlabel("step")
ax.set_ylabel("ELBO (50-step mean)")
ax.legend()
fig.tight_layout()
fig.savefig("vi_logistic_regression.png", dpi=120)
print("saved vi_logistic_regression.png")
