"""Fixtures of the VI tests; the conjugate model itself is in tests/vi_conjugate.py."""

import pytest
from vi_conjugate import X, normal_normal

from scorefn import vi


@pytest.fixture(scope="session")
def conjugate():
    model = vi.as_model(normal_normal, (X,))
    guide = vi.auto_guide(model)
    return model, guide
