"""NCCL all-reduce time per message size: what DDP's gradient all-reduce costs on this machine, alone.

    torchrun --nproc-per-node 2 -m lrnn_lm.benchmarks.allreduce

Sizes are MiB (2**20 bytes) of float32 (half that in bfloat16); small.yaml's gradients are 40.7 MB = 38.8 MiB
in float32 (10.17M parameters), between the 16 and 41 MiB rows. Rank 0 prints, per size and dtype, the
mean of 20 all-reduces timed with CUDA events after 5 warm-ups, and the bus bandwidth as nccl-tests defines
it: bytes / time · 2(n - 1)/n for n ranks (at n = 2, bytes / time).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

SIZES_MIB = (1, 4, 16, 41, 164)


def main() -> None:
    dist.init_process_group("nccl")
    rank, n = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))  # the GPU of this process on its node
    for mib in SIZES_MIB:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(mib * 2**20 // 4, device="cuda").to(dtype)  # mib MiB of float32; half that in bfloat16
            for _ in range(5):
                dist.all_reduce(x)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(20):
                dist.all_reduce(x)
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end) / 20
            if rank == 0:
                print(f"{mib:4d} MiB fp32-count {str(dtype):15s} {ms:.3f} ms  busbw "
                      f"{x.numel() * x.element_size() / ms / 1e6 * 2 * (n - 1) / n:.1f} GB/s", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
