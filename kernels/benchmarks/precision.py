"""Precision benchmark: max abs and relative error of the forward states against a float64 scan,
vs sequence length 2^5 .. 2^17, for fp32/bf16/fp16 inputs, the associative and sequential Triton scans, 4 seeds.

Inputs as the model makes them: a = sigmoid(z), z ~ N(2, 1.5) (gates in (0, 1), mean ~0.85), and
x = (1 - a) · v, v ~ N(0, 1), so h stays O(1). The float64 truth is the PyTorch doubling scan on the
same (rounded) inputs, an algorithm independent of both kernels. Beside each row, the floor no scan storing h in
its dtype can beat: the error of the float64 truth itself rounded to that dtype (`rel_err_of_rounding`,
`max_abs_err_of_rounding`). A scan at its floor loses nothing to its arithmetic.

    python -m kernels.benchmarks.precision [--out kernels/benchmarks/results] [--smoke]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from kernels import linear_scan
from kernels.doubling_scan import doubling_scan_fwd

from .common import DEVICE, print_table, run_info, write_csv

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def inputs(B, T, D, dtype, seed):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    a = torch.sigmoid(2 + 1.5 * torch.randn(B, T, D, device=DEVICE, generator=g))
    x = (1 - a) * torch.randn(B, T, D, device=DEVICE, generator=g)
    return x.to(dtype), a.to(dtype)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    B, D = (1, 8) if args.smoke else (1, 256)
    lengths = [2**k for k in (range(5, 8) if args.smoke else range(5, 18))]
    info = run_info()
    print(json.dumps(info))
    rows = []
    for T in lengths:
        for dtype in DTYPES:
            for impl in ("associative", "sequential"):
                max_abs, rel, floor_abs, floor_rel = [], [], [], []
                for seed in range(4):
                    x, a = inputs(B, T, D, dtype, seed)
                    h, _ = linear_scan(x, a, impl=impl)
                    truth, _ = doubling_scan_fwd(x.double(), a.double(), None, False)
                    for errors, rels, out in ((max_abs, rel, h), (floor_abs, floor_rel, truth.to(dtype))):
                        err = out.double() - truth
                        errors.append(err.abs().max().item())
                        rels.append((err.norm() / truth.norm()).item())
                rows.append(dict(impl=impl, dtype=str(dtype).split(".")[-1], T=T, max_abs_err=max(max_abs),
                                 rel_err=sum(rel) / len(rel), max_abs_err_of_rounding=max(floor_abs),
                                 rel_err_of_rounding=sum(floor_rel) / len(floor_rel)))
    print_table(rows, ["impl", "dtype", "T", "max_abs_err", "max_abs_err_of_rounding", "rel_err",
                       "rel_err_of_rounding"])
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "precision.csv", rows)
    (args.out / "precision_run.json").write_text(json.dumps(info, indent=2))
    plot(rows, info, args.out / "precision.png")


def plot(rows, info, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric in zip(axes, ("max_abs_err", "rel_err")):
        for dtype, color in (("float32", "C0"), ("bfloat16", "C1"), ("float16", "C2")):
            for impl, style in (("associative", "o-"), ("sequential", "x--")):
                rs = [r for r in rows if r["dtype"] == dtype and r["impl"] == impl]
                ax.loglog([r["T"] for r in rs], [max(r[metric], 1e-12) for r in rs], style, color=color,
                          label=f"{impl} {dtype}", base=2)
            rs = [r for r in rows if r["dtype"] == dtype and r["impl"] == "associative"]
            ax.loglog([r["T"] for r in rs], [max(r[f"{metric}_of_rounding"], 1e-12) for r in rs], ":", color=color,
                      label=f"{dtype}: the truth rounded to it", base=2)
        ax.set(xlabel="sequence length T", ylabel=metric.replace("_", " "), title=f"{metric} vs float64")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{info['gpu']}, torch {info['torch']}, triton {info['triton']}, {info['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
