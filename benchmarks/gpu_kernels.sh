#!/usr/bin/env bash
# Kernel check on one CUDA GPU (target < 10 min on an H200): GPU kernel tests, CPU interpreter kernel tests, and
# the three kernel benchmarks. Everything lands in benchmarks/results/kernels_<UTC timestamp>/ plus a summary.json.
#
# Usage: bash benchmarks/gpu_kernels.sh            (from the repo root, with the venv active or at .venv)
# Exit status: non-zero if any test run or bench failed; each step still runs so one failure shows them all.
# Step time limits (s): GPU tests 360 (mostly Triton compiles), CPU tests 180, each bench 120; expected ~5 min total.
set -uo pipefail

cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
python -c "import torch; assert torch.cuda.is_available(), 'needs a CUDA device'; print(torch.cuda.get_device_name())" \
  || { echo "gpu_kernels.sh: no CUDA device; run the CPU tests instead: TRITON_INTERPRET=1 pytest tests/kernels"; exit 2; }
OUT_DIR="benchmarks/results/kernels_$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT_DIR"

declare -A STATUS
run_step() {  # run_step NAME TIMEOUT_S CMD...: output to $OUT_DIR/NAME.log, exit status into STATUS[NAME]
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  STATUS[$name]=$?
  tail -n 3 "$OUT_DIR/$name.log"
}

# Compiled Triton for the gpu-marked tests (TRITON_INTERPRET=0: an inherited 1 would interpret CUDA launches too) ...
run_step pytest_gpu 360 env TRITON_INTERPRET=0 python -m pytest tests/kernels -m gpu -q --durations=10 \
  --junitxml="$OUT_DIR/pytest_gpu.xml"
# ... and the CPU kernel tests (Triton interpreter on CPU tensors), as CPU CI runs them.
run_step pytest_cpu 180 env TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES= python -m pytest tests/kernels -m "not gpu" -q \
  --durations=10 --junitxml="$OUT_DIR/pytest_cpu.xml"
for op in fused_logprobs moe_experts rrattention; do
  run_step "bench_$op" 120 env TRITON_INTERPRET=0 python -m "kernels.$op.bench" --out "$OUT_DIR/bench_$op.json"
done

python - "$OUT_DIR" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
summary = {"benches": {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("bench_*.json"))},
           "logs": sorted(p.name for p in out.glob("*.log"))}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"summary: {out / 'summary.json'}")
PY

failed=0
for name in "${!STATUS[@]}"; do
  echo "$name: exit ${STATUS[$name]}"
  [ "${STATUS[$name]}" -eq 0 ] || failed=1
done
exit $failed
