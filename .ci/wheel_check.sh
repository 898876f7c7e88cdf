#!/usr/bin/env bash
# Build the sdist and the wheel, check what the wheel holds, install it into a fresh virtual
# environment outside the checkout, and run `dgsnet --version` and the packaged demo from a
# directory outside the checkout. Usage: .ci/wheel_check.sh [PYTHON]  (PYTHON must have `build`;
# default .venv/bin/python). Everything it makes lives in one temporary folder, removed at exit.
set -euo pipefail
unset PYTHONPATH  # the fresh venv must see only what it installed
cd "$(dirname "$0")/.."
root=$PWD
py=${1:-.venv/bin/python}
work=$(mktemp -d "${TMPDIR:-/tmp}/dgsnet-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT
case "$work" in "$root"/*) echo "wheel_check: temp dir $work is inside the checkout" >&2; exit 1;; esac

t0=$(date +%s)
echo "+ $py -m build --outdir $work/dist ."
"$py" -m build --outdir "$work/dist" . > "$work/build.log" 2>&1 || { tail -50 "$work/build.log"; exit 1; }
ls -l "$work/dist"
wheel=$(ls "$work"/dist/dgsnet-*.whl)
ls "$work"/dist/dgsnet-*.tar.gz > /dev/null

"$py" - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
tops = sorted({n.split("/")[0] for n in names})
print(f"wheel: {len(names)} files; top-level entries: {tops}")
assert "dgsnet/py.typed" in names, "the wheel lacks dgsnet/py.typed"
assert "dgsnet/demo.py" in names, "the wheel lacks dgsnet/demo.py"
bad = [n for n in names if n.startswith(("tests/", "examples/", "benchmarks/", "docs/"))
       or "/tests/" in n or n.split("/")[-1].startswith("test_") or "__pycache__" in n]
assert not bad, f"the wheel holds files that are not the library: {bad}"
assert all(t == "dgsnet" or t.startswith("dgsnet-") for t in tops), tops
PY
t1=$(date +%s)

echo "+ python3 -m venv $work/venv && $work/venv/bin/pip install -q $wheel"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$wheel" > "$work/install.log" 2>&1 || { tail -50 "$work/install.log"; exit 1; }
t2=$(date +%s)
echo "wheel_check: fresh venv install took $((t2 - t1)) s; venv size $(du -sh "$work/venv" | cut -f1)"

mkdir "$work/elsewhere"
cd "$work/elsewhere"
echo "+ (cd $PWD) dgsnet --version"
version=$("$work/venv/bin/dgsnet" --version)
echo "$version"
expected="dgsnet $(basename "$wheel" | cut -d- -f2)"
[ "$version" = "$expected" ] || { echo "dgsnet --version: expected '$expected', got '$version'" >&2; exit 1; }
"$work/venv/bin/python" - "$work/venv" <<'PY'
import sys, dgsnet
from pathlib import Path
where = Path(dgsnet.__file__).resolve()
print(f"dgsnet {dgsnet.__version__} imported from {where}")
assert Path(sys.argv[1]).resolve() in where.parents, "dgsnet was not imported from the fresh venv"
assert (where.parent / "py.typed").is_file()
PY
echo "+ (cd $PWD) python -m dgsnet.demo --no-progress"
"$work/venv/bin/python" -m dgsnet.demo --no-progress | tee "$work/demo.out"
grep -q "held-out accuracy after DGS fine-tuning" "$work/demo.out"
t3=$(date +%s)
echo "wheel_check: build $((t1 - t0)) s, install $((t2 - t1)) s, demo $((t3 - t2)) s"
