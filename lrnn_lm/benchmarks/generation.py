"""Generation speed and memory: the eager decode step against the CUDA-graph decoder (decoding.py).

    python -m lrnn_lm.benchmarks.generation [--config small.yaml] [--prompt-len 1024] [--new-tokens 512]
                                            [--batches 1 64] [--out DIR]

The preset's model (random weights: speed does not depend on them), bf16 autocast, greedy decoding of
--new-tokens tokens after a prompt of --prompt-len random tokens, through `sampling.sample` as `lrnn_lm.generate`
calls it. Per batch size and decoder: tokens/s over the whole call (`tokens_per_s`: the prompt's prefill and the
decoder's setup included, as a user's call pays them) and over decoding alone (`decode_tokens_per_s`), and the peak
memory above the weights. A warm-up call first (compilation and graph capture happen per call, from the compiled
cache after the first). Calls of --new-tokens and of half as many alternate, --repeats of each: the whole call's
time is the median of the first; decoding alone is the median of the pairs' differences, in which the prefill, the
graph's capture and the call's setup cancel out (NaN where timing noise exceeds that difference). Beside each
figure, the bound of a step that only reads every weight once at the copy bandwidth measured in the same run
(`weights_read_bound_tokens_per_s`; decoding at small batch is bound by those reads, not by arithmetic). Memory is
also read after 4× the new tokens: it must not grow. The graph decoder's tokens are checked against the eager ones
(greedy: the replayed eager step gives the same; the compiled step's fused kernels may round differently). Writes
OUT/generation.{csv,json,png}. --smoke: a tiny model, eager, on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from kernels.benchmarks.common import DEVICE, copy_bandwidth_gbs, print_table, run_info, sync, write_csv

from ..config import ModelConfig, load_config
from ..model import LinearRNNLM
from ..sampling import sample


def _allocated() -> int:
    return torch.cuda.max_memory_allocated() if DEVICE == "cuda" else 0


def timed_sample(model, prompts, new_tokens: int, decoder: str) -> tuple[torch.Tensor, float]:
    """-> (tokens (B, new_tokens), seconds of one whole greedy call)."""
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
        sync()
        t0 = time.perf_counter()
        out = sample(model, prompts, new_tokens, temperature=0.0, decoder=decoder)
        sync()
    return out, time.perf_counter() - t0


def timed_pairs(model, prompts, new_tokens: int, decoder: str, repeats: int) -> tuple[torch.Tensor, list, list]:
    """Calls of new_tokens and of new_tokens // 2 tokens, alternating, `repeats` of each -> (the tokens of the last
    whole call, the whole calls' seconds, the half calls' seconds)."""
    whole, half = [], []
    for _ in range(repeats):
        out, s = timed_sample(model, prompts, new_tokens, decoder)
        whole.append(s)
        half.append(timed_sample(model, prompts, new_tokens // 2, decoder)[1])
    return out, whole, half


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
    copy_gbs = copy_bandwidth_gbs()
    torch.manual_seed(0)
    model = LinearRNNLM(cfg).to(DEVICE).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    info |= {"copy_GBps": copy_gbs, "weight_bytes": weight_bytes}
    weights = torch.cuda.memory_allocated() if DEVICE == "cuda" else 0
    rows, tokens_by = [], {}
    for batch in args.batches:
        prompts = torch.randint(1, cfg.vocab_size, (batch, args.prompt_len), device=DEVICE)
        for decoder in args.decoders:
            timed_sample(model, prompts, 16, decoder)  # warm-up: kernels, compilation
            if DEVICE == "cuda":
                torch.cuda.reset_peak_memory_stats()
            out, whole, halves = timed_pairs(model, prompts, args.new_tokens, decoder, args.repeats)
            peak = (_allocated() - weights) / 1e6
            total_s, half_s = statistics.median(whole), statistics.median(halves)
            decode_steps = args.new_tokens - args.new_tokens // 2
            steps_s = statistics.median(w - h for w, h in zip(whole, halves))  # the last decode_steps steps
            if steps_s <= 0:
                steps_s = float("nan")  # noise larger than the steps timed: no figure rather than a wrong one
            tokens_by[(batch, decoder)] = out
            row = dict(batch=batch, decoder=decoder, new_tokens=args.new_tokens, repeats=args.repeats,
                       tokens_per_s=batch * args.new_tokens / total_s,
                       decode_tokens_per_s=batch * decode_steps / steps_s,
                       weights_read_bound_tokens_per_s=batch * copy_gbs * 1e9 / weight_bytes,
                       ms_per_step=steps_s / decode_steps * 1e3, seconds=total_s,
                       seconds_half_tokens=half_s, peak_mb_above_weights=peak)
            if decoder == "graph":  # constant memory: 4x the tokens, the same peak
                torch.cuda.reset_peak_memory_stats()
                timed_sample(model, prompts, 4 * args.new_tokens, decoder)
                row["peak_mb_above_weights_4x_tokens"] = (_allocated() - weights) / 1e6
            if (batch, "eager") in tokens_by and decoder == "graph":
                row["same_tokens_as_eager"] = bool(torch.equal(out, tokens_by[(batch, "eager")]))
            rows.append(row)
            print(row, flush=True)
    print_table(rows, ["batch", "decoder", "tokens_per_s", "decode_tokens_per_s", "weights_read_bound_tokens_per_s",
                       "ms_per_step", "peak_mb_above_weights"])
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "generation.csv", rows)
    (args.out / "generation.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
    plot(rows, info, args.out / "generation.png")


def plot(rows, info, path: Path) -> None:
    """Tokens/s per batch and decoder, whole calls and decoding alone, on a log scale, beside the weight-read bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows})
    series = [(f"{d}, {what}", d, key) for d in dict.fromkeys(r["decoder"] for r in rows)
              for what, key in (("whole call", "tokens_per_s"), ("decoding alone", "decode_tokens_per_s"))]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.8 / len(series)
    for i, (label, decoder, key) in enumerate(series):
        vals = [next((r[key] for r in rows if r["batch"] == b and r["decoder"] == decoder), 0) for b in batches]
        ax.bar([j + (i - (len(series) - 1) / 2) * width for j in range(len(batches))], vals, width, label=label)
    bound = {r["batch"]: r["weights_read_bound_tokens_per_s"] for r in rows}
    for j, b in enumerate(batches):
        ax.hlines(bound[b], j - 0.45, j + 0.45, colors="k", linestyles="--",
                  label="a step reading every weight once at copy bandwidth" if j == 0 else None)
    ax.set_yscale("log")
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    ax.set(ylabel="tokens/s")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(f"{info['config']}, {info['prompt_len']}-token prompt, {info['new_tokens']} new tokens; "
                 f"{info['gpu']}, torch {info['torch']}, {info['date']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
