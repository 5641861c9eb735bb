"""What the scan kernels compile to on an H100 (sm_90), without a GPU: registers, spills, shuffles, barriers.

    python -m kernels.benchmarks.sass [--d 2048]     # the tiles of kernels/tiles.json, contiguous (B, T, D)

The integer arguments (T, the chunk length, batch strides) are declared multiples of 16, as Triton's JIT
specialises them when they are (T % 16 == 0 here). Without that, a batch stride of unknown alignment caps the
pointers' alignment at one element, and 2-byte loads are too narrow for cp.async: a different kernel.

Triton compiles for a target it is told about (here CUDA sm_90) on any machine, and ships `cuobjdump`.
For each kernel (forward, backward, chunk summary) at each element size's tile, this prints the register
count, local memory (spills), shared memory, the number of warp shuffles (SHFL) and barriers (BAR) in the
SASS, cp.async copies (LDGSTS: loads pipelined through shared memory) and plain global loads and stores
(LDG, STG; the pipeliner may also issue LDGs ahead into registers). The forward and backward tile scans are
meant to run in registers: no SHFL, and no BAR beyond those of a cp.async pipeline. (The chunk summary
reduces its tile's gate product across rows too, which may shuffle.)
"""

from __future__ import annotations

import argparse
import inspect
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels import associative_scan as scan

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
FP32_POINTERS = {"h_T_ptr", "init_ptr", "A_ptr", "V_ptr"}
KERNELS = {  # name: (kernel, its constexpr flags): one-chunk forward with h_T, backward with h0 and dh_T
    "fwd": (scan._scan_fwd_kernel, dict(HAS_INIT=False, STORE_FINAL=True)),
    "bwd": (scan._scan_bwd_kernel, dict(HAS_H0=True, HAS_INIT=True)),
    "summary": (scan._chunk_summary_kernel, dict(REVERSE=False)),
}
DTYPES = {2: "bf16", 4: "fp32"}


def compile_sm90(kernel, dtype: str, D: int, tile: dict, flags: dict) -> str:
    """-> the SASS and resource report of `kernel` for contiguous (B, T, D) tensors of `dtype`."""
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(inspect.signature(kernel.fn).parameters.items()):
        if param.annotation in (triton.language.constexpr, "tl.constexpr"):
            signature[name] = "constexpr"
            given = {"D": D, **tile, "EVEN_D": D % tile["BLOCK_D"] == 0, **flags}
            constexprs[name] = given[name] if name in given else (D if name.endswith("_t") else 1)  # strides
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name in FP32_POINTERS else f"*{dtype}"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:  # T, chunk length, batch strides: multiples of 16 at such shapes, which Triton's JIT specialises on
            signature[name] = "i32"
            attrs[(i,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": tile["num_warps"]})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        return "\n".join(subprocess.run([str(CUOBJDUMP), flag, f.name], capture_output=True, text=True,
                                        check=True).stdout for flag in ("-res-usage", "-sass"))


def summarise(report: str) -> dict:
    usage = dict(re.findall(r"(REG|SHARED|LOCAL):(\d+)", report))
    count = lambda op: len(re.findall(rf"\b{op}\b", report))  # noqa: E731
    return dict(regs=int(usage["REG"]), local=int(usage["LOCAL"]), shared=int(usage["SHARED"]),
                SHFL=count(r"SHFL\.\w+"), BAR=count(r"BAR\.\w+"), LDGSTS=count(r"LDGSTS(?:\.\w+)*"),
                LDG=count(r"LDG\.E(?:\.\w+)*"), STG=count(r"STG\.E(?:\.\w+)*"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--d", type=int, default=2048, help="channels (a compile-time constant of the kernels)")
    args = p.parse_args()
    print(f"triton {triton.__version__}, target sm_90, D={args.d}, contiguous inputs, integer arguments % 16 == 0")
    for size, dtype in DTYPES.items():
        tile = {k: v for k, v in scan._tile_table()[str(size)].items() if k != "score"}
        for name, (kernel, flags) in KERNELS.items():
            row = summarise(compile_sm90(kernel, dtype, args.d, tile, flags))
            print(f"{name:8s} {dtype}  {tile}  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
