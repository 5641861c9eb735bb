#!/usr/bin/env bash
# The README's GPU figures on one GPU, in two phases that each fit a 10-minute slot:
#   bash lrnn_lm/benchmarks/run_all.sh OUT 1   # kernel tests at GPU sizes, the main job from a fresh cache, the loop
#                                              # against its bare step, the 110M peers
#   bash lrnn_lm/benchmarks/run_all.sh OUT 2   # generation, the tile sweep (writes this GPU's tiles.json entry),
#                                              # kernel efficiency and precision
# Each stage writes OUT/<stage>/ (its log and results), has a time limit, and a failed stage does not stop the next.
# With PACK=DIR set, each stage's folder is also packed into DIR/<stage>.tgz as soon as it ends.
set -uo pipefail
OUT=${1:?an output folder}
PHASE=${2:-1}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
stage() {
  local name=$1 limit=$2
  shift 2
  mkdir -p "$OUT/$name"
  echo "== $name (limit ${limit}s) $(date +%T)"
  local t0=$(date +%s.%N)
  STAGE_OUT="$OUT/$name" timeout "$limit" "$@" > "$OUT/$name/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s"
  tail -n 4 "$OUT/$name/$name.log" | cut -c1-300
  if [ -n "${PACK:-}" ]; then tar czf "$PACK/$name.tgz" -C "$OUT" "$name"; fi
}
python3 -c "import torch, triton, lightning; print('torch', torch.__version__, 'triton', triton.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())"
if [ "$PHASE" = 1 ]; then
  stage tests 190 python3 -m pytest tests/kernels tests/lrnn_lm/test_sampling.py -n 16 -q -p no:cacheprovider
  # the README's main job, as written, from an empty data and compile cache
  stage train_small 130 bash -c 't0=$(date +%s.%N); python3 train.py --config small.yaml; rc=$?;
    echo "wall_s $(python3 -c "print(round($(date +%s.%N) - $t0, 1))")"; cp runs/small/summary.json "$STAGE_OUT/"; exit $rc'
  stage loop_small 60 python3 -m lrnn_lm.benchmarks.loop --config small.yaml --train-summary runs/small/summary.json \
    --steps 100 --out "$OUT/loop_small"
  stage peers 150 python3 -m lrnn_lm.benchmarks.peers --steps 6 --warmup 2 --out "$OUT/peers"
else
  stage generation 80 python3 -m lrnn_lm.benchmarks.generation --out "$OUT/generation"
  stage tune 45 bash -c 'python3 -m kernels.benchmarks.tune --quick --write-table --out "$STAGE_OUT"; rc=$?;
    cp kernels/tiles.json "$STAGE_OUT/"; exit $rc'
  stage efficiency 80 python3 -m kernels.benchmarks.efficiency --quick --out "$OUT/efficiency"
  stage precision 30 python3 -m kernels.benchmarks.precision --out "$OUT/precision"
fi
