#!/usr/bin/env bash
# One-shot GPU check of the Pallas paged-attention kernels (and, if present, the engine).
#
#   bash scripts/gpu_check.sh            # results under $OUT if set, else results/gpu_check
#
# Needs python with jax[cuda] (0.11.x or 0.12.x), absl-py, numpy; no network, no
# ml_collections, no pip install (PYTHONPATH is set to the repo root here).
# Stages, each its own process under `timeout` so one failure or device fault does not lose
# the rest; each writes <out>/<stage>.json as it goes (partial results survive a timeout):
#   nvidia-smi        ~1 s
#   env+correctness   both kernels vs the references on device, bf16 and f32     ~30-45 s
#   decode            copy bandwidth; decode kernel vs XLA reference and vs the first
#                     version's loop, Llama-3-8B bf16, batch 1/8/64/256 x context
#                     512/2k/8k, GB/s and % of copy                               ~50-70 s
#   ragged            512-token chunk + 63 decodes vs roofline, reference, first
#                     version, per layer of a 4-layer stack; the glue alone; pure
#                     decode through both kernels                                 ~15-25 s
#   autotune          ragged configs; decode block configs x 4 shapes, split counts ~60 s
#   confirm           the best two ragged (+ per layer) / decode configs + defaults ~35 s
#   summary           results.json + tables (also in summary.txt)                  ~1 s
#   engine            scripts/engine_gpu_bench.py, if it exists (timeout 150)
#   calib_sweep       scripts/calib_sweep.py: runner step times over batch x context x
#                     chunk, the JSON scripts/fit_profile.py refits the simulator from
#                     (timeout CALIB_TIMEOUT_S, default 120; skipped under 40 s left)
#   ncu               if ncu exists, per kernel while >= 50 s are left: Nsight Compute's
#                     speed-of-light, occupancy, warp-state and memory sections of the
#                     3rd decode (B=64, 2k) launch, then of each ragged tile class's,
#                     each into ncu_<kernel>.txt                                  ~35 s each
# Kernel stages stop by KERNEL_BUDGET_S (default 300 s after start); the whole script by
# TOTAL_BUDGET_S (default 480 s). CPU dry run of every path (tiny shapes, interpret mode):
#   KERNEL_BENCH_ARGS="--profile=smoke --interpret" TOTAL_BUDGET_S=0 bash scripts/gpu_check.sh
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR="${OUT:-$ROOT/results/gpu_check}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
KERNEL_BUDGET_S="${KERNEL_BUDGET_S:-300}"
TOTAL_BUDGET_S="${TOTAL_BUDGET_S:-480}"
START=$(date +%s)

export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
export PYTHONUNBUFFERED=1

elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[gpu_check +$(elapsed)s] $*" | tee -a "$LOG"; }

RC_JSON=""
record_rc() {  # stage rc wall
  RC_JSON="${RC_JSON:+$RC_JSON, }{\"stage\": \"$1\", \"rc\": $2, \"wall_s\": $3}"
  printf '{"stage_rc": [%s], "total_elapsed_s": %s, "out_dir": "%s"}\n' \
    "$RC_JSON" "$(elapsed)" "$OUT_DIR" > "$OUT_DIR/run.json"
}

# run_stage NAME SOFT_BUDGET_S HARD_TIMEOUT_S: kernel_bench stage(s) in a fresh process.
run_stage() {
  local name="$1" soft="$2" hard="$3"
  local left=$(( KERNEL_BUDGET_S - $(elapsed) ))
  if (( left < 15 )); then
    say "skip $name: kernel budget spent"; record_rc "$name" '"skipped"' 0; return
  fi
  (( hard > left )) && hard=$left
  (( soft > hard - 10 )) && soft=$(( hard - 10 ))
  say "stage $name (budget ${soft}s, timeout ${hard}s)"
  local t0; t0=$(date +%s)
  timeout -k 5 "$hard" "$PY" scripts/kernel_bench.py --stage="$name" --budget_s="$soft" \
    --out_dir="$OUT_DIR" ${KERNEL_BENCH_ARGS:-} >> "$LOG" 2>&1
  local rc=$?
  say "stage $name rc=$rc ($(( $(date +%s) - t0 ))s)"
  record_rc "$name" "$rc" "$(( $(date +%s) - t0 ))"
}

say "repo $ROOT, out $OUT_DIR, python $PY"
{ git -C "$ROOT" log -1 --oneline 2>/dev/null; "$PY" --version; } >> "$LOG" 2>&1
timeout 20 nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || say "nvidia-smi failed"
timeout 20 nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
  --format=csv >> "$OUT_DIR/nvidia-smi.txt" 2>&1

run_stage env,correctness 45 70
run_stage decode 70 95
run_stage ragged 25 50
run_stage autotune 70 95
run_stage confirm 45 65

say "summary"
timeout 30 "$PY" scripts/kernel_bench.py --stage=summary --out_dir="$OUT_DIR" \
  > "$OUT_DIR/summary.txt" 2>> "$LOG"
rc=$?
if (( rc != 0 )); then
  say "summary failed (rc=$rc); raw stage JSON follows"
  for f in "$OUT_DIR"/*.json; do echo "--- $f"; head -c 4000 "$f"; echo; done
else
  cat "$OUT_DIR/summary.txt"
fi

if [[ -f "$ROOT/scripts/engine_gpu_bench.py" ]]; then
  left=$(( TOTAL_BUDGET_S - $(elapsed) ))
  cap="${ENGINE_TIMEOUT_S:-150}"
  t=$(( left < cap ? left : cap ))
  if (( t >= 30 )); then
    say "engine bench (timeout ${t}s)"
    t0=$(date +%s)
    timeout -k 5 "$t" "$PY" scripts/engine_gpu_bench.py --out "$OUT_DIR/engine.json" \
      > "$OUT_DIR/engine.log" 2>&1
    rc=$?
    say "engine bench rc=$rc ($(( $(date +%s) - t0 ))s)"
    record_rc engine "$rc" "$(( $(date +%s) - t0 ))"
    tail -n 40 "$OUT_DIR/engine.log"
    # fold engine.json into results.json
    timeout 30 "$PY" scripts/kernel_bench.py --stage=summary --out_dir="$OUT_DIR" \
      > "$OUT_DIR/summary.txt" 2>> "$LOG" || true
  else
    say "engine bench skipped: ${left}s left"
    record_rc engine '"skipped"' 0
  fi
fi
# Calibration sweep: the real runner's step time over batch x context x chunk (Llama-3-8B,
# pallas), for the simulator's cost model. Refit here afterwards, in one command:
#   python scripts/fit_profile.py --config=configs/fit_profile.py \
#     --config.inputs=<out>/calib_sweep.json --config.name=h200-fit
# CALIB_PROFILE=smoke runs the tiny-model CPU version (with the smoke dry run above).
left=$(( TOTAL_BUDGET_S - $(elapsed) ))
cap="${CALIB_TIMEOUT_S:-120}"
t=$(( left < cap ? left : cap ))
if [[ "${CALIB_PROFILE:-gpu}" == smoke ]]; then t=$cap; fi
if (( t >= 40 )); then
  say "calibration sweep (timeout ${t}s)"
  t0=$(date +%s)
  timeout -k 5 "$t" "$PY" scripts/calib_sweep.py --profile="${CALIB_PROFILE:-gpu}" \
    --budget_s=$(( t - 30 )) --out="$OUT_DIR/calib_sweep.json" > "$OUT_DIR/calib_sweep.log" 2>&1
  rc=$?
  say "calibration sweep rc=$rc ($(( $(date +%s) - t0 ))s)"
  record_rc calib_sweep "$rc" "$(( $(date +%s) - t0 ))"
  tail -n 20 "$OUT_DIR/calib_sweep.log"
else
  say "calibration sweep skipped: ${left}s left"
  record_rc calib_sweep '"skipped"' 0
fi
left=$(( TOTAL_BUDGET_S - $(elapsed) ))
NCU="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu \
  2> /dev/null | head -n 1)"
# One kernel per ncu process, each under its own timeout: ncu prints its report only at
# exit, and in run 3 one launch hung the single process and lost all three reports.
for target in paged_decode ragged_paged_attention_bq4 ragged_paged_attention_bq16; do
  left=$(( TOTAL_BUDGET_S - $(elapsed) ))
  if [[ -z "$NCU" ]] || (( left < 50 )); then
    say "ncu $target skipped (ncu: ${NCU:-none}, ${left}s left)"; continue
  fi
  t=$(( left - 5 < 75 ? left - 5 : 75 ))
  say "ncu $target (timeout ${t}s)"
  # --clock-control none: measure the card as it is (never change its clocks)
  timeout -k 5 "$t" "$NCU" --clock-control none --launch-skip 2 --launch-count 1 \
    --kernel-name regex:"$target" --section SpeedOfLight --section Occupancy \
    --section WarpStateStats --section LaunchStats --section MemoryWorkloadAnalysis \
    "$PY" scripts/kernel_bench.py --stage=profile --out_dir="$OUT_DIR/ncu_run" \
    ${KERNEL_BENCH_ARGS:-} > "$OUT_DIR/ncu_$target.txt" 2>&1
  say "ncu $target rc=$? ($(wc -l < "$OUT_DIR/ncu_$target.txt") lines)"
done
say "done in $(elapsed)s; results in $OUT_DIR (results.json, summary.txt, gpu_check.log)"
