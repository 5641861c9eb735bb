"""Shared benchmark plumbing: timing, the copy-bandwidth ceiling, the byte model and run metadata."""

from __future__ import annotations

import csv
import datetime
import platform
import statistics
import time
from pathlib import Path

import torch
import triton


def bench_ms(fn, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median milliseconds of fn() over CUDA-event-timed repeats (triton.testing.do_bench).
    Without a GPU (the --smoke runs), one warm-up and the median of three wall-clock runs."""
    if not torch.cuda.is_available():
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[1]
    return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def capture_graph(fn):
    """fn captured once in a CUDA graph, after a warm-up on a side stream (compilation, allocator pools):
    returns the graph's replay(), which runs everything fn launches without the host between launches."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def bench_graph_ms(fn) -> float:
    """bench_ms of fn() replayed from a CUDA graph (`capture_graph`): the GPU time of everything fn launches,
    without the host time between launches (what training under CUDA graphs sees). Eager on the CPU."""
    if not torch.cuda.is_available():
        return bench_ms(fn)
    return bench_ms(capture_graph(fn))


def copy_bandwidth_gbs(nbytes: int = 2 << 30, device: str = "cuda") -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    if not torch.cuda.is_available():
        device, nbytes = "cpu", 1 << 26
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), rep_ms=300)
    return 2 * nbytes / ms / 1e6


def copy_ms(nbytes: int, device: str | None = None) -> float:
    """bench_ms of one device-to-device copy that moves nbytes in all (half read, half written): the time any
    kernel moving that many bytes can be expected to take, under the same timing. At a few hundred MB it is
    above nbytes / copy_bandwidth_gbs(): fixed costs per call (launch, ramp-up, and the write-back of the dirty
    lines that do_bench's L2 flush leaves) weigh more on a short call (docs/scan-design.md)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return bench_ms(lambda: dst.copy_(src))


def add_ms(B: int, T: int, D: int, dtype: torch.dtype) -> float:
    """bench_ms of h = x + a at (B, T, D): an elementwise kernel that reads and writes exactly the scan
    forward's bytes (x and a in, h out) with no dependency along T, in torch's own kernel: what the forward
    could reach under the same timing if the scan were free. Unlike a copy of the same number of bytes, it
    also has the forward's mix of two reads to one write."""
    x, a = scan_inputs(B, T, D, dtype)
    h = torch.empty_like(x)
    return bench_ms(lambda: torch.add(x, a, out=h))


def scan_bytes(B: int, T: int, D: int, dtype: torch.dtype, backward: bool) -> int:
    """Fewest bytes a scan must move: forward reads x, a and writes h (3·N·s); the backward adds
    reading dh, a, h and writing dx, da (8·N·s in all)."""
    n = B * T * D * torch.finfo(dtype).bits // 8
    return (8 if backward else 3) * n


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    """Wait for DEVICE's queued work (nothing to wait for on the CPU)."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def time_steps(step, steps: int, warmup: int, window: int | None = None) -> dict:
    """Wall-clock time of `step()`: warmup calls (compilation, autotuning, allocator growth), then `steps` timed
    ones, in windows of `window` steps (None: one window of all), each ended by a synchronize -> {"warmup_s",
    "step_s": the median window's time per step (one window: the mean), "windows", "peak_memory_gb": allocated,
    "peak_reserved_gb": held by the caching allocator, both over the timed calls (None off CUDA)}. A CUDA graph's
    private pool is reserved, not allocated, between its replays: for a step replayed from graphs, the reserved
    figure is the one to compare."""
    window = min(window or steps, steps)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    if DEVICE == "cuda":
        torch.cuda.empty_cache()  # blocks cached by the warm-up (autotuning, compilation) out of the reserved peak
        torch.cuda.reset_peak_memory_stats()
    window_s = []
    for _ in range(max(1, steps // window)):
        t0 = time.perf_counter()
        for _ in range(window):
            step()
        sync()
        window_s.append(time.perf_counter() - t0)
    step_s = statistics.median(window_s) / window
    peak = torch.cuda.max_memory_allocated() / 1e9 if DEVICE == "cuda" else None
    reserved = torch.cuda.max_memory_reserved() / 1e9 if DEVICE == "cuda" else None
    return {"warmup_s": warmup_s, "step_s": step_s, "windows": len(window_s), "peak_memory_gb": peak,
            "peak_reserved_gb": reserved}


def scan_inputs(B: int, T: int, D: int, dtype: torch.dtype, device: str = DEVICE, seed: int = 0):
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


def write_csv(path: Path, rows: list[dict]) -> None:
    """rows -> CSV with every key any row has as a column (in order of first appearance; blank where a row lacks it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r[c]).rjust(w) for c, w in zip(columns, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
