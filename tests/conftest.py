"""Fixtures shared by the test modules, and a persistent XLA compilation cache for the session.

Most of a small test fit is XLA compilation, and many tests compile the same programs; JAX's
persistent cache (one folder per xdist worker, inherited by the subprocesses tests start) turns
the repeats into cache reads. A cache read is a compilation request all the same, so the
``compilations`` fixture counts it.
"""
import contextlib
import os
import tempfile
from pathlib import Path

import jax
import pytest

COMPILE_EVENTS = ("/jax/core/compile/backend_compile_duration", "/jax/compilation_cache/cache_retrieval_time_sec")


def pytest_configure(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    folder = Path(tempfile.gettempdir()) / f"sparse_bnn_test_xla_cache_{os.getuid()}" / worker
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(folder))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


@pytest.fixture
def compilations():
    """``with compilations() as compiled:`` collects the seconds of every XLA compilation (or
    compilation-cache read) run inside the block (a list; empty when nothing compiled)."""

    @contextlib.contextmanager
    def collect():
        compiled = []

        def listener(event, seconds, **kwargs):
            if event in COMPILE_EVENTS:
                compiled.append(seconds)

        jax.monitoring.register_event_duration_secs_listener(listener)
        try:
            yield compiled
        finally:
            jax.monitoring.unregister_event_duration_listener(listener)

    return collect
