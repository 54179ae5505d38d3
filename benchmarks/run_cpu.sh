#!/usr/bin/env bash
# Reproduce benchmarks/results/cpu-vit_b*: vit_b with seeded random weights on a CPU machine.
#
#   bash benchmarks/run_cpu.sh                      # RUNS=5 WORK=/tmp/samexport-bench by default
#   RUNS=10 NOTE="quiet machine" bash benchmarks/run_cpu.sh
#
# Latency does not depend on the weights; parity with random weights exercises every layer.
# An int8 artifact is benchmarked too once `samexport build --int8` works; until then its
# build error is printed and the int8 column is left out.
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
if [ -f "$WORK/vit_b-int8/manifest.json" ] ||
    samexport build --variant vit_b --int8 --checkpoint "$CKPT" --output "$WORK/vit_b-int8" 2>"$WORK/int8.log"; then
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
