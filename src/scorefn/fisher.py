r"""Fisher information and natural gradients.

The Fisher information of p_θ is the covariance of its score,

$$
I(\theta) = \mathbb{E}_{x \sim p_\theta}\left[\nabla_\theta \log p_\theta(x)\, \nabla_\theta \log
  p_\theta(x)^\top\right] = \nabla^2_{\theta'} \mathrm{KL}(p_\theta \,\|\, p_{\theta'}) \big|_{\theta' =
  \theta},
$$

and the natural gradient is I(θ)⁻¹ ∇θ L: the steepest-ascent direction when distances are
measured by KL between distributions, not by Euclidean distance between parameters, so it
does not depend on how θ is parameterised (to first order).

Parameters are flattened in ``jax.flatten_util.ravel_pytree`` order everywhere; dense
matrices are (P, P) in that order and ``unravel_like`` maps a flat vector back.

- ``fisher_information`` — the one entry point: exact when no key is given (the Hessian
  of numpyro's closed-form KL, or enumeration of a finite support), empirical otherwise.
- ``empirical_fisher``, ``exact_fisher`` — the two ways explicitly.
- ``fisher_vector_product`` — v ↦ Î v = (1/N) Σ g_n (g_nᵀ v) by one JVP and one VJP,
  never forming the matrix; ``kl_fisher_vector_product`` — v ↦ ∇²KL v, the Hessian-
  vector product of the mean KL that TRPO uses.
- ``natural_gradient_dense`` (damped solve) and ``natural_gradient_cg``
  (conjugate gradient on a Fisher-vector product) — both return a pytree like the gradient.
- ``natural_gradient`` — an optax ``GradientTransformation`` that preconditions any
  optimiser's updates with I(θ)⁻¹.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import optax
from jax.flatten_util import ravel_pytree
from numpyro.distributions import Distribution, kl_divergence

from scorefn.dependencies import output_dependencies
from scorefn.numerics import full_precision, solve_small_systems
from scorefn.sampling import sample
from scorefn.scores import flatten_per_sample, joint_log_prob, log_prob, per_sample_scores
from scorefn.types import DistFn
from scorefn.validation import check_int, check_key, check_real


def unravel_like(tree: Any, flat: jax.Array) -> Any:
    """Map a flat (P,) vector back to a pytree shaped like ``tree`` (ravel_pytree order)."""
    return ravel_pytree(tree)[1](flat)


def empirical_fisher(dist_fn: DistFn, params: Any, samples: jax.Array) -> jax.Array:
    r"""Î = (1/N) Σ_n g_n g_nᵀ with g_n = ∇θ log p_θ(x_n), a dense (P, P) matrix.

    Unbiased for I(θ) when the samples come from p_θ itself (not from the data, where it
    would be the "empirical Fisher" of the literature's warnings).
    """
    scores = flatten_per_sample(per_sample_scores(dist_fn, params, samples))
    # Off its diagonal the sum cancels (a categorical's scores sum to zero per sample), and a
    # natural gradient solves with it: TF32, a GPU's default, would cost three digits.
    with full_precision():
        return scores.T @ scores / scores.shape[0]


def kl(p: Distribution, q: Distribution) -> jax.Array:
    """KL(p ‖ q) per batch element: numpyro's closed form, or exact enumeration over a finite
    support (Categorical(logits) and Bernoulli have no closed form registered in numpyro 0.22)."""
    try:
        return kl_divergence(p, q)
    except NotImplementedError:
        if not getattr(p, "has_enumerate_support", False):
            raise NotImplementedError(
                f"no KL for {type(p).__name__} ‖ {type(q).__name__}: numpyro has no closed form "
                "and the support cannot be enumerated"
            ) from None
    support = p.enumerate_support(expand=True)  # (K, *batch_shape)
    log_p = log_prob(p, support)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_prob(q, support)), axis=0)


def _kl_fisher(dist_fn: DistFn, params: Any) -> jax.Array:
    flat, unravel = ravel_pytree(params)
    fixed = dist_fn(jax.tree.map(jax.lax.stop_gradient, params))

    def total_kl(flat_other):
        return jnp.sum(kl_divergence(fixed, dist_fn(unravel(flat_other))))

    return jax.hessian(total_kl)(flat)


def _enumeration_fisher(dist_fn: DistFn, params: Any) -> jax.Array:
    d = dist_fn(params)
    support = d.enumerate_support(expand=True)  # (K, *batch_shape)
    flat, unravel = ravel_pytree(params)
    # For a batch of independent factors the Fisher is the sum of the factors' Fishers;
    # enumerate each factor's support, not the product space.
    def log_probs(flat_params):
        return log_prob(dist_fn(unravel(flat_params)), support)  # (K, *batch)

    lp = log_probs(flat)
    jac = jax.jacrev(log_probs)(flat)  # (K, *batch, P)
    prob = jnp.exp(lp)[..., None]
    weighted = (prob * jac).reshape(-1, flat.size)
    return jac.reshape(-1, flat.size).T @ weighted


# The Fisher information of one factor in the family's own parameter φ, for families with
# neither a closed-form KL in numpyro nor a finite support: i(φ) = -E[∂²_φ log p(x)].
#   Poisson(λ): 1/λ.   Exponential(λ): 1/λ².
#   Geometric(p) (failures before the first success): 1/(p²(1 - p)); in logits: 1 - p.
#   NegativeBinomial(r, p) (mean r p/(1 - p)), r fixed: r/(p(1 - p)²); in logits: r p.
_FAMILY_FISHER: dict[type, tuple[str, Callable[[Distribution], jax.Array]]] = {
    dist.Poisson: ("rate", lambda d: 1.0 / d.rate),
    dist.Exponential: ("rate", lambda d: 1.0 / d.rate**2),
    dist.GeometricProbs: ("probs", lambda d: 1.0 / (d.probs**2 * (1.0 - d.probs))),
    dist.GeometricLogits: ("logits", lambda d: 1.0 - d.probs),
    dist.NegativeBinomialProbs: ("probs",
                                 lambda d: d.total_count / (d.probs * (1.0 - d.probs) ** 2)),
    dist.NegativeBinomialLogits: ("logits",
                                  lambda d: d.total_count * jax.nn.sigmoid(d.logits)),
}


def _unwrap(d: Distribution) -> tuple[Distribution, int]:
    """The family under to_event and plate expansion, and how many independent copies of
    its batch the wrappers make (a masked distribution has no closed form here)."""
    total = math.prod(d.batch_shape) * math.prod(d.event_shape)
    while isinstance(d, dist.Independent | dist.ExpandedDistribution):
        d = d.base_dist
    return d, total // max(math.prod(d.batch_shape) * math.prod(d.event_shape), 1)


def _family_fisher(dist_fn: DistFn, params: Any) -> jax.Array | None:
    """Jᵀ diag(i(φ)) J summed over the factors, J = ∂φ/∂θ: exact by the chain rule (the
    expected second derivative of φ(θ) meets a score of mean zero). None for a family
    without a formula in ``_FAMILY_FISHER``."""
    base, copies = _unwrap(dist_fn(params))
    if type(base) not in _FAMILY_FISHER:
        return None
    name, information = _FAMILY_FISHER[type(base)]
    flat, unravel = ravel_pytree(params)

    def family(flat_params):
        return _unwrap(dist_fn(unravel(flat_params)))[0]

    if hasattr(base, "total_count"):
        uses = output_dependencies(lambda f: family(f).total_count, flat)
        if uses is None or any(any(row) for row in uses):
            raise ValueError(
                f"{type(base).__name__}: the Fisher information in total_count has no closed "
                "form; keep total_count fixed, or pass key and num_samples for the empirical "
                "Fisher")
    shape = tuple(base.batch_shape)
    jac = jax.jacfwd(lambda f: jnp.broadcast_to(getattr(family(f), name), shape))(flat)
    jac = jac.reshape(-1, flat.size)
    info = jnp.broadcast_to(information(base), shape).reshape(-1)
    return copies * (jac.T @ (info[:, None] * jac))


def exact_fisher(dist_fn: DistFn, params: Any) -> jax.Array:
    r"""I(θ) exactly, as a dense (P, P) matrix.

    Uses the Hessian of numpyro's closed-form KL(p_θ ‖ p_θ') at θ' = θ when one is registered
    (numpyro 0.22: Normal, MultivariateNormal, Gamma, Beta, Dirichlet, Categorical(probs), and
    Independent / expanded versions), else Σ_x p(x) g gᵀ over ``enumerate_support`` for
    finite discrete distributions (Bernoulli, Categorical(logits), Binomial, ...), else the
    family's Fisher in its own parameter by formula (Poisson, Exponential, Geometric,
    NegativeBinomial with a fixed total_count) mapped to θ by the chain rule. Independent
    batch factors add up. Raises if none applies: then use ``empirical_fisher``.
    """
    d = dist_fn(params)
    try:
        return _kl_fisher(dist_fn, params)
    except NotImplementedError:
        pass
    if getattr(d, "has_enumerate_support", False):
        return _enumeration_fisher(dist_fn, params)
    by_formula = _family_fisher(dist_fn, params)
    if by_formula is not None:
        return by_formula
    raise ValueError(
        f"no exact Fisher for {type(d).__name__}: numpyro has no closed-form KL for it, its "
        "support cannot be enumerated and scorefn has no formula for it; pass key and "
        "num_samples for the empirical Fisher"
    )


def fisher_information(
    dist_fn: DistFn, params: Any, key: jax.Array | None = None, num_samples: int | None = None
) -> jax.Array:
    r"""The Fisher information of ``dist_fn(params)`` as a dense (P, P) array.

    Parameters are flattened in ``jax.flatten_util.ravel_pytree`` order. With no key the
    result is exact (``exact_fisher``); with a key it is empirical from ``num_samples``
    scores (``empirical_fisher``), unbiased.
    """
    if key is None:
        if num_samples is not None:
            raise ValueError("num_samples needs a key: pass key=jax.random.key(...) as well")
        return exact_fisher(dist_fn, params)
    check_key(key)
    if num_samples is None:
        raise ValueError("an empirical Fisher needs num_samples as well as key")
    num_samples = check_int(num_samples, "num_samples")
    return empirical_fisher(dist_fn, params, sample(dist_fn, params, key, num_samples))


def fisher_vector_product(dist_fn: DistFn, params: Any, samples: jax.Array) -> Callable[[Any], Any]:
    r"""v ↦ Î v = (1/N) Σ_n g_n (g_nᵀ v), matrix-free, for v a pytree like ``params``.

    g_nᵀ v for all n is one JVP of θ ↦ (log p_θ(x_n))_n; Σ_n g_n u_n is one VJP. Memory is
    O(N + P), never O(P²) or O(N P).
    """

    def log_probs(p):
        return joint_log_prob(dist_fn(p), samples)

    _, vjp = jax.vjp(log_probs, params)
    n = samples.shape[0]

    def product(v):
        _, directional = jax.jvp(log_probs, (params,), (v,))
        (out,) = vjp(directional / n)
        return out

    return product


def kl_fisher_vector_product(
    dist_fn: DistFn, params: Any, reduction: str = "mean"
) -> Callable[[Any], Any]:
    r"""v ↦ ∇²_{θ'} KL(p_θ ‖ p_θ') v at θ' = θ, the Fisher-vector product TRPO uses.

    The KL is numpyro's closed form, or exact enumeration for finite discrete distributions
    such as a Categorical(logits) policy (``kl``), summed over event dims and reduced over
    the batch by ``reduction`` ("mean": TRPO's average KL over states; "sum": the joint Fisher). A
    forward-over-reverse Hessian-vector product; never forms the matrix.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    fixed = dist_fn(jax.tree.map(jax.lax.stop_gradient, params))

    def reduced_kl(p):
        value = kl(fixed, dist_fn(p))
        return jnp.mean(value) if reduction == "mean" else jnp.sum(value)

    grad_kl = jax.grad(reduced_kl)

    def product(v):
        return jax.jvp(grad_kl, (params,), (v,))[1]

    return product


def natural_gradient_dense(fisher: jax.Array, grad: Any, damping: float = 1e-4) -> Any:
    r"""(I + λ·1)⁻¹ ∇ by a dense solve (Cholesky); for small P. Returns a pytree like grad."""
    flat, unravel = ravel_pytree(grad)
    if fisher.shape != (flat.size, flat.size):
        raise ValueError(
            f"fisher must be ({flat.size}, {flat.size}) for a gradient with {flat.size} "
            f"parameters; got {fisher.shape}"
        )
    matrix = fisher + damping * jnp.eye(flat.size, dtype=fisher.dtype)
    factor = jax.scipy.linalg.cho_factor(matrix)
    return unravel(jax.scipy.linalg.cho_solve(factor, flat))


def natural_gradient_cg(
    fvp: Callable[[Any], Any],
    grad: Any,
    damping: float = 1e-4,
    maxiter: int = 50,
    tol: float = 1e-6,
) -> Any:
    r"""Solve (I + λ·1) x = ∇ by conjugate gradient with a Fisher-vector product.

    ``fvp`` maps a pytree to a pytree (from ``fisher_vector_product`` or
    ``kl_fisher_vector_product``). Never forms I; each iteration costs one product.
    """

    def damped(v):
        return jax.tree.map(lambda a, b: a + damping * b, fvp(v), v)

    solution, _ = jax.scipy.sparse.linalg.cg(damped, grad, maxiter=maxiter, tol=tol)
    return solution


class NaturalGradientState(NamedTuple):
    key: jax.Array


def natural_gradient(
    dist_fn: DistFn,
    damping: float = 1e-4,
    method: str = "exact",
    num_samples: int = 1000,
    key: jax.Array | None = None,
    maxiter: int = 50,
) -> optax.GradientTransformation:
    r"""An optax transformation: updates ↦ (I(θ) + λ·1)⁻¹ updates, θ = the current params.

    ``method``: ``"exact"`` (dense solve with ``exact_fisher``), ``"empirical"`` (dense,
    ``empirical_fisher`` from ``num_samples`` fresh samples) or ``"cg"`` (matrix-free
    conjugate gradient on ``fisher_vector_product``, fresh samples). The sampling
    methods carry a PRNG key in the state (explicit, like everything in scorefn). Chain it
    before the optimiser, e.g. ``optax.chain(scorefn.natural_gradient(dist_fn), optax.sgd(0.1))``
    (remember optax minimises: pass the negative of an ascent direction). ``update`` needs
    ``params``.
    """
    if method not in ("exact", "empirical", "cg"):
        raise ValueError(f"method must be 'exact', 'empirical' or 'cg', got {method!r}")
    # a negative λ can make I + λ·1 singular or indefinite, a NaN the update NaN
    check_real(damping, "damping", 0.0)
    if method == "cg":
        check_int(maxiter, "maxiter")
    if method != "exact":
        check_int(num_samples, "num_samples")
        if key is None:
            raise ValueError(f"method={method!r} samples from p_θ: pass key=jax.random.key(...)")
        check_key(key)

    def init(params):
        del params
        return NaturalGradientState(key=key if key is not None else jax.random.key(0))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("natural_gradient needs params: call update(updates, state, params)")
        if method == "exact":
            return natural_gradient_dense(exact_fisher(dist_fn, params), updates, damping), state
        key, subkey = jax.random.split(state.key)
        samples = sample(dist_fn, params, subkey, num_samples)
        if method == "empirical":
            fisher = empirical_fisher(dist_fn, params, samples)
            return natural_gradient_dense(fisher, updates, damping), NaturalGradientState(key)
        fvp = fisher_vector_product(dist_fn, params, samples)
        return natural_gradient_cg(fvp, updates, damping, maxiter), NaturalGradientState(key)

    return optax.GradientTransformation(init, update)


def elementwise_fisher(dist_fn: DistFn, params: Any) -> jax.Array:
    r"""Exact Fisher blocks of a distribution whose batch elements are independent and each
    depend only on their own slice of every parameter leaf.

    Every leaf is shaped ``batch_shape + tail`` (a scalar per element, or e.g. the K logits
    of a Categorical). Returns (B, k, k) for B batch elements, k = Σ prod(tail) over the
    leaves in ``jax.tree.leaves`` order. The Fisher of such a distribution is
    block-diagonal; each block is ``exact_fisher`` of one element (vmapped), so the cost
    is O(B k²) instead of O((B k)²). Used by the separable search distributions of
    ``scorefn.es``.
    """
    leaves, treedef = jax.tree.flatten(params)
    batch_shape = tuple(dist_fn(params).batch_shape)
    size = math.prod(batch_shape)
    for leaf in leaves:
        if tuple(jnp.shape(leaf))[: len(batch_shape)] != batch_shape:
            raise ValueError(
                "elementwise_fisher needs every parameter leaf shaped like the batch "
                f"{batch_shape} (plus trailing dims of its own); got a leaf of shape "
                f"{jnp.shape(leaf)}"
            )
    per_element = [jnp.reshape(leaf, (size, *jnp.shape(leaf)[len(batch_shape):]))
                   for leaf in leaves]

    def one(*element_leaves):
        return exact_fisher(dist_fn, jax.tree.unflatten(treedef, list(element_leaves)))

    return jax.vmap(one)(*per_element)


def natural_gradient_elementwise(blocks: jax.Array, grad: Any, damping: float = 0.0) -> Any:
    """Solve each k × k Fisher block from ``elementwise_fisher`` against the gradient."""
    leaves, treedef = jax.tree.flatten(grad)
    size = blocks.shape[0]
    columns = [jnp.reshape(leaf, (size, -1)) for leaf in leaves]
    stacked = jnp.concatenate(columns, axis=-1)  # (B, k)
    k = stacked.shape[-1]
    blocks = blocks + damping * jnp.eye(k, dtype=blocks.dtype)
    solved = solve_small_systems(blocks, stacked)
    out, start = [], 0
    for leaf, column in zip(leaves, columns):
        width = column.shape[-1]
        out.append(solved[:, start:start + width].reshape(jnp.shape(leaf)))
        start += width
    return jax.tree.unflatten(treedef, out)


def gaussian_local_natural_gradient(grad_delta: jax.Array, grad_m: jax.Array) -> tuple:
    r"""Natural gradient of a Gaussian N(μ + A δ, A expm(M) Aᵀ) in its local coordinates
    (δ, M symmetric) at δ = 0, M = 0, the exponential parameterisation of xNES
    (Glasmachers et al. 2010). There the Fisher is I(δ) = 1 and I(M)[dM, dM] = ½ tr(dM²), so

    $$
    I^{-1} \nabla = (\nabla_\delta,\ 2 \nabla_M) \qquad (\nabla_M \text{ taken symmetric}).
    $$

    Closed form of ``exact_fisher`` for this family; the tests check the two agree.
    """
    sym = 0.5 * (grad_m + jnp.swapaxes(grad_m, -1, -2))
    return grad_delta, 2.0 * sym


def diagonal_gaussian_natural_gradient(grad_loc: jax.Array, grad_log_scale: jax.Array,
                                       log_scale: jax.Array) -> tuple:
    r"""Natural gradient of N(loc, diag exp(log_scale)²) in (loc, log_scale), the
    parameterisation of SNES. The Fisher is diagonal, I(loc) = 1/σ² and I(log_scale) = 2 per
    coordinate, so

    $$
    I^{-1} \nabla = (\sigma^2 \nabla_{\text{loc}},\ \nabla_{\text{log\_scale}} / 2).
    $$

    Closed form of ``elementwise_fisher`` + ``natural_gradient_elementwise`` for this
    family (O(d) instead of a KL Hessian per coordinate); the tests check the two agree.
    """
    return jnp.exp(2.0 * log_scale) * grad_loc, 0.5 * grad_log_scale
