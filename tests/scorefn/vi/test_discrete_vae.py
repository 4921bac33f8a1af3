"""The discrete VAE on digits: its ELBO gradient is unbiased (enumerated closed form), a fit
learns and resumes exactly, the CLI runs it."""

import itertools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from closed_forms import assert_unbiased, detects_bias
from jax.flatten_util import ravel_pytree

import scorefn
from scorefn.cli import main
from scorefn.runs import checkpoints
from scorefn.vi import discrete_vae as dv

SMALL = dv.DiscreteVAE(latents=3, hidden=4)


@pytest.fixture(scope="module")
def digits():
    return dv.binarized_digits()


def test_binarized_digits_split(digits):
    train, test = digits
    assert train.shape == (1500, 64) and test.shape == (297, 64)
    assert set(np.unique(train)) == {0.0, 1.0}
    assert 0.2 < train.mean() < 0.4


def exact_elbo(model, params, x):
    """Σ over images of E_q[log p(x, z) - log q(z | x)] by enumerating the 2^L values of z."""
    q = model.guide(params, x)
    total = 0.0
    for bits in itertools.product((0.0, 1.0), repeat=model.latents):
        z = jnp.broadcast_to(jnp.asarray(bits), (x.shape[0], model.latents))
        log_q = q.log_prob(z)
        total = total + jnp.sum(jnp.exp(log_q) * (model.log_joint(params, x, z) - log_q))
    return total


@pytest.mark.slow
@pytest.mark.parametrize("estimator,particles",
                         [("disarm", 1), ("rloo", 2), ("score", 1), ("rebar", 1)])
def test_program_gradient_is_unbiased_for_the_enumerated_elbo(digits, estimator, particles):
    x = jnp.asarray(digits[0][:2])
    params = SMALL.init(jax.random.key(3))
    truth = ravel_pytree(jax.grad(exact_elbo, argnums=1)(SMALL, params, x))[0]

    # "score" without its EMA state: a constant baseline, still unbiased.
    baselines = {"z": 20.0} if estimator == "score" else None

    def estimate(k, shift):
        g = jax.grad(lambda p: scorefn.programs.surrogate(
            SMALL.program, p, k, x, num_particles=particles, estimators={"z": estimator},
            baselines=baselines))(params)
        return ravel_pytree(g)[0] + shift

    keys = jax.random.split(jax.random.key(0), 20_000)
    estimates = np.asarray(jax.jit(jax.vmap(lambda k: estimate(k, 0.0)))(keys), np.float64)
    assert_unbiased(estimates, truth)
    # the same test catches a bias of a tenth of the largest true coordinate on one weight
    planted = np.zeros(truth.shape)
    planted[int(np.argmax(np.abs(truth)))] = 0.1 * float(np.max(np.abs(truth)))
    assert detects_bias(estimates + planted, truth)


@pytest.mark.slow  # a long end-to-end run
def test_fit_learns_and_reports(digits, tmp_path):
    result = dv.fit(SMALL, digits, jax.random.key(0), estimator="disarm", steps=150,
                    batch_size=50, learning_rate=1e-2, steps_per_call=50, variance_samples=8,
                    evaluation_samples=20)
    assert len(result.elbo) == 150 and np.isfinite(result.elbo).all()
    assert result.final_elbo > np.mean(result.elbo[:10]) + 3  # nats per image
    assert sorted(result.gradient_variance) == [0, 75, 150]
    assert all(np.isfinite(x) and x > 0 for x in result.gradient_variance.values())
    # the importance-sampled log-likelihood bounds the ELBO from above (Jensen)
    assert result.test["log_likelihood"] >= result.test["elbo"]
    assert result.us_per_step > 0 and result.as_dict()["unbiased"]
    result.plot(str(tmp_path / "elbo.png"))
    assert (tmp_path / "elbo.png").stat().st_size > 10_000


@pytest.mark.slow  # a long end-to-end run
def test_resume_equals_uninterrupted_and_refuses_other_settings(digits, tmp_path, monkeypatch):
    options = dict(estimator="score", steps=60, batch_size=20, steps_per_call=20,
                   variance_samples=4, evaluation_samples=5)
    whole = dv.fit(SMALL, digits, jax.random.key(1), **options)
    path = str(tmp_path / "vae.ckpt")
    saves = []
    real_save = checkpoints.save  # every run's checkpoints are written there

    def save_then_die(p, payload, **kind):  # killed right after the second checkpoint
        real_save(p, payload, **kind)
        saves.append(payload["done"])
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        dv.fit(SMALL, digits, jax.random.key(1), checkpoint=path, **options)
    monkeypatch.setattr(checkpoints, "save", real_save)
    assert saves == [20, 30]  # 30: the middle variance checkpoint ends a call
    resumed = dv.fit(SMALL, digits, jax.random.key(1), checkpoint=path, resume=True, **options)
    assert resumed.elbo == whole.elbo and resumed.gradient_variance == whole.gradient_variance
    assert np.array_equal(ravel_pytree(resumed.params)[0], ravel_pytree(whole.params)[0])
    with pytest.raises(ValueError, match="other settings.*learning_rate"):
        dv.fit(SMALL, digits, jax.random.key(1), checkpoint=path, resume=True,
               learning_rate=0.5, **options)


def test_argument_errors(digits):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="estimator must be one of"):
        dv.fit(SMALL, digits, key, estimator="reinforce")
    with pytest.raises(ValueError, match="'rloo' needs num_particles >= 2"):
        dv.fit(SMALL, digits, key, estimator="rloo")
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        dv.fit(SMALL, digits, key, steps=0)
    with pytest.raises(ValueError, match="binary arrays"):
        dv.fit(SMALL, (digits[0] * 16, digits[1]), key)
    with pytest.raises(ValueError, match="resume=True needs checkpoint"):
        dv.fit(SMALL, digits, key, resume=True)
    with pytest.raises(ValueError, match="latents must be an int >= 1"):
        dv.DiscreteVAE(latents=0)


@pytest.mark.slow  # a long end-to-end run
def test_cli_fit_discrete_vae_json(tmp_path, capsys, cli_error):
    plot = str(tmp_path / "curve.png")
    code = main(["fit", "--model", "discrete_vae_digits", "--estimator", "arm", "--steps", "40",
                 "--latents", "4", "--json", "--plot", plot])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["estimator"] == "arm" and result["steps"] == 40 and result["unbiased"]
    assert set(result["test"]) == {"elbo", "log_likelihood"}
    assert "is not one of score, rloo" in cli_error(
        ["fit", "--model", "discrete_vae_digits", "--estimator", "vimco", "--steps", "5"])
    assert re.search("not one of .*for --model gaussian_mixture", cli_error(
        ["fit", "--model", "gaussian_mixture", "--estimator", "disarm", "--steps", "5"]))
