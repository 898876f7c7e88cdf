"""Griffe extension for the docs build: render the package's remaining reST docstring markup.

The package's docstrings use Google sections (``Args:``, ``Returns:``, ``Raises:``), but some
older ones still carry reST markup. Until they are all converted, this extension rewrites that
markup into Markdown before mkdocstrings parses the docstrings, so the API reference renders
cleanly:

- roles: ``:class:`~a.b.C` `` becomes `` `C` ``, ``:func:`a.f` `` becomes `` `a.f` ``, and
  ``:math:`x` `` becomes ``$x$``;
- ``.. math::`` blocks become ``$$ ... $$`` display math;
- a paragraph ending in ``::`` ends in ``:`` and its indented literal block becomes a fenced
  code block;
- doctest lines (``>>>``) outside an ``Examples:`` section become a fenced ``pycon`` block;
- reST simple tables (``=== ===`` rulers) become Markdown tables;
- an ``Args:`` entry naming several parameters at once (``a / b / c: text``) becomes one
  entry per parameter, each with the shared text.

The rewrite is text-only and idempotent; nothing is done to code inside Markdown fences.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(class|func|meth|attr|mod|data|exc|obj|const|py:\w+):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_GROUPED_ARG = re.compile(r"^( +)(\w+(?: / \w+)+): (.*)$")
_RULER = re.compile(r"^ *=+( +=+)+ *$")
_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Other Parameters|"
    r"Returns|Return|Yields|Yield|Receives|Raises|Raise|Exceptions|Warns|Warnings|Attributes|"
    r"Examples?|Functions|Methods|Classes|Modules|Type Aliases|Note|Notes|Todo|See Also)\s*:\s*$"
)


def _role(match: re.Match[str]) -> str:
    tilde, target = match.group(2), match.group(3)
    target = target.strip()
    if tilde:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _convert_table(lines: list[str]) -> list[str]:
    """A reST simple table (ruler, header, ruler, rows, ruler) as a Markdown table."""
    ruler = lines[0]
    cols = [(m.start(), m.end()) for m in re.finditer(r"=+", ruler)]

    def cells(row: str) -> list[str]:
        out = []
        for i, (start, _end) in enumerate(cols):
            stop = cols[i + 1][0] if i + 1 < len(cols) else len(row)
            out.append(row[start:stop].strip())
        return out

    body = [ln for ln in lines[1:] if not _RULER.match(ln) and ln.strip()]
    header, rows = body[0], body[1:]
    pad = " " * _indent(ruler)
    md = [pad + "| " + " | ".join(cells(header)) + " |", pad + "|" + "---|" * len(cols)]
    md += [pad + "| " + " | ".join(cells(r)) + " |" for r in rows]
    return md


def rewrite(text: str) -> str:
    """Return ``text`` with its reST markup rewritten as Markdown (see the module doc)."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    in_fence = False
    in_section = False
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
            out.append(line)
            i += 1
            continue
        if in_fence:
            out.append(line)
            i += 1
            continue
        if _SECTION.match(line):
            in_section = True
        elif stripped and _indent(line) == 0:
            in_section = False
        grouped = _GROUPED_ARG.match(line) if in_section else None
        if grouped:
            pad, names, first = grouped.groups()
            j = i + 1
            cont: list[str] = []
            while j < len(lines) and lines[j].strip() and _indent(lines[j]) > len(pad):
                cont.append(lines[j])
                j += 1
            for name in names.split(" / "):
                out.append(_inline(f"{pad}{name}: {first}"))
                out.extend(_inline(c) for c in cont)
            i = j
            continue
        # reST simple table: ruler, header, ruler, rows..., ruler
        if _RULER.match(line):
            j = i + 1
            rulers = 1
            while j < len(lines) and lines[j].strip():
                if _RULER.match(lines[j]):
                    rulers += 1
                j += 1
                if rulers == 3:
                    break
            if rulers == 3:
                out.extend(_convert_table(lines[i:j]))
                i = j
                continue
        # .. math:: block (content on the same line or indented below)
        if stripped.startswith(".. math::"):
            base = _indent(line)
            pad = " " * base
            first = stripped[len(".. math::") :].strip()
            body: list[str] = [first] if first else []
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
                body.append(lines[j].strip())
                j += 1
            while body and not body[-1]:
                body.pop()
            while body and not body[0]:
                body.pop(0)
            if out and out[-1].strip():
                out.append("")
            out.extend([pad + "$$", *(pad + b for b in body if b), pad + "$$", ""])
            i = j
            continue
        # doctest outside a Google Examples section
        if stripped.startswith(">>>") and not in_section:
            base = _indent(line)
            pad = " " * base
            j = i
            block: list[str] = []
            while j < len(lines) and lines[j].strip():
                block.append(lines[j][base:] if _indent(lines[j]) >= base else lines[j].strip())
                j += 1
            if out and out[-1].strip():
                out.append("")
            out.extend([pad + "```pycon", *(pad + b for b in block), pad + "```"])
            i = j
            continue
        # paragraph ending in "::" followed by an indented literal block
        if stripped.endswith("::") and not stripped.startswith(".."):
            base = _indent(line)
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > base:
                lit_base = _indent(lines[j])
                k = j
                block = []
                while k < len(lines) and (not lines[k].strip() or _indent(lines[k]) >= lit_base):
                    block.append(lines[k][lit_base:])
                    k += 1
                while block and not block[-1].strip():
                    block.pop()
                text_part = line.rstrip()[:-2].rstrip()
                if text_part.strip():
                    out.append(_inline(text_part + ":"))
                    out.append("")
                pad = " " * base
                out.extend([pad + "```text", *(pad + b if b else "" for b in block), pad + "```"])
                if k < len(lines) and lines[k].strip():
                    out.append("")
                i = k
                continue
        out.append(_inline(line))
        i += 1
    return "\n".join(out)


def _inline(line: str) -> str:
    line = _MATH_ROLE.sub(lambda m: f"${m.group(1)}$", line)
    return _ROLE.sub(_role, line)


class ReSTDocstrings(griffe.Extension):
    """Rewrite reST docstring markup as Markdown on every loaded object."""

    def __init__(self) -> None:
        super().__init__()
        self._done: set[int] = set()

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        doc = obj.docstring
        if doc is None or id(doc) in self._done:
            return
        doc.value = rewrite(doc.value)
        self._done.add(id(doc))
