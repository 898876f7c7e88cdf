"""The API reference documents every member it renders, and renders what it shows.

Read with griffe, mkdocstrings' own loader, so that what counts is what the site shows:
every object a `::: identifier` directive of docs/api/ renders (the object, its members,
each class's own public members, recursively) has a docstring with prose. There is no
allow-list: a new public name, method or attribute without a docstring fails here.
"""

from __future__ import annotations

import pytest

from tests.helpers.api_pages import (
    Unresolved,
    directives,
    has_prose,
    load_package,
    rendered,
)

griffe = pytest.importorskip("griffe")

#: members that may render without a docstring; must stay empty
ALLOWED_UNDOCUMENTED: set[str] = set()


@pytest.fixture(scope="module")
def package():
    return load_package()


def test_every_rendered_member_has_prose(package):
    missing: list[str] = []
    count = 0
    for d in directives():
        for path, obj in rendered(package, d):
            count += 1
            if isinstance(obj, Unresolved):
                missing.append(f"{d.page}: {path} (the docs' loader cannot find it: {obj.error})")
            elif not has_prose(obj) and path not in ALLOWED_UNDOCUMENTED:
                where = f"{obj.relative_filepath}:{obj.lineno}"
                missing.append(f"{d.page}: {path} ({obj.kind.value}, {where})")
    assert count > 300  # the walk reaches the members, not only the directives
    assert not missing, f"{len(missing)} undocumented:\n" + "\n".join(missing)


def test_the_allow_list_is_empty():
    assert ALLOWED_UNDOCUMENTED == set()


def test_every_dgsconfig_field_has_prose(package):
    import dataclasses

    from dgsnet import DGSConfig

    cls = package["wrapper"]["DGSConfig"].final_target
    for f in dataclasses.fields(DGSConfig):
        assert f.name in cls.members, f.name
        assert has_prose(cls.members[f.name]), f"DGSConfig.{f.name} has no docstring"


def _docstrings(obj):
    if obj.is_alias:
        return
    if obj.docstring is not None:
        yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _docstrings(member)


def test_no_section_renders_as_an_admonition(package):
    """Google sections griffe does not know (`Example:` instead of `Examples:`, a typo)
    render as a quote box with the lines joined."""
    found = []
    for obj in _docstrings(package):
        for section in obj.docstring.parsed:
            if section.kind.value == "admonition":
                found.append(f"{obj.relative_filepath}:{obj.lineno} {obj.path}: {section.title}")
    assert not found, "\n".join(found)


def test_the_harness_sees_an_undocumented_member(tmp_path):
    """The walk is not vacuous: a member without a docstring is reported."""
    pkg = tmp_path / "demo_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        '"""A package."""\n\n__all__ = ["Thing"]\n\n\n'
        'class Thing:\n    """A thing."""\n\n    def __init__(self):\n'
        "        self.size = 1\n\n    def grow(self):\n        return 2\n"
    )
    loaded = griffe.load("demo_pkg", search_paths=[str(tmp_path)], docstring_parser="google")
    thing = loaded["Thing"]
    assert has_prose(thing)
    assert not has_prose(thing.members["size"]) and not has_prose(thing.members["grow"])
