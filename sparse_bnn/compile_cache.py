"""JAX's persistent compilation cache for the command line, on by default.

Most of a short run is XLA compilation (the epoch program, then again after each shrink, the
validation and evaluation programs). With the cache a second run of the same programs (same
shapes, same options, same JAX) reads the compiled executables from disk instead.

Where the cache lives, first match wins:

* ``--no-compile-cache`` on the command line, or ``SPARSE_BNN_COMPILE_CACHE=0`` (also ``off``,
  ``false``, ``no``): no persistent cache;
* ``SPARSE_BNN_COMPILE_CACHE=FOLDER``: that folder;
* ``JAX_COMPILATION_CACHE_DIR`` (JAX's own setting): left as JAX reads it;
* otherwise ``$XDG_CACHE_HOME/sparse_bnn/jax``, or ``~/.cache/sparse_bnn/jax``.

Programs that compile in under :data:`MIN_COMPILE_SECONDS` are not written (JAX's threshold).
The cache is trusted code: keep it in a folder only you can write to.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

ENV_VARIABLE = "SPARSE_BNN_COMPILE_CACHE"
OFF_VALUES = ("0", "off", "false", "no")
MIN_COMPILE_SECONDS = 0.5


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sparse_bnn/jax`` (``~/.cache`` when ``XDG_CACHE_HOME`` is unset or empty)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sparse_bnn" / "jax"


def cache_dir(enabled: bool = True) -> Path | None:
    """The folder the cache should use given the command-line switch and the environment (see
    the module docstring); ``None`` for no cache or where JAX's own setting applies."""
    setting = os.environ.get(ENV_VARIABLE, "").strip()
    if not enabled or setting.lower() in OFF_VALUES:
        return None
    if setting:
        return Path(setting).expanduser()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    return default_cache_dir()


def setup_compile_cache(enabled: bool = True) -> Path | None:
    """Turn JAX's persistent compilation cache on (or off) for this process; returns its folder.

    Call it before the first compilation. ``enabled=False`` (``--no-compile-cache``) or
    ``SPARSE_BNN_COMPILE_CACHE=0`` switch the cache off, JAX's own ``JAX_COMPILATION_CACHE_DIR``
    included. A folder that cannot be created leaves the cache off (a run never fails for it).
    """
    import jax

    off = not enabled or os.environ.get(ENV_VARIABLE, "").strip().lower() in OFF_VALUES
    if off:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    folder = cache_dir(enabled)
    if folder is None:  # JAX_COMPILATION_CACHE_DIR: JAX reads it itself
        value = jax.config.jax_compilation_cache_dir
        return Path(value) if value else None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if jax.config.jax_persistent_cache_min_compile_time_secs > MIN_COMPILE_SECONDS:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return folder


def add_cache_option(parser: argparse.ArgumentParser) -> None:
    """``--no-compile-cache`` on a sub-command's parser (``args.no_compile_cache``)."""
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not read or write JAX's persistent compilation cache "
                             f"(default folder: {default_cache_dir()}; also {ENV_VARIABLE}=0 or =FOLDER)")


def setup_from_args(args: argparse.Namespace) -> Path | None:
    """:func:`setup_compile_cache` as the parsed ``--no-compile-cache`` asks (absent: on)."""
    return setup_compile_cache(enabled=not getattr(args, "no_compile_cache", False))
