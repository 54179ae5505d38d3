#!/usr/bin/env bash
# One GPU check, under eight minutes on a machine with an NVIDIA GPU: bash benchmarks/gpu_check.sh RESULTS_DIR
#
# Everything goes to RESULTS_DIR: env.txt (machine and versions), one log per step, and
# summary.txt with each step's outcome. A step that lacks what it needs (no GPU, no torch CUDA, no
# TensorRT) is skipped with its reason, so on a GPU machine with only torch and Triton the Triton
# kernel's numerics and speed against torch attention with the materialised bias still run.
# Steps: environment; pytest -m gpu; engine builds with Polygraphy's layer listing (is attention
# fused, where are the casts); TensorRT against ONNX Runtime per precision; the plugin kernel against
# its reference at 14x14 and 64x64 with its latency; encoder/decoder latency per precision.
set -uo pipefail
results="${1:?usage: bash benchmarks/gpu_check.sh RESULTS_DIR}"
mkdir -p "$results"
results="$(cd "$results" && pwd)"
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
summary="$results/summary.txt"
: >"$summary"
started=$SECONDS

note() { echo "$1: $2" | tee -a "$summary"; }
# run NAME TIMEOUT_S COMMAND...: one step, its output in NAME.log, its outcome in summary.txt
run() {
    local name="$1" limit="$2"
    shift 2
    echo "== $name: $*" >"$results/$name.log"
    if timeout "$limit" "$@" >>"$results/$name.log" 2>&1; then note "$name" "passed"; else note "$name" "FAILED (exit $?; see $name.log)"; fi
}
has() { "$python" -c "$1" >/dev/null 2>&1; }

{
    date -u
    uname -a
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    "$python" -m samexport.cli doctor 2>&1 || "$python" cli.py doctor 2>&1
    "$python" -m pip list 2>/dev/null | grep -i -E "torch|triton|tensorrt|polygraphy|onnx|numpy"
} >"$results/env.txt" 2>&1
note env "written"

cuda='import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'
trt='import tensorrt, polygraphy'
if ! has "$cuda"; then
    note all-gpu-steps "skipped: torch.cuda is not available (no GPU, no driver, or a CPU build of torch)"
    exit 0
fi

# The Triton kernel: numerics at 14x14 windows and 64x64 global grids (fp16, fp32), latency and
# memory against torch SDPA with the materialised bias. Needs torch CUDA and Triton only.
run kernel 240 "$python" -m pytest -m gpu tests/test_plugins_attention.py -q -rA -s --junitxml "$results/kernel.xml"

if ! has "$trt"; then
    note pytest-gpu "skipped: TensorRT or Polygraphy is not importable ($("$python" -c "$trt" 2>&1 | tail -1))"
    note engines "skipped: no TensorRT"
    note tensorrt-vs-onnxruntime "skipped: no TensorRT"
    note latency "skipped: no TensorRT"
    echo "total seconds: $((SECONDS - started))" | tee -a "$summary"
    exit 0
fi

run pytest-gpu 240 "$python" -m pytest -m gpu -q -rA --ignore tests/test_plugins_attention.py --junitxml "$results/pytest-gpu.xml"

# Tiny artifacts per precision, engines built on this GPU, layer listing of every plan.
"$python" benchmarks/random_checkpoint.py tiny "$work/tiny.pth" >"$results/checkpoint.log" 2>&1
"$python" - "$work/calib" <<'PY' >/dev/null 2>&1
import sys
from pathlib import Path
from PIL import Image
from skimage import data
folder = Path(sys.argv[1]); folder.mkdir(parents=True, exist_ok=True)
for name in ("coffee", "chelsea", "rocket"):
    Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
PY
artifacts=()
for precision in fp32 fp16 int8; do
    flags=()
    [ "$precision" = fp16 ] && flags=(--fp16)
    [ "$precision" = int8 ] && flags=(--int8 --calib-dir "$work/calib")
    out="$work/tiny-$precision"
    run "build-$precision" 120 "$python" -m samexport.cli build --variant tiny --checkpoint "$work/tiny.pth" \
        --output "$out" --no-engines --no-parity "${flags[@]}"
    run "engines-$precision" 120 "$python" -m samexport.cli engines "$out"
    for plan in "$out"/plans-*/*.plan; do
        [ -f "$plan" ] || continue
        run "layers-$precision-$(basename "$plan" .plan)" 60 polygraphy inspect model "$plan" --show layers
    done
    artifacts+=("$out")
done

run tensorrt-vs-onnxruntime 120 "$python" benchmarks/gpu_compare.py "${artifacts[@]}" --json "$results/tensorrt-vs-onnxruntime.json"
run latency 180 "$python" -m samexport.cli bench "${artifacts[@]}" --backend tensorrt --backend onnxruntime-cuda \
    --runs 10 --no-peer --json "$results/latency.json" --markdown "$results/latency.md"
echo "total seconds: $((SECONDS - started))" | tee -a "$summary"
