"""What the batch strides' alignment is worth: the forward kernel as launched vs with them left unspecialised.

    python -m kernels.benchmarks.alignment          # a GPU; prints one line per shape, kernel and tile

Triton's JIT specialises integer arguments that are multiples of 16. For contiguous (B, T, D) inputs the batch
stride T·D usually is, the pointers are then known to be 16-byte aligned, and the software pipeliner moves the
2-byte tiles by cp.async into shared memory. With the batch stride's alignment unknown (here forced by
`do_not_specialize`; in use, a stride that is not a multiple of 16), the compiler may assume only 2-byte
alignment, too little for a 4-byte cp.async of VEC = 2 channels, and the tiles are loaded into registers
instead (`kernels.benchmarks.sass` compiles the specialised kernels; the report's first version showed the
other kind). Each line: time, fraction of the copy bandwidth measured in the same run, and
whether the output equals the committed launch's bit for bit.
"""

from __future__ import annotations

import torch
import triton

from kernels import associative_scan as scan
from kernels.benchmarks.common import bench_ms, copy_bandwidth_gbs, scan_bytes, scan_inputs

UNSPECIALISED = triton.jit(do_not_specialize=["stride_x_b", "stride_a_b"])(scan._scan_fwd_kernel.fn)
SHAPES = [((8, 2048, 2048), torch.bfloat16), ((16, 1024, 1024), torch.bfloat16), ((4, 16384, 5120), torch.float16)]
TILES = [(64, 3), (64, 2), (32, 3), (32, 4), (16, 6)]  # (BLOCK_T, STAGES); BLOCK_D 64, VEC 2, one warp


def launch(kernel, x: torch.Tensor, a: torch.Tensor, h: torch.Tensor, config: dict) -> None:
    """One-chunk forward of x, a (B, T, D) into h, no initial or final state."""
    B, T, D = x.shape
    kernel[(triton.cdiv(D, config["BLOCK_D"]), 1, B)](
        x, a, None, h, None, T, D, T, *x.stride(), *a.stride(), 0, 0, 0,
        HAS_INIT=False, STORE_FINAL=False, EVEN_D=D % config["BLOCK_D"] == 0,
        EVEN_T=T % config["BLOCK_T"] == 0, **config)


def main() -> None:
    copy = copy_bandwidth_gbs()
    print(torch.cuda.get_device_name(), f"copy {copy:.0f} GB/s", torch.__version__, triton.__version__, flush=True)
    for (B, T, D), dtype in SHAPES:
        x, a = scan_inputs(B, T, D, dtype)
        nbytes = scan_bytes(B, T, D, dtype, backward=False)
        committed = scan.associative_scan_fwd(x, a, None, False, config=scan.tile_config(dtype))[0]  # one chunk
        for name, kernel in (("committed (specialised)", scan._scan_fwd_kernel), ("unspecialised", UNSPECIALISED)):
            for block_t, stages in TILES:
                config = dict(BLOCK_T=block_t, BLOCK_D=64, VEC=2, STAGES=stages, num_warps=1)
                h = torch.full_like(x, float("nan"))
                launch(kernel, x, a, h, config)
                same = torch.equal(h, committed)
                ms = bench_ms(lambda: launch(kernel, x, a, h, config))  # noqa: B023
                print(f"{(B, T, D)} {str(dtype)[6:]:8s} {name:24s} BLOCK_T {block_t:3d} STAGES {stages}  "
                      f"{ms * 1e3:7.1f} us  frac {nbytes / ms / 1e6 / copy:.3f}  equal to committed: {same}",
                      flush=True)


if __name__ == "__main__":
    main()
