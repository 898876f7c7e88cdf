"""What the API reference (docs/api/*.md) renders, read as mkdocstrings reads it: the
`::: identifier` directives, their `members:` option, and the package loaded with griffe
(mkdocstrings' own loader, so that attribute docstrings count as they render)."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
API = ROOT / "docs" / "api"


@dataclass(frozen=True)
class Directive:
    """One `::: identifier` block: `members` None = every public member, () = none."""

    page: str
    ident: str
    members: tuple[str, ...] | None


def directives() -> list[Directive]:
    """Every `::: identifier` directive of docs/api/*.md, in page order."""
    found = []
    for page in sorted(API.glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"^::: ([\w.]+)\s*$", line)
            if not m:
                continue
            members: tuple[str, ...] | None = None
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
                if not lines[j].strip() and (j + 1 >= len(lines) or lines[j + 1][:1] != " "):
                    break
                mm = re.match(r"^\s+members:\s*(\S*)\s*$", lines[j])
                if mm:
                    listed = []
                    k = j + 1
                    while k < len(lines) and re.match(r"^\s+- ", lines[k]):
                        listed.append(lines[k].strip()[2:].strip())
                        k += 1
                    members = () if mm.group(1) == "false" else tuple(listed)
                j += 1
            found.append(Directive(page.name, m.group(1), members))
    return found


def load_package() -> Any:
    """The dgsnet package as griffe sees it (Google docstrings, the checkout's source)."""
    import griffe

    return griffe.load(
        "dgsnet",
        search_paths=[str(ROOT)],
        docstring_parser="google",
        resolve_aliases=True,
        resolve_external=False,
    )


class Unresolved:
    """A name the docs' loader cannot follow to a definition (so it renders nothing)."""

    docstring = None
    is_class = is_module = False

    def __init__(self, error: Exception) -> None:
        self.error = error


def _target(obj: Any) -> Any:
    import griffe

    try:
        return obj.final_target if obj.is_alias else obj
    except griffe.AliasResolutionError as exc:
        return Unresolved(exc)


def _module_members(ident: str) -> tuple[str, ...]:
    return tuple(importlib.import_module(ident).__all__)


def rendered(pkg: Any, d: Directive) -> Iterator[tuple[str, Any]]:
    """(path, griffe object) of everything the directive renders: the object, then its
    members (the listed ones, or a module's `__all__`), and each class's own public members,
    recursively (no inherited member: `inherited_members` is off)."""
    obj = _target(pkg[d.ident.removeprefix("dgsnet.")] if d.ident != "dgsnet" else pkg)
    yield d.ident, obj
    if d.members == ():
        return
    if obj.is_module:
        names = d.members if d.members is not None else _module_members(d.ident)
        for name in names:
            yield from _walk(f"{d.ident}.{name}", _target(obj[name]))
    elif obj.is_class:
        yield from _class_members(d.ident, obj)


def _walk(path: str, obj: Any) -> Iterator[tuple[str, Any]]:
    yield path, obj
    if obj.is_class:
        yield from _class_members(path, obj)


def _class_members(path: str, cls: Any) -> Iterator[tuple[str, Any]]:
    for name, member in cls.members.items():
        if name.startswith("_") or member.is_alias:
            continue
        yield from _walk(f"{path}.{name}", member)


def has_prose(obj: Any) -> bool:
    """True when the object's docstring has a sentence (not only sections or whitespace)."""
    doc = obj.docstring
    if doc is None or not doc.value.strip():
        return False
    first = doc.value.strip().splitlines()[0].strip()
    return bool(re.search(r"[A-Za-z`]", first)) and not re.match(r"^[A-Z][a-z]+:$", first)
