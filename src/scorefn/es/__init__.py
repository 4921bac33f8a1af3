"""scorefn.es: black-box optimisation by search gradients (natural evolution strategies).

Every strategy's search gradient is ``scorefn.score_grad`` on its search distribution and
its natural gradient comes from ``scorefn.fisher`` (closed forms where they exist).
Strategies are ask/tell with explicit state:

```python
strategy = scorefn.es.xnes()
state = strategy.init(key, x0, sigma0)
x, state = strategy.ask(state)
state = strategy.tell(state, x, fitness)      # fitness to minimise
```

or all at once: ``scorefn.es.minimize(f, x0, strategy="xnes", target_f=1e-8)``.
"""

from scorefn.es.bernoulli import BernoulliNES, bernoulli
from scorefn.es.categorical import CategoricalNES, categorical
from scorefn.es.fitness_shaping import centered_ranks, nes_utilities
from scorefn.es.functions import (
    FUNCTIONS,
    ackley,
    cycle_maxcut,
    ellipsoid,
    maxcut,
    onemax,
    rastrigin,
    rosenbrock,
    sphere,
)
from scorefn.es.minimize import STRATEGIES, OptimizeResult, minimize, plot_convergence
from scorefn.es.openai_es import OpenAIES, openai_es
from scorefn.es.snes import SNES, snes
from scorefn.es.strategy import NES, Strategy
from scorefn.es.xnes import XNES, xnes

__all__ = [
    "FUNCTIONS", "STRATEGIES", "NES", "SNES", "Strategy", "XNES", "BernoulliNES", "OptimizeResult", "ackley",
    "OpenAIES", "bernoulli", "centered_ranks", "openai_es", "ellipsoid", "minimize",
    "nes_utilities", "onemax", "CategoricalNES", "categorical", "cycle_maxcut", "maxcut",
    "plot_convergence", "rastrigin", "rosenbrock", "snes", "sphere", "xnes",
]
