"""Griffe extension for the API reference: render the reST bits of docstrings as Markdown.

The docstrings use Sphinx roles (``:class:`JobResult```, ``:meth:`~microbatching.MicroBatching.stats```,
``:mod:`microbatching.testing```).  mkdocstrings parses Sphinx *fields* (``:param x:``) but
prints inline roles as they are written, so this extension rewrites each role, before the
docstring is rendered, into an mkdocs-autorefs reference:

- the target is resolved the way Python would see it from where the docstring is
  (``JobResult`` in ``microbatching._sync`` is ``microbatching._job.JobResult``); mkdocstrings
  registers every documented object under its public and its canonical path, so the link
  lands on the entry of the API page;
- the reference is *optional*: a target the site does not document (``asyncio.Future``,
  a private helper) renders as inline code instead of failing the strict build;
- ``~`` shows only the last component, and ``:meth:``/``:func:`` get ``()`` (as in Sphinx);
  an explicit title (``:class:`the queue <SQLiteQueue>```) is kept.

Two more reST habits are smoothed over: the ``::`` that opens a literal block ends its
sentence with ``:`` (the indented block is a code block in Markdown as well), and the
private parameters of a constructor (a dataclass's ``_random`` test hook) are left out of
the signature, as private members are left out of the page.

Loaded by mkdocs.yml (``extensions: [dataclasses, docs/_griffe_roles.py:SphinxRoles]``: the
built-in dataclasses extension first, so the constructors it makes exist here); rewriting
docstrings in an extension is the route Griffe documents for this.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?P<role>class|meth|func|mod|attr|data|exc|obj|const|type):`(?P<body>[^`]+)`",
)
_TITLED = re.compile(r"(?P<title>.*?)\s*<(?P<target>[^<>]+)>\s*$", re.DOTALL)
_CALLABLE = {"meth", "func"}
_LITERAL = re.compile(r"(?<=\S)::[ \t]*$", re.MULTILINE)


def _resolve(obj: griffe.Object | griffe.Alias, target: str) -> str | None:
    """The full path ``target`` names from ``obj``'s scope, or ``None`` when it names nothing here."""
    scope: Any = obj if obj.is_module or obj.is_class else obj.parent
    head, _, rest = target.partition(".")
    while scope is not None:
        try:
            resolved = scope.resolve(head)
        except (griffe.NameResolutionError, AttributeError, KeyError):
            scope = scope.parent
            continue
        return f"{resolved}.{rest}" if rest else resolved
    root = obj.package
    if head == root.name:  # an absolute dotted path into this package
        return target
    return None


def _rewrite(obj: griffe.Object | griffe.Alias, text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        role, body = match["role"], match["body"].strip()
        titled = _TITLED.match(body)
        if titled and titled["title"]:
            title, target = titled["title"], titled["target"].strip()
        else:
            target = body.removeprefix("!")
            short = target.startswith("~")
            target = target.lstrip("~")
            title = target.rsplit(".", 1)[-1] if short else target
            if role in _CALLABLE and not title.endswith(")"):
                title += "()"
        code = f"<code>{html.escape(title)}</code>"
        identifier = _resolve(obj, target)
        if identifier is None:
            return code
        return f'<autoref identifier="{html.escape(identifier)}" optional>{code}</autoref>'

    return _LITERAL.sub(":", _ROLE.sub(replace, text))


class SphinxRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every docstring in the loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._walk(pkg, set())

    def _walk(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = _rewrite(obj, obj.docstring.value)
        if obj.is_function and obj.name == "__init__":
            public = [p for p in obj.parameters if not (p.name.startswith("_") and p.default is not None)]
            obj.parameters = griffe.Parameters(*public)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen)  # type: ignore[arg-type]
