"""The options of ``sparse-bnn fit``, generated from :class:`~sparse_bnn.experiment.config.RunConfig`.

Flag, help text, default, type and choices of each option come from its field
(:func:`sparse_bnn.experiment.options.option`). A few help texts, choices and defaults are read
from modules that import JAX (the registered nets and priors, the shrinking defaults), which
takes seconds; so that ``sparse-bnn --help`` and ``sparse-bnn fit --help`` answer at once, a
process that has not imported JAX yet reads them from a cache file
(``$SPARSE_BNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/sparse_bnn`` or ``~/.cache/sparse_bnn``), keyed
by the version and by the size and modification time of every module of the package: any edit
of the package makes a new one. The first such process writes it.

``--config FILE`` replays a run: :func:`replayed_options` reads a ``config.json`` (or a run
directory holding one), whose options become the defaults that the command line overrides.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

__all__ = ["add_config_options", "config_from_args", "option_table", "replayed_options"]

_MISSING = {"__missing__": True}  # the table's mark of a field without a default


def _live_table() -> dict[str, dict[str, Any]]:
    """``{flat name: {"help", "default", "choices"}}`` read from the fields (imports what they name)."""
    from sparse_bnn.experiment.config import RunConfig
    from sparse_bnn.experiment.options import MISSING
    table = {}
    for entry in RunConfig.options():
        default, choices = entry.default, entry.field.metadata["choices"]
        table[entry.name] = {"help": entry.help, "default": _MISSING if default is MISSING else default,
                             "choices": None if choices is None else list(choices())}
    return table


def _cache_file() -> Path:
    import sparse_bnn
    package = Path(sparse_bnn.__file__).parent
    digest = hashlib.sha256(sparse_bnn.__version__.encode())
    for file in sorted(package.rglob("*.py")):
        stat = file.stat()
        digest.update(f"{file.relative_to(package)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    folder = os.environ.get("SPARSE_BNN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "sparse_bnn")
    return Path(folder) / f"cli-options-{digest.hexdigest()[:16]}.json"


def option_table() -> dict[str, dict[str, Any]]:
    """The help text, default and choices of every option of ``fit``: live where JAX is already
    imported, else from the cache file (written when missing; a cache that cannot be read or
    written is recomputed, silently)."""
    if "jax" in sys.modules:
        return _live_table()
    try:
        file = _cache_file()
        return json.loads(file.read_text())
    except (OSError, ValueError):
        pass
    table = _live_table()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=file.parent, suffix=".tmp", delete=False) as out:
            json.dump(table, out)
        os.replace(out.name, file)
    except (OSError, TypeError, ValueError):
        pass
    return table


def add_config_options(parser: argparse.ArgumentParser, defaults: Mapping[str, Any] | None = None
                       ) -> argparse._ArgumentGroup:
    """Add one option per field of :class:`~sparse_bnn.experiment.config.RunConfig`, in one group per section.

    The ``dest`` is the field's flat name, so that :func:`config_from_args` finds it. ``defaults``
    (``{flat name: value}``, from :func:`replayed_options`) replace the fields' defaults and make
    every option optional. Returns the last group, "run directory and output" (``--out``), for
    the options of a run that are not part of its config.
    """
    from sparse_bnn.experiment.config import RunConfig
    groups = {f.name: parser.add_argument_group(f.metadata["help"])
              for f in dataclasses.fields(RunConfig) if f.metadata.get("section")}
    groups[None] = parser.add_argument_group("run directory and output")
    table = option_table()
    for entry in RunConfig.options():
        keywords = _argparse_keywords(entry, table[entry.name])
        if defaults is not None and entry.name in defaults:
            keywords.pop("required", None)
            value = defaults[entry.name]
            keywords["default"] = list(value.items()) if isinstance(value, Mapping) else value
        groups[entry.section].add_argument(entry.flag, **keywords)
    return groups[None]


def _argparse_keywords(entry, described: Mapping[str, Any]) -> dict:
    """The keywords of ``add_argument`` for an :class:`~sparse_bnn.experiment.options.Option`
    whose help, default and choices :func:`option_table` gave."""
    metadata, default = entry.field.metadata, described["default"]
    missing = default == _MISSING
    parse = metadata["parse"] or (type(default) if not missing and default is not None else str)
    keywords = {"dest": entry.name, "help": described["help"]}
    if parse is bool:  # a switch: on, off, or both where the default is decided later
        keywords["action"] = {False: "store_true", True: "store_false", None: argparse.BooleanOptionalAction}[default]
        keywords["default"] = default
    else:
        keywords["type"] = parse if parse in (int, float, str) else _argparse_type(parse)
        if missing:
            keywords["required"] = True
        else:  # text that parses to the default, so that --help shows 400,400, not (400, 400)
            keywords["default"] = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default
        if described["choices"] is not None:
            keywords["choices"] = list(described["choices"])
    return {**keywords, **metadata["cli"]}


def _argparse_type(parse):
    """``parse``, its ``ValueError`` turned into argparse's error with the same message."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    convert.__name__ = parse.__name__
    return convert


def config_from_args(args: argparse.Namespace):
    """The :class:`~sparse_bnn.experiment.config.RunConfig` of parsed ``sparse-bnn fit`` arguments."""
    from sparse_bnn.experiment.config import RunConfig
    return RunConfig.flat(**{entry.name: getattr(args, entry.name) for entry in RunConfig.options()})


def replayed_options(path: str | os.PathLike) -> dict[str, Any]:
    """``{flat name: value}`` of the options that the run configuration in ``path`` gives: a run's
    ``config.json`` (its ``"run"``), a run directory holding one, or a JSON mapping of options
    (nested by section or flat), checked as :meth:`RunConfig.check` does. Raises :class:`~sparse_bnn.errors.InputError` naming the file when it is none of these."""
    from sparse_bnn.errors import InputError, read_json
    from sparse_bnn.experiment.config import RunConfig
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    saved = read_json(file, "run configuration")
    options = saved.get("run", saved) if isinstance(saved, dict) else None
    if not isinstance(options, dict):
        raise InputError(f"--config {file}: holds no run options (a mapping, or a run's config.json); "
                         "give the config.json of a run")
    try:  # checked as a whole (a hand-written file may leave out --out: the command line gives it)
        config = RunConfig.from_dict({**options, "out": options.get("out", "-")}).check()
    except (TypeError, ValueError) as error:
        raise InputError(f"--config {file}: {error}") from None
    given, values = RunConfig.given(options), config.flat_dict()
    return {entry.name: values[entry.name] for entry in RunConfig.options()
            if entry.field.name in given.get(entry.section, {})}
