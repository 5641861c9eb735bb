"""Run the scan launchers once each between cudaProfilerStart/Stop, for Nsight Compute (ncu).

    ncu --clock-control none --profile-from-start off --nvtx --print-nvtx-rename kernel \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
        --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis --section InstructionStats \
        python -m kernels.benchmarks.profile [case ...]

Each case is compiled and run twice first, so ncu sees only the measured call, inside an NVTX range named
after its case. `--clock-control none` leaves the GPU's clocks as they are (ncu locks them by default).
results/ncu_h100.txt is such a run on an H100 (NOTES #15), from before the look-back passes: its long-T case
then ran the chunked path and its (4, 16384, 5120) case the one-chunk path; the launchers now run the
look-back passes at both (NOTES #17, #18).
"""

from __future__ import annotations

import argparse

import torch

from kernels.associative_scan import associative_scan_bwd, associative_scan_fwd

CASES = {  # name: ((B, T, D), dtype, pass)
    "fwd_bf16_8x2048x2048": ((8, 2048, 2048), torch.bfloat16, "fwd"),
    "fwd_fp32_8x2048x2048": ((8, 2048, 2048), torch.float32, "fwd"),
    "fwd_bf16_16x1024x1024": ((16, 1024, 1024), torch.bfloat16, "fwd"),
    "fwd_fp16_4x16384x5120": ((4, 16384, 5120), torch.float16, "fwd"),
    "bwd_bf16_8x2048x2048": ((8, 2048, 2048), torch.bfloat16, "bwd"),
    "fwd_bf16_1x131072x512": ((1, 131072, 512), torch.bfloat16, "fwd"),
}


def launcher(shape, dtype, pass_):
    """-> a no-argument call of one pass of the launchers on fresh inputs of `shape`."""
    x = torch.randn(shape, device="cuda", dtype=dtype)
    a = torch.rand(shape, device="cuda", dtype=dtype)
    if pass_ == "fwd":
        return lambda: associative_scan_fwd(x, a, None, True)
    h, _ = associative_scan_fwd(x, a, None, False)
    return lambda: associative_scan_bwd(a, h, None, x, None)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cases", nargs="*", metavar="case", help=f"any of {', '.join(CASES)} (default: all)")
    args = p.parse_args()
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}: expected any of {list(CASES)}")
    runs = []
    for name in args.cases or CASES:
        fn = launcher(*CASES[name])
        fn(), fn()  # compile, warm up
        runs.append((name, fn))
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for name, fn in runs:
        torch.cuda.nvtx.range_push(name)
        fn()
        torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print("ran", [name for name, _ in runs])


if __name__ == "__main__":
    main()
