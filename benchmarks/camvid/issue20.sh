#!/usr/bin/env bash
# Issue 20 on CamVid (train 367 / val 101 images): the paper's section 3.2 and figure 5 questions, and the skips'
# effect on edges, at equal steps with the 0.3.0 defaults (frozen batch norm, encoder x0.1, clip 5, warm-up 50).
#
#   bash benchmarks/camvid/issue20.sh [train] [eval]      # both when no argument is given
#
# train: FCN-32s over EfficientNet-Lite0 with loss sampling P = 1, 0.5, 0.25 (validated every 50 steps: the
#        curves against steps and wall time), and FCN-16s; 200 steps each, the command of the CamVid 200-step
#        row of RESULTS.md (whose FCN-8s run, runs/camvid/abl_frozenbn_issue19, is the FCN-8s here).
# eval:  FCN-32s with shift-and-stitch F = 1, 2, 4, FCN-16s and FCN-8s, each with the boundary F-score and
#        trimap IU at D = 1, 2, 5, fp32; the wall time of each eval goes beside its JSON (<name>.wall).
# `python benchmarks/camvid/issue20_report.py` prints the tables of RESULTS.md from these files.
set -euo pipefail
cd "$(dirname "$0")/../.."
export FCNSEG_DATA="${FCNSEG_DATA:-../shared/data}"
FCNSEG="${FCNSEG:-.venv/bin/fcnseg}"
OUT="${OUT:-runs/camvid20}"
FCN8S="${FCN8S:-runs/camvid/abl_frozenbn_issue19}"
COMMON=(--dataset camvid --batch-size 8 --crop-size 320 --scale-min 0.5 --scale-max 1.5 --optimizer sgd
        --lr 0.01 --momentum 0.9 --weight-decay 1e-4 --workers 2 --overwrite --quiet --pretrained --max-steps 200)
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(train eval)

timed() {  # timed NAME CMD...: run CMD, write its wall seconds to $OUT/NAME.wall
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  "$@"
  awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.1f\n", a - b }' > "$OUT/$name.wall"
}

mkdir -p "$OUT"
for stage in "${stages[@]}"; do
  if [ "$stage" = train ]; then
    for p in 1 0.5 0.25; do
      timed "train_32s_p$p" "$FCNSEG" train "${COMMON[@]}" --model fcn32s_efficientnet_lite0 --val-every 50 \
        --loss-sampling "$p" --out "$OUT/32s_p$p"
    done
    timed train_16s "$FCNSEG" train "${COMMON[@]}" --model fcn16s_efficientnet_lite0 --val-every 200 --out "$OUT/16s"
    [ -f "$FCN8S/best.pt" ] || timed train_8s "$FCNSEG" train "${COMMON[@]}" --model fcn8s_efficientnet_lite0 \
      --val-every 200 --out "$FCN8S"
  elif [ "$stage" = eval ]; then
    EVAL=(eval --precision fp32 --workers 2 --overwrite --boundary 1 2 5)
    for f in 1 2 4; do
      timed "eval_32s_f$f" "$FCNSEG" "${EVAL[@]}" --checkpoint "$OUT/32s_p1/best.pt" --shift-and-stitch "$f" \
        --out "$OUT/eval_32s_f$f.json"
    done
    timed eval_16s "$FCNSEG" "${EVAL[@]}" --checkpoint "$OUT/16s/best.pt" --out "$OUT/eval_16s.json"
    timed eval_8s "$FCNSEG" "${EVAL[@]}" --checkpoint "$FCN8S/best.pt" --out "$OUT/eval_8s.json"
  fi
done
