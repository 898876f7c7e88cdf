#!/usr/bin/env bash
# GPU check for a lent CUDA machine: the suite's GPU tests, then the step benchmark with
# open_clip ViT-L-14 (random init), 224 px, batch 32, bf16 autocast, then the paper-setting
# step (ViT-L-14 random init, batch 32, DGSConfig.reference(), the trainer's StepRunner) in
# each precision (fp32, tf32, bf16, fp16), printed side by side as ratios to fp32. Sized to
# finish in under 9 minutes on one H100/H200-class GPU: expected about 1.5-2 minutes of tests
# (the fused surgery compiles with torch.compile), 2.5-3 minutes of step benchmark (six short
# memory processes, then 10 timed rounds) and under 2 minutes of precision timing (4 x 13
# steps plus model set-up); each part runs under its own timeout (180 s + 200 s + 150 s), so
# that a hang cannot eat the machine's budget.
#
#   bash benchmarks/gpu_check.sh                 # from the repository root or anywhere
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh
#   OUT=/some/dir bash benchmarks/gpu_check.sh   # also write the raw benchmark JSON there
#   SKIP_STEP_OVERHEAD=1 bash benchmarks/gpu_check.sh   # tests + precision timing only
#
# Exit status: that of the tests if they fail, else the first failing benchmark's.
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
timeout 180 "$PY" -m pytest -m gpu -q -rs tests
tests_rc=$?
echo "pytest -m gpu: exit $tests_rc ($(( $(date +%s) - start )) s so far)"

bench_rc=0
if [[ -z "${SKIP_STEP_OVERHEAD:-}" ]]; then
    echo
    echo "== step benchmark: ViT-L-14, 224 px, batch 32, bf16 autocast"
    timeout 200 "$PY" benchmarks/step_overhead.py --device cuda --dtype bf16 --model ViT-L-14 \
        --batch 32 --rounds 10 --warmup 2 --mem-steps 2 --json "$OUT_DIR/gpu_step_overhead.json"
    bench_rc=$?
    echo "benchmark: exit $bench_rc; $(( $(date +%s) - start )) s so far"
fi

echo
echo "== paper-setting step per precision: ViT-L-14, batch 32, DGSConfig.reference()"
timeout 150 "$PY" benchmarks/precision_step.py --device cuda --model ViT-L-14 --batch 32 \
    --steps 10 --warmup 3 --json "$OUT_DIR/gpu_precision_step.json"
prec_rc=$?
echo "precision timing: exit $prec_rc; total $(( $(date +%s) - start )) s"

if [[ $tests_rc -ne 0 ]]; then
    exit "$tests_rc"
fi
if [[ $bench_rc -ne 0 ]]; then
    exit "$bench_rc"
fi
exit "$prec_rc"
