r"""ELBO and importance-weighted bounds, and their gradient estimators.

    L(θ) = E_{z~q_θ}[log p(x, z) - log q_θ(z)],    L_K(θ) = E[log (1/K) Σ_k w_k],  w_k = p(x, z_k)/q_θ(z_k)

Each block j of the guide (see ``scorefn.vi.guides``) gets its gradient from the core:

``"score"``     ∇_j L = E[(log p - log q - b) ∇_j log q_j(z_j)]          ``scorefn.score_grad``
``"score_rb"``  ∇_j L = E[Σ_b (L_jb - b_jb) ∇_j log q_jb(z_jb)],          ``score_grad(per_factor=True)``
                L_jb = -log q_jb(z_jb) + Σ_{terms t of log p that read z_jb} t(z)   (the local learning
                signal; terms that do not read z_jb have zero-mean products with its score)
``"pathwise"``  ∇_j L = E[∇_z (log p(x,z) - log q_θ'(z))|_{θ'=θ} ∂z/∂θ_j]  ``scorefn.pathwise_grad``
                (the path derivative, "sticking the landing", Roeder et al. 2017: the dropped term
                -∇θ log q_θ(z) has mean zero, and its variance vanishes as q → p(z|x))
``"mixed"``     ``"pathwise"`` for the blocks with ``rsample``, ``"score_rb"`` for the others
``"iwae"``      ∇_j L_K by the doubly reparameterised estimator (DReG, Tucker et al. 2019),
                Σ_k w̃_k² ∇_z log w_k ∂z_k/∂θ_j, for blocks with ``rsample``; score function
                Σ_k (L̂ - w̃_k) ∇ log q_j(z_k) for the others
``"vimco"``     Σ_k (L̂ - L̂_{-k} - w̃_k) ∇_j log q_j(z_jk), L̂_{-k} with log w_k replaced by the mean
                of the other log w (Mnih & Rezende 2016): a leave-one-out learning signal

All are unbiased for ∇L (∇L_K for the last two) with any baseline from
``scorefn.baselines`` that is independent of the sample it is applied to (``score`` also
takes control variates). w̃_k = w_k / Σ_m w_m.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scorefn import validation as v
from scorefn.baselines import EmaState, vimco_learning_signal
from scorefn.estimators import pathwise_grad, score_grad
from scorefn.importance import (
    doubly_reparameterized_weights,
    log_mean_weight,
    self_normalized_weights,
)
from scorefn.rao_blackwell import plate_local_signal
from scorefn.scores import per_sample_sum
from scorefn.vi.guides import Block, Guide
from scorefn.vi.model import Model, Term

ESTIMATORS = ("score", "score_rb", "pathwise", "mixed", "iwae", "vimco")
#: The names these estimators had before the package used one word per idea (``pathwise``
#: as in ``scorefn.grad``) and one convention for option strings (snake case). Still
#: accepted, with a DeprecationWarning.
RENAMED_ESTIMATORS = {"reparam": "pathwise", "score-rb": "score_rb"}


class ElboGradient(NamedTuple):
    """``grad``: like the guide params; ``objective``: this step's estimate of the ELBO (or
    of L_K for ``iwae``/``vimco``); ``signals``: each score-function block's learning
    signal before its baseline (for EMA updates)."""

    grad: Any
    objective: jax.Array
    signals: dict[str, jax.Array]


def term_values(model: Model, guide: Guide, block_values: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Every term of log p(x, z) at every sample: ``{term: (K, *term_shape)}``."""
    return jax.vmap(model.term_values)(guide.to_sites(block_values))


def _log_density(terms: dict[str, jax.Array]) -> jax.Array:
    return sum(per_sample_sum(t) for t in terms.values())


def log_weights(model: Model, guide: Guide, params: dict[str, Any],
                block_values: dict[str, jax.Array]) -> jax.Array:
    """log w_k = log p(x, z_k) - log q_θ(z_k) per sample, ``(K,)``."""
    return _log_density(term_values(model, guide, block_values)) - guide.log_prob(params, block_values)


def nonfinite_term_message(name: str):
    """The message of ``scorefn.validation.finite_guard`` for a term ``(K, ...)`` of the
    model's log density: the site, NaN or inf, and the first bad sample."""

    def message(values: np.ndarray) -> str | None:
        per_sample = values.reshape(values.shape[0], -1)
        bad = ~np.isfinite(per_sample).all(axis=1)
        if not bad.any():
            return None
        first = int(np.flatnonzero(bad)[0])
        kind = "NaN" if np.isnan(per_sample[first]).any() else "inf"
        site = name.split(":")[0]
        return (
            f"the model's log density is not finite at the guide's samples: site {site!r} "
            f"(term {name!r}) is {kind} at {int(bad.sum())} of {len(bad)} samples (first: "
            f"sample {first}). Check that the guide's support matches the site's support and "
            "that the model is defined for every value the guide can draw"
        )

    return message


def elbo(model: Model, guide: Guide, params: dict[str, Any], key: jax.Array,
         num_samples: int = 1000) -> jax.Array:
    """Monte Carlo estimate (1/K) Σ_k [log p(x, z_k) - log q_θ(z_k)], z_k ~ q_θ; unbiased."""
    v.check_key(key)
    return jnp.mean(log_weights(model, guide, params, guide.sample(params, key, num_samples)))


def iwae_bound(model: Model, guide: Guide, params: dict[str, Any], key: jax.Array,
               num_samples: int) -> jax.Array:
    """log (1/K) Σ_k w_k for one set of K samples: an unbiased estimate of L_K ≥ L."""
    v.check_key(key)
    return log_mean_weight(log_weights(model, guide, params,
                                       guide.sample(params, key, num_samples)))


def _localize(values: jax.Array, term: Term, block: Block, site_batch_ndim: dict[str, int],
              site_plates: dict[str, tuple], batch_shape: tuple[int, ...]) -> jax.Array:
    """A term's array (K, *term_shape) reduced to what each factor of ``block`` sees
    (``scorefn.rao_blackwell.plate_local_signal``): the plates the term shares with the
    block's site are read off the model's trace here. Broadcastable to (K, *batch_shape)."""
    k = values.shape[0]
    if len(block.sites) != 1 or not batch_shape:
        return per_sample_sum(values).reshape((k,) + (1,) * len(batch_shape))
    site = block.sites[0]
    term_ndim = values.ndim - 1
    site_axis_of = {p.name: site_batch_ndim[site] + p.dim for p in site_plates[site]}
    pairs = []  # (term axis, block batch axis) for each shared plate
    for p in term.plates:
        term_axis = term_ndim + p.dim
        block_axis = site_axis_of.get(p.name)
        if (block_axis is not None and 0 <= term_axis and 0 <= block_axis < len(batch_shape)
                and values.shape[1 + term_axis] in (1, batch_shape[block_axis])):
            pairs.append((term_axis, block_axis))
    return plate_local_signal(values, pairs, batch_shape)


def local_signals(model: Model, guide: Guide, params: dict[str, Any],
                  block_values: dict[str, jax.Array], terms: dict[str, jax.Array],
                  factor_log_q: dict[str, jax.Array] | None = None) -> dict[str, jax.Array]:
    r"""L_jb = -log q_jb(z_jb) + Σ_{terms t reading block j} t localised to factor b, per
    block: ``{block: (K, *batch_shape)}``. Mean-field blocks are independent, so no other
    block's log q reads z_jb."""
    if factor_log_q is None:
        factor_log_q = guide.factor_log_probs(params, block_values)
    batch_ndim = {n: s.batch_ndim for n, s in model.latents.items()}
    plates = {n: s.plates for n, s in model.latents.items()}
    out = {}
    for name, block in guide.blocks.items():
        signal = -factor_log_q[name]
        batch_shape = tuple(signal.shape[1:])
        for term_name, term in model.terms.items():
            if term.depends_on & set(block.sites):
                signal = signal + _localize(terms[term_name], term, block, batch_ndim, plates,
                                            batch_shape)
        out[name] = jnp.broadcast_to(signal, factor_log_q[name].shape)
    return out


def estimator_name(estimator: str) -> str:
    """``estimator`` checked against ``ESTIMATORS``; an old name (``RENAMED_ESTIMATORS``)
    gives its new one, with a DeprecationWarning."""
    if estimator in RENAMED_ESTIMATORS:
        new = RENAMED_ESTIMATORS[estimator]
        warnings.warn(f"estimator={estimator!r} is now called {new!r}", DeprecationWarning,
                      stacklevel=3)
        return new
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")
    return estimator


def _vimco_coefficients(log_w: jax.Array) -> jax.Array:
    """K (L̂ - L̂_{-k} - w̃_k): score_grad averages over samples, VIMCO sums."""
    if log_w.shape[0] < 2:
        raise ValueError("estimator='vimco' needs num_samples >= 2")
    return log_w.shape[0] * (vimco_learning_signal(log_w) - self_normalized_weights(log_w))


def _block_baseline(baseline: Any, name: str) -> Any:
    if isinstance(baseline, dict):
        return baseline.get(name)
    return baseline


def elbo_grad(
    model: Model,
    guide: Guide,
    params: dict[str, Any],
    key: jax.Array,
    *,
    estimator: str = "mixed",
    num_samples: int = 1,
    baseline: Any = None,
    control_variate: Any = None,
) -> ElboGradient:
    r"""One gradient estimate of the ELBO (``iwae``/``vimco``: of L_K), for gradient *ascent*.

    Args:
      model: from ``scorefn.vi.as_model``.
      guide: from ``scorefn.vi.guides``.
      params: the guide's params (``guide.init()`` to start).
      key: a PRNG key; the same key gives the same samples for every estimator.
      estimator: one of ``ESTIMATORS`` (see the module docstring).
      num_samples: K samples per step (≥ 2 for ``leave_one_out``, ``iwae`` and ``vimco``).
      baseline: for the score-function blocks: any core baseline, a number, an
        ``scorefn.baselines.EmaState`` (``score``: shape (); ``score_rb``: one per
        factor, the block's batch_shape) or a dict ``{block: baseline}``.
      control_variate: a ``scorefn.control_variates`` control variate (``score`` only).
    """
    estimator = estimator_name(estimator)
    v.check_key(key)
    num_samples = v.check_num_samples(num_samples)
    if estimator in ("iwae", "vimco") and num_samples < 2:
        raise ValueError(f"estimator={estimator!r} is a multi-sample bound: num_samples must be "
                         f">= 2, got {num_samples}")
    if control_variate is not None and estimator != "score":
        raise ValueError("control_variate works with estimator='score' (one scalar learning "
                         f"signal per sample); got estimator={estimator!r}")
    dists = guide.distributions(params)
    pathwise = {name for name, d in dists.items()
                if d.has_rsample and estimator in ("pathwise", "mixed", "iwae")}
    if estimator == "pathwise" and len(pathwise) < len(dists):
        bad = sorted(set(dists) - pathwise)
        raise ValueError(
            f"estimator='pathwise' needs every guide block to be reparameterisable; {bad} "
            f"({', '.join(type(dists[b]).__name__ for b in bad)}) is not. Use 'mixed' (pathwise "
            "for continuous blocks, score function for the others)")
    keys = guide.block_keys(key)
    z = guide.sample(params, key, num_samples)
    terms = term_values(model, guide, z)
    factor_log_q = guide.factor_log_probs(params, z)
    log_q = sum(per_sample_sum(lq) for lq in factor_log_q.values())
    log_w = _log_density(terms) - log_q
    guard = v.finite_guard(*[(t, nonfinite_term_message(n)) for n, t in terms.items()])
    multi_sample = estimator in ("iwae", "vimco")
    objective = log_mean_weight(log_w) if multi_sample else jnp.mean(log_w)

    score_signals: dict[str, jax.Array] = {}
    needs_local = estimator in ("score_rb", "mixed") and len(pathwise) < len(dists)
    local = local_signals(model, guide, params, z, terms, factor_log_q) if needs_local else {}
    grads = {}
    for name, block in guide.blocks.items():
        if name in pathwise:
            grads[name] = _pathwise_block(model, guide, params, z, name, keys[name],
                                          num_samples, multi_sample)
            continue
        options: dict[str, Any] = {}
        if estimator == "vimco":
            values = jax.lax.stop_gradient(_vimco_coefficients(log_w))
        elif estimator == "iwae":
            values = jax.lax.stop_gradient(num_samples * (objective - self_normalized_weights(log_w)))
        elif estimator == "score":
            values = jax.lax.stop_gradient(log_w)
            options = {"baseline": _block_baseline(baseline, name),
                       "control_variate": control_variate}
        else:  # score_rb, and the non-reparameterisable blocks of mixed
            values = jax.lax.stop_gradient(local[name])
            options = {"baseline": _block_baseline(baseline, name), "per_factor": True}
        score_signals[name] = values
        grads[name] = score_grad(block.dist_fn, params[name], z[name], values,
                                 samples_from_dist=True, **options)
    grads = jax.tree.map(lambda g: g + guard.astype(g.dtype), grads)
    return ElboGradient(grads, objective + guard.astype(objective.dtype), score_signals)


def _pathwise_block(model: Model, guide: Guide, params: dict[str, Any], z: dict[str, jax.Array],
                    name: str, key: jax.Array, num_samples: int, multi_sample: bool) -> Any:
    """∇ of one reparameterised block, the other blocks' draws held fixed. log q's own
    parameters are held fixed too (their direct gradient has mean zero)."""
    fixed = jax.lax.stop_gradient(params)

    def integrand(x):
        values = dict(z)
        values[name] = x
        log_w = log_weights(model, guide, fixed, values)
        if not multi_sample:
            return log_w
        # DReG: Σ_k w̃_k² ∇ log w_k, written as a mean over the K samples.
        return num_samples * jax.lax.stop_gradient(doubly_reparameterized_weights(log_w)) * log_w

    return pathwise_grad(integrand, guide.blocks[name].dist_fn, params[name], key, num_samples,
                         vectorized=True)


def ema_states(guide: Guide, params: dict[str, Any], estimator: str,
               init: Callable[[tuple[int, ...]], EmaState]) -> dict[str, EmaState]:
    """One EMA baseline state per score-function block: shape () for ``score``, the block's
    batch_shape (one per factor) for ``score_rb``/``mixed``."""
    out = {}
    for name, d in guide.distributions(params).items():
        if estimator in ("pathwise", "mixed", "iwae") and d.has_rsample:
            continue
        shape = () if estimator == "score" else tuple(d.batch_shape)
        out[name] = init(shape)
    return out
