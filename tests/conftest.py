"""Shared fixtures. Statistical helpers and closed-form problems live in closed_forms.py."""

import os
import tempfile

import jax
import pytest

# Workers of pytest-xdist compile many of the same estimators: share XLA's compilation cache.
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("SCOREFN_TEST_JAX_CACHE", os.path.join(tempfile.gettempdir(), "scorefn-jax-cache")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def cli_error(capsys):
    """Run ``scorefn`` with ``argv``, expecting a usage error: exit status 2 and one line
    ``scorefn <command>: error: ...`` on stderr, which is returned (no traceback)."""
    from scorefn.cli import main

    def run(argv):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "error: " in err
        return err

    return run
