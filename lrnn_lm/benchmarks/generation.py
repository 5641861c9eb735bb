"""Generation speed and memory: the eager decode step against the CUDA-graph decoder (decoding.py).

    python -m lrnn_lm.benchmarks.generation [--config small.yaml] [--prompt-len 1024] [--new-tokens 512]
                                            [--batches 1 64] [--out DIR]

The preset's model (random weights: speed does not depend on them), bf16 autocast, greedy decoding of
--new-tokens tokens after a prompt of --prompt-len random tokens, through `sampling.sample` as `lrnn_lm.generate`
calls it. Per batch size and decoder: tokens/s over the whole call (prefill included) and over decoding alone, and
the peak memory above the weights. A warm-up call first (compilation and graph capture happen per call, from the
compiled cache after the first). Each time is the median of --repeats calls. Decoding alone is the difference
between calls of --new-tokens and of half as many: the prompt's prefill, the graph's capture and the call's setup
cancel out. Memory is also read after 4× the new tokens: it must not grow. The graph decoder's
tokens are checked against the eager ones (greedy: the replayed eager step gives the same; the compiled step's
fused kernels may round differently). Writes OUT/generation.{csv,json}. --smoke: a tiny model, eager, on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from kernels.benchmarks.common import DEVICE, print_table, run_info, sync, write_csv

from ..config import ModelConfig, load_config
from ..model import LinearRNNLM
from ..sampling import sample

def _allocated() -> int:
    return torch.cuda.max_memory_allocated() if DEVICE == "cuda" else 0


def timed_sample(model, prompts, new_tokens: int, decoder: str, repeats: int = 1) -> tuple[torch.Tensor, float]:
    """-> (tokens (B, new_tokens), the median seconds of `repeats` whole calls)."""
    times = []
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            out = sample(model, prompts, new_tokens, temperature=0.0, decoder=decoder)
            sync()
            times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="small.yaml")
    p.add_argument("--prompt-len", type=int, default=1024)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--decoders", nargs="+", choices=["eager", "graph"], default=["eager", "graph"])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--repeats", type=int, default=3, help="calls per time (their median)")
    p.add_argument("--smoke", action="store_true", help="a tiny model, eager, on the CPU")
    args = p.parse_args()
    cfg = dataclasses.replace(load_config(args.config).model, dropout=0.0)
    if args.smoke:
        cfg = ModelConfig(vocab_size=256, d_model=32, n_layers=2)
        args.prompt_len, args.new_tokens, args.batches, args.decoders = 16, 32, [1, 2], ["eager"]
    info = run_info() | {"config": args.config, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens}
    print(json.dumps(info), flush=True)
    torch.manual_seed(0)
    model = LinearRNNLM(cfg).to(DEVICE).eval()
    weights = torch.cuda.memory_allocated() if DEVICE == "cuda" else 0
    rows, tokens_by = [], {}
    for batch in args.batches:
        prompts = torch.randint(1, cfg.vocab_size, (batch, args.prompt_len), device=DEVICE)
        for decoder in args.decoders:
            timed_sample(model, prompts, 16, decoder)  # warm-up: kernels, compilation
            if DEVICE == "cuda":
                torch.cuda.reset_peak_memory_stats()
            out, total_s = timed_sample(model, prompts, args.new_tokens, decoder, args.repeats)
            peak = (_allocated() - weights) / 1e6
            half = args.new_tokens // 2
            _, half_s = timed_sample(model, prompts, half, decoder, args.repeats)
            steps_s = max(total_s - half_s, 0.0)  # the last new_tokens - half decode steps, setup cancelled
            tokens_by[(batch, decoder)] = out
            row = dict(batch=batch, decoder=decoder, new_tokens=args.new_tokens, repeats=args.repeats,
                       tokens_per_s=batch * args.new_tokens / total_s,
                       decode_tokens_per_s=batch * (args.new_tokens - half) / max(steps_s, 1e-9),
                       ms_per_step=steps_s / (args.new_tokens - half) * 1e3, seconds=total_s,
                       seconds_half_tokens=half_s, peak_mb_above_weights=peak)
            if decoder == "graph":  # constant memory: 4x the tokens, the same peak
                torch.cuda.reset_peak_memory_stats()
                timed_sample(model, prompts, 4 * args.new_tokens, decoder)
                row["peak_mb_above_weights_4x_tokens"] = (_allocated() - weights) / 1e6
            if (batch, "eager") in tokens_by and decoder == "graph":
                row["same_tokens_as_eager"] = bool(torch.equal(out, tokens_by[(batch, "eager")]))
            rows.append(row)
            print(row, flush=True)
    print_table(rows, ["batch", "decoder", "tokens_per_s", "decode_tokens_per_s", "ms_per_step",
                       "peak_mb_above_weights"])
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "generation.csv", rows)
    (args.out / "generation.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
