"""Efficiency benchmark: milliseconds and effective bandwidth of the scans, as a fraction of the
device-to-device copy bandwidth measured in the same run, with their peers beside them.

1. The original linear-RNN-scan repository's sweep: forward time vs sequence length 2^5 .. 2^17 at B=4, D=5120, fp16, for
   the associative and sequential Triton scans, eager and from a CUDA graph, and (up to 2^10) the reference loop.
2. Forward and forward+backward through autograd at training and long-sequence shapes, eager (host dispatch
   included) and replayed from a CUDA graph (GPU time only, as under torch.compile with CUDA graphs).
   Where installed (`pip install -e ".[peers]"`), the same passes of two public scans on the same data:
   accelerated-scan's Triton scan (`accelerated_scan.scalar.scan`) in its own (B, D, T) layout (the transposes
   are made outside the timing), and fla's `chunk_hgrn` (h_t = exp(g_t) h_{t-1} + x_t, given g = log a).

   Also the model's scan, `gated_linear_scan` ("gated": the gate a = σ(f + b) and the input (1 − a) v computed
   in the kernel from f and v, the backward recomputing them), on the same data (f the logit of a, v = x).

Minimal bytes: forward 3·N·s (read x, a; write h), forward+backward 8·N·s (N = B·T·D, s = element size); the
gated backward reads f, v, h and dh and writes df and dv, so its forward+backward moves 9·N·s.
Each row also times a plain device-to-device copy of the same bytes, eagerly under the same do_bench timing
(`copy_ms`): `frac_of_same_copy` = copy time / scan time, how close the scan comes to the best a kernel of
that size is timed at. (A copy of 100 MB reaches well under the 2 GB copy's bandwidth under this timing.)
Forward rows also time h = x + a (`add_ms`): the forward's exact traffic, two reads to one write, with no
scan; `frac_of_same_add` = its time / the scan's.

    python -m kernels.benchmarks.efficiency [--out kernels/benchmarks/results] [--smoke] [--quick]

--quick: every shape, and the sweep at four lengths only.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch

from kernels import gated_linear_scan, linear_scan

from .common import (DEVICE, add_ms, bench_graph_ms, bench_ms, copy_bandwidth_gbs, copy_ms, print_table, run_info,
                     scan_bytes, scan_inputs, write_csv)

SHAPES = [  # (B, T, D, dtype)
    (8, 2048, 2048, torch.bfloat16),
    (4, 16384, 5120, torch.float16),
    (1, 131072, 512, torch.bfloat16),
    (16, 1024, 1024, torch.bfloat16),
]
SWEEP = dict(B=4, D=5120, dtype=torch.float16, lengths=[2**k for k in range(5, 18)], reference_max_T=2**10)
SMOKE_SHAPES = [(2, 40, 24, torch.bfloat16), (1, 300, 8, torch.float16)]
SMOKE_SWEEP = dict(B=1, D=16, dtype=torch.float16, lengths=[2**k for k in range(5, 8)], reference_max_T=2**6)
QUICK_LENGTHS = [2**5, 2**9, 2**13, 2**17]


PASSES = ("fwd", "fwd graph", "fwd+bwd", "fwd+bwd graph")
IMPLS = ("associative", "sequential", "gated")
"""The project's scans timed at each shape: linear_scan's Triton impls, and the model's fused gated scan."""
# The sweep times each scan eagerly (the launch and host dispatch included: what short sequences cost a user)
# and from a CUDA graph (the GPU's time alone), the reference loop eagerly only.
SWEEP_SERIES = (("associative", "fwd"), ("associative", "fwd graph"), ("sequential", "fwd"),
                ("sequential", "fwd graph"), ("reference", "fwd"))


def peer_scans() -> dict:
    """The public scans installed here: name -> (prepare(x, a) -> args, scan(*args) -> h). Each takes our (B, T, D)
    x and gates a, converted once, outside the timing, to what it takes."""
    peers = {}
    try:
        from accelerated_scan.scalar import scan as accelerated_scan

        peers["accelerated-scan"] = (
            lambda x, a: (a.transpose(1, 2).contiguous(), x.transpose(1, 2).contiguous()),  # (B, D, T)
            lambda gates, tokens: accelerated_scan(gates, tokens))
    except ImportError:
        pass
    try:
        from fla.ops.hgrn import chunk_hgrn

        peers["fla chunk_hgrn"] = (lambda x, a: (x, a.float().log().to(a.dtype)),
                                   lambda x, g: chunk_hgrn(x, g)[0])
    except ImportError:
        pass
    return peers if torch.cuda.is_available() else {}


def time_scan(impl: str, B: int, T: int, D: int, dtype: torch.dtype, pass_: str = "fwd") -> float:
    """Median ms of one pass through the public API: "fwd", the forward in eager mode (host dispatch included);
    "fwd+bwd", forward and torch.autograd.grad in eager mode; "... graph", the same captured in a CUDA graph
    (GPU time only: at small shapes the eager time is the host's, which varies from host to host). impl: one of
    linear_scan's, or a peer of `peer_scans`."""
    x, a = scan_inputs(B, T, D, dtype)
    if impl in (peers := peer_scans()):
        prepare, peer = peers[impl]
        args = prepare(x, a)
        scan = peer
    elif impl == "gated":
        bias = torch.zeros(D, device=x.device)
        args = (torch.logit(a.float(), eps=1e-6).to(dtype), x)  # f, v: the same gates and inputs' sizes

        def scan(f, v):
            return gated_linear_scan(f, v, bias, 0.0, impl="associative")[0]
    else:
        args = (x, a)
        scan = lambda x, a: linear_scan(x, a, impl=impl)[0]  # noqa: E731
    if pass_ in ("fwd", "fwd graph"):
        bench = bench_graph_ms if pass_ == "fwd graph" else bench_ms
        return bench(lambda: scan(*args))
    leaves = [t.detach().requires_grad_(True) for t in args]
    dy = torch.randn_like(scan(*leaves))

    def fwd_bwd():
        torch.autograd.grad(scan(*leaves), leaves, dy)

    return bench_graph_ms(fwd_bwd) if pass_ == "fwd+bwd graph" else bench_ms(fwd_bwd)


@functools.lru_cache(maxsize=None)
def same_bytes_copy_ms(nbytes: int) -> float:
    """`copy_ms` of nbytes, timed once per size in a run (several rows share a pass's bytes)."""
    return copy_ms(nbytes)


@functools.lru_cache(maxsize=None)
def same_traffic_add_ms(B: int, T: int, D: int, dtype: torch.dtype) -> float:
    """`add_ms` at a shape, timed once per shape in a run."""
    return add_ms(B, T, D, dtype)


def row(impl, B, T, D, dtype, pass_, ms, copy_gbs) -> dict:
    backward = pass_.startswith("fwd+bwd")
    nbytes = scan_bytes(B, T, D, dtype, backward)
    if backward and impl == "gated":  # its backward reads v again (to recompute (1 - a) v's gradient)
        nbytes = nbytes * 9 // 8
    gbs = nbytes / ms / 1e6
    same_copy = same_bytes_copy_ms(nbytes)
    same_add = float("nan") if backward else same_traffic_add_ms(B, T, D, dtype)
    return dict(impl=impl, pass_=pass_, B=B, T=T, D=D, dtype=str(dtype).split(".")[-1],
                ms=ms, GBps=gbs, frac_of_copy=gbs / copy_gbs, copy_ms=same_copy, frac_of_same_copy=same_copy / ms,
                add_ms=same_add, frac_of_same_add=same_add / ms)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CPU + TRITON_INTERPRET=1 works)")
    p.add_argument("--quick", action="store_true", help=f"the sweep at T = {QUICK_LENGTHS} only")
    args = p.parse_args()
    shapes, sweep = (SMOKE_SHAPES, SMOKE_SWEEP) if args.smoke else (SHAPES, SWEEP)
    if args.quick:
        sweep = dict(sweep, lengths=QUICK_LENGTHS)
    info = run_info()
    copy_gbs = copy_bandwidth_gbs()
    info["copy_GBps"] = copy_gbs
    print(json.dumps(info))

    sweep_rows = []
    for T in sweep["lengths"]:
        for impl, pass_ in SWEEP_SERIES:
            if impl == "reference" and T > sweep["reference_max_T"]:
                continue
            ms = time_scan(impl, sweep["B"], T, sweep["D"], sweep["dtype"], pass_)
            sweep_rows.append(row(impl, sweep["B"], T, sweep["D"], sweep["dtype"], pass_, ms, copy_gbs))
        torch.cuda.empty_cache() if DEVICE == "cuda" else None
    print(f"\nForward vs sequence length (B={sweep['B']}, D={sweep['D']}, {sweep['dtype']}):")
    print_table(sweep_rows, ["impl", "pass_", "T", "ms", "GBps", "frac_of_copy", "copy_ms", "frac_of_same_copy",
                             "add_ms", "frac_of_same_add"])

    shape_rows = []
    peers = tuple(peer_scans())
    info["peers"] = {name: _version(name) for name in peers}
    for B, T, D, dtype in shapes:
        for impl in IMPLS + peers:
            for pass_ in PASSES:
                try:
                    ms = time_scan(impl, B, T, D, dtype, pass_)
                except Exception as e:  # a peer that cannot run a shape (e.g. its T limits) is reported, not fatal
                    if impl in IMPLS:
                        raise
                    print(f"{impl} {pass_} at {(B, T, D, dtype)}: {type(e).__name__}: {e}", flush=True)
                    continue
                shape_rows.append(row(impl, B, T, D, dtype, pass_, ms, copy_gbs))
        torch.cuda.empty_cache() if DEVICE == "cuda" else None
    print(f"\nTraining and long-sequence shapes (copy bandwidth {copy_gbs:.0f} GB/s, read + write):")
    print_table(shape_rows, ["impl", "pass_", "B", "T", "D", "dtype", "ms", "GBps", "frac_of_copy", "copy_ms",
                             "frac_of_same_copy", "add_ms", "frac_of_same_add"])

    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "efficiency_sweep.csv", sweep_rows)
    write_csv(args.out / "efficiency_shapes.csv", shape_rows)
    (args.out / "efficiency_run.json").write_text(json.dumps(info, indent=2))
    plot(sweep_rows, shape_rows, info, args.out / "efficiency.png")


def _version(peer: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    package = {"accelerated-scan": "accelerated-scan", "fla chunk_hgrn": "flash-linear-attention"}[peer]
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def plot(sweep_rows, shape_rows, info, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    markers = {"associative": "o", "sequential": "s", "reference": "^"}
    colors = {"associative": "C0", "sequential": "C1", "reference": "C2"}
    for impl, pass_ in SWEEP_SERIES:
        rs = [r for r in sweep_rows if r["impl"] == impl and r["pass_"] == pass_]
        if rs:
            style = markers[impl] + (":" if pass_.endswith("graph") else "-")
            ax1.loglog([r["T"] for r in rs], [r["ms"] for r in rs], style, color=colors[impl], label=f"{impl} {pass_}",
                       base=2)
    rs = [r for r in sweep_rows if r["impl"] == "associative" and r["pass_"] == "fwd"]
    ax1.loglog([r["T"] for r in rs], [r["copy_ms"] for r in rs], "k--", lw=1, label="copy of the same bytes", base=2)
    r0 = sweep_rows[0]
    ax1.set(xlabel="sequence length T", ylabel="forward time (ms)",
            title=f"Forward, B={r0['B']}, D={r0['D']}, {r0['dtype']}")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend()

    labels = sorted({(r["B"], r["T"], r["D"], r["dtype"]) for r in shape_rows}, key=lambda k: k[0] * k[1] * k[2])
    # x + a and the copies of a pass's bytes, then each scan's series; fraction = minimal bytes / time / copy
    # bandwidth (the comparators' time in place of the scan's)
    peers = sorted({r["impl"] for r in shape_rows} - set(IMPLS))
    series = ([("add", "fwd")] + [("copy", p) for p in ("fwd", "fwd+bwd")]
              + [(i, p) for i in ("associative",) for p in PASSES]
              + [("gated", p) for p in ("fwd graph", "fwd+bwd graph")]
              + [(i, p) for i in peers for p in ("fwd graph", "fwd+bwd graph")]
              + [("sequential", p) for p in ("fwd graph", "fwd+bwd graph")])
    width = 0.8 / len(series)
    for i, (impl, pass_) in enumerate(series):
        if impl in ("add", "copy"):
            rows = [next(r for r in shape_rows if (r["B"], r["T"], r["D"], r["dtype"]) == k and r["pass_"] == pass_)
                    for k in labels]
            vals = [r["frac_of_copy"] * r["ms"] / r[f"{impl}_ms"] for r in rows]
            style = (dict(color="0.15", label="x + a (the forward's traffic)") if impl == "add" else
                     dict(color="0.35" if pass_ == "fwd" else "0.65", label=f"copy of the {pass_}'s bytes"))
        else:
            vals = [next((r["frac_of_copy"] for r in shape_rows if (r["B"], r["T"], r["D"], r["dtype"]) == k
                          and r["impl"] == impl and r["pass_"] == pass_), 0.0) for k in labels]
            style = dict(label=f"{impl} {pass_}")
        ax2.bar([j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))], vals, width, **style)
    ax2.set_xticks(range(len(labels)), [f"({b},{t},{d})\n{dt}" for b, t, d, dt in labels], fontsize=8)
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set(ylabel="fraction of copy bandwidth", title=f"Effective bandwidth / copy ({info['copy_GBps']:.0f} GB/s)")
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"{info['gpu']}, torch {info['torch']}, triton {info['triton']}, {info['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
