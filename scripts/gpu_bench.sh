#!/usr/bin/env bash
# The GPU measurement of docs/gpu.md on the H200 device machine (CUDA 13 torch in python3, no network):
#   scripts/gpu_bench.sh stage NN   keep wheel part NN (carried under .whl/) under $WORK/parts; show build progress
#   scripts/gpu_bench.sh build      start the bundle builds (CPU) in the background with setsid; returns at once
#   scripts/gpu_bench.sh measure    join + check + install onnxruntime-gpu, then scripts/gpu_bench.py measure:
#                                   copy bandwidth, huluexport bench (text, 160-slice CT, 60-frame video) vs the
#                                   PyTorch reference on CUDA fp16, tests/gpu; JSON/Markdown/PNG into $OUT
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
    n="${2:?part number, e.g. 00}"
    cp -f ".whl/ort.part-$n" "$WORK/parts/" || { echo "part $n was not carried"; exit 1; }
    for f in .whl/ort.sha256 .whl/ort.name .whl/onnx_ir-*.whl; do [ -f "$f" ] && cp -f "$f" "$WORK/parts/"; done
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
    name=$(cat "$WORK/parts/ort.name")
    cat "$WORK"/parts/ort.part-* > "$WORK/$name"
    want=$(cat "$WORK/parts/ort.sha256"); got=$(sha256sum "$WORK/$name" | awk '{print $1}')
    [ "$want" = "$got" ] || { echo "wheel sha256 $got != $want (parts: $(ls "$WORK/parts" | tr '\n' ' '))"; exit 1; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
      "$WORK/$name" || exit 1
    export LD_LIBRARY_PATH="$(nv_libs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    "$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.__file__, o.get_available_providers())"
    spent=$(( $(date +%s) - t0 ))
    "$PY" scripts/gpu_bench.py measure --work "$WORK" --out "$OUT" --budget $(( 540 - spent ))
    cp -f "$WORK/build.log" "$OUT/build.log" 2>/dev/null
    ;;
  *)
    echo "usage: scripts/gpu_bench.sh stage NN | build | measure   (docs/gpu.md)"; exit 2 ;;
esac
