#!/usr/bin/env bash
# The README's GPU measurements, rerun in one go with the current presets on a host with 2 H100s
# (about 15 minutes; not yet run as a whole):
#   OUT=some/dir bash lrnn_lm/benchmarks/h100_run.sh
# Timed phases run one after another, so no timing shares a GPU or the host's CPUs with another job
# (compiling kernels on the CPU slows every host-bound measurement beside it). The two training runs share
# the host (one GPU each); their wall times include compiling. (The README's runs of 2026-11-26 ran these
# phases as separate jobs, the two training runs one after the other on one H100, and scaling on 2 H200s.)
set -uo pipefail
OUT=${OUT:-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
python3 -c "import torch, triton, lightning; print('torch', torch.__version__, 'triton', triton.__version__, 'lightning', lightning.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

CUDA_VISIBLE_DEVICES=0 python3 -m pytest tests/kernels -q -p no:cacheprovider > "$OUT/pytest_gpu.log" 2>&1
CUDA_VISIBLE_DEVICES=0 python3 -m kernels.benchmarks.efficiency --out "$OUT/kernels" > "$OUT/efficiency.log" 2>&1
CUDA_VISIBLE_DEVICES=0 python3 -m kernels.benchmarks.precision --out "$OUT/kernels" > "$OUT/precision.log" 2>&1

# small.yaml with each mixer, one GPU each, side by side (the data cache is prepared once, first).
python3 - <<'PY'
from lrnn_lm.config import load_config
from lrnn_lm.data import LMDataModule
c = load_config("small.yaml")
LMDataModule(c.data, c.model.vocab_size, c.model.eos_id, seed=c.trainer.seed).prepare_data()
PY
CUDA_VISIBLE_DEVICES=0 python3 train.py --config small.yaml --trainer.run_dir runs/small_lrnn > "$OUT/train_lrnn.log" 2>&1 &
CUDA_VISIBLE_DEVICES=1 python3 train.py --config small.yaml --model.mixer attention \
  --trainer.run_dir runs/small_attention > "$OUT/train_attention.log" 2>&1
wait

CUDA_VISIBLE_DEVICES=0 python3 -m lrnn_lm.benchmarks.compare --compile --runs runs/small_lrnn runs/small_attention \
  --out "$OUT/compare" > "$OUT/compare.log" 2>&1
python3 -m lrnn_lm.benchmarks.scaling --config small.yaml --gpus 1 2 1 2 --steps 400 --data.batch_size 32 \
  --out "$OUT/scaling" > "$OUT/scaling.log" 2>&1
for run in small_lrnn small_attention; do
  cp "runs/$run/summary.json" "$OUT/summary_$run.json"
  for split in validation test; do  # the issue's anchor was scored on 256-token windows
    python3 -m lrnn_lm.evaluate --ckpt "runs/$run/checkpoints/best.ckpt" --split $split --seq-len 256 \
      > "$OUT/eval256_${run}_$split.json"
  done
done
tail -n 25 "$OUT"/*.log
