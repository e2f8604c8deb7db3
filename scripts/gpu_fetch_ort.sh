#!/usr/bin/env bash
# Run HERE (a machine with pip access), in the checkout the device tool sends: fetches the wheels the H200
# machine lacks and splits onnxruntime-gpu into parts under 60 MiB, one per device call (docs/gpu.md).
#   .whl/ort.part-00 .. ort.part-04   onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl (CUDA 13 build)
#   .whl/ort.sha256                   sha256 of the whole wheel, checked after joining on the device
#   .whl/onnx_ir-1.1.0-py3-none-any.whl   (the device image has onnx-ir 1.0.0; pyproject.toml needs >= 1.1)
# .whl/ is ignored by git (.gitignore): the wheels are never committed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
ORT_VERSION="${ORT_VERSION:-1.31.1}"
PART="${PART:-55M}"  # < 60 MiB: one part plus the working tree fits one call's 64 MiB
mkdir -p .whl/dl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
  -d .whl/dl "onnxruntime-gpu==${ORT_VERSION}"
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl "onnx-ir==1.1.0"
whl=$(ls .whl/dl/onnxruntime_gpu-"${ORT_VERSION}"-cp312-cp312-*.whl)
# a CUDA 13 build links libcudart.so.13 / libcublas.so.13 (the H200 image: CUDA 13 torch and nvidia-* wheels)
if command -v readelf >/dev/null; then
  tmp=$(mktemp -d); unzip -q -o "$whl" 'onnxruntime/capi/libonnxruntime_providers_cuda.so' -d "$tmp"
  readelf -d "$tmp/onnxruntime/capi/libonnxruntime_providers_cuda.so" | grep -o 'lib\(cudart\|cublas\)\.so\.[0-9]*' | sort -u
  rm -rf "$tmp"
fi
rm -f .whl/ort.part-*
split -b "$PART" -d -a 2 "$whl" .whl/ort.part-
sha256sum "$whl" | awk '{print $1}' > .whl/ort.sha256
echo "$(basename "$whl")" > .whl/ort.name
ls -l .whl/ort.part-* .whl/ort.sha256 .whl/onnx_ir-*.whl
n=$(ls .whl/ort.part-* | wc -l)
cat <<MSG

Device calls, back to back (a warm machine goes back 30 s after a call; /tmp there is lost with it):
  1. run(carry=[".whl/ort.part-00", ".whl/ort.sha256", ".whl/ort.name", ".whl/onnx_ir-1.1.0-py3-none-any.whl"],
         command="scripts/gpu_bench.sh stage 00 && scripts/gpu_bench.sh build", timeout_s=120)
$(for i in $(seq 1 $((n - 1))); do printf '  %d. run(carry=[".whl/ort.part-%02d"], command="scripts/gpu_bench.sh stage %02d", timeout_s=60)\n' $((i + 1)) "$i" "$i"; done)
  $((n + 1)). run(command="scripts/gpu_bench.sh measure", timeout_s=600)   -> \$OUT/gpu_bench.{json,md,png}, logs
MSG
