"""Sweep the associative scan's tiles (BLOCK_T, BLOCK_D, num_warps, num_stages) and the sequential
scan's BLOCK_D at the benchmark shapes; print the best per (kernel, shape) and save every row as CSV.

    python -m kernels.benchmarks.tune --out kernels/benchmarks/results
"""

from __future__ import annotations

import argparse
import csv
import itertools
from pathlib import Path

import torch

from kernels.associative_scan import associative_scan_bwd, associative_scan_fwd
from kernels.sequential_scan import sequential_scan_bwd, sequential_scan_fwd

from .common import bench_ms, copy_bandwidth_gbs, run_info, scan_bytes, scan_inputs

SHAPES = [  # (B, T, D, dtype)
    (8, 2048, 2048, torch.bfloat16),
    (1, 131072, 512, torch.bfloat16),
    (16, 1024, 1024, torch.bfloat16),
]


def configs():
    for bt, bd, w, s in itertools.product([16, 32, 64, 128], [32, 64, 128, 256], [1, 2, 4, 8], [1]):
        if not 8 <= bt * bd // (32 * w) <= 64:  # elements per thread
            continue
        yield dict(BLOCK_T=bt, BLOCK_D=bd, num_warps=w, num_stages=s)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("kernels/benchmarks/results"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    info = run_info()
    copy = copy_bandwidth_gbs()
    print(info, f"copy {copy:.0f} GB/s")
    rows = []
    for B, T, D, dtype in SHAPES:
        x, a = scan_inputs(B, T, D, dtype)
        dy = torch.randn_like(x)
        h, _ = associative_scan_fwd(x, a, None, False)
        for kernel in ("fwd", "bwd"):
            fwd_bytes = scan_bytes(B, T, D, dtype, False)
            nbytes = fwd_bytes if kernel == "fwd" else scan_bytes(B, T, D, dtype, True) - fwd_bytes
            for chunk in ("auto", "none") if B * D < 132 * 256 else ("auto",):
                chunk_t = None if chunk == "auto" else T
                for cfg in configs():
                    if kernel == "fwd":
                        fn = lambda: associative_scan_fwd(x, a, None, False, chunk_t=chunk_t, config=cfg)  # noqa: E731
                    else:
                        fn = lambda: associative_scan_bwd(a, h, None, dy, None, chunk_t=chunk_t, config=cfg)  # noqa: E731
                    try:
                        ms = bench_ms(fn, rep_ms=40)
                    except Exception as e:  # out of resources etc.
                        print("skip", cfg, type(e).__name__)
                        continue
                    rows.append(dict(kernel=f"assoc_{kernel}", B=B, T=T, D=D, dtype=str(dtype), chunk=chunk, **cfg,
                                     ms=ms, frac=nbytes / ms / 1e6 / copy))
            for bd in (64, 128) if T <= 2048 else ():
                if kernel == "fwd":
                    fn = lambda: sequential_scan_fwd(x, a, None, False, block_d=bd)  # noqa: E731
                else:
                    fn = lambda: sequential_scan_bwd(a, h, None, dy, None, block_d=bd)  # noqa: E731
                ms = bench_ms(fn, rep_ms=40)
                rows.append(dict(kernel=f"seq_{kernel}", B=B, T=T, D=D, dtype=str(dtype), chunk="-", BLOCK_T=1,
                                 BLOCK_D=bd, num_warps=4, num_stages=0, ms=ms, frac=nbytes / ms / 1e6 / copy))
            best = {}
            for r in rows:
                if (r["B"], r["T"], r["D"]) == (B, T, D) and r["kernel"].endswith(kernel):
                    k = (r["kernel"], r["chunk"])
                    if k not in best or r["ms"] < best[k]["ms"]:
                        best[k] = r
            for k, r in sorted(best.items()):
                print(f"{B}x{T}x{D} {dtype} {k}: {r['ms']:.4f} ms frac {r['frac']:.3f} "
                      f"BT{r['BLOCK_T']} BD{r['BLOCK_D']} w{r['num_warps']} s{r['num_stages']}", flush=True)
        del x, a, dy, h
        torch.cuda.empty_cache()
    with open(args.out / "tune.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
