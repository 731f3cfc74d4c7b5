"""Griffe extension for the API reference: reads the package's Sphinx-style cross-reference
roles (``:class:`~sparse_bnn.core.model.SparseBNN```, ``:func:`fit```, ``:mod:`...```) as
MkDocs cross-references.

Each role becomes an *optional* autoref: it links to the object's API entry where the reference
renders one, and reads as plain code where it does not (a private helper, an object of JAX), so
the docstrings need no mass edit and the strict build does not fail on names the reference
leaves out. Cross-references written in the Markdown pages (``[`fit`][sparse_bnn.train.fit]``)
are not optional: a broken one fails ``mkdocs build --strict``.

A paragraph ending in the reStructuredText literal marker ``::`` ends in ``:``; the indented
block after it is a code block in Markdown already.
"""
from __future__ import annotations

import html
import re

import griffe

ROLE = re.compile(r":(?:py:)?(?P<role>class|func|meth|mod|attr|data|exc|obj|const):`(?P<body>[^`]+)`")
LITERAL_MARKER = re.compile(r"(?<=\S)::$", flags=re.MULTILINE)
EXPLICIT_TITLE = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$")


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The full dotted path of ``target`` as seen from ``obj``'s scope, or None."""
    target = target.lstrip(".")
    if target.startswith("sparse_bnn"):
        return target
    head, _, rest = target.partition(".")
    scope = obj
    while scope is not None:
        try:
            found = scope.resolve(head)
        except Exception:  # griffe's NameResolutionError, or an alias it cannot follow
            found = None
        if found:
            return f"{found}.{rest}" if rest else found
        scope = scope.parent
    return None


def convert(text: str, obj: griffe.Object) -> str:
    """``text`` with its roles as optional autorefs and ``::`` markers as ``:``."""

    def replace(match: re.Match) -> str:
        body = match["body"].strip()
        explicit = EXPLICIT_TITLE.match(body)
        if explicit:
            title, target = explicit["title"], explicit["target"]
        else:
            target = body.lstrip("~")
            title = target.rsplit(".", 1)[-1] if body.startswith("~") else target
        if not explicit and match["role"] in ("func", "meth") and not title.endswith(")"):
            title += "()"
        code = f"<code>{html.escape(title)}</code>"
        identifier = _resolve(obj, target)
        if identifier is None:
            return code
        return f'<autoref identifier="{html.escape(identifier)}" optional>{code}</autoref>'

    return LITERAL_MARKER.sub(":", ROLE.sub(replace, text))


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring of a loaded package once (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = convert(obj.docstring.value, obj)
            stack.extend(member for member in obj.members.values() if not member.is_alias)
