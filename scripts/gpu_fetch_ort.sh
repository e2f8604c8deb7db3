#!/usr/bin/env bash
# Run HERE (a machine with pip access), in the checkout the device tool sends: fetches what the H200 machine
# lacks and cuts it into parts that one device call each can carry (64 MiB a call, the working tree included).
#   .whl/ort-slim.tar.xz.part-00, -01   onnxruntime-gpu 1.31.1 (CUDA 13 build) with the CUDA provider's fatbins cut
#                                       to sm_9x (scripts/ort_slim.py): the plan, 2 device calls in all
#   .whl/ort-full.whl.part-00 .. -04    the whole wheel, untouched: the fallback if scripts/gpu_smoke.py fails
#   .whl/ort-{slim,full}.sha256, .name  checked on the device after joining
#   .whl/onnx_ir-1.1.0-py3-none-any.whl (the device image has onnx-ir 1.0.0; pyproject.toml needs >= 1.1)
# .whl/ is ignored by git (.gitignore): nothing of it is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
ORT_VERSION="${ORT_VERSION:-1.31.1}"
SM="${SM:-90}"
PART="${PART:-58M}"  # one part + the working tree (~2.5 MiB) + the onnx-ir wheel stay under one call's 64 MiB
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
rm -f .whl/ort.part-* .whl/ort.sha256 .whl/ort.name .whl/ort-full.* .whl/ort-slim.*  # an earlier layout too
split -b "$PART" -d -a 2 "$whl" .whl/ort-full.whl.part-
sha256sum "$whl" | awk '{print $1}' > .whl/ort-full.sha256
basename "$whl" > .whl/ort-full.name
"$PY" scripts/ort_slim.py "$whl" --sm "$SM" --out .whl --part "$PART"
ls -l .whl/ort-*.part-* .whl/onnx_ir-*.whl
nf=$(ls .whl/ort-full.whl.part-* | wc -l)
ns=$(ls .whl/ort-slim.tar.xz.part-* | wc -l)
[ "$ns" = 2 ] || echo "NOTE: the slim archive has $ns parts, not 2: add one stage call per extra part"
cat <<MSG

Device calls, back to back (a warm machine goes back 30 s after a call, and /tmp there with it). docs/gpu.md.
  1. run(carry=[".whl/ort-slim.tar.xz.part-00", ".whl/ort-slim.sha256", ".whl/ort-slim.name",
                ".whl/onnx_ir-1.1.0-py3-none-any.whl"],
         command="scripts/gpu_bench.sh stage && scripts/gpu_bench.sh build", timeout_s=60)
  2. run(carry=[".whl/ort-slim.tar.xz.part-01"],
         command="scripts/gpu_bench.sh stage && scripts/gpu_bench.sh measure slim BUDGET", timeout_s=BUDGET+30)
     BUDGET: seconds for measuring, status()'s budget_left_s minus ~60, at most 560.
     -> \$OUT/gpu_bench.{json,md,png}, gpu_bench.log, pytest_gpu.log, gpu_smoke.log, sampling.log, build.log
  "GPU SMOKE DIFFERS" (the kernels run, a result differs): call 2 measures anyway; the verdict is in the report.
  If call 2 prints "GPU SMOKE FAILED" (exit 3: the slim CUDA library did not run), the full wheel instead, at once:
$(for i in $(seq 0 $((nf - 1))); do printf '     run(carry=[".whl/ort-full.whl.part-%02d"%s], command="scripts/gpu_bench.sh stage", timeout_s=60)\n' "$i" "$([ "$i" = 0 ] && echo ', ".whl/ort-full.sha256", ".whl/ort-full.name"')"; done)
     run(command="scripts/gpu_bench.sh measure full BUDGET", timeout_s=BUDGET+30)
MSG
