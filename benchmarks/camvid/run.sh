#!/usr/bin/env bash
# The CamVid benchmark (CPU budget): train on CamVid train (367 images), choose the best checkpoint by mean IU
# on val (101), evaluate it on val at 480x360 with the paper's four metrics and per-class IU.
#
#   bash benchmarks/camvid/run.sh [RUN ...]      # RUN in: fcn8s fcn32s fcn16s fcn8s_scratch fcn32s_fixed
#
# Runs go to runs/camvid/<RUN>/ (train logs, best.pt) and runs/camvid/<RUN>.json (eval metrics + wall time).
# `python benchmarks/camvid/report.py` then prints the results table and writes the slim best FCN-8s
# checkpoint to benchmarks/camvid/fcn8s_efficientnet_lite0_camvid.pt.
# Data: $FCNSEG_DATA/camvid (default ../shared/data/camvid); the checkpoints record no absolute path.
set -euo pipefail
cd "$(dirname "$0")/../.."
export FCNSEG_DATA="${FCNSEG_DATA:-../shared/data}"
FCNSEG="${FCNSEG:-.venv/bin/fcnseg}"

# One recipe for every run: the modern preset (SGD momentum 0.9, poly decay, pixel-averaged loss), batches
# of 8 random 320x320 crops of images scaled by 0.5-1.5 and flipped. Only the budget (steps) differs:
# about 30 minutes of this 2-core CPU for the main FCN-8s run, about 10 for the comparisons.
COMMON=(--dataset camvid --batch-size 8 --crop-size 320 --scale-min 0.5 --scale-max 1.5 --optimizer sgd
        --lr 0.01 --momentum 0.9 --weight-decay 1e-4 --workers 2 --overwrite --quiet --batch-norm train)
# --batch-norm train: the rows below were run before frozen batch norm became the default for pretrained
# encoders (issue 11); the rows that test it say --batch-norm frozen (the last flag wins).

args_for() {
  case "$1" in
    fcn8s)         echo "--model fcn8s_efficientnet_lite0 --pretrained --max-steps 1200 --val-every 200" ;;
    fcn32s)        echo "--model fcn32s_efficientnet_lite0 --pretrained --max-steps 360 --val-every 120" ;;
    fcn16s)        echo "--model fcn16s_efficientnet_lite0 --pretrained --max-steps 360 --val-every 120" ;;
    fcn8s_short)   echo "--model fcn8s_efficientnet_lite0 --pretrained --max-steps 360 --val-every 120" ;;
    fcn8s_scratch) echo "--model fcn8s_efficientnet_lite0 --max-steps 360 --val-every 120" ;;
    fcn32s_fixed)  echo "--model fcn32s_efficientnet_lite0 --pretrained --freeze-encoder --max-steps 360 --val-every 120" ;;
    # Recipe ablations (issue 11), each one change against abl_base at an equal CPU budget (about 200 steps of
    # 8 crops of 320x320 of Lite0; 480x480 crops take fewer steps for the same pixels; Lite2 costs ~5% more a step).
    abl_base)      echo "--model fcn8s_efficientnet_lite0 --pretrained --max-steps 200 --val-every 200" ;;
    abl_mfw)       echo "--model fcn8s_efficientnet_lite0 --pretrained --max-steps 200 --val-every 200 --class-weights median_freq" ;;
    abl_ema)       echo "--model fcn8s_efficientnet_lite0 --pretrained --max-steps 200 --val-every 200 --ema-decay 0.99" ;;
    abl_lite2)     echo "--model fcn8s_efficientnet_lite2 --pretrained --max-steps 190 --val-every 190" ;;
    # The 30-minute budget with the ablations' winners (FINAL_FLAGS: the flags that beat abl_base).
    final)         echo "--model fcn8s_efficientnet_lite0 --pretrained --max-steps 1000 --val-every 200 ${FINAL_FLAGS:-}" ;;
    # The 2-hour budget (issue 11): the two largest gains (frozen batch norm, Lite2), 5000 steps of ~1.2 s (1h45m).
    long_lite2)    echo "--model fcn8s_efficientnet_lite2 --pretrained --max-steps 5000 --val-every 1000 --batch-norm frozen --warmup-steps 50" ;;
    abl_frozenbn)  echo "--model fcn8s_efficientnet_lite0 --pretrained --max-steps 200 --val-every 200 --batch-norm frozen --warmup-steps 50" ;;
    abl_warmup)    echo "--model fcn8s_efficientnet_lite0 --pretrained --max-steps 200 --val-every 200 --warmup-steps 50" ;;
    abl_crop480)   echo "--model fcn8s_efficientnet_lite0 --pretrained --max-steps 90 --val-every 90 --crop-size 480" ;;
    *) echo "unknown run $1" >&2; exit 2 ;;
  esac
}

for run in "${@:-fcn8s fcn32s fcn16s fcn8s_short fcn8s_scratch fcn32s_fixed}"; do
  for r in $run; do
    out="runs/camvid/$r"
    # shellcheck disable=SC2046
    cmd=("$FCNSEG" train "${COMMON[@]}" $(args_for "$r") --out "$out")
    echo "== $r: ${cmd[*]}"
    start=$(date +%s)
    "${cmd[@]}"
    train_s=$(( $(date +%s) - start ))
    "$FCNSEG" eval --checkpoint "$out/best.pt" --split val --out "runs/camvid/$r.json" --overwrite --quiet
    python3 - "$r" "$train_s" "${cmd[*]}" <<'PY'
import json, platform, sys, datetime
run, seconds, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3]
p = f"runs/camvid/{run}.json"
d = json.load(open(p))
d.update(run=run, train_seconds=seconds, command=cmd, machine=f"{platform.node()} ({platform.processor() or platform.machine()})",
         date=datetime.date.today().isoformat())
json.dump(d, open(p, "w"), indent=2)
PY
  done
done
