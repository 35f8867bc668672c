#!/usr/bin/env bash
# On a CUDA machine with torch, nvcc and no network: build the extension with its CUDA kernels, run the kernel
# tests and the test of an RM spread over the GPU and the CPU (--device-map), then the GPU benches on random-weight
# models of real shapes (weights do not change the timings).
#   bash bench/gpu_check.sh [OUT_DIR]
# Needs torch, transformers, accelerate, click, h5py, pybind11, pytest, tqdm (no datasets / hub access).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/rmt-gpu}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

echo "== build (CUDA) =="
RMT_REQUIRE_EXT=1 python3 setup.py -q build_ext --inplace 2>&1 | tail -n 20 | tee "$OUT/build.txt"
python3 -c "import rmt_kernels as rk; print('backend', rk.backend()); assert rk.backend() == 'ext-cuda'"

echo "== kernel tests =="
python3 -m pytest tests/test_kernels.py -q -p no:cacheprovider 2>&1 | tee "$OUT/test_kernels.txt" | tail -n 3

echo "== an RM spread over the GPU and the CPU =="
python3 -m pytest tests/test_device_map.py -q -p no:cacheprovider -k gpu 2>&1 | tee "$OUT/test_device_map.txt" | tail -n 3

echo "== random-weight models of real shapes =="
python3 - <<'EOF'
import common
from transformers import AutoModelForSequenceClassification, GPT2Config, LlamaConfig
tok = common.byte_tokenizer()
special = dict(bos_token_id=len(tok) - 1, eos_token_id=len(tok) - 1, pad_token_id=len(tok) - 1, num_labels=1)
shapes = {"/tmp/gpt2-small-shape": GPT2Config(vocab_size=len(tok), **special),
          "/tmp/smollm2-135m-shape": LlamaConfig(vocab_size=len(tok), hidden_size=576, intermediate_size=1536,
                                                 num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                                 max_position_embeddings=8192, tie_word_embeddings=True, **special)}
for path, config in shapes.items():
    AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
EOF

echo "== benches =="
python3 bench/bench_accumulate.py --device cuda --batch 16 --seq 512 --d 1536 2>&1 | tee "$OUT/bench_accumulate.txt"
for m in ${MODELS:-/tmp/gpt2-small-shape /tmp/smollm2-135m-shape}; do
  python3 bench/bench_neurons.py --model "$m" --device cuda --data-dir data/demo/hh-rlhf --pairs 128 \
    --naive-pairs 32 --memory-pairs 32 --reps 3 2>&1 | tee "$OUT/bench_neurons_$(basename $m).txt" | tail -n 9
  python3 bench/bench_score.py --model "$m" --device cuda --items data/demo/bench --max-items 400 \
    --batch-size 64 2>&1 | tee "$OUT/bench_score_$(basename $m).txt" | tail -n 8
  if [ -f bench/bench_ablate.py ]; then
    python3 bench/bench_ablate.py --model "$m" --device cuda 2>&1 | tee "$OUT/bench_ablate_$(basename $m).txt" \
      | tail -n 12
  fi
done
