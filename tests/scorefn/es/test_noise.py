import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorefn.es.noise import standard_normal


@pytest.mark.parametrize("popsize", [10, 7])
def test_mirrored_rows_come_in_pairs_and_an_odd_population_ends_unpaired(popsize):
    eps = standard_normal(jax.random.key(0), popsize, 5, jnp.float32, mirrored=True)
    half = popsize // 2
    assert eps.shape == (popsize, 5)
    np.testing.assert_array_equal(eps[half:2 * half], -eps[:half])
    if popsize % 2:
        assert not np.allclose(np.abs(eps[-1]), np.abs(eps[0]))


def test_each_mirrored_row_is_standard_normal():
    # 4000 populations of 6: the moments of every row against N(0, 1), within 5 standard errors
    eps = jax.vmap(lambda k: standard_normal(k, 6, 3, jnp.float32, mirrored=True))(
        jax.random.split(jax.random.key(1), 4000))
    n = eps.shape[0]
    assert np.all(np.abs(np.mean(eps, axis=0)) < 5 / np.sqrt(n))
    assert np.all(np.abs(np.var(eps, axis=0) - 1) < 5 * np.sqrt(2 / n))


def test_unmirrored_rows_are_independent_draws():
    eps = standard_normal(jax.random.key(0), 10, 5, jnp.float32, mirrored=False)
    assert not np.allclose(eps[5:], -eps[:5])
