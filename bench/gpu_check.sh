#!/usr/bin/env bash
# The GPU measurements of SPEC 11 in one command, for a machine lent with GPUs as it is: its own
# torch (printed in the table), no package registry, only the working tree and what is carried.
#
#   python bench/gpu_carry.py               # here, before: runs/gpu_carry/ (data subset, torch-pruning)
#   bash bench/gpu_check.sh                 # there: prints the table; full log under runs/gpu_check/
#   OUT=/some/dir bash bench/gpu_check.sh   # table and log go to $OUT instead
#   DATA=path/to/cifar10-jpeg bash bench/gpu_check.sh   # real data other than the carried subset
#   PY=python3 bash bench/gpu_check.sh      # default: .venv/bin/python if present, else python3
#
# The checkout goes on PYTHONPATH: the project's dependencies must be importable by $PY, the
# project itself need not be installed. What the machine lacks travels in $CARRY (default
# runs/gpu_carry, made by bench/gpu_carry.py): a NAME.zip there (torch-pruning, pure Python) goes
# on PYTHONPATH when $PY cannot import NAME itself, and cifar10-subset.npz (20,000 real CIFAR-10 images as their JPEG bytes)
# is decoded into a CIFAR python folder for the accuracy row.
#
# Rows: training images/s of resnet18-5m and resnet34 (standard recipe: bf16 + channels_last,
# eager, then --compile in a row of its own), KD step cost with a ResNet34 teacher, DKD vs Hinton,
# EMA cost (bench/kd_overhead.py), a short standard-recipe accuracy run on real data (skipped,
# and said so, when there is none), `distill eval` and `distill bench` on the GPU, and DDP over
# every visible GPU vs one (bench/ddp_scaling.py). Speed rows train on random images
# (bench/gpu_rows.py synthetic): the work does not depend on pixel values. Each row runs under
# its own time limit (ROW_LIMIT_S, which the row reads), cut to what is left of the whole budget
# (BUDGET_S, 420 s: with start-up and a killed row's 10 s grace the check ends within 8 minutes,
# so a rerun fits a 15-minute lease), so one failure or hang costs only its row; a failed row
# says why in distill's own words (the command's error line), and a compile that does not finish
# in its row says "compile took longer than N s". The compile rows come last: they take what is
# left.
#
# On a machine without a GPU it says so and exits 0, measuring nothing. GPU_CHECK_SMOKE=1 runs
# every row on the CPU at toy sizes instead: a test of this script, not a measurement.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
CARRY=${CARRY:-runs/gpu_carry}
PYPATH=$ROOT
# Only what this Python cannot import itself, tried in one process: a process per package paid
# torch's import again for each (11.3 s for the eleven zips on the 2-core dev machine, 9.5 s in
# one process, most of it torch-pruning's own import of torch, timm and torchvision).
MISSING=$("$PY" - "$CARRY"/*.zip 2>/dev/null <<'EOF'
import importlib, os, sys
for zip in sys.argv[1:]:
    if os.path.isfile(zip):
        try:
            importlib.import_module(os.path.basename(zip)[: -len(".zip")])
        except Exception:
            print(os.path.abspath(zip))
EOF
)
while IFS= read -r zip; do
    [ -n "$zip" ] && PYPATH="$PYPATH:$zip"
done <<<"$MISSING"
export PYTHONPATH="$PYPATH${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
BUDGET_S=${BUDGET_S:-420}
RESULTS=${OUT:-runs/gpu_check}
mkdir -p "$RESULTS"
REPORT=$RESULTS/gpu_check.txt
LOG=$RESULTS/gpu_check.log
: >"$LOG"
START=$SECONDS

say() { printf '%s\n' "$*" | tee -a "$REPORT"; }

NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>>"$LOG") || {
    echo "gpu_check: $PY cannot import torch (see $LOG); set PY to the Python that has it" >&2
    exit 1
}
: >"$REPORT"
if [ "$NGPU" = 0 ] && [ -z "${GPU_CHECK_SMOKE:-}" ]; then
    say "gpu_check: no CUDA GPU is visible to PyTorch on $(uname -n) ($("$PY" -c \
        'import torch; print("torch", torch.__version__, "built for CUDA", torch.version.cuda)'))."
    say "Nothing was measured: run bench/gpu_check.sh on a machine with GPUs."
    exit 0
fi

if [ -n "${GPU_CHECK_SMOKE:-}" ]; then
    # Toy sizes on the CPU: every row's plumbing runs, no number means anything.
    DEVICE=cpu NGPU=0 ARCH=resnet18-quarter BIG=resnet18-half TEACHER=resnet18-half
    BATCH=16 STEPS=2 EPOCHS=1 VAL=40 KD_ARGS=(--batch-size 8 --steps 1 --repeats 1 --warmup 1)
    ACC_ARGS=(--epochs 1 --train-size 32 --val-size 20) DDP_N=2 DDP_BATCH=8 DDP_STEPS=2
    BENCH_ARGS=(--batch-sizes 1,8 --seconds 0.02)
else
    DEVICE=cuda ARCH=resnet18-5m BIG=resnet34 TEACHER=resnet34
    # 40 steps of 512 per epoch: a few seconds per epoch on one GPU, long enough to time.
    BATCH=512 STEPS=40 EPOCHS=2 VAL=1000 KD_ARGS=(--batch-size 512 --steps 10 --repeats 3 --warmup 1)
    ACC_ARGS=(--epochs "${ACC_EPOCHS:-8}" --val-size 2000) DDP_N=$NGPU DDP_BATCH=512 DDP_STEPS=20
    BENCH_ARGS=(--batch-sizes 1,32,256 --seconds 0.5)
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
TABLE=$WORK/table.tsv
: >"$TABLE"
CACHE=$WORK/cache

add() { printf '%s\t%s\n' "$1" "$2" >>"$TABLE"; }

# row NAME SECONDS CMD...: run CMD within min(SECONDS, what is left of the budget), telling it
# its limit in ROW_LIMIT_S; its "row<TAB>name<TAB>result" lines go to the table (those printed
# before a time-out too); a failure or time-out adds a line saying so, with the last line of its
# error output (gpu_rows.py ends a failure with the distill command's own error line).
row() {
    local name=$1 want=$2
    shift 2
    local left=$((BUDGET_S - (SECONDS - START)))
    local limit=$((want < left ? want : left))
    if ((limit < 15)); then
        add "$name" "skipped: the ${BUDGET_S} s budget is spent"
        return
    fi
    printf '== %s (limit %d s): %s\n' "$name" "$limit" "$*" >>"$LOG"
    echo "gpu_check: $name (up to ${limit} s)" >&2
    local t0=$SECONDS rc=0
    ROW_LIMIT_S=$limit timeout -k 10 "$limit" "$@" >"$WORK/out" 2>"$WORK/err" || rc=$?
    cat "$WORK/out" "$WORK/err" >>"$LOG"
    local got
    got=$(awk -F'\t' '$1 == "row" { print $2 "\t" $3 }' "$WORK/out")
    [ -n "$got" ] && printf '%s\n' "$got" >>"$TABLE"
    if ((rc == 124 || rc == 137)); then
        add "$name" "TIMED OUT after ${limit} s${got:+ (the rows above finished)}"
    elif ((rc != 0)); then
        add "$name" "FAILED (exit $rc): $(grep -v '^[[:space:]]*$' "$WORK/err" | tail -n 1 | cut -c1-300)"
    elif [ -z "$got" ]; then
        add "$name" "no result printed (see the log)"
    fi
    printf '== %s: exit %d after %d s\n' "$name" "$rc" $((SECONDS - t0)) >>"$LOG"
}

# Can the project be imported at all with this Python? Every row would fail alike otherwise:
# one line says why up front.
if ! "$PY" -c 'import distill.cli, distill.pruning.search' >"$WORK/err" 2>&1; then
    add "preflight" "FAILED: $PY cannot import distill: $(tail -n 1 "$WORK/err")"
fi

# Real images for the accuracy row: $DATA if given, else the carried subset, else the shared
# JPEGs of the development machine.
if [ -z "${DATA:-}" ] && [ -f "$CARRY/cifar10-subset.npz" ]; then
    DATA=$WORK/subset
    "$PY" bench/gpu_rows.py unpack "$CARRY/cifar10-subset.npz" "$DATA" >>"$LOG" 2>&1 || {
        add "data subset" "FAILED: $CARRY/cifar10-subset.npz did not unpack (see the log)"
        DATA=
    }
fi
DATA=${DATA:-../shared/data/cifar10-jpeg}

# Random images for the speed rows: enough for DDP's largest run plus a validation split.
SYN=$WORK/synthetic
SYN_TRAIN=$((BATCH * STEPS))
DDP_TRAIN=$((DDP_BATCH * DDP_STEPS * DDP_N))
((DDP_TRAIN > SYN_TRAIN)) && SYN_TRAIN=$DDP_TRAIN
"$PY" bench/gpu_rows.py synthetic "$SYN" --train-images $((SYN_TRAIN + 1000)) >>"$LOG" 2>&1 ||
    add "synthetic data" "FAILED (see the log)"

ROWS=(--device "$DEVICE" --cache-dir "$CACHE")
TRAIN=(--data "$SYN" --work "$WORK" --batch-size "$BATCH" --steps "$STEPS" --epochs "$EPOCHS"
    --val-size "$VAL")
row "train $ARCH" 45 "$PY" bench/gpu_rows.py train --arch "$ARCH" "${TRAIN[@]}" "${ROWS[@]}"
row "KD / DKD / EMA step cost" 60 "$PY" bench/kd_overhead.py --student "$ARCH" \
    --teacher "$TEACHER" --variants labels,hinton,dkd,ema --device "$DEVICE" --rows "${KD_ARGS[@]}"

# eval and bench run on the accuracy run's model, or on the speed row's when there is no data.
MODEL=$WORK/$ARCH.pt
if [ -e "$DATA" ]; then
    row "accuracy: standard, $ARCH" 90 "$PY" bench/gpu_rows.py accuracy --arch "$ARCH" \
        --data "$DATA" --out "$WORK/accuracy.pt" "${ACC_ARGS[@]}" "${ROWS[@]}"
    [ -f "$WORK/accuracy.pt" ] && MODEL=$WORK/accuracy.pt
else
    add "accuracy: standard, $ARCH" "SKIPPED: no data at $DATA and no $CARRY/cifar10-subset.npz \
(python bench/gpu_carry.py makes it); eval and bench below ran on random images"
fi
row "distill eval ($DEVICE)" 30 "$PY" bench/gpu_rows.py eval "$MODEL" "${ROWS[@]}"
row "distill bench ($DEVICE)" 60 "$PY" bench/gpu_rows.py bench "$MODEL" "${BENCH_ARGS[@]}" \
    "${ROWS[@]}"

if ((DDP_N >= 2)); then
    row "DDP $DDP_N vs 1" 90 "$PY" bench/ddp_scaling.py --arch "$ARCH" --data "$SYN" \
        --nproc "$DDP_N" --device "$DEVICE" --cache-dir "$CACHE" --rows \
        --batch-size "$DDP_BATCH" --steps "$DDP_STEPS" --val-size "$VAL"
else
    add "DDP" "skipped: $NGPU GPU visible, nothing to compare one process with"
fi
if [ -z "${GPU_CHECK_SMOKE:-}" ]; then
    row "train $BIG" 45 "$PY" bench/gpu_rows.py train --arch "$BIG" "${TRAIN[@]}" "${ROWS[@]}"
else  # the smoke run checks plumbing: this row is "train $ARCH" with another --arch
    add "train $BIG" "left out of the smoke run: the row above with --arch $BIG"
fi
# A cold Inductor compile of a ResNet takes one to a few minutes: last, with what is left.
row "train $ARCH + compile" 120 "$PY" bench/gpu_rows.py train --compile --arch "$ARCH" \
    "${TRAIN[@]}" "${ROWS[@]}"
row "train $BIG + compile" 180 "$PY" bench/gpu_rows.py train --compile --arch "$BIG" \
    "${TRAIN[@]}" "${ROWS[@]}"

# The table: a header saying where it ran, then one aligned line per row.
{
    echo "gpu_check on $(uname -n), $(date -u '+%Y-%m-%d %H:%M UTC'), commit \
$(git rev-parse --short HEAD 2>/dev/null || echo '?'), $((SECONDS - START)) s"
    "$PY" bench/gpu_rows.py machine 2>&1 | tail -n 1
    if [ -n "${GPU_CHECK_SMOKE:-}" ]; then
        echo "GPU_CHECK_SMOKE: toy sizes on the CPU; no number below means anything"
    fi
    echo
    awk -F'\t' '{ name[NR] = $1; text[NR] = $2; if (length($1) > w) w = length($1) }
        END { for (i = 1; i <= NR; i++) printf "%-*s  %s\n", w, name[i], text[i] }' "$TABLE"
    echo
    echo "log: $LOG"
} | tee -a "$REPORT"
