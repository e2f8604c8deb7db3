#!/usr/bin/env bash
# CPU rehearsal of the GPU measurement (docs/gpu.md), on a machine without a GPU, with pip access:
#   scripts/gpu_rehearse.sh venv      a venv with the device's package versions (requirements/device-h200.txt,
#                                     torch 2.11 is a CUDA build of a few GB that runs on the CPU), onnxruntime-gpu
#                                     1.31.1 under $R/ortgpu and onnx-ir 1.1.0 under $R/w/site (--target, as
#                                     scripts/gpu_bench.sh installs them on the device)
#   scripts/gpu_rehearse.sh build     scripts/gpu_bench.py build with that venv (b4 + b2 7B-width fp16 slices, the
#                                     tiny test bundles, the kernels where nvcc exists): ~4 min on 2 cores,
#                                     5.5 GiB peak, 12.3 GB of bundles
#   scripts/gpu_rehearse.sh measure   scripts/gpu_bench.py measure --rehearse-cpu, onnxruntime-gpu first on
#                                     PYTHONPATH: every step on the CPU provider; report in $R/out (no GPU figure)
#   scripts/gpu_rehearse.sh all       the three in turn
# R (default /tmp/hulu-rehearse) holds everything; PYTHON picks the interpreter that makes the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
R="${R:-/tmp/hulu-rehearse}"
V="$R/venv/bin/python"
W="$R/w"
export PYTHONUNBUFFERED=1

venv() {
  [ -x "$V" ] || "${PYTHON:-python3}" -m venv "$R/venv"
  "$V" -m pip install -q --no-cache-dir -r requirements/device-h200.txt
  "$V" -m pip install -q --no-cache-dir --no-deps --upgrade --target "$R/ortgpu" onnxruntime-gpu==1.31.1
  "$V" -m pip install -q --no-cache-dir --no-deps --upgrade --target "$W/site" onnx-ir==1.1.0
  "$V" -m pip list 2>/dev/null | grep -iE "^(torch|onnx|onnxruntime|onnxscript|numpy|transformers) " || true
}

build() {  # the PYTHONPATH scripts/gpu_bench.sh gives its build step
  PYTHONPATH="$W/site:$PWD:$PWD/runtime" "$V" scripts/gpu_bench.py build --work "$W"
  awk '/^BUILD START/ {n = 0} /^BUILT|^BUILD DONE/ {line[n++] = $0} END {for (i = 0; i < n; i++) print line[i]}' \
    "$W/build.log"  # this build's lines (the log is appended to)
}

measure() {  # onnxruntime-gpu first, as `gpu_bench.sh measure` has it after installing the wheel into $WORK/site
  PYTHONPATH="$R/ortgpu:$W/site:$PWD:$PWD/runtime" "$V" scripts/gpu_bench.py measure --rehearse-cpu --work "$W" \
    --out "$R/out"
}

case "${1:-}" in
  venv) venv ;;
  build) build ;;
  measure) measure ;;
  all) venv && build && measure ;;
  *) echo "usage: scripts/gpu_rehearse.sh venv | build | measure | all   (R=$R; docs/gpu.md)"; exit 2 ;;
esac
