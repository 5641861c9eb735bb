"""Chunked associative scan in Triton: h_t = a_t ⊙ h_{t-1} + x_t over (B, T, D), with a fused backward.

Each program owns BLOCK_D channels of one batch row and a range of T (a chunk). It walks its chunk in
BLOCK_T-row tiles: `tl.associative_scan` down each tile with the combine
(a_l, h_l) ∘ (a_r, h_r) = (a_l a_r, a_r h_l + h_r), then h = A ⊙ carry + H, carrying a float32 state from
tile to tile. D is the contiguous axis of the (B, T, D) layout the model produces, so loads are coalesced
and nothing is transposed.

Two paths, chosen by shape:
- one chunk (B · D fills the GPU): every program scans the whole of T. One kernel, 3·N·s bytes.
- T-parallel (B · D small, T long, e.g. B=1, D=512, T=131072): T is cut into chunks across programs.
  1. `_chunk_summary_kernel` reduces each chunk to its pair (A_c, H_c) = (prod a, scan from zero);
  2. `_chunk_carry_kernel` walks the chunks in order and turns the pairs into each chunk's initial state;
  3. `_scan_fwd_kernel` rescans every chunk from its initial state.
The backward is the same machinery run in reverse (`REVERSE`), seeded by dh_T:
dh_t = dh_t^out + a_{t+1} dh_{t+1}; one pass writes dx = dh, da_t = dh_t h_{t-1} and dh0 = a_1 dh_1.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
import triton.testing

from ._env import triton_interpreter_on
from .function import apply_scan



@triton.jit
def _combine(a_l, h_l, a_r, h_r):
    # (a_l, h_l) first, then (a_r, h_r): h = a_r h_l + h_r
    return a_l * a_r, a_r * h_l + h_r


@triton.jit
def _row(tile, rows, r):
    """tile[r, :] of a (BLOCK_T, BLOCK_D) tile, as a (BLOCK_D,) vector."""
    return tl.sum(tl.where(rows[:, None] == r, tile, 0.0), axis=0)


@triton.jit
def _load_pair_tile(a_cols, v_cols, t, t_start, t_end, T, mask_d, stride_a_t, stride_v_t, REVERSE: tl.constexpr):
    """Rows t of the scan's pairs: (a_t, v_t), or (a_{t+1}, v_t) in REVERSE; identity (1, 0) outside the chunk."""
    in_chunk = (t >= t_start) & (t < t_end)
    mask = in_chunk[:, None] & mask_d[None, :]
    v = tl.load(v_cols[None, :] + t[:, None] * stride_v_t, mask=mask, other=0.0)
    if REVERSE:
        a_mask = (in_chunk & (t + 1 < T))[:, None] & mask_d[None, :]
        a = tl.load(a_cols[None, :] + (t + 1)[:, None] * stride_a_t, mask=a_mask, other=1.0)
    else:
        a = tl.load(a_cols[None, :] + t[:, None] * stride_a_t, mask=mask, other=1.0)
    return a, v


@triton.jit
def _scan_fwd_kernel(
    # pointers
    x_ptr, a_ptr,  # (B, T, D) inputs, any strides
    init_ptr,  # (B, C, D) state entering each chunk (C = 1: h0), fp32 or x's dtype; unused if not HAS_INIT
    h_ptr,  # (B, T, D) output, contiguous
    h_T_ptr,  # (B, D) fp32 final state, contiguous; unused if not STORE_FINAL
    # sizes
    T, D, CHUNK_T,
    # strides, in elements
    stride_x_b, stride_x_t, stride_x_d,
    stride_a_b, stride_a_t, stride_a_d,
    stride_init_b, stride_init_c, stride_init_d,
    # meta-parameters
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_INIT: tl.constexpr,  # h0 given (one chunk) or the T-parallel path's chunk states
    STORE_FINAL: tl.constexpr,  # write h_T (the last chunk's program does)
):
    pid_d, pid_c, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b = pid_b.to(tl.int64)
    offs_d = (pid_d * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    mask_d = offs_d < D
    rows = tl.arange(0, BLOCK_T)
    t_start = pid_c * CHUNK_T
    t_end = tl.minimum(t_start + CHUNK_T, T)

    x_cols = x_ptr + b * stride_x_b + offs_d * stride_x_d
    a_cols = a_ptr + b * stride_a_b + offs_d * stride_a_d
    h_cols = h_ptr + b * T * D + offs_d

    if HAS_INIT:
        init = init_ptr + b * stride_init_b + pid_c * stride_init_c + offs_d * stride_init_d
        carry = tl.load(init, mask=mask_d, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros([BLOCK_D], dtype=tl.float32)

    # Software pipelining by hand: the loads of tile i+1 are issued before tile i's scan, so memory
    # latency hides behind the arithmetic. Padding rows get the identity (a=1, x=0), so a tile's last
    # row holds the last valid state.
    t = (t_start + rows).to(tl.int64)
    a_next, x_next = _load_pair_tile(a_cols, x_cols, t, t_start, t_end, T, mask_d, stride_a_t, stride_x_t, False)
    for t0 in range(t_start, t_end, BLOCK_T):
        x, a = x_next.to(tl.float32), a_next.to(tl.float32)
        t_store = t
        t = t + BLOCK_T
        a_next, x_next = _load_pair_tile(a_cols, x_cols, t, t_start, t_end, T, mask_d, stride_a_t, stride_x_t, False)
        A, H = tl.associative_scan((a, x), axis=0, combine_fn=_combine)
        h = A * carry[None, :] + H
        mask_store = (t_store < t_end)[:, None] & mask_d[None, :]
        tl.store(h_cols[None, :] + t_store[:, None] * D, h.to(h_ptr.dtype.element_ty), mask=mask_store)
        carry = _row(h, rows, BLOCK_T - 1)

    if STORE_FINAL:
        if pid_c == tl.num_programs(1) - 1:
            tl.store(h_T_ptr + b * D + offs_d, carry, mask=mask_d)


@triton.jit
def _load_bwd_tile(a_cols, dh_cols, h_cols, t, t_start, t_end, T, D, mask_d, stride_a_t, stride_dh_t):
    """Rows t of (a_{t+1}, dh_t^out, h_{t-1}): the reverse scan's pairs, and the states before them (0 at t = 0)."""
    a_next, dh_out = _load_pair_tile(a_cols, dh_cols, t, t_start, t_end, T, mask_d, stride_a_t, stride_dh_t, True)
    prev_mask = ((t >= t_start) & (t < t_end) & (t >= 1))[:, None] & mask_d[None, :]
    h_prev = tl.load(h_cols[None, :] + (t - 1)[:, None] * D, mask=prev_mask, other=0.0)
    return a_next, dh_out, h_prev


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
    T, D, CHUNK_T,
    # strides, in elements
    stride_a_b, stride_a_t, stride_a_d,
    stride_h0_b, stride_h0_d,
    stride_dh_b, stride_dh_t, stride_dh_d,
    stride_init_b, stride_init_c, stride_init_d,
    # meta-parameters
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_INIT: tl.constexpr,
):
    pid_d, pid_c, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b = pid_b.to(tl.int64)
    offs_d = (pid_d * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    mask_d = offs_d < D
    rows = tl.arange(0, BLOCK_T)
    t_start = pid_c * CHUNK_T
    t_end = tl.minimum(t_start + CHUNK_T, T)

    a_cols = a_ptr + b * stride_a_b + offs_d * stride_a_d
    dh_cols = dh_ptr + b * stride_dh_b + offs_d * stride_dh_d
    h_cols = h_ptr + b * T * D + offs_d
    dx_cols = dx_ptr + b * T * D + offs_d
    da_cols = da_ptr + b * T * D + offs_d
    if HAS_H0:
        h0 = tl.load(h0_ptr + b * stride_h0_b + offs_d * stride_h0_d, mask=mask_d, other=0.0).to(tl.float32)

    if HAS_INIT:
        init = init_ptr + b * stride_init_b + pid_c * stride_init_c + offs_d * stride_init_d
        carry = tl.load(init, mask=mask_d, other=0.0).to(tl.float32)  # dh at t_end
    else:
        carry = tl.zeros([BLOCK_D], dtype=tl.float32)

    # Walk the chunk's tiles from the last to the first, loading tile i-1 before scanning tile i (see the
    # forward). Element t of the reverse scan is (a_{t+1}, dh_t^out); a_{T} past the end is 1 so that
    # dh_T seeds row T-1. Padding rows get the identity (a=1, dh=0).
    n_tiles = tl.cdiv(t_end - t_start, BLOCK_T)
    t = (t_start + (n_tiles - 1) * BLOCK_T + rows).to(tl.int64)
    a_nxt, dh_nxt, h_nxt = _load_bwd_tile(a_cols, dh_cols, h_cols, t, t_start, t_end, T, D, mask_d, stride_a_t,
                                              stride_dh_t)
    for _ in range(n_tiles):
        a_next, dh_out, h_prev = a_nxt.to(tl.float32), dh_nxt.to(tl.float32), h_nxt.to(tl.float32)
        t_cur = t
        t = t - BLOCK_T
        a_nxt, dh_nxt, h_nxt = _load_bwd_tile(a_cols, dh_cols, h_cols, t, t_start, t_end, T, D, mask_d, stride_a_t,
                                              stride_dh_t)
        A, G = tl.associative_scan((a_next, dh_out), axis=0, combine_fn=_combine, reverse=True)
        dh = A * carry[None, :] + G
        if HAS_H0:
            h_prev = tl.where((t_cur == 0)[:, None], h0[None, :], h_prev)
        mask = (t_cur < t_end)[:, None] & mask_d[None, :]
        tl.store(dx_cols[None, :] + t_cur[:, None] * D, dh.to(dx_ptr.dtype.element_ty), mask=mask)
        tl.store(da_cols[None, :] + t_cur[:, None] * D, (dh * h_prev).to(da_ptr.dtype.element_ty), mask=mask)
        carry = _row(dh, rows, 0)

    if HAS_H0:
        # dh0 = a_1 dh_1; only the first chunk's program holds dh_1
        if pid_c == 0:
            a_first = tl.load(a_cols, mask=mask_d, other=0.0).to(tl.float32)
            tl.store(dh0_ptr + b * D + offs_d, (a_first * carry).to(dh0_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def _chunk_summary_kernel(
    # pointers
    v_ptr,  # (B, T, D) values: x (forward) or dh^out (backward), any strides
    a_ptr,  # (B, T, D) gates, any strides
    A_ptr, V_ptr,  # (B, C, D) fp32 outputs: the chunk's gate product and its scan from a zero state
    # sizes
    T, D, CHUNK_T,
    # strides, in elements
    stride_v_b, stride_v_t, stride_v_d,
    stride_a_b, stride_a_t, stride_a_d,
    # meta-parameters
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    REVERSE: tl.constexpr,  # backward: pairs (a_{t+1}, dh_t^out), combined from the chunk's end
):
    pid_d, pid_c, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b = pid_b.to(tl.int64)
    offs_d = (pid_d * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    mask_d = offs_d < D
    rows = tl.arange(0, BLOCK_T)
    t_start = pid_c * CHUNK_T
    t_end = tl.minimum(t_start + CHUNK_T, T)
    v_cols = v_ptr + b * stride_v_b + offs_d * stride_v_d
    a_cols = a_ptr + b * stride_a_b + offs_d * stride_a_d

    acc_A = tl.full([BLOCK_D], 1.0, dtype=tl.float32)
    acc_V = tl.zeros([BLOCK_D], dtype=tl.float32)
    n_tiles = tl.cdiv(t_end - t_start, BLOCK_T)
    step = -BLOCK_T if REVERSE else BLOCK_T
    t = (t_start + (n_tiles - 1 if REVERSE else 0) * BLOCK_T + rows).to(tl.int64)
    a_nxt, v_nxt = _load_pair_tile(a_cols, v_cols, t, t_start, t_end, T, mask_d, stride_a_t, stride_v_t, REVERSE)
    for _ in range(n_tiles):
        a, v = a_nxt.to(tl.float32), v_nxt.to(tl.float32)
        t += step
        a_nxt, v_nxt = _load_pair_tile(a_cols, v_cols, t, t_start, t_end, T, mask_d, stride_a_t, stride_v_t,
                                       REVERSE)
        A, V = tl.associative_scan((a, v), axis=0, combine_fn=_combine, reverse=REVERSE)
        end = 0 if REVERSE else BLOCK_T - 1
        A_tile, V_tile = _row(A, rows, end), _row(V, rows, end)
        acc_V = A_tile * acc_V + V_tile
        acc_A = A_tile * acc_A

    out = b * tl.num_programs(1) * D + pid_c * D + offs_d
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
    BLOCK_D: tl.constexpr,
    HAS_START: tl.constexpr, STORE_FINAL: tl.constexpr,
    REVERSE: tl.constexpr,  # visit chunks from last to first (backward)
):
    pid_d, pid_b = tl.program_id(0), tl.program_id(1)
    b = pid_b.to(tl.int64)
    offs_d = (pid_d * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    mask_d = offs_d < D
    if HAS_START:
        state = tl.load(start_ptr + b * stride_start_b + offs_d * stride_start_d, mask=mask_d, other=0.0)
        state = state.to(tl.float32)
    else:
        state = tl.zeros([BLOCK_D], dtype=tl.float32)
    for i in range(C):
        c = C - 1 - i if REVERSE else i
        offs = b * C * D + c * D + offs_d
        tl.store(init_ptr + offs, state, mask=mask_d)
        state = tl.load(A_ptr + offs, mask=mask_d, other=1.0) * state + tl.load(V_ptr + offs, mask=mask_d, other=0.0)
    if STORE_FINAL:
        tl.store(final_ptr + b * D + offs_d, state, mask=mask_d)


# --------------------------------------------------------------------------------------------------
# Launchers: allocate outputs, choose the path and the tiles, launch.
# --------------------------------------------------------------------------------------------------

# Tiles measured on an H100 (kernels/benchmarks/NOTES.md); the autotuner picks one per (D, dtype) on
# first use. T is deliberately not a key: sequence lengths vary from batch to batch.
TILE_CONFIGS = [
    triton.Config({"BLOCK_T": 64, "BLOCK_D": 32}, num_warps=2, num_stages=1),
    triton.Config({"BLOCK_T": 64, "BLOCK_D": 64}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK_T": 32, "BLOCK_D": 64}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK_T": 128, "BLOCK_D": 32}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK_T": 64, "BLOCK_D": 16}, num_warps=1, num_stages=1),  # untried: more programs per SM
]
MIN_CHUNK_T = 512  # the T-parallel path never makes chunks shorter than this (summary overhead)
MAX_BLOCK_D = 64  # the widest channel tile above, for counting programs


# The interpreter cannot time configs; small tiles keep CPU tests quick and still span several tiles.
INTERPRETER_CONFIG = triton.Config({"BLOCK_T": 16, "BLOCK_D": 16}, num_warps=1, num_stages=1)


def _time_config(kernel_call, quantiles=None, **_):
    """The autotuner's timer: triton's do_bench with 5 ms of warm-up and 20 ms of repeats (defaults: 25 and 100).
    do_bench sizes its repeat count by the kernel's time but clears L2 (a 256 MB write) before each repeat, so
    for a microsecond kernel the defaults mostly time flushes; and every new key (D, dtypes, optional
    arguments) times all 5 configs on its first call."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def _autotuned(kernel):
    configs = [INTERPRETER_CONFIG] if triton_interpreter_on() else TILE_CONFIGS
    # key: the autotuner adds the tensors' dtypes
    return triton.autotune(configs=configs, key=["D"], do_bench=_time_config)(kernel)


def _summary_config() -> dict:
    if triton_interpreter_on():
        return dict(INTERPRETER_CONFIG.kwargs, num_warps=1)
    return dict(BLOCK_T=64, BLOCK_D=64, num_warps=4)


_scan_fwd = _autotuned(_scan_fwd_kernel)
_scan_bwd = _autotuned(_scan_bwd_kernel)


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _chunk_len(B: int, T: int, D: int, num_sms: int) -> int:
    """Rows per chunk: all of T when B · D gives every SM a program, else enough chunks for 2 waves."""
    programs = B * triton.cdiv(D, MAX_BLOCK_D)
    if programs >= num_sms:
        return T
    n_chunks = min(triton.cdiv(2 * num_sms, programs), T // MIN_CHUNK_T)
    if n_chunks <= 1:
        return T
    return triton.cdiv(triton.cdiv(T, n_chunks), 256) * 256


def _launch(kernel, tuned, config, n_chunks, B, D, *args, **constexprs):
    """Launch `tuned` (autotuned tiles), or the plain kernel with an explicit config (benchmarks)."""
    if config is None:
        grid = lambda meta: (triton.cdiv(D, meta["BLOCK_D"]), n_chunks, B)  # noqa: E731
        tuned[grid](*args, **constexprs)
    else:
        kernel[(triton.cdiv(D, config["BLOCK_D"]), n_chunks, B)](*args, **constexprs, **config)


def _chunk_states(v, a, start, chunk_t: int, reverse: bool, final=None) -> torch.Tensor:
    """The T-parallel path's first two kernels: summaries, then the state entering each chunk (B, C, D) fp32."""
    B, T, D = v.shape
    C = triton.cdiv(T, chunk_t)
    A_c = torch.empty(B, C, D, dtype=torch.float32, device=v.device)
    V_c = torch.empty(B, C, D, dtype=torch.float32, device=v.device)
    init = torch.empty(B, C, D, dtype=torch.float32, device=v.device)
    cfg = _summary_config()
    n_d = triton.cdiv(D, cfg["BLOCK_D"])
    _chunk_summary_kernel[(n_d, C, B)](
        v, a, A_c, V_c, T, D, chunk_t, *v.stride(), *a.stride(), REVERSE=reverse, **cfg,
    )
    start_strides = start.stride() if start is not None else (0, 0)
    _chunk_carry_kernel[(n_d, B)](
        A_c, V_c, start, init, final, C, D, *start_strides, BLOCK_D=cfg["BLOCK_D"],
        HAS_START=start is not None, STORE_FINAL=final is not None, REVERSE=reverse,
    )
    return init


def associative_scan_fwd(x, a, h0, output_final_state, chunk_t=None, config=None):
    """x, a: (B, T, D); h0: (B, D) | None -> h: (B, T, D) x.dtype, h_T: (B, D) fp32 | None."""
    B, T, D = x.shape
    chunk_t = chunk_t or _chunk_len(B, T, D, _num_sms(x.device))
    h = torch.empty(B, T, D, dtype=x.dtype, device=x.device)
    h_T = torch.empty(B, D, dtype=torch.float32, device=x.device) if output_final_state else None
    n_chunks = triton.cdiv(T, chunk_t)
    if n_chunks > 1:
        init = _chunk_states(x, a, h0, chunk_t, reverse=False, final=h_T)
        init_strides, store_final = init.stride(), False
    else:
        init = h0
        init_strides = (h0.stride(0), 0, h0.stride(1)) if h0 is not None else (0, 0, 0)
        store_final = output_final_state
    _launch(
        _scan_fwd_kernel, _scan_fwd, config, n_chunks, B, D,
        x, a, init, h, h_T, T, D, chunk_t, *x.stride(), *a.stride(), *init_strides,
        HAS_INIT=init is not None, STORE_FINAL=store_final,
    )
    return h, h_T


def associative_scan_bwd(a, h, h0, dh, dh_T, chunk_t=None, config=None):
    """a, h, dh: (B, T, D); h0, dh_T: (B, D) | None -> dx, da: (B, T, D) a.dtype, dh0: (B, D) h0.dtype | None."""
    B, T, D = a.shape
    chunk_t = chunk_t or _chunk_len(B, T, D, _num_sms(a.device))
    dx = torch.empty(B, T, D, dtype=a.dtype, device=a.device)
    da = torch.empty(B, T, D, dtype=a.dtype, device=a.device)
    dh0 = torch.empty(B, D, dtype=h0.dtype, device=a.device) if h0 is not None else None
    n_chunks = triton.cdiv(T, chunk_t)
    if n_chunks > 1:
        init = _chunk_states(dh, a, dh_T, chunk_t, reverse=True)
        init_strides = init.stride()
    else:
        init = dh_T
        init_strides = (dh_T.stride(0), 0, dh_T.stride(1)) if dh_T is not None else (0, 0, 0)
    h0_strides = h0.stride() if h0 is not None else (0, 0)
    _launch(
        _scan_bwd_kernel, _scan_bwd, config, n_chunks, B, D,
        a, h, h0, dh, init, dx, da, dh0, T, D, chunk_t, *a.stride(), *h0_strides, *dh.stride(), *init_strides,
        HAS_H0=h0 is not None, HAS_INIT=init is not None,
    )
    return dx, da, dh0


# --------------------------------------------------------------------------------------------------
# Autograd, as a custom op: torch.compile sees one opaque node per pass, so the scan causes no graph break.
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("lrnn::associative_scan_fwd", mutates_args=())
def _scan_fwd_op(x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None, chunk_t: int) -> tuple[torch.Tensor, torch.Tensor]:
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
    x, a, h0, chunk_t = inputs
    ctx.save_for_backward(a, output[0], h0)
    ctx.chunk_t = chunk_t


def _backward(ctx, dh, dh_T):
    a, h, h0 = ctx.saved_tensors
    dx, da, dh0 = _scan_bwd_op(a, h, h0, dh, dh_T, ctx.chunk_t)
    return dx, da, dh0 if h0 is not None else None, None


_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def linear_scan_associative(x, a, h0=None, output_final_state=False, *, chunk_t=None):
    """`kernels.linear_scan(impl="triton")` without the input checks.

    chunk_t: rows of T per program (None: chosen by shape; < T forces the T-parallel path).

    Under torch.compile the scan is the custom op above. In eager mode the same launchers run through a plain
    autograd.Function, which skips the custom op's Python dispatch: on an H100 host the custom op's forward took
    138 µs of host time against 71 µs for the launcher alone, and its forward + backward 774 µs against 322 µs
    for the sequential scan's autograd.Function (`kernels/benchmarks/host_time.py`, results/host_time_h100.log):
    more than the kernels take at small shapes.
    """
    if torch.compiler.is_compiling():
        h, h_T = _scan_fwd_op(x, a, h0, chunk_t or 0)
        return h, h_T if output_final_state else None
    return apply_scan(x, a, h0, output_final_state, associative_scan_fwd, associative_scan_bwd, chunk_t=chunk_t)
