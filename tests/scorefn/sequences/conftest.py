"""Fixtures of the sequence tests; the tabular world and its exact expectations are in
tests/sequence_oracle.py."""

import pytest
from sequence_oracle import make_world


@pytest.fixture(scope="session")
def world():
    return make_world()
