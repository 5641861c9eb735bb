"""Linear RNN vs Transformer at equal width: training throughput and memory vs context, generation speed
and memory, and (from two finished `train.py` runs) quality. Writes CSV, JSON, a PNG and a markdown table.

    python train.py --config small.yaml --trainer.run_dir runs/small_lrnn
    python train.py --config small.yaml --model.mixer attention --trainer.run_dir runs/small_attention
    python -m lrnn_lm.benchmarks.compare --runs runs/small_lrnn runs/small_attention

Throughput: one optimizer step (forward, backward, AdamW) in bf16 autocast on random tokens, the tokens
per step held fixed (batch = tokens_per_step / context). Generation: `sampling.sample` from a 1024-token
prompt, batch 1; peak memory is read after 1024 and after 4096 new tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import load_config
from ..model import LinearRNNLM
from ..sampling import sample

CONTEXTS = [512, 2048, 8192, 32768]
COMPILE_CONTEXTS = [2048, 8192]  # compiling takes ~25 s per model and shape
TOKENS_PER_STEP = 65536
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only for --smoke


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _reset_peak() -> int:
    if DEVICE != "cuda":
        return 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def _peak() -> float:
    return torch.cuda.max_memory_allocated() if DEVICE == "cuda" else float("nan")


def _model(mixer: str, compile_: bool = False) -> LinearRNNLM:
    cfg = dataclasses.replace(load_config("small.yaml").model, mixer=mixer, dropout=0.0)
    model = LinearRNNLM(cfg).to(DEVICE)
    if compile_:
        model.compile()
    return model


def train_throughput(mixer: str, context: int, tokens_per_step: int, compile_: bool = False, steps: int = 5) -> dict:
    model = _model(mixer, compile_)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = max(1, tokens_per_step // context)
    tokens = torch.randint(1, model.cfg.vocab_size, (batch, context + 1), device=DEVICE)

    def step():
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    row = dict(mixer=mixer + ("+compile" if compile_ else ""), context=context, batch=batch)
    try:
        t0 = time.perf_counter()
        step()  # warm-up: autotuning, compilation
        _sync()
        row["first_step_s"] = time.perf_counter() - t0
        step()
        _reset_peak()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync()
        dt = (time.perf_counter() - t0) / steps
        row.update(tokens_per_s=batch * context / dt, step_ms=dt * 1e3, peak_mem_gb=_peak() / 1e9)
    except torch.OutOfMemoryError:
        row.update(tokens_per_s=float("nan"), step_ms=float("nan"), peak_mem_gb=float("nan"), oom=True)
    del model, opt
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return row


@torch.no_grad()
def generation(mixer: str, prompt_len: int = 1024, new_tokens: tuple[int, ...] = (1024, 4096)) -> list[dict]:
    model = _model(mixer).eval()
    g = torch.Generator(device=DEVICE).manual_seed(0)
    prompt = torch.randint(1, model.cfg.vocab_size, (1, prompt_len), device=DEVICE, generator=g)
    sample(model, prompt, 16, generator=g)  # warm-up
    rows = []
    for n in new_tokens:
        base = _reset_peak()
        t0 = time.perf_counter()
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            sample(model, prompt, n, temperature=1.0, generator=g)
        _sync()
        dt = time.perf_counter() - t0
        rows.append(dict(mixer=mixer, prompt=prompt_len, new_tokens=n, tokens_per_s=n / dt,
                         peak_mem_above_weights_mb=(_peak() - base) / 1e6))
    return rows


def quality(run_dirs: list[Path]) -> list[dict]:
    rows = []
    for d in run_dirs:
        s = json.loads((d / "summary.json").read_text())
        rows.append(dict(run=d.name, params=s["params"],
                         wall_time_s=s["wall_time_s"], tokens_per_s=s["tokens_per_s"], tokens_seen=s["tokens_seen"],
                         val_bpb=s["validation"]["bpb"], test_bpb=s["test"]["bpb"]))
    return rows


def markdown(rows: list[dict], cols: list[str]) -> str:
    fmt = lambda v: f"{v:,.3f}" if isinstance(v, float) and abs(v) < 100 else (f"{v:,.0f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--runs", type=Path, nargs="*", default=[], help="run dirs of finished train.py runs")
    p.add_argument("--compile", action="store_true",
                   help=f"also time both mixers under torch.compile at contexts {COMPILE_CONTEXTS}")
    p.add_argument("--parts", nargs="+", choices=["throughput", "generation"], default=["throughput", "generation"])
    p.add_argument("--quality-only", action="store_true", help="only tabulate --runs (no GPU work)")
    p.add_argument("--smoke", action="store_true", help="tiny contexts, runs on a CPU")
    args = p.parse_args()
    contexts, tokens_per_step = ([32, 64], 128) if args.smoke else (CONTEXTS, TOKENS_PER_STEP)
    gen_lengths = (8, 16) if args.smoke else (1024, 4096)
    args.out.mkdir(parents=True, exist_ok=True)
    info = dict(gpu=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", date=datetime.date.today().isoformat(),
                torch=torch.__version__, triton=__import__("triton").__version__, tokens_per_step=tokens_per_step)
    print(json.dumps(info))

    report_path = args.out / "compare.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    report["info"] = info
    if args.runs:
        report["quality"] = quality(args.runs)
        print(markdown(report["quality"], ["run", "params", "wall_time_s", "tokens_per_s", "val_bpb",
                                           "test_bpb"]))
        report_path.write_text(json.dumps(report, indent=2))
    if args.quality_only:
        return
    if "throughput" in args.parts:
        thr = []
        for context in contexts:
            for mixer in ("lrnn", "attention"):
                thr.append(train_throughput(mixer, context, tokens_per_step))
                print(thr[-1], flush=True)
        for context in (contexts[:2] if args.smoke else COMPILE_CONTEXTS) if args.compile else ():
            for mixer in ("lrnn", "attention"):
                thr.append(train_throughput(mixer, context, tokens_per_step, compile_=True))
                print(thr[-1], flush=True)
        report["throughput"], report["throughput_info"] = thr, info
        print(markdown(thr, ["mixer", "context", "batch", "tokens_per_s", "step_ms", "peak_mem_gb"]))
        report_path.write_text(json.dumps(report, indent=2))
    if "generation" in args.parts:
        prompt_len = 16 if args.smoke else 1024
        gen = generation("lrnn", prompt_len, gen_lengths) + generation("attention", prompt_len, gen_lengths)
        report["generation"], report["generation_info"] = gen, info
        print(markdown(gen, ["mixer", "prompt", "new_tokens", "tokens_per_s", "peak_mem_above_weights_mb"]))
        report_path.write_text(json.dumps(report, indent=2))
    measured_together = report.get("throughput_info") == report.get("generation_info")  # same card, day, versions
    if "throughput" in report and "generation" in report and measured_together:
        plot(report["throughput"], report["generation"], info, args.out / "compare.png")


def plot(thr, gen, info, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for mixer, style in (("lrnn", "o-"), ("attention", "s-"), ("lrnn+compile", "o--"), ("attention+compile", "s--")):
        rs = [r for r in thr if r["mixer"] == mixer]
        axes[0].semilogx([r["context"] for r in rs], [r["tokens_per_s"] / 1e6 for r in rs], style, label=mixer,
                         base=2)
        axes[1].semilogx([r["context"] for r in rs], [r["peak_mem_gb"] for r in rs], style, label=mixer, base=2)
        gs = [r for r in gen if r["mixer"] == mixer]
        if not gs:
            continue
        axes[2].plot([r["new_tokens"] for r in gs], [r["peak_mem_above_weights_mb"] for r in gs], style, label=mixer)
    axes[0].set(xlabel="context", ylabel="training tokens/s (M)", title=f"{info['tokens_per_step']} tokens per step")
    axes[1].set(xlabel="context", ylabel="peak memory (GB)", title="training memory")
    axes[2].set(xlabel="generated tokens (after a 1024-token prompt)", ylabel="peak memory above weights (MB)",
                title="generation memory")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"{info['gpu']}, torch {info['torch']}, triton {info['triton']}, {info['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
