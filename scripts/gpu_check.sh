#!/usr/bin/env bash
# The one script run on a GPU machine (CUDA torch + nvcc, no install step): builds the kernels, runs the GPU tests
# (kernel == numpy oracle, exactly), the benchmark and the dev.cu workbench. Logs and results go under $OUT
# (default /tmp/hulu_gpu_check). Each step is time-boxed so a hang still leaves the earlier results.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/hulu_gpu_check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/runtime:$PWD${PYTHONPATH:+:$PYTHONPATH}"  # hulurt from the checkout, no install
PY="${PYTHON:-python3}"
status=0

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv \
  | tee "$OUT/device.txt"
nvcc --version | tail -n 2 | tee -a "$OUT/device.txt"
"$PY" -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__)" \
  | tee -a "$OUT/device.txt"

echo "== build (all arches; the workbench for the arch of this GPU only)"
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d '. ')
{ time make -C kernels lib NVCC_THREADS=8 PYTHON="$PY" && time make -C kernels dev ARCHS="${arch:-90}" PYTHON="$PY"; } \
  > "$OUT/build.log" 2>&1 || { echo "BUILD FAILED"; tail -n 40 "$OUT/build.log"; exit 1; }
tail -n 12 "$OUT/build.log"

echo "== GPU tests"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -rA tests/gpu/test_token_reduce_gpu.py > "$OUT/pytest_gpu.log" 2>&1 \
  || status=1
grep -E "passed|failed|error|skipped" "$OUT/pytest_gpu.log" | tail -n 5
grep -E "^(FAILED|ERROR)" "$OUT/pytest_gpu.log" | head -n 20

echo "== benchmark"
timeout 180 "$PY" benchmarks/token_reduce/bench.py --out "$OUT" --oracle-frames 40 > "$OUT/bench.log" 2>&1 || status=1
tail -n 25 "$OUT/bench.log"

echo "== workbench (dev.cu)"
timeout 90 ./kernels/build/dev > "$OUT/dev.log" 2>&1 || status=1
cat "$OUT/dev.log"

echo "== compute-sanitizer (memcheck, racecheck) on small sizes: every kernel incl. scan and gather"
{ for tool in memcheck racecheck; do
    for shape in "8 64 2352" "5 37 588"; do
      echo "-- $tool dev 0 $shape"
      timeout 120 compute-sanitizer --tool "$tool" --error-exitcode 9 ./kernels/build/dev 0 $shape || echo "SANITIZER_FAIL rc=$?"
    done
  done; } > "$OUT/sanitizer.log" 2>&1
grep -E "^-- |ERROR SUMMARY|RACECHECK SUMMARY|SANITIZER_FAIL|OK:|FAIL" "$OUT/sanitizer.log"
grep -q SANITIZER_FAIL "$OUT/sanitizer.log" && status=1

echo "== gpu_check status=$status"
exit $status
