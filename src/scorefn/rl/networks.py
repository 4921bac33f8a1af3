r"""Policies and value functions: flax MLPs whose policy head is a numpyro distribution.

- discrete actions: Categorical(logits = MLP(s));
- continuous actions: Normal(MLP(s), σ) over the action vector (``to_event(1)``), σ = g(x),
  with g = exp (``std_transform="exp"``, the default, CleanRL's and SB3's) or g(x) =
  softplus(x) + 10⁻³ (``"softplus"``, brax's ``NormalTanhDistribution``), and x either a free
  parameter vector (state-independent, the default) starting at x₀ = g⁻¹(exp(``log_std_init``)),
  or a second head of the MLP plus x₀ (``state_dependent_std=True``; the head starts near 0,
  and with exp, x is clipped to [−5, 2]).

Bounded continuous actions reach the environment in one of two ways. By default the Gaussian's
draw u is the action, which the environment clips to its box [l, h]; the score is the
Gaussian's at u (CleanRL's and SB3's choice). With ``squash_actions=True`` the environment
gets a = c + w·tanh(u) (c = (l + h)/2, w = (h − l)/2; brax's and SAC's choice), whose density
is

$$
\pi(a \mid s) = \mathcal N(u;\ \mu(s), \sigma^2)\ \prod_i \frac{1}{w_i\,(1 - \tanh^2 u_i)},
\qquad u = \operatorname{atanh}\big((a - c)/w\big).
$$

The Jacobian factor does not depend on θ, so ∇θ log π(a | s) = ∇θ log N(u; μ, σ²), and the
ratio π_θ(a | s)/π_old(a | s) is the Gaussians' at u, as is the KL between two such
policies (KL is invariant under an invertible map of the variable). The rollout therefore
stores u, and ``dist`` is the Gaussian over u for both choices; ``env_action`` maps u to what
the environment gets, ``action_dist`` is the distribution of that action (numpyro's
``SigmoidTransform`` between affine maps: tanh(u) = 2·sigmoid(2u) − 1) and ``entropy`` its
entropy (see there).

The policy and the value function have separate parameters, ``params["policy"]`` and
``params["value"]``, so that the policy's distribution reads only its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from scorefn.rl import hyperparameters
from scorefn.rl.envs import Space

# The hidden layers' nonlinearities, by name (silu is brax's "swish")
ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "silu": nn.silu}
# Quadrature nodes and weights for E_{u ~ N(μ, σ²)}[log(1 − tanh² u)] (``mean_log_sech2``)
_HERMITE_NODES, _HERMITE_WEIGHTS = np.polynomial.hermite.hermgauss(32)
_LAGUERRE_NODES, _LAGUERRE_WEIGHTS = np.polynomial.laguerre.laggauss(16)
STD_TRANSFORMS = ("exp", "softplus")
MIN_STD = 1e-3  # softplus's σ floor (brax's min_std)


class MLP(nn.Module):
    """MLP with orthogonal initialisation (gain √2 inside, ``out_scale`` at the head)."""

    hidden: Sequence[int]
    out: int
    out_scale: float = 1.0
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        for width in self.hidden:
            x = act(nn.Dense(width, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x))
        return nn.Dense(self.out, kernel_init=nn.initializers.orthogonal(self.out_scale))(x)


def mean_log_sech2(loc: jax.Array, scale: jax.Array) -> jax.Array:
    """E[log(1 − tanh² u)] for u ~ N(loc, scale²), elementwise: the squashed policy's
    expected log-Jacobian, to ~1e-7 for every loc and scale.

    log(1 − tanh² u) = 2 log 2 − 2u − 2 softplus(−2u) is analytic but bends within |u| ≲ 1,
    so Gauss–Hermite quadrature (32 nodes) serves scale ≤ 1 and fails for wide Gaussians.
    For scale > 1 it is 2 log 2 − 2 E|u| − 2 E[log(1 + e^{−2|u|})], E|u| the folded normal's
    mean (closed form) and the last term, folded onto v = |u| ≥ 0, Gauss–Laguerre (16 nodes)
    with weight e^{−2v}."""
    # Each branch sees a scale clamped to its own range, so that the one not taken stays
    # finite, its gradient too (jnp.where passes 0 · NaN = NaN otherwise).
    wide_scale, narrow_scale = jnp.maximum(scale, 1.0), jnp.minimum(scale, 1.0)
    # narrow: Gauss–Hermite, u = μ + √2 σ x
    u = loc[..., None] + np.sqrt(2.0) * narrow_scale[..., None] * _HERMITE_NODES
    narrow = jnp.sum(2.0 * (np.log(2.0) - u - jax.nn.softplus(-2.0 * u)) * _HERMITE_WEIGHTS,
                     axis=-1) / np.sqrt(np.pi)
    # wide: closed-form E|u| and Gauss–Laguerre over v = x / 2
    z = loc / wide_scale
    abs_mean = (wide_scale * np.sqrt(2.0 / np.pi) * jnp.exp(-0.5 * z ** 2)
                + loc * (1.0 - 2.0 * jax.scipy.special.ndtr(-z)))
    v = _LAGUERRE_NODES / 2.0
    folded = (jax.scipy.stats.norm.pdf(v, loc[..., None], wide_scale[..., None])
              + jax.scipy.stats.norm.pdf(-v, loc[..., None], wide_scale[..., None]))
    tail = jnp.sum(_LAGUERRE_WEIGHTS * np.exp(2.0 * v) * np.logaddexp(0.0, -2.0 * v) * folded,
                   axis=-1) / 2.0
    wide = 2.0 * np.log(2.0) - 2.0 * abs_mean - 2.0 * tail
    return jnp.where(wide_scale > 1.0, wide, narrow)


def check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; "
                         f"got {activation!r}")


def check_std(std_transform: str, log_std_init: float) -> None:
    if std_transform not in STD_TRANSFORMS:
        raise ValueError(f"std_transform must be one of {', '.join(STD_TRANSFORMS)}; "
                         f"got {std_transform!r}")
    if std_transform == "softplus" and not log_std_init > np.log(MIN_STD):
        raise ValueError(f"log_std_init must exceed log {MIN_STD:g} = {np.log(MIN_STD):.3f} "
                         f"with std_transform='softplus' (σ = softplus(x) + {MIN_STD:g}); "
                         f"got {log_std_init!r}")


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """The network fields every algorithm's ``Config`` shares (it subclasses this)."""

    hidden: tuple[int, ...] = (64, 64)
    log_std_init: float = 0.0  # continuous actions: initial log σ
    state_dependent_std: bool = False  # continuous actions: σ from the MLP, not a vector
    std_transform: str = "exp"  # σ = exp(x), or softplus(x) + 1e-3 (brax's)
    value_hidden: tuple[int, ...] | None = None  # the value MLP's layers; None: ``hidden``
    activation: str = "tanh"  # the hidden layers' nonlinearity: tanh, relu or silu
    squash_actions: bool = False  # bounded actions: c + w·tanh(u) instead of u, clipped

    def __post_init__(self):
        hyperparameters.check(self)
        check_activation(self.activation)
        check_std(self.std_transform, self.log_std_init)
        if not isinstance(self.squash_actions, bool):
            raise ValueError(f"squash_actions must be True or False; got {self.squash_actions!r}")


@dataclasses.dataclass(frozen=True)
class ActorCritic:
    """A policy π_θ(a | s) and a value function V_φ(s)."""

    space: Space
    hidden: tuple[int, ...] = (64, 64)
    state_dependent_std: bool = False
    log_std_init: float = 0.0
    obs_ndim: int = 1  # trailing observation dims, flattened for the MLP (e.g. MinAtar's 10×10×C)
    value_hidden: tuple[int, ...] | None = None  # None: the policy's ``hidden``
    activation: str = "tanh"
    squash_actions: bool = False  # the environment gets c + w·tanh(u), not u (clipped)
    std_transform: str = "exp"  # σ = exp(x), or softplus(x) + MIN_STD (brax's)

    def __post_init__(self):
        check_activation(self.activation)
        check_std(self.std_transform, self.log_std_init)
        if self.squash_actions:
            if self.space.discrete:
                raise ValueError("squash_actions applies to continuous (Box) action spaces; "
                                 f"this one is discrete ({self.space.num_actions} actions)")
            low, high = self.space.low, self.space.high
            if low is None or high is None or not np.all(np.isfinite(
                    np.concatenate([np.ravel(low), np.ravel(high)]).astype(np.float64))):
                raise ValueError("squash_actions needs finite action bounds; this action "
                                 f"space has low={self.space.low}, high={self.space.high}")

    @classmethod
    def from_config(cls, space: Space, config: NetworkConfig, obs_ndim: int = 1) -> ActorCritic:
        """The networks a ``NetworkConfig`` (every algorithm's ``Config``) describes: each of
        its fields is one of this class's (layer lists, as JSON settings hold them, as tuples)."""
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(NetworkConfig)}
        fields["hidden"] = tuple(fields["hidden"])
        if fields["value_hidden"] is not None:
            fields["value_hidden"] = tuple(fields["value_hidden"])
        return cls(space, obs_ndim=obs_ndim, **fields)

    @property
    def action_dim(self) -> int:
        return self.space.num_actions if self.space.discrete else int(np.prod(self.space.shape))

    def _actor(self) -> MLP:
        heads = 2 if (not self.space.discrete and self.state_dependent_std) else 1
        return MLP(self.hidden, heads * self.action_dim, out_scale=0.01,
                   activation=self.activation)

    def _critic(self) -> MLP:
        hidden = self.hidden if self.value_hidden is None else self.value_hidden
        return MLP(hidden, 1, out_scale=1.0, activation=self.activation)

    def _flat(self, obs: jax.Array) -> jax.Array:
        if self.obs_ndim == 1:
            return obs
        return obs.reshape(obs.shape[: obs.ndim - self.obs_ndim] + (-1,))

    def init(self, key: jax.Array, obs_shape: tuple[int, ...]) -> dict[str, Any]:
        k_actor, k_critic = jax.random.split(key)
        dummy = self._flat(jnp.zeros(obs_shape, jnp.float32))
        policy = {"net": self._actor().init(k_actor, dummy)}
        if not self.space.discrete and not self.state_dependent_std:
            policy[self._std_name] = jnp.full((self.action_dim,), self._std_offset(), jnp.float32)
        return {"policy": policy, "value": self._critic().init(k_critic, dummy)}

    def dist(self, policy_params: dict[str, Any], obs: jax.Array) -> dist.Distribution:
        """π(· | obs) for a batch of observations ``(..., *obs_shape)``."""
        out = self._actor().apply(policy_params["net"], self._flat(obs))
        if self.space.discrete:
            return dist.Categorical(logits=out)
        if self.state_dependent_std:
            mean, head = jnp.split(out, 2, axis=-1)
            x = head + self._std_offset()
            if self.std_transform == "exp":
                x = jnp.clip(x, -5.0, 2.0)
        else:
            mean, x = out, jnp.broadcast_to(policy_params[self._std_name], out.shape)
        scale = jnp.exp(x) if self.std_transform == "exp" else jax.nn.softplus(x) + MIN_STD
        return dist.Normal(mean, scale).to_event(1)

    @property
    def _std_name(self) -> str:
        """The free σ parameter's key in the policy's parameters (x = log σ under exp)."""
        return "log_std" if self.std_transform == "exp" else "std_param"

    def _std_offset(self) -> float:
        """The x at which σ = exp(``log_std_init``): g⁻¹ of it."""
        if self.std_transform == "exp":
            return self.log_std_init
        return float(np.log(np.expm1(np.exp(self.log_std_init) - MIN_STD)))

    def value(self, value_params: Any, obs: jax.Array) -> jax.Array:
        return self._critic().apply(value_params, self._flat(obs))[..., 0]

    def _box(self) -> tuple[jax.Array, jax.Array]:
        low = jnp.asarray(self.space.low, jnp.float32).reshape(-1)
        high = jnp.asarray(self.space.high, jnp.float32).reshape(-1)
        return (low + high) / 2, (high - low) / 2

    def env_action(self, action: jax.Array) -> jax.Array:
        """What the environment gets for a draw u of ``dist``: c + w·tanh(u) with
        ``squash_actions``, else u itself (the environment clips it)."""
        if not self.squash_actions:
            return action
        center, half_width = self._box()
        return center + half_width * jnp.tanh(action)

    def action_dist(self, policy_params: dict[str, Any], obs: jax.Array) -> dist.Distribution:
        """The distribution of ``env_action(u)``, u ~ ``dist``: with ``squash_actions`` the
        squashed Gaussian of the module's docstring, else ``dist`` itself (before the
        environment's clip, which moves the mass beyond the bounds onto them)."""
        d = self.dist(policy_params, obs)
        if not self.squash_actions:
            return d
        center, half_width = self._box()
        # numpyro has no tanh transform: c + w·tanh(u) = (c − w) + 2w·sigmoid(2u)
        transforms = dist.transforms
        return dist.TransformedDistribution(d, [
            transforms.AffineTransform(0.0, 2.0), transforms.SigmoidTransform(),
            transforms.AffineTransform(center - half_width, 2.0 * half_width)])

    def entropy(self, d: dist.Distribution) -> jax.Array:
        r"""H[π(· | s)] of the action the environment gets, for ``d = dist(params, obs)``.

        Unsquashed: the Gaussian's (or the categorical's) entropy. Squashed (a = c + w·tanh u):

        $$
        H = \sum_i \Big( \tfrac12 \log(2\pi e \sigma_i^2) + \log w_i
            + \mathbb E_{u_i \sim \mathcal N(\mu_i, \sigma_i^2)}\big[\log(1 - \tanh^2 u_i)\big] \Big),
        $$

        the expectation by quadrature (``mean_log_sech2``: deterministic, differentiable in μ
        and σ, to ~1e-7; brax estimates it from one draw). It penalises saturated actions,
        which the Gaussian's entropy does not."""
        base = d.entropy()
        if not self.squash_actions:
            return base
        normal = d.base_dist
        _, half_width = self._box()
        expected = mean_log_sech2(normal.loc, normal.scale)
        return base + jnp.sum(expected + jnp.log(half_width), axis=-1)

    def mode(self, policy_params: dict[str, Any], obs: jax.Array) -> jax.Array:
        """The deterministic action: argmax of the logits, or the Gaussian's mean as the
        environment gets it (``env_action(μ)``: squashed, the squashed policy's median, brax's
        deterministic action)."""
        d = self.dist(policy_params, obs)
        if self.space.discrete:
            return jnp.argmax(d.logits, axis=-1)
        return self.env_action(d.base_dist.loc)
