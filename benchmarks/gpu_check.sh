#!/usr/bin/env bash
# GPU check for a lent CUDA machine: the suite's GPU tests, then the step benchmark with
# open_clip ViT-L-14 (random init), 224 px, batch 32, bf16 autocast. Sized to finish in
# under 6 minutes on one H100/H200-class GPU: expected about 1-1.5 minutes of tests (the fused
# surgery compiles with torch.compile) and 2.5-3 minutes of benchmark (six short memory
# processes, then 10 timed rounds); each part runs under its own timeout (140 s + 200 s), so
# that a hang cannot eat the machine's budget.
#
#   bash benchmarks/gpu_check.sh                 # from the repository root or anywhere
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh
#   OUT=/some/dir bash benchmarks/gpu_check.sh   # also write the raw benchmark JSON there
#
# Exit status: that of the tests if they fail, else that of the benchmark.
set -uo pipefail

cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python3
fi
OUT_DIR="${OUT:-/tmp}"
mkdir -p "$OUT_DIR"
start=$(date +%s)

echo "== device"
"$PY" - <<'EOF' || { echo "no CUDA device: nothing to check"; exit 2; }
import sys, torch
if not torch.cuda.is_available():
    sys.exit(1)
p = torch.cuda.get_device_properties(0)
print(f"{torch.cuda.get_device_name(0)}: {p.total_memory / 2**30:.0f} GiB, "
      f"capability {p.major}.{p.minor}, {torch.cuda.device_count()} device(s); "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 supported: "
      f"{torch.cuda.is_bf16_supported()}")
EOF
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv,noheader 2>/dev/null || true

echo
echo "== pytest -m gpu"
timeout 140 "$PY" -m pytest -m gpu -q -rs tests
tests_rc=$?
echo "pytest -m gpu: exit $tests_rc ($(( $(date +%s) - start )) s so far)"

echo
echo "== step benchmark: ViT-L-14, 224 px, batch 32, bf16 autocast"
timeout 200 "$PY" benchmarks/step_overhead.py --device cuda --dtype bf16 --model ViT-L-14 \
    --batch 32 --rounds 10 --warmup 2 --mem-steps 2 --json "$OUT_DIR/gpu_step_overhead.json"
bench_rc=$?
echo "benchmark: exit $bench_rc; total $(( $(date +%s) - start )) s"

if [[ $tests_rc -ne 0 ]]; then
    exit "$tests_rc"
fi
exit "$bench_rc"
