#!/usr/bin/env bash
# One GPU check, under eight minutes on a machine with an NVIDIA GPU: bash benchmarks/gpu_check.sh RESULTS_DIR
#
# Everything goes to RESULTS_DIR: env.txt (machine and versions), one log per step, and
# summary.txt with each step's outcome. A step that lacks what it needs (no GPU, no torch CUDA, no
# TensorRT) is skipped with its reason, so on a GPU machine with only torch and Triton the Triton
# kernel's numerics and speed against torch attention with the materialised bias still run.
# Steps: environment; pytest -m gpu; engine builds with Polygraphy's layer listing (is attention
# fused, where are the casts); `samexport verify` of every precision / attention form on TensorRT and
# ONNX Runtime CUDA against the stored PyTorch references, in one table (verify.md, also appended to
# summary.txt); TensorRT against ONNX Runtime per precision; the plugin kernel against
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
# precision:attention forms built here; each is verified on this GPU against its stored references.
forms=(fp32:plain fp16:plain fp16:fused-pattern int8:plain)
for form in "${forms[@]}"; do
    precision="${form%%:*}" attention="${form#*:}"
    flags=(--attention "$attention")
    [ "$precision" = fp16 ] && flags+=(--fp16)
    [ "$precision" = int8 ] && flags+=(--int8 --calib-dir "$work/calib")
    name="$precision-$attention"
    out="$work/tiny-$name"
    run "build-$name" 180 "$python" -m samexport.cli build --variant tiny --checkpoint "$work/tiny.pth" \
        --output "$out" --no-engines --no-parity "${flags[@]}"
    # engines verifies the plans before keeping them; when they fail it keeps nothing, so build
    # them again unverified to measure the figures with `verify` below.
    run "engines-$name" 180 "$python" -m samexport.cli engines "$out"
    if grep -q '"status": "passed"' "$out/manifest.json" 2>/dev/null; then
        echo "passed" >"$results/engines-$name.verdict"
    else
        echo "refused: $(grep -m1 '^error:' "$results/engines-$name.log" | cut -c1-300)" >"$results/engines-$name.verdict"
        run "engines-$name-unverified" 180 "$python" -m samexport.cli engines "$out" --no-verify
    fi
    for plan in "$out"/plans-*/*.plan; do
        [ -f "$plan" ] || continue
        run "layers-$name-$(basename "$plan" .plan)" 60 polygraphy inspect model "$plan" --show layers
    done
    # samexport verify per backend: the JSON report, its exit status and its error line.
    for backend in tensorrt onnxruntime-cuda; do
        timeout 180 "$python" -m samexport.cli verify "$out" --backend "$backend" --json \
            >"$results/verify-$name-$backend.json" 2>"$results/verify-$name-$backend.err"
        echo $? >"$results/verify-$name-$backend.status"
    done
    [ "$precision" = fp16 ] && [ "$attention" != plain ] && continue  # gpu_compare/bench: one artifact per precision
    artifacts+=("$out")
done

# One table: which precision / attention form passes on this GPU and TensorRT release, with the figures.
"$python" - "$results" "$work" "${forms[@]}" <<'PY' >"$results/verify.md" 2>"$results/verify-table.err"
import json, sys
from pathlib import Path
results, work, forms = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
rows, built = [], set()
for form in forms:
    name = form.replace(":", "-")
    try:
        manifest = json.loads((work / f"tiny-{name}" / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    encoder = manifest.get("engines", {}).get("encoder", {})
    if encoder:
        built.add(f"{encoder.get('gpu')} (compute capability {encoder.get('compute_capability')}), "
                  f"{encoder.get('tensorrt_module')} {encoder.get('tensorrt_version')}")
    verdict_file = results / f"engines-{name}.verdict"
    engines = verdict_file.read_text().strip().replace("|", "/") if verdict_file.exists() else "not run"
    for backend in ("tensorrt", "onnxruntime-cuda"):
        stem = results / f"verify-{name}-{backend}"
        status_file, error_file = Path(f"{stem}.status"), Path(f"{stem}.err")
        status = status_file.read_text().strip() if status_file.exists() else "?"
        error = error_file.read_text().strip().splitlines() if error_file.exists() else []
        try:
            report = json.loads(Path(f"{stem}.json").read_text())
        except (OSError, ValueError):
            reason = (error[-1] if error else "no report").replace("|", "/")
            rows.append(f"| {form} | {backend} | {engines} | not run | | | | | | | {reason[:200]} |")
            continue
        s = report["summary"]
        failed = ", ".join(f"{c['metric']} {c['value']:.4g} (limit {c['limit']:g})" for c in report["checks"] if not c["passed"])
        verdict = "pass" if report["passed"] and status == "0" else "**FAIL**"
        rows.append(
            f"| {form} | {report['candidate']} | {engines} | {verdict} | {s['embedding_cosine']:.6f} | "
            f"{s['embedding_rel_max_abs']:.2e} | {s['logits_rel_max_abs']:.2e} | {s['mask_iou_min']:.4f} | "
            f"{s['mask_iou_mean']:.4f} | {s['iou_score_max_abs']:.2e} | {failed} |"
        )
print("samexport verify against the PyTorch references stored in each artifact (tiny variant, random weights)")
print("on " + ("; ".join(sorted(built)) or "no TensorRT plans built") + "\n")
print("| precision:attention | backend | `engines` verdict | verify | emb. cosine | emb. rel max | logits rel max | "
      "mask IoU min | mask IoU mean | IoU-score err | failed checks / reason |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
print("\n".join(rows))
PY
note verify-table "written (verify.md)"
cat "$results/verify.md" >>"$summary"

run tensorrt-vs-onnxruntime 120 "$python" benchmarks/gpu_compare.py "${artifacts[@]}" --json "$results/tensorrt-vs-onnxruntime.json"
run latency 180 "$python" -m samexport.cli bench "${artifacts[@]}" --backend tensorrt --backend onnxruntime-cuda \
    --runs 10 --no-peer --json "$results/latency.json" --markdown "$results/latency.md"
echo "total seconds: $((SECONDS - started))" | tee -a "$summary"
