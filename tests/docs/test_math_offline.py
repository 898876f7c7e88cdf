"""The documentation site renders its math offline: KaTeX is served from the site itself (no
CDN), every file the site's pages load exists, and KaTeX renders every formula of the docs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
KATEX = DOCS / "javascripts" / "katex"


def mkdocs_config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_the_site_loads_no_script_or_style_from_another_host():
    cfg = mkdocs_config()
    assets = [*cfg.get("extra_javascript", []), *cfg.get("extra_css", [])]
    assert any("katex" in str(a) for a in assets)
    for asset in assets:
        path = asset if isinstance(asset, str) else asset["path"]
        assert not re.match(r"^(https?:)?//", path), f"{path} is loaded from another host"
        assert (DOCS / path).is_file(), f"mkdocs.yml names {path}, which docs/ does not hold"
    assert "http" not in (DOCS / "javascripts" / "katex-init.js").read_text()


def test_every_font_the_stylesheet_names_is_shipped():
    css = (KATEX / "katex.min.css").read_text()
    urls = re.findall(r"url\(([^)]+)\)", css)
    assert len(urls) == 20
    for url in urls:
        assert (KATEX / url).is_file(), url
    assert "MIT" in (KATEX / "LICENSE").read_text()


def _formulas() -> list[tuple[str, str, bool]]:
    """(page, TeX, display) of every formula of docs/*.md, outside code."""
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        text = re.sub(r"^(```|~~~).*?^\1", "", page.read_text(), flags=re.S | re.M)
        text = re.sub(r"`[^`\n]*`", "", text)
        for m in re.finditer(r"\$\$(.+?)\$\$", text, flags=re.S):
            found.append((page.name, m.group(1).strip(), True))
        text = re.sub(r"\$\$(.+?)\$\$", "", text, flags=re.S)
        for m in re.finditer(r"(?<![\\$])\$(?!\s)([^$\n]+?)(?<!\s)\$(?!\d)", text):
            found.append((page.name, m.group(1), False))
    return found


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run KaTeX")
def test_katex_renders_every_formula_of_the_docs(tmp_path):
    formulas = _formulas()
    assert len(formulas) > 20
    script = tmp_path / "render.js"
    script.write_text(
        "const katex = require(process.argv[2]);\n"
        "const items = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
        "const bad = [];\n"
        "for (const [page, tex, display] of items) {\n"
        "  try { katex.renderToString(tex, {displayMode: display, throwOnError: true}); }\n"
        "  catch (e) { bad.push(page + ': ' + tex + ' -> ' + e.message); }\n"
        "}\n"
        "console.log(JSON.stringify(bad));\n"
    )
    proc = subprocess.run(
        ["node", str(script), str(KATEX / "katex.min.js")],
        input=json.dumps(formulas),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    bad = json.loads(proc.stdout)
    assert not bad, "\n".join(bad)
