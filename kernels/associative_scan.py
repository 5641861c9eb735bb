"""Chunked associative scan in Triton: h_t = a_t ⊙ h_{t-1} + x_t over (B, T, D), with a fused backward.

Each program owns BLOCK_D channels of one batch row and a range of T (a chunk). It walks its chunk in
BLOCK_T-row tiles: `tl.associative_scan` down each tile with the combine
(a_l, h_l) ∘ (a_r, h_r) = (a_l a_r, a_r h_l + h_r), then h = A ⊙ carry + H, carrying a float32 state from
tile to tile. D is the contiguous axis of the (B, T, D) layout the model produces, so loads are coalesced
and nothing is transposed.

Two paths (dispatch.py chooses between them and lookback_scan.py's):
- one chunk: every program scans the whole of T. One kernel, 3·N·s bytes.
- T-parallel ("chunked"): T is cut into chunks across programs.
  1. `_chunk_summary_kernel` reduces each chunk to its pair (A_c, H_c) = (prod a, scan from zero);
  2. `_chunk_carry_kernel` scans the pairs across chunks into each chunk's initial state;
  3. `_scan_fwd_kernel` rescans every chunk from its initial state.
The backward runs the same machinery from the end of T (its tiles time-flipped; the summary kernel's
`REVERSE`), seeded by dh_T: dh_t = dh_t^out + a_{t+1} dh_{t+1}; one pass writes dx = dh,
da_t = dh_t h_{t-1} and dh0 = a_1 dh_1.

Gated (GATED, one chunk only): the inputs are the gate's pre-activation f and the value v, and the gate is computed
in registers as it is loaded (`_gates`): a_t = lb + (1 - lb) σ(f_t + b), x_t = (1 - lb) σ(-(f_t + b)) v_t, and
(a_t, x_t) = (0, v_t) where a document starts. The backward recomputes the gate from f and writes dv and df in
place of dx and da (gated_scan.py has the math).
Formulas count steps t = 1..T with h_0 the initial state; the code counts rows 0..T-1 (row t is step t+1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._env import triton_interpreter_on
from .dispatch import CARRY_TILE, INTERPRETER_CARRY_TILE, cdiv, chunk_len, num_sms, tile_config, tile_fits_int32
from .gate import Gate


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
def _sigmoids(z):
    """σ(z), σ(-z) in float32 from one exp and one fast reciprocal (to 2 ulp: the gates are rounded to bf16-level
    inputs anyway), without cancellation where either is near 0 (z = +inf: 1, 0)."""
    e = tl.exp(-tl.abs(z))  # in (0, 1]
    big = tl.fdiv(tl.full(e.shape, 1.0, tl.float32), 1.0 + e)  # div.full: a fraction of an IEEE division's cost
    small = e * big
    return tl.where(z >= 0, big, small), tl.where(z >= 0, small, big)


@triton.jit
def _gates(f, v, bias, lb, one_minus_lb, doc):
    """The gated recurrence's pair from its inputs as loaded: f (pre-activation), v: (..., BLOCK_D); bias, lb,
    one_minus_lb: broadcastable fp32; doc: broadcastable bool, True where a document starts
    -> (a, x) fp32: a = lb + (1 - lb) σ(f + b), x = (1 - lb) σ(-(f + b)) v; (0, v) where doc.
    A padding row loaded as f = +inf, v = 0 is the identity (1, 0)."""
    s, s_neg = _sigmoids(f.to(tl.float32) + bias)
    v = v.to(tl.float32)
    a = tl.where(doc, 0.0, lb + one_minus_lb * s)
    x = tl.where(doc, v, one_minus_lb * s_neg * v)
    return a, x


@triton.jit
def _gate_grads(f, v, g, h_prev, bias, one_minus_lb, doc):
    """The gated recurrence's input gradients from dh = g (the reverse scan's state) -> (dv, df) fp32:
    dv = (1 - lb) σ(-z) g and df = (1 - lb) σ(z) σ(-z) g (h_{t-1} - v), z = f + b; (g, 0) where doc."""
    s, s_neg = _sigmoids(f.to(tl.float32) + bias)
    dv = tl.where(doc, g, one_minus_lb * s_neg * g)
    df = tl.where(doc, 0.0, one_minus_lb * s * s_neg * g * (h_prev - v.to(tl.float32)))
    return dv, df


@triton.jit
def _gate_params(bias_ptr, lb_ptr, stride_lb, d0, cols, mask_d, GATED: tl.constexpr):
    """This program's channels' forget bias, lower bound and 1 - lower bound, each (BLOCK_D,) fp32 (zeros, unused,
    unless GATED)."""
    if GATED:
        bias = tl.load(bias_ptr + d0 + cols, mask=mask_d, other=0.0).to(tl.float32)
        lb = tl.load(lb_ptr + (d0 + cols) * stride_lb, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros(cols.shape, dtype=tl.float32)
        lb = tl.zeros(cols.shape, dtype=tl.float32)
    return bias, lb, 1.0 - lb


@triton.jit
def _tile_offsets(rows, cols, stride_t: tl.constexpr, stride_d: tl.constexpr):
    """(BLOCK_T, BLOCK_D) int32 offsets within a tile. The strides are compile-time constants, so each row's
    part folds into the load's immediate offset: one address register per thread, not one per row."""
    return rows[:, None] * stride_t + cols[None, :] * stride_d


@triton.jit
def _load_pair_tile(a_first, v_first, t0, t_start, t_end, T, rows, cols, mask_cols,
                    stride_a_t: tl.constexpr, stride_a_d: tl.constexpr,
                    stride_v_t: tl.constexpr, stride_v_d: tl.constexpr,
                    REVERSE: tl.constexpr, WHOLE: tl.constexpr, EVEN_D: tl.constexpr,
                    gate_b, gate_lb, gate_olb, doc_first, stride_doc_t, GATED: tl.constexpr, HAS_DOC: tl.constexpr):
    """Rows t = t0 + rows of the scan's pairs: (a_t, v_t), or (a_{t+1}, v_t) in REVERSE; the identity (1, 0)
    outside [t_start, t_end) and for a_T. *_first point at row 0 of the program's channels; t0 is an int32
    scalar; mask_cols (1, BLOCK_D) masks channels past D. WHOLE: the caller knows every row is inside the
    chunk (and, in REVERSE, that t + 1 < T), so only channels are masked; EVEN_D: none are past D.
    GATED: a_first points at the gate's pre-activation f, and the pair's gate is computed from it (`_gates`, with
    gate_b, gate_lb, gate_olb (1, BLOCK_D) and, if HAS_DOC, the document starts at doc_first + t · stride_doc_t);
    the pair's value is then x = (1 - a) v only in the forward (REVERSE: v is dh, taken as it is)."""
    v_tile = v_first + t0.to(tl.int64) * stride_v_t + _tile_offsets(rows, cols, stride_v_t, stride_v_d)
    a_t0 = t0 + 1 if REVERSE else t0
    a_tile = a_first + a_t0.to(tl.int64) * stride_a_t + _tile_offsets(rows, cols, stride_a_t, stride_a_d)
    a_other = float("inf") if GATED else 1.0  # the identity: a gate of σ(+inf) = 1
    if WHOLE:
        valid = rows >= 0
    else:
        in_chunk = (rows >= t_start - t0) & (rows < t_end - t0)
        a_end = tl.minimum(t_end, T - 1) if REVERSE else t_end  # rows t < a_end read a real gate
        valid = in_chunk & (rows < a_end - t0)
    if WHOLE and EVEN_D:
        v = tl.load(v_tile)
        a = tl.load(a_tile)
    elif WHOLE:
        v = tl.load(v_tile, mask=mask_cols, other=0.0)
        a = tl.load(a_tile, mask=mask_cols, other=a_other)
    else:
        v = tl.load(v_tile, mask=in_chunk[:, None] & mask_cols, other=0.0)
        a = tl.load(a_tile, mask=valid[:, None] & mask_cols, other=a_other)
    if GATED:  # one return: Triton wants every return statement of a function to have the same types
        if HAS_DOC:
            doc = tl.load(doc_first + (a_t0 + rows).to(tl.int64) * stride_doc_t, mask=valid, other=0) != 0
        else:
            doc = rows < 0
        a, x = _gates(a, v, gate_b, gate_lb, gate_olb, doc[:, None])
        if not REVERSE:
            v = x
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
    x_ptr, a_ptr,  # (B, T, D) inputs, any strides (GATED: v and the gate's pre-activation f)
    init_ptr,  # (B, C, D) state entering each chunk (C = 1: h0), fp32 or x's dtype; unused if not HAS_INIT
    h_ptr,  # (B, T, D) output, contiguous
    h_T_ptr,  # (B, D) fp32 final state, contiguous; unused if not STORE_FINAL
    bias_ptr, lb_ptr,  # (D,) forget bias, (D,) or (1,) lower bound; unused if not GATED
    doc_ptr,  # (B, T) bool, True where a document starts; unused if not HAS_DOC
    # sizes
    T, D: tl.constexpr, CHUNK_T,
    # strides, in elements (T and D strides are compile-time: see _tile_offsets)
    stride_x_b, stride_x_t: tl.constexpr, stride_x_d: tl.constexpr,
    stride_a_b, stride_a_t: tl.constexpr, stride_a_d: tl.constexpr,
    stride_init_b, stride_init_c, stride_init_d,
    stride_lb, stride_doc_b, stride_doc_t,
    # meta-parameters
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
    EVEN_D: tl.constexpr,  # D % BLOCK_D == 0: no channel masks
    EVEN_T: tl.constexpr,  # T and CHUNK_T are multiples of BLOCK_T: every tile is whole
    HAS_INIT: tl.constexpr,  # h0 given (one chunk) or the T-parallel path's chunk states
    STORE_FINAL: tl.constexpr,  # write h_T (one-chunk path; on the T-parallel path the carry kernel does)
    GATED: tl.constexpr, HAS_DOC: tl.constexpr,  # the gated recurrence (one chunk only), with document starts
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
    doc_first = doc_ptr + b * stride_doc_b
    gate_b, gate_lb, gate_olb = _gate_params(bias_ptr, lb_ptr, stride_lb, d0, cols, mask_d, GATED)
    gate_b, gate_lb, gate_olb = gate_b[None, :], gate_lb[None, :], gate_olb[None, :]

    if HAS_INIT:
        init = init_ptr + b * stride_init_b + pid_c.to(tl.int64) * stride_init_c + (d0 + cols) * stride_init_d
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
                               stride_a_t, stride_a_d, stride_x_t, stride_x_d, False, True, EVEN_D,
                               gate_b, gate_lb, gate_olb, doc_first, stride_doc_t, GATED, HAS_DOC)
        h, carry = _scan_tile(a, x, carry, rows, 0, BLOCK_T - 1)
        _store_tile(h_first, h, t0, t_end, rows, cols, mask_cols, D, True, EVEN_D)
    if not EVEN_T:
        t0 = t_start + (n_tiles - 1) * BLOCK_T
        a, x = _load_pair_tile(a_first, x_first, t0, t_start, t_end, T, rows, cols, mask_cols,
                               stride_a_t, stride_a_d, stride_x_t, stride_x_d, False, False, EVEN_D,
                               gate_b, gate_lb, gate_olb, doc_first, stride_doc_t, GATED, HAS_DOC)
        h, carry = _scan_tile(a, x, carry, rows, 0, BLOCK_T - 1)
        _store_tile(h_first, h, t0, t_end, rows, cols, mask_cols, D, False, EVEN_D)

    if STORE_FINAL:
        if pid_c == tl.num_programs(1) - 1:
            tl.store(h_T_ptr + b * D + d0 + cols, carry, mask=mask_d)


@triton.jit
def _bwd_tile(a_first, dh_first, h_first, dx_first, da_first, h0, carry, t0, t_start, t_end, T, rows, cols,
              mask_cols, D: tl.constexpr, stride_a_t: tl.constexpr, stride_a_d: tl.constexpr,
              stride_dh_t: tl.constexpr, stride_dh_d: tl.constexpr, BLOCK_T: tl.constexpr, HAS_H0: tl.constexpr,
              WHOLE: tl.constexpr, EVEN_D: tl.constexpr,
              v_first, stride_v_t: tl.constexpr, stride_v_d: tl.constexpr, gate_b, gate_lb, gate_olb, doc_first,
              stride_doc_t, GATED: tl.constexpr, HAS_DOC: tl.constexpr):
    """One tile of the backward, rows t = t0 + rows: dh = reverse scan of (a_{t+1}, dh_t^out) from `carry`
    (dh at the tile's end); stores dx = dh and da = dh h_{t-1} (GATED: dv and df, from f and v at t, into the
    same outputs) -> dh at the tile's first row."""
    a_next, dh_out = _load_pair_tile(a_first, dh_first, t0, t_start, t_end, T, rows, cols, mask_cols,
                                     stride_a_t, stride_a_d, stride_dh_t, stride_dh_d, True, WHOLE, EVEN_D,
                                     gate_b, gate_lb, gate_olb, doc_first, stride_doc_t, GATED, HAS_DOC)
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
    if GATED:  # the gate at t itself, and v_t: dv and df
        in_tile = (rows < t_end - t0) & (rows >= t_start - t0)
        offs_f = _tile_offsets(rows, cols, stride_a_t, stride_a_d)
        offs_v = _tile_offsets(rows, cols, stride_v_t, stride_v_d)
        if WHOLE and EVEN_D:
            f = tl.load(a_first + t0.to(tl.int64) * stride_a_t + offs_f)
            v = tl.load(v_first + t0.to(tl.int64) * stride_v_t + offs_v)
        else:
            mask = in_tile[:, None] & mask_cols
            f = tl.load(a_first + t0.to(tl.int64) * stride_a_t + offs_f, mask=mask, other=0.0)
            v = tl.load(v_first + t0.to(tl.int64) * stride_v_t + offs_v, mask=mask, other=0.0)
        if HAS_DOC:
            doc = tl.load(doc_first + (t0 + rows).to(tl.int64) * stride_doc_t, mask=in_tile, other=0) != 0
        else:
            doc = rows < 0
        dv, df = _gate_grads(f, v, dh, h_prev, gate_b, gate_olb, doc[:, None])
        _store_tile(dx_first, dv, t0, t_end, rows, cols, mask_cols, D, WHOLE, EVEN_D)
        _store_tile(da_first, df, t0, t_end, rows, cols, mask_cols, D, WHOLE, EVEN_D)
    else:
        _store_tile(dx_first, dh, t0, t_end, rows, cols, mask_cols, D, WHOLE, EVEN_D)
        _store_tile(da_first, dh * h_prev, t0, t_end, rows, cols, mask_cols, D, WHOLE, EVEN_D)
    return carry


@triton.jit
def _scan_bwd_kernel(
    # pointers
    a_ptr,  # (B, T, D) gates, any strides (GATED: the gate's pre-activation f)
    h_ptr,  # (B, T, D) forward states, contiguous
    h0_ptr,  # (B, D) initial state, any strides; unused if not HAS_H0
    dh_ptr,  # (B, T, D) gradient of h, any strides
    init_ptr,  # (B, C, D) fp32 gradient entering each chunk from its end (C = 1: dh_T); unused if not HAS_INIT
    dx_ptr, da_ptr,  # (B, T, D) outputs, contiguous (GATED: dv and df)
    dh0_ptr,  # (B, D) output, contiguous; unused if not HAS_H0
    x_ptr,  # (B, T, D) the forward's v, any strides; unused if not GATED
    bias_ptr, lb_ptr, doc_ptr,  # as in _scan_fwd_kernel; unused if not GATED
    # sizes
    T, D: tl.constexpr, CHUNK_T,
    # strides, in elements (T and D strides are compile-time: see _tile_offsets)
    stride_a_b, stride_a_t: tl.constexpr, stride_a_d: tl.constexpr,
    stride_h0_b, stride_h0_d,
    stride_dh_b, stride_dh_t: tl.constexpr, stride_dh_d: tl.constexpr,
    stride_init_b, stride_init_c, stride_init_d,
    stride_x_b, stride_x_t: tl.constexpr, stride_x_d: tl.constexpr,
    stride_lb, stride_doc_b, stride_doc_t,
    # meta-parameters
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
    EVEN_D: tl.constexpr,  # D % BLOCK_D == 0: no channel masks
    HAS_H0: tl.constexpr, HAS_INIT: tl.constexpr,
    GATED: tl.constexpr, HAS_DOC: tl.constexpr,
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
    v_first = x_ptr + b * stride_x_b + d0.to(tl.int64) * stride_x_d
    doc_first = doc_ptr + b * stride_doc_b
    gate_b, gate_lb, gate_olb = _gate_params(bias_ptr, lb_ptr, stride_lb, d0, cols, mask_d, GATED)
    gate_b, gate_lb, gate_olb = gate_b[None, :], gate_lb[None, :], gate_olb[None, :]
    if HAS_H0:
        h0_first = h0_ptr + b * stride_h0_b + d0.to(tl.int64) * stride_h0_d
        h0 = tl.load(h0_first + cols * stride_h0_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        h0 = tl.zeros([BLOCK_D], dtype=tl.float32)

    if HAS_INIT:
        init = init_ptr + b * stride_init_b + pid_c.to(tl.int64) * stride_init_c + (d0 + cols) * stride_init_d
        carry = tl.load(init, mask=mask_d, other=0.0).to(tl.float32)  # dh at t_end
    else:
        carry = tl.zeros([BLOCK_D], dtype=tl.float32)

    # The chunk's last tile first (masked: it may be partial, and a_T past the end is 1 so that dh_T seeds
    # row T-1), then the whole tiles down to the second, pipelined as in the forward, then the first tile
    # (masked: it may hold t = 0, where h_{t-1} is h0).
    n_tiles = tl.cdiv(t_end - t_start, BLOCK_T)
    carry = _bwd_tile(a_first, dh_first, h_first, dx_first, da_first, h0, carry, t_start + (n_tiles - 1) * BLOCK_T,
                      t_start, t_end, T, rows, cols, mask_cols, D, stride_a_t, stride_a_d, stride_dh_t, stride_dh_d,
                      BLOCK_T, HAS_H0, False, EVEN_D, v_first, stride_x_t, stride_x_d, gate_b, gate_lb, gate_olb,
                      doc_first, stride_doc_t, GATED, HAS_DOC)
    for i in tl.range(0, n_tiles - 2, num_stages=STAGES):
        t0 = t_start + (n_tiles - 2 - i) * BLOCK_T
        carry = _bwd_tile(a_first, dh_first, h_first, dx_first, da_first, h0, carry, t0, t_start, t_end, T, rows,
                          cols, mask_cols, D, stride_a_t, stride_a_d, stride_dh_t, stride_dh_d, BLOCK_T, HAS_H0, True,
                          EVEN_D, v_first, stride_x_t, stride_x_d, gate_b, gate_lb, gate_olb, doc_first, stride_doc_t,
                          GATED, HAS_DOC)
    if n_tiles > 1:
        carry = _bwd_tile(a_first, dh_first, h_first, dx_first, da_first, h0, carry, t_start, t_start, t_end, T,
                          rows, cols, mask_cols, D, stride_a_t, stride_a_d, stride_dh_t, stride_dh_d, BLOCK_T, HAS_H0,
                          False, EVEN_D, v_first, stride_x_t, stride_x_d, gate_b, gate_lb, gate_olb, doc_first,
                          stride_doc_t, GATED, HAS_DOC)

    if HAS_H0:
        # dh0 = a_1 dh_1; only the first chunk's program holds dh_1
        if pid_c == 0:
            a_1 = tl.load(a_first + cols * stride_a_d, mask=mask_d, other=0.0)
            if GATED:
                if HAS_DOC:
                    doc_1 = tl.load(doc_first) != 0
                else:
                    doc_1 = False
                a_1 = _gates(a_1, a_1, gate_b.reshape(BLOCK_D), gate_lb.reshape(BLOCK_D),
                             gate_olb.reshape(BLOCK_D), doc_1)[0]
            tl.store(dh0_ptr + b * D + d0 + cols, (a_1.to(tl.float32) * carry).to(dh0_ptr.dtype.element_ty),
                     mask=mask_d)


@triton.jit
def _tile_summary(a_first, v_first, t0, t_start, t_end, T, rows, cols, mask_cols, end,
                  stride_a_t: tl.constexpr, stride_a_d: tl.constexpr, stride_v_t: tl.constexpr,
                  stride_v_d: tl.constexpr, REVERSE: tl.constexpr, WHOLE: tl.constexpr, EVEN_D: tl.constexpr):
    """The pair (A, V) (BLOCK_D,) fp32 that one tile of pairs (rows t0 + rows, loaded as `_load_pair_tile`)
    amounts to: its scan's row `end`."""
    a, v = _load_pair_tile(a_first, v_first, t0, t_start, t_end, T, rows, cols, mask_cols,
                           stride_a_t, stride_a_d, stride_v_t, stride_v_d, REVERSE, WHOLE, EVEN_D,
                           0.0, 0.0, 0.0, a_first, 0, False, False)
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

    out = b * tl.num_programs(1) * D + pid_c.to(tl.int64) * D + d0 + cols  # C · D may pass 2**31 (small chunks)
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
        offs = b * C * D + prev[:, None].to(tl.int64) * D + offs_d[None, :]
        A = tl.load(A_ptr + offs, mask=has_pair, other=1.0)
        V = tl.load(V_ptr + offs, mask=has_pair, other=0.0)
        V = tl.where(rows[:, None] == 0, V + A * state[None, :], V)
        _, S = tl.associative_scan((A, V), axis=0, combine_fn=_combine)  # S[i] = state entering k0 + i
        c = C - 1 - k if REVERSE else k  # the chunk visited at k
        tl.store(init_ptr + b * C * D + c[:, None].to(tl.int64) * D + offs_d[None, :], S,
                 mask=(k < C)[:, None] & mask_d[None, :])
        state = _row(S, rows, BLOCK_C - 1)
        if STORE_FINAL:
            if C - k0 < BLOCK_C:  # the block holds k = C: the state after the last chunk
                tl.store(final_ptr + b * D + offs_d, _row(S, rows, C - k0), mask=mask_d)


# --------------------------------------------------------------------------------------------------
# Launchers: allocate outputs, take the path's tile and chunk length (dispatch.py), launch.
# --------------------------------------------------------------------------------------------------


def _gate_args(gate: Gate | None, like: torch.Tensor) -> tuple[list, dict]:
    """Kernel arguments of a gate: the pointers, their strides, and the GATED / HAS_DOC flags."""
    if gate is None:
        return [like, like, like], dict(strides=[0, 0, 0], GATED=False, HAS_DOC=False)
    doc = gate.doc_start
    strides = [gate.lower_bound.stride(0) if gate.lower_bound.numel() > 1 else 0,
               *(doc.stride() if doc is not None else (0, 0))]
    return ([gate.bias, gate.lower_bound, doc if doc is not None else like],
            dict(strides=strides, GATED=True, HAS_DOC=doc is not None))


def _check_int32_offsets(block_t: int, block_d: int, **tensors: torch.Tensor | None) -> None:
    """The kernels address a tile of each (B, T, D) tensor by 32-bit offsets from its first row
    (`dispatch.tile_fits_int32`)."""
    for name, t in tensors.items():
        if t is not None and not tile_fits_int32(block_t, block_d, t.stride(1), t.stride(2)):
            raise ValueError(f"{name}: expected strides whose tile ({block_t} rows, {block_d} channels) spans "
                             f"< 2**31 elements, got strides {t.stride()}; pass a contiguous tensor")


def fit_state(t: torch.Tensor | None) -> torch.Tensor | None:
    """A (B, D) state operand (h0, dh_T) as the kernels address it: channel d at d · stride_d in 32 bits (the batch
    row's offset is 64-bit). A view whose channels span 2**31 elements or more (a column of a (B, D, T) tensor with
    D · T >= 2**31) is copied contiguous: B · D elements, nothing beside the scan."""
    if t is None or (t.shape[1] - 1) * abs(t.stride(1)) < 2**31:
        return t
    return t.contiguous()


def _check_chunk_t(chunk_t) -> None:
    if chunk_t is not None and (not isinstance(chunk_t, int) or isinstance(chunk_t, bool) or chunk_t < 1):
        raise ValueError(f"chunk_t: expected None or an int >= 1, got {chunk_t!r}")


def _chunk_states(v, a, start, chunk_t: int, reverse: bool, config: dict, final=None) -> torch.Tensor:
    """The T-parallel path's first two kernels: summaries, then the state entering each chunk.

    v, a: (B, T, D) values (x, or dh^out when reverse) and gates; start: (B, D) h0 (or dh_T when reverse) | None;
    final: (B, D) fp32 | None, written with h_T (forward). -> (B, C, D) fp32, C = cdiv(T, chunk_t)."""
    B, T, D = v.shape
    C = cdiv(T, chunk_t)
    A_c = torch.empty(B, C, D, dtype=torch.float32, device=v.device)
    V_c = torch.empty(B, C, D, dtype=torch.float32, device=v.device)
    init = torch.empty(B, C, D, dtype=torch.float32, device=v.device)
    _chunk_summary_kernel[(cdiv(D, config["BLOCK_D"]), C, B)](
        v, a, A_c, V_c, T, D, chunk_t, *v.stride(), *a.stride(), REVERSE=reverse, EVEN_D=D % config["BLOCK_D"] == 0,
        **config,
    )
    start_strides = start.stride() if start is not None else (0, 0)
    carry_tile = INTERPRETER_CARRY_TILE if triton_interpreter_on() else CARRY_TILE
    _chunk_carry_kernel[(cdiv(D, carry_tile["BLOCK_D"]), B)](
        A_c, V_c, start, init, final, C, D, *start_strides, **carry_tile,
        HAS_START=start is not None, STORE_FINAL=final is not None, REVERSE=reverse,
    )
    return init


def associative_scan_fwd(x, a, h0, output_final_state, chunk_t=None, config=None, gate: Gate | None = None):
    """x, a: (B, T, D); h0: (B, D) | None -> h: (B, T, D) x.dtype, h_T: (B, D) fp32 | None.

    chunk_t: rows of T per program (None: one chunk where B · D fills the GPU, else chunks: `dispatch.chunk_len`);
    config: tile meta-parameters (None: `dispatch.tile_config`). gate: the gated recurrence, x and a then being v and
    f (one chunk only)."""
    B, T, D = x.shape
    config = config or tile_config(x.dtype, device=x.device)
    _check_int32_offsets(config["BLOCK_T"], config["BLOCK_D"], x=x, a=a)
    h0 = fit_state(h0)
    _check_chunk_t(chunk_t)
    chunk_t = chunk_t or chunk_len(B, T, D, config["BLOCK_D"], num_sms(x.device))
    n_chunks = cdiv(T, chunk_t)
    if gate is not None and n_chunks > 1:
        raise ValueError(f"chunk_t: expected one chunk (>= T = {T}) for the gated recurrence, got {chunk_t}")
    h = torch.empty(B, T, D, dtype=x.dtype, device=x.device)
    h_T = torch.empty(B, D, dtype=torch.float32, device=x.device) if output_final_state else None
    if n_chunks > 1:
        init = _chunk_states(x, a, h0, chunk_t, reverse=False, config=config, final=h_T)
        init_strides, store_final = init.stride(), False
    else:
        init = h0
        init_strides = (h0.stride(0), 0, h0.stride(1)) if h0 is not None else (0, 0, 0)
        store_final = output_final_state
    gate_ptrs, g = _gate_args(gate, x)
    _scan_fwd_kernel[(cdiv(D, config["BLOCK_D"]), n_chunks, B)](
        x, a, init, h, h_T, *gate_ptrs, T, D, chunk_t, *x.stride(), *a.stride(), *init_strides, *g["strides"],
        HAS_INIT=init is not None, STORE_FINAL=store_final, EVEN_D=D % config["BLOCK_D"] == 0,
        EVEN_T=T % config["BLOCK_T"] == 0 and chunk_t % config["BLOCK_T"] == 0, GATED=g["GATED"],
        HAS_DOC=g["HAS_DOC"], **config,
    )
    return h, h_T


def associative_scan_bwd(a, h, h0, dh, dh_T, chunk_t=None, config=None, gate: Gate | None = None, v=None):
    """a, h, dh: (B, T, D); h0, dh_T: (B, D) | None -> dx, da: (B, T, D) a.dtype, dh0: (B, D) h0.dtype | None.

    chunk_t, config: as in `associative_scan_fwd`. gate: the gated recurrence, a being f and v the forward's v; the
    outputs are then dv (v's dtype) and df (f's dtype)."""
    B, T, D = a.shape
    config = config or tile_config(a.dtype, backward=True, device=a.device)
    if not h.is_contiguous():
        raise ValueError(f"h: expected the forward's contiguous output, got strides {h.stride()}")
    _check_int32_offsets(config["BLOCK_T"], config["BLOCK_D"], a=a, dh=dh, v=v)
    h0, dh_T = fit_state(h0), fit_state(dh_T)
    _check_chunk_t(chunk_t)
    chunk_t = chunk_t or chunk_len(B, T, D, config["BLOCK_D"], num_sms(a.device))
    n_chunks = cdiv(T, chunk_t)
    if gate is not None and n_chunks > 1:
        raise ValueError(f"chunk_t: expected one chunk (>= T = {T}) for the gated recurrence, got {chunk_t}")
    dx = torch.empty(B, T, D, dtype=(v if gate is not None else a).dtype, device=a.device)
    da = torch.empty(B, T, D, dtype=a.dtype, device=a.device)
    dh0 = torch.empty(B, D, dtype=h0.dtype, device=a.device) if h0 is not None else None
    if n_chunks > 1:
        init = _chunk_states(dh, a, dh_T, chunk_t, reverse=True, config=config)
        init_strides = init.stride()
    else:
        init = dh_T
        init_strides = (dh_T.stride(0), 0, dh_T.stride(1)) if dh_T is not None else (0, 0, 0)
    h0_strides = h0.stride() if h0 is not None else (0, 0)
    v = v if v is not None else a
    gate_ptrs, g = _gate_args(gate, a)
    _scan_bwd_kernel[(cdiv(D, config["BLOCK_D"]), n_chunks, B)](
        a, h, h0, dh, init, dx, da, dh0, v, *gate_ptrs, T, D, chunk_t, *a.stride(), *h0_strides, *dh.stride(),
        *init_strides, *v.stride(), *g["strides"],
        HAS_H0=h0 is not None, HAS_INIT=init is not None, EVEN_D=D % config["BLOCK_D"] == 0, GATED=g["GATED"],
        HAS_DOC=g["HAS_DOC"], **config,
    )
    return dx, da, dh0
