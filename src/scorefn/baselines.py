r"""Baselines: numbers b subtracted from f in the score-function estimator.

With N samples x_n ~ p_θ and scores g_n = ∇θ log p_θ(x_n), a baseline turns

$$
\hat g = \frac{1}{N}\sum_n f(x_n)\, g_n \quad\text{into}\quad \hat g_b = \frac{1}{N}\sum_n (f(x_n) - b_n)\,
  g_n .
$$

Because E_p[g] = 0, the estimate stays unbiased whenever b_n is independent of x_n (it may
depend on θ and on the *other* samples); it only changes the variance. Each baseline below
states whether it meets that condition.

Pass any of them as ``baseline=`` to ``scorefn.score_grad`` or ``scorefn.grad``. A
plain number or an ``EmaState`` is accepted too and used as a constant.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scorefn import validation
from scorefn.numerics import ratio_or_zero


def leave_one_out_ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    r"""(Σ_{m≠n} a_m) / (Σ_{m≠n} c_m) for every n, along axis 0, in O(N) time.

    Coordinates whose remaining denominator is zero get 0.
    """
    num = jnp.sum(numerator, axis=0, keepdims=True) - numerator
    den = jnp.sum(denominator, axis=0, keepdims=True) - denominator
    return ratio_or_zero(num, den)


def leave_one_out_log_mean(log_w: jax.Array) -> jax.Array:
    r"""VIMCO's baseline for sample k of a multi-sample bound (Mnih & Rezende 2016):

    $$
    \hat L_{-k} = \log \frac{1}{K}\Big(\sum_{m \ne k} w_m + \hat w_k\Big), \qquad \log \hat w_k =
      \frac{1}{K-1}\sum_{m \ne k} \log w_m,
    $$

    the bound L̂ = log (1/K) Σ_m w_m with w_k replaced by the geometric mean of the others.
    It does not depend on sample k, so L̂ - L̂_{-k} is an unbiased learning signal for
    ∇ log q(z_k). ``log_w``: (K, ...), K >= 2; the result has its shape.
    """
    k = log_w.shape[0]
    if k < 2:
        raise ValueError(f"the leave-one-out bound needs K >= 2 samples, got {k}")
    others_mean = (jnp.sum(log_w, axis=0, keepdims=True) - log_w) / (k - 1)
    # log Σ_{m≠k} w_m, stably: logsumexp with sample k masked out
    mask = jnp.eye(k, dtype=bool).reshape((k, k) + (1,) * (log_w.ndim - 1))
    rest = jax.nn.logsumexp(jnp.where(mask, -jnp.inf, log_w[None]), axis=1)
    return jnp.logaddexp(rest, others_mean) - jnp.log(k)


def vimco_learning_signal(log_w: jax.Array) -> jax.Array:
    r"""L̂ - L̂_{-k} for each sample k (Mnih & Rezende 2016): the multi-sample bound minus its
    leave-one-out version (``leave_one_out_log_mean``), sample k's learning signal for
    ∇ log q(z_k); unbiased, since L̂_{-k} does not depend on z_k. (The full VIMCO gradient also
    has the term -w̃_k, which comes from differentiating L̂ itself.)"""
    k = log_w.shape[0]
    bound = jax.nn.logsumexp(log_w, axis=0) - jnp.log(k)
    return bound - leave_one_out_log_mean(log_w)


class Baseline:
    """Base class. ``per_coordinate`` baselines need the per-sample scores; ``min_samples``
    is the smallest N the baseline is defined for (the estimators check it)."""

    name: str = "baseline"
    unbiased: bool = True
    per_coordinate: bool = False
    # Not a dataclass field: a property of the kind of baseline, not an option.
    min_samples = 1

    def __call__(self, values: jax.Array, scores: Any = None) -> Any:  # pragma: no cover
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Constant(Baseline):
    r"""b_n = c, a fixed number (or an array broadcastable to the values).

    Unbiased: c does not depend on the samples.
    """

    value: Any = 0.0
    name: str = "constant"

    def __post_init__(self):
        if not validation.is_traced(self.value) and not np.all(np.isfinite(self.value)):
            raise ValueError(f"the constant baseline must be finite, got {self.value!r}")

    def __call__(self, values: jax.Array, scores: Any = None) -> jax.Array:
        return jnp.broadcast_to(jnp.asarray(self.value, values.dtype), values.shape)


@dataclasses.dataclass(frozen=True)
class LeaveOneOut(Baseline):
    r"""b_n = (1/(N-1)) Σ_{m≠n} f(x_m): the mean of the *other* samples' values.

    Unbiased: b_n is independent of x_n. Equivalent to (N/(N-1)) (1/N) Σ_n (f_n - f̄) g_n, the
    batch-mean baseline with its (N-1)/N shrinkage undone (Kool et al. 2019, "Buy 4 REINFORCE
    samples, get a baseline for free"). Needs N ≥ 2.
    """

    name: str = "leave_one_out"
    min_samples = 2  # with one sample it is that sample's own value, or nothing

    def __call__(self, values: jax.Array, scores: Any = None) -> jax.Array:
        n = values.shape[0]
        if n < 2:
            raise ValueError("the leave_one_out baseline needs num_samples >= 2")
        return (jnp.sum(values, axis=0) - values) / (n - 1)


@dataclasses.dataclass(frozen=True)
class BatchMean(Baseline):
    r"""b_n = f̄ = (1/N) Σ_m f(x_m), including the sample's own value.

    **Biased**: E[(f_n - f̄) g_n] = ((N-1)/N) ∇θ E[f], so the estimate shrinks towards zero by
    the factor (N-1)/N. Kept because it is common practice; prefer ``leave_one_out``,
    which is the same estimate rescaled to be unbiased.
    """

    name: str = "batch_mean"
    min_samples = 2  # with one sample it is that sample's own value, or nothing
    unbiased: bool = False

    def __call__(self, values: jax.Array, scores: Any = None) -> jax.Array:
        return jnp.broadcast_to(jnp.mean(values, axis=0), values.shape)


@dataclasses.dataclass(frozen=True)
class Optimal(Baseline):
    r"""The variance-minimising baseline, per parameter coordinate j:

        b*_j = E[f(x) g_j(x)²] / E[g_j(x)²] .

    It minimises Var[(f - b_j) g_j] coordinate by coordinate (Greensmith et al. 2004). The
    expectations are estimated from the batch's own per-sample scores:

    - ``mode="leave_one_out"`` (default, **unbiased**): b_{j,n} = Σ_{m≠n} f_m g_{mj}² /
      Σ_{m≠n} g_{mj}², independent of x_n.
    - ``mode="batch"`` (**biased**, O(1/N)): one b_j from all N samples, the sample's own
      included. Its bias is measured in the tests (``tests/scorefn/test_baselines.py``) and
      is below the estimator's noise for N ≳ 100 on the Gaussian problem, but not zero.

    Needs the per-sample scores, an N × P array: the estimator computes them with a
    ``vmap`` of ``grad`` of ``log_prob``.
    """

    mode: str = "leave_one_out"
    name: str = "optimal"
    min_samples = 2  # with one sample it is that sample's own value, or nothing
    per_coordinate: bool = True

    def __post_init__(self):
        if self.mode not in ("leave_one_out", "batch"):
            raise ValueError(f"mode must be 'leave_one_out' or 'batch', got {self.mode!r}")

    @property
    def unbiased(self) -> bool:  # type: ignore[override]
        return self.mode == "leave_one_out"

    def __call__(self, values: jax.Array, scores: Any = None) -> Any:
        if scores is None:
            raise ValueError("the optimal baseline needs the per-sample scores")

        def per_leaf(g):
            f = values.reshape((-1,) + (1,) * (g.ndim - 1))
            g2 = g**2
            if self.mode == "leave_one_out":
                return leave_one_out_ratio(f * g2, g2)
            num, den = jnp.sum(f * g2, axis=0), jnp.sum(g2, axis=0)
            b = ratio_or_zero(num, den)
            return jnp.broadcast_to(b, g.shape)

        return jax.tree.map(per_leaf, scores)


class EmaState(NamedTuple):
    """State of an exponential-moving-average baseline.

    ``average`` is the raw moving average, ``count`` the number of updates, ``value`` the
    baseline used (bias-corrected unless ``zero_debias=False``; 0 before the first update)
    and ``weight`` the total weight 1 - Π_s β_s that the updates have put on data (None in
    a state built by hand: then 1 - β^count).
    """

    average: jax.Array
    count: jax.Array
    value: jax.Array
    weight: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Ema:
    r"""Exponential moving average of past batches' mean values, optax style. With
    t = 0, 1, 2, ... the number of updates before this one and m_t this batch's mean,

        a_{t+1} = β_t a_t + (1 - β_t) m_t,    b_{t+1} = a_{t+1} / (1 - Π_{s≤t} β_s)

    (zero-debiased as in Adam, so early steps are not pulled towards the initial a_0 = 0;
    b = 0 before the first update; ``zero_debias=False``: b = a). β_t = β, or with
    ``warmup=True`` the early-training schedule of optax's former ``moving_avg_baseline``
    (``use_decay_early_training_heuristic``), β_t = min(β, (1 + t) / (10 + t)) with the
    same t (its ``i``): 1/10 on the first update, 2/11 on the second, 3/12 on the third,
    forgetting the first, poorly trained steps faster. Without debiasing this is optax's
    update exactly. optax debiased differently, dividing the stored average in place by
    1 - β_t^{t+1} at every step; with a varying β_t that weighs the data by more than 1 (a
    constant signal c gives c / (1 - β_1²) on the second update), where the weight
    Π_{s≤t} β_s above gives c exactly. **Unbiased** when used as intended: the baseline
    for step t comes from steps < t, which are independent of the current samples.
    Use it with explicit state:

    ```python
    ema = scorefn.baselines.ema(0.9)
    state = ema.init()
    for t in range(T):
        x = scorefn.sample(dist_fn, params, key_t, n)
        v = f(x)
        g = scorefn.score_grad(dist_fn, params, x, v, baseline=state)   # uses b_t
        state = ema.update(v, state)                                     # then updates
    ```

    Args:
      decay: β in [0, 1).
      zero_debias: divide by the weight on data (default); False uses the raw average a_t.
      warmup: the early-training decay schedule above.
    """

    decay: float = 0.9
    zero_debias: bool = True
    warmup: bool = False

    def __post_init__(self):
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        for name in ("zero_debias", "warmup"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def init(self, shape: tuple[int, ...] = (), dtype: Any = jnp.float32) -> EmaState:
        """``shape=()`` for one baseline; ``shape=batch_shape`` for one per factor."""
        zero = jnp.zeros(shape, dtype)
        return EmaState(average=zero, count=jnp.zeros((), jnp.int32), value=zero,
                        weight=jnp.zeros((), dtype))

    def update(self, values: jax.Array, state: EmaState) -> EmaState:
        mean = jnp.mean(jnp.asarray(values), axis=0)  # over samples: per factor if any
        if state.average.ndim == 0:
            mean = jnp.mean(mean)
        count = state.count + 1
        dtype = state.average.dtype
        decay = jnp.asarray(self.decay, dtype)
        if self.warmup:  # t: the updates before this one, optax's i
            t = state.count.astype(dtype)
            decay = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
        previous = (1.0 - decay ** state.count.astype(dtype) if state.weight is None
                    else state.weight)
        weight = decay * previous + (1.0 - decay)
        average = decay * state.average + (1.0 - decay) * mean
        value = average / weight if self.zero_debias else average
        return EmaState(average=average, count=count, value=value, weight=weight)


def constant(value: Any = 0.0) -> Constant:
    """A fixed baseline b (unbiased). See ``Constant``."""
    return Constant(value)


def leave_one_out() -> LeaveOneOut:
    """The mean of the other samples' values (unbiased). See ``LeaveOneOut``."""
    return LeaveOneOut()


def batch_mean() -> BatchMean:
    """The batch mean, own sample included (biased by (N-1)/N). See ``BatchMean``."""
    return BatchMean()


def optimal(mode: str = "leave_one_out") -> Optimal:
    """The per-coordinate variance-minimising baseline E[f g²]/E[g²]. See ``Optimal``."""
    return Optimal(mode)


def ema(decay: float = 0.9, *, zero_debias: bool = True, warmup: bool = False) -> Ema:
    """An exponential-moving-average baseline with explicit state. See ``Ema``."""
    return Ema(decay, zero_debias=zero_debias, warmup=warmup)


def as_baseline(baseline: Any) -> Baseline | None:
    """Normalise what users pass as ``baseline=`` into a ``Baseline`` (or None)."""
    if baseline is None or isinstance(baseline, Baseline):
        return baseline
    if isinstance(baseline, EmaState):
        return Constant(baseline.value)
    if isinstance(baseline, Ema):
        raise TypeError(
            "baseline=ema(...) is the EMA's definition, not its value: pass its state, "
            "baseline=state, with state = ema.init() then state = ema.update(values, state)"
        )
    if isinstance(baseline, int | float) or hasattr(baseline, "shape"):
        return Constant(baseline)
    raise TypeError(
        "baseline must be None, a number, an EmaState or a scorefn.baselines baseline "
        f"(constant, leave_one_out, batch_mean, optimal); got {type(baseline).__name__}"
    )
