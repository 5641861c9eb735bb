"""What the scan kernels compile to on Hopper (sm_90), without a GPU: registers, spills, shuffles, barriers.

    python -m kernels.benchmarks.sass [--d 2048]     # the tiles of kernels/tiles.json, contiguous (B, T, D)
    python -m kernels.benchmarks.sass --tile 64 64 4 4 1 --opcodes 12   # any tile; the commonest opcodes too

The integer arguments are given as Triton's JIT specialises them for contiguous inputs with T % 16 == 0:
T, the chunk length and batch strides as multiples of 16, the states' strides along D as the constant 1.
The forward is compiled for T a multiple of its BLOCK_T (EVEN_T: every tile goes through the pipelined loop).
Without that, a batch stride of unknown alignment caps the pointers' alignment at one element, and 2-byte
loads are too narrow for cp.async: a different, slower kernel (docs/scan-design.md).

Triton compiles for a target it is told about (here CUDA sm_90) on any machine, and ships `cuobjdump`.
For each kernel (forward, backward, chunk summary; the look-back forward and backward) at each element
size's tile, this prints the register count, register spills (the stack frame in bytes and its LDL/STL
instructions; cuobjdump's LOCAL does not count them), local memory, shared memory, the number of warp
shuffles (SHFL) and barriers (BAR) in the SASS, cp.async copies (LDGSTS: loads pipelined through shared
memory) and plain global loads and stores (LDG, STG; the pipeliner may also issue LDGs ahead into
registers), and the number of instructions. With
whole columns per thread (BLOCK_D = 32 · VEC · num_warps), the forward and backward tile scans are meant to
run in registers: no SHFL, and no BAR beyond those of a cp.async pipeline. (The chunk summary reduces its
tile's gate product across rows too, which may shuffle; the look-back forward's window reductions and its
scan of the sub-tile totals across warps use SHFL and BAR.)
"""

from __future__ import annotations

import argparse
import inspect
from collections import Counter
import re
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels import associative_scan as scan
from kernels import dispatch
from kernels import lookback_scan as lookback

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
POINTER_TYPES = {"h_T_ptr": "*fp32", "init_ptr": "*fp32", "A_ptr": "*fp32", "V_ptr": "*fp32", "state_ptr": "*i32",
                 "bias_ptr": "*fp32", "lb_ptr": "*fp32", "doc_ptr": "*i1"}
KERNELS = {  # name: (kernel, its constexpr flags, the table's pass whose tile it runs, or lookback_scan's):
    # one-chunk forward with h_T and whole tiles only, backward with h0 and dh_T, the forward's chunk summary,
    # and the look-back forward and backward (linear_scan's at long T), whole tiles only
    "fwd": (scan._scan_fwd_kernel, dict(HAS_INIT=False, STORE_FINAL=True, EVEN_T=True), "forward"),
    "bwd": (scan._scan_bwd_kernel, dict(HAS_H0=True, HAS_INIT=True), "backward"),
    "summary": (scan._chunk_summary_kernel, dict(REVERSE=False), "forward"),
    "lb fwd": (lookback._lookback_fwd_kernel, dict(HAS_H0=False, STORE_FINAL=True, EVEN_T=True), "look-back"),
    "lb bwd": (lookback._lookback_bwd_kernel, dict(HAS_H0=True, HAS_DH_T=True, EVEN_T=True), "look-back backward"),
    # the gated recurrence (the model's default on CUDA), with document starts: one chunk, then look-back passes
    "gated 1c fwd": (scan._scan_fwd_kernel, dict(HAS_INIT=False, STORE_FINAL=True, EVEN_T=True, GATED=True,
                                                 HAS_DOC=True), "gated forward"),
    "gated 1c bwd": (scan._scan_bwd_kernel, dict(HAS_H0=True, HAS_INIT=True, GATED=True, HAS_DOC=True),
                     "gated backward"),
    "gated fwd": (lookback._lookback_fwd_kernel,
                  dict(HAS_H0=False, STORE_FINAL=True, EVEN_T=True, GATED=True, HAS_DOC=True), "gated look-back"),
    "gated bwd": (lookback._lookback_bwd_kernel,
                  dict(HAS_H0=True, HAS_DH_T=True, EVEN_T=True, GATED=True, HAS_DOC=True),
                  "gated look-back backward"),
}
DTYPES = {2: "bf16", 4: "fp32"}


def compile_sm90(kernel, dtype: str, D: int, tile: dict, flags: dict) -> str:
    """-> the SASS and resource report of `kernel` for contiguous (B, T, D) tensors of `dtype`."""
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(inspect.signature(kernel.fn).parameters.items()):
        if param.annotation in (triton.language.constexpr, "tl.constexpr"):
            signature[name] = "constexpr"
            given = {"D": D, "GATED": False, "HAS_DOC": False, **tile, "EVEN_D": D % tile["BLOCK_D"] == 0, **flags}
            constexprs[name] = given[name] if name in given else (D if name.endswith("_t") else 1)  # strides
        elif name.endswith("_ptr"):
            signature[name] = POINTER_TYPES.get(name, f"*{dtype}")
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ("stride_lb", "stride_doc_t"):  # not specialised on
            signature[name] = "i32"
        elif name.startswith("stride_") and name.endswith("_d"):  # of a contiguous (B, D) state: 1, a constant
            signature[name] = "constexpr"
            constexprs[name] = 1
        else:  # T, chunk length, batch strides: multiples of 16 at such shapes, which Triton's JIT specialises on
            signature[name] = "i32"
            if name not in ("B", "opaque_zero"):  # look-back kernels: the batch size is whatever it is (1 at long
                # T); opaque_zero is never specialised on
                attrs[(i,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32),
                              options={k: v for k, v in tile.items() if k in ("num_warps", "maxnreg")})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        return "\n".join(subprocess.run([str(CUOBJDUMP), flag, f.name], capture_output=True, text=True,
                                        check=True).stdout for flag in ("-res-usage", "-sass"))


def opcodes(report: str) -> list[str]:
    """The SASS instructions' opcodes with their modifiers (e.g. LDGSTS.E), predicates dropped, in order."""
    return re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)", report)


def summarise(report: str) -> dict:
    usage = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", report))
    count = lambda op: len(re.findall(rf"\b{op}\b", report))  # noqa: E731
    # Register spills go to the stack frame (STACK bytes, LDL/STL instructions); LOCAL is other local memory.
    return dict(regs=int(usage["REG"]), stack=int(usage["STACK"]), spill_ops=count(r"(?:LDL|STL)(?:\.\w+)*"),
                local=int(usage["LOCAL"]), shared=int(usage["SHARED"]),
                SHFL=count(r"SHFL\.\w+"), BAR=count(r"BAR\.\w+"), LDGSTS=count(r"LDGSTS(?:\.\w+)*"),
                LDG=count(r"LDG\.E(?:\.\w+)*"), STG=count(r"STG\.E(?:\.\w+)*"), instructions=len(opcodes(report)))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--d", type=int, default=2048, help="channels (a compile-time constant of the kernels)")
    p.add_argument("--tile", type=int, nargs=5, metavar=("BLOCK_T", "BLOCK_D", "VEC", "STAGES", "WARPS"),
                   help="compile this tile for both element sizes instead of the table's")
    p.add_argument("--opcodes", type=int, default=0, metavar="N", help="also print each kernel's N commonest opcodes")
    args = p.parse_args()
    print(f"triton {triton.__version__}, target sm_90, D={args.d}, contiguous inputs, integer arguments % 16 == 0 "
          "(state strides along D: 1)")
    for size, dtype in DTYPES.items():
        for name, (kernel, flags, direction) in KERNELS.items():
            gated, backward = direction.startswith("gated"), direction.endswith("backward")
            if "look-back" in direction:
                torch_dtype = {2: torch.bfloat16, 4: torch.float32}[size]
                tile = lookback._launch_options(dispatch.lookback_config(torch_dtype, backward, gated))
            elif args.tile:
                tile = dict(zip(dispatch.TILE_KEYS, args.tile))
            else:
                tile = dispatch.tile_config({2: torch.bfloat16, 4: torch.float32}[size], backward, torch.device("cpu"),
                                            gated)
            report = compile_sm90(kernel, dtype, args.d, tile, flags)
            row = summarise(report)
            print(f"{name:8s} {dtype}  {tile}  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            if args.opcodes:
                print("    " + "  ".join(f"{op} {n}" for op, n in Counter(opcodes(report)).most_common(args.opcodes)))


if __name__ == "__main__":
    main()
