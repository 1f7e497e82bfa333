#!/usr/bin/env bash
# Fused training on one GPU, in one device-tool call (whole script: GPU_BUDGET seconds, default 570):
#   0. a short probe of the two CUDA mechanisms with 6 members at depth 20 (benchmarks/fused_throughput.py:
#      graphs, CUDA graphs of each member on parallel streams; grouped, one network with grouped convolutions,
#      compiled with CUDA graphs), at most 180 s. The runs use the faster mechanism, and as many members as its
#      rate finishes in the time left, largest first: 4 families x 3 seeds (the whole depth-20 comparison), 3 x 3,
#      4 x 2, else 3 x 2 (resumed by a second call). At graphs' measured ~108,000 images/s with evaluation and
#      checkpoints, a member costs 8.19 million images, about 76 s of the group's time: 6 members fit one call,
#      12 need about 15 minutes.
#   1. full-protocol runs of the paper's depth-20 comparison (64,000 iterations, batch 128, lr 0.1 /10 at 32k and
#      48k, test evaluation and checkpoint every 1000) on the CIFAR-10 JPEG copy, as ONE fused job
#      (engine/fused.py), in run directories named as the paper grid names its cells
#      (`<model>-imagefolder-s<seed>`), so that they join results/paper. It runs under a time cap (at the cap:
#      SIGINT, every member checkpoints). The runs live in .gpu-runs/ (git-ignored and NOT carried), so a second
#      call made while the machine is still warm (within 30 s) resumes them with the first call's choices
#      (.gpu-runs/members.env): carry only .gpu. A job that fails with grouped (not one stopped at its cap) resumes
#      its members' checkpoints with graphs in the time left.
#   2. benchmarks/fused_throughput.py in the time left (BENCH_TIME seconds, default 0: the runs come first), then
#      benchmarks/conv_candidates.py (one layer; at most 30 s, when 45 s are left);
#   3. packs the run directories (config.yaml, metrics.jsonl, summary.json; no checkpoints) into
#      $OUT/fused_runs.tar.gz; unpack it into results/paper and commit.
#
# Data: the 20 MB archive at .gpu/cifar10-jpeg.tar.gz (git-ignored). Before calling the device tool:
#     mkdir -p .gpu && cp ../shared/data/cifar10-jpeg.tar.gz .gpu/
# then run `bash benchmarks/fused_gpu.sh` there with carry [".gpu"] and timeout_s 600.
# Check it on the CPU first (tiny sizes, mechanisms sequential and grouped, the same commands):
#     bash benchmarks/fused_gpu.sh --cpu-dry-run        # .ci/run runs it twice (a second call resumes), after the tests
# Knobs (environment): PYTHON (default python3), GPU_BUDGET, MODELS and SEEDS (given: exactly these members, no
# sizing), BENCH_TIME (seconds kept for the benchmark), ITERS (default 64000), MECHANISM (given: no probe), GPU_DIR
# (default .gpu: where the archive is).
set -uo pipefail

DRY_RUN=0
. "$(dirname "$0")/gpu_prologue.sh"
GPU_DIR="${GPU_DIR:-$REPO/.gpu}"  # the archive (and, in a dry run, the runs); .ci/run points it elsewhere
OUTDIR="${OUT:-$GPU_DIR/out}"
mkdir -p "$OUTDIR"
exec > >(tee -a "$OUTDIR/fused_gpu.log") 2>&1
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( BUDGET - $(date +%s) + T0 )); }

ARCHIVE="$GPU_DIR/cifar10-jpeg.tar.gz"
if [ ! -f "$ARCHIVE" ]; then
  echo "fused_gpu.sh: $ARCHIVE is missing: mkdir -p .gpu && cp ../shared/data/cifar10-jpeg.tar.gz .gpu/ and name" \
       ".gpu in the device tool's carry" >&2
  exit 2
fi
SIZED=0  # MODELS and SEEDS given: train exactly those; else sized from the probe (step 0)
[ -n "${MODELS:-}${SEEDS:-}" ] && SIZED=1
MODELS="${MODELS:-resnet20,se_resnet20,res_se_net20}"
SEEDS="${SEEDS:-1,2}"
if [ "$DRY_RUN" = 1 ]; then
  DEVICE=cpu; BUDGET="${GPU_BUDGET:-100000}"; RUNS="$GPU_DIR/dry/paper"
  BATCH=8; TRAIN_ARGS=(--iters "${ITERS:-6}" --batch-size 8 --eval-every 2 --log-every 2 --ckpt-every 2 --no-compile
              --set data.train_limit=256 --set data.test_limit=100)
  CASES="sequential:20:1,2;grouped:20:1,2;procs:20:2"
  BENCH_ARGS=(--batch-size 8 --seconds 0.5 --min-steps 2)
  PROBE_MECHS=(sequential grouped)
else
  DEVICE=cuda; BUDGET="${GPU_BUDGET:-570}"; RUNS="$REPO/.gpu-runs/paper"
  BATCH=128; TRAIN_ARGS=(--iters "${ITERS:-64000}" --log-every 1000)
  CASES="grouped:20:1,4,8,12,16,32;grouped-eager:20:12;grouped:56:4,12;graphs:110:1,8;grouped:110:8;procs:20:4"
  BENCH_ARGS=(--seconds 1.5 --min-steps 10)
  PROBE_MECHS=(graphs grouped)
fi

echo "== benchmarks/fused_gpu.sh (dry run $DRY_RUN, device $DEVICE, budget $BUDGET s) $(date -u +%FT%TZ)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
  --format=csv,noheader
"$PY" -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', \
torch.version.cuda, 'GPU', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"

echo "-- 0. decoding the archive into the cache [t=$(elapsed) s]"
"$PY" -c "
import sys, time
from ressenet.data import load_datasets
t = time.perf_counter(); s = load_datasets('imagefolder', sys.argv[1])
print(f\"{s['train'].description}: {len(s['train'])} train / {len(s['test'])} test in {time.perf_counter() - t:.1f} s\")
" "$ARCHIVE" || exit 1

N_MEMBERS=$(( $(echo "$MODELS" | tr ',' '\n' | wc -l) * $(echo "$SEEDS" | tr ',' '\n' | wc -l) ))
# A second call (the machine still warm) finds the first call's choices here and resumes its runs with them.
CHOICE="$(dirname "$RUNS")/members.env"
if [ -f "$CHOICE" ]; then
  . "$CHOICE"; echo "-- 0. as the first call chose: mechanism $MECHANISM, $MODELS x seeds $SEEDS (no probe)"
elif [ -n "${MECHANISM:-}" ]; then
  echo "-- 0. mechanism $MECHANISM (given; no probe)"
else
  echo "-- 0. probe: ${PROBE_MECHS[*]} at depth 20, $N_MEMBERS members [t=$(elapsed) s]"
  PROBE_CASES="${PROBE_MECHS[0]}:20:$N_MEMBERS;${PROBE_MECHS[1]}:20:$N_MEMBERS"
  timeout -s KILL 180 "$PY" benchmarks/fused_throughput.py --device "$DEVICE" --cases "$PROBE_CASES" \
    --data-root "$ARCHIVE" --json "$OUTDIR/probe.json" "${BENCH_ARGS[@]}" || echo "   probe failed or was cut (exit $?)"
  MECHANISM=$("$PY" - "$OUTDIR/probe.json" "${PROBE_MECHS[0]}" <<'EOF'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["results"]
except (OSError, ValueError, KeyError):
    rows = []
print(max(rows, key=lambda r: r["images_per_second"])["mechanism"] if rows else sys.argv[2])
EOF
)
  echo "   the runs use mechanism $MECHANISM"
fi

# The group's size from the probe's rate (a conservative estimate: a larger group trains at least as fast), unless
# MODELS/SEEDS were given.
if [ ! -f "$CHOICE" ] && [ "$SIZED" = 0 ] && [ -f "$OUTDIR/probe.json" ]; then
  read -r MODELS SEEDS < <("$PY" - "$OUTDIR/probe.json" "$MECHANISM" "$(( $(left) - ${BENCH_TIME:-0} - 40 ))" \
                          "$(( ${ITERS:-$([ "$DRY_RUN" = 1 ] && echo 6 || echo 64000)} * BATCH ))" "$MODELS" "$SEEDS" <<'EOF'
import json, sys
probe, mech, seconds, images, models, seeds = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), \
    sys.argv[5], sys.argv[6]
rows = [r for r in json.load(open(probe))["results"] if r["mechanism"] == mech]
rate = 0.9 * rows[0]["images_per_second"] if rows else 0  # evaluation and checkpoints cost about 10%
seconds -= 90 if mech == "grouped" else 20  # the job compiles its fused network again (other shapes), or captures
four, three = "resnet20,se_resnet20,res_se_net20,resnet20_nobridge", "resnet20,se_resnet20,res_se_net20"
for m, s in ((four, "1,2,3"), (three, "1,2,3"), (four, "1,2"), (three, "1,2")):  # preferred first
    n = len(m.split(",")) * len(s.split(","))
    if rate and n * images / rate <= seconds:
        print(m, s)
        break
else:
    print(models, seeds)  # too slow for even the smallest: train it anyway and resume in a second call
EOF
)
  echo "   sized from the probe: $MODELS x seeds $SEEDS"
fi
save_choice() { mkdir -p "$(dirname "$CHOICE")" && printf 'MODELS=%s\nSEEDS=%s\nMECHANISM=%s\n' "$MODELS" "$SEEDS" \
  "$MECHANISM" > "$CHOICE"; }
save_choice

BENCH_TIME="${BENCH_TIME:-0}"
CAP=$(( $(left) - BENCH_TIME - 25 ))
echo "-- 1. fused comparison: $MODELS x seeds $SEEDS, mechanism $MECHANISM, cap $CAP s [t=$(elapsed) s]"
train_job() {  # the fused job with mechanism $1 for at most $2 seconds (then SIGINT: every member checkpoints)
  timeout -s INT --kill-after=40 "$2" "$PY" -m ressenet train --model "$MODELS" --seed "$SEEDS" \
    --dataset imagefolder --data-root "$ARCHIVE" --device "$DEVICE" --out "$RUNS" --progress plain \
    --member-name "{model}-imagefolder-s{seed}" --fused-mechanism "$1" "${TRAIN_ARGS[@]}"
}
p0=$(date +%s)
train_job "$MECHANISM" "$CAP"
RC=$?
echo "   exit status $RC after $(( $(date +%s) - p0 )) s"
# A job that failed (not one stopped at its cap: 130) resumes its members' checkpoints with the other mechanism:
# the mechanism is not part of a run's configuration, only of how its steps are computed.
if [ "$RC" != 0 ] && [ "$RC" != 130 ] && [ "$MECHANISM" = "${PROBE_MECHS[1]}" ] && [ "$(left)" -gt 120 ]; then
  MECHANISM="${PROBE_MECHS[0]}"
  save_choice
  CAP=$(( $(left) - ${BENCH_TIME:-0} - 25 ))
  echo "-- 1b. the job failed; resuming it with mechanism $MECHANISM, cap $CAP s [t=$(elapsed) s]"
  train_job "$MECHANISM" "$CAP"
  RC=$?
  echo "   exit status $RC"
fi

if [ "$BENCH_TIME" -gt 0 ]; then
  echo "-- 2. fused throughput (start no case after $(( $(left) - 20 )) s) [t=$(elapsed) s]"
  timeout -s KILL "$(( $(left) - 10 ))" "$PY" benchmarks/fused_throughput.py --device "$DEVICE" --cases "$CASES" \
    --data-root "$ARCHIVE" --deadline "$(( $(left) - 25 ))" --json "$OUTDIR/fused_throughput.json" "${BENCH_ARGS[@]}" \
    || echo "   fused_throughput.py failed or was cut (exit $?)"
fi

if [ "$(left)" -gt 45 ]; then
  echo "-- 2b. convolution candidates, one layer at a time (dense, grouped, bmm) [t=$(elapsed) s]"
  timeout -s KILL 30 "$PY" benchmarks/conv_candidates.py --device "$DEVICE" --members 1,4,12 \
    $([ "$DRY_RUN" = 1 ] && echo "--batch-size 8 --repeats 2") --json "$OUTDIR/conv_candidates.json" \
    || echo "   conv_candidates.py failed or was cut (exit $?)"
fi

echo "-- 3. results [t=$(elapsed) s]"
"$PY" - "$RUNS" <<'EOF'
import json, sys
from pathlib import Path
for d in sorted(Path(sys.argv[1]).iterdir()):
    s, m = d / "summary.json", d / "metrics.jsonl"
    if s.exists():
        j = json.loads(s.read_text())
        print(f"{d.name:<28} done: test top-1 {j['test_top1']:.2f}%  top-5 {j['test_top5']:.2f}%  "
              f"{j['train_images_per_second'] or 0:,.0f} img/s per member")
    elif m.exists():
        recs = [json.loads(x) for x in m.read_text().splitlines() if x.strip()]
        print(f"{d.name:<28} stopped at iteration {recs[-1]['iter'] if recs else 0}")
EOF
tar czf "$OUTDIR/fused_runs.tar.gz" --exclude='*.pt' -C "$(dirname "$RUNS")" "$(basename "$RUNS")" && \
  echo "packed $OUTDIR/fused_runs.tar.gz ($(du -k "$OUTDIR/fused_runs.tar.gz" | cut -f1) KiB)"
echo "== fused_gpu.sh done in $(elapsed) s"
