"""Forward-error bounds from the precision a backend really multiplies at
(``scorefn.numerics.matmul_epsilon``), for tests that compare two computations of the same
quantity made by different compiled programs (on a GPU one may use TF32, the other not)."""

from __future__ import annotations

from typing import Any

import numpy as np

from scorefn.numerics import matmul_epsilon

EPS32 = float(np.finfo(np.float32).eps)


def tanh_mlp_error_bound(net_params: Any, x: Any) -> np.ndarray:
    """A componentwise bound on |computed - exact| of ``rl.networks.MLP`` (Dense layers with
    tanh between them) at inputs ``x``, in float64.

    Per Dense layer y = xW + b: the inputs' error carried through |W|, plus rounding the
    inputs of the product (2ε + ε²)|x||W|, plus float32 accumulation over the k terms and
    the bias k·eps32 (|x||W| + |b|); tanh adds no error (1-Lipschitz) but its own rounding.
    """
    eps = matmul_epsilon()
    layers = net_params["params"]
    names = sorted(layers, key=lambda n: int(n.rsplit("_", 1)[1]))
    x = np.asarray(x, np.float64)
    err = np.zeros_like(x)
    for i, name in enumerate(names):
        w = np.abs(np.asarray(layers[name]["kernel"], np.float64))
        b = np.asarray(layers[name]["bias"], np.float64)
        magnitude = np.abs(x) @ w
        k = w.shape[0]
        err = err @ w + (2 * eps + eps**2) * magnitude + k * EPS32 * (magnitude + np.abs(b))
        x = x @ np.asarray(layers[name]["kernel"], np.float64) + b
        if i < len(names) - 1:
            x = np.tanh(x)
            err = err + EPS32 * np.abs(x)
    return err
