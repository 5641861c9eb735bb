"""Shared benchmark plumbing: timing, the copy-bandwidth ceiling, the byte model and run metadata."""

from __future__ import annotations

import datetime
import platform

import torch
import triton


def bench_ms(fn, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median milliseconds of fn() over CUDA-event-timed repeats (triton.testing.do_bench)."""
    return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def copy_bandwidth_gbs(nbytes: int = 2 << 30, device: str = "cuda") -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), rep_ms=300)
    return 2 * nbytes / ms / 1e6


def scan_bytes(B: int, T: int, D: int, dtype: torch.dtype, backward: bool) -> int:
    """Fewest bytes a scan must move: forward reads x, a and writes h (3·N·s); the backward adds
    reading dh, a, h and writing dx, da (8·N·s in all)."""
    n = B * T * D * torch.finfo(dtype).bits // 8
    return (8 if backward else 3) * n


def scan_inputs(B: int, T: int, D: int, dtype: torch.dtype, device: str = "cuda", seed: int = 0):
    """x ~ N(0, 1) and realistic gates a ~ U(0.5, 1) (never zeros: zeros can time faster than real data)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(B, T, D, device=device, dtype=dtype, generator=g)
    a = (0.5 + 0.5 * torch.rand(B, T, D, device=device, generator=g)).to(dtype)
    return x, a


def run_info() -> dict:
    props = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
    return {
        "gpu": props.name if props else "cpu",
        "sms": props.multi_processor_count if props else 0,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
