"""The command line's persistent compilation cache: where it goes, how it is switched off."""
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from sparse_bnn import compile_cache
from sparse_bnn.cli import build_parser


@pytest.fixture
def jax_cache_config():
    """Restore JAX's cache settings after a test changes them."""
    names = ("jax_enable_compilation_cache", "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    saved = {name: getattr(jax.config, name) for name in names}
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


def test_default_folder_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.default_cache_dir() == tmp_path / "sparse_bnn" / "jax"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_cache.default_cache_dir() == tmp_path / "home" / ".cache" / "sparse_bnn" / "jax"


def test_folder_choice(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv(compile_cache.ENV_VARIABLE, raising=False)
    assert compile_cache.cache_dir() == tmp_path / "sparse_bnn" / "jax"
    assert compile_cache.cache_dir(enabled=False) is None
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax-own"))
    assert compile_cache.cache_dir() is None  # JAX's own setting applies
    monkeypatch.setenv(compile_cache.ENV_VARIABLE, str(tmp_path / "mine"))
    assert compile_cache.cache_dir() == tmp_path / "mine"
    for off in ("0", "off", "False", "no"):
        monkeypatch.setenv(compile_cache.ENV_VARIABLE, off)
        assert compile_cache.cache_dir() is None


def test_setup_sets_and_clears_jax_config(monkeypatch, tmp_path, jax_cache_config):
    monkeypatch.setenv(compile_cache.ENV_VARIABLE, str(tmp_path / "cache"))
    assert compile_cache.setup_compile_cache() == tmp_path / "cache"
    assert (tmp_path / "cache").is_dir()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
    assert jax.config.jax_enable_compilation_cache is True
    assert jax.config.jax_persistent_cache_min_compile_time_secs <= compile_cache.MIN_COMPILE_SECONDS
    assert compile_cache.setup_compile_cache(enabled=False) is None
    assert jax.config.jax_enable_compilation_cache is False


def test_unwritable_folder_leaves_the_cache_off(monkeypatch, tmp_path, jax_cache_config):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(compile_cache.ENV_VARIABLE, str(blocker / "cache"))
    before = jax.config.jax_compilation_cache_dir
    assert compile_cache.setup_compile_cache() is None
    assert jax.config.jax_compilation_cache_dir == before


@pytest.mark.parametrize("command", [["fit", "--data", "digits", "--out", "RUN"], ["evaluate", "RUN"], ["predict", "RUN", "x.npy"],
                                     ["export", "RUN", "--out", "f"]])
def test_cli_option(command):
    parser = build_parser()
    assert parser.parse_args(command).no_compile_cache is False
    assert parser.parse_args(command + ["--no-compile-cache"]).no_compile_cache is True


def test_a_second_process_reads_the_cache(tmp_path):
    """Two processes compile the same program: the first writes the cache, the second reads it
    (JAX's cache-hit event fires in the second only)."""
    script = (
        "import jax, jax.numpy as jnp\n"
        "from sparse_bnn.compile_cache import setup_compile_cache\n"
        "print('folder', setup_compile_cache())\n"
        "hits = []\n"
        "jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event))\n"
        "f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + 1.0)\n"
        "f(jnp.ones((64, 64))).block_until_ready()\n"
        "print('hit', '/jax/compilation_cache/cache_hits' in hits)\n")
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update({compile_cache.ENV_VARIABLE: str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu",
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})
    outputs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True,
                              timeout=120).stdout for _ in range(2)]
    assert f"folder {tmp_path / 'cache'}" in outputs[0]
    assert "hit False" in outputs[0] and "hit True" in outputs[1]
    assert any(Path(tmp_path / "cache").iterdir())
