"""Every Python and shell block of README.md and docs/ runs, page by page, in document order.

The blocks are discovered by reading the Markdown (`tests/helpers/docblocks.py`), so a new
page is tested without being listed. The blocks of one page share a working directory (a
fresh workspace of small image folders, `tests/helpers/docs_env.py`) and, for Python, one
namespace, as a reader would run them one after another. Named open_clip models are the tiny
random one (no download): the commands and programs run end to end, the weights are not
what is checked.

A block that needs what a test machine lacks (downloaded weights, a GPU, the network) carries
a `<!-- docs-test: needs KIND: REASON -->` comment above it; it is not run, but its Python
must compile, its shell must pass `bash -n`, and each of its `dgsnet` commands must parse
with the CLI's argument parser.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.docblocks import (
    MARKER_KINDS,
    ROOT,
    Block,
    all_blocks,
    blocks,
    dgsnet_argvs,
    pages,
    parse_marker,
)
from tests.helpers.docs_env import (
    make_workspace,
    python_globals,
    shell_env,
    substitute_tiny_models,
)

pytestmark = pytest.mark.usefixtures("one_thread")

BLOCKS = all_blocks()
RUN_PAGES = [p for p in pages() if any(b.runnable and b.marker is None for b in blocks(p))]


def _page_param(page: Path) -> Any:
    has_shell = any(b.kind == "shell" and b.marker is None for b in blocks(page))
    marks = [pytest.mark.slow] if has_shell else []
    return pytest.param(page, id=page.relative_to(ROOT).as_posix(), marks=marks)


def _call_tests(ns: dict[str, Any], before: set[str], block: Block) -> None:
    """Call the `test_*` functions a block defined (a page that shows a test file), each
    parametrisation expanded."""
    for name, fn in list(ns.items()):
        if not name.startswith("test_") or name in before or not callable(fn):
            continue
        grids = []
        for mark in getattr(fn, "pytestmark", []):
            if mark.name == "parametrize":
                argnames = (
                    [a.strip() for a in mark.args[0].split(",")]
                    if isinstance(mark.args[0], str)
                    else list(mark.args[0])
                )
                rows = [v if len(argnames) > 1 else (v,) for v in mark.args[1]]
                grids.append([dict(zip(argnames, row, strict=True)) for row in rows])
        for combo in itertools.product(*grids) if grids else [()]:
            kwargs: dict[str, Any] = {}
            for part in combo:
                kwargs.update(part)
            try:
                fn(**kwargs)
            except Exception as exc:
                raise AssertionError(f"{block.where}: {name}({kwargs}) failed: {exc!r}") from exc


def _run_python(block: Block, ns: dict[str, Any]) -> None:
    before = set(ns)
    code = compile(block.code, block.where, "exec")
    try:
        exec(code, ns)
    except Exception as exc:
        raise AssertionError(f"{block.where}: the Python block failed: {exc!r}") from exc
    _call_tests(ns, before, block)


def _run_shell(block: Block, where: Path) -> None:
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        cwd=where,
        env=shell_env(where),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (
        f"{block.where}: the shell block exited {proc.returncode}\n"
        f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"
    )


@pytest.fixture(scope="session")
def run_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("docs-run")


@pytest.mark.parametrize("page", [_page_param(p) for p in RUN_PAGES])
def test_page_code_runs(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cache: Path
) -> None:
    where = make_workspace(tmp_path / "work", page.read_text(encoding="utf-8"), run_cache)
    monkeypatch.chdir(where)
    substitute_tiny_models(monkeypatch.setattr)
    ns: dict[str, Any] | None = None
    ran = 0
    for block in blocks(page):
        if not block.runnable or block.marker is not None:
            continue
        if block.kind == "python":
            if ns is None:
                ns = python_globals(where)
            _run_python(block, ns)
        else:
            _run_shell(block, where)
        ran += 1
    assert ran > 0


MARKED = [b for b in BLOCKS if b.runnable and b.marker is not None]


@pytest.mark.parametrize("block", MARKED, ids=[b.where for b in MARKED])
def test_marked_block_is_still_checked(block: Block) -> None:
    """A block left unrun still compiles (Python), passes `bash -n` (shell), and each of its
    `dgsnet` commands parses with the real argument parser."""
    assert block.marker is not None and block.marker.reason
    if block.kind == "python":
        compile(block.code, block.where, "exec")
        return
    proc = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
    assert proc.returncode == 0, f"{block.where}: bash -n: {proc.stderr}"
    from dgsnet.cli import build_parser
    from dgsnet.cli.options import parse_args

    for argv in dgsnet_argvs(block.code):
        try:
            parse_args(build_parser(), argv)
        except SystemExit as exc:  # argparse's exit on a bad option
            raise AssertionError(
                f"{block.where}: `dgsnet {' '.join(argv)}` does not parse"
            ) from exc


def test_blocks_are_found_on_every_page_with_code() -> None:
    """Discovery reads every page: the README and the pages known to hold code are covered."""
    runnable = {b.page.relative_to(ROOT).as_posix() for b in BLOCKS if b.runnable}
    assert {"README.md", "docs/getting-started.md", "docs/cli.md", "docs/wrapper.md"} <= runnable


def test_markers_name_a_known_kind_and_a_reason() -> None:
    for block in MARKED:
        assert block.marker is not None
        assert set(block.marker.kinds) <= set(MARKER_KINDS), block.where
        if "fragment" in block.marker.kinds:  # the program that runs the lines is named
            named = re.findall(r"tests/[\w/]+\.py", block.marker.reason)
            assert named and all((ROOT / n).is_file() for n in named), block.where
    with pytest.raises(ValueError, match="unknown kind"):
        parse_marker("needs coffee: tired")
    with pytest.raises(ValueError, match="needs a reason"):
        parse_marker("needs gpu:")
    with pytest.raises(ValueError, match="expected 'docs-test: needs"):
        parse_marker("skip this one")


_COMMAND = re.compile(
    r"^\s*(\$ |([A-Z_]+=\S* )*(dgsnet|python3?|pip|torchrun|accelerate|bash|\.venv/bin/\w+) )"
)


def test_untagged_blocks_hold_no_commands() -> None:
    """A command in a block without a language would escape the tests: tag it `bash` (or
    `text` when it is not meant to run, such as a usage synopsis)."""
    offenders = [
        b.where
        for b in BLOCKS
        if not b.lang and any(_COMMAND.match(line) for line in b.code.splitlines())
    ]
    assert not offenders, offenders


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.lang in ("json", "yaml", "yml")], ids=lambda b: b.where
)
def test_json_and_yaml_blocks_parse(block: Block) -> None:
    if block.lang == "json":
        json.loads(block.code)
    else:
        yaml = pytest.importorskip("yaml")
        assert yaml.safe_load(block.code) is not None


def test_the_harness_runs_what_it_finds(tmp_path: Path) -> None:
    """A failing block fails the page; the substitution gives the tiny model."""
    page = tmp_path / "page.md"
    page.write_text("text\n\n```python\nx = 1\n```\n\n```python\nassert x == 2, x\n```\n")
    found = blocks(page)
    assert [b.lang for b in found] == ["python", "python"]
    ns: dict[str, Any] = {}
    _run_python(found[0], ns)
    with pytest.raises(AssertionError, match="the Python block failed"):
        _run_python(found[1], ns)
