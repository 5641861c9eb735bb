"""Which path and which tile a Triton scan call takes: every rule in one place, and the tile table of each GPU.

Paths (docs/scan-design.md explains each):
- "one-chunk": a program per (batch row, channel block) walks all of T (associative_scan.py). Where B · D gives
  every SM a program, and they fill the SMs evenly.
- "lookback": one pass over tall tiles chained by a decoupled look-back (lookback_scan.py). Where one chunk per
  program would leave SMs idle (small B · D: T would be cut into chunks), or would fill them unevenly
  (`one_chunk_fill` < LOOKBACK_MAX_FILL) at T >= LOOKBACK_MIN_T.
- "chunked": T cut into chunks across programs (associative_scan.py's summary, carry and rescan). Where the
  look-back would run but torch's deterministic algorithms are on (the look-back's order of combination depends
  on timing), or its 32-bit tile offsets do not fit the tensors' strides.

A call's plan depends only on its shape class (B, T, D, dtype, device, the strides' span, the deterministic flag)
and is cached, so an eager call pays for the rules once per shape.

Tiles. `tiles.json` holds, per GPU model (its device name), the one-chunk and chunked passes' tile per element size
and pass, written by `python -m kernels.benchmarks.tune --write-table` on that GPU. A GPU not in the table takes the
table of one with the same compute capability and SM count, else the "fallback" entry. The look-back tiles are
below: they fit Hopper's register file (three 4-warp programs per SM) and are the same for every GPU (tune.py does
not sweep them; docs/scan-design.md says how they were chosen).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import NamedTuple

import torch

from ._env import triton_interpreter_on

TILES_PATH = Path(__file__).with_name("tiles.json")
TILE_KEYS = ("BLOCK_T", "BLOCK_D", "VEC", "STAGES", "num_warps")
# The interpreter runs layouts as plain arrays: small tiles keep CPU tests quick and still span several.
INTERPRETER_TILE = dict(BLOCK_T=16, BLOCK_D=16, VEC=1, STAGES=1, num_warps=1)
CARRY_TILE = dict(BLOCK_C=32, BLOCK_D=64, num_warps=2)  # the (tiny) carry kernel's tile: BLOCK_C chunks at a time
INTERPRETER_CARRY_TILE = dict(BLOCK_C=4, BLOCK_D=16, num_warps=1)  # tests' few chunks still span several blocks
MIN_CHUNK_T = 512  # the chunked path never makes chunks shorter than this (each adds a summary and a carry)
# One chunk per program fills the SMs this unevenly or worse (programs / (SMs · programs per SM, rounded up)) at
# T >= LOOKBACK_MIN_T: the look-back instead. Uneven fills leave SMs idle while the busiest finish, which the
# look-back's per-tile programs avoid; near-even fills and short T do not repay its wait (docs/scan-design.md).
LOOKBACK_MAX_FILL = 0.9
LOOKBACK_MIN_T = 2048

# Look-back tiles: WARPS sub-tiles of ROWS rows (one warp each) × BLOCK_D = 32 lanes · VEC channels, per element size;
# every warp reads WINDOW predecessors at a time. MAXNREG caps the registers per thread (0: none): 168 leaves three
# 4-warp programs per SM (65536 registers / (3 · 128 threads) = 170, allocated in steps of 8). fp32 tiles hold
# twice the bytes: capped, the backward would spill, so they are not capped, and their forward is 128 rows.
LOOKBACK_FORWARD_TILES = {  # element size (bytes): tile
    2: dict(ROWS=64, WARPS=4, BLOCK_D=64, VEC=2, WINDOW=1, MAXNREG=168),
    4: dict(ROWS=32, WARPS=4, BLOCK_D=64, VEC=2, WINDOW=1, MAXNREG=0),
}
LOOKBACK_BACKWARD_TILES = {
    2: dict(ROWS=32, WARPS=4, BLOCK_D=64, VEC=2, WINDOW=1, MAXNREG=168),
    4: dict(ROWS=32, WARPS=4, BLOCK_D=64, VEC=2, WINDOW=1, MAXNREG=0),
}
# The gated recurrence computes its gate (an exp and a reciprocal per element, twice in the forward) and, backward,
# reads f and v again: shorter tiles keep it within the same registers without spills (sm_90 compiles, triton 3.6:
# `python -m kernels.benchmarks.sass`).
GATED_LOOKBACK_FORWARD_TILES = {
    2: dict(ROWS=16, WARPS=4, BLOCK_D=64, VEC=2, WINDOW=1, MAXNREG=168),
    4: dict(ROWS=32, WARPS=4, BLOCK_D=64, VEC=2, WINDOW=1, MAXNREG=0),
}
GATED_LOOKBACK_BACKWARD_TILES = {
    2: dict(ROWS=16, WARPS=4, BLOCK_D=64, VEC=2, WINDOW=1, MAXNREG=168),
    4: dict(ROWS=16, WARPS=4, BLOCK_D=64, VEC=2, WINDOW=1, MAXNREG=0),
}
GATED_BACKWARD_ROWS, GATED_BACKWARD_STAGES = 16, 3  # the one-chunk gated backward's tile: 64-row tiles spill
# Interpreter, both passes: tiny tiles and windows, so that CPU tests span several tiles, sub-tiles and windows.
INTERPRETER_LOOKBACK_TILE = dict(ROWS=4, WARPS=2, BLOCK_D=16, VEC=1, WINDOW=2, MAXNREG=0)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints. (triton.cdiv is a constexpr function in newer Triton: ~3 µs per call from Python.)"""
    return -(-a // b)


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in _DTYPES:
        raise TypeError(f"dtype: expected torch.float32, torch.bfloat16 or torch.float16, got {dtype}")


@functools.lru_cache(maxsize=None)
def tile_table() -> dict:
    """tiles.json: {"gpus": {device name: {"capability": [major, minor], "sms": int, "measured": str,
    "2" | "4" (bytes per element): {"forward": tile, "backward": tile}}}, "fallback": device name}."""
    return json.loads(TILES_PATH.read_text())


@functools.lru_cache(maxsize=None)
def gpu_tiles(device: torch.device | None = None) -> dict:
    """The tile table entry for `device` (None: the current CUDA device, or the fallback without CUDA)."""
    table = tile_table()
    gpus = table["gpus"]
    if device is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    if device is None or device.type != "cuda":
        return gpus[table["fallback"]]
    props = torch.cuda.get_device_properties(device)
    if props.name in gpus:
        return gpus[props.name]
    for entry in gpus.values():
        if tuple(entry["capability"]) == (props.major, props.minor) and entry["sms"] == props.multi_processor_count:
            return entry
    return gpus[table["fallback"]]


def tile_config(dtype: torch.dtype, backward: bool = False, device: torch.device | None = None,
                gated: bool = False) -> dict:
    """The one-chunk / chunked passes' meta-parameters for one dtype and pass on `device`: BLOCK_T, BLOCK_D (32 lanes ·
    VEC · num_warps, or half that), VEC, STAGES, num_warps. gated: the gated recurrence's (a shorter backward tile)."""
    _check_dtype(dtype)
    if triton_interpreter_on():
        return dict(INTERPRETER_TILE)
    tile = gpu_tiles(device)[str(dtype.itemsize)]["backward" if backward else "forward"]
    tile = {k: tile[k] for k in TILE_KEYS}
    if gated and backward:
        tile.update(BLOCK_T=min(tile["BLOCK_T"], GATED_BACKWARD_ROWS), STAGES=GATED_BACKWARD_STAGES)
    return tile


def lookback_config(dtype: torch.dtype, backward: bool = False, gated: bool = False) -> dict:
    """The look-back passes' meta-parameters, {ROWS, WARPS, BLOCK_D, VEC, WINDOW, MAXNREG}: a tile of WARPS · ROWS
    rows and BLOCK_D = 32 · VEC channels, one warp per sub-tile of ROWS rows; WINDOW predecessors per look-back read;
    MAXNREG registers per thread at most (0: no cap). gated: the gated recurrence's tiles."""
    _check_dtype(dtype)
    if triton_interpreter_on():
        return dict(INTERPRETER_LOOKBACK_TILE)
    if gated:
        return dict((GATED_LOOKBACK_BACKWARD_TILES if backward else GATED_LOOKBACK_FORWARD_TILES)[dtype.itemsize])
    return dict((LOOKBACK_BACKWARD_TILES if backward else LOOKBACK_FORWARD_TILES)[dtype.itemsize])


def lookback_rows(config: dict) -> int:
    """Rows of T per program (per look-back) of a look-back config."""
    return config["ROWS"] * config["WARPS"]


@functools.lru_cache(maxsize=None)
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 elsewhere (the interpreter)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def chunk_len(B: int, T: int, D: int, block_d: int, sms: int) -> int:
    """Rows per chunk: all of T when B · D gives every SM a program, else enough chunks for 4 programs per SM
    (each at least MIN_CHUNK_T rows, rounded up to a multiple of 256)."""
    programs = B * cdiv(D, block_d)
    if programs >= sms:
        return T
    n_chunks = min(cdiv(4 * sms, programs), T // MIN_CHUNK_T)
    if n_chunks <= 1:
        return T
    return cdiv(cdiv(T, n_chunks), 256) * 256


def one_chunk_fill(B: int, D: int, block_d: int, sms: int) -> float:
    """How evenly one program per (batch row, channel block) fills the SMs: programs / (SMs · ceil(programs /
    SMs)). At 320 programs on 132 SMs (0.81), 56 SMs hold three programs while 76 hold two, and the kernel
    waits on the busiest."""
    programs = B * cdiv(D, block_d)
    return programs / (sms * cdiv(programs, sms))


def tile_fits_int32(block_t: int, block_d: int, stride_t: int, stride_d: int) -> bool:
    """Whether 32-bit offsets address a block_t × block_d tile from its first row: block_t · |stride_t| +
    block_d · |stride_d| < 2**31 (the kernels add one 64-bit offset per tile, then 32-bit ones)."""
    return block_t * abs(stride_t) + block_d * abs(stride_d) < 2**31


class Plan(NamedTuple):
    """How one pass runs: path ("one-chunk", "chunked" or "lookback"), its kernels' meta-parameters (a tuple of
    items, hashable), and the rows per chunk (T on the one-chunk path; unused by the look-back)."""

    path: str
    config: tuple
    chunk_t: int

    @property
    def tile(self) -> dict:
        return dict(self.config)


@functools.lru_cache(maxsize=4096)
def plan(backward: bool, B: int, T: int, D: int, dtype: torch.dtype, device: torch.device,
         strides: tuple[tuple[int, int], ...], deterministic: bool, gated: bool = False) -> Plan:
    """The path and tiles of one pass (see the module docstring). strides: (stride_t, stride_d) of each (B, T, D)
    input the pass reads (x and a forward, a and dh backward); gated: the gated recurrence's tiles."""
    tile = tile_config(dtype, backward, device, gated)
    sms = num_sms(device)
    chunk_t = chunk_len(B, T, D, tile["BLOCK_D"], sms)
    uneven = T >= LOOKBACK_MIN_T and one_chunk_fill(B, D, tile["BLOCK_D"], sms) < LOOKBACK_MAX_FILL
    if (chunk_t < T or uneven) and not deterministic:
        lookback = lookback_config(dtype, backward, gated)
        if all(tile_fits_int32(lookback_rows(lookback), lookback["BLOCK_D"], st, sd) for st, sd in strides):
            return Plan("lookback", tuple(lookback.items()), T)
    return Plan("one-chunk" if chunk_t >= T else "chunked", tuple(tile.items()), chunk_t)


def plan_for(backward: bool, *tensors: torch.Tensor, gated: bool = False) -> Plan:
    """`plan` for a pass over these (B, T, D) tensors (the first gives shape, dtype and device)."""
    B, T, D = tensors[0].shape
    strides = tuple((t.stride(1), t.stride(2)) for t in tensors)
    return plan(backward, B, T, D, tensors[0].dtype, tensors[0].device, strides,
                torch.are_deterministic_algorithms_enabled(), gated)
