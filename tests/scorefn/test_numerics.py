import jax
import jax.numpy as jnp
import pytest

from scorefn.numerics import full_precision, matmul_epsilon


def _rounded_to(mantissa_bits: int, truncate: bool):
    """float32 → float32 keeping ``mantissa_bits`` explicit bits, as TF32 or bfloat16 inputs."""
    drop = 23 - mantissa_bits

    def rounding(x):
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
        if not truncate:
            bits = bits + jnp.uint32(1 << (drop - 1))
        bits = bits & jnp.uint32((0xFFFFFFFF >> drop) << drop)
        return jax.lax.bitcast_convert_type(bits, jnp.float32)

    return lambda a, b: rounding(a) @ rounding(b)


@pytest.mark.parametrize("truncate", [False, True])
@pytest.mark.parametrize("mantissa_bits", [7, 10, 16])
def test_matmul_epsilon_measures_the_precision_of_the_product(mantissa_bits, truncate):
    """bfloat16 (7 bits), TF32 (10) and a made-up 16 bits, rounded or truncated: ε = 2^-bits."""
    assert matmul_epsilon(_rounded_to(mantissa_bits, truncate)) == 2.0**-mantissa_bits


def test_matmul_epsilon_of_this_backend():
    eps = matmul_epsilon()
    assert eps in (2.0**-23, 2.0**-10, 2.0**-7), eps
    if jax.default_backend() == "cpu":  # XLA's CPU backend multiplies float32 exactly
        assert eps == jnp.finfo(jnp.float32).eps
    with jax.default_matmul_precision("highest"):  # asked for full precision, every backend
        assert matmul_epsilon() == jnp.finfo(jnp.float32).eps
    # a product that keeps no extra digit is caught: the probe does not just return eps32
    assert matmul_epsilon(lambda a, b: jnp.round(a) @ b) == 0.5


def test_full_precision_is_traced_into_the_product():
    x = jnp.ones((3, 3))
    with full_precision():
        jaxpr = jax.make_jaxpr(jnp.matmul)(x, x)
    assert "HIGHEST" in str(jaxpr)
    assert "HIGHEST" not in str(jax.make_jaxpr(jnp.matmul)(x, x))
