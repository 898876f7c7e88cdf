"""The layering of docs/architecture.md, checked on the source: no layer imports one above it.

Imports are read with `ast` from every module under `dgsnet/` (nothing is imported or run).
Every import counts, including those inside functions; imports under `if TYPE_CHECKING:` are
for annotations only and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dgsnet"

# Layer of each module, bottom (0) to top, as docs/architecture.md lists them. A module is
# placed by its longest matching prefix; a new module needs a line here and in that page.
LAYERS: dict[str, int] = {
    # 0 foundation: imports nothing from dgsnet
    "dgsnet.errors": 0,
    "dgsnet.io": 0,
    "dgsnet.progress": 0,
    # 1 the method
    "dgsnet.surgery": 1,
    "dgsnet.testing": 1,
    # 2 model adapters
    "dgsnet.encoders": 2,
    # 3 the parts the wrapper assembles
    "dgsnet.config": 3,
    "dgsnet.presets": 3,
    "dgsnet.lora": 3,
    "dgsnet.heads": 3,
    "dgsnet.caches": 3,
    "dgsnet.validation": 3,
    "dgsnet.checkpoint": 3,
    # 4 the wrapper, and the package root that re-exports it
    "dgsnet.wrapper": 4,
    "dgsnet.stage1": 4,
    "dgsnet.references": 4,
    "dgsnet.output": 4,
    "dgsnet": 4,
    # 5 around the wrapper: data, scoring, model building, figures
    "dgsnet.data": 5,
    "dgsnet.metrics": 5,
    "dgsnet.tables": 5,
    "dgsnet.single_class": 5,
    "dgsnet.models": 5,
    "dgsnet.plots": 5,
    "dgsnet.demo": 5,
    # 6 the training engine, and what reads or writes its run folders
    "dgsnet.training": 6,
    "dgsnet.evaluation": 6,
    "dgsnet.interop": 6,  # the package and every module in it
    "dgsnet.export": 6,  # reads run folders through evaluation; one module per format
    "dgsnet.hub": 6,
    "dgsnet.model_card": 6,
    # 7 the command line
    "dgsnet.cli": 7,
    "dgsnet.__main__": 7,
}

# Upward imports present when this test was written, in modules owned elsewhere; each is a
# bug to fix (move the shared piece down a layer), not a rule. Remove an entry once fixed.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_runtime(node: ast.AST) -> list[ast.AST]:
    """Every node below `node`, leaving out the bodies of `if TYPE_CHECKING:`."""
    found: list[ast.AST] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                found.append(other)
                found.extend(_walk_runtime(other))
            continue
        found.append(child)
        found.extend(_walk_runtime(child))
    return found


def imports_of(path: Path) -> set[str]:
    """The dgsnet modules `path` imports at run time (absolute dotted names)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "dgsnet")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "dgsnet":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                # `from . import tables` imports the module dgsnet.tables; any other name
                # comes from the package `target` itself
                found.add(sub if _is_module(sub) else target)
    found.discard(name)
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def layer_of(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_import_parser_sees_relative_and_lazy_imports() -> None:
    # the parser itself: wrapper.py imports surgery at module level, relatively
    assert "dgsnet.surgery" in imports_of(MODULES["dgsnet.wrapper"])
    # metrics imports tables lazily, inside a function, as `from . import tables`
    assert "dgsnet.tables" in imports_of(MODULES["dgsnet.metrics"])
    # checkpoint names the wrapper only under TYPE_CHECKING: not a run-time import
    assert "dgsnet.wrapper" not in imports_of(MODULES["dgsnet.checkpoint"])


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in MODULES if not any(m == p or m.startswith(p + ".") for p in LAYERS)]
    assert not unplaced, (
        f"modules with no layer: {unplaced}; add them to LAYERS here and to docs/architecture.md"
    )


def upward_imports() -> set[tuple[str, str]]:
    bad = set()
    for name, path in MODULES.items():
        for target in imports_of(path):
            if layer_of(target) > layer_of(name):
                bad.add((name, target))
    return bad


def test_no_module_imports_a_higher_layer() -> None:
    new = sorted(upward_imports() - KNOWN_VIOLATIONS)
    assert not new, "imports of a higher layer (see docs/architecture.md): " + ", ".join(
        f"{a} -> {b} (layer {layer_of(a)} -> {layer_of(b)})" for a, b in new
    )


@pytest.mark.parametrize(
    ("lower", "allowed"),
    [
        # the method stands alone: surgery needs only itself and the error types
        ("dgsnet.surgery", ("dgsnet.surgery", "dgsnet.errors")),
        # the test kit of the method checks rules and nothing else
        ("dgsnet.testing", ("dgsnet.testing", "dgsnet.surgery", "dgsnet.errors")),
        # the foundation imports nothing from dgsnet
        ("dgsnet.errors", ()),
        ("dgsnet.io", ()),
        ("dgsnet.progress", ()),
        # encoders know the model libraries, not the method or the wrapper
        ("dgsnet.encoders", ("dgsnet.encoders", "dgsnet.errors", "dgsnet.io")),
    ],
)
def test_bottom_layers_import_only_what_they_may(lower: str, allowed: tuple[str, ...]) -> None:
    for name, path in MODULES.items():
        if name != lower and not name.startswith(lower + "."):
            continue
        for target in imports_of(path):
            ok = any(target == a or target.startswith(a + ".") for a in allowed)
            assert ok, f"{name} imports {target}; it may import only {allowed or 'nothing'}"


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("dgsnet.wrapper", ("dgsnet.training", "dgsnet.cli", "dgsnet.evaluation")),
        ("dgsnet.checkpoint", ("dgsnet.training", "dgsnet.cli")),
        ("dgsnet.data", ("dgsnet.wrapper", "dgsnet.training", "dgsnet.cli")),
        ("dgsnet.training", ("dgsnet.cli",)),
    ],
)
def test_named_boundaries(module: str, forbidden: tuple[str, ...]) -> None:
    for name, path in MODULES.items():
        if name != module and not name.startswith(module + "."):
            continue
        for target in imports_of(path):
            hit = [f for f in forbidden if target == f or target.startswith(f + ".")]
            assert not hit, f"{name} imports {target}, which it must not"


def test_known_violations_are_still_real_modules() -> None:
    # an entry naming a module that no longer exists is stale: remove it
    for source, target in KNOWN_VIOLATIONS:
        assert source in MODULES, source
        assert target in MODULES, target
