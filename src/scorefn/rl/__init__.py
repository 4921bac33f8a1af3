r"""Policy-gradient reinforcement learning on the scorefn core.

$$
J(\theta) = \mathbb{E}_{\tau \sim p_\theta}[R(\tau)], \qquad \nabla_\theta J = \mathbb{E}\left[R(\tau)\,
  \nabla_\theta \log p_\theta(\tau)\right], \qquad \nabla_\theta \log p_\theta(\tau) = \sum_t \nabla_\theta
  \log \pi_\theta(a_t \mid s_t)
$$

Algorithms, one module each: ``scorefn.rl.reinforce``, ``scorefn.rl.a2c``,
``scorefn.rl.ppo``, ``scorefn.rl.trpo`` (TRPO, and NPG with ``algo="npg"``), each following
the contract of ``scorefn.rl.registry`` and registered there (``register`` adds one of
yours). Their
policy gradients all go through ``scorefn.score_grad``
(``scorefn.rl.policy_gradient.policy_gradient``); TRPO/NPG use the core's
Fisher-vector products and conjugate gradient.
"""

import importlib.metadata

try:
    import flax  # noqa: F401
    import gymnasium  # noqa: F401
    import gymnax  # noqa: F401
except ImportError as error:  # pragma: no cover - the extra is part of the test install
    raise ImportError(f"scorefn.rl needs the rl extra: pip install 'scorefn[rl]' ({error})") from error


from scorefn.rl import a2c, defaults, envs, ppo, reinforce, returns, trpo  # noqa: E402
from scorefn.rl.defaults import make_config  # noqa: E402
from scorefn.rl.envs import (  # noqa: E402
    THRESHOLDS,
    check_gymnax_version,
    known_envs,
    make,
    resolve_backend,
)
from scorefn.rl.networks import ActorCritic  # noqa: E402
from scorefn.rl.policy_gradient import policy_gradient  # noqa: E402
from scorefn.rl.registry import Algorithm, algorithm, algorithms, register  # noqa: E402
from scorefn.rl.training import (  # noqa: E402
    TrainResult,
    best_checkpoint_path,
    evaluate,
    load_checkpoint,
    train,
)
from scorefn.rl.video import record_video  # noqa: E402

check_gymnax_version(importlib.metadata.version("gymnax"))

#: The built-in algorithms; ``algorithms()`` also lists those added with ``register``.
ALGORITHMS = algorithms()

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "THRESHOLDS",
    "ActorCritic",
    "TrainResult",
    "a2c",
    "algorithm",
    "algorithms",
    "best_checkpoint_path",
    "defaults",
    "envs",
    "evaluate",
    "known_envs",
    "load_checkpoint",
    "make",
    "make_config",
    "record_video",
    "policy_gradient",
    "ppo",
    "register",
    "reinforce",
    "resolve_backend",
    "returns",
    "train",
    "trpo",
]
