"""Configuration fields declared once: defaults, help, command line and checks on the field.

:func:`option` is :func:`dataclasses.field` with a few more keywords, kept in the field's
``metadata``; :class:`Section` checks a frozen dataclass of such fields, and :class:`Config`,
a frozen dataclass of sections (:func:`section`), is built from flat names or from dicts.
:mod:`sparse_bnn.experiment.config` declares the run's configuration with them; :mod:`sparse_bnn.cli`
turns its :class:`Option` s into ``argparse`` options.

Nothing here imports JAX: :func:`lazy` reads a default or a list of names from a module that
does when first needed.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

MISSING = dataclasses.MISSING


def option(default: Any = MISSING, *, help: str | Callable[[], str], name: str | None = None,
           flag: str | None = None, parse: Callable[[str], Any] | None = None,
           choices: Callable[[], Sequence[Any]] | None = None, check: Callable[[str, Any], None] | None = None,
           identity: bool = True, default_factory: Callable[[], Any] = MISSING,
           cli: Mapping[str, Any] | None = None) -> Any:
    """A dataclass field that also says how the command line and :meth:`Section.check` treat it.

    Args:
      default, default_factory: as in :func:`dataclasses.field`.
      help: the ``--help`` text, or a function returning it (to name things read on first use).
      name: the flat name (default: the field's), unique over a config's sections; also the
        command line's ``dest``.
      flag: the command-line spelling (default: ``--name`` with dashes; ``--no-name`` for a
        boolean that is on by default).
      parse: turns the command-line text into the value (default: the default's type).
      choices: returns the valid values, enforced by the command line and by ``check``.
      check: ``check(name, value)`` raises ``ValueError`` for a bad value (never given ``None``).
      identity: whether a resumed run must agree on the field with the saved config.
      cli: further keywords of ``argparse.ArgumentParser.add_argument`` (``metavar``, ...).
    """
    metadata = dict(help=help, name=name, flag=flag, parse=parse, choices=choices, check=check,
                    identity=identity, cli=dict(cli or {}))
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def section(cls: type, title: str) -> Any:
    """A field holding a whole section ``cls``; ``title`` heads its group in ``--help``."""
    return dataclasses.field(default_factory=cls, metadata={"section": True, "help": title})


def lazy(module: str, attribute: str, then: Callable[[Any], Any] = lambda value: value) -> Callable[[], Any]:
    """A function returning ``then(module.attribute)``; the module is imported on the first call."""
    return lambda: then(getattr(importlib.import_module(module), attribute))


class Option(NamedTuple):
    """A field of a :class:`Config`'s section (or of the config itself: ``section`` ``None``)."""

    section: str | None
    field: dataclasses.Field

    @property
    def name(self) -> str:
        """The flat name: the command line's ``dest``, the keyword of :meth:`Config.flat`."""
        return self.field.metadata["name"] or self.field.name

    @property
    def flag(self) -> str:
        dashed = self.name.replace("_", "-")
        return self.field.metadata["flag"] or (f"--no-{dashed}" if self.field.default is True else f"--{dashed}")

    @property
    def default(self) -> Any:
        """The field's default (``dataclasses.MISSING`` where it has none)."""
        field = self.field
        return field.default_factory() if field.default_factory is not MISSING else field.default

    @property
    def help(self) -> str:
        text = self.field.metadata["help"]
        return text() if callable(text) else text

    @property
    def identity(self) -> bool:
        """Whether a resumed run must agree on the field with the saved config."""
        return self.field.metadata["identity"]


class Section:
    """Base of a frozen dataclass of :func:`option` fields: checks them, says which were changed."""

    def check(self):
        """Raise ``ValueError`` naming the first bad field and what it takes; return ``self``."""
        for field in dataclasses.fields(self):
            value, name, choices = getattr(self, field.name), Option(None, field).name, field.metadata["choices"]
            if value is None:
                continue
            if choices is not None and value not in choices():
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices()))}")
            if field.metadata["check"] is not None:
                field.metadata["check"](name, value)
        return self

    def changed(self, *fields: str) -> list[str]:
        """The flags (``--shrink-warmup``) of those of ``fields`` that differ from their defaults."""
        entries = [Option(None, f) for f in dataclasses.fields(self) if f.name in fields]
        return [entry.flag for entry in entries if getattr(self, entry.field.name) != entry.default]


class Config:
    """Base of a frozen dataclass of sections (:func:`section`) and a few options of its own."""

    @classmethod
    def sections(cls) -> dict[str, type[Section]]:
        """``{field: section class}``, in declaration order."""
        return {f.name: f.default_factory for f in dataclasses.fields(cls) if f.metadata.get("section")}

    @classmethod
    def options(cls) -> Iterator[Option]:
        """Every field of every section, in declaration order, then the config's own."""
        for name, section_class in cls.sections().items():
            yield from (Option(name, field) for field in dataclasses.fields(section_class))
        yield from (Option(None, f) for f in dataclasses.fields(cls) if not f.metadata.get("section"))

    @classmethod
    def flat(cls, **options: Any):
        """The config with the fields given by their flat names, the others at their defaults.
        Raises ``TypeError`` for a name that is no field's."""
        return cls(**cls._build(cls._by_section(options, f"{cls.__name__}.flat()")))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]):
        """The inverse of :meth:`to_dict`; also reads the flat dict of older ``config.json`` files.
        Keys that are no field's are ignored."""
        return cls(**cls._build(cls.given(values)))

    def to_dict(self) -> dict[str, Any]:
        """``{own fields..., section: {field: value}, ...}``."""
        return dataclasses.asdict(self)

    def flat_dict(self) -> dict[str, Any]:
        """``{flat name: value}`` of every field."""
        return {entry.name: getattr(self if entry.section is None else getattr(self, entry.section), entry.field.name)
                for entry in self.options()}

    def replace(self, **options: Any):
        """A copy with the fields given by their flat names changed (``TypeError`` for others)."""
        changes = self._by_section(options, f"{type(self).__name__}.replace()")
        own = changes.pop(None, {})
        return dataclasses.replace(self, **own, **{name: dataclasses.replace(getattr(self, name), **fields)
                                                   for name, fields in changes.items()})

    @classmethod
    def given(cls, values: Mapping[str, Any]) -> dict[str | None, dict[str, Any]]:
        """``{section: {field: value}}`` of the fields ``values`` holds, nested (:meth:`to_dict`)
        or flat; keys that are no field's are left out."""
        if not any(isinstance(values.get(name), Mapping) for name in cls.sections()):
            known = {name: value for name, value in values.items() if name in _flat_index(cls)}
            return cls._by_section(known, f"{cls.__name__}.from_dict()")
        given: dict[str | None, dict[str, Any]] = {}
        for entry in cls.options():
            source = values if entry.section is None else values.get(entry.section, {})
            if entry.field.name in source:
                given.setdefault(entry.section, {})[entry.field.name] = source[entry.field.name]
        return given

    @classmethod
    def _by_section(cls, values: Mapping[str, Any], caller: str) -> dict[str | None, dict[str, Any]]:
        index, grouped = _flat_index(cls), {}
        for name, value in values.items():
            if name not in index:
                raise TypeError(f"{caller} got an unknown option {name!r}; the options are {', '.join(index)}")
            grouped.setdefault(index[name].section, {})[index[name].field.name] = value
        return grouped

    @classmethod
    def _build(cls, given: dict[str | None, dict[str, Any]]) -> dict[str, Any]:
        return {**given.get(None, {}),
                **{name: section_class(**given.get(name, {})) for name, section_class in cls.sections().items()}}


@functools.cache
def _flat_index(cls: type[Config]) -> dict[str, Option]:
    index = {entry.name: entry for entry in cls.options()}
    if len(index) != len(list(cls.options())):
        raise TypeError(f"two fields of {cls.__name__} share a flat name")
    return index


# ----------------------------------------------------------------------------- checks

def non_negative(name: str, value: Any) -> None:
    if int(value) < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def positive_integer(name: str, value: Any) -> None:
    if int(value) <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")


def positive(name: str, value: Any) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive, got {value}")


def finite(name: str, value: Any) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


MAX_SEED = 2**32 - 1


def seed_in_range(name: str, value: Any) -> None:
    """A seed: an integer in ``0..2**32 - 1`` (what every generator that takes it accepts)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"--{name.replace('_', '-')} must be an integer from 0 to {MAX_SEED}, got {value!r}")


def strictly_between_0_and_1(name: str, value: Any) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")


def check_inclusion(name: str, value: Any) -> None:
    """``"theory"`` or a probability in (0, 1)."""
    if value != "theory" and not 0.0 < value < 1.0:
        raise ValueError(f"{name} probability must lie in (0, 1), got {value}")


# ----------------------------------------------------------------------------- command-line parsers

def parse_widths(text: str) -> list[int]:
    """``"400,400"`` -> ``[400, 400]``."""
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"widths must be comma-separated integers like 400,400, got {text!r}") from None
    if not widths or any(w <= 0 for w in widths):
        raise ValueError(f"widths must be positive integers like 400,400, got {text!r}")
    return widths


def parse_inclusion(text: str) -> str | float:
    """``"theory"`` or a probability in (0, 1)."""
    if text == "theory":
        return text
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--inclusion takes 'theory' or a probability in (0, 1), got {text!r}") from None
    check_inclusion("--inclusion", value)
    return value


def parse_prior_option(text: str) -> tuple[str, str]:
    """``"lam2_shape=3"`` -> ``("lam2_shape", "3")``; :func:`typed_prior_options` converts the value."""
    name, equals, value = text.partition("=")
    if not (equals and name.strip() and value.strip()):
        raise ValueError(f"--prior-option takes NAME=VALUE, like lam2_shape=3, got {text!r}")
    return name.strip(), value.strip()


# ----------------------------------------------------------------------------- priors' hyperparameters

def prior_hyperparameters(prior: str) -> dict[str, Any]:
    """``{name: default}`` of the hyperparameters of the prior named ``prior`` (``--prior-option``),
    all but ``sigma_0`` (``--sigma0``); empty for an unknown prior."""
    from sparse_bnn.priors import PRIORS
    if prior not in PRIORS:
        return {}
    return {f.name: f.default for f in dataclasses.fields(PRIORS[prior]) if f.name != "sigma_0"}


def prior_has_indicators(prior: str) -> bool:
    """Whether the prior named ``prior`` has node indicators (what ``--shrink``'s gamma rule reads)."""
    from sparse_bnn.priors import PRIORS
    return PRIORS[prior].has_indicator


def typed_prior_options(prior: str, given: Any) -> dict[str, Any]:
    """``given`` (a mapping, ``(name, value)`` pairs or ``None``) as a dict; command-line text
    becomes the type of the prior's field (names the prior lacks stay as given, for the check)."""
    given = dict(given or {})
    if not any(isinstance(value, str) for value in given.values()):
        return given
    defaults = prior_hyperparameters(prior)
    return {name: _parse_like(name, value, defaults[name]) if isinstance(value, str) and name in defaults else value
            for name, value in given.items()}


def _parse_like(name: str, text: str, default: Any) -> Any:
    if isinstance(default, bool):
        words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
        if text.lower() not in words:
            raise ValueError(f"--prior-option {name} takes true or false, got {text!r}")
        return words[text.lower()]
    try:
        return type(default)(text)
    except ValueError:
        raise ValueError(f"--prior-option {name} takes a number, got {text!r}") from None
