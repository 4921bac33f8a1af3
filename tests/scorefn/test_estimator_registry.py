"""scorefn.registry: one list of estimators that grad, programs, the discrete VAE and the
docs all read."""

import sys
from pathlib import Path

import pytest

from scorefn import estimators, programs, registry
from scorefn.vi import discrete_vae


def test_every_reader_takes_its_names_from_the_registry():
    assert estimators.ESTIMATORS == registry.names(single_distribution=True)
    assert tuple(programs.ESTIMATORS) == registry.names(program=True)
    assert set(discrete_vae.ESTIMATORS) <= set(registry.names(program=True))
    assert "relax" not in discrete_vae.ESTIMATORS  # it learns a network: needs state
    # only the relaxations are biased, and they say what they estimate instead
    biased = registry.names(unbiased=False)
    assert biased == ("gumbel_softmax", "straight_through")
    assert all("biased" in registry.ESTIMATORS[n].formula for n in biased)
    assert registry.estimator("rloo").family == "score"


def test_unknown_names_and_families_are_errors():
    with pytest.raises(ValueError, match="unknown estimator 'reinforce'; known: score, pathwise"):
        registry.estimator("reinforce")
    with pytest.raises(ValueError, match="family must be one of"):
        registry.Estimator("mine", "magic", True, False, "", "")


def test_the_docs_table_lists_every_estimator():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs"))
    try:
        import hooks
    finally:
        sys.path.pop(0)
    table = hooks.registry_table()
    assert all(f"| `{name}` |" in table for name in registry.ESTIMATORS)
    assert len(table.strip().splitlines()) == 2 + len(registry.ESTIMATORS)
