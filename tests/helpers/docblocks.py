"""The code blocks of README.md and docs/, found by reading the Markdown (nothing is listed by
hand, so a page added later is covered the day it is written).

A block is fenced with three or more backticks or tildes; its language is the first word of
the info string. Python blocks (`python`, `py`) and shell blocks (`bash`, `sh`, `shell`,
`console`) run in the docs tests; `json` blocks must parse; every other language (and no
language: output, folder trees) is text.

A block that cannot run in the test suite carries a marker, an HTML comment (invisible on the
rendered page) on the lines just above its opening fence, among any other comments there:

    <!-- docs-test: needs weights: the ViT-L/14 OpenAI weights -->

`needs` takes one or more kinds, comma-separated, from `MARKER_KINDS`, then a colon and the
reason, which is required (for a `fragment`, the test that runs the lines in their
program). A marked block is still checked: Python must compile, a shell
block must pass `bash -n`, and every `dgsnet ...` command in it must parse with the CLI's
own argument parser.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: why a block may be left unrun: each needs something the test machine does not have
MARKER_KINDS = {
    "weights": "pretrained weights or a published checkpoint (a download)",
    "gpu": "a CUDA device (or several)",
    "network": "network access beyond the test (installing from PyPI)",
    "long": "minutes to hours of computing (a benchmark or study whose figures a page reports)",
    "fragment": "lines out of a larger program (e.g. methods of your own class); the reason "
    "names the test that runs them in that program",
}
PYTHON = {"python", "py"}
SHELL = {"bash", "sh", "shell", "console"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<body>.*?)\s*-->\s*$")
_COMMENT = re.compile(r"^\s*<!--.*-->\s*$")


@dataclass(frozen=True)
class Marker:
    """A `<!-- docs-test: needs KIND[, KIND]: REASON -->` comment above a block."""

    kinds: tuple[str, ...]
    reason: str
    text: str


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown page."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: Marker | None

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.lang in PYTHON | SHELL

    @property
    def kind(self) -> str:
        return "python" if self.lang in PYTHON else "shell" if self.lang in SHELL else self.lang


def pages(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown page under docs/, in a fixed order."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def parse_marker(text: str) -> Marker:
    """The marker in the body of a `docs-test:` comment; `ValueError` when malformed."""
    m = re.match(r"^needs\s+(?P<kinds>[\w\s,-]+?)\s*:\s*(?P<reason>.*)$", text)
    if not m:
        raise ValueError(f"expected 'docs-test: needs KIND[, KIND]: REASON', got {text!r}")
    kinds = tuple(k.strip() for k in m.group("kinds").split(",") if k.strip())
    unknown = [k for k in kinds if k not in MARKER_KINDS]
    if not kinds or unknown:
        raise ValueError(
            f"unknown kind {unknown or kinds} in {text!r}; kinds: {list(MARKER_KINDS)}"
        )
    if not m.group("reason").strip():
        raise ValueError(f"a marker needs a reason after the colon: {text!r}")
    return Marker(kinds, m.group("reason").strip(), text)


def _marker_above(lines: list[str], fence: int) -> Marker | None:
    i = fence - 1
    while i >= 0 and (not lines[i].strip() or _COMMENT.match(lines[i])):
        m = _MARKER.match(lines[i])
        if m:
            return parse_marker(m.group("body"))
        i -= 1
    return None


def blocks(page: Path) -> list[Block]:
    """Every fenced block of `page`, in order (fences indented in a list item included)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = m.group("indent"), m.group("fence")
        info = m.group("info").strip().lstrip("{").strip()
        lang = info.split()[0].lstrip(".").lower() if info else ""
        body: list[str] = []
        j = i + 1
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        while j < len(lines) and not closing.match(lines[j]):
            line = lines[j]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            j += 1
        if j == len(lines):
            raise ValueError(f"{page}:{i + 1}: a code block is never closed")
        found.append(Block(page, i + 1, lang, "\n".join(body) + "\n", _marker_above(lines, i)))
        i = j + 1
    return found


def all_blocks(root: Path = ROOT) -> list[Block]:
    """The blocks of every page of `pages(root)`."""
    return [b for page in pages(root) for b in blocks(page)]


def shell_commands(code: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines
    dropped (a `$ ` prompt is removed)."""
    joined = re.sub(r"\\\n", " ", code)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        if line and not line.startswith("#"):
            out.append(line)
    return out


def dgsnet_argvs(code: str) -> list[list[str]]:
    """The argument lists of every `dgsnet ...` command in a shell block (each command of a
    `&&`, `;` or `|` chain; a trailing comment, redirection or pipe ends it)."""
    argvs = []
    for command in shell_commands(code):
        words = shlex.split(command, comments=True)
        current: list[str] | None = None
        for word in [*words, ";"]:
            if word in {"&&", "||", ";", "|"} or word.startswith((">", "<", "2>")):
                if current is not None:
                    argvs.append(current)
                current = None
            elif current is not None:
                current.append(word)
            elif word == "dgsnet":
                current = []
    return argvs
