#!/usr/bin/env bash
# The README's GPU figures on one GPU, in two phases that each fit a 10-minute slot:
#   bash lrnn_lm/benchmarks/run_all.sh OUT 1   # kernel tests at GPU sizes, the main job from a fresh cache, the loop
#                                              # against its bare step, the 110M peers
#   bash lrnn_lm/benchmarks/run_all.sh OUT 2   # generation, the tile sweep (writes this GPU's tiles.json entry),
#                                              # kernel efficiency and precision
# Each stage has a time limit, logs to OUT/<stage>.log, and a failed stage does not stop the next.
set -uo pipefail
OUT=${1:?an output folder}
PHASE=${2:-1}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
stage() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s) $(date +%T)"
  local t0=$(date +%s.%N)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s"
  tail -n 4 "$OUT/$name.log" | cut -c1-300
}
python3 -c "import torch, triton, lightning; print('torch', torch.__version__, 'triton', triton.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.log"
if [ "$PHASE" = 1 ]; then
  stage tests 190 python3 -m pytest tests/kernels tests/lrnn_lm/test_sampling.py -n 16 -q -p no:cacheprovider
  # the README's main job, as written, from an empty data and compile cache
  stage train_small 120 python3 train.py --config small.yaml
  cp runs/small/summary.json "$OUT/summary_small.json" 2>/dev/null
  stage loop_small 60 python3 -m lrnn_lm.benchmarks.loop --config small.yaml --train-summary runs/small/summary.json \
    --steps 100 --out "$OUT"
  stage peers 150 python3 -m lrnn_lm.benchmarks.peers --steps 8 --warmup 3 --out "$OUT"
else
  stage generation 80 python3 -m lrnn_lm.benchmarks.generation --out "$OUT"
  stage tune 45 python3 -m kernels.benchmarks.tune --quick --write-table --out "$OUT"
  cp kernels/tiles.json "$OUT/tiles.json"
  stage efficiency 75 python3 -m kernels.benchmarks.efficiency --quick --out "$OUT"
  stage precision 30 python3 -m kernels.benchmarks.precision --out "$OUT"
fi
