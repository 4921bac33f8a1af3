"""The small flax network the RELAX tests learn as a control variate."""

import flax.linen as nn


class SmallMLP(nn.Module):
    """c_ψ(σ(z/τ)) -> a scalar: one tanh layer of 16 units."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.tanh(nn.Dense(16)(x)))[..., 0]
