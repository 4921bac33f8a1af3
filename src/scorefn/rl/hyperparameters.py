"""The admissible values of the algorithms' hyperparameters, by name.

A name means one thing in every algorithm's ``Config`` (``gamma`` is the discount wherever
it appears), so its range is declared once, here, and ``NetworkConfig.__post_init__`` checks
every field of a Config that this table names, a registered algorithm's too. A value out of
range is a ValueError naming the field, before anything is compiled: an out-of-range value
would otherwise train without a word (a negative learning rate ascends the loss, γ > 1 or
λ > 1 weights the future up) or fail late (``num_envs=0`` divides by zero, λ = 2 turns the
losses NaN). Fields the table does not name are the Config's own to check.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

from scorefn.validation import check_int, check_real


class Range(NamedTuple):
    """An int of at least ``low`` (``integer``), or a finite number between ``low`` and
    ``high``, an end included unless it is open; ``optional``: None is admitted too (the
    feature off)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    optional: bool = False


POSITIVE = Range(0.0, low_open=True)
COUNT = Range(1, integer=True)
UNIT = Range(0.0, 1.0)  # [0, 1]
DECAY = Range(0.0, 1.0, high_open=True)  # [0, 1)

RANGES: dict[str, Range] = {
    "num_envs": COUNT,
    "num_steps": Range(0, integer=True),  # an actor-critic's Config asks for >= 1 (episodic: 0)
    "num_epochs": COUNT,
    "minibatch_size": COUNT,
    "value_epochs": COUNT,
    "value_minibatch_size": COUNT,
    "cg_iterations": COUNT,
    "backtracks": COUNT,
    "total_updates": Range(0, integer=True),
    "learning_rate": POSITIVE,
    "value_learning_rate": POSITIVE,
    "gamma": UNIT,
    "gae_lambda": UNIT,
    "clip_eps": POSITIVE,
    "clip_value": POSITIVE._replace(optional=True),
    "target_kl": POSITIVE._replace(optional=True),
    "max_kl": POSITIVE,
    "max_grad_norm": POSITIVE,
    "value_coef": Range(0.0),
    "entropy_coef": Range(),
    "cg_damping": Range(0.0),
    "rms_decay": DECAY,
    "rms_eps": POSITIVE,
    "ema_decay": DECAY,
    "log_std_init": Range(),
}


def _layer_widths(value: Any) -> bool:
    return isinstance(value, tuple | list) and all(
        isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in value)


def check(config: Any) -> None:
    """ValueError naming the first field of the dataclass ``config`` outside its ``RANGES``
    entry; the layer widths (``hidden``, and ``value_hidden`` unless None) must be positive
    ints."""
    hidden = getattr(config, "hidden", ())
    if not _layer_widths(hidden):
        raise ValueError(f"hidden must be a list of positive layer widths, e.g. [64, 64]; "
                         f"got {hidden!r}")
    value_hidden = getattr(config, "value_hidden", None)
    if value_hidden is not None and not _layer_widths(value_hidden):
        raise ValueError("value_hidden must be None (the policy's layers) or a list of "
                         f"positive layer widths, e.g. [256, 256]; got {value_hidden!r}")
    for field in dataclasses.fields(config):
        allowed = RANGES.get(field.name)
        value = getattr(config, field.name)
        if allowed is None or (allowed.optional and value is None):
            continue
        try:
            if allowed.integer:
                check_int(value, field.name, int(allowed.low))
            else:
                check_real(value, field.name, allowed.low, allowed.high,
                           low_open=allowed.low_open, high_open=allowed.high_open)
        except ValueError as error:
            if not allowed.optional:
                raise
            raise ValueError(str(error).replace(" must be ", " must be None or ", 1)) from None
