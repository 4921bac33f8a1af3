"""The contract of an RL algorithm, and the one registry of the algorithms ``train`` knows.

An algorithm is a module, readable top to bottom as in PureJaxRL and CleanRL, that defines:

- ``Config``: a frozen dataclass that subclasses ``scorefn.rl.networks.NetworkConfig`` (the
  policy and value networks), with ``num_envs`` and ``num_steps`` (the rollout window per
  update; unused when ``episodic``) and its own hyperparameters, each documented where it
  is declared. ``scorefn.rl.defaults`` holds the per-environment values.
- ``State``: a NamedTuple whose field ``params`` is ``{"policy": ..., "value": ...}``, as
  ``ActorCritic.init`` returns them (evaluation and checkpoints read the policy there); the
  rest is the algorithm's own (optimiser states, baselines).
- ``episodic``: True when an update needs whole episodes from fresh starts (REINFORCE's
  unbiased reward-to-go), False when it takes windows of ``num_steps`` that bootstrap.
- ``init(key, policy, env, config) -> State``.
- ``update(state, batch, key, policy, config) -> (State, metrics)``: one update from a
  ``scorefn.rl.rollout.Transition`` of shape (num_steps, num_envs); ``metrics`` is a dict of
  scalars (``env_steps`` when the update counts steps otherwise than the batch's size).
  Pure JAX: ``train`` compiles it, on gymnax together with the rollout, and vmaps it over
  seeds.

``register`` checks a module against this contract and adds it, so ``train("MyAlgo", ...)``
and ``scorefn rl train --algo`` then run it with every feature of the built-in ones
(checkpoints, evaluation, several seeds).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

from scorefn.rl import a2c, ppo, reinforce, trpo
from scorefn.rl.networks import NetworkConfig


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """A registered algorithm: its module, and Config values that set it apart from another
    entry of the same module (NPG is TRPO without the line search)."""

    name: str
    module: types.ModuleType
    config_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def episodic(self) -> bool:
        return bool(self.module.episodic)


def check_contract(module: types.ModuleType) -> None:
    """TypeError naming what ``module`` lacks of the contract (see the module docstring)."""
    missing = [name for name in ("Config", "State", "episodic", "init", "update")
               if not hasattr(module, name)]
    if missing:
        raise TypeError(f"{module.__name__} is not an RL algorithm: it has no {', '.join(missing)} "
                        "(see scorefn.rl.registry)")
    config = module.Config
    if not (dataclasses.is_dataclass(config) and issubclass(config, NetworkConfig)):
        raise TypeError(f"{module.__name__}.Config must be a dataclass that subclasses "
                        "scorefn.rl.networks.NetworkConfig")
    fields = {f.name for f in dataclasses.fields(config)}
    if not {"num_envs", "num_steps"} <= fields:
        raise TypeError(f"{module.__name__}.Config needs the fields num_envs and num_steps; "
                        f"it has {sorted(fields)}")
    if "params" not in getattr(module.State, "_fields", ()):
        raise TypeError(f"{module.__name__}.State must be a NamedTuple with a field 'params' "
                        "({'policy': ..., 'value': ...})")
    if not isinstance(module.episodic, bool):
        raise TypeError(f"{module.__name__}.episodic must be True or False")
    for name in ("init", "update"):
        if not callable(getattr(module, name)):
            raise TypeError(f"{module.__name__}.{name} must be a function")


_REGISTRY: dict[str, Algorithm] = {}


def register(name: str, module: types.ModuleType, **config_overrides: Any) -> Algorithm:
    """Add ``module`` to the algorithms ``train`` runs under ``name``, after checking it
    against the contract. ``config_overrides`` are Config values this name implies."""
    check_contract(module)
    unknown = sorted(set(config_overrides) - {f.name for f in dataclasses.fields(module.Config)})
    if unknown:
        raise ValueError(f"config_overrides {unknown} are not fields of {module.__name__}.Config")
    if name in _REGISTRY and _REGISTRY[name].module is not module:
        raise ValueError(f"an algorithm named {name!r} is already registered "
                         f"({_REGISTRY[name].module.__name__})")
    _REGISTRY[name] = Algorithm(name, module, dict(config_overrides))
    return _REGISTRY[name]


def algorithm(name: str) -> Algorithm:
    """The registered algorithm ``name``; a ValueError lists the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def algorithms() -> tuple[str, ...]:
    """The names of the registered algorithms, built-in ones first."""
    return tuple(_REGISTRY)


register("reinforce", reinforce)
register("a2c", a2c)
register("ppo", ppo)
register("trpo", trpo)
register("npg", trpo, line_search=False)
