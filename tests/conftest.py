"""Fixtures shared by the test modules."""
import contextlib

import jax
import pytest


@pytest.fixture
def compilations():
    """``with compilations() as compiled:`` collects the seconds of every XLA backend compilation
    run inside the block (a list; empty when nothing compiled)."""

    @contextlib.contextmanager
    def collect():
        compiled = []

        def listener(event, seconds, **kwargs):
            if event == "/jax/core/compile/backend_compile_duration":
                compiled.append(seconds)

        jax.monitoring.register_event_duration_secs_listener(listener)
        try:
            yield compiled
        finally:
            jax.monitoring.unregister_event_duration_listener(listener)

    return collect
