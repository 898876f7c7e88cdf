"""The layering of docs/architecture.md, checked on the source.

Imports are read with `ast` from every module under `dgsnet/` (nothing is imported or run).
The rules:

1. no module imports a module of a higher layer (imports under `if TYPE_CHECKING:` are for
   annotations only and are left out of this rule);
2. no import cycle, counting *every* import: module level, inside functions (lazy imports,
   a module `__getattr__`) and under `if TYPE_CHECKING:`;
3. no module reads another module's private names: no `from X import _name` and no
   `X._name` on an imported module, no import of a private module (`_common`) from outside
   its package, and no `param._name` on a function parameter annotated with a dgsnet class
   (reaching into another component's internals);
4. a name is imported from the package that defines it, not through another package's
   re-export (package `__init__` files re-export by design);
5. no module over 600 lines, no function body over 60 lines (the signature, the docstring and
   attribute docstrings not counted).

And the tests mirror the package: test file names are unique across `tests/`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dgsnet"

# Layer of each module, bottom (0) to top, as docs/architecture.md lists them. A module is
# placed by its longest matching prefix; a new module needs a line here and in that page.
LAYERS: dict[str, int] = {
    # 0 foundation: imports nothing from dgsnet (io: the error types only)
    "dgsnet.errors": 0,
    "dgsnet.io": 0,
    "dgsnet.progress": 0,
    # 1 the method
    "dgsnet.surgery": 1,
    "dgsnet.testing": 1,
    # 2 model adapters
    "dgsnet.encoders": 2,
    # 3 the wrapper (one package), the earlier paths of its modules, and the package root
    "dgsnet.wrapper": 3,
    "dgsnet.config": 3,
    "dgsnet.heads": 3,
    "dgsnet.references": 3,
    "dgsnet.stage1": 3,
    "dgsnet.lora": 3,
    "dgsnet.caches": 3,
    "dgsnet.validation": 3,
    "dgsnet.output": 3,
    "dgsnet.checkpoint": 3,
    "dgsnet": 3,
    # 4 around the wrapper: data, scoring, model building, figures
    "dgsnet.data": 4,
    "dgsnet.metrics": 4,
    "dgsnet.tables": 4,
    "dgsnet.single_class": 4,
    "dgsnet.models": 4,
    "dgsnet.plots": 4,
    "dgsnet.demo": 4,
    # 5 the training engine, and what reads or writes its run folders
    "dgsnet.training": 5,
    "dgsnet.evaluation": 5,
    "dgsnet.interop": 5,  # the package and every module in it
    "dgsnet.export": 5,  # reads run folders through evaluation; one module per format
    "dgsnet.hub": 5,
    "dgsnet.model_card": 5,
    # 6 the command line
    "dgsnet.cli": 6,
    "dgsnet.__main__": 6,
    "dgsnet.presets": 6,  # an earlier path of dgsnet.cli.presets, used by the CLI only
}

# Order inside the wrapper package, bottom to top: the parts know nothing of the class
# that assembles them (each takes values or a small protocol of its public members).
WRAPPER_ORDER: dict[str, float] = {
    "dgsnet.wrapper.config": 0,
    "dgsnet.wrapper.caches": 0,
    "dgsnet.wrapper.output": 0,
    "dgsnet.wrapper.captions": 0,
    "dgsnet.wrapper.card": 0,
    "dgsnet.wrapper.heads": 1,
    "dgsnet.wrapper.lora": 1,
    "dgsnet.wrapper.validation": 1,
    "dgsnet.wrapper.references": 2,
    "dgsnet.wrapper.text": 2,
    "dgsnet.wrapper.teacher": 2,
    "dgsnet.wrapper.checkpoint": 2,
    "dgsnet.wrapper.stage1": 2,
    "dgsnet.wrapper.terms": 3,
    "dgsnet.wrapper.locate": 3,
    "dgsnet.wrapper.sharing": 3.5,
    "dgsnet.wrapper.model": 4,
    "dgsnet.wrapper": 5,
}

# Known violations of rules 2 and 3, each a bug to fix (move the shared piece down, make the
# name public); empty, and to stay so. An entry that no longer occurs fails
# `test_allow_lists_hold_only_real_violations`.
KNOWN_CYCLES: set[frozenset[str]] = set()
KNOWN_PRIVATE_READS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, *, type_checking: bool) -> Iterator[ast.AST]:
    """Every node below `node`; the bodies of `if TYPE_CHECKING:` only when asked."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test) and not type_checking:
            for other in child.orelse:
                yield other
                yield from _walk(other, type_checking=type_checking)
            continue
        yield child
        yield from _walk(child, type_checking=type_checking)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def _target(node: ast.ImportFrom, package: str) -> str:
    if node.level:
        base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))
    return node.module or ""


def import_edges(name: str, *, type_checking: bool) -> list[tuple[str, str]]:
    """`(module imported, name imported or "")` for every dgsnet import of module `name`."""
    path = MODULES[name]
    package = _package_of(name, path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, str]] = []
    for node in _walk(tree, type_checking=type_checking):
        if isinstance(node, ast.Import):
            found.extend((a.name, "") for a in node.names if a.name.split(".")[0] == "dgsnet")
        elif isinstance(node, ast.ImportFrom):
            target = _target(node, package)
            if target.split(".")[0] != "dgsnet":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                # `from . import tables` imports the module; any other name comes from target
                found.append((sub, "") if _is_module(sub) else (target, alias.name))
    return found


def imports_of(name: str, *, type_checking: bool = False) -> set[str]:
    """The dgsnet modules `name` imports (at run time, or also for annotations)."""
    return {m for m, _ in import_edges(name, type_checking=type_checking)} - {name}


def layer_of(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


# -- rule 1: layers ---------------------------------------------------------------------------
def test_the_import_parser_sees_relative_lazy_and_annotation_imports() -> None:
    # relative, at module level: the wrapper's model imports the surgery
    assert "dgsnet.surgery" in imports_of("dgsnet.wrapper.model")
    # `from . import x` names the module x
    assert "dgsnet.wrapper.model" in imports_of("dgsnet.wrapper")
    # inside a function: the config's to_json imports io lazily
    assert "dgsnet.io" in imports_of("dgsnet.wrapper.config")
    # under TYPE_CHECKING: seen only when asked
    probe = [m for m in MODULES if "TYPE_CHECKING:" in MODULES[m].read_text()]
    for m in probe:
        assert imports_of(m) <= imports_of(m, type_checking=True)


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in MODULES if not any(m == p or m.startswith(p + ".") for p in LAYERS)]
    assert not unplaced, (
        f"modules with no layer: {unplaced}; add them to LAYERS here and to docs/architecture.md"
    )


def test_no_module_imports_a_higher_layer() -> None:
    bad = sorted((a, b) for a in MODULES for b in imports_of(a) if layer_of(b) > layer_of(a))
    assert not bad, "imports of a higher layer (see docs/architecture.md): " + ", ".join(
        f"{a} -> {b} (layer {layer_of(a)} -> {layer_of(b)})" for a, b in bad
    )


def test_the_wrapper_parts_do_not_import_what_assembles_them() -> None:
    wrapper = [m for m in MODULES if m == "dgsnet.wrapper" or m.startswith("dgsnet.wrapper.")]
    unplaced = [m for m in wrapper if m not in WRAPPER_ORDER]
    assert not unplaced, f"wrapper modules missing from WRAPPER_ORDER: {unplaced}"
    bad = [
        f"{a} -> {b}"
        for a in wrapper
        for b in imports_of(a, type_checking=True)
        if b in WRAPPER_ORDER and WRAPPER_ORDER[b] >= WRAPPER_ORDER[a]
    ]
    assert not bad, "a wrapper part imports one at its level or above: " + ", ".join(bad)


@pytest.mark.parametrize(
    ("lower", "allowed"),
    [
        # the method stands alone: surgery needs only itself and the error types
        ("dgsnet.surgery", ("dgsnet.surgery", "dgsnet.errors")),
        # the test kit of the method checks rules and nothing else
        ("dgsnet.testing", ("dgsnet.testing", "dgsnet.surgery", "dgsnet.errors")),
        # the foundation imports nothing from dgsnet but the error types
        ("dgsnet.errors", ()),
        ("dgsnet.io", ("dgsnet.errors",)),
        ("dgsnet.progress", ()),
        # encoders know the model libraries, not the method or the wrapper
        ("dgsnet.encoders", ("dgsnet.encoders", "dgsnet.errors", "dgsnet.io")),
        # the wrapper: the method, the encoders and the foundation, never data or training
        (
            "dgsnet.wrapper",
            (
                "dgsnet.wrapper",
                "dgsnet.surgery",
                "dgsnet.encoders",
                "dgsnet.errors",
                "dgsnet.io",
                "dgsnet.progress",
            ),
        ),
    ],
)
def test_bottom_layers_import_only_what_they_may(lower: str, allowed: tuple[str, ...]) -> None:
    for name in MODULES:
        if name != lower and not name.startswith(lower + "."):
            continue
        for target in imports_of(name, type_checking=True):
            ok = any(target == a or target.startswith(a + ".") for a in allowed)
            assert ok, f"{name} imports {target}; it may import only {allowed or 'nothing'}"


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("dgsnet.wrapper", ("dgsnet.training", "dgsnet.cli", "dgsnet.evaluation", "dgsnet.data")),
        ("dgsnet.data", ("dgsnet.wrapper", "dgsnet.training", "dgsnet.cli")),
        # the engine never reaches back to the short path of its own evaluation module
        ("dgsnet.training", ("dgsnet.cli", "dgsnet.evaluation")),
        # inside the engine: the run folder, the run state and the evaluation sit below the
        # trainer (which assembles them) and never import it
        (
            "dgsnet.training.evaluation",
            ("dgsnet.training.trainer", "dgsnet.training.api", "dgsnet.training.step"),
        ),
        ("dgsnet.training.run_state", ("dgsnet.training.trainer", "dgsnet.training.evaluation")),
        (
            "dgsnet.training.run_folder",
            ("dgsnet.training.trainer", "dgsnet.training.run_state", "dgsnet.training.evaluation"),
        ),
    ],
)
def test_named_boundaries(module: str, forbidden: tuple[str, ...]) -> None:
    for name in MODULES:
        if name != module and not name.startswith(module + "."):
            continue
        for target in imports_of(name, type_checking=True):
            hit = [f for f in forbidden if target == f or target.startswith(f + ".")]
            assert not hit, f"{name} imports {target}, which it must not"


# -- rule 2: cycles ---------------------------------------------------------------------------
def import_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports (every import, annotations included)."""
    return {m: imports_of(m, type_checking=True) & set(MODULES) for m in MODULES}


def component(module: str) -> str:
    """The package a module belongs to (`dgsnet.wrapper.model` -> `dgsnet.wrapper`), or
    the module itself at the top (`dgsnet.metrics`)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def package_graph() -> dict[str, set[str]]:
    """Top-level component -> the components it imports (the package root `dgsnet`, which
    re-exports the public names, is left out)."""
    graph: dict[str, set[str]] = {}
    for m, targets in import_graph().items():
        if m == "dgsnet":
            continue
        graph.setdefault(component(m), set()).update(
            component(t) for t in targets if t != "dgsnet" and component(t) != component(m)
        )
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
    assert cycles({"a": {"b"}, "b": set()}) == []


def all_cycles() -> list[frozenset[str]]:
    return cycles(import_graph()) + cycles(package_graph())


def test_no_import_cycle() -> None:
    new = [c for c in all_cycles() if c not in KNOWN_CYCLES]
    assert not new, "import cycles (TYPE_CHECKING, lazy and function-level imports count): " + (
        "; ".join(" <-> ".join(sorted(c)) for c in new)
    )


# -- rule 3: private names --------------------------------------------------------------------
def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dgsnet_classes() -> set[str]:
    names = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and not _private(node.name):
                names.add(node.name)
    return names


CLASSES = _dgsnet_classes()


def _annotated_params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """Parameters (not `self`/`cls`) annotated with a dgsnet class."""
    out = set()
    args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
    for a in args:
        if a.arg in ("self", "cls") or a.annotation is None:
            continue
        names = {n.id for n in ast.walk(a.annotation) if isinstance(n, ast.Name)}
        names |= {
            n.value
            for n in ast.walk(a.annotation)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        }
        if any(word in CLASSES for n in names for word in n.replace("|", " ").split()):
            out.add(a.arg)
    return out


def private_reads(name: str) -> set[tuple[str, str]]:
    """`(what, where)` for each private name `name` reads from another module."""
    path = MODULES[name]
    package = _package_of(name, path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[tuple[str, str]] = set()
    module_aliases: set[str] = set()
    for target, imported in import_edges(name, type_checking=True):
        if imported and _private(imported):
            found.add((f"{target}.{imported}", "from-import"))
        last = target.rsplit(".", 1)[-1]
        owner = target.rsplit(".", 1)[0]
        if _private(last) and not (package == owner or package.startswith(owner + ".")):
            found.add((target, "private module"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and _target(node, package).startswith("dgsnet"):
            tgt = _target(node, package)
            module_aliases |= {
                a.asname or a.name for a in node.names if _is_module(f"{tgt}.{a.name}")
            }
        elif isinstance(node, ast.Import):
            module_aliases |= {
                a.asname or a.name for a in node.names if a.name.startswith("dgsnet")
            }
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            params = _annotated_params(node)
            for sub in ast.walk(node):
                if (
                    isinstance(sub, ast.Attribute)
                    and isinstance(sub.value, ast.Name)
                    and sub.value.id in params
                    and _private(sub.attr)
                ):
                    found.add((f"{sub.value.id}.{sub.attr}", f"line {sub.lineno}"))
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
            and _private(node.attr)
        ):
            found.add((f"{node.value.id}.{node.attr}", f"line {node.lineno}"))
    return found


def test_the_private_read_finder_sees_each_form(tmp_path: Path) -> None:
    src = (
        "from dgsnet.wrapper.model import _lookup_tensor\n"
        "from dgsnet import io\n"
        "def f(w: 'DGSWrapper', x: int) -> None:\n"
        "    w._features(x)\n"
        "    io._private_helper()\n"
        "    x._fine_on_an_int\n"
    )
    path = PACKAGE / "_architecture_probe.py"
    path.write_text(src)
    try:
        MODULES["dgsnet._architecture_probe"] = path
        found = {what for what, _ in private_reads("dgsnet._architecture_probe")}
    finally:
        MODULES.pop("dgsnet._architecture_probe")
        path.unlink()
    assert found == {
        "dgsnet.wrapper.model._lookup_tensor",
        "w._features",
        "io._private_helper",
    }


def test_no_module_reads_another_modules_private_names() -> None:
    bad = sorted(
        (m, what, where)
        for m in MODULES
        for what, where in private_reads(m)
        if (m, what) not in KNOWN_PRIVATE_READS
    )
    assert not bad, "private names read across modules: " + "; ".join(
        f"{m} reads {what} ({where})" for m, what, where in bad
    )


def test_allow_lists_hold_only_real_violations() -> None:
    real_cycles = set(all_cycles())
    assert KNOWN_CYCLES <= real_cycles, f"fixed, remove: {KNOWN_CYCLES - real_cycles}"
    real_reads = {(m, what) for m in MODULES for what, _ in private_reads(m)}
    stale = KNOWN_PRIVATE_READS - real_reads
    assert not stale, f"fixed, remove from KNOWN_PRIVATE_READS: {stale}"


# -- the tests mirror the package -------------------------------------------------------------
def test_test_files_have_unique_names_and_areas_are_folders() -> None:
    """pytest imports the test files of `tests/<area>/` (no `__init__.py`) by base name, so
    two files of one name in two areas would collide; each area is a plain folder."""
    tests = ROOT / "tests"
    names: dict[str, list[str]] = {}
    for path in tests.rglob("test_*.py"):
        names.setdefault(path.name, []).append(path.relative_to(tests).as_posix())
    clashes = {n: p for n, p in names.items() if len(p) > 1}
    assert not clashes, f"test files sharing a name: {clashes}"
    areas = [d for d in tests.iterdir() if d.is_dir() and d.name not in ("helpers", "__pycache__")]
    assert not [d.name for d in areas if (d / "__init__.py").exists()]


# -- each name from its home (the CLI included) --------------------------------------------------
def _defined_names(path: Path) -> set[str]:
    """Names a module defines at its top level (def, class, assignment), not imports."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        names.add(n.id)
    return names


DEFINED = {m: _defined_names(p) for m, p in MODULES.items()}


def homes(name: str) -> set[str]:
    """The components (`dgsnet.training`, `dgsnet.models`, ...) whose modules define `name`."""
    return {component(m) for m, names in DEFINED.items() if name in names}


def borrowed_imports(module: str) -> list[str]:
    """`from X import name` in `module` where X's component does not define `name` (a name
    imported through another component's re-export)."""
    bad = []
    for target, name in import_edges(module, type_checking=True):
        if name and name != "*" and homes(name) and component(target) not in homes(name):
            bad.append(f"{name} from {target} (defined in {sorted(homes(name))})")
    return bad


def test_the_home_finder_sees_a_borrowed_name() -> None:
    # dgsnet.training re-exports the model factory of dgsnet.models
    assert homes("build_model") == {"dgsnet.models"}
    assert component("dgsnet.training") not in homes("build_model")


def test_each_name_is_imported_from_its_home() -> None:
    """The CLI, and every module but a package's `__init__` (which re-exports by design),
    imports a name from the package that defines it, not through another's re-export."""
    bad = {
        m: borrowed_imports(m)
        for m in MODULES
        if component(m) == "dgsnet.cli" or MODULES[m].name != "__init__.py"
    }
    bad = {m: b for m, b in bad.items() if b}
    assert not bad, f"names imported through another package's re-export: {bad}"


# -- sizes ------------------------------------------------------------------------------------
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60


def _is_docstring(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body, from its first statement after the docstring to its last;
    the signature, the docstring and attribute docstrings (bare strings) are not counted."""
    body = fn.body[1:] if fn.body and _is_docstring(fn.body[0]) else fn.body
    if not body:
        return 0
    lines = set(range(body[0].lineno, (body[-1].end_lineno or body[-1].lineno) + 1))
    for node in ast.walk(fn):
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            for st in stmts if isinstance(stmts, list) else []:
                if _is_docstring(st):
                    lines -= set(range(st.lineno, (st.end_lineno or st.lineno) + 1))
    return len(lines)


def test_body_lines_counts_code_not_docstrings() -> None:
    src = (
        'def f(\n    a,\n):\n    """Doc.\n\n    More."""\n'
        '    x = 1\n    """attr doc"""\n\n    return x\n'
    )
    fn = ast.parse(src).body[0]
    assert isinstance(fn, ast.FunctionDef)
    assert body_lines(fn) == 3  # x = 1, the blank line, return x


def test_no_module_over_600_lines_and_no_function_body_over_60() -> None:
    long_modules, long_functions = [], []
    for name, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{name} ({len(text.splitlines())} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = body_lines(node)
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name} (line {node.lineno}: {n} lines)")
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"function bodies over {MAX_FUNCTION_LINES} lines: {long_functions}"


# -- the page and the test agree --------------------------------------------------------------
def documented_layers() -> dict[str, int]:
    """`{module: layer}` from the layer table of docs/architecture.md (`x/`: package x)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## The layers, bottom to top", 1)[1].split("\n## ", 1)[0]
    found: dict[str, int] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0][:1].isdigit():
            continue
        layer = int(cells[0].split()[0])
        for name in re.findall(r"`([^`]+)`", cells[1]):
            name = name.rstrip("/")
            found[name if name == "dgsnet" else f"dgsnet.{name}"] = layer
    return found


def test_the_layer_table_of_the_docs_matches_layers() -> None:
    assert documented_layers() == LAYERS
