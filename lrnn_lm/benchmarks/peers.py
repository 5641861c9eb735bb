"""Training speed and memory at equal size against the best public linear-RNN model: fla's HGRN.

    python -m lrnn_lm.benchmarks.peers [--contexts 2048 8192] [--tokens-per-step 32768] [--steps 10] [--out DIR]

Models of about 110M parameters (d_model 768, 12 layers, a 32,000-token vocabulary, the LM head tied to the
embedding: configs/medium.yaml's model), side by side in one run:
- lrnn-lm: the linear RNN, its blocks compiled as train.py compiles them (the fused gated scan, the chunked
  cross-entropy), its loss replayed from CUDA graphs as train.py replays it (--no-cuda-graphs: not); also with
  activation checkpointing (no graphs);
- lrnn-lm attention baseline: the same model with causal softmax attention (SDPA) as its mixer, run the same way;
- fla HGRN: flash-linear-attention's `HGRNForCausalLM` (chunk mode, its fused RMSNorm, SwiGLU and linear
  cross-entropy, no short convolution), run eagerly as its users run it. Installed with `pip install -e ".[peers]"`;
  skipped where it is not.

One step: bf16 autocast forward and loss, backward, fused AdamW, zero_grad(set_to_none=True), on random tokens,
tokens_per_step // context sequences of `context` tokens. Tokens/s over --steps steps after --warmup (compilation,
autotuning); peak memory: torch.cuda.max_memory_allocated over those steps (weights, gradients and AdamW state
included), and max_memory_reserved (which counts a CUDA graph's pool between replays, where allocated does not).
Writes OUT/peers.{csv,json,png}. --smoke: a tiny model and context on the CPU (the benchmark's plumbing).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from kernels.benchmarks.common import DEVICE, print_table, run_info, time_steps, write_csv

from ..config import ModelConfig, load_config
from ..graphed_loss import TrainingNLL, graphs_apply
from ..model import LinearRNNLM

SMOKE_MODEL = dict(vocab_size=256, d_model=32, n_layers=2, n_heads=4)


class Peer(NamedTuple):
    model: torch.nn.Module
    loss: Callable[[torch.Tensor], torch.Tensor]
    """tokens (B, T + 1) -> the mean NLL of predicting tokens[:, 1:]"""
    vocab_size: int
    cuda_graphs: bool = False
    """whether `loss` replays CUDA graphs (graphed_loss.py)"""


def lrnn_model(mixer: str = "lrnn", checkpointing: bool = False, smoke: bool = False,
               cuda_graphs: bool = False) -> Peer:
    base = ModelConfig(**SMOKE_MODEL) if smoke else dataclasses.replace(load_config("medium.yaml").model, n_heads=12)
    cfg = dataclasses.replace(base, mixer=mixer, dropout=0.0, activation_checkpointing=checkpointing)
    model = LinearRNNLM(cfg).to(DEVICE)
    if DEVICE == "cuda":
        model.compile_blocks()
    graphs = cuda_graphs and graphs_apply(torch.device(DEVICE), activation_checkpointing=checkpointing) is None
    training_nll = TrainingNLL(model, ignore_index=-100, cuda_graphs=graphs)

    def loss(tokens):
        nll, n = training_nll(tokens[:, :-1], tokens[:, 1:])
        return nll / n

    return Peer(model, loss, cfg.vocab_size, graphs)


def fla_hgrn_model() -> Peer:
    from fla.models import HGRNConfig, HGRNForCausalLM  # imported from fla.models: its failures then show

    cfg = HGRNConfig(attn_mode="chunk", hidden_size=768, num_hidden_layers=12, vocab_size=32000, expand_ratio=1,
                     use_short_conv=False, use_lower_bound=True, hidden_ratio=4, intermediate_size=None,
                     hidden_act="swish", norm_eps=1e-6, fuse_norm=True, fuse_swiglu=True, fuse_cross_entropy=False,
                     fuse_linear_cross_entropy=True, tie_word_embeddings=True, use_cache=False)
    model = HGRNForCausalLM(cfg).cuda()

    def loss(tokens):
        return model(input_ids=tokens[:, :-1], labels=tokens[:, :-1]).loss  # fla shifts the labels itself

    return Peer(model, loss, cfg.vocab_size)


MODELS: dict[str, Callable[[bool, bool], Peer]] = {  # name -> (smoke, cuda_graphs) -> Peer
    "lrnn-lm": lambda smoke, graphs: lrnn_model(smoke=smoke, cuda_graphs=graphs),
    "lrnn-lm, activation checkpointing": lambda smoke, graphs: lrnn_model(checkpointing=True, smoke=smoke),
    "lrnn-lm attention baseline": lambda smoke, graphs: lrnn_model("attention", smoke=smoke, cuda_graphs=graphs),
    "fla HGRN": lambda smoke, graphs: fla_hgrn_model(),
}


def measure(name: str, context: int, tokens_per_step: int, steps: int, warmup: int, smoke: bool = False,
            cuda_graphs: bool = False) -> dict:
    torch.manual_seed(0)
    if DEVICE != "cuda" and name == "fla HGRN":
        raise ImportError("fla's kernels need CUDA")
    model, loss_fn, vocab, graphs = MODELS[name](smoke, cuda_graphs)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=DEVICE == "cuda")
    batch = max(1, tokens_per_step // context)
    tokens = torch.randint(1, vocab, (batch, context + 1), device=DEVICE)

    def step():
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
            loss = loss_fn(tokens)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    row = dict(model=name, context=context, batch=batch, params=params)
    try:
        t = time_steps(step, steps, warmup)
        peak, reserved = (t[k] if t[k] is not None else float("nan") for k in ("peak_memory_gb", "peak_reserved_gb"))
        row.update(warmup_s=t["warmup_s"], tokens_per_s=batch * context / t["step_s"], step_ms=t["step_s"] * 1e3,
                   peak_memory_gb=peak, peak_reserved_gb=reserved, cuda_graphs=graphs)
    except torch.OutOfMemoryError:
        row.update(tokens_per_s=float("nan"), step_ms=float("nan"), peak_memory_gb=float("nan"),
                   peak_reserved_gb=float("nan"), cuda_graphs=graphs, oom=True)
    del model, opt, tokens, step, loss_fn  # the step's closures hold the model (and any graphs) too
    torch._dynamo.reset()  # first: compiled code can hold tensors, which the cache then returns to the device
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--contexts", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--tokens-per-step", type=int, default=32768)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--checkpointing-contexts", type=int, nargs="*", default=[2048],
                   help="contexts at which the activation-checkpointing variant runs")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="replay lrnn-lm's loss from CUDA graphs where they apply, as train.py does by default")
    p.add_argument("--smoke", action="store_true", help="a tiny model at context 32 (runs on a CPU)")
    args = p.parse_args()
    if args.smoke:
        args.contexts, args.tokens_per_step, args.steps, args.warmup = [32], 64, 2, 1
        args.checkpointing_contexts = [32]
    info = run_info() | {"tokens_per_step": args.tokens_per_step, "steps": args.steps, "cuda_graphs": args.cuda_graphs}
    try:
        from importlib.metadata import version

        info["flash-linear-attention"] = version("flash-linear-attention")
    except Exception:
        info["flash-linear-attention"] = None
    print(json.dumps(info), flush=True)
    # fla last: its kernels autotune for minutes on a fresh machine, and a run cut short keeps the rows before it
    runs = sorted(((context, name) for context in args.contexts for name in args.models
                   if "checkpointing" not in name or context in args.checkpointing_contexts),
                  key=lambda run: run[1] == "fla HGRN")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for context, name in runs:
        try:
            row = measure(name, context, args.tokens_per_step, args.steps, args.warmup, args.smoke, args.cuda_graphs)
        except ImportError as e:
            print(f"{name}: skipped ({e})", flush=True)
            continue
        rows.append(row)
        print(row, flush=True)
        write_csv(args.out / "peers.csv", rows)  # after every row: what a run cut short measured stays written
        (args.out / "peers.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
    print_table(rows, ["model", "context", "batch", "params", "tokens_per_s", "step_ms", "peak_memory_gb",
                       "peak_reserved_gb"])
    plot(rows, info, args.out / "peers.png")


def plot(rows, info, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contexts = sorted({r["context"] for r in rows})
    names = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        # reserved, not allocated: a CUDA graph's pool is only reserved between replays
        for ax, key, scale in ((axes[0], "tokens_per_s", 1e3), (axes[1], "peak_reserved_gb", 1)):
            vals = [next((r[key] / scale for r in rows if r["model"] == name and r["context"] == c), 0) for c in contexts]
            ax.bar([j + (i - (len(names) - 1) / 2) * width for j in range(len(contexts))], vals, width, label=name)
    for ax, label in ((axes[0], "training tokens/s (thousands)"), (axes[1], "peak memory reserved (GB)")):
        ax.set_xticks(range(len(contexts)), [f"context {c}" for c in contexts])
        ax.set(ylabel=label)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"~110M parameters, {info['tokens_per_step']} tokens per step; {info['gpu']}, torch {info['torch']}, "
                 f"triton {info['triton']}, {info['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
