"""Several devices in one process (scorefn.runs.devices) on 8 simulated CPU devices:
es.minimize splits its population, really (each device computes its share), with the same
result as one device, and resumes with another device count; rl.train splits its seeds, or
one seed's environments, programs their particles and vi.fit its data, with the same
result."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from scorefn import es
from scorefn.runs.devices import mesh_of

EIGHT_DEVICES = textwrap.dedent("""
    import json, re, sys
    import jax, jax.numpy as jnp, numpy as np
    from scorefn import es
    from scorefn.es.run import compiled_generations
    from scorefn.runs.devices import mesh_of

    def f(x):
        return jnp.sum(jnp.cos(3 * x)) + jnp.sum(x ** 2)

    def close(a, b, atol=1e-6):  # float32: f compiled for a shard may differ in its last bits
        return bool(np.allclose(a, b, rtol=1e-5, atol=atol))

    out = {"devices": len(jax.devices())}
    for strategy in ("xnes", "snes", es.snes(popsize=10)):  # 10 does not divide by 8
        name = strategy if isinstance(strategy, str) else "snes10"
        one = es.minimize(f, jnp.ones(10), strategy, seed=0, max_evaluations=3000)
        eight = es.minimize(f, jnp.ones(10), strategy, seed=0, max_evaluations=3000,
                            devices=8)
        other_seed = es.minimize(f, jnp.ones(10), strategy, seed=1, max_evaluations=3000)
        # x where f is flat: its last bits move it by up to about 2e-4 here
        out[name] = [close(one.f, eight.f), close(one.x, eight.x, atol=1e-3),
                     close(one.history, eight.history),
                     close(one.history, other_seed.history)]  # the twin: a different run
    # the work is split: the compiled chunk computes f on 16/8 = 2 candidates per device
    strat = es.xnes(popsize=16)
    state = strat.init(jax.random.key(0), jnp.ones(10), 1.0)
    shapes = {}
    for n in (None, 8):
        chunk = compiled_generations(strat, f, 2, "penalize", mesh_of(n, "population"))
        text = chunk.lower((state, jnp.ones(10), jnp.asarray(jnp.inf))).compile().as_text()
        shapes[str(n)] = sorted(set(re.findall(r"(f32\\[\\d+,10\\])\\S* cosine", text)))
    out["shapes"] = shapes
    # a run checkpointed on 8 devices resumes on one, as if uninterrupted
    path = sys.argv[1]
    es.minimize(f, jnp.ones(10), es.xnes(popsize=16), seed=1, max_evaluations=800,
                devices=8, checkpoint=path, generations_per_call=10)
    resumed = es.minimize(f, jnp.ones(10), es.xnes(popsize=16), seed=1, max_evaluations=1600,
                          checkpoint=path, resume=True, generations_per_call=10)
    whole = es.minimize(f, jnp.ones(10), es.xnes(popsize=16), seed=1, max_evaluations=1600,
                        generations_per_call=10)
    out["resume"] = [resumed.f == whole.f, resumed.history == whole.history]

    # rl.train: 8 seeds split over 8 devices (each holds one), one seed's environments
    from scorefn import rl
    small = dict(total_steps=1024, eval_every=512, num_epochs=2, progress=False)

    def same(x, y):
        leaves = zip(jax.tree.leaves(x.params), jax.tree.leaves(y.params))
        return (all(close(np.asarray(u), np.asarray(v)) for u, v in leaves)
                and [r["eval_mean"] for r in x.history] == [r["eval_mean"] for r in y.history])

    seeds = list(range(8))
    split_seeds = rl.train("CartPole-v1", "ppo", seeds=seeds, devices=8, **small)
    leaf = jax.tree.leaves(split_seeds.params)[0]
    out["rl"] = {
        "seeds": same(split_seeds, rl.train("CartPole-v1", "ppo", seeds=seeds, **small)),
        "share": [int(leaf.shape[0]), int(leaf.sharding.shard_shape(leaf.shape)[0])],
        "environments": same(rl.train("CartPole-v1", "ppo", seed=0, devices=8, **small),
                             rl.train("CartPole-v1", "ppo", seed=0, **small)),
        "twin": same(rl.train("CartPole-v1", "ppo", seed=0, **small),
                     rl.train("CartPole-v1", "ppo", seed=1, **small)),
    }
    # checkpointed on 8 devices, resumed on one
    rl_path = path + ".rl"
    rl.train("CartPole-v1", "ppo", seeds=seeds, devices=8, checkpoint=rl_path,
             **{**small, "total_steps": 512})
    out["rl"]["resume"] = same(
        rl.train("CartPole-v1", "ppo", seeds=seeds, checkpoint=rl_path, resume=True, **small),
        rl.train("CartPole-v1", "ppo", seeds=seeds, **small))
    # programs: 16 particles split over 8 devices, 2 each
    import numpyro
    import numpyro.distributions as dist
    import scorefn

    def program(p, x):
        z = numpyro.sample("z", dist.Bernoulli(logits=p["a"]))
        y = numpyro.sample("y", dist.Normal(p["m"] + z, 1.0))
        numpyro.factor("f", -(y - x) ** 2 + jnp.cos(3 * y))

    params, key = {"a": jnp.array(0.3), "m": jnp.array(0.1)}, jax.random.key(0)

    def program_grad(devices, k=key):
        return jax.jit(lambda p, k: scorefn.programs.grad(
            program, p, k, 1.0, num_particles=16, devices=devices))

    def grads(devices, k=key):
        g = program_grad(devices)(params, k)
        return np.array([g["a"], g["m"]])

    def cosine_shapes(devices):
        text = program_grad(devices).lower(params, key).compile().as_text()
        return sorted(set(re.findall(r"f32\\[(\\d+)\\]\\S* cosine", text)))

    from jax.sharding import Mesh
    with jax.set_mesh(Mesh(np.array(jax.devices()), ("particles",))):  # the caller's mesh
        in_context = cosine_shapes(None)
    out["programs"] = {"same": close(grads(None), grads(8)),
                       "twin": close(grads(None), grads(None, jax.random.key(1))),
                       "shapes": [cosine_shapes(None), cosine_shapes(8), in_context]}

    # vi.fit: 64 observations split over 8 devices, 8 each
    import importlib
    from scorefn import vi
    fit_module = importlib.import_module("scorefn.vi.fit")
    X = jax.random.normal(jax.random.key(0), (64, 3))
    y = (X @ jnp.array([1.0, -2.0, 0.5]) > 0).astype(jnp.float32)

    def logistic(X, y):
        w = numpyro.sample("w", dist.Normal(jnp.zeros(3), 1.0).to_event(1))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)

    chunks = []  # each compiled chunk and its arguments, to read its program
    exact_cached_jit = fit_module.cached_jit

    def recording(fn, **options):
        jitted = exact_cached_jit(fn, **options)

        def call(*args):
            chunks.append((jitted, args))
            return jitted(*args)
        return call

    fit_module.cached_jit = recording
    small = dict(estimator="score", num_samples=4, steps=200, chunk_size=100, progress=False)

    def fit(seed=2, **options):
        return vi.fit(logistic, None, (X, y), jax.random.key(seed), **{**small, **options})

    def data_shapes():  # the data's rows per device in the last compiled chunk
        jitted, args = chunks[-1]
        return sorted(set(re.findall(r"f32\\[(\\d+),3\\]", jitted.lower(*args).compile().as_text())))

    one = fit()
    one_shapes = data_shapes()
    eight = fit(devices=8)
    eight_shapes = data_shapes()
    vi_path = path + ".vi"
    fit(devices=8, steps=100, checkpoint=vi_path)
    resumed = fit(checkpoint=vi_path, resume=True)
    out["vi"] = {"same": close(one.objective, eight.objective, 1e-4)
                 and all(close(a, b) for a, b in zip(jax.tree.leaves(one.params),
                                                      jax.tree.leaves(eight.params))),
                 "twin": close(one.objective, fit(seed=3).objective, 1e-4),
                 "resume": close(one.objective, resumed.objective, 1e-4),
                 "shapes": [one_shapes, eight_shapes]}

    # the discrete VAE: each minibatch of 16 images split over 8 devices
    from scorefn.vi import discrete_vae as dv
    digits, vae = dv.binarized_digits(), dv.DiscreteVAE(latents=8, hidden=0)
    options = dict(estimator="disarm", steps=20, batch_size=16, steps_per_call=10,
                   variance_at=[], variance_samples=2, evaluation_samples=2)

    def vae_elbo(seed=0, **more):
        return dv.fit(vae, digits, jax.random.key(seed), **options, **more).elbo

    out["discrete_vae"] = [close(vae_elbo(), vae_elbo(devices=8), 1e-4),
                           close(vae_elbo(), vae_elbo(seed=1), 1e-4)]
    print(json.dumps(out))
""")


# One subprocess on eight devices runs every check below (one to two minutes): the tests
# that read it are marked slow.
@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    # XLA's default flags, as users compile (not the session's unoptimised ones, conftest.py,
    # under which ES's one- and eight-device runs drift apart past the tolerance)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    path = str(tmp_path_factory.mktemp("devices") / "run.ckpt")
    done = subprocess.run([sys.executable, "-c", EIGHT_DEVICES, path], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_eight_devices_give_the_one_device_run(eight_devices):
    assert eight_devices["devices"] == 8
    for name in ("xnes", "snes", "snes10"):
        assert eight_devices[name] == [True, True, True, False], name


@pytest.mark.slow
def test_each_device_evaluates_its_share_of_the_population(eight_devices):
    # one device: f on all 16 candidates; eight: on 2 each (the twin: not a replicated copy)
    assert eight_devices["shapes"] == {"None": ["f32[16,10]"], "8": ["f32[2,10]"]}


@pytest.mark.slow
def test_a_run_resumes_with_another_device_count(eight_devices):
    assert eight_devices["resume"] == [True, True]


@pytest.mark.slow
def test_rl_splits_seeds_or_environments_with_the_same_result(eight_devices):
    rl = eight_devices["rl"]
    assert rl["seeds"] and rl["environments"] and not rl["twin"]
    assert rl["resume"]  # checkpointed on 8 devices, resumed on one
    assert rl["share"] == [8, 1]  # each device holds one seed's parameters


@pytest.mark.slow
def test_program_particles_split_with_the_same_gradient(eight_devices):
    programs = eight_devices["programs"]
    assert programs["same"] and not programs["twin"]
    # the factor on 16 particles, or 2 a device: with devices=8, or devices=None under the
    # caller's jax.set_mesh context
    assert programs["shapes"] == [["16"], ["2"], ["2"]]


@pytest.mark.slow
def test_vi_splits_the_data_with_the_same_fit(eight_devices):
    fitted = eight_devices["vi"]
    assert fitted["same"] and not fitted["twin"] and fitted["resume"]
    # the compiled step reads 64 observations on one device, 8 on each of eight (the 4 guide
    # samples of w are the [4, 3] array)
    assert fitted["shapes"] == [["4", "64"], ["4", "8"]]
    assert eight_devices["discrete_vae"] == [True, False]  # the same ELBO trace; the twin not


def test_devices_are_checked_before_the_run():
    n = len(jax.devices())
    with pytest.raises(ValueError, match=r"devices must be between 1 and the .*xla_force_host"):
        es.minimize(lambda x: (x ** 2).sum(), [1.0, 2.0], devices=n + 1, max_evaluations=10)
    with pytest.raises(TypeError, match="devices must be None, an int"):
        mesh_of("all")
    with pytest.raises(ValueError, match="evaluator='python' evaluates on the host"):
        es.minimize(lambda x: float((x ** 2).sum()), [1.0, 2.0], evaluator="python",
                    devices=1, max_evaluations=10)
    assert mesh_of(None) is None and mesh_of(1).devices.size == 1
    from scorefn import rl
    with pytest.raises(ValueError, match="devices= need a gymnax or brax environment"):
        rl.train("InvertedPendulum-v5", "ppo", total_steps=64, devices=1, progress=False)
