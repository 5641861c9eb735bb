"""Data-parallel scaling: the same preset on 1 GPU and on N GPUs (DDP), the per-GPU batch held fixed.

    python -m lrnn_lm.benchmarks.scaling --config small.yaml --gpus 1 2 [--steps 400] [--out DIR] [--field value ...]
    python -m lrnn_lm.benchmarks.scaling --gpus 1 2 --steps 400 --measure-only   # re-read runs/scaling/{1,2}gpu

Extra `--section.field value` arguments go to every train.py run, e.g. --data.batch_size 128: a per-GPU step long
enough that host time between steps does not decide the figure.

Each run is a plain `train.py` subprocess (so DDP launches exactly as a user's run does) with the CSV logger, in a
fresh run_dir (--trainer.overwrite). Tokens/s is the run's summary figure: the median of the 20-step windows after
the first, validation excluded (callbacks.TrainingSpeed). Validation is off during fit so that only training steps are
timed; each run still evaluates the final weights (not timed here). Scaling efficiency at N GPUs = tokens/s per GPU
at N / tokens/s per GPU at 1. CUDA graphs are off in every run: train.py uses them on one device only (not under
DDP), and the 1-GPU baseline would otherwise be another kind of step.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
LOG_EVERY = 20  # optimizer steps per throughput window


def run(config: str, gpus: int, steps: int, run_dir: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, str(REPO / "train.py"), "--config", config,
           "--trainer.devices", str(gpus), "--trainer.strategy", "ddp" if gpus > 1 else "auto",
           "--trainer.max_steps", str(steps), "--trainer.val_every", str(10 * steps),
           "--trainer.checkpoint_every", str(steps), "--trainer.logger", "csv", "--trainer.log_every", str(LOG_EVERY),
           "--trainer.run_dir", str(run_dir), "--trainer.overwrite", "--trainer.cuda_graphs", "false", *extra]
    print(" ".join(cmd), flush=True)
    # Its own process group, ended with this script: a run left behind (DDP ranks included) would keep the
    # GPUs busy and spoil every measurement after it.
    proc = subprocess.Popen(cmd, env=os.environ | {"PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        if proc.wait() != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
    return measure(gpus, steps, run_dir)


def measure(gpus: int, steps: int, run_dir: Path) -> dict:
    """The figures of one finished run in run_dir: its summary's steady-state tokens/s (the median of the
    log_every-step windows after the first, validation excluded: callbacks.TrainingSpeed) and the windows it had."""
    # this run's log: CSVLogger adds version_N each time a run dir is reused
    metrics = max(run_dir.glob("csv/version_*/metrics.csv"), key=lambda m: int(m.parent.name.split("_")[1]))
    with open(metrics) as f:
        windows = sum(1 for r in csv.DictReader(f) if r.get("train/tokens_per_s")) - 1  # the first holds warm-up
    if windows < 1:
        raise ValueError(f"steps: expected enough steps for two {LOG_EVERY}-step windows, got {steps}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return dict(gpus=gpus, steps=steps, tokens_per_s_per_gpu=summary["tokens_per_s"] / gpus,
                tokens_per_s=summary["tokens_per_s"], windows=windows, val_bpb=summary["validation"]["bpb"],
                wall_time_s=summary["wall_time_s"])


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` and schedulers: clean up the child runs
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="small.yaml")
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--runs", type=Path, default=Path("runs/scaling"))
    p.add_argument("--append", action="store_true", help="add to the runs already in OUT/scaling.json")
    p.add_argument("--measure-only", action="store_true", help="re-read the finished runs in RUNS, train nothing")
    args, extra = p.parse_known_args()
    cuda = torch.cuda.is_available()  # without it (tests), the runs use the CPU: --trainer.accelerator cpu
    info = dict(gpu=torch.cuda.get_device_name() if cuda else "cpu", gpus_visible=torch.cuda.device_count(),
                date=datetime.date.today().isoformat(), torch=torch.__version__,
                triton=__import__("triton").__version__, lightning=__import__("lightning").__version__,
                nccl=".".join(map(str, torch.cuda.nccl.version())) if cuda else None, config=args.config, extra=extra)
    print(json.dumps(info), flush=True)
    report = args.out / "scaling.json"
    rows = []
    if args.append and report.exists():
        previous = json.loads(report.read_text())
        keys = ("gpu", "config", "extra")
        if any(previous["info"][k] != info[k] for k in keys):
            raise ValueError(f"--append: expected the runs in {report} to share this GPU, config and arguments, got "
                             f"{previous['info']}")
        rows = previous["runs"]
    if args.measure_only:
        rows += [measure(n, args.steps, args.runs / f"{n}gpu") for n in args.gpus]
    else:
        rows += [run(args.config, n, args.steps, args.runs / f"{n}gpu", extra) for n in args.gpus]
    one_gpu = [r for r in rows if r["gpus"] == 1]
    if not one_gpu:
        raise ValueError(f"--gpus: expected a 1-GPU run (here or appended to) as the baseline, got {args.gpus}")
    base = one_gpu[-1]["tokens_per_s_per_gpu"]
    for r in rows:
        r["scaling_efficiency"] = r["tokens_per_s_per_gpu"] / base
    print("| GPUs | tokens/s | tokens/s per GPU | scaling efficiency |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['gpus']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_gpu']:,.0f} | "
              f"{r['scaling_efficiency']:.3f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(dict(info=info, runs=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
