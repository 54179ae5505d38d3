#!/usr/bin/env bash
# Reproduce benchmarks/results/cpu-vit_b*: vit_b with seeded random weights on a CPU machine.
#
#   bash benchmarks/run_cpu.sh                      # RUNS=5 WORK=/tmp/samexport-bench by default
#   RUNS=10 NOTE="quiet machine" bash benchmarks/run_cpu.sh
#
# Latency does not depend on the weights; parity with random weights exercises every layer.
# The int8 artifact (Q/DQ placed for ONNX Runtime CPU, `--int8-for onnxruntime`) is calibrated
# on scikit-image photos that the parity suite does not use.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${WORK:-/tmp/samexport-bench}
OUT=${OUT:-benchmarks/results}
RUNS=${RUNS:-5}
NOTE=${NOTE:-}
CKPT=$WORK/sam_vit_b_random.pth
mkdir -p "$WORK" "$OUT"

[ -f "$CKPT" ] || python benchmarks/random_checkpoint.py vit_b "$CKPT"
[ -f "$WORK/vit_b-fp32/manifest.json" ] ||
    samexport build --variant vit_b --checkpoint "$CKPT" --output "$WORK/vit_b-fp32"
ARTIFACTS=("$WORK/vit_b-fp32")
python - "$WORK/calib" <<'PY'
import sys
from pathlib import Path
from PIL import Image
from skimage import data

folder = Path(sys.argv[1])
folder.mkdir(parents=True, exist_ok=True)
right = data.stereo_motorcycle()[1]  # the parity suite uses the left image of this pair
photos = {"hubble": data.hubble_deep_field(), "ihc": data.immunohistochemistry(), "moto_right": right}
for name, image in photos.items():
    Image.fromarray(image[..., :3]).save(folder / f"{name}.png")
PY
if [ -f "$WORK/vit_b-int8/manifest.json" ] ||
    samexport build --variant vit_b --int8 --int8-for onnxruntime --calib-dir "$WORK/calib" --checkpoint "$CKPT" \
        --output "$WORK/vit_b-int8" 2>"$WORK/int8.log"; then
    ARTIFACTS+=("$WORK/vit_b-int8")
else
    echo "int8 not benchmarked: $(tail -n 1 "$WORK/int8.log")"
fi

samexport bench "${ARTIFACTS[@]}" --checkpoint "$CKPT" --runs "$RUNS" ${NOTE:+--note "$NOTE"} \
    --json "$OUT/cpu-vit_b.json" --markdown "$OUT/cpu-vit_b.md" --plot "$OUT/cpu-vit_b.png"
for artifact in "${ARTIFACTS[@]}"; do
    name=$(basename "$artifact")
    samexport parity "$artifact" --checkpoint "$CKPT" \
        --json "$OUT/cpu-$name-parity.json" --markdown "$OUT/cpu-$name-parity.md"
done
