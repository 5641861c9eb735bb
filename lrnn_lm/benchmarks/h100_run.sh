#!/usr/bin/env bash
# Every GPU figure in the README, in one go on a machine with 2 H100s (about 5 minutes):
#   OUT=some/dir bash lrnn_lm/benchmarks/h100_run.sh
# GPU 0: the kernel benchmarks, then small.yaml (linear RNN). GPU 1: small.yaml with attention, then the
# throughput / generation comparison. Then small.yaml on both GPUs (DDP) for the scaling figure.
set -uo pipefail
OUT=${OUT:-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

(
  export CUDA_VISIBLE_DEVICES=0
  timeout 120 python3 -m kernels.benchmarks.efficiency --out "$OUT/kernels" > "$OUT/efficiency.log" 2>&1
  timeout 60 python3 -m kernels.benchmarks.precision --out "$OUT/kernels" > "$OUT/precision.log" 2>&1
  timeout 120 python3 train.py --config small.yaml --trainer.run_dir runs/small_lrnn > "$OUT/train_lrnn.log" 2>&1
) &
gpu0=$!

# Tokenizer and tokenized splits, once, before the two training runs share the cache.
python3 - <<'PY'
from lrnn_lm.config import load_config
from lrnn_lm.data import LMDataModule
c = load_config("small.yaml")
LMDataModule(c.data, c.model.vocab_size, c.model.eos_id, seed=c.trainer.seed).prepare_data()
PY
(
  export CUDA_VISIBLE_DEVICES=1
  timeout 120 python3 train.py --config small.yaml --model.mixer attention --trainer.run_dir runs/small_attention \
    > "$OUT/train_attention.log" 2>&1
  timeout 120 python3 -m lrnn_lm.benchmarks.compare --out "$OUT/compare" > "$OUT/compare.log" 2>&1
)
wait $gpu0
python3 -m lrnn_lm.benchmarks.compare --runs runs/small_lrnn runs/small_attention --quality-only \
  --out "$OUT/compare" >> "$OUT/compare.log" 2>&1

timeout 60 python3 train.py --config small.yaml --trainer.devices 2 --trainer.strategy ddp \
  --trainer.max_steps 400 --trainer.val_every 400 --trainer.run_dir runs/small_ddp2 > "$OUT/train_ddp2.log" 2>&1
for run in small_lrnn small_attention small_ddp2; do cp "runs/$run/summary.json" "$OUT/summary_$run.json"; done
tail -n 25 "$OUT"/*.log
