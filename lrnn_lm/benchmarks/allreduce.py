"""NCCL all-reduce time per message size: what DDP's gradient all-reduce costs on this machine, alone.

    torchrun --nproc-per-node 2 -m lrnn_lm.benchmarks.allreduce

small.yaml's gradients are 41 MB in float32 (10.17M parameters). Rank 0 prints, per size and dtype, the
mean of 20 all-reduces timed with CUDA events after 5 warm-ups, and the bus bandwidth as nccl-tests defines
it: bytes / time · 2(n - 1)/n for n ranks (at n = 2, bytes / time).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

SIZES_MB = (1, 4, 16, 41, 164)


def main() -> None:
    dist.init_process_group("nccl")
    rank, n = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(rank)
    for mb in SIZES_MB:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(mb * 2**20 // 4, device="cuda").to(dtype)  # mb of float32; half that in bfloat16
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
                print(f"{mb:4d} MB fp32-count {str(dtype):15s} {ms:.3f} ms  busbw "
                      f"{x.numel() * x.element_size() / ms / 1e6 * 2 * (n - 1) / n:.1f} GB/s", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
