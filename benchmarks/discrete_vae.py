"""Discrete-VAE benchmark: scorefn's discrete estimators against Storchastic, Pyro's
TraceGraph_ELBO and hand-written PyTorch, on the same model and data, in one run.

The model is :mod:`scorefn.vi.discrete_vae`: 32 Bernoulli latents with a uniform prior, a
linear encoder and decoder (``--hidden 0``) or one tanh hidden layer of 128 units, on
scikit-learn's bundled 8×8 digits binarised at half the pixel range (1,500 train, 297 test
images, a fixed split). The objective is the sampled ELBO per image,
log p(x | z) + log p(z) - log q(z | x), z ~ q(z | x); Adam 1e-3, batches of 100, the same
number of steps for everyone. Rows (each scorefn row against its counterpart):

- REINFORCE with a moving-average baseline (β = 0.9), K = 1: scorefn ``"score"`` with an
  EMA baseline; Storchastic ``ScoreFunction(baseline_factory="moving_average")``; Pyro
  ``TraceGraph_ELBO`` with its neural baseline (a linear net of x) plus its decaying
  average.
- RLOO, K = 2 and K = 4: scorefn ``"rloo"``; Storchastic ``ScoreFunction(n_samples=K,
  baseline_factory="batch_average")`` (its leave-one-out baseline).
- ARM and DisARM, one antithetic pair (two evaluations) per step: scorefn ``"arm"`` and
  ``"disarm"``; Storchastic ``ARM(n_samples=1)``. Storchastic's DisARM fails on torch 2.13
  (the error is printed), so its peer is a hand-written PyTorch DisARM with the paper's
  formula; a hand-written ARM is timed too, as the floor of a framework-free torch step.
- REBAR, K = 1: scorefn ``"rebar"`` per site, η = 1 and τ = 0.5 fixed (three runs of the
  program: the hard sample and two relaxed ones); Storchastic ``REBAR``, which also learns
  η and τ by the variance objective.
- Gumbel-softmax (τ = 0.5, biased), K = 1: scorefn ``"gumbel_softmax"``; Storchastic
  ``GumbelSoftmax``. Straight-through (biased): scorefn only.

Reported per row, median over seeds: the final training ELBO (mean of the last 100 steps),
the test ELBO and the importance-sampled test log-likelihood (S = 100; every framework's
final parameters are evaluated by the same JAX code), µs per step after compilation
(median over chunks of steps), and the encoder's gradient variance (mean over its
parameters of the variance of 64 estimates on the first 100 training images, for the
gradient of the batch's summed ELBO) at the start, middle and end of training, for every
framework. Every estimate starts from a copy of the estimator's state (moving averages,
Pyro's baselines), as scorefn's do, so the measurement does not change the training.
torch runs with 1 thread (as in ../shared/peers); JAX uses the machine's 2 cores.

    pip install ".[bench]"
    python benchmarks/discrete_vae.py                        # about 15 minutes
    python benchmarks/discrete_vae.py --steps 300 --seeds 0  # a quick look
    python benchmarks/discrete_vae.py --markdown table.md --plot variance.png
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import statistics
import sys
import time

import jax
import numpy as np

from scorefn.vi import discrete_vae as dv

BATCH, LR, TAU, EMA = 100, 1e-3, 0.5, 0.9
ROWS = [  # name, scorefn estimator, K, peer
    ("REINFORCE + EMA baseline, K=1", "score", 1, "storch_score"),
    ("REINFORCE + EMA baseline, K=1 (Pyro)", None, 1, "pyro_tracegraph"),
    ("RLOO, K=2", "rloo", 2, "storch_rloo"),
    ("RLOO, K=4", "rloo", 4, "storch_rloo4"),
    ("ARM, 1 pair", "arm", 1, "storch_arm"),
    ("ARM, 1 pair (hand-written torch)", None, 1, "torch_arm"),
    ("DisARM, 1 pair", "disarm", 1, "torch_disarm"),
    ("REBAR (η = 1, τ = 0.5), K=1", "rebar", 1, "storch_rebar"),
    ("Gumbel-softmax (biased), K=1", "gumbel_softmax", 1, "storch_gumbel"),
    ("straight-through (biased), K=1", "straight_through", 1, None),
]
PEER_NAMES = {"storch_score": "Storchastic ScoreFunction(moving_average)",
              "pyro_tracegraph": "Pyro TraceGraph_ELBO (nn + decaying avg baseline)",
              "storch_rloo": "Storchastic ScoreFunction(batch_average, n=2)",
              "storch_rloo4": "Storchastic ScoreFunction(batch_average, n=4)",
              "storch_arm": "Storchastic ARM",
              "torch_arm": "hand-written PyTorch ARM",
              "torch_disarm": "hand-written PyTorch DisARM (Storchastic's fails)",
              "storch_rebar": "Storchastic REBAR (η, τ learned)",
              "storch_gumbel": "Storchastic GumbelSoftmax"}


# ------------------------------------------------------------------ scorefn
def run_scorefn(estimator, k, hidden, seed, steps, data):
    model = dv.DiscreteVAE(latents=32, hidden=hidden)
    result = dv.fit(model, data, jax.random.key(seed), estimator=estimator, num_particles=k,
                    steps=steps, batch_size=BATCH, learning_rate=LR, temperature=TAU,
                    ema_decay=EMA)
    return {"train_elbo": result.final_elbo, "test_elbo": result.test["elbo"],
            "test_ll": result.test["log_likelihood"], "us_per_step": result.us_per_step,
            "variance": result.gradient_variance}


# ------------------------------------------------------------------ PyTorch peers
def torch_nets(hidden, seed):
    """The encoder and decoder in torch, starting from the same weights as scorefn's fit
    with this seed (flax's initialisation): the rows then differ by the estimator only."""
    import torch

    torch.manual_seed(seed)
    init = dv.DiscreteVAE(latents=32, hidden=hidden).init(jax.random.split(jax.random.key(seed), 4)[0])

    def net(n_in, n_out, variables):
        sizes = [n_in, hidden, n_out] if hidden else [n_in, n_out]
        layers = []
        for i in range(len(sizes) - 1):
            linear = torch.nn.Linear(sizes[i], sizes[i + 1])
            dense = variables["params"][f"Dense_{i}"]
            with torch.no_grad():
                linear.weight.copy_(torch.tensor(np.asarray(dense["kernel"]).T))
                linear.bias.copy_(torch.tensor(np.asarray(dense["bias"])))
            layers += [linear, torch.nn.Tanh()]
        return torch.nn.Sequential(*layers[:-1])

    return net(64, 32, init["encoder"]), net(32, 64, init["decoder"])


def as_flax(net):
    """A torch Sequential of Linear layers as the flax variables of dv's networks."""
    import torch

    layers = [m for m in net if isinstance(m, torch.nn.Linear)]
    return {"params": {f"Dense_{i}": {"kernel": m.weight.detach().numpy().T.copy(),
                                      "bias": m.bias.detach().numpy().copy()}
                       for i, m in enumerate(layers)}}


def elbo_terms(enc, dec, x, z, logits):
    """log p(x | z) + log p(z) - log q(z | x) per image (torch, any leading dims)."""
    from torch.distributions import Bernoulli

    return (Bernoulli(logits=dec(z)).log_prob(x).sum(-1) + 32 * np.log(0.5)
            - Bernoulli(logits=logits).log_prob(z).sum(-1))


def run_torch(peer, hidden, seed, steps, data):
    import torch

    torch.set_num_threads(1)
    sys.setrecursionlimit(100000)  # Storchastic's graph walk recurses deeply
    enc, dec = torch_nets(hidden, seed)
    parameters = list(enc.parameters()) + list(dec.parameters())
    train = torch.tensor(data[0])
    generator = torch.Generator().manual_seed(seed)
    step = storch_step if peer.startswith("storch") else antithetic_step
    pyro_grad = None
    if peer == "pyro_tracegraph":
        step, pyro_grad = pyro_step(enc, dec)
        parameters = []
    method = storch_method(peer) if peer.startswith("storch") else None
    if method is not None:
        parameters += list(method.parameters())
    optimizer = torch.optim.Adam(parameters, LR) if peer != "pyro_tracegraph" else None
    fixed = train[:BATCH]
    variance_at, variances = sorted({0, steps // 2, steps}), {}
    elbos, chunk_times = [], []
    tic = time.perf_counter()
    for i in range(steps + 1):
        if i in variance_at:
            measured = time.perf_counter()
            variances[i] = torch_gradient_variance(peer, method, enc, dec, fixed, pyro_grad)
            tic += time.perf_counter() - measured  # not part of the step timings
        if i == steps:
            break
        x = train[torch.randperm(train.shape[0], generator=generator)[:BATCH]]
        if optimizer is not None:
            optimizer.zero_grad()
            elbos.append(step(peer, method, enc, dec, x))
            optimizer.step()
        else:
            elbos.append(step(x))
        if (i + 1) % 50 == 0:
            chunk_times.append((time.perf_counter() - tic) / 50)
            tic = time.perf_counter()
    model = dv.DiscreteVAE(latents=32, hidden=hidden)
    params = {"encoder": as_flax(enc), "decoder": as_flax(dec)}
    k_eval = jax.random.split(jax.random.key(seed), 4)[3]
    test = model.evaluate(params, jax.random.fold_in(k_eval, 1), data[1], 100)
    return {"train_elbo": float(np.mean(elbos[-100:])), "test_elbo": test["elbo"],
            "test_ll": test["log_likelihood"], "variance": variances,
            "us_per_step": statistics.median(chunk_times[1:] or chunk_times) * 1e6}


def torch_gradient_variance(peer, method, enc, dec, x, pyro_grad, repeats=64):
    """The mean over the encoder's parameters of the variance of ``repeats`` gradient
    estimates of the batch's summed ELBO (scorefn's convention: Storchastic averages over
    the batch, so its gradients are scaled by the batch size), each from a copy of the
    estimator's state, so that measuring does not change it."""
    import copy

    import pyro
    import torch

    scale = x.shape[0] if peer.startswith("storch") else 1.0
    store = pyro.get_param_store().get_state() if pyro_grad is not None else None
    estimates = []
    for _ in range(repeats):
        for p in list(enc.parameters()) + list(dec.parameters()):
            p.grad = None
        # every estimate from the same baseline state, as scorefn's (a moving average
        # would otherwise warm up during the measurement)
        if pyro_grad is not None:
            pyro.get_param_store().set_state(copy.deepcopy(store))
            pyro_grad(x)
        elif peer.startswith("storch"):
            storch_step(peer, copy.deepcopy(method), enc, dec, x)
        else:
            antithetic_step(peer, method, enc, dec, x)
        estimates.append(scale * torch.cat([p.grad.flatten() for p in enc.parameters()]))
    for p in list(enc.parameters()) + list(dec.parameters()):
        p.grad = None
    if store is not None:
        pyro.get_param_store().set_state(store)
    return float(torch.stack(estimates).var(0, unbiased=True).mean())


def storch_method(peer):
    import storch.method as sm

    if peer == "storch_score":
        return sm.ScoreFunction("z", n_samples=1, baseline_factory="moving_average",
                                exponential_decay=EMA)
    if peer in ("storch_rloo", "storch_rloo4"):
        return sm.ScoreFunction("z", n_samples=2 if peer == "storch_rloo" else 4,
                                baseline_factory="batch_average")
    if peer == "storch_arm":
        return sm.ARM("z", n_samples=1)
    if peer == "storch_rebar":
        return sm.REBAR("z", n_samples=1)
    return sm.GumbelSoftmax("z", n_samples=1, initial_temperature=TAU)


def storch_step(peer, method, enc, dec, x):
    import storch
    from torch.distributions import Bernoulli

    storch.reset()
    x = storch.denote_independent(x, 0, "data")
    logits = enc(x)
    z = method(Bernoulli(logits=logits))
    cost = -elbo_terms(enc, dec, x, z, logits)
    storch.add_cost(cost, "negative_elbo")
    storch.backward()  # its return value is the surrogate loss, not the ELBO (ARM's differs)
    return -float(cost._tensor.detach().mean())


def antithetic_step(peer, method, enc, dec, x):
    """One pair per image: ARM (Yin & Zhou 2019) or DisARM (Dong et al. 2020) for the
    sampling path of the encoder's logits φ, autodiff for the direct paths at the first
    sample, as scorefn's program does.
    ARM:    b = 1[u > σ(-φ)], b̃ = 1[u < σ(φ)],    ĝ = (f(b) - f(b̃)) (u - 1/2)
    DisARM: b = 1[u < σ(φ)],  b̃ = 1[1 - u < σ(φ)], ĝ = ½ (f(b) - f(b̃)) (-1)^b̃ 1[b ≠ b̃] σ(|φ|)
    """
    import torch

    logits = enc(x)
    phi = logits.detach()
    u = torch.rand_like(phi)
    if peer == "torch_arm":
        b, b2 = (u > torch.sigmoid(-phi)).float(), (u < torch.sigmoid(phi)).float()
    else:
        b, b2 = (u < torch.sigmoid(phi)).float(), (1 - u < torch.sigmoid(phi)).float()
    f_b = elbo_terms(enc, dec, x, b, logits)
    with torch.no_grad():
        diff = (f_b - elbo_terms(enc, dec, x, b2, phi))[:, None]
        if peer == "torch_arm":
            weight = diff * (u - 0.5)
        else:
            weight = 0.5 * diff * (1 - 2 * b2) * (b != b2).float() * torch.sigmoid(phi.abs())
    (-(f_b.sum() + (weight * logits).sum())).backward()
    return float(f_b.mean())


def pyro_step(enc, dec):
    import pyro
    import pyro.distributions as pdist
    import torch
    from pyro.infer import SVI, TraceGraph_ELBO

    pyro.clear_param_store()
    baseline_net = torch.nn.Sequential(torch.nn.Linear(64, 1), torch.nn.Flatten(0))  # (B,)

    def model(x):
        pyro.module("decoder", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pdist.Bernoulli(0.5 * torch.ones(x.shape[0], 32)).to_event(1))
            pyro.sample("x", pdist.Bernoulli(logits=dec(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", enc)
        pyro.module("baseline", baseline_net)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pdist.Bernoulli(logits=enc(x)).to_event(1),
                        infer={"baseline": {"nn_baseline": baseline_net, "nn_baseline_input": x,
                                            "use_decaying_avg_baseline": True,
                                            "baseline_beta": EMA}})

    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), TraceGraph_ELBO())
    # the step, and the gradient alone (into the parameters' .grad) for the variance
    return (lambda x: -svi.step(x) / x.shape[0]), (
        lambda x: TraceGraph_ELBO().loss_and_grads(model, guide, x))


def storchastic_failures():
    """The error of Storchastic's own DisARM on this model (why a hand-written one stands
    in)."""
    import storch
    import storch.method as sm
    import torch
    from torch.distributions import Bernoulli

    sys.setrecursionlimit(100000)
    enc, dec = torch_nets(0, 0)
    x = torch.tensor(dv.binarized_digits()[0][:BATCH])
    out = {}
    for name, make in (("DisARM", lambda: sm.DisARM("z", n_samples=1)),):
        try:
            storch.reset()
            xs = storch.denote_independent(x, 0, "data")
            logits = enc(xs)
            z = make()(Bernoulli(logits=logits))
            storch.add_cost(-elbo_terms(enc, dec, xs, z, logits), "negative_elbo")
            storch.backward()
            out[name] = "runs"
        except Exception as error:  # noqa: BLE001 - reported, not hidden
            out[name] = f"{type(error).__name__}: {str(error)[:100]}"
    return out


# ------------------------------------------------------------------ report
def summarise(runs):
    keys = ("train_elbo", "test_elbo", "test_ll", "us_per_step")
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--hidden", default="0,128", help="hidden units per model (0: linear)")
    parser.add_argument("--peer-hidden", default="0", help="models the peers also run")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--json", default=None, help="write every run's numbers here")
    parser.add_argument("--plot", default=None, help="gradient-variance PNG")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    data = dv.binarized_digits()
    results, lines = {}, []
    for hidden in (int(h) for h in args.hidden.split(",")):
        peers_here = not args.skip_torch and str(hidden) in args.peer_hidden.split(",")
        for name, estimator, k, peer in ROWS:
            row = {}
            if estimator is not None:
                runs = [run_scorefn(estimator, k, hidden, s, args.steps, data) for s in seeds]
                row["scorefn"] = {**summarise(runs), "variance": {
                    step: statistics.median(r["variance"][step] for r in runs)
                    for step in runs[0]["variance"]}, "runs": runs}
            if peer is not None and peers_here:
                runs = [run_torch(peer, hidden, s, args.steps, data) for s in seeds]
                row["peer"] = {**summarise(runs), "name": PEER_NAMES[peer], "runs": runs,
                               "variance": {step: statistics.median(r["variance"][step]
                                                                    for r in runs)
                                            for step in runs[0]["variance"]}}
            results[(hidden, name)] = row
            print(f"hidden={hidden:3d} {name:38s} " + "  ".join(
                f"{who}: ELBO {r['train_elbo']:7.2f} test {r['test_elbo']:7.2f} "
                f"LL {r['test_ll']:7.2f} {r['us_per_step']:9.0f} µs"
                for who, r in row.items()), flush=True)
    failures = {} if args.skip_torch else storchastic_failures()

    versions = {p: _version(p) for p in ("jax", "numpyro", "optax", "flax", "torch",
                                          "storchastic", "pyro-ppl")}
    lines.append(f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
                 f"Python {platform.python_version()}; " +
                 ", ".join(f"{p} {v}" for p, v in versions.items()))
    lines.append(f"Steps {args.steps}, batch {BATCH}, Adam {LR}, seeds {seeds}; medians over "
                 "seeds. ELBO and log-likelihood in nats per image; variance: the mean over "
                 "the encoder's parameters of the variance of 64 gradient estimates.")
    lines.append("")
    lines.append("| model | estimator | framework | train ELBO | test ELBO | test log-lik. (S=100) "
                 "| µs/step | speed-up | encoder grad. variance (start / middle / end) |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for (hidden, name), row in results.items():
        model = "linear" if hidden == 0 else f"{hidden} tanh"
        ours, peer = row.get("scorefn"), row.get("peer")
        if ours:
            var = " / ".join(f"{ours['variance'][s]:.3g}" for s in sorted(ours["variance"]))
            speed = f"{peer['us_per_step'] / ours['us_per_step']:.1f}x" if peer else "–"
            lines.append(f"| {model} | {name} | scorefn | {ours['train_elbo']:.2f} | "
                         f"{ours['test_elbo']:.2f} | {ours['test_ll']:.2f} | "
                         f"{ours['us_per_step']:,.0f} | {speed} | {var} |")
        if peer:
            var = " / ".join(f"{peer['variance'][s]:.3g}" for s in sorted(peer["variance"]))
            lines.append(f"| {model} | {name} | {peer['name']} | {peer['train_elbo']:.2f} | "
                         f"{peer['test_elbo']:.2f} | {peer['test_ll']:.2f} | "
                         f"{peer['us_per_step']:,.0f} | | {var} |")
    if failures:
        lines.append("")
        lines.append("Storchastic's own estimators on this model: " + "; ".join(
            f"{k}: {v}" for k, v in failures.items()))
    text = "\n".join(lines)
    print()
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({f"{h}|{n}": row for (h, n), row in results.items()}, fh, indent=1,
                      default=float)
    if args.plot:
        plot_variance(results, args.plot)


def plot_variance(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hiddens = sorted({h for h, _ in results})
    fig, axes = plt.subplots(1, len(hiddens), figsize=(5.5 * len(hiddens), 4), squeeze=False)
    for ax, hidden in zip(axes[0], hiddens):
        for (h, name), row in results.items():
            if h != hidden or "scorefn" not in row:
                continue
            var = row["scorefn"]["variance"]
            steps = sorted(var)
            ax.plot(steps, [var[s] for s in steps], "o-", label=name)
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("encoder gradient variance (mean over parameters)")
        ax.set_title("linear" if hidden == 0 else f"{hidden} tanh hidden units")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


if __name__ == "__main__":
    main()
