"""Shared fixtures. Statistical helpers and closed-form problems live in closed_forms.py."""

import os
import tempfile

import jax
import pytest

# The tests are compile-bound: hundreds of small programs, each run a few times. XLA's CPU
# backend compiles them about twice as fast without LLVM's optimisation passes and its fusion
# emitters (scorefn.runs.compiler_options.FAST_COMPILE); the programs compute the same things.
# Set before jax starts its backend (importing jax does not); SCOREFN_TEST_XLA_DEFAULTS=1
# keeps XLA's defaults.
if not os.environ.get("SCOREFN_TEST_XLA_DEFAULTS"):
    # jax 0.11 removed the fusion emitters' flag, and XLA aborts on a flag it does not know
    emitters = ([] if tuple(int(p) for p in jax.__version__.split(".")[:2]) >= (0, 11)
                else ["--xla_cpu_use_fusion_emitters=false"])
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                        "--xla_backend_optimization_level=0", *emitters]).strip()

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
