"""Host (CPU-side) time per call of each scan path, at a tiny shape where the GPU work is negligible.

    python -m kernels.benchmarks.host_time

Each figure is the wall-clock time of 300 back-to-back calls divided by 300, synchronised once at the end: at
this shape the host, not the GPU, sets the pace.
"""

from __future__ import annotations

import time

import torch

from kernels import linear_scan
from kernels.associative_scan import associative_scan_fwd, tile_config


def per_call_us(fn, n: int = 300) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    x = torch.randn(1, 32, 64, device="cuda", dtype=torch.bfloat16)
    a = torch.rand_like(x)
    xg, ag = x.clone().requires_grad_(), a.clone().requires_grad_()
    dy = torch.randn_like(x)
    cfg = tile_config(x.dtype)

    def fwd_bwd(impl):
        return lambda: torch.autograd.grad(linear_scan(xg, ag, impl=impl)[0], (xg, ag), dy)

    rows = {
        "torch x+1": lambda: x + 1,
        "torch.empty": lambda: torch.empty(1, 32, 64, device="cuda"),
        "linear_scan triton fwd": lambda: linear_scan(x, a, impl="triton"),
        "linear_scan sequential fwd": lambda: linear_scan(x, a, impl="sequential"),
        "associative_scan_fwd launcher (table tile)": lambda: associative_scan_fwd(x, a, None, False),
        "associative_scan_fwd launcher (explicit config)": lambda: associative_scan_fwd(x, a, None, False, config=cfg),
        "linear_scan triton fwd+bwd": fwd_bwd("triton"),
        "linear_scan sequential fwd+bwd": fwd_bwd("sequential"),
    }
    for name, fn in rows.items():
        print(f"{per_call_us(fn):8.1f} us  {name}")


if __name__ == "__main__":
    main()
