"""What the timing's L2 flush costs a short call (NOTES #16).

`bench_ms` (triton.testing.do_bench) zeroes a 256 MB buffer before every timed call, so each call starts with
an L2 full of dirty lines whose write-back to DRAM falls inside its timed window. A 2 GB copy (the copy
bandwidth every fraction divides by) hardly notices; a 100 MB forward does. This times, at the efficiency
shapes, a plain copy of the same bytes and the Triton scan's forward and forward + backward after each of
three flushes:

- "zero": do_bench's own (`cache.zero_()`): the L2 full of dirty lines;
- "read": a sum over the same buffer: the L2 full of clean lines (nothing to write back; but the call's own
  last writes may still sit in the L2 when it ends, so short calls can time above the copy bandwidth);
- "none": calls back to back, the L2 holding the previous call's data.

The scans replay from a CUDA graph (GPU time only); the copy is launched eagerly (a copy captured in a graph
becomes a memcpy node, which ran a 2 GB copy at ~0.8 of the eager copy's bandwidth on an H100: the "copy 2 GB" line
of results/l2_flush_probe_h100.log, a scratch probe that came before this script).

    python -m kernels.benchmarks.l2_flush [--out kernels/benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from kernels import linear_scan

from .common import capture_graph, copy_bandwidth_gbs, print_table, run_info, scan_bytes, scan_inputs, write_csv

SHAPES = [  # (B, T, D, dtype): efficiency.py's, and the short sequences of tune.py
    (8, 2048, 2048, torch.bfloat16),
    (4, 16384, 5120, torch.float16),
    (1, 131072, 512, torch.bfloat16),
    (16, 1024, 1024, torch.bfloat16),
    (4, 256, 5120, torch.bfloat16),
    (8, 2048, 2048, torch.float32),
]
FLUSH_BYTES = 256 * 1024 * 1024  # do_bench's buffer
REPEATS = 200


def time_after_flush(fn, flush, repeats: int = REPEATS) -> float:
    """Median ms of fn() between CUDA events, each call right after flush() (as do_bench does with zero_)."""
    events = []
    for _ in range(repeats):
        flush()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def time_shape(B: int, T: int, D: int, dtype: torch.dtype, flushes: dict, copy_gbs: float) -> list[dict]:
    """A copy of each pass's bytes and the Triton scan's pass, timed after every flush."""
    x, a = scan_inputs(B, T, D, dtype)
    x_grad, a_grad = x.clone().requires_grad_(True), a.clone().requires_grad_(True)
    dh = torch.randn_like(x)

    def forward():
        with torch.no_grad():
            linear_scan(x, a, impl="triton")

    def forward_backward():
        h, _ = linear_scan(x_grad, a_grad, impl="triton")
        torch.autograd.grad(h, (x_grad, a_grad), dh)

    rows = []
    for pass_, scan in (("fwd", forward), ("fwd+bwd", forward_backward)):
        nbytes = scan_bytes(B, T, D, dtype, pass_ == "fwd+bwd")
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        for what, fn in (("copy", lambda: dst.copy_(src)), ("triton", capture_graph(scan))):
            for flush_name, flush in flushes.items():
                ms = time_after_flush(fn, flush)
                rows.append(dict(what=what, pass_=pass_, B=B, T=T, D=D, dtype=str(dtype).split(".")[-1],
                                 MB=nbytes / 1e6, flush=flush_name, ms=ms, frac_of_copy=nbytes / ms / 1e6 / copy_gbs))
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("l2_flush.py measures a GPU's L2: it needs CUDA")
    info = run_info()
    copy_gbs = info["copy_GBps"] = copy_bandwidth_gbs()
    print(json.dumps(info))
    cache = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    total = torch.empty((), dtype=torch.int64, device="cuda")
    flushes = {"zero": cache.zero_, "read": lambda: torch.sum(cache, dim=0, out=total), "none": lambda: None}

    rows = []
    for B, T, D, dtype in SHAPES:
        rows += time_shape(B, T, D, dtype, flushes, copy_gbs)
        torch.cuda.empty_cache()

    print(f"\nTime after each L2 flush (copy bandwidth {copy_gbs:.0f} GB/s, read + write):")
    print_table(rows, ["what", "pass_", "B", "T", "D", "dtype", "MB", "flush", "ms", "frac_of_copy"])
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "l2_flush.csv", rows)
    (args.out / "l2_flush_run.json").write_text(json.dumps(info, indent=2))
    plot(rows, info, args.out / "l2_flush.png")


def plot(rows, info, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, pass_ in zip(axes, ("fwd", "fwd+bwd")):
        labels = list(dict.fromkeys((r["B"], r["T"], r["D"], r["dtype"]) for r in rows))
        series = [(w, f) for w in ("copy", "triton") for f in ("zero", "read", "none")]
        width = 0.8 / len(series)
        for i, (what, flush) in enumerate(series):
            vals = [next(r["frac_of_copy"] for r in rows if (r["B"], r["T"], r["D"], r["dtype"]) == k
                         and r["what"] == what and r["pass_"] == pass_ and r["flush"] == flush) for k in labels]
            ax.bar([j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))], vals, width,
                   color=f"C{i % 3}", alpha=0.45 if what == "copy" else 1.0, label=f"{what}, flush {flush}")
        ax.set_xticks(range(len(labels)), [f"({b},{t},{d})\n{dt}" for b, t, d, dt in labels], fontsize=8)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set(title=f"{pass_}: its bytes / time / copy bandwidth ({info['copy_GBps']:.0f} GB/s)")
    axes[0].set_ylabel("fraction of copy bandwidth")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"{info['gpu']}, torch {info['torch']}, triton {info['triton']}, {info['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
