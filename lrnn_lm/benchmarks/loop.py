"""train.py's loop against a bare training step of the same model, batch and precision.

    python -m lrnn_lm.benchmarks.loop --config small.yaml [--steps 300] [--out DIR] [--section.field value ...]
    python -m lrnn_lm.benchmarks.loop --config small.yaml --train-summary runs/small/summary.json   # a finished run

1. Bare step: the preset's model (its ModelConfig, dropout included), compiled as train.py compiles it, in a plain
   loop: bf16 autocast forward and loss (`model.nll`, the training loss), backward, fused AdamW,
   zero_grad(set_to_none=True), on random tokens of the preset's batch. Where train.py replays CUDA graphs
   (graphed_loss.py), so does the bare step, and the step without them is timed as well. Tokens per second of the
   steps after a warm-up (compilation), timed with a synchronize at both ends; peak memory (allocated and
   reserved).
2. train.py: the same preset run by `python train.py` in a fresh process (its own data, Lightning loop, callbacks,
   checkpointing at its own interval, validation off), for --steps optimizer steps; its summary's steady-state
   tokens per second (the median of its log_every-step windows after the first).

Prints both, their ratio, and writes OUT/loop_<preset>.json. --train-summary takes train.py's figure from the
summary.json of a finished run of the preset instead of running one.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from kernels.benchmarks.common import DEVICE, run_info, time_steps

from ..config import load_config
from ..graphed_loss import TrainingNLL
from ..model import LinearRNNLM
from ..train import resolve_cuda_graphs

REPO = Path(__file__).resolve().parents[2]


def bare_step(cfg, cuda_graphs: bool | None = None):
    """The preset's model in a plain training loop: -> (step(), tokens per step). One step: bf16 autocast forward and
    loss on random tokens of the preset's batch, backward (trainer.accumulate_grad_batches times, as train.py
    accumulates), fused AdamW, zero_grad(set_to_none=True). cuda_graphs: replay the loss's forward and backward from
    CUDA graphs, as train.py does (None: where train.py would)."""
    torch.manual_seed(0)
    model = LinearRNNLM(cfg.model).to(DEVICE).train()
    if DEVICE == "cuda":
        model.compile_blocks()
    if cuda_graphs is None:
        cuda_graphs = resolve_cuda_graphs(cfg, torch.device(DEVICE))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=DEVICE == "cuda")
    B, T = cfg.data.batch_size, cfg.data.seq_len
    tokens = torch.randint(1, cfg.model.vocab_size, (B, T + 1), device=DEVICE)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    training_nll = TrainingNLL(model, ignore_index=-100, cuda_graphs=cuda_graphs)  # as training computes the loss

    accumulate = cfg.trainer.accumulate_grad_batches

    def step():
        for _ in range(accumulate):
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
                nll, n = training_nll(inputs, targets)
            (nll / n / accumulate).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, B * T * accumulate


def bare_step_tokens_per_s(cfg, steps: int, warmup: int, cuda_graphs: bool | None = None) -> dict:
    step, tokens_per_step = bare_step(cfg, cuda_graphs)
    t = time_steps(step, steps, warmup)
    return {"tokens_per_s": tokens_per_step / t["step_s"], "step_ms": t["step_s"] * 1e3, "warmup_s": t["warmup_s"],
            "peak_memory_gb": t["peak_memory_gb"], "peak_reserved_gb": t["peak_reserved_gb"]}


def train_py_tokens_per_s(config: str, steps: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [sys.executable, str(REPO / "train.py"), "--config", config, "--trainer.max_steps", str(steps),
               "--trainer.val_every", str(100 * steps), "--trainer.logger", "none", "--trainer.run_dir", run_dir,
               *extra]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"train.py failed ({done.returncode}):\n{done.stderr[-4000:]}")
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    return {"tokens_per_s": summary["tokens_per_s"], "wall_s": round(wall, 1), "summary": summary}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="small.yaml")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps timed (train.py: all it runs)")
    p.add_argument("--warmup", type=int, default=15, help="bare-loop steps before timing (compilation)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--train-summary", type=Path, help="summary.json of a finished train.py run of this preset")
    args, extra = p.parse_known_args()
    cfg = load_config(args.config, extra)
    info = run_info() | {"lightning": __import__("lightning").__version__, "config": args.config, "overrides": extra,
                         "batch": [cfg.data.batch_size, cfg.data.seq_len]}
    print(json.dumps(info), flush=True)
    graphs = resolve_cuda_graphs(cfg, torch.device(DEVICE))
    bare = bare_step_tokens_per_s(cfg, args.steps, args.warmup, graphs)
    print(f"bare step{' (CUDA graphs, as train.py)' if graphs else ''}: {bare['tokens_per_s']:,.0f} tokens/s "
          f"({bare['step_ms']:.1f} ms a step)", flush=True)
    bare_without = None
    if graphs:  # the step as the model alone runs it, for scale
        gc.collect()  # the graphed step's model, optimizer and graphs (a reference cycle) go first
        torch.cuda.empty_cache()
        bare_without = bare_step_tokens_per_s(cfg, args.steps, args.warmup, cuda_graphs=False)
        print(f"bare step without CUDA graphs: {bare_without['tokens_per_s']:,.0f} tokens/s "
              f"({bare_without['step_ms']:.1f} ms a step)", flush=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if args.train_summary:
        summary = json.loads(args.train_summary.read_text())
        loop = {"tokens_per_s": summary["tokens_per_s"], "wall_s": summary["wall_time_s"], "summary": summary,
                "from": str(args.train_summary)}
        print(f"train.py:  {loop['tokens_per_s']:,.0f} tokens/s steady ({args.train_summary}: {summary['steps']} steps)")
    else:
        loop = train_py_tokens_per_s(args.config, args.steps, extra)
        print(f"train.py:  {loop['tokens_per_s']:,.0f} tokens/s steady, {loop['wall_s']} s wall for {args.steps} steps")
    ratio = loop["tokens_per_s"] / bare["tokens_per_s"]
    print(f"train.py / bare step: {ratio:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    name = Path(args.config).stem
    (args.out / f"loop_{name}.json").write_text(json.dumps(
        {"info": info, "bare_step": bare, "bare_step_without_cuda_graphs": bare_without, "train_py": loop,
         "ratio": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
