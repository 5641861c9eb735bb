"""Chunked associative scan in Triton: h_t = a_t ⊙ h_{t-1} + x_t over (B, T, D), with a fused backward.

Each program owns BLOCK_D channels of one batch row and a range of T (a chunk). It walks its chunk in
BLOCK_T-row tiles: `tl.associative_scan` down each tile with the combine
(a_l, h_l) ∘ (a_r, h_r) = (a_l a_r, a_r h_l + h_r), then h = A ⊙ carry + H, carrying a float32 state from
tile to tile. D is the contiguous axis of the (B, T, D) layout the model produces, so loads are coalesced
and nothing is transposed.

Two paths, chosen by shape:
- one chunk (B · D fills the GPU): every program scans the whole of T. One kernel, 3·N·s bytes.
  (Where its programs fill the SMs unevenly, e.g. 320 programs on 132 SMs, and T is long, both passes run
  `lookback_scan.py`'s single pass instead: see `_lookback_instead`.)
- T-parallel (B · D small, T long, e.g. B=1, D=512, T=131072): T is cut into chunks across programs.
  (Both passes of this regime run `lookback_scan.py`'s single pass instead, unless a chunk length is
  given or torch's deterministic algorithms are on: see `associative_scan_fwd`.)
  1. `_chunk_summary_kernel` reduces each chunk to its pair (A_c, H_c) = (prod a, scan from zero);
  2. `_chunk_carry_kernel` scans the pairs across chunks into each chunk's initial state;
  3. `_scan_fwd_kernel` rescans every chunk from its initial state.
The backward runs the same machinery from the end of T (its tiles time-flipped; the summary kernel's
`REVERSE`), seeded by dh_T: dh_t = dh_t^out + a_{t+1} dh_{t+1}; one pass writes dx = dh,
da_t = dh_t h_{t-1} and dh0 = a_1 dh_1.
Formulas count steps t = 1..T with h_0 the initial state; the code counts rows 0..T-1 (row t is step t+1).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import triton
import triton.language as tl

from ._env import triton_interpreter_on
from .function import apply_scan


@triton.jit
def _combine(a_l, h_l, a_r, h_r):
    # (a_l, h_l) first, then (a_r, h_r): h = a_r h_l + h_r
    return a_l * a_r, a_r * h_l + h_r


@triton.jit
def _row(tile, rows, r):
    """tile[r, :] of a (BLOCK_T, BLOCK_D) tile, as a (BLOCK_D,) vector (in-thread: every row is in each thread)."""
    return tl.sum(tl.where(rows[:, None] == r, tile, 0.0), axis=0)


@triton.jit
def _thread_columns(BLOCK_D: tl.constexpr, VEC: tl.constexpr):
    """tl.arange(0, BLOCK_D), declared contiguous in runs of VEC only.

    Triton lays a tile out by the contiguity of its addresses: with runs of VEC, each thread holds VEC
    adjacent channels (one VEC-wide load per row) and the 32 lanes of a warp sit side by side along D, so
    every row of the tile lives in every thread (when BLOCK_D = 32 · VEC · num_warps). The scan down T then
    runs in registers: no shuffles, no shared memory, no barriers. With half that BLOCK_D, the spare lanes
    split the rows in two: wider loads, one shuffle level. With the full contiguity, Triton would spread T
    across lanes and warps.
    """
    return tl.max_contiguous(tl.multiple_of(tl.arange(0, BLOCK_D), VEC), VEC)


@triton.jit
def _tile_offsets(rows, cols, stride_t: tl.constexpr, stride_d: tl.constexpr):
    """(BLOCK_T, BLOCK_D) int32 offsets within a tile. The strides are compile-time constants, so each row's
    part folds into the load's immediate offset: one address register per thread, not one per row."""
    return rows[:, None] * stride_t + cols[None, :] * stride_d


@triton.jit
def _load_pair_tile(a_first, v_first, t0, t_start, t_end, T, rows, cols, mask_cols,
                    stride_a_t: tl.constexpr, stride_a_d: tl.constexpr,
                    stride_v_t: tl.constexpr, stride_v_d: tl.constexpr,
                    REVERSE: tl.constexpr, WHOLE: tl.constexpr, EVEN_D: tl.constexpr):
    """Rows t = t0 + rows of the scan's pairs: (a_t, v_t), or (a_{t+1}, v_t) in REVERSE; the identity (1, 0)
    outside [t_start, t_end) and for a_T. *_first point at row 0 of the program's channels; t0 is an int32
    scalar; mask_cols (1, BLOCK_D) masks channels past D. WHOLE: the caller knows every row is inside the
    chunk (and, in REVERSE, that t + 1 < T), so only channels are masked; EVEN_D: none are past D."""
    v_tile = v_first + t0.to(tl.int64) * stride_v_t + _tile_offsets(rows, cols, stride_v_t, stride_v_d)
    a_t0 = t0 + 1 if REVERSE else t0
    a_tile = a_first + a_t0.to(tl.int64) * stride_a_t + _tile_offsets(rows, cols, stride_a_t, stride_a_d)
    if WHOLE and EVEN_D:
        v = tl.load(v_tile)
        a = tl.load(a_tile)
    elif WHOLE:
        v = tl.load(v_tile, mask=mask_cols, other=0.0)
        a = tl.load(a_tile, mask=mask_cols, other=1.0)
    else:
        in_chunk = (rows >= t_start - t0) & (rows < t_end - t0)
        a_end = tl.minimum(t_end, T - 1) if REVERSE else t_end  # rows t < a_end read a real gate
        v = tl.load(v_tile, mask=in_chunk[:, None] & mask_cols, other=0.0)
        a = tl.load(a_tile, mask=(in_chunk & (rows < a_end - t0))[:, None] & mask_cols, other=1.0)
    return a, v


@triton.jit
def _scan_tile(a, v, carry, rows, FIRST_ROW: tl.constexpr, LAST_ROW: tl.constexpr):
    """Scan a (BLOCK_T, BLOCK_D) tile of pairs in float32 from the state `carry` entering at row FIRST_ROW
    -> (states (BLOCK_T, BLOCK_D), the state at row LAST_ROW (BLOCK_D,)). The carry is folded into the first
    row's value, v + a carry, so one scan of (a, v) gives the states."""
    a, v = a.to(tl.float32), v.to(tl.float32)
    v = tl.where(rows[:, None] == FIRST_ROW, v + a * carry[None, :], v)  # a select: free in the other rows
    _, h = tl.associative_scan((a, v), axis=0, combine_fn=_combine)
    return h, _row(h, rows, LAST_ROW)


@triton.jit
def _store_tile(out_first, value, t0, t_end, rows, cols, mask_cols, D: tl.constexpr, WHOLE: tl.constexpr,
                EVEN_D: tl.constexpr):
    """Store rows t0 + rows < t_end of a (BLOCK_T, BLOCK_D) tile into a contiguous (., D) output."""
    out_tile = out_first + t0.to(tl.int64) * D + _tile_offsets(rows, cols, D, 1)
    value = value.to(out_tile.dtype.element_ty)
    if WHOLE and EVEN_D:
        tl.store(out_tile, value)
    elif WHOLE:
        tl.store(out_tile, value, mask=mask_cols)
    else:
        tl.store(out_tile, value, mask=(rows < t_end - t0)[:, None] & mask_cols)


@triton.jit
def _scan_fwd_kernel(
    # pointers
    x_ptr, a_ptr,  # (B, T, D) inputs, any strides
    init_ptr,  # (B, C, D) state entering each chunk (C = 1: h0), fp32 or x's dtype; unused if not HAS_INIT
    h_ptr,  # (B, T, D) output, contiguous
    h_T_ptr,  # (B, D) fp32 final state, contiguous; unused if not STORE_FINAL
    # sizes
    T, D: tl.constexpr, CHUNK_T,
    # strides, in elements (T and D strides are compile-time: see _tile_offsets)
    stride_x_b, stride_x_t: tl.constexpr, stride_x_d: tl.constexpr,
    stride_a_b, stride_a_t: tl.constexpr, stride_a_d: tl.constexpr,
    stride_init_b, stride_init_c, stride_init_d,
    # meta-parameters
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
    EVEN_D: tl.constexpr,  # D % BLOCK_D == 0: no channel masks
    EVEN_T: tl.constexpr,  # T and CHUNK_T are multiples of BLOCK_T: every tile is whole
    HAS_INIT: tl.constexpr,  # h0 given (one chunk) or the T-parallel path's chunk states
    STORE_FINAL: tl.constexpr,  # write h_T (one-chunk path; on the T-parallel path the carry kernel does)
):
    pid_d, pid_c, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b = pid_b.to(tl.int64)
    d0 = pid_d * BLOCK_D
    cols = _thread_columns(BLOCK_D, VEC)
    mask_d = cols < D - d0
    mask_cols = mask_d[None, :]
    rows = tl.arange(0, BLOCK_T)
    t_start = pid_c * CHUNK_T
    t_end = tl.minimum(t_start + CHUNK_T, T)
    x_first = x_ptr + b * stride_x_b + d0.to(tl.int64) * stride_x_d
    a_first = a_ptr + b * stride_a_b + d0.to(tl.int64) * stride_a_d
    h_first = h_ptr + b * T * D + d0

    if HAS_INIT:
        init = init_ptr + b * stride_init_b + pid_c * stride_init_c + (d0 + cols) * stride_init_d
        carry = tl.load(init, mask=mask_d, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros([BLOCK_D], dtype=tl.float32)

    # Whole tiles need no row masks, and Triton's software pipeliner issues their loads STAGES - 1 tiles
    # ahead of the scan (through shared memory by cp.async, or into registers: the compiler chooses;
    # `python -m kernels.benchmarks.sass` shows which). Unless EVEN_T, the last tile is masked and loaded
    # after the loop, its latency exposed; its padding rows get the identity (a=1, x=0), so its last row
    # holds the last valid state.
    n_tiles = tl.cdiv(t_end - t_start, BLOCK_T)
    n_whole = n_tiles if EVEN_T else n_tiles - 1
    for i in tl.range(0, n_whole, num_stages=STAGES):
        t0 = t_start + i * BLOCK_T
        a, x = _load_pair_tile(a_first, x_first, t0, t_start, t_end, T, rows, cols, mask_cols,
                               stride_a_t, stride_a_d, stride_x_t, stride_x_d, False, True, EVEN_D)
        h, carry = _scan_tile(a, x, carry, rows, 0, BLOCK_T - 1)
        _store_tile(h_first, h, t0, t_end, rows, cols, mask_cols, D, True, EVEN_D)
    if not EVEN_T:
        t0 = t_start + (n_tiles - 1) * BLOCK_T
        a, x = _load_pair_tile(a_first, x_first, t0, t_start, t_end, T, rows, cols, mask_cols,
                               stride_a_t, stride_a_d, stride_x_t, stride_x_d, False, False, EVEN_D)
        h, carry = _scan_tile(a, x, carry, rows, 0, BLOCK_T - 1)
        _store_tile(h_first, h, t0, t_end, rows, cols, mask_cols, D, False, EVEN_D)

    if STORE_FINAL:
        if pid_c == tl.num_programs(1) - 1:
            tl.store(h_T_ptr + b * D + d0 + cols, carry, mask=mask_d)


@triton.jit
def _bwd_tile(a_first, dh_first, h_first, dx_first, da_first, h0, carry, t0, t_start, t_end, T, rows, cols,
              mask_cols, D: tl.constexpr, stride_a_t: tl.constexpr, stride_a_d: tl.constexpr,
              stride_dh_t: tl.constexpr, stride_dh_d: tl.constexpr, BLOCK_T: tl.constexpr, HAS_H0: tl.constexpr,
              WHOLE: tl.constexpr, EVEN_D: tl.constexpr):
    """One tile of the backward, rows t = t0 + rows: dh = reverse scan of (a_{t+1}, dh_t^out) from `carry`
    (dh at the tile's end); stores dx = dh and da = dh h_{t-1} -> dh at the tile's first row."""
    a_next, dh_out = _load_pair_tile(a_first, dh_first, t0, t_start, t_end, T, rows, cols, mask_cols,
                                     stride_a_t, stride_a_d, stride_dh_t, stride_dh_d, True, WHOLE, EVEN_D)
    # h_{t-1}: the tile's rows shifted up by one (row t0 - 1 is the previous tile's last row: an L2 hit).
    # Whole tiles never hold t = 0 (the caller keeps the chunk's first tile for the masked path).
    h_tile = h_first + (t0 - 1).to(tl.int64) * D + _tile_offsets(rows, cols, D, 1)
    if WHOLE and EVEN_D:
        h_prev = tl.load(h_tile).to(tl.float32)
    elif WHOLE:
        h_prev = tl.load(h_tile, mask=mask_cols, other=0.0).to(tl.float32)
    else:
        prev_rows = (rows >= 1 - t0) & (rows >= t_start - t0) & (rows < t_end - t0)
        h_prev = tl.load(h_tile, mask=prev_rows[:, None] & mask_cols, other=0.0).to(tl.float32)
        if HAS_H0:
            h_prev = tl.where((rows == -t0)[:, None], h0[None, :], h_prev)
    dh, carry = _scan_tile(a_next, dh_out, carry, rows, BLOCK_T - 1, 0)
    _store_tile(dx_first, dh, t0, t_end, rows, cols, mask_cols, D, WHOLE, EVEN_D)
    _store_tile(da_first, dh * h_prev, t0, t_end, rows, cols, mask_cols, D, WHOLE, EVEN_D)
    return carry


@triton.jit
def _scan_bwd_kernel(
    # pointers
    a_ptr,  # (B, T, D) gates, any strides
    h_ptr,  # (B, T, D) forward states, contiguous
    h0_ptr,  # (B, D) initial state, any strides; unused if not HAS_H0
    dh_ptr,  # (B, T, D) gradient of h, any strides
    init_ptr,  # (B, C, D) fp32 gradient entering each chunk from its end (C = 1: dh_T); unused if not HAS_INIT
    dx_ptr, da_ptr,  # (B, T, D) outputs, contiguous
    dh0_ptr,  # (B, D) output, contiguous; unused if not HAS_H0
    # sizes
    T, D: tl.constexpr, CHUNK_T,
    # strides, in elements (T and D strides are compile-time: see _tile_offsets)
    stride_a_b, stride_a_t: tl.constexpr, stride_a_d: tl.constexpr,
    stride_h0_b, stride_h0_d,
    stride_dh_b, stride_dh_t: tl.constexpr, stride_dh_d: tl.constexpr,
    stride_init_b, stride_init_c, stride_init_d,
    # meta-parameters
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
    EVEN_D: tl.constexpr,  # D % BLOCK_D == 0: no channel masks
    HAS_H0: tl.constexpr, HAS_INIT: tl.constexpr,
):
    pid_d, pid_c, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b = pid_b.to(tl.int64)
    d0 = pid_d * BLOCK_D
    cols = _thread_columns(BLOCK_D, VEC)
    mask_d = cols < D - d0
    mask_cols = mask_d[None, :]
    # Row i of a tile holds time t0 + BLOCK_T - 1 - i, so a forward scan down the tile runs backward in time.
    # (The offsets are compile-time constants: the flip costs nothing, where `reverse=True` shuffles lanes.)
    rows = BLOCK_T - 1 - tl.arange(0, BLOCK_T)  # time offset of each row
    t_start = pid_c * CHUNK_T
    t_end = tl.minimum(t_start + CHUNK_T, T)
    a_first = a_ptr + b * stride_a_b + d0.to(tl.int64) * stride_a_d
    dh_first = dh_ptr + b * stride_dh_b + d0.to(tl.int64) * stride_dh_d
    h_first = h_ptr + b * T * D + d0
    dx_first = dx_ptr + b * T * D + d0
    da_first = da_ptr + b * T * D + d0
    if HAS_H0:
        h0 = tl.load(h0_ptr + b * stride_h0_b + (d0 + cols) * stride_h0_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        h0 = tl.zeros([BLOCK_D], dtype=tl.float32)

    if HAS_INIT:
        init = init_ptr + b * stride_init_b + pid_c * stride_init_c + (d0 + cols) * stride_init_d
        carry = tl.load(init, mask=mask_d, other=0.0).to(tl.float32)  # dh at t_end
    else:
        carry = tl.zeros([BLOCK_D], dtype=tl.float32)

    # The chunk's last tile first (masked: it may be partial, and a_T past the end is 1 so that dh_T seeds
    # row T-1), then the whole tiles down to the second, pipelined as in the forward, then the first tile
    # (masked: it may hold t = 0, where h_{t-1} is h0).
    n_tiles = tl.cdiv(t_end - t_start, BLOCK_T)
    carry = _bwd_tile(a_first, dh_first, h_first, dx_first, da_first, h0, carry, t_start + (n_tiles - 1) * BLOCK_T,
                      t_start, t_end, T, rows, cols, mask_cols, D, stride_a_t, stride_a_d, stride_dh_t, stride_dh_d,
                      BLOCK_T, HAS_H0, False, EVEN_D)
    for i in tl.range(0, n_tiles - 2, num_stages=STAGES):
        t0 = t_start + (n_tiles - 2 - i) * BLOCK_T
        carry = _bwd_tile(a_first, dh_first, h_first, dx_first, da_first, h0, carry, t0, t_start, t_end, T, rows,
                          cols, mask_cols, D, stride_a_t, stride_a_d, stride_dh_t, stride_dh_d, BLOCK_T, HAS_H0, True,
                          EVEN_D)
    if n_tiles > 1:
        carry = _bwd_tile(a_first, dh_first, h_first, dx_first, da_first, h0, carry, t_start, t_start, t_end, T,
                          rows, cols, mask_cols, D, stride_a_t, stride_a_d, stride_dh_t, stride_dh_d, BLOCK_T, HAS_H0,
                          False, EVEN_D)

    if HAS_H0:
        # dh0 = a_1 dh_1; only the first chunk's program holds dh_1
        if pid_c == 0:
            a_1 = tl.load(a_first + cols * stride_a_d, mask=mask_d, other=0.0).to(tl.float32)
            tl.store(dh0_ptr + b * D + d0 + cols, (a_1 * carry).to(dh0_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def _tile_summary(a_first, v_first, t0, t_start, t_end, T, rows, cols, mask_cols, end,
                  stride_a_t: tl.constexpr, stride_a_d: tl.constexpr, stride_v_t: tl.constexpr,
                  stride_v_d: tl.constexpr, REVERSE: tl.constexpr, WHOLE: tl.constexpr, EVEN_D: tl.constexpr):
    """The pair (A, V) (BLOCK_D,) fp32 that one tile of pairs (rows t0 + rows, loaded as `_load_pair_tile`)
    amounts to: its scan's row `end`."""
    a, v = _load_pair_tile(a_first, v_first, t0, t_start, t_end, T, rows, cols, mask_cols,
                           stride_a_t, stride_a_d, stride_v_t, stride_v_d, REVERSE, WHOLE, EVEN_D)
    A, V = tl.associative_scan((a.to(tl.float32), v.to(tl.float32)), axis=0, combine_fn=_combine)
    return _row(A, rows, end), _row(V, rows, end)


@triton.jit
def _chunk_summary_kernel(
    # pointers
    v_ptr,  # (B, T, D) values: x (forward) or dh^out (backward), any strides
    a_ptr,  # (B, T, D) gates, any strides
    A_ptr, V_ptr,  # (B, C, D) fp32 outputs: the chunk's gate product and its scan from a zero state
    # sizes
    T, D: tl.constexpr, CHUNK_T,
    # strides, in elements
    stride_v_b, stride_v_t: tl.constexpr, stride_v_d: tl.constexpr,
    stride_a_b, stride_a_t: tl.constexpr, stride_a_d: tl.constexpr,
    # meta-parameters
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
    EVEN_D: tl.constexpr,  # D % BLOCK_D == 0: no channel masks
    REVERSE: tl.constexpr,  # backward: pairs (a_{t+1}, dh_t^out), combined from the chunk's end
):
    pid_d, pid_c, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b = pid_b.to(tl.int64)
    d0 = pid_d * BLOCK_D
    cols = _thread_columns(BLOCK_D, VEC)
    mask_d = cols < D - d0
    mask_cols = mask_d[None, :]
    rows = BLOCK_T - 1 - tl.arange(0, BLOCK_T) if REVERSE else tl.arange(0, BLOCK_T)  # as in _scan_bwd_kernel
    t_start = pid_c * CHUNK_T
    t_end = tl.minimum(t_start + CHUNK_T, T)
    v_first = v_ptr + b * stride_v_b + d0.to(tl.int64) * stride_v_d
    a_first = a_ptr + b * stride_a_b + d0.to(tl.int64) * stride_a_d
    end = 0 if REVERSE else BLOCK_T - 1  # time offset of the row a tile's scan ends at

    # The masked last tile (first in REVERSE) and the whole tiles, pipelined, as in the scan kernels.
    acc_A = tl.full([BLOCK_D], 1.0, dtype=tl.float32)
    acc_V = tl.zeros([BLOCK_D], dtype=tl.float32)
    n_tiles = tl.cdiv(t_end - t_start, BLOCK_T)
    last = t_start + (n_tiles - 1) * BLOCK_T
    if REVERSE:
        acc_A, acc_V = _tile_summary(a_first, v_first, last, t_start, t_end, T, rows, cols, mask_cols, end,
                                     stride_a_t, stride_a_d, stride_v_t, stride_v_d, True, False, EVEN_D)
    for i in tl.range(0, n_tiles - 1, num_stages=STAGES):
        t0 = t_start + (n_tiles - 2 - i if REVERSE else i) * BLOCK_T
        A_tile, V_tile = _tile_summary(a_first, v_first, t0, t_start, t_end, T, rows, cols, mask_cols, end,
                                       stride_a_t, stride_a_d, stride_v_t, stride_v_d, REVERSE, True, EVEN_D)
        acc_A, acc_V = _combine(acc_A, acc_V, A_tile, V_tile)  # the tiles so far, then this one
    if not REVERSE:
        A_tile, V_tile = _tile_summary(a_first, v_first, last, t_start, t_end, T, rows, cols, mask_cols, end,
                                       stride_a_t, stride_a_d, stride_v_t, stride_v_d, False, False, EVEN_D)
        acc_A, acc_V = _combine(acc_A, acc_V, A_tile, V_tile)

    out = b * tl.num_programs(1) * D + pid_c * D + d0 + cols
    tl.store(A_ptr + out, acc_A, mask=mask_d)
    tl.store(V_ptr + out, acc_V, mask=mask_d)


@triton.jit
def _chunk_carry_kernel(
    # pointers
    A_ptr, V_ptr,  # (B, C, D) fp32 chunk summaries
    start_ptr,  # (B, D) state before the first chunk visited (h0, or dh_T in reverse); unused if not HAS_START
    init_ptr,  # (B, C, D) fp32 output: the state entering each chunk
    final_ptr,  # (B, D) fp32 output: the state after the last chunk visited (h_T); unused if not STORE_FINAL
    # sizes
    C, D,
    # strides, in elements
    stride_start_b, stride_start_d,
    # meta-parameters
    BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_START: tl.constexpr, STORE_FINAL: tl.constexpr,
    REVERSE: tl.constexpr,  # visit chunks from last to first (backward)
):
    """A scan over the chunks' pairs, BLOCK_C chunks at a time: every chunk's pair is loaded at once, so the
    walk costs one memory round trip per block of chunks, not one per chunk.

    Row k of a block (visiting index k = 0..C, in order of visit) gets the state entering the k-th chunk
    visited (k = C: the state after the last, h_T). So row k holds the pair of the chunk visited before it
    (k - 1), and the state the block starts from is folded into its first row."""
    pid_d, pid_b = tl.program_id(0), tl.program_id(1)
    b = pid_b.to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    if HAS_START:
        state = tl.load(start_ptr + b * stride_start_b + offs_d * stride_start_d, mask=mask_d, other=0.0)
        state = state.to(tl.float32)
    else:
        state = tl.zeros([BLOCK_D], dtype=tl.float32)
    rows = tl.arange(0, BLOCK_C)
    # `state` is the state entering visiting index k0 - 1; before the first block, row 0 (k = 0) holds the
    # identity, and the start is the state entering chunk 0 visited.
    for k0 in range(0, C + 1, BLOCK_C):
        k = k0 + rows  # (BLOCK_C,) visiting index of each row
        prev = C - k if REVERSE else k - 1  # the chunk visited at k - 1
        has_pair = ((k >= 1) & (k <= C))[:, None] & mask_d[None, :]
        offs = b * C * D + prev[:, None] * D + offs_d[None, :]
        A = tl.load(A_ptr + offs, mask=has_pair, other=1.0)
        V = tl.load(V_ptr + offs, mask=has_pair, other=0.0)
        V = tl.where(rows[:, None] == 0, V + A * state[None, :], V)
        _, S = tl.associative_scan((A, V), axis=0, combine_fn=_combine)  # S[i] = state entering k0 + i
        c = C - 1 - k if REVERSE else k  # the chunk visited at k
        tl.store(init_ptr + b * C * D + c[:, None] * D + offs_d[None, :], S,
                 mask=(k < C)[:, None] & mask_d[None, :])
        state = _row(S, rows, BLOCK_C - 1)
        if STORE_FINAL:
            if C - k0 < BLOCK_C:  # the block holds k = C: the state after the last chunk
                tl.store(final_ptr + b * D + offs_d, _row(S, rows, C - k0), mask=mask_d)


# --------------------------------------------------------------------------------------------------
# Launchers: allocate outputs, choose the path and the tiles, launch.
# --------------------------------------------------------------------------------------------------

# Tiles per element size and pass, measured by `python -m kernels.benchmarks.tune --write-table` on an H100
# (see kernels/benchmarks/NOTES.md, attempts 8 and 15): BLOCK_T rows, VEC adjacent channels per thread, STAGES
# of the load pipeline, num_warps per program; "score" is the geometric mean of that pass's fractions of copy
# bandwidth over tune.py's shapes. A table costs no host time per call and no tuning on first use.
TILES_PATH = Path(__file__).with_name("tiles.json")
# The interpreter runs layouts as plain arrays: small tiles keep CPU tests quick and still span several.
INTERPRETER_TILE = dict(BLOCK_T=16, BLOCK_D=16, VEC=1, STAGES=1, num_warps=1)
MIN_CHUNK_T = 512  # the T-parallel path never makes chunks shorter than this (summary overhead)
# The look-back pass (lookback_scan.py) instead of one chunk per program where those programs fill the SMs this
# unevenly (programs / (SMs · programs per SM, rounded up)) and T is at least this long (NOTES #18: measured
# fills 0.61-0.81 at T >= 2048 gain 0.04-0.16 of copy bandwidth forward + backward; fills of 0.97 lose up to
# 0.05 (a tie in fp32); at T = 256 the look-back loses).
LOOKBACK_MAX_FILL = 0.9
LOOKBACK_MIN_T = 2048
CARRY_TILE = dict(BLOCK_C=32, BLOCK_D=64, num_warps=2)  # the (tiny) carry kernel's tile: BLOCK_C chunks at a time
INTERPRETER_CARRY_TILE = dict(BLOCK_C=4, BLOCK_D=16, num_warps=1)  # tests' few chunks still span several blocks


def _cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints. (triton.cdiv is a constexpr function in newer Triton: ~3 µs per call from Python.)"""
    return -(-a // b)


@functools.lru_cache(maxsize=None)
def _tile_table() -> dict:
    """kernels/tiles.json: {"2" | "4" (bytes per element): {"forward": tile, "backward": tile},
    "measured": where and when}."""
    return json.loads(TILES_PATH.read_text())


def tile_config(dtype: torch.dtype, backward: bool = False) -> dict:
    """Kernel meta-parameters for one dtype and pass (forward, or backward: its own tile, as it moves three
    tensors in and two out): BLOCK_T, BLOCK_D (32 lanes · VEC · num_warps, or half that: see _thread_columns),
    VEC, STAGES, num_warps."""
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"dtype: expected torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    if triton_interpreter_on():
        return dict(INTERPRETER_TILE)
    tile = _tile_table()[str(dtype.itemsize)]["backward" if backward else "forward"]
    return {k: tile[k] for k in ("BLOCK_T", "BLOCK_D", "VEC", "STAGES", "num_warps")}


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 elsewhere (the interpreter)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _chunk_len(B: int, T: int, D: int, block_d: int, num_sms: int) -> int:
    """Rows per chunk: all of T when B · D gives every SM a program, else enough chunks for 4 programs per SM
    (each at least MIN_CHUNK_T rows, rounded up to a multiple of 256)."""
    programs = B * _cdiv(D, block_d)
    if programs >= num_sms:
        return T
    n_chunks = min(_cdiv(4 * num_sms, programs), T // MIN_CHUNK_T)
    if n_chunks <= 1:
        return T
    return _cdiv(_cdiv(T, n_chunks), 256) * 256


def _one_chunk_fill(B: int, D: int, block_d: int, num_sms: int) -> float:
    """How evenly one program per (batch row, channel block) fills the SMs: programs / (SMs · ceil(programs /
    SMs)). At 320 programs on 132 SMs (0.81), 56 SMs hold three programs while 76 hold two, and the kernel
    waits on the busiest."""
    programs = B * _cdiv(D, block_d)
    return programs / (num_sms * _cdiv(programs, num_sms))


def _tile_fits_int32(block_t: int, block_d: int, t: torch.Tensor) -> bool:
    """Whether 32-bit offsets address a block_t × block_d tile of the (B, T, D) tensor t from its first row:
    block_t · stride_t + block_d · stride_d < 2**31."""
    return block_t * abs(t.stride(1)) + block_d * abs(t.stride(2)) < 2**31


def _check_int32_offsets(config: dict, **tensors: torch.Tensor | None) -> None:
    """The kernels address a tile of each (B, T, D) tensor by 32-bit offsets from its first row (see
    `_tile_fits_int32`)."""
    for name, t in tensors.items():
        if t is not None and not _tile_fits_int32(config["BLOCK_T"], config["BLOCK_D"], t):
            raise ValueError(f"{name}: expected strides whose tile ({config['BLOCK_T']} rows, {config['BLOCK_D']} "
                             f"channels) spans < 2**31 elements, got strides {t.stride()}; pass a contiguous tensor")


def _check_chunk_t(chunk_t) -> None:
    if chunk_t is not None and (not isinstance(chunk_t, int) or isinstance(chunk_t, bool) or chunk_t < 1):
        raise ValueError(f"chunk_t: expected None or an int >= 1, got {chunk_t!r}")


def _chunk_states(v, a, start, chunk_t: int, reverse: bool, config: dict, final=None) -> torch.Tensor:
    """The T-parallel path's first two kernels: summaries, then the state entering each chunk.

    v, a: (B, T, D) values (x, or dh^out when reverse) and gates; start: (B, D) h0 (or dh_T when reverse) | None;
    final: (B, D) fp32 | None, written with h_T (forward). -> (B, C, D) fp32, C = cdiv(T, chunk_t)."""
    B, T, D = v.shape
    C = _cdiv(T, chunk_t)
    A_c = torch.empty(B, C, D, dtype=torch.float32, device=v.device)
    V_c = torch.empty(B, C, D, dtype=torch.float32, device=v.device)
    init = torch.empty(B, C, D, dtype=torch.float32, device=v.device)
    _chunk_summary_kernel[(_cdiv(D, config["BLOCK_D"]), C, B)](
        v, a, A_c, V_c, T, D, chunk_t, *v.stride(), *a.stride(), REVERSE=reverse, EVEN_D=D % config["BLOCK_D"] == 0,
        **config,
    )
    start_strides = start.stride() if start is not None else (0, 0)
    carry_tile = INTERPRETER_CARRY_TILE if triton_interpreter_on() else CARRY_TILE
    _chunk_carry_kernel[(_cdiv(D, carry_tile["BLOCK_D"]), B)](
        A_c, V_c, start, init, final, C, D, *start_strides, **carry_tile,
        HAS_START=start is not None, STORE_FINAL=final is not None, REVERSE=reverse,
    )
    return init


def _lookback_instead(chunk_t: int, config: dict, backward: bool, *tensors: torch.Tensor) -> dict | None:
    """`lookback_scan.py`'s tile for this pass where it is the faster path, else None (the chunked scan).

    It is faster where T would be cut into chunks (chunk_t < T: B · D leaves SMs idle) and where one chunk per
    program fills the SMs unevenly (`_one_chunk_fill` < LOOKBACK_MAX_FILL, T >= LOOKBACK_MIN_T); config: the
    chunked pass's tile. None also under torch's deterministic algorithms (the look-back's order of combination
    depends on timing, so its low bits may vary between runs), or where the look-back tile's 32-bit offsets do
    not fit `tensors` (each (B, T, D))."""
    B, T, D = tensors[0].shape
    uneven = (T >= LOOKBACK_MIN_T
              and _one_chunk_fill(B, D, config["BLOCK_D"], _num_sms(tensors[0].device)) < LOOKBACK_MAX_FILL)
    if not (chunk_t < T or uneven) or torch.are_deterministic_algorithms_enabled():
        return None
    from .lookback_scan import lookback_config, tile_rows  # it imports this module

    lookback = lookback_config(tensors[0].dtype, backward)
    if all(_tile_fits_int32(tile_rows(lookback), lookback["BLOCK_D"], t) for t in tensors):
        return lookback
    return None


def associative_scan_fwd(x, a, h0, output_final_state, chunk_t=None, config=None):
    """x, a: (B, T, D); h0: (B, D) | None -> h: (B, T, D) x.dtype, h_T: (B, D) fp32 | None.

    chunk_t: rows of T per program (None: by shape). config: tile meta-parameters (None: `tile_config`).
    With both None, where B · D leaves SMs idle (T would be cut into chunks) or fills them unevenly, the
    forward is instead one pass over tall tiles chained by a decoupled look-back (`lookback_scan.py`, NOTES
    #17-21: on an H100 0.83 of copy bandwidth against 0.51 at (1, 131072, 512) bf16, 0.95 against 0.88 at
    (4, 16384, 5120) fp16), unless torch's deterministic algorithms are on (see `_lookback_instead`)."""
    B, T, D = x.shape
    auto = chunk_t is None and config is None
    config = config or tile_config(x.dtype)
    _check_int32_offsets(config, x=x, a=a)
    _check_chunk_t(chunk_t)
    chunk_t = chunk_t or _chunk_len(B, T, D, config["BLOCK_D"], _num_sms(x.device))
    if auto and (lookback := _lookback_instead(chunk_t, config, False, x, a)):
        from .lookback_scan import lookback_scan_fwd  # it imports this module

        return lookback_scan_fwd(x, a, h0, output_final_state, config=lookback)
    h = torch.empty(B, T, D, dtype=x.dtype, device=x.device)
    h_T = torch.empty(B, D, dtype=torch.float32, device=x.device) if output_final_state else None
    n_chunks = _cdiv(T, chunk_t)
    if n_chunks > 1:
        init = _chunk_states(x, a, h0, chunk_t, reverse=False, config=config, final=h_T)
        init_strides, store_final = init.stride(), False
    else:
        init = h0
        init_strides = (h0.stride(0), 0, h0.stride(1)) if h0 is not None else (0, 0, 0)
        store_final = output_final_state
    _scan_fwd_kernel[(_cdiv(D, config["BLOCK_D"]), n_chunks, B)](
        x, a, init, h, h_T, T, D, chunk_t, *x.stride(), *a.stride(), *init_strides,
        HAS_INIT=init is not None, STORE_FINAL=store_final, EVEN_D=D % config["BLOCK_D"] == 0,
        EVEN_T=T % config["BLOCK_T"] == 0 and chunk_t % config["BLOCK_T"] == 0, **config,
    )
    return h, h_T


def associative_scan_bwd(a, h, h0, dh, dh_T, chunk_t=None, config=None):
    """a, h, dh: (B, T, D); h0, dh_T: (B, D) | None -> dx, da: (B, T, D) a.dtype, dh0: (B, D) h0.dtype | None.

    chunk_t, config: as in `associative_scan_fwd`, and so is the choice of the look-back pass (NOTES #18-21,
    on an H100: 0.83 of copy bandwidth against 0.60 at (1, 131072, 512) bf16, 0.93 against 0.87 at
    (4, 16384, 5120) fp16)."""
    B, T, D = a.shape
    auto = chunk_t is None and config is None
    config = config or tile_config(a.dtype, backward=True)
    if not h.is_contiguous():
        raise ValueError(f"h: expected the forward's contiguous output, got strides {h.stride()}")
    _check_int32_offsets(config, a=a, dh=dh)
    _check_chunk_t(chunk_t)
    chunk_t = chunk_t or _chunk_len(B, T, D, config["BLOCK_D"], _num_sms(a.device))
    if auto and (lookback := _lookback_instead(chunk_t, config, True, a, dh)):
        from .lookback_scan import lookback_scan_bwd  # it imports this module

        return lookback_scan_bwd(a, h, h0, dh, dh_T, config=lookback)
    dx = torch.empty(B, T, D, dtype=a.dtype, device=a.device)
    da = torch.empty(B, T, D, dtype=a.dtype, device=a.device)
    dh0 = torch.empty(B, D, dtype=h0.dtype, device=a.device) if h0 is not None else None
    n_chunks = _cdiv(T, chunk_t)
    if n_chunks > 1:
        init = _chunk_states(dh, a, dh_T, chunk_t, reverse=True, config=config)
        init_strides = init.stride()
    else:
        init = dh_T
        init_strides = (dh_T.stride(0), 0, dh_T.stride(1)) if dh_T is not None else (0, 0, 0)
    h0_strides = h0.stride() if h0 is not None else (0, 0)
    _scan_bwd_kernel[(_cdiv(D, config["BLOCK_D"]), n_chunks, B)](
        a, h, h0, dh, init, dx, da, dh0, T, D, chunk_t, *a.stride(), *h0_strides, *dh.stride(), *init_strides,
        HAS_H0=h0 is not None, HAS_INIT=init is not None, EVEN_D=D % config["BLOCK_D"] == 0, **config,
    )
    return dx, da, dh0


# --------------------------------------------------------------------------------------------------
# Autograd, as a custom op: torch.compile sees one opaque node per pass, so the scan causes no graph break.
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("lrnn::associative_scan_fwd", mutates_args=())
def _scan_fwd_op(
    x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None, chunk_t: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> h (B, T, D) x.dtype, h_T (B, D) fp32 (always written: B·D floats cost nothing)."""
    return associative_scan_fwd(x, a, h0, True, chunk_t=chunk_t or None)


@_scan_fwd_op.register_fake
def _(x, a, h0, chunk_t):
    B, T, D = x.shape
    return x.new_empty(B, T, D), x.new_empty(B, D, dtype=torch.float32)


@torch.library.custom_op("lrnn::associative_scan_bwd", mutates_args=())
def _scan_bwd_op(
    a: torch.Tensor, h: torch.Tensor, h0: torch.Tensor | None, dh: torch.Tensor, dh_T: torch.Tensor | None,
    chunk_t: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> dx, da (B, T, D) a.dtype, dh0 (B, D) h0.dtype (empty (0,) when h0 is None)."""
    dx, da, dh0 = associative_scan_bwd(a, h, h0, dh, dh_T, chunk_t=chunk_t or None)
    return dx, da, dh0 if dh0 is not None else a.new_empty(0)


@_scan_bwd_op.register_fake
def _(a, h, h0, dh, dh_T, chunk_t):
    return torch.empty_like(a), torch.empty_like(a), torch.empty_like(h0) if h0 is not None else a.new_empty(0)


def _setup_context(ctx, inputs, output):
    """Saves a (B, T, D), h (B, T, D) and h0 (B, D) | None: the backward needs no second forward."""
    x, a, h0, chunk_t = inputs
    ctx.save_for_backward(a, output[0], h0)
    ctx.chunk_t = chunk_t


def _backward(ctx, dh, dh_T):
    """dh (B, T, D), dh_T (B, D) | None -> gradients of (x, a, h0, chunk_t)."""
    a, h, h0 = ctx.saved_tensors
    dx, da, dh0 = _scan_bwd_op(a, h, h0, dh, dh_T, ctx.chunk_t)
    return dx, da, dh0 if h0 is not None else None, None


_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def linear_scan_associative(x, a, h0=None, output_final_state=False, *, chunk_t=None):
    """`kernels.linear_scan(impl="triton")` without the input checks.

    x, a: (B, T, D); h0: (B, D) | None -> h: (B, T, D) x.dtype, h_T: (B, D) fp32 | None.
    chunk_t: rows of T per program (None: chosen by shape, and where T would be chunked both passes are
    `lookback_scan.py`'s, whose low bits may vary between runs: see `associative_scan_fwd`; < T forces the
    T-parallel path in both passes).

    Under torch.compile the scan is the custom op above. In eager mode the same launchers run through a plain
    autograd.Function, which skips the custom op's Python dispatch: on an H100 host (2026-11-25, with the
    autotuner of the time) the custom op's forward took 138 µs of host time against 71 µs for the launcher
    alone, and its forward + backward 774 µs, against 322 µs for the sequential scan through the plain
    autograd.Function (`kernels/benchmarks/host_time.py`, results/host_time_h100.log): more than the kernels
    take at small shapes.
    """
    if torch.compiler.is_compiling():
        h, h_T = _scan_fwd_op(x, a, h0, chunk_t or 0)
        return h, h_T if output_final_state else None
    return apply_scan(x, a, h0, output_final_state, associative_scan_fwd, associative_scan_bwd, chunk_t=chunk_t)
