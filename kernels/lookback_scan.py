"""Single-pass scan with decoupled look-back (Merrill & Garland 2016, "Single-pass Parallel Prefix Scan with
Decoupled Look-back"): h_t = a_t ⊙ h_{t-1} + x_t over (B, T, D), and its fused backward.

dispatch.py runs both passes of the Triton scan here where one chunk per program would not serve: where B · D
leaves SMs idle (the T-parallel path would re-read its inputs: 5/3 of the minimum bytes), and where the one-chunk
programs fill the SMs unevenly at long T. The one-chunk path gives each program a whole column (one batch row,
BLOCK_D channels, all of T); here every tile of T is a program, and tiles are chained through global memory:

1. load the tile and combine its rows from a zero state into its aggregate (A_k, V_k): the gate product and
   the state at its last row (each warp folds its own sub-tile, then the sub-tiles' totals are scanned across
   warps); publish it at once. Across step 2 the program keeps the tile's inputs as loaded, not a per-row scan:
   at 2 bytes per element that halves the registers the wait holds, and three programs fit an SM;
2. look back: the state entering tile k is the nearest predecessor's published *inclusive* state,
   combined with the aggregates of the tiles between (each warp reads WINDOW predecessors at a time for
   itself; spin while one is missing);
3. publish tile k's inclusive state A_k carry + V_k, write h: each sub-tile's rows scanned from the state
   entering it (backward: dh, and from it dx and da).

Bytes: the minimum (3·N·s forward, 5·N·s backward) plus 12 bytes per channel per tile of workspace
(3 fp32 planes: aggregate A, V and inclusive state), filled with SENTINEL before the launch. A value and
its "published" flag are one 32-bit word: a reader sees SENTINEL or the whole value (single-copy
atomicity), so no fences, flags or barriers are needed; published NaNs are made canonical, and no
arithmetic produces the SENTINEL NaN, so a NaN input cannot hang a reader.

Program ids run in visiting order, time-major (pid = k · B · n_d + b · n_d + i_d): every predecessor of a
program has a smaller id. GPUs dispatch programs in id order in practice, though CUDA does not promise it
(CUB's single-pass scan makes the same assumption): then a predecessor is running or done, and a look-back
never waits for a program that cannot start. Its low bits can vary between runs: the order in which a tile
combines its predecessors depends on timing (dispatch.py runs the chunked path under deterministic algorithms).

The backward visits tiles from the end of T (time-flipped tiles, as in `_scan_bwd_kernel`), seeded by
dh_T: dh_t = dh_t^out + a_{t+1} dh_{t+1}; it writes dx = dh, da_t = dh_t h_{t-1} and dh0 = a_1 dh_1.
Gated (GATED), as in associative_scan.py: the gate is computed from f in registers, and the backward writes dv and
df. Formulas count steps t = 1..T; the code counts rows 0..T-1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._env import triton_interpreter_on
from .associative_scan import (
    _check_int32_offsets, _combine, _gate_args, _gate_grads, _gate_params, _gates, _row, _thread_columns, fit_state,
)
from .dispatch import INTERPRETER_LOOKBACK_TILE, cdiv, lookback_config, lookback_rows
from .gate import Gate

SENTINEL = tl.constexpr(-1)  # int32 bits 0xFFFFFFFF of an unpublished slot: a NaN no arithmetic produces


@triton.jit
def _publish(ptr, value, mask):
    """Store fp32 `value` (BLOCK_D,) as int32 bits; a NaN is stored as the canonical NaN, never SENTINEL."""
    value = tl.where(value == value, value, float("nan"))
    tl.store(ptr, value.to(tl.int32, bitcast=True), mask=mask)


@triton.jit
def _look_back(agg_A, agg_V, incl, k, slot_stride, cols, mask_d, BLOCK_D: tl.constexpr, WINDOW: tl.constexpr,
               WARPS: tl.constexpr):
    """The state entering tile k >= 1 of one column, found by every warp for itself: (WARPS, BLOCK_D) fp32,
    row w warp w's.

    agg_A, agg_V, incl: int32 pointers to slot 0 of this column in the three workspace planes (slot j of
    channel d0 + c at + j · slot_stride + c). Each warp reads WINDOW predecessors at a time into its row of
    a (WARPS, BLOCK_D) tensor and folds them newest first: per channel, the aggregates down to the newest
    inclusive state; a window of aggregates only is folded in and the next older one read. A warp moves on
    when every open channel of its row can, else it reads the same window again (spinning until published).
    Its decisions are reductions along its own row, so the only cross-warp step per read is the loop's
    condition. Every element must be held by one thread, so that what a thread decides on is what it combines:
    replicas of an element would each poll the workspace by itself, and a reduction takes one replica's view.
    That holds in every sm_90 compile seen with triton 3.6 (contiguous and strided inputs, VEC 2 and VEC 1: the
    (WARPS, BLOCK_D) tensors in a layout of exactly WARPS · BLOCK_D threads · registers). Warps may find the state
    through different predecessors: their carries then differ in the last bits."""
    sub = tl.arange(0, WARPS)
    acc_A = tl.full([WARPS, BLOCK_D], 1.0, dtype=tl.float32)  # the tiles from the window's top to k - 1, combined
    acc_V = tl.zeros([WARPS, BLOCK_D], dtype=tl.float32)
    done = tl.broadcast_to(~mask_d[None, :], (WARPS, BLOCK_D))  # channels past D need nothing
    top = tl.zeros([WARPS], dtype=tl.int32) + k  # per warp: its window holds tiles top - WINDOW .. top - 1
    cols = cols[None, :] + 0 * sub[:, None]  # (WARPS, BLOCK_D)
    pending = WARPS * tl.sum(mask_d.to(tl.int32), axis=0)
    while pending > 0:
        # the window newest first -> (win_A, win_V): its tiles after the newest inclusive state, combined;
        # found: that state is among them; blocked: a slot needed before it is unpublished
        win_A = tl.full([WARPS, BLOCK_D], 1.0, dtype=tl.float32)
        win_V = tl.zeros([WARPS, BLOCK_D], dtype=tl.float32)
        found = done
        blocked = done & False
        for i in tl.static_range(WINDOW):
            j = top - 1 - i
            live = (j >= 0)[:, None] & ~done
            offs = j.to(tl.int64)[:, None] * slot_stride + cols
            H = tl.load(incl + offs, mask=live, other=SENTINEL, volatile=True)
            A = tl.load(agg_A + offs, mask=live, other=SENTINEL, volatile=True)
            V = tl.load(agg_V + offs, mask=live, other=SENTINEL, volatile=True)
            needed = live & ~found & ~blocked
            has_incl = needed & (H != SENTINEL)
            has_agg = needed & ~has_incl & (A != SENTINEL) & (V != SENTINEL)
            blocked = blocked | (needed & ~has_incl & ~has_agg)
            # tile j's pair: its inclusive state as (0, state), else its aggregate; it precedes the newer ones
            slot_A = tl.where(has_incl, 0.0, A.to(tl.float32, bitcast=True))
            slot_V = tl.where(has_incl, H.to(tl.float32, bitcast=True), V.to(tl.float32, bitcast=True))
            new_A, new_V = _combine(slot_A, slot_V, win_A, win_V)
            win_A = tl.where(has_incl | has_agg, new_A, win_A)
            win_V = tl.where(has_incl | has_agg, new_V, win_V)
            found = found | has_incl
        can_move = done | (~blocked & (found | (top - WINDOW > 0)[:, None]))  # more tiles below: read on
        move = tl.min(can_move.to(tl.int32), axis=1) == 1  # (WARPS,): every open channel of the warp
        step = move[:, None] & ~done
        new_A, new_V = _combine(win_A, win_V, acc_A, acc_V)
        acc_A = tl.where(step, new_A, acc_A)
        acc_V = tl.where(step, new_V, acc_V)
        done = done | (step & found)
        top = tl.where(move, top - WINDOW, top)
        pending = tl.sum(tl.sum((~done).to(tl.int32), axis=1), axis=0)
    return acc_V  # acc_A = 0 once an inclusive state is folded in: acc_V is the state itself


@triton.jit
def _program_tile(B, D: tl.constexpr, BLOCK_D: tl.constexpr, VEC: tl.constexpr):
    """This program's tile -> (k: its place in visiting order along T, b: batch row (int64), d0: first channel,
    cols (BLOCK_D,) channel offsets (see _thread_columns), mask_d: cols inside D). Program ids run through every
    (batch row, channel block) column of one k before the next k: ids in visiting order."""
    N_D: tl.constexpr = (D + BLOCK_D - 1) // BLOCK_D
    pid = tl.program_id(0)
    k, column = pid // (B * N_D), pid % (B * N_D)
    d0 = (column % N_D) * BLOCK_D
    cols = _thread_columns(BLOCK_D, VEC)
    return k, (column // N_D).to(tl.int64), d0, cols, cols < D - d0


@triton.jit
def _chain(tot_A, tot_V, k, b, d0, cols, mask_d, start_ptr, stride_start_b, stride_start_d,
           state_ptr, B, D: tl.constexpr, BLOCK_D: tl.constexpr, WINDOW: tl.constexpr, WARPS: tl.constexpr,
           HAS_START: tl.constexpr):
    """Publish the tile's aggregate, look back, publish its inclusive state (the end of step 1, steps 2
    and 3's first half). (tot_A, tot_V) (BLOCK_D,): the tile's pair, its scan from zero to its last row
    visited; k: the tile's place in visiting order; b, d0: its batch row and first channel; start_ptr: (B, D)
    the state before the first tile visited (h0, or dh_T backward), zeros if not HAS_START; state_ptr: the
    (3, K, B, D) workspace. -> (carry (WARPS, BLOCK_D): the state entering the tile as each warp found it,
    the tile's inclusive state (BLOCK_D,), from warp 0's)."""
    if HAS_START:
        start_first = start_ptr + b * stride_start_b + d0.to(tl.int64) * stride_start_d
        start = tl.load(start_first + cols * stride_start_d, mask=mask_d, other=0.0)
        start = start.to(tl.float32)
    else:
        start = tl.zeros([BLOCK_D], dtype=tl.float32)
    start = tl.broadcast_to(start[None, :], (WARPS, BLOCK_D))
    N_D: tl.constexpr = (D + BLOCK_D - 1) // BLOCK_D
    plane = (tl.num_programs(0) // N_D).to(tl.int64) * D  # K · B · D: one program per tile
    agg_A, agg_V, incl = state_ptr, state_ptr + plane, state_ptr + 2 * plane
    col_slot0 = b * D + d0  # slot 0 of this column; slot j at + j · B · D
    slot = k.to(tl.int64) * (B * D) + col_slot0 + cols
    if k == 0:
        carry = start
    else:
        _publish(agg_A + slot, tot_A, mask_d)
        _publish(agg_V + slot, tot_V, mask_d)
        carry = _look_back(agg_A + col_slot0, agg_V + col_slot0, incl + col_slot0, k, B * D, cols, mask_d,
                           BLOCK_D, WINDOW, WARPS)
    state = tot_A * _row(carry, tl.arange(0, WARPS), 0) + tot_V
    _publish(incl + slot, state, mask_d)
    return carry, state


@triton.jit
def _load_tall_tile(first, rows, cols, stride_t: tl.constexpr, stride_d: tl.constexpr, row_lo, row_hi, n_cols,
                    other, WHOLE: tl.constexpr, EVEN_D: tl.constexpr):
    """A (WARPS, ROWS, BLOCK_D) tile at `first` (its row 0, channel 0): rows (WARPS, ROWS, 1) and cols
    (1, 1, BLOCK_D) offsets; rows outside [row_lo, row_hi) or channels >= n_cols read `other`, unless WHOLE
    (every row inside) / EVEN_D (every channel inside)."""
    ptrs = first + (rows * stride_t + cols * stride_d)  # int32 offsets, then one 64-bit add per element
    if WHOLE and EVEN_D:
        return tl.load(ptrs)
    elif WHOLE:
        return tl.load(ptrs, mask=cols < n_cols, other=other)
    else:
        return tl.load(ptrs, mask=(rows >= row_lo) & (rows < row_hi) & (cols < n_cols), other=other)


@triton.jit
def _load_fwd_tile(x_first, a_first, rows, cols, stride_x_t: tl.constexpr, stride_x_d: tl.constexpr,
                   stride_a_t: tl.constexpr, stride_a_d: tl.constexpr, n_rows, n_cols, WHOLE: tl.constexpr,
                   EVEN_D: tl.constexpr, GATED: tl.constexpr):
    """The forward's (x, a) tiles (WARPS, ROWS, BLOCK_D), as `_load_tall_tile`; rows past n_rows read the identity
    (a = 1, x = 0; GATED: f = +inf, whose gate is 1)."""
    x = _load_tall_tile(x_first, rows, cols, stride_x_t, stride_x_d, 0, n_rows, n_cols, 0.0, WHOLE, EVEN_D)
    a = _load_tall_tile(a_first, rows, cols, stride_a_t, stride_a_d, 0, n_rows, n_cols,
                        float("inf") if GATED else 1.0, WHOLE, EVEN_D)
    return x, a


@triton.jit
def _load_doc(doc_first, stride_doc_t, t_rows, T, cols, HAS_DOC: tl.constexpr):
    """Whether a document starts at each of the times t_rows (WARPS, ROWS, 1), as a (WARPS, ROWS, BLOCK_D) tensor
    (False past T, and without HAS_DOC). cols: (1, 1, BLOCK_D) channel offsets. Loaded at the tile's full shape, every
    channel reading its row's flag: a (WARPS, ROWS, 1) load would be laid out with the lanes along the rows, and
    Triton would carry that layout into the whole tile, scanning its rows across lanes."""
    if HAS_DOC:
        t2 = tl.reshape(t_rows, [t_rows.shape[0], t_rows.shape[1]])
        d = tl.load(doc_first + t2.to(tl.int64) * stride_doc_t, mask=(t2 >= 0) & (t2 < T), other=0) != 0
        return d[:, :, None] & (cols >= 0)
    else:
        return (t_rows < 0) & (cols < 0)


@triton.jit
def _store_tall_tile(first, value, rows, cols, D: tl.constexpr, n_rows, n_cols, WHOLE: tl.constexpr,
                     EVEN_D: tl.constexpr):
    """Store a (WARPS, ROWS, BLOCK_D) tile into a contiguous (., D) output at `first`, masked as it was loaded."""
    ptrs = first + (rows * D + cols)
    value = value.to(first.dtype.element_ty)
    if WHOLE and EVEN_D:
        tl.store(ptrs, value)
    elif WHOLE:
        tl.store(ptrs, value, mask=cols < n_cols)
    else:
        tl.store(ptrs, value, mask=(rows < n_rows) & (cols < n_cols))


@triton.jit
def _store_bwd_tile(first, value, rows, cols, D: tl.constexpr, n_rows, n_cols, whole, EVEN_T: tl.constexpr,
                    EVEN_D: tl.constexpr):
    """`_store_tall_tile` of a backward tile: without row masks where it is whole (or T is whole tiles)."""
    if whole | EVEN_T:
        _store_tall_tile(first, value, rows, cols, D, n_rows, n_cols, True, EVEN_D)
    else:
        _store_tall_tile(first, value, rows, cols, D, n_rows, n_cols, False, EVEN_D)


@triton.jit
def _fold_rows(a, v, r):
    """Pairs (a, v) (WARPS, ROWS, BLOCK_D) -> each sub-tile's pair (WARPS, BLOCK_D): its rows combined in order.
    r: tl.arange(0, ROWS).

    Not `tl.reduce(..., combine_fn=_combine)`: Triton's reduce assumes a commutative combine, and `_combine` is not.
    Where the layout puts a sub-tile's rows in one thread's registers (contiguous inputs with VEC 2, triton 3.6: the
    design) the reduce folds them in order, but where it spreads them across lanes or warps it combines them out
    of order (a butterfly: each lane first with the lane half the span away), and the tile's totals are wrong.
    Triton lays the tile out by its loads' contiguity, so that happens with strided inputs (stride_d != 1: rows
    over 8 lanes and the 4 warps) and with VEC 1 tiles on triton 3.6, and with triton 3.9 even for contiguous
    inputs (warps over the rows). An inclusive scan keeps the order in every layout; its last row is the fold,
    picked by a one-hot sum, which is commutative and exact (x + -0.0 = x for every x, -0.0 included). In
    registers the picking folds away (sm_90 SASS of the contiguous kernels: the same instructions to +-2).
    (`_tile_summary` of the chunked passes picks a scan's row the same way.)"""
    A, V = tl.associative_scan((a.to(tl.float32), v.to(tl.float32)), axis=1, combine_fn=_combine)
    last = (r == r.shape[0] - 1)[None, :, None]
    return tl.sum(tl.where(last, A, -0.0), axis=1), tl.sum(tl.where(last, V, -0.0), axis=1)


@triton.jit
def _reduce_sub_tiles(a, v, sub, r, WARPS: tl.constexpr):
    """Pairs (a, v) (WARPS, ROWS, BLOCK_D), sub-tile w in row w -> (tot_A, tot_V) (BLOCK_D,) the whole tile's pair;
    (excl_A, excl_V) (WARPS, BLOCK_D) the pair of the sub-tiles before each (the identity before sub-tile 0).
    sub: tl.arange(0, WARPS); r: tl.arange(0, ROWS). Each warp folds its own rows into its sub-tile's total in
    registers (where the layout is the designed one: see `_fold_rows`); only the WARPS sub-tile totals are scanned
    across warps."""
    sub_A, sub_V = _fold_rows(a, v, r)  # (WARPS, BLOCK_D)
    incl_A, incl_V = tl.associative_scan((sub_A, sub_V), axis=0, combine_fn=_combine)
    tot_A, tot_V = _row(incl_A, sub, WARPS - 1), _row(incl_V, sub, WARPS - 1)
    # row w of the inclusive scan moved to w + 1, the identity at 0
    moved = (sub[:, None] == sub[None, :] + 1)[:, :, None]  # (to, from, 1)
    excl_A = tl.sum(tl.where(moved, incl_A[None, :, :], 0.0), axis=1) + tl.where(sub == 0, 1.0, 0.0)[:, None]
    excl_V = tl.sum(tl.where(moved, incl_V[None, :, :], 0.0), axis=1)
    return tot_A, tot_V, excl_A, excl_V


@triton.jit
def _widen(v, opaque_zero):
    """v (any shape, the loaded dtype) -> fp32, by another route than a plain `.to(tl.float32)`: 2-byte values are
    first xor-ed with `opaque_zero`, a run-time 0, so the compiler cannot merge this widening with an earlier one
    of the same tensor and keep the fp32 copy alive in between (see `_lookback_fwd_kernel`)."""
    if v.dtype == tl.float32:
        return v
    else:
        bits = v.to(tl.int16, bitcast=True) ^ opaque_zero.to(tl.int16)
        return bits.to(v.dtype, bitcast=True).to(tl.float32)


@triton.jit
def _scan_from(a, v, entering, r):
    """Pairs (a, v) (WARPS, ROWS, BLOCK_D) fp32, entering (WARPS, BLOCK_D) the state entering each sub-tile
    -> (WARPS, ROWS, BLOCK_D) fp32, each sub-tile's rows scanned from it (step 3): the state is folded into the
    first row's v, v_0 + a_0 · entering. r: tl.arange(0, ROWS)."""
    v = v + tl.where((r == 0)[None, :, None], a * entering[:, None, :], 0.0)
    _, h = tl.associative_scan((a, v), axis=1, combine_fn=_combine)
    return h


@triton.jit
def _h_prev(h_prev, h0_ptr, b, stride_h0_b, stride_h0_d, d0, cols, mask_d, rows, t0, HAS_H0: tl.constexpr):
    """h_{t-1} of a backward tile as loaded -> fp32, with h0 at t = 0."""
    h_prev = h_prev.to(tl.float32)
    if HAS_H0:
        h0_first = h0_ptr + b * stride_h0_b + d0.to(tl.int64) * stride_h0_d
        h0 = tl.load(h0_first + cols * stride_h0_d, mask=mask_d, other=0.0)
        h_prev = tl.where(rows == -t0, h0.to(tl.float32)[None, None, :], h_prev)
    return h_prev


@triton.jit
def _pairs(a, v, gate_b, gate_lb, gate_olb, doc, GATED: tl.constexpr):
    """The scan's fp32 pairs from the tiles as loaded: (a, v) widened, or GATED the gate and (1 - a) v from (f, v)."""
    if GATED:
        return _gates(a, v, gate_b, gate_lb, gate_olb, doc)
    else:
        return a.to(tl.float32), v.to(tl.float32)


@triton.jit(do_not_specialize=["opaque_zero", "stride_doc_t"])
def _lookback_fwd_kernel(
    # pointers
    x_ptr, a_ptr,  # (B, T, D) inputs, any strides (GATED: v and the gate's pre-activation f)
    h0_ptr,  # (B, D) initial state, any strides; unused if not HAS_H0
    h_ptr,  # (B, T, D) output, contiguous
    h_T_ptr,  # (B, D) fp32 final state, contiguous; unused if not STORE_FINAL
    state_ptr,  # (3, K, B, D) int32 workspace, SENTINEL-filled: per tile, aggregate A, V and inclusive state
    bias_ptr, lb_ptr, doc_ptr,  # gate parameters and document starts, as in _scan_fwd_kernel
    opaque_zero,  # 0, never specialised on (see `_widen`)
    # sizes
    B, T, D: tl.constexpr,
    # strides, in elements (T and D strides are compile-time: each row's offset folds into the load)
    stride_x_b, stride_x_t: tl.constexpr, stride_x_d: tl.constexpr,
    stride_a_b, stride_a_t: tl.constexpr, stride_a_d: tl.constexpr,
    stride_h0_b, stride_h0_d,
    stride_lb, stride_doc_b, stride_doc_t,
    # meta-parameters: a tile is WARPS sub-tiles of ROWS rows, one per warp (BLOCK_T = WARPS · ROWS rows)
    ROWS: tl.constexpr, WARPS: tl.constexpr, BLOCK_D: tl.constexpr, VEC: tl.constexpr,
    WINDOW: tl.constexpr,  # predecessors read per look-back step
    EVEN_T: tl.constexpr,  # T % (WARPS · ROWS) == 0: every tile is whole, no row masks
    EVEN_D: tl.constexpr,  # D % BLOCK_D == 0: no channel masks
    HAS_H0: tl.constexpr, STORE_FINAL: tl.constexpr,
    GATED: tl.constexpr, HAS_DOC: tl.constexpr,
):
    """A tall tile per program, held as (WARPS, ROWS, BLOCK_D): the look-back's cost per row falls as the tile
    grows, but a (BLOCK_T, BLOCK_D) tile over several warps would scan its rows across warps. Here each warp
    folds its own ROWS consecutive rows in registers (sub-tile w is rows w·ROWS ..), and only the WARPS sub-tile
    totals are scanned across warps.

    Across the look-back the program holds the tile's inputs as loaded, not their scan: the aggregate comes from
    a fold of the rows (step 1), and the rows are scanned after the look-back, from the state entering each
    sub-tile (step 3). At 2 bytes per element that halves what the wait holds (packed pairs, not fp32 values), so
    a 256-row tile fits the 168 registers of three programs per SM. Gated, the gate is computed twice (before the
    fold and after the wait) for the same reason, and the document starts are read again after the wait."""
    BLOCK_T: tl.constexpr = WARPS * ROWS
    k, b, d0, cols, mask_d = _program_tile(B, D, BLOCK_D, VEC)
    t0 = k * BLOCK_T
    sub = tl.arange(0, WARPS)
    r = tl.arange(0, ROWS)
    # (WARPS, ROWS, 1) time offsets in the tile. In this axis order Triton puts the warps on the sub-tile axis
    # (in (ROWS, WARPS, BLOCK_D) order it puts them on the rows).
    rows = (sub[:, None] * ROWS + r[None, :])[:, :, None]
    cols3 = cols[None, None, :]
    x_first = x_ptr + b * stride_x_b + t0.to(tl.int64) * stride_x_t + d0.to(tl.int64) * stride_x_d
    a_first = a_ptr + b * stride_a_b + t0.to(tl.int64) * stride_a_t + d0.to(tl.int64) * stride_a_d
    h_first = h_ptr + b * T * D + t0.to(tl.int64) * D + d0
    doc_first = doc_ptr + b * stride_doc_b
    gate_b, gate_lb, gate_olb = _gate_params(bias_ptr, lb_ptr, stride_lb, d0, cols, mask_d, GATED)
    gate_b, gate_lb, gate_olb = gate_b[None, None, :], gate_lb[None, None, :], gate_olb[None, None, :]

    # 1. each sub-tile's total (the last tile's padding rows: the identity, a=1, x=0), then the sub-tiles'
    # totals scanned across warps, and the tile's total
    whole = (t0 + BLOCK_T <= T) | EVEN_T  # EVEN_T: the masked copy is folded away
    if whole:
        x, a = _load_fwd_tile(x_first, a_first, rows, cols3, stride_x_t, stride_x_d, stride_a_t, stride_a_d,
                              T - t0, D - d0, True, EVEN_D, GATED)
    else:
        x, a = _load_fwd_tile(x_first, a_first, rows, cols3, stride_x_t, stride_x_d, stride_a_t, stride_a_d,
                              T - t0, D - d0, False, EVEN_D, GATED)
    a32, x32 = _pairs(a, x, gate_b, gate_lb, gate_olb, _load_doc(doc_first, stride_doc_t, t0 + rows, T, cols3, HAS_DOC),
                      GATED)
    tot_A, tot_H, excl_A, excl_H = _reduce_sub_tiles(a32, x32, sub, r, WARPS)

    # 2. the state entering the tile
    carry, state = _chain(tot_A, tot_H, k, b, d0, cols, mask_d, h0_ptr, stride_h0_b, stride_h0_d, state_ptr,
                          B, D, BLOCK_D, WINDOW, WARPS, HAS_H0)

    # 3. the states: each sub-tile's rows scanned from the state entering it (folded into its first row's x)
    entering = excl_A * carry + excl_H  # (WARPS, BLOCK_D)
    doc = _load_doc(doc_first, stride_doc_t, t0 + opaque_zero + rows, T, cols3, HAS_DOC)  # read again: see the docstring
    a32, x32 = _pairs(_widen(a, opaque_zero), _widen(x, opaque_zero), gate_b, gate_lb, gate_olb, doc, GATED)
    h = _scan_from(a32, x32, entering, r)
    if whole:
        _store_tall_tile(h_first, h, rows, cols3, D, T - t0, D - d0, True, EVEN_D)
    else:
        _store_tall_tile(h_first, h, rows, cols3, D, T - t0, D - d0, False, EVEN_D)
    if STORE_FINAL:
        if t0 + BLOCK_T >= T:
            tl.store(h_T_ptr + b * D + d0 + cols, state, mask=mask_d)


@triton.jit(do_not_specialize=["opaque_zero"])
def _lookback_bwd_kernel(
    # pointers
    a_ptr,  # (B, T, D) gates, any strides (GATED: the gate's pre-activation f)
    h_ptr,  # (B, T, D) forward states, contiguous
    h0_ptr,  # (B, D) initial state, any strides; unused if not HAS_H0
    dh_ptr,  # (B, T, D) gradient of h, any strides
    dh_T_ptr,  # (B, D) gradient of h_T, any strides; unused if not HAS_DH_T
    dx_ptr, da_ptr,  # (B, T, D) outputs, contiguous (GATED: dv and df)
    dh0_ptr,  # (B, D) output, contiguous; unused if not HAS_H0
    state_ptr,  # (3, K, B, D) int32 workspace, SENTINEL-filled, indexed by visiting order (from the end of T)
    x_ptr,  # (B, T, D) the forward's v, any strides; unused if not GATED
    bias_ptr, lb_ptr, doc_ptr,  # as in the forward; unused if not GATED
    opaque_zero,  # 0, never specialised on (see `_widen`)
    # sizes
    B, T, D: tl.constexpr,
    # strides, in elements (T and D strides are compile-time: each row's offset folds into the load)
    stride_a_b, stride_a_t: tl.constexpr, stride_a_d: tl.constexpr,
    stride_h0_b, stride_h0_d,
    stride_dh_b, stride_dh_t: tl.constexpr, stride_dh_d: tl.constexpr,
    stride_dh_T_b, stride_dh_T_d,
    stride_x_b, stride_x_t: tl.constexpr, stride_x_d: tl.constexpr,
    stride_lb, stride_doc_b, stride_doc_t,
    # meta-parameters: a tile is WARPS sub-tiles of ROWS rows, one per warp (BLOCK_T = WARPS · ROWS rows)
    ROWS: tl.constexpr, WARPS: tl.constexpr, BLOCK_D: tl.constexpr, VEC: tl.constexpr,
    WINDOW: tl.constexpr,  # predecessors read per look-back step
    EVEN_T: tl.constexpr,  # T % (WARPS · ROWS) == 0: every tile is whole (its first and last rows may still lack
    # a_{t+1} or h_{t-1})
    EVEN_D: tl.constexpr,  # D % BLOCK_D == 0: no channel masks
    HAS_H0: tl.constexpr, HAS_DH_T: tl.constexpr,
    GATED: tl.constexpr, HAS_DOC: tl.constexpr,
):
    """The forward's tall tile, flipped in time: element (w, r) of the (WARPS, ROWS, BLOCK_D) tile holds
    time t0 + BLOCK_T - 1 - (w · ROWS + r), so each sub-tile's scan along its rows, and the scan across
    sub-tiles, run backward in time. (The time offsets are compile-time constants: the flip costs nothing,
    where `reverse=True` shuffles lanes.) As in the forward, the inputs (a_{t+1}, dh_t^out, h_{t-1}) are held
    as loaded across the look-back, and scanned after it."""
    BLOCK_T: tl.constexpr = WARPS * ROWS
    k, b, d0, cols, mask_d = _program_tile(B, D, BLOCK_D, VEC)
    sub = tl.arange(0, WARPS)
    r = tl.arange(0, ROWS)
    rows = (BLOCK_T - 1 - (sub[:, None] * ROWS + r[None, :]))[:, :, None]  # (WARPS, ROWS, 1) time offsets
    cols3 = cols[None, None, :]
    n_tiles = tl.cdiv(T, BLOCK_T)
    t0 = (n_tiles - 1 - k) * BLOCK_T
    a_next_first = a_ptr + b * stride_a_b + (t0 + 1).to(tl.int64) * stride_a_t + d0.to(tl.int64) * stride_a_d
    dh_first = dh_ptr + b * stride_dh_b + t0.to(tl.int64) * stride_dh_t + d0.to(tl.int64) * stride_dh_d
    h_prev_first = h_ptr + b * T * D + (t0 - 1).to(tl.int64) * D + d0  # row t0 - 1: h_{t-1} of row t0
    dx_first = dx_ptr + b * T * D + t0.to(tl.int64) * D + d0
    da_first = da_ptr + b * T * D + t0.to(tl.int64) * D + d0
    doc_first = doc_ptr + b * stride_doc_b
    a_other = float("inf") if GATED else 1.0  # a_T and beyond: the identity (GATED: f = +inf, a gate of 1)
    gate_b, gate_lb, gate_olb = _gate_params(bias_ptr, lb_ptr, stride_lb, d0, cols, mask_d, GATED)
    gate_b, gate_lb, gate_olb = gate_b[None, None, :], gate_lb[None, None, :], gate_olb[None, None, :]

    # 1. each sub-tile's total of (a_{t+1}, dh_t^out) from a zero gradient at its end, then across sub-tiles.
    # Whole: every row has a real a_{t+1} (t + 1 < T) and a real h_{t-1} (t >= 1).
    whole = (t0 > 0) & (t0 + BLOCK_T < T)
    if EVEN_T:  # one copy of the code, masked by rows only where a row may be missing
        a_next = _load_tall_tile(a_next_first, rows, cols3, stride_a_t, stride_a_d, 0, T - 1 - t0, D - d0, a_other,
                                 False, EVEN_D)
        dh_out = _load_tall_tile(dh_first, rows, cols3, stride_dh_t, stride_dh_d, 0, 0, D - d0, 0.0, True, EVEN_D)
        h_prev = _load_tall_tile(h_prev_first, rows, cols3, D, 1, 1 - t0, T - t0, D - d0, 0.0, False, EVEN_D)
    elif whole:
        a_next = _load_tall_tile(a_next_first, rows, cols3, stride_a_t, stride_a_d, 0, 0, D - d0, a_other, True,
                                 EVEN_D)
        dh_out = _load_tall_tile(dh_first, rows, cols3, stride_dh_t, stride_dh_d, 0, 0, D - d0, 0.0, True, EVEN_D)
        h_prev = _load_tall_tile(h_prev_first, rows, cols3, D, 1, 0, 0, D - d0, 0.0, True, EVEN_D)
    else:  # a_T and beyond: 1 (dh_T seeds row T - 1); h_{-1}: 0 (h0 below)
        a_next = _load_tall_tile(a_next_first, rows, cols3, stride_a_t, stride_a_d, 0, T - 1 - t0, D - d0, a_other,
                                 False, EVEN_D)
        dh_out = _load_tall_tile(dh_first, rows, cols3, stride_dh_t, stride_dh_d, 0, T - t0, D - d0, 0.0, False,
                                 EVEN_D)
        h_prev = _load_tall_tile(h_prev_first, rows, cols3, D, 1, 1 - t0, T - t0, D - d0, 0.0, False, EVEN_D)
    a32, dh32 = _pairs(a_next, dh_out, gate_b, gate_lb, gate_olb,
                       _load_doc(doc_first, stride_doc_t, t0 + 1 + rows, T, cols3, HAS_DOC), GATED)
    if GATED:
        dh32 = dh_out.to(tl.float32)  # the value of a backward pair is dh itself
    tot_A, tot_G, excl_A, excl_G = _reduce_sub_tiles(a32, dh32, sub, r, WARPS)

    # 2. the gradient entering the tile from its end
    carry, state = _chain(tot_A, tot_G, k, b, d0, cols, mask_d, dh_T_ptr, stride_dh_T_b, stride_dh_T_d,
                          state_ptr, B, D, BLOCK_D, WINDOW, WARPS, HAS_DH_T)

    # 3. the gradients: each sub-tile's rows scanned from the gradient entering it (from its end)
    entering = excl_A * carry + excl_G  # (WARPS, BLOCK_D)
    doc_next = _load_doc(doc_first, stride_doc_t, t0 + 1 + opaque_zero + rows, T, cols3, HAS_DOC)
    a32, _ = _pairs(_widen(a_next, opaque_zero), dh_out, gate_b, gate_lb, gate_olb, doc_next, GATED)
    dh = _scan_from(a32, _widen(dh_out, opaque_zero), entering, r)
    if GATED:  # the gate at t itself, and v_t: dv and df in place of dx and da
        h_prev = _h_prev(h_prev, h0_ptr, b, stride_h0_b, stride_h0_d, d0, cols, mask_d, rows, t0, HAS_H0)
        f = _load_tall_tile(a_ptr + b * stride_a_b + t0.to(tl.int64) * stride_a_t + d0.to(tl.int64) * stride_a_d,
                            rows, cols3, stride_a_t, stride_a_d, 0, T - t0, D - d0, 0.0, False, EVEN_D)
        v = _load_tall_tile(x_ptr + b * stride_x_b + t0.to(tl.int64) * stride_x_t + d0.to(tl.int64) * stride_x_d,
                            rows, cols3, stride_x_t, stride_x_d, 0, T - t0, D - d0, 0.0, False, EVEN_D)
        dv, df = _gate_grads(f, v, dh, h_prev, gate_b, gate_olb,
                             _load_doc(doc_first, stride_doc_t, t0 + rows, T, cols3, HAS_DOC))
        _store_bwd_tile(dx_first, dv, rows, cols3, D, T - t0, D - d0, whole, EVEN_T, EVEN_D)
        _store_bwd_tile(da_first, df, rows, cols3, D, T - t0, D - d0, whole, EVEN_T, EVEN_D)
    else:
        _store_bwd_tile(dx_first, dh, rows, cols3, D, T - t0, D - d0, whole, EVEN_T, EVEN_D)
        # h_{t-1} widened only now, after dx's store: fewer spills on sm_90
        h_prev = _h_prev(h_prev, h0_ptr, b, stride_h0_b, stride_h0_d, d0, cols, mask_d, rows, t0, HAS_H0)
        _store_bwd_tile(da_first, dh * h_prev, rows, cols3, D, T - t0, D - d0, whole, EVEN_T, EVEN_D)
    if HAS_H0:
        if t0 == 0:  # dh0 = a_1 dh_1; `state` is dh at t = 0
            # the channel block's offset in 64 bits, as every tile's: d0 · stride_d passes 2**31 in a transposed a
            # with D · T >= 2**31 (cols · stride_d is bounded by `tile_fits_int32`)
            a_1_first = a_ptr + b * stride_a_b + d0.to(tl.int64) * stride_a_d
            a_1 = tl.load(a_1_first + cols * stride_a_d, mask=mask_d, other=0.0)
            if GATED:
                if HAS_DOC:
                    doc_1 = tl.load(doc_first) != 0
                else:
                    doc_1 = False
                a_1 = _gates(a_1, a_1, gate_b.reshape(BLOCK_D), gate_lb.reshape(BLOCK_D), gate_olb.reshape(BLOCK_D),
                             doc_1)[0]  # a new name: Triton refuses a name whose type changes inside a run-time if
            tl.store(dh0_ptr + b * D + d0 + cols, (a_1.to(tl.float32) * state).to(dh0_ptr.dtype.element_ty),
                     mask=mask_d)


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------


def _check_config(config: dict) -> None:
    """A config has exactly the keys of `dispatch.lookback_config`'s, and on a GPU channel blocks of 64 with VEC 2
    (each lane its own two channels), the only ones timed there. (128-channel blocks of 32 rows per warp were seen to
    read out of bounds; VEC 1 tiles compute correctly since the sub-tile fold is an ordered scan, but are untimed.)
    The interpreter runs any tile (its programs run one after another)."""
    if set(config) != set(INTERPRETER_LOOKBACK_TILE):
        raise ValueError(f"config: expected the keys {sorted(INTERPRETER_LOOKBACK_TILE)}, got {sorted(config)}")
    if not triton_interpreter_on() and (config["VEC"], config["BLOCK_D"]) != (2, 64):
        raise ValueError(f"config: expected VEC 2 and BLOCK_D 64 on a GPU, got VEC {config['VEC']} and BLOCK_D "
                         f"{config['BLOCK_D']}")


def _launch_options(config: dict) -> dict:
    """A checked config -> the kernel's meta-parameters and launch options."""
    meta = {k: v for k, v in config.items() if k != "MAXNREG"}
    return dict(meta, num_warps=config["WARPS"], **({"maxnreg": config["MAXNREG"]} if config["MAXNREG"] else {}))


def _workspace(B: int, T: int, D: int, block_t: int, device) -> torch.Tensor:
    """(3, K, B, D) int32, K = cdiv(T, block_t), every slot unpublished."""
    return torch.full((3, cdiv(T, block_t), B, D), SENTINEL.value, dtype=torch.int32, device=device)


def lookback_scan_fwd(x, a, h0, output_final_state, config=None, gate: Gate | None = None):
    """x, a: (B, T, D); h0: (B, D) | None -> h: (B, T, D) x.dtype, h_T: (B, D) fp32 | None.

    config: forward tile meta-parameters (None: `dispatch.lookback_config`). gate: the gated recurrence, x and a
    then being v and f."""
    B, T, D = x.shape
    config = config or lookback_config(x.dtype)
    _check_config(config)
    block_t = lookback_rows(config)
    _check_int32_offsets(block_t, config["BLOCK_D"], x=x, a=a)
    h0 = fit_state(h0)
    h = torch.empty(B, T, D, dtype=x.dtype, device=x.device)
    h_T = torch.empty(B, D, dtype=torch.float32, device=x.device) if output_final_state else None
    state = _workspace(B, T, D, block_t, x.device)
    h0_strides = h0.stride() if h0 is not None else (0, 0)
    gate_ptrs, g = _gate_args(gate, x)
    grid = (cdiv(T, block_t) * B * cdiv(D, config["BLOCK_D"]),)
    _lookback_fwd_kernel[grid](
        x, a, h0, h, h_T, state, *gate_ptrs, 0, B, T, D, *x.stride(), *a.stride(), *h0_strides, *g["strides"],
        EVEN_T=T % block_t == 0, EVEN_D=D % config["BLOCK_D"] == 0, HAS_H0=h0 is not None,
        STORE_FINAL=output_final_state, GATED=g["GATED"], HAS_DOC=g["HAS_DOC"], **_launch_options(config),
    )
    return h, h_T


def lookback_scan_bwd(a, h, h0, dh, dh_T, config=None, gate: Gate | None = None, v=None):
    """a, h, dh: (B, T, D); h0, dh_T: (B, D) | None -> dx, da: (B, T, D) a.dtype, dh0: (B, D) h0.dtype | None.
    config: backward tile meta-parameters. gate: the gated recurrence, a being f and v the forward's v; the outputs
    are then dv (v's dtype) and df (f's dtype)."""
    B, T, D = a.shape
    config = config or lookback_config(a.dtype, backward=True)
    _check_config(config)
    if not h.is_contiguous():
        raise ValueError(f"h: expected the forward's contiguous output, got strides {h.stride()}")
    block_t = lookback_rows(config)
    _check_int32_offsets(block_t, config["BLOCK_D"], a=a, dh=dh, v=v)
    h0, dh_T = fit_state(h0), fit_state(dh_T)
    dx = torch.empty(B, T, D, dtype=(v if gate is not None else a).dtype, device=a.device)
    da = torch.empty(B, T, D, dtype=a.dtype, device=a.device)
    dh0 = torch.empty(B, D, dtype=h0.dtype, device=a.device) if h0 is not None else None
    state = _workspace(B, T, D, block_t, a.device)
    h0_strides = h0.stride() if h0 is not None else (0, 0)
    dh_T_strides = dh_T.stride() if dh_T is not None else (0, 0)
    v = v if v is not None else a
    gate_ptrs, g = _gate_args(gate, a)
    grid = (cdiv(T, block_t) * B * cdiv(D, config["BLOCK_D"]),)
    _lookback_bwd_kernel[grid](
        a, h, h0, dh, dh_T, dx, da, dh0, state, v, *gate_ptrs, 0, B, T, D, *a.stride(), *h0_strides, *dh.stride(),
        *dh_T_strides, *v.stride(), *g["strides"],
        EVEN_T=T % block_t == 0, EVEN_D=D % config["BLOCK_D"] == 0, HAS_H0=h0 is not None, HAS_DH_T=dh_T is not None,
        GATED=g["GATED"], HAS_DOC=g["HAS_DOC"], **_launch_options(config),
    )
    return dx, da, dh0
