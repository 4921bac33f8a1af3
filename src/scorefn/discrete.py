r"""Gradient estimators for discrete distributions beyond REINFORCE.

For b ~ Bernoulli(σ(φ)) (independent over the batch, logits φ):

ARM, augment-REINFORCE-merge (Yin & Zhou 2019), unbiased:

$$
\nabla_\phi \mathbb{E}[f(b)] = \mathbb{E}_u\left[\left(f(b^{(1)}) - f(b^{(2)})\right)(u - \tfrac12)\right],
  \quad u \sim U(0, 1)^d, \quad b^{(1)} = 1[u > \sigma(-\phi)], \quad b^{(2)} = 1[u < \sigma(\phi)]
$$

DisARM, ARM with the antithetic noise integrated out (Dong, Mnih & Tucker 2020), unbiased,
never higher variance than ARM per coordinate:

$$
\nabla_\phi \mathbb{E}[f(b)] = \mathbb{E}_u\left[\tfrac12 \left(f(b) - f(\tilde b)\right)(-1)^{\tilde b}\,
  1[b \ne \tilde b]\, \sigma(\lvert\phi\rvert)\right], \quad b = 1[u < \sigma(\phi)], \quad \tilde b = 1[1
  - u < \sigma(\phi)]
$$

Both need one antithetic pair (b, b̃) per estimate, i.e. **two** evaluations of f:
``num_samples`` counts evaluations and must be even, ``num_samples // 2`` pairs are averaged.

Relaxations (biased, the usual reference points), for Bernoulli and Categorical:

- Gumbel-softmax / Concrete (Jang et al. 2017; Maddison et al. 2017): x = softmax((logits +
  g)/τ), g ~ Gumbel, differentiated pathwise; f sees the relaxed x. **Biased** for ∇E[f(b)]
  at every τ > 0 (it estimates the gradient of E[f(x)] under the relaxation);
- straight-through Gumbel-softmax (Bengio et al. 2013; Jang et al. 2017): f sees the hard
  sample, the gradient is the relaxed sample's: x = hard + soft - stop_gradient(soft).
  **Biased**.

For Bernoulli the relaxation uses logistic noise, x = σ((φ + log u - log(1 - u))/τ); for a
Categorical with K classes f receives **one-hot** vectors of shape (..., K) (relaxed or hard),
not indices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax

from scorefn import guards, validation
from scorefn.types import DistFn

RELAXATIONS = ("gumbel_softmax", "straight_through")


def base_distribution(d: dist.Distribution) -> dist.Distribution:
    """The family under numpyro's ``to_event`` (Independent), plate (Expanded) and mask
    wrappers."""
    while isinstance(d, dist.Independent | dist.ExpandedDistribution | dist.MaskedDistribution):
        d = d.base_dist
    return d


def sample_dtype_of(d: dist.Distribution) -> Any:
    """The dtype numpyro's sampler gives ``d``'s samples (read abstractly: nothing is drawn)."""
    return jax.eval_shape(lambda: d.sample(jax.random.key(0))).dtype


def bernoulli_logits(d: dist.Distribution, shape: tuple[int, ...] | None = None,
                     estimator: str = "arm") -> jax.Array:
    """The logits φ of a (batched, ``to_event`` or plate-expanded) Bernoulli, broadcast to
    ``shape`` (default: its batch + event shape); a ValueError for any other family."""
    base = base_distribution(d)
    if not isinstance(base, dist.BernoulliLogits | dist.BernoulliProbs):
        raise ValueError(
            f"estimator={estimator!r} is for Bernoulli distributions (logits or probs, batched, "
            f"under to_event or in plates); got {type(base).__name__}. For a Categorical use "
            "'score' (with a leave-one-out baseline, 'rloo') or a relaxation"
        )
    if shape is None:
        shape = tuple(d.batch_shape) + tuple(d.event_shape)
    return jnp.broadcast_to(base.logits, shape)


def antithetic_pair(logits: jax.Array, u: jax.Array, estimator: str) -> tuple[jax.Array, jax.Array]:
    """The two Bernoulli samples of one ARM or DisARM pair from the same uniforms u."""
    if estimator == "arm":
        return (u > jax.nn.sigmoid(-logits)), (u < jax.nn.sigmoid(logits))
    return (u < jax.nn.sigmoid(logits)), ((1.0 - u) < jax.nn.sigmoid(logits))


def antithetic_weights(logits: jax.Array, u: jax.Array, first: jax.Array, second: jax.Array,
                       estimator: str) -> jax.Array:
    """w with ∇φ E[f] = E[(f(first) - f(second)) w]: ARM's u - ½, DisARM's
    ½ (-1)^{b̃} 1[b ≠ b̃] σ(|φ|)."""
    if estimator == "arm":
        return u - 0.5
    sign = jnp.where(second, -1.0, 1.0)
    return 0.5 * sign * (first != second) * jax.nn.sigmoid(jnp.abs(logits))


def antithetic_grad(
    f: Callable,
    dist_fn: DistFn,
    params: Any,
    key: jax.Array,
    num_samples: int,
    *,
    estimator: str = "disarm",
    vectorized: bool = False,
    runtime_checks: bool = True,
) -> Any:
    r"""ARM (``estimator="arm"``) or DisARM (``"disarm"``) estimate of ∇θ E_{b~p_θ}[f(b)] for a
    Bernoulli ``dist_fn(params)``; unbiased (see the module docstring for the formulas).

    ``num_samples`` evaluations of f: ``num_samples // 2`` antithetic pairs (it must be even).
    The gradient in the logits φ reaches ``params`` by the chain rule (a VJP through
    ``dist_fn``). ``runtime_checks``: as ``scorefn.score_grad``'s (False: no host callback under ``jit``).
    """
    validation.check_key(key)
    num_samples = validation.check_int(num_samples, "num_samples", 2)
    if num_samples % 2:
        raise ValueError(f"estimator={estimator!r} evaluates f at antithetic pairs: num_samples "
                         f"must be even (2 per pair), got {num_samples}")
    d = dist_fn(params)
    shape = tuple(d.batch_shape) + tuple(d.event_shape)
    logits = jax.lax.stop_gradient(bernoulli_logits(d, shape, estimator))
    pairs = num_samples // 2
    u = jax.random.uniform(key, (pairs, *shape), dtype=logits.dtype)
    first, second = antithetic_pair(logits, u, estimator)
    sample_dtype = sample_dtype_of(d)

    def evaluate(b):
        b = b.astype(sample_dtype)
        return f(b) if vectorized else jax.vmap(f)(b)

    f1, f2 = evaluate(first), evaluate(second)
    validation.check_values_shape(f1, pairs)
    diff = (f1 - f2).astype(logits.dtype)
    guard = guards.finite_guard((f1, guards.nonfinite_values_message),
                                (f2, guards.nonfinite_values_message), enabled=runtime_checks)
    weights = antithetic_weights(logits, u, first, second, estimator)
    g_logits = jnp.mean(diff.reshape((pairs,) + (1,) * len(shape)) * weights, axis=0) + guard
    _, vjp = jax.vjp(lambda p: bernoulli_logits(dist_fn(p), shape, estimator), params)
    (grad,) = vjp(jax.lax.stop_gradient(g_logits))
    return grad


def relaxed_sample(d: dist.Distribution, key: jax.Array, sample_shape: tuple[int, ...],
                   temperature: float, straight_through: bool) -> jax.Array:
    """A relaxed sample of a Bernoulli (values in (0, 1)) or a Categorical (one-hot, last axis
    K), differentiable in the distribution's parameters; hard forward values with the relaxed
    gradient if ``straight_through``."""
    base = base_distribution(d)
    shape = tuple(sample_shape) + tuple(d.batch_shape) + tuple(d.event_shape)
    if isinstance(base, dist.BernoulliLogits | dist.BernoulliProbs):
        logits = jnp.broadcast_to(base.logits, shape)
        u = jax.random.uniform(key, shape, dtype=logits.dtype, minval=1e-7, maxval=1 - 1e-7)
        noisy = logits + jnp.log(u) - jnp.log1p(-u)
        soft = jax.nn.sigmoid(noisy / temperature)
        hard = (noisy > 0).astype(soft.dtype)
    elif isinstance(base, dist.CategoricalLogits | dist.CategoricalProbs):
        logits = jnp.broadcast_to(base.logits, shape + base.logits.shape[-1:])
        noisy = logits + jax.random.gumbel(key, logits.shape, dtype=logits.dtype)
        soft = jax.nn.softmax(noisy / temperature, axis=-1)
        hard = jax.nn.one_hot(jnp.argmax(noisy, axis=-1), logits.shape[-1], dtype=soft.dtype)
    else:
        raise ValueError(
            f"the Gumbel-softmax and straight-through relaxations are for Bernoulli and "
            f"Categorical distributions; got {type(base).__name__}"
        )
    if straight_through:
        return hard + soft - jax.lax.stop_gradient(soft)
    return soft


def relaxed_grad(
    f: Callable,
    dist_fn: DistFn,
    params: Any,
    key: jax.Array,
    num_samples: int,
    *,
    estimator: str = "gumbel_softmax",
    temperature: float = 0.5,
    vectorized: bool = False,
    runtime_checks: bool = True,
) -> Any:
    r"""Gumbel-softmax (``"gumbel_softmax"``) or straight-through (``"straight_through"``)
    estimate (1/N) Σ_n ∇θ f(x_n(θ)); **biased** for ∇θ E[f(b)] (see the module docstring).

    f must be differentiable and accept relaxed values: floats in (0, 1) for a Bernoulli,
    one-hot vectors (..., K) for a Categorical. ``runtime_checks``: as
    ``scorefn.score_grad``'s (False: no host callback under ``jit``).
    """
    validation.check_key(key)
    num_samples = validation.check_int(num_samples, "num_samples")
    if estimator not in RELAXATIONS:
        raise ValueError(f"estimator must be one of {RELAXATIONS}, got {estimator!r}")
    if not (isinstance(temperature, int | float) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    straight = estimator == "straight_through"

    def mean_value(p):
        x = relaxed_sample(dist_fn(p), key, (num_samples,), temperature, straight)
        values = f(x) if vectorized else jax.vmap(f)(x)
        validation.check_values_shape(values, num_samples)
        return jnp.mean(values), values

    grad, values = jax.grad(mean_value, has_aux=True)(params)
    guard = guards.finite_guard((values, guards.nonfinite_values_message),
                                enabled=runtime_checks)
    return jax.tree.map(lambda g: g + guard.astype(g.dtype), grad)


# REBAR and RELAX ----------------------------------------------------------------------------


class RelaxState(NamedTuple):
    """The control variate's parameters (``log_temperature``, ``eta`` and, for RELAX, the
    network's ``net``) and their optimiser's state."""

    params: Any
    opt_state: Any


def logistic_perturbed(logits: jax.Array, u: jax.Array) -> jax.Array:
    """z = φ + log u − log(1 − u) for u ~ Uniform(0, 1): b = 1[z > 0] is a Bernoulli(σ(φ))
    draw, and σ(z/τ) its relaxation."""
    return logits + jnp.log(u) - jnp.log1p(-u)


def conditional_uniform(b: jax.Array, prob: jax.Array, w: jax.Array) -> jax.Array:
    """u' ~ Uniform(0, 1) given 1[u' > 1 - p] = b, from w ~ Uniform(0, 1): the uniform whose
    logistic perturbation z̃ = φ + log u' - log(1 - u') is z | b (differentiable in p)."""
    return jnp.clip(b * (1 - prob + w * prob) + (1 - b) * w * (1 - prob), 1e-6, 1 - 1e-6)


def rebar_estimate(log_p: jax.Array, signal: jax.Array, c_z: jax.Array,
                   c_given_b: jax.Array) -> jax.Array:
    r"""REBAR's (and RELAX's) estimate as a term of value 0 whose gradient is

    $$
    \left(f(b) - c(\tilde z)\right) \nabla \log p(b) + \nabla c(z) - \nabla c(\tilde z),
    $$

    from ``log_p`` = log p(b), ``signal`` = f(b) − c(z̃) held constant in θ (differentiable
    in the control variate's ψ, so that a step of ψ down the estimate's square sees it),
    ``c_z`` = c(z) and ``c_given_b`` = c(z̃). One distribution (``Relax``) and a program's
    site (``programs.reruns.rebar_term``, with the terms the site reaches as f) share it."""
    def zero_valued(x):
        return x - jax.lax.stop_gradient(x)

    return (jnp.sum(signal * zero_valued(log_p)) + zero_valued(jnp.sum(c_z))
            - zero_valued(jnp.sum(c_given_b)))


@dataclasses.dataclass(frozen=True)
class Relax:
    r"""REBAR (``network=None``; Tucker et al. 2017) and RELAX (a flax ``network``;
    Grathwohl et al. 2018) for Bernoulli and Categorical distributions with logits φ,
    unbiased for any control-variate parameters ψ:

    $$
    \hat g = \left(f(b) - c_\psi(\tilde z)\right) \nabla_\phi \log p_\phi(b) + \nabla_\phi c_\psi(z) -
      \nabla_\phi c_\psi(\tilde z), \quad z = \phi + \log u - \log(1 - u), \quad b = 1[z > 0], \quad \tilde
      z \sim p(z \mid b), \quad c_\psi(z) = \eta f(\sigma(z/\tau)) + r_\psi(\sigma(z/\tau))
    $$

    (REBAR: r ≡ 0, ψ = (η, log τ); RELAX adds the network r_ψ. For a Categorical, z are
    Gumbel-perturbed log-probabilities, b = argmax z reaches f as a one-hot vector, and
    σ(z/τ) is softmax(z/τ).) ``rebar_term=False`` drops
    η f(σ(z/τ)) so that f need not be differentiable or accept relaxed inputs (RELAX with the
    network alone). ψ is trained to minimise the estimator's variance: since E[ĝ] does not
    depend on ψ, ∇ψ E[ĝ²] = ∇ψ Var[ĝ], a gradient through ĝ itself (second order). State is
    explicit, optax style:

    ```python
    relax = scorefn.discrete.Relax(network=MLP(), optimizer=optax.adam(1e-2))
    state = relax.init(jax.random.key(0), dist_fn(params))
    g, state = relax.grad(f, dist_fn, params, key, num_samples, state)   # and one ψ step
    ```
    """

    network: Any = None
    optimizer: Any = None  # an optax GradientTransformation (default optax.adam(1e-2))
    temperature: float = 0.5
    eta: float = 1.0
    rebar_term: bool = True

    def __post_init__(self):
        if self.network is None and not self.rebar_term:
            raise ValueError("with network=None (REBAR) the control variate is the η f(σ(z/τ)) term: "
                             "rebar_term must be True")
        if not (isinstance(self.temperature, int | float) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}")

    @property
    def name(self) -> str:
        return "rebar" if self.network is None else "relax"

    def _optimizer(self):
        return self.optimizer if self.optimizer is not None else optax.adam(1e-2)

    def logits(self, d: dist.Distribution) -> tuple[jax.Array, bool]:
        """The logits the estimator works in (Bernoulli: the shape of a sample; Categorical:
        a sample's shape + (K,)), and whether d is a Categorical."""
        shape = tuple(d.batch_shape) + tuple(d.event_shape)
        base = base_distribution(d)
        if isinstance(base, dist.CategoricalLogits | dist.CategoricalProbs):
            return jnp.broadcast_to(base.logits, shape + base.logits.shape[-1:]), True
        try:
            return bernoulli_logits(d, shape, self.name), False
        except ValueError:
            raise ValueError(f"{self.name} is for Bernoulli and Categorical distributions "
                             f"(batched, under to_event or in plates); got {type(base).__name__}"
                             ) from None

    def init(self, key: jax.Array, d: dist.Distribution) -> RelaxState:
        """ψ at its initial values (the network initialised with ``key`` on the relaxed
        sample's shape: a sample's shape, + (K,) for a Categorical)."""
        validation.check_key(key)
        logits, _ = self.logits(d)
        params = {"log_temperature": jnp.log(jnp.asarray(self.temperature, jnp.float32)),
                  "eta": jnp.asarray(self.eta if self.rebar_term else 0.0, jnp.float32)}
        if self.network is not None:
            params["net"] = self.network.init(key, jnp.zeros(logits.shape, jnp.float32))
        return RelaxState(params, self._optimizer().init(params))

    def _control(self, f, psi, z, categorical=False):
        temperature = jnp.exp(psi["log_temperature"])
        relaxed = jax.nn.softmax(z / temperature, -1) if categorical else jax.nn.sigmoid(z / temperature)
        out = psi["eta"] * f(relaxed) if self.rebar_term else 0.0
        if self.network is not None:
            out = out + jnp.reshape(self.network.apply(psi["net"], relaxed), ())
        return out

    def per_sample_logit_grads(self, f, logits, psi, key, num_samples, correction=True,
                               categorical=False):
        """ĝ in the logits for each of ``num_samples`` samples, shape (N, *logits.shape).

        A Categorical's hard sample reaches f as a one-hot vector; z̃ | b is the Gumbel-max
        conditional (Tucker et al. 2017): z̃_b = -log(-log v_b), z̃_i = -log(-log v_i / p_i -
        log v_b) for i ≠ b."""
        k_u, k_v = jax.random.split(key)
        shape = (num_samples,) + logits.shape
        u = jax.random.uniform(k_u, shape, minval=1e-6, maxval=1 - 1e-6)
        v_ = jax.random.uniform(k_v, shape, minval=1e-6, maxval=1 - 1e-6)

        def one_categorical(u1, v1):
            def surrogate(phi):
                log_p_all = jax.nn.log_softmax(phi, -1)
                z = log_p_all - jnp.log(-jnp.log(u1))
                hard = jax.lax.stop_gradient(jax.nn.one_hot(jnp.argmax(z, -1), phi.shape[-1],
                                                            dtype=phi.dtype))
                v_b = jnp.sum(hard * v1, -1, keepdims=True)
                z_other = -jnp.log(-jnp.log(v1) / jnp.exp(log_p_all) - jnp.log(v_b))
                z_cond = jnp.where(hard > 0, -jnp.log(-jnp.log(v_b)), z_other)
                return estimate(jnp.sum(hard * log_p_all), hard, z, z_cond, True)

            return jax.grad(surrogate)(logits)

        def one(u1, v1):
            def surrogate(phi):
                z = logistic_perturbed(phi, u1)
                b = jax.lax.stop_gradient((z > 0).astype(phi.dtype))
                z_cond = logistic_perturbed(phi, conditional_uniform(b, jax.nn.sigmoid(phi), v1))
                log_p = jnp.sum(b * jax.nn.log_sigmoid(phi) + (1 - b) * jax.nn.log_sigmoid(-phi))
                return estimate(log_p, b, z, z_cond, False)

            return jax.grad(surrogate)(logits)

        def estimate(log_p, b, z, z_cond, categorical):
            signal = (jax.lax.stop_gradient(f(b))
                      - self._control(f, psi, jax.lax.stop_gradient(z_cond), categorical))
            c_cond = self._control(f, psi, z_cond, categorical) if correction else 0.0
            return rebar_estimate(log_p, signal, self._control(f, psi, z, categorical), c_cond)

        return jax.vmap(one_categorical if categorical else one)(u, v_)

    def grad(self, f: Callable, dist_fn: DistFn, params: Any,
             key: jax.Array, num_samples: int, state: RelaxState, *,
             train: bool = True, runtime_checks: bool = True) -> tuple[Any, RelaxState]:
        """The estimate of ∇θ E[f(b)] (a pytree like params) and the state after one step of
        ψ on the same samples' variance (``train=False``: the state unchanged).
        ``runtime_checks``: as ``scorefn.score_grad``'s (False: no host callback under ``jit``)."""
        validation.check_key(key)
        num_samples = validation.check_int(num_samples, "num_samples")
        logits, categorical = self.logits(dist_fn(params))
        logits = jax.lax.stop_gradient(logits)

        def mean_square(psi):
            per = self.per_sample_logit_grads(f, logits, psi, key, num_samples,
                                              categorical=categorical)
            return jnp.mean(jnp.sum(per.reshape(num_samples, -1) ** 2, axis=1)), per

        if train:
            (_, per), psi_grad = jax.value_and_grad(mean_square, has_aux=True)(state.params)
            updates, opt_state = self._optimizer().update(psi_grad, state.opt_state, state.params)
            state = RelaxState(optax.apply_updates(state.params, updates), opt_state)
        else:
            per = self.per_sample_logit_grads(f, logits, state.params, key, num_samples,
                                              categorical=categorical)
        guard = guards.finite_guard((per, _nonfinite_relax_message(self.name)),
                                    enabled=runtime_checks)
        g_logits = jnp.mean(per, axis=0) + guard
        _, vjp = jax.vjp(lambda p: self.logits(dist_fn(p))[0], params)
        (grad,) = vjp(jax.lax.stop_gradient(g_logits))
        return grad, state


def _nonfinite_relax_message(name: str):
    def message(values):
        if np.isfinite(values).all():
            return None
        return (f"the {name} estimate is not finite: f, or the control variate, returned NaN/inf "
                "at a (relaxed) sample")

    return message


def rebar(temperature: float = 0.5, eta: float = 1.0, optimizer: Any = None) -> Relax:
    """REBAR (Tucker et al. 2017) with learned η and temperature. See ``Relax``."""
    return Relax(None, optimizer, temperature, eta, True)


def relax(network: Any, optimizer: Any = None, temperature: float = 0.5, eta: float = 1.0,
          rebar_term: bool = True) -> Relax:
    """RELAX (Grathwohl et al. 2018) with a flax control-variate network. See ``Relax``."""
    return Relax(network, optimizer, temperature, eta, rebar_term)


# Sum-and-sample ------------------------------------------------------------------------------


def sum_and_sample_grad(
    f: Callable,
    dist_fn: DistFn,
    params: Any,
    key: jax.Array,
    num_samples: int,
    *,
    runtime_checks: bool = True,
) -> Any:
    r"""Sum-and-sample estimate of ∇θ E_{x~Cat(p_θ)}[f(x)] (Liu et al. 2019; Kool et al.
    2020, section 3), unbiased: the k - 1 most probable classes C are summed exactly and one
    class is sampled from the rest,

    $$
    \mathbb{E}[f] = \sum_{c \in C} p_\theta(c) f(c) + (1 - p_\theta(C))\, \mathbb{E}_{x \sim p_\theta(\cdot
      \mid x \notin C)}[f(x)],
    $$

    differentiated exactly for the summed part and by the score function of the renormalised
    tail for the sampled one. ``num_samples`` = k evaluations of f (k ≥ 2), the budget of
    k samples without replacement.

    Chosen over the unordered-set estimator (Kool et al. 2020) because it needs no
    probabilities of unordered sets (a sum over k! orderings, or a numerical integral), is
    exact whenever the top k - 1 classes hold all the mass, and is never worse than the
    single-sample score function it Rao-Blackwellises; the unordered-set estimator's
    built-in baseline can be lower still when the mass is spread over many classes.
    ``runtime_checks``: as ``scorefn.score_grad``'s (False: no host callback under ``jit``).
    """
    validation.check_key(key)
    k = validation.check_int(num_samples, "num_samples", 2)
    d = dist_fn(params)
    base = base_distribution(d)
    if not isinstance(base, dist.CategoricalLogits | dist.CategoricalProbs) or d.batch_shape != ():
        raise ValueError(
            "estimator='sum_and_sample' is for one Categorical (batch_shape ()); got "
            f"{type(base).__name__} with batch_shape {tuple(d.batch_shape)}. For batched "
            "categoricals use 'rloo'"
        )
    num_classes = base.logits.shape[-1]
    if k > num_classes:
        raise ValueError(f"num_samples = {k} evaluations exceed the {num_classes} classes: "
                         "enumerate the Categorical exactly instead")
    dtype = sample_dtype_of(d)
    values, _ = sum_and_sample_branches(jax.lax.stop_gradient(base.logits), key, k)
    f_values = jax.vmap(f)(values.astype(dtype))
    guard = guards.finite_guard((f_values, guards.nonfinite_values_message),
                                enabled=runtime_checks)
    f_values = jax.lax.stop_gradient(f_values)

    def surrogate(p):
        log_weights = sum_and_sample_branches(base_distribution(dist_fn(p)).logits, key, k)[1]
        return jnp.sum(jnp.exp(log_weights) * f_values)

    grad = jax.grad(surrogate)(params)
    return jax.tree.map(lambda g: g + guard.astype(g.dtype), grad)


def sum_and_sample_branches(logits: jax.Array, key: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    r"""The k branches of sum-and-sample for one Categorical with ``logits`` (Liu et al.
    2019): the k − 1 most probable classes C (chosen with the gradient stopped), each with log
    weight log p_θ(c), then x ~ q(x) = p_θ(x | x ∉ C) drawn with ``key``, with log weight
    log p_θ(x) − stop_gradient(log q_θ(x)): in value log(1 − p_θ(C)), and its gradient
    carries q's score (the DiCE magic box), so that

    $$
    \sum_{c \in C} p_\theta(c) f(c) + (1 - p_\theta(C))\, \square(\log q_\theta(x)) f(x)
    $$

    is unbiased for E[f] at every order of differentiation. Returns the values [k] (int32)
    and the log weights [k], differentiable in the logits."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    top = jnp.argsort(-jax.lax.stop_gradient(log_p), axis=-1)[:k - 1]
    in_top = jnp.zeros(log_p.shape, bool).at[top].set(True)
    sampled = jax.random.categorical(key, jnp.where(in_top, -jnp.inf, jax.lax.stop_gradient(log_p)))
    log_q = log_p[sampled] - jax.nn.logsumexp(jnp.where(in_top, -jnp.inf, log_p))
    values = jnp.append(top, sampled).astype(jnp.int32)
    log_weights = jnp.append(log_p[top], log_p[sampled] - jax.lax.stop_gradient(log_q))
    return values, log_weights
