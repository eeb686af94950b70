#!/usr/bin/env bash
# The published CIFAR-100 distillation table (CRD benchmark pairs, every --kd method at its
# published defaults, 240 epochs of the benchmark's recipe), reproduced with distill on a GPU,
# then printed beside the published figures (bench/kd_table.py says what differs: cosine instead
# of the 150/180/210 step decay, teachers trained here).
#
#   DATA=path/to/cifar-100-python/.. bash bench/kd_table.sh      # a day or two on one GPU
#   PAIRS=resnet32x4:resnet8x4 METHODS="hinton dkd" bash bench/kd_table.sh
#
# Runs are files (OUT/PAIR/METHOD.pt): a stopped script continues where it was, an interrupted
# run resumes from its NAME.last.pt. Environment: DATA (default cifar100, downloaded by distill
# where there is internet), OUT (runs/kd_table), EPOCHS (240), PAIRS, METHODS, DEVICE (auto),
# TRAIN_SIZE (all), VAL_SIZE (5000), PY (.venv/bin/python if present, else python3).
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
DATA=${DATA:-cifar100}
OUT=${OUT:-runs/kd_table}
EPOCHS=${EPOCHS:-240}
PAIRS=${PAIRS:-"resnet32x4:resnet8x4 wrn-40-2:wrn-16-2"}
METHODS=${METHODS:-"labels hinton hinton+ls dkd dist mlkd crd fitnet at reviewkd"}
DEVICE=${DEVICE:-auto}
SIZES=(--val-size "${VAL_SIZE:-5000}")
if [ -n "${TRAIN_SIZE:-}" ]; then SIZES+=(--train-size "$TRAIN_SIZE"); fi

for pair in $PAIRS; do
    for method in $METHODS; do
        echo "== $pair $method"
        "$PY" bench/kd_table.py run --data "$DATA" --pair "$pair" --method "$method" \
            --epochs "$EPOCHS" --device "$DEVICE" --out "$OUT" "${SIZES[@]}"
    done
done
"$PY" bench/kd_table.py table --out "$OUT" --pairs "$(echo $PAIRS | tr ' ' ',')"
