#!/usr/bin/env bash
# The GPU measurement of docs/gpu.md on the H200 device machine (CUDA 13 torch in python3, no network):
#   scripts/gpu_bench.sh stage            keep the carried parts (.whl/ort-*.part-*, their .sha256/.name, the
#                                         onnx-ir wheel) under $WORK/parts; show build progress
#   scripts/gpu_bench.sh build            start the bundle builds (CPU) in the background with setsid; returns at once
#   scripts/gpu_bench.sh measure KIND [BUDGET]
#                                         KIND slim|full: join + check + install onnxruntime-gpu, scripts/gpu_smoke.py
#                                         (exit 3 if its CUDA provider cannot run our operators; if they run but a
#                                         result differs, its line is kept in $OUT/gpu_smoke.log and the
#                                         measurement goes on), then
#                                         scripts/gpu_bench.py measure within BUDGET s (default 540): copy bandwidth,
#                                         huluexport bench (text, 160-slice CT, 60-frame video) vs the PyTorch
#                                         reference on CUDA fp16, tests/gpu; JSON/Markdown/PNG into $OUT
# Nothing is installed outside $WORK (default /tmp/hulu-gpu); the card's settings are never touched.
set -uo pipefail
cd "$(dirname "$0")/.."
WORK="${WORK:-/tmp/hulu-gpu}"
OUT="${OUT:-$WORK/out}"
PY="${PYTHON:-python3}"
mkdir -p "$WORK/parts" "$WORK/site" "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$WORK/site:$PWD:$PWD/runtime${PYTHONPATH:+:$PYTHONPATH}"

# the CUDA 13 libraries of the image's nvidia-* wheels, for onnxruntime-gpu's CUDA provider
nv_libs() {
  "$PY" - <<'PYEOF'
import glob, os, site
dirs = []
for sp in site.getsitepackages():
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib")))
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "cu13", "lib")))
print(":".join(dict.fromkeys(dirs)))
PYEOF
}

case "${1:-}" in
  stage)
    ls .whl/ort-*.part-* >/dev/null 2>&1 || { echo "no .whl/ort-*.part-* was carried"; exit 1; }
    cp -f .whl/ort-*.part-* "$WORK/parts/"
    for f in .whl/ort-*.sha256 .whl/ort-*.name .whl/onnx_ir-*.whl; do [ -f "$f" ] && cp -f "$f" "$WORK/parts/"; done
    ls -l "$WORK/parts"
    if ls "$WORK"/parts/onnx_ir-*.whl >/dev/null 2>&1 && [ ! -d "$WORK/site/onnx_ir" ]; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
        "$WORK"/parts/onnx_ir-*.whl
    fi
    [ -f "$WORK/build.log" ] && { grep -E "^BUILT|^BUILD DONE|Error|error" "$WORK/build.log" | tail -n 8; tail -n 2 "$WORK/build.log"; } || true
    nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader || true
    ;;
  build)
    setsid nohup "$PY" scripts/gpu_bench.py build --work "$WORK" > "$WORK/build.out" 2>&1 < /dev/null &
    echo "bundle builds started (pid $!); progress: $WORK/build.log"
    ;;
  measure)
    t0=$(date +%s)
    kind="${2:?slim or full}"; budget="${3:-540}"
    name=$(cat "$WORK/parts/ort-$kind.name") || { echo "ort-$kind.name was not carried"; exit 1; }
    cat "$WORK"/parts/ort-"$kind".*.part-* > "$WORK/$name"
    want=$(cat "$WORK/parts/ort-$kind.sha256"); got=$(sha256sum "$WORK/$name" | awk '{print $1}')
    [ "$want" = "$got" ] || { echo "$name: sha256 $got != $want (parts: $(ls "$WORK/parts" | tr '\n' ' '))"; exit 1; }
    rm -rf "$WORK/site/onnxruntime" "$WORK"/site/onnxruntime_gpu-*.dist-info
    case "$name" in
      *.tar.xz) tar -xJf "$WORK/$name" -C "$WORK/site" || exit 1 ;;
      *.whl) "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
               "$WORK/$name" || exit 1 ;;
    esac
    export LD_LIBRARY_PATH="$(nv_libs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    "$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.__file__, o.get_available_providers())"
    timeout 180 "$PY" scripts/gpu_smoke.py > "$OUT/gpu_smoke.log" 2>&1; rc=$?
    cat "$OUT/gpu_smoke.log"
    case $rc in
      0) ;;
      4) echo "the smoke check did not pass cleanly (above), but the $kind wheel's CUDA provider loaded and ran:" \
              "measuring anyway (the full wheel holds the same sm_90 kernels)" ;;
      *) echo "$kind onnxruntime-gpu cannot run on this GPU (smoke exit $rc): see docs/gpu.md (fallback)"; exit 3 ;;
    esac
    spent=$(( $(date +%s) - t0 ))
    "$PY" scripts/gpu_bench.py measure --work "$WORK" --out "$OUT" --budget $(( budget - spent ))
    cp -f "$WORK/build.log" "$OUT/build.log" 2>/dev/null
    ;;
  *)
    echo "usage: scripts/gpu_bench.sh stage | build | measure slim|full [BUDGET_S]   (docs/gpu.md)"; exit 2 ;;
esac
