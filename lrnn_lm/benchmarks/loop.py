"""train.py's loop against a bare training step of the same model, batch and precision.

    python -m lrnn_lm.benchmarks.loop --config small.yaml [--steps 300] [--out DIR] [--section.field value ...]
    python -m lrnn_lm.benchmarks.loop --config small.yaml --train-summary runs/small/summary.json   # a finished run

1. Bare step: the preset's model (its ModelConfig, dropout included), compiled as train.py compiles it, in a plain
   loop: bf16 autocast forward and loss (`model.nll`, the training loss), backward, the gradient clipping (or, with
   optim.grad_clip 0, the gradient norm) train.py computes, fused AdamW over train.py's parameter groups,
   zero_grad(set_to_none=True), on random tokens of the preset's batch. Where train.py replays CUDA graphs
   (graphed_loss.py), so does the bare step, and the step without them is timed as well. After a warm-up
   (compilation), tokens per second as train.py's summary counts them: the median rate of windows of
   trainer.log_every steps, each ended by a synchronize. Peak memory (allocated and reserved).
2. train.py: the same preset run by `python train.py` in a fresh process (its own data, Lightning loop, callbacks,
   checkpointing at its own interval; validation and the logger off), for --steps optimizer steps; its summary's
   steady-state tokens per second (the median of its log_every-step windows after the first).

Prints both, their ratio, and writes OUT/loop_<preset>.json and .csv. --train-summary takes train.py's figure from
the summary.json of a finished run of the preset instead (as that run was configured: its logger, validation and
checkpoints in); a summary of another batch, accumulation or CUDA-graph setting is refused.
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

from kernels.benchmarks.common import DEVICE, print_table, run_info, time_steps, write_csv

from ..config import load_config
from ..graphed_loss import TrainingNLL
from ..model import LinearRNNLM, optimizer_param_groups
from ..train import resolve_cuda_graphs

REPO = Path(__file__).resolve().parents[2]


def bare_step(cfg, cuda_graphs: bool | None = None):
    """The preset's model in a plain training loop: -> (step(), tokens per step). One step: bf16 autocast forward and
    loss on random tokens of the preset's batch, backward (trainer.accumulate_grad_batches times, as train.py
    accumulates), the gradient norm and clipping of optim.grad_clip, fused AdamW over train.py's parameter groups,
    zero_grad(set_to_none=True). cuda_graphs: replay the loss's forward and backward from CUDA graphs, as train.py
    does (None: where train.py would)."""
    torch.manual_seed(0)
    model = LinearRNNLM(cfg.model).to(DEVICE).train()
    if DEVICE == "cuda":
        model.compile_blocks()
    if cuda_graphs is None:
        cuda_graphs = resolve_cuda_graphs(cfg, torch.device(DEVICE))
    o = cfg.optim
    opt = torch.optim.AdamW(optimizer_param_groups(model, o.weight_decay), lr=o.lr, betas=o.betas,
                            fused=DEVICE == "cuda")
    params = list(model.parameters())
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
        grads = [p for p in params if p.grad is not None]
        if o.grad_clip > 0:  # as LitLM.on_before_optimizer_step
            torch.nn.utils.clip_grad_norm_(grads, o.grad_clip, foreach=True)
        else:
            torch.nn.utils.get_total_norm([p.grad for p in grads], foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, B * T * accumulate


def bare_step_tokens_per_s(cfg, steps: int, warmup: int, cuda_graphs: bool | None = None) -> dict:
    """The bare step's tokens per second as train.py's summary counts its own: after `warmup` steps, the median rate
    of windows of trainer.log_every steps (at least one window), each timed between synchronizes."""
    step, tokens_per_step = bare_step(cfg, cuda_graphs)
    every = min(cfg.trainer.log_every, steps)
    t = time_steps(step, steps, warmup, window=every)
    return {"tokens_per_s": tokens_per_step / t["step_s"], "step_ms": t["step_s"] * 1e3, "warmup_s": t["warmup_s"],
            "windows": t["windows"], "steps_per_window": every, "peak_memory_gb": t["peak_memory_gb"],
            "peak_reserved_gb": t["peak_reserved_gb"]}


def check_summary(summary: dict, cfg, cuda_graphs: bool, path: Path) -> None:
    """Refuse a train.py summary whose steps differ from the bare step's in what they compute: the batch (tokens per
    optimizer step) or the CUDA graphs."""
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * cfg.trainer.accumulate_grad_batches
    got = summary["tokens_seen"] / max(summary["steps"], 1)
    if abs(got - tokens_per_step) > 0.5 or bool(summary.get("cuda_graphs")) != cuda_graphs:
        raise ValueError(f"--train-summary {path}: expected a run of {tokens_per_step} tokens a step with cuda_graphs "
                         f"{cuda_graphs} (this preset's), got {got:.0f} tokens a step with cuda_graphs "
                         f"{summary.get('cuda_graphs')}")


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
        check_summary(summary, cfg, graphs, args.train_summary)
        loop = {"tokens_per_s": summary["tokens_per_s"], "wall_s": summary["wall_time_s"], "summary": summary,
                "from": str(args.train_summary)}
        print(f"train.py:  {loop['tokens_per_s']:,.0f} tokens/s steady ({args.train_summary}: {summary['steps']} steps)")
    else:
        loop = train_py_tokens_per_s(args.config, args.steps, extra)
        print(f"train.py:  {loop['tokens_per_s']:,.0f} tokens/s steady, {loop['wall_s']} s wall for {args.steps} steps")
    ratio = loop["tokens_per_s"] / bare["tokens_per_s"]
    source = f"the run of {args.train_summary}" if args.train_summary else "its own run, validation and logger off"
    rows = [dict(what="bare step" + (", CUDA graphs" if graphs else ""), tokens_per_s=bare["tokens_per_s"],
                 of_bare_step=1.0)]
    if bare_without:
        rows.append(dict(what="bare step, no CUDA graphs", tokens_per_s=bare_without["tokens_per_s"],
                         of_bare_step=bare_without["tokens_per_s"] / bare["tokens_per_s"]))
    rows.append(dict(what=f"train.py ({source})", tokens_per_s=loop["tokens_per_s"], of_bare_step=ratio))
    print_table(rows, ["what", "tokens_per_s", "of_bare_step"])
    print(f"train.py / bare step: {ratio:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    name = Path(args.config).stem
    write_csv(args.out / f"loop_{name}.csv", rows)
    (args.out / f"loop_{name}.json").write_text(json.dumps(
        {"info": info, "bare_step": bare, "bare_step_without_cuda_graphs": bare_without, "train_py": loop,
         "train_py_source": source, "ratio": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
