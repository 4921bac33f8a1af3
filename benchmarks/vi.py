"""VI benchmark: scorefn.vi against Pyro's SVI in one run.

Protocol of ../shared/peers/pyro_vi.py.

**Part 1: Bayesian logistic regression** on scikit-learn's breast-cancer data (569 × 30,
standardised). The priors are N(0, 1). The guide is mean-field Normal, loc 0, scale 0.1
through exp (Pyro's positive constraint). Adam lr 0.01, 3000 steps. Reported:
- the wall seconds for the 3000 steps, compilation included;
- ELBO(last100), the mean of the last 100 per-step estimates;
- ELBO(MC), a 4000-sample Monte Carlo ELBO of the final guide, the same estimator for all;
- the posterior-mean error against a NUTS run (max over weights of |Δ| / posterior sd).

scorefn's wall time is measured twice, each in a fresh process:
- cold: no compilation cache;
- warm: JAX's persistent compilation cache filled by an earlier run of the same fit.

**Part 2: a 1-D two-component Gaussian mixture.** N = 500, with sampled (not enumerated)
assignments. Pyro's per-point decaying-average baseline (β = 0.9) against scorefn's "mixed"
estimator: pathwise for μ, and a Rao-Blackwellised score function for z with an EMA
baseline (β = 0.9), also per point. Adam 0.01, 2000 steps. Reported:
- ms per step;
- the final ELBO;
- the recovered means;
- the gradient variance per parameter at the guide's initial θ. That is 500 estimates in
  sequence, after 50 warm-up steps that fill the baselines.

**Part 3: the discrete VAE of benchmarks/discrete_vae.py through numpyro's SVI.** The
model and the guide are numpyro programs with ``flax_module`` networks (linear encoder and
decoder, 32 Bernoulli latents, binarised digits); every framework starts from the same
initial weights and sees the same batches of 100; Adam 1e-3, 2000 steps. Losses:
``scorefn.vi.ELBO`` (an EMA baseline carried in SVI's mutable state, K = 1; RLOO, K = 2;
DisARM, one pair), numpyro's ``TraceGraph_ELBO`` (its only baseline-free score-function
ELBO) and Pyro's ``TraceGraph_ELBO`` with its neural baseline and decaying average.
Reported: the training ELBO per image (mean of the last 100 steps), the test ELBO and the
importance-sampled test log-likelihood (S = 100, the same JAX code for every framework),
the wall seconds of the whole run (compilation included) and µs per step after it.

torch runs with 1 thread, as in the peer script; JAX uses the machine's 2 cores.

    pip install ".[bench]"
    python benchmarks/vi.py                  # about 15 minutes
    python benchmarks/vi.py --seeds 0 --skip-pyro
    python benchmarks/vi.py --part 3         # the discrete VAE through SVI only
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

LR_STEPS, MIX_STEPS, VAE_STEPS, VAE_BATCH, VAE_LR = 3000, 2000, 2000, 100, 1e-3
SCOREFN_LR = {  # name: (estimator, K, baseline)
    "pathwise K=1": ("pathwise", 1, "none"),
    "score K=1 + EMA": ("score", 1, "ema"),
    "score_rb K=16 + LOO": ("score_rb", 16, "leave-one-out"),
    "score K=16 + LOO": ("score", 16, "leave-one-out"),
}
PYRO_LR = ["trace", "tg_sf", "tg_sf_nob"]


# ------------------------------------------------------------------ scorefn
def _exp_normal(shape, loc=None):
    import jax.numpy as jnp
    import numpyro.distributions as dist

    loc = jnp.zeros(shape) if loc is None else jnp.asarray(loc, jnp.float32)
    return (lambda p: dist.Normal(p["loc"], jnp.exp(p["log_scale"])),
            {"loc": loc, "log_scale": jnp.full(shape, math.log(0.1), jnp.float32)})


def _baseline(name):
    from scorefn import baselines

    return {"none": None, "ema": baselines.ema(0.9), "leave-one-out": baselines.leave_one_out()}[name]


def scorefn_lr(estimator, k, baseline, seed):
    import jax

    from scorefn import vi

    x, y = vi.examples.breast_cancer()
    guide = vi.mean_field(families={"w": _exp_normal((x.shape[1],)), "b": _exp_normal(())})
    result = vi.fit(vi.examples.logistic_regression, guide, (x, y), jax.random.key(seed),
                    estimator=estimator, num_samples=k, baseline=_baseline(baseline),
                    steps=LR_STEPS, progress=False)
    w = np.asarray(result.params["w"]["loc"])
    b = float(result.params["b"]["loc"])
    mc = np.asarray(jax.jit(jax.vmap(lambda kk: vi.elbo(result.model, result.guide, result.params,
                                                        kk, 1)))(
        jax.random.split(jax.random.key(12345), 4000)))
    return {"wall": result.wall_s, "elbo_last100": result.final_elbo, "elbo_mc": float(mc.mean()),
            "elbo_se": float(mc.std() / math.sqrt(len(mc))), "w": w.tolist(), "b": b}


def scorefn_mix(estimator, k, seed):
    import jax

    from scorefn import vi

    x, z_true = vi.examples.mixture_data()
    guide = vi.mean_field(vi.as_model(vi.examples.gaussian_mixture, (x,)),
                          {"mu": _exp_normal((2,), [-1.0, 1.0])})
    result = vi.fit(vi.examples.gaussian_mixture, guide, (x,), jax.random.key(seed),
                    estimator=estimator, num_samples=k,
                    baseline=_baseline("ema" if k == 1 else "leave-one-out"), steps=MIX_STEPS,
                    progress=False)
    z_hat = np.asarray(result.params["z"]) > 0
    acc = max(np.mean(z_hat == z_true), np.mean(z_hat != z_true))
    return {"wall": result.wall_s, "ms_step": 1e3 * result.wall_s / MIX_STEPS,
            "elbo_last100": result.final_elbo,
            "mu": np.round(np.asarray(result.params["mu"]["loc"]), 3).tolist(), "z_acc": float(acc)}


def scorefn_mix_variance(estimator, num_samples=1, baseline="ema", warmup=50, repeats=500):
    """Per-parameter gradient variance at the initial θ, an EMA baseline carried along (as
    Pyro's decaying average) or a leave-one-out one."""
    import jax

    from scorefn import baselines, vi
    from scorefn.vi.objectives import ema_states

    x, _ = vi.examples.mixture_data()
    model = vi.as_model(vi.examples.gaussian_mixture, (x,))
    guide = vi.mean_field(model, {"mu": _exp_normal((2,), [-1.0, 1.0])})
    params = guide.init()
    ema = baselines.ema(0.9)
    states = ema_states(model, guide, params, estimator, num_samples, ema.init)

    def step(states, key):
        if baseline == "leave-one-out":
            out = vi.elbo_grad(model, guide, params, key, estimator=estimator,
                               num_samples=num_samples, baseline=baselines.leave_one_out())
            return states, out.grad
        out = vi.elbo_grad(model, guide, params, key, estimator=estimator,
                           num_samples=num_samples, baseline=states)
        states = {n: ema.update(out.signals[n], s) for n, s in states.items()}
        return states, out.grad

    keys = jax.random.split(jax.random.key(0), warmup + repeats)
    _, grads = jax.jit(lambda ks: jax.lax.scan(step, states, ks))(keys)
    grads = jax.tree.map(lambda g: np.asarray(g[warmup:]), grads)
    return {"mu_loc": float(np.mean(np.var(grads["mu"]["loc"], 0))),
            "z_logits": float(np.mean(np.var(grads["z"], 0)))}


def run_worker(argv):
    """One scorefn measurement in this (fresh) process: prints one JSON line."""
    kind, *rest = argv
    if kind == "lr":
        estimator, k, baseline, seed = rest
        out = scorefn_lr(estimator, int(k), baseline, int(seed))
    elif kind == "vae":
        name, seed = rest
        out = svi_discrete_vae(name, int(seed))
    else:
        estimator, k, seed = rest
        out = scorefn_mix(estimator, int(k), int(seed))
    print(json.dumps(out))


def in_fresh_process(args, cache_dir=None):
    env = dict(os.environ)
    env["SCOREFN_COMPILATION_CACHE"] = cache_dir or "0"
    done = subprocess.run([sys.executable, __file__, "--worker", *map(str, args)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ Pyro
def pyro_setup():
    import torch

    torch.set_num_threads(1)


def pyro_lr_model_and_guides():
    """The peer script's model and guides (pyro_vi.py), reproduced here so that the
    benchmark runs from a checkout without ../shared."""
    import pyro
    import pyro.distributions as dist
    import torch
    from torch.distributions import constraints

    def model(x, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1]), 1.0).to_event(1))
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Bernoulli(logits=x @ w + b), obs=y)

    def make_guide(score_function, baseline):
        def guide(x, y):
            lw = pyro.param("loc_w", torch.zeros(x.shape[1]))
            sw = pyro.param("scale_w", 0.1 * torch.ones(x.shape[1]), constraint=constraints.positive)
            lb = pyro.param("loc_b", torch.tensor(0.0))
            sb = pyro.param("scale_b", torch.tensor(0.1), constraint=constraints.positive)
            qw, qb = dist.Normal(lw, sw), dist.Normal(lb, sb)
            infer = {}
            if score_function:
                qw, qb = qw.has_rsample_(False), qb.has_rsample_(False)
                if baseline:
                    infer = {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}
            pyro.sample("w", qw.to_event(1), infer=infer)
            pyro.sample("b", qb, infer=infer)
        return guide

    return model, make_guide


def pyro_lr(variant, seed, steps=LR_STEPS):
    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO
    from pyro.optim import Adam

    from scorefn import vi

    x, y = (torch.tensor(np.asarray(a)) for a in vi.examples.breast_cancer())
    model, make_guide = pyro_lr_model_and_guides()
    elbo_class, sf, bl = {"trace": (Trace_ELBO, False, False), "tg_sf": (TraceGraph_ELBO, True, True),
                          "tg_sf_nob": (TraceGraph_ELBO, True, False)}[variant]
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(model, make_guide(sf, bl), Adam({"lr": 0.01}), loss=elbo_class())
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        losses.append(svi.step(x, y))
    wall = time.perf_counter() - start
    ps = pyro.get_param_store()
    return {"wall": wall, "elbo_last100": -float(np.mean(losses[-100:])),
            "w": ps["loc_w"].detach().numpy().tolist(), "b": float(ps["loc_b"].detach()),
            "elbo_mc": mc_elbo_of(ps["loc_w"].detach().numpy(), ps["scale_w"].detach().numpy(),
                                  float(ps["loc_b"].detach()), float(ps["scale_b"].detach()))}


def mc_elbo_of(lw, sw, lb, sb):
    """The same 4000-sample ELBO as for scorefn, through scorefn.vi.elbo."""
    import jax
    import jax.numpy as jnp

    from scorefn import vi

    x, y = vi.examples.breast_cancer()
    guide = vi.mean_field(families={"w": _exp_normal((x.shape[1],)), "b": _exp_normal(())})
    model = vi.as_model(vi.examples.logistic_regression, (x, y))
    params = {"w": {"loc": jnp.asarray(lw), "log_scale": jnp.log(jnp.asarray(sw))},
              "b": {"loc": jnp.asarray(lb), "log_scale": jnp.log(jnp.asarray(sb))}}
    mc = jax.jit(jax.vmap(lambda k: vi.elbo(model, guide, params, k, 1)))(
        jax.random.split(jax.random.key(12345), 4000))
    return float(np.mean(np.asarray(mc)))


def pyro_mix_parts(baseline=True):
    import pyro
    import pyro.distributions as dist
    import torch
    from torch.distributions import constraints

    def model(x):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 10.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(x.shape[0])))
            pyro.sample("x", dist.Normal(mu[z.long()], 1.0), obs=x)

    def guide(x):
        ml = pyro.param("mu_loc", torch.tensor([-1.0, 1.0]))
        ms = pyro.param("mu_scale", 0.1 * torch.ones(2), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(ml, ms).to_event(1))
        logits = pyro.param("z_logits", torch.zeros(x.shape[0]))
        infer = {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}} if baseline else {}
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=logits), infer=infer)

    return model, guide


def pyro_mix(seed, steps=MIX_STEPS):
    import pyro
    import torch
    from pyro.infer import SVI, TraceGraph_ELBO
    from pyro.optim import Adam

    from scorefn import vi

    x_np, z_true = vi.examples.mixture_data()
    x = torch.tensor(np.asarray(x_np))
    model, guide = pyro_mix_parts()
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(model, guide, Adam({"lr": 0.01}), loss=TraceGraph_ELBO())
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        losses.append(svi.step(x))
    wall = time.perf_counter() - start
    ps = pyro.get_param_store()
    z_hat = ps["z_logits"].detach().numpy() > 0
    acc = max(np.mean(z_hat == z_true), np.mean(z_hat != z_true))
    return {"wall": wall, "ms_step": 1e3 * wall / steps, "elbo_last100": -float(np.mean(losses[-100:])),
            "mu": np.round(ps["mu_loc"].detach().numpy(), 3).tolist(), "z_acc": float(acc)}


def pyro_mix_variance(baseline=True, warmup=50, repeats=500):
    import pyro
    import torch
    from pyro.infer import TraceGraph_ELBO

    from scorefn import vi

    x = torch.tensor(np.asarray(vi.examples.mixture_data()[0]))
    model, guide = pyro_mix_parts(baseline)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    loss = TraceGraph_ELBO()
    grads = {"mu_loc": [], "z_logits": []}
    for i in range(warmup + repeats):
        loss.loss_and_grads(model, guide, x)
        ps = pyro.get_param_store()
        for name in ("mu_loc", "mu_scale", "z_logits"):
            p = ps.get_param(name).unconstrained()
            if i >= warmup and name in grads:
                grads[name].append(-p.grad.detach().numpy().copy())  # ascent direction
            p.grad = None
    return {k: float(np.mean(np.var(np.array(v), 0))) for k, v in grads.items()}


# ------------------------------------------------------------------ main
def nuts_reference():
    import jax
    from numpyro.infer import MCMC, NUTS

    from scorefn import vi

    mcmc = MCMC(NUTS(vi.examples.logistic_regression), num_warmup=1000, num_samples=2000,
                progress_bar=False)
    mcmc.run(jax.random.key(1), *vi.examples.breast_cancer())
    s = mcmc.get_samples()
    return np.asarray(s["w"].mean(0)), np.asarray(s["w"].std(0))


# ------------------------------------------------------------------ part 3: SVI
def svi_discrete_vae(loss_name, seed, steps=VAE_STEPS, chunk=50):
    """One run of the discrete VAE through numpyro's SVI with the named loss."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    import optax
    from numpyro.contrib.module import flax_module
    from numpyro.infer import SVI, TraceGraph_ELBO

    import scorefn
    from scorefn.vi import discrete_vae as dv

    scorefn.enable_compilation_cache()  # off (cold) unless the runner passes a cache folder
    vae = dv.DiscreteVAE(latents=32, hidden=0)
    train, test = dv.binarized_digits()

    def model(x):
        decoder = flax_module("decoder", vae.decoder, input_shape=(1, 32))
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Bernoulli(probs=0.5 * jnp.ones(32)).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        encoder = flax_module("encoder", vae.encoder, input_shape=(1, 64))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Bernoulli(logits=encoder(x)).to_event(1))

    if loss_name == "numpyro TraceGraph_ELBO":
        loss = TraceGraph_ELBO()
    else:
        estimator, k = SVI_LOSSES[loss_name]
        baselines = {"z": scorefn.baselines.ema(0.9)} if estimator == "score" else None
        loss = scorefn.vi.ELBO(num_particles=k, estimators={"z": estimator}, baselines=baselines)
        if baselines:
            guide = loss.with_baseline_state(guide)
    init = vae.init(jax.random.split(jax.random.key(seed), 4)[0])  # the peers' initial weights
    svi = SVI(model, guide, optax.adam(VAE_LR), loss=loss)
    batches = _vae_batches(train, seed, steps)
    tic = time.perf_counter()
    state = svi.init(jax.random.key(seed), batches[0], init_params={
        "encoder$params": init["encoder"]["params"], "decoder$params": init["decoder"]["params"]})
    jax.block_until_ready(state)
    init_s = time.perf_counter() - tic  # numpyro's SVI.init: eager, the same for every loss
    run_chunk = jax.jit(lambda st, xs: jax.lax.scan(svi.update, st, xs))
    losses, chunk_times, curve = [], [], []
    for start in range(0, steps, chunk):
        t0 = time.perf_counter()
        state, chunk_losses = run_chunk(state, jnp.asarray(batches[start:start + chunk]))
        losses.append(np.asarray(chunk_losses))
        chunk_times.append((time.perf_counter() - t0) / chunk)
        # (seconds since the start, ELBO per image over the last 100 steps)
        curve.append((time.perf_counter() - tic,
                      float(-np.mean(np.concatenate(losses)[-100:]) / VAE_BATCH)))
    wall = time.perf_counter() - tic
    params = svi.get_params(state)
    final = {"encoder": {"params": params["encoder$params"]},
             "decoder": {"params": params["decoder$params"]}}
    result = vae.evaluate(final, jax.random.fold_in(jax.random.key(seed), 7), test, 100)
    elbos = -np.concatenate(losses) / VAE_BATCH
    return {"train_elbo": float(np.mean(elbos[-100:])), "test_elbo": result["elbo"],
            "test_ll": result["log_likelihood"], "wall": wall, "curve": curve, "init_s": init_s,
            "us_per_step": statistics.median(chunk_times[1:]) * 1e6}


def seconds_to_reach(curve, target):
    """The first time the running ELBO reached ``target`` (inf if it never did)."""
    return next((t for t, elbo in curve if elbo >= target), math.inf)


def _vae_batches(train, seed, steps):
    """The same batches of VAE_BATCH images for every framework: (steps, B, 64)."""
    rng = np.random.default_rng(seed)
    return np.stack([train[rng.permutation(train.shape[0])[:VAE_BATCH]] for _ in range(steps)])


def pyro_discrete_vae(seed, steps=VAE_STEPS):
    """Pyro's TraceGraph_ELBO with its neural baseline, the same model, weights and batches."""
    import jax
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import discrete_vae as bench_dvae  # noqa: E402  (the peer code of benchmarks/discrete_vae.py)

    from scorefn.vi import discrete_vae as dv

    torch.set_num_threads(1)
    train, test = dv.binarized_digits()
    enc, dec = bench_dvae.torch_nets(0, seed)
    step, _ = bench_dvae.pyro_step(enc, dec)
    batches = torch.tensor(_vae_batches(train, seed, steps))
    elbos, times = [], []
    tic = time.perf_counter()
    for i in range(steps):
        t0 = time.perf_counter()
        elbos.append(step(batches[i]))
        times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - tic
    params = {"encoder": bench_dvae.as_flax(enc), "decoder": bench_dvae.as_flax(dec)}
    result = dv.DiscreteVAE(latents=32, hidden=0).evaluate(
        params, jax.random.fold_in(jax.random.key(seed), 7), test, 100)
    return {"train_elbo": float(np.mean(elbos[-100:])), "test_elbo": result["elbo"],
            "test_ll": result["log_likelihood"], "wall": wall,
            "us_per_step": statistics.median(times[50:]) * 1e6}


SVI_LOSSES = {  # name: (scorefn estimator, K)
    "scorefn score (EMA in mutable state), K=1": ("score", 1),
    "scorefn rloo, K=2": ("rloo", 2),
    "scorefn disarm, 1 pair": ("disarm", 1),
    "numpyro TraceGraph_ELBO": (None, 1),
}


def _print_vae(name, runs):
    med = statistics.median
    print(f"VAE {name:44s} ELBO {med(r['train_elbo'] for r in runs):7.2f} "
          f"test ELBO {med(r['test_elbo'] for r in runs):7.2f} "
          f"test LL {med(r['test_ll'] for r in runs):7.2f} "
          f"wall {med(r['wall'] for r in runs):6.1f}s "
          f"{med(r['us_per_step'] for r in runs):8.0f} µs/step (per seed ELBO: "
          + ", ".join(f"{r['train_elbo']:.2f}" for r in runs) + ")", flush=True)


def machine():
    versions = {p: importlib.metadata.version(p)
                for p in ("jax", "numpyro", "optax", "torch", "pyro-ppl")}
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; " + ", ".join(
        f"{k} {v}" for k, v in versions.items())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--part", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--skip-pyro", action="store_true")
    ap.add_argument("--worker", nargs="+")
    args = ap.parse_args()
    if args.worker:
        return run_worker(args.worker)
    print(machine(), flush=True)
    med = statistics.median
    if 1 in args.part:
        w_nuts, sd_nuts = nuts_reference()
        rows = []
        with tempfile.TemporaryDirectory() as cache:
            for name, (estimator, k, baseline) in SCOREFN_LR.items():
                runs, warm = [], []
                for seed in args.seeds:
                    runs.append(in_fresh_process(["lr", estimator, k, baseline, seed]))
                    in_fresh_process(["lr", estimator, k, baseline, seed], cache)  # fills it
                    warm.append(in_fresh_process(["lr", estimator, k, baseline, seed], cache)["wall"])
                rows.append(("scorefn " + name, runs, warm))
                _print_lr(rows[-1], w_nuts, sd_nuts)
        if not args.skip_pyro:
            pyro_setup()
            for variant in PYRO_LR:
                runs = [pyro_lr(variant, seed) for seed in args.seeds]
                rows.append(("Pyro " + variant, runs, None))
                _print_lr(rows[-1], w_nuts, sd_nuts)
            base = med(r["wall"] for r in dict((n, r) for n, r, _ in rows)["Pyro trace"])
            for name, runs, warm in rows:
                if warm is not None:
                    print(f"LR ratio Pyro Trace_ELBO wall / {name}: cold "
                          f"{base / med(r['wall'] for r in runs):.1f}x, warm {base / med(warm):.1f}x")
    if 2 in args.part:
        for estimator, k in (("mixed", 1), ("score", 1), ("mixed", 4)):
            runs = [in_fresh_process(["mix", estimator, k, s]) for s in args.seeds]
            _print_mix(f"scorefn {estimator} K={k} + " + ("EMA 0.9" if k == 1 else "LOO"), runs)
        variance = {f"scorefn {e}, K=1 + EMA": scorefn_mix_variance(e)
                    for e in ("mixed", "score_rb", "score")}
        variance["scorefn mixed, K=4 + EMA"] = scorefn_mix_variance("mixed", 4)
        variance["scorefn mixed, K=4 + LOO"] = scorefn_mix_variance("mixed", 4, "leave-one-out")
        if not args.skip_pyro:
            pyro_setup()
            runs = [pyro_mix(s) for s in args.seeds]
            _print_mix("Pyro TraceGraph_ELBO", runs)
            variance["Pyro TraceGraph_ELBO, K=1 + decaying avg"] = pyro_mix_variance()
            variance["Pyro TraceGraph_ELBO, K=1, no baseline (its default)"] = pyro_mix_variance(
                baseline=False)
        for name, var in variance.items():
            print(f"MIX grad variance at init θ ({name}): mean over mu_loc {var['mu_loc']:.3g}, "
                  f"over z_logits {var['z_logits']:.3g}", flush=True)
    if 3 in args.part:
        # Cold runs only: the losses' run-time finiteness check is a host callback, and jax's
        # persistent cache does not keep programs with one (a warm run measured 4.9 s
        # against 5.7 s cold for the EMA row).
        svi_runs = {}
        for name in SVI_LOSSES:
            svi_runs[name] = [in_fresh_process(["vae", name, seed]) for seed in args.seeds]
            _print_vae(name, svi_runs[name])
        if not args.skip_pyro:
            runs = [pyro_discrete_vae(s) for s in args.seeds]
            _print_vae("Pyro TraceGraph_ELBO (nn + decaying avg)", runs)
            pyro_wall = med(r["wall"] for r in runs)
            target = med(r["train_elbo"] for r in runs)
            for name, ours in svi_runs.items():
                reach = med(seconds_to_reach(r["curve"], target) for r in ours)
                after_init = med(seconds_to_reach(r["curve"], target) - r["init_s"] for r in ours)
                print(f"VAE {name}: Pyro's wall / ours {pyro_wall / med(r['wall'] for r in ours):.1f}x"
                      f"; seconds to Pyro's final ELBO {target:.2f}: {reach:.1f} (Pyro: "
                      f"{pyro_wall:.1f}, ratio {pyro_wall / reach:.1f}x); of which numpyro's "
                      f"SVI.init {med(r['init_s'] for r in ours):.1f}, after it {after_init:.1f} "
                      f"({pyro_wall / after_init:.1f}x)", flush=True)


def _print_lr(row, w_nuts, sd_nuts):
    name, runs, warm = row
    med = statistics.median
    err = [float(np.max(np.abs(np.asarray(r["w"]) - w_nuts) / sd_nuts)) for r in runs]
    warm_text = f" warm {med(warm):.2f}s" if warm else ""
    print(f"LR {name:28s} wall {med(r['wall'] for r in runs):.2f}s{warm_text} "
          f"ELBO(last100) {med(r['elbo_last100'] for r in runs):.2f} "
          f"ELBO(MC) {med(r['elbo_mc'] for r in runs):.2f} "
          f"max|Δw|/sd vs NUTS {med(err):.2f} (per seed: "
          + ", ".join(f"{r['wall']:.2f}s/{r['elbo_mc']:.2f}" for r in runs) + ")", flush=True)


def _print_mix(name, runs):
    med = statistics.median
    print(f"MIX {name:28s} ms/step {med(r['ms_step'] for r in runs):.2f} "
          f"ELBO(last100) {med(r['elbo_last100'] for r in runs):.1f} mu {runs[0]['mu']} "
          f"z_acc {med(r['z_acc'] for r in runs):.3f}", flush=True)


if __name__ == "__main__":
    main()
