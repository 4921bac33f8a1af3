"""A discrete VAE (sigmoid belief network) on binarised digits, trained with any of the
discrete estimators of ``scorefn.programs``.

The model: z ~ Bernoulli(1/2)^L, x | z ~ Bernoulli(σ(decoder(z)))^64; the guide
q(z | x) = Bernoulli(σ(encoder(x)))^L. Encoder and decoder are linear (``hidden=0``) or have
one tanh hidden layer (flax). The ELBO per image,

    E_q[log p(x | z) + log p(z) - log q(z | x)],

is one ``numpyro.factor`` per image inside a data plate, so the program's surrogate credits
each image's latents with that image's terms only, and the gradient of the encoder is the
chosen estimator's while the decoder's (and the encoder's direct path through -log q) is
ordinary autodiff. The data are scikit-learn's bundled 8×8 digits, binarised at half the
pixel range, with a fixed train/test split: nothing is downloaded.

Used by ``scorefn fit --model discrete_vae_digits`` and by ``benchmarks/discrete_vae.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh

try:
    import flax.linen as nn
except ImportError as error:  # pragma: no cover - flax is in the vi extra
    raise ImportError(f"scorefn.vi.discrete_vae needs the vi extra: pip install 'scorefn[vi]' "
                      f"({error})") from error

from scorefn import baselines as baseline_lib
from scorefn import guards, programs, registry, validation
from scorefn.runs import (
    Run,
    plot_with_running_mean,
    saved_figure,
    tree_digest,
)
from scorefn.runs.checkpoints import restore
from scorefn.runs.devices import mesh_of, on_mesh, split

#: per-site estimators a fit can use for the latents (``"score"`` is REINFORCE with an
#: exponential-moving-average baseline; ``"rloo"`` needs ``num_particles >= 2``; ``"arm"`` and
#: ``"disarm"`` use one antithetic pair, two evaluations, per particle; ``"rebar"`` (η = 1,
#: τ = ``temperature``) three).
#: The registry's program estimators for a Bernoulli site that need no learned state.
ESTIMATORS = registry.names(program=True, learned=False,
                            family=("score", "antithetic", "control_variate", "relaxed"))
CHECKPOINT_VERSION = 1
PIXELS = 64


def binarized_digits(test_size: int = 297, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8×8 digits, each pixel 1 where it exceeds half the pixel range
    (16), split into (train, test) by a fixed permutation: float32 arrays (N, 64)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - sklearn is in the vi extra
        raise ImportError("the digits data ships with scikit-learn: pip install "
                          "'scorefn[vi]'") from error

    images = (load_digits().data > 8.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(images.shape[0])
    return images[order[test_size:]], images[order[:test_size]]


class _Net(nn.Module):
    out: int
    hidden: int

    @nn.compact
    def __call__(self, x):
        if self.hidden:
            x = nn.tanh(nn.Dense(self.hidden)(x))
        return nn.Dense(self.out)(x)


@dataclasses.dataclass(frozen=True)
class DiscreteVAE:
    """The model and guide as one stochastic program (see the module docstring).

    Attributes:
      latents: L, the number of Bernoulli latents.
      hidden: units of the encoder's and decoder's one tanh hidden layer; 0 for linear ones.
    """

    latents: int = 32
    hidden: int = 0

    def __post_init__(self):
        for name in ("latents", "hidden"):
            value = getattr(self, name)
            validation.check_int(value, name, 1 if name == "latents" else 0)

    @property
    def encoder(self) -> nn.Module:
        return _Net(self.latents, self.hidden)

    @property
    def decoder(self) -> nn.Module:
        return _Net(PIXELS, self.hidden)

    def init(self, key: jax.Array) -> dict:
        """Parameters ``{"encoder": ..., "decoder": ...}`` (flax variables)."""
        k_enc, k_dec = jax.random.split(key)
        return {"encoder": self.encoder.init(k_enc, jnp.zeros((1, PIXELS))),
                "decoder": self.decoder.init(k_dec, jnp.zeros((1, self.latents)))}

    def guide(self, params: dict, x: jax.Array) -> dist.Distribution:
        return dist.Bernoulli(logits=self.encoder.apply(params["encoder"], x)).to_event(1)

    def log_joint(self, params: dict, x: jax.Array, z: jax.Array) -> jax.Array:
        """log p(x | z) + log p(z), per image."""
        likelihood = dist.Bernoulli(logits=self.decoder.apply(params["decoder"], z)).to_event(1)
        prior = dist.Bernoulli(probs=0.5 * jnp.ones(self.latents)).to_event(1)
        return likelihood.log_prob(x) + prior.log_prob(z)

    def program(self, params: dict, x: jax.Array) -> None:
        """The ELBO of a batch ``x`` (B, 64) as a stochastic program: one latent site ``z``
        and one factor ``elbo`` per image."""
        with numpyro.plate("data", x.shape[0]):
            q = self.guide(params, x)
            z = numpyro.sample("z", q)
            numpyro.factor("elbo", self.log_joint(params, x, z) - q.log_prob(z))

    def log_weights(self, params: dict, key: jax.Array, x: jax.Array,
                    num_samples: int) -> jax.Array:
        """log p(x, z_s) - log q(z_s | x) for S draws z_s ~ q(· | x): shape (S, B)."""
        q = self.guide(params, x)
        z = q.sample(key, (num_samples,))
        return jax.vmap(lambda zs: self.log_joint(params, x, zs) - q.log_prob(zs))(z)

    def evaluate(self, params: dict, key: jax.Array, x: jax.Array,
                 num_samples: int = 100) -> dict[str, float]:
        """Per image, averaged over ``x``: the ELBO (the mean log-weight) and the
        importance-sampled log-likelihood log (1/S) Σ_s w_s, a lower bound on log p(x) that
        tightens as S grows (S = ``num_samples``)."""
        w = _log_weights(self, params, key, jnp.asarray(x), num_samples)
        log_likelihood = jax.nn.logsumexp(w, axis=0) - np.log(num_samples)
        return {"elbo": float(jnp.mean(w)), "log_likelihood": float(jnp.mean(log_likelihood))}


@functools.partial(jax.jit, static_argnums=(0, 4))
def _log_weights(model, params, key, x, num_samples):
    return model.log_weights(params, key, x, num_samples)


@dataclasses.dataclass
class DiscreteVAEFit:
    """What ``fit`` returns.

    ``elbo`` is the training ELBO per image at every step (the surrogate's value on that
    step's batch), ``train``/``test`` are ``DiscreteVAE.evaluate`` of the final
    parameters, ``gradient_variance`` maps a step to the mean over the encoder's parameters
    of the variance of their gradient estimates there (fixed batch, independent keys),
    ``us_per_step`` is the median time of a compiled step.
    """

    params: dict
    estimator: str
    num_particles: int
    steps: int
    elbo: list[float]
    train: dict[str, float]
    test: dict[str, float]
    gradient_variance: dict[int, float]
    us_per_step: float
    wall_s: float

    @property
    def final_elbo(self) -> float:
        """The training ELBO per image averaged over the last 100 steps."""
        return float(np.mean(self.elbo[-100:]))

    def plot(self, path: str, title: str = "") -> None:
        """Save the training-ELBO curve (per step and a 50-step running mean)."""
        y = np.asarray(self.elbo)
        with saved_figure(path) as (_, ax):
            plot_with_running_mean(ax, y, 50)
            ax.axhline(self.test["elbo"], color="k", ls="--", lw=1, label="test ELBO (final)")
            ax.set_ylim(np.percentile(y[len(y) // 10:], 1) - 2, y.max() + 2)
            ax.set_xlabel("step")
            ax.set_ylabel("ELBO per image (nats)")
            ax.set_title(title or f"discrete VAE on digits, {self.estimator}, "
                                  f"K = {self.num_particles}")
            ax.legend()

    def as_dict(self) -> dict[str, Any]:
        return {"estimator": self.estimator, "num_particles": self.num_particles,
                "steps": self.steps, "final_train_elbo": self.final_elbo, "train": self.train,
                "test": self.test,
                "gradient_variance": {str(k): x for k, x in self.gradient_variance.items()},
                "us_per_step": self.us_per_step, "wall_s": self.wall_s,
                "unbiased": registry.ESTIMATORS[self.estimator].unbiased}


def fit(
    model: DiscreteVAE,
    data: tuple[np.ndarray, np.ndarray],
    key: jax.Array,
    *,
    estimator: str = "disarm",
    num_particles: int = 1,
    steps: int = 2000,
    batch_size: int = 100,
    learning_rate: float = 1e-3,
    temperature: float = 0.5,
    ema_decay: float = 0.9,
    variance_at: Sequence[int] | None = None,
    variance_samples: int = 64,
    evaluation_samples: int = 100,
    steps_per_call: int = 100,
    checkpoint: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    devices: int | Sequence[Any] | Mesh | None = None,
) -> DiscreteVAEFit:
    """Train ``model`` on ``data = (train, test)`` with Adam, the latents' gradient from
    ``estimator`` (one of ``ESTIMATORS``) through ``scorefn.programs.surrogate``.

    Args:
      num_particles: K runs of the program per step (``"rloo"`` needs K >= 2; ``"arm"`` and
        ``"disarm"`` take one antithetic pair per particle, so K = 1 costs two evaluations,
        as ``"rloo"`` with K = 2 does).
      batch_size: images per step: each epoch shuffles the training set and cuts it into
        batches (without replacement within an epoch; the remainder is left out).
      temperature: τ of ``"gumbel_softmax"`` and ``"straight_through"``.
      ema_decay: the decay of ``"score"``'s moving-average baseline.
      variance_at: steps (0 = before training) where the encoder's gradient variance is
        measured from ``variance_samples`` estimates on the first ``batch_size`` training
        images; default the start, the middle and the end.
      evaluation_samples: S of the importance-sampled log-likelihood of the final model.
      steps_per_call: steps per compiled call (a ``lax.scan``); progress and checkpoints
        follow calls.
      checkpoint: write the whole state there after every call (data only,
        ``scorefn.runs.checkpoints``).
      resume: continue from ``checkpoint``, with the same result as an uninterrupted run,
        and refuses a checkpoint written with other settings (or a missing one).
      overwrite: a fresh run refuses a ``checkpoint`` that already exists; ``True`` starts
        over in its place.
      devices: split each step's minibatch across devices (a count, a device list or a
        ``jax.sharding.Mesh``; ``scorefn.runs.devices``), the parameters replicated: the same
        run as on one device up to the order of the sums. A checkpoint resumes on any
        device count.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    for name, value, low in (("num_particles", num_particles, 1), ("steps", steps, 1),
                             ("batch_size", batch_size, 1), ("steps_per_call", steps_per_call, 1),
                             ("variance_samples", variance_samples, 2),
                             ("evaluation_samples", evaluation_samples, 1)):
        validation.check_int(value, name, low)
    if estimator == "rloo" and num_particles < 2:
        raise ValueError("estimator='rloo' needs num_particles >= 2 (its baseline for one "
                         "particle is the mean of the others)")
    for name, value in (("learning_rate", learning_rate), ("temperature", temperature)):
        if not (np.ndim(value) == 0 and np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not 0 <= ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
    train, test = (np.asarray(a, np.float32) for a in data)
    for name, a in (("train", train), ("test", test)):
        if a.ndim != 2 or a.shape[1] != PIXELS or not np.isin(a, (0.0, 1.0)).all():
            raise ValueError(f"data's {name} images must be binary arrays (N, {PIXELS}), got "
                             f"shape {a.shape}")
    if batch_size > train.shape[0]:
        raise ValueError(f"batch_size {batch_size} exceeds the {train.shape[0]} training images")
    validation.check_key(key)
    variance_at = sorted({0, steps // 2, steps} if variance_at is None else set(variance_at))
    if any(not 0 <= s <= steps for s in variance_at):
        raise ValueError(f"variance_at must be steps in [0, {steps}], got {variance_at}")

    settings = {"model": dataclasses.asdict(model), "estimator": estimator,
                "num_particles": int(num_particles), "steps": int(steps),
                "batch_size": int(batch_size), "learning_rate": float(learning_rate),
                "temperature": float(temperature), "ema_decay": float(ema_decay),
                "variance_at": list(variance_at), "variance_samples": int(variance_samples),
                "steps_per_call": int(steps_per_call),
                "key": np.asarray(jax.random.key_data(key)).tolist(),
                "data": tree_digest((train, test))}
    optimizer = optax.adam(learning_rate)
    ema = baseline_lib.ema(ema_decay)
    options = dict(num_particles=num_particles, estimators={"z": estimator},
                   temperature=temperature)
    if estimator == "score":
        options["return_signals"] = True
    train_device = jnp.asarray(train)

    def objective(params, k, x, baseline):
        """(surrogate, EMA state after this step's signals)."""
        if estimator != "score":
            return programs.surrogate(model.program, params, k, x, **options), baseline
        value, signals = programs.surrogate(model.program, params, k, x,
                                            baselines={"z": baseline}, **options)
        return value, ema.update(signals["z"], baseline)

    mesh = mesh_of(devices, "data")

    def step(carry, inputs):
        params, opt_state, baseline = carry
        k_program, batch = inputs
        (value, baseline), grads = jax.value_and_grad(objective, has_aux=True)(
            params, k_program, split(train_device[batch], mesh), baseline)
        updates, opt_state = optimizer.update(jax.tree.map(jnp.negative, grads), opt_state,
                                              params)  # ascend the ELBO
        return (optax.apply_updates(params, updates), opt_state, baseline), value / batch_size

    @jax.jit
    def run_steps(carry, keys, batches):
        return jax.lax.scan(step, carry, (keys, batches))

    fixed_batch = train_device[:batch_size]

    @jax.jit
    def encoder_variance(params, baseline, k):
        def estimate(kk):
            grads = jax.grad(lambda p: objective(p, kk, fixed_batch, baseline)[0])(params)
            return ravel_pytree(grads["encoder"])[0]

        estimates = jax.vmap(estimate)(jax.random.split(k, variance_samples))
        return jnp.mean(jnp.var(estimates, axis=0, ddof=1))

    k_init, k_train, k_variance, k_eval = jax.random.split(key, 4)
    params = model.init(k_init)
    carry = (params, optimizer.init(params), ema.init())
    done, elbo, variances, timings = 0, [], {}, []
    run = Run("scorefn.vi.discrete_vae", CHECKPOINT_VERSION, checkpoint=checkpoint, resume=resume,
              settings=settings, progress=progress, description=f"discrete VAE, {estimator}",
              total=steps, unit="steps", field="ELBO", overwrite=overwrite)
    if run.restored is not None:
        payload = run.restored
        carry = restore(payload["carry"], like=carry)
        done, elbo = payload["done"], list(payload["elbo"])
        variances = {int(k): x for k, x in payload["gradient_variance"].items()}
        run.announce_resume(done, steps)
    k_train, k_batches = jax.random.split(k_train)
    step_keys = jax.random.split(k_train, steps)
    batch_seed = np.asarray(jax.random.key_data(k_batches)).ravel().tolist()
    started = time.perf_counter()
    with run:
        while True:
            if done in variance_at and done not in variances:
                variances[done] = float(encoder_variance(carry[0], carry[2],
                                                         jax.random.fold_in(k_variance, done)))
            if done >= steps:
                break
            # Calls end at the variance checkpoints so that each is measured at its step.
            end = min([done + steps_per_call, steps] + [s for s in variance_at if s > done])
            tic = time.perf_counter()
            with guards.runtime_errors(f"fit steps {done} to {end - 1}"):
                carry, values = run_steps(on_mesh(carry, mesh), step_keys[done:end], _batches(
                    batch_seed, train.shape[0], batch_size, done, end))
                values = np.asarray(values)
            timings.append(((time.perf_counter() - tic) / (end - done), end - done))
            if not np.isfinite(values).all():
                bad = done + int(np.argmax(~np.isfinite(values)))
                raise FloatingPointError(f"the ELBO became non-finite at step {bad}")
            elbo += values.tolist()
            done = end
            run.save(done=done, elbo=elbo, carry=tuple(carry),
                     gradient_variance={str(k): x for k, x in variances.items()})
            run.advance(done, f"{np.mean(elbo[-100:]):.2f}")
    params = carry[0]
    # The first call compiles: the median over the others (all of them if there is one).
    per_step = [t for t, _ in (timings[1:] or timings)]
    return DiscreteVAEFit(
        params=params, estimator=estimator, num_particles=num_particles, steps=steps,
        elbo=elbo, train=model.evaluate(params, k_eval, train, evaluation_samples),
        test=model.evaluate(params, jax.random.fold_in(k_eval, 1), test, evaluation_samples),
        gradient_variance=variances,
        us_per_step=float(np.median(per_step) * 1e6) if per_step else float("nan"),
        wall_s=time.perf_counter() - started)


def _batches(seed: list[int], n: int, batch_size: int, start: int, end: int) -> np.ndarray:
    """The training images of steps [start, end): epoch e is a permutation of the n images
    (NumPy's PCG64 seeded with the fit's key and e, the same on every platform) cut into
    n // batch_size batches. One permutation per epoch instead of a draw without replacement
    per step, which costs a sort of the whole set (half the step on a CPU)."""
    per_epoch = n // batch_size
    out = np.empty((end - start, batch_size), np.int32)
    for epoch in range(start // per_epoch, (end - 1) // per_epoch + 1):
        order = np.random.default_rng([*seed, epoch]).permutation(n)
        for t in range(max(start, epoch * per_epoch), min(end, (epoch + 1) * per_epoch)):
            j = t - epoch * per_epoch
            out[t - start] = order[j * batch_size:(j + 1) * batch_size]
    return out
