"""Sequential scan in Triton: one program per (batch row, BLOCK_D channels) loops over t.

The seed's algorithm, kept as the simple baseline the associative scan is measured against: each step
loads x_t and a_t for BLOCK_D channels, updates the float32 state h = a_t h + x_t and stores it.
It has no parallelism along T, so it needs B · D / BLOCK_D programs to fill the GPU.
The fused backward walks t in reverse: dh = dh_t^out + a_{t+1} dh, dx_t = dh, da_t = dh h_{t-1}, and
finally dh0 = a_1 dh.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .autograd import apply_scan


@triton.jit
def _seq_fwd_kernel(
    # pointers
    x_ptr, a_ptr,  # (B, T, D) inputs, any strides
    h0_ptr,  # (B, D) initial state, any strides; unused if not HAS_H0
    h_ptr,  # (B, T, D) output, contiguous
    h_T_ptr,  # (B, D) fp32 final state, contiguous; unused if not STORE_FINAL
    # sizes
    T, D,
    # strides, in elements
    stride_x_b, stride_x_t, stride_x_d,
    stride_a_b, stride_a_t, stride_a_d,
    stride_h0_b, stride_h0_d,
    # meta-parameters
    BLOCK_D: tl.constexpr, HAS_H0: tl.constexpr, STORE_FINAL: tl.constexpr,
):
    pid_d, pid_b = tl.program_id(0), tl.program_id(1)
    b = pid_b.to(tl.int64)
    offs_d = (pid_d * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    mask_d = offs_d < D
    x_col = x_ptr + b * stride_x_b + offs_d * stride_x_d
    a_col = a_ptr + b * stride_a_b + offs_d * stride_a_d
    h_col = h_ptr + b * T * D + offs_d
    if HAS_H0:
        h = tl.load(h0_ptr + b * stride_h0_b + offs_d * stride_h0_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_D], dtype=tl.float32)
    for _ in range(T):  # advance pointers (64-bit) rather than index: t * stride may pass 2^31
        h = tl.load(a_col, mask=mask_d, other=0.0).to(tl.float32) * h + tl.load(x_col, mask=mask_d, other=0.0)
        tl.store(h_col, h.to(h_ptr.dtype.element_ty), mask=mask_d)
        x_col += stride_x_t
        a_col += stride_a_t
        h_col += D
    if STORE_FINAL:
        tl.store(h_T_ptr + b * D + offs_d, h, mask=mask_d)


@triton.jit
def _seq_bwd_kernel(
    # pointers
    a_ptr,  # (B, T, D) gates, any strides
    h_ptr,  # (B, T, D) forward states, contiguous
    h0_ptr,  # (B, D) initial state, any strides; unused if not HAS_H0
    dh_ptr,  # (B, T, D) gradient of h, any strides
    dh_T_ptr,  # (B, D) gradient of h_T, any strides; unused if not HAS_DH_T
    dx_ptr, da_ptr,  # (B, T, D) outputs, contiguous
    dh0_ptr,  # (B, D) output, contiguous; unused if not HAS_H0
    # sizes
    T, D,
    # strides, in elements
    stride_a_b, stride_a_t, stride_a_d,
    stride_h0_b, stride_h0_d,
    stride_dh_b, stride_dh_t, stride_dh_d,
    stride_dh_T_b, stride_dh_T_d,
    # meta-parameters
    BLOCK_D: tl.constexpr, HAS_H0: tl.constexpr, HAS_DH_T: tl.constexpr,
):
    pid_d, pid_b = tl.program_id(0), tl.program_id(1)
    b = pid_b.to(tl.int64)
    offs_d = (pid_d * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    mask_d = offs_d < D
    a_col = a_ptr + b * stride_a_b + offs_d * stride_a_d
    dh_col = dh_ptr + b * stride_dh_b + offs_d * stride_dh_d
    h_col = h_ptr + b * T * D + offs_d
    dx_col = dx_ptr + b * T * D + offs_d
    da_col = da_ptr + b * T * D + offs_d
    if HAS_DH_T:
        dh = tl.load(dh_T_ptr + b * stride_dh_T_b + offs_d * stride_dh_T_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        dh = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_H0:
        h_init = tl.load(h0_ptr + b * stride_h0_b + offs_d * stride_h0_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        h_init = tl.zeros([BLOCK_D], dtype=tl.float32)
    # walk t = T-1 .. 0 with pointers at step t; a_{t+1} is 1 past the end so dh_T seeds step T
    last = tl.full([], T - 1, tl.int64)  # 64-bit: (T - 1) * D may pass 2^31 (not .to(): T=1 is a constexpr)
    a_col += last * stride_a_t
    dh_col += last * stride_dh_t
    h_col += (last - 1) * D  # h_{t-1}
    dx_col += last * D
    da_col += last * D
    a_next = tl.full([BLOCK_D], 1.0, dtype=tl.float32)
    for i in range(T):
        dh = tl.load(dh_col, mask=mask_d, other=0.0).to(tl.float32) + a_next * dh
        has_prev = i < T - 1  # t >= 1; at t = 0 read row 0 (in bounds) and use h0 instead
        h_prev = tl.load(tl.where(has_prev, h_col, h_col + D), mask=mask_d, other=0.0).to(tl.float32)
        h_prev = tl.where(has_prev, h_prev, h_init)
        tl.store(dx_col, dh.to(dx_ptr.dtype.element_ty), mask=mask_d)
        tl.store(da_col, (dh * h_prev).to(da_ptr.dtype.element_ty), mask=mask_d)
        a_next = tl.load(a_col, mask=mask_d, other=0.0).to(tl.float32)
        a_col -= stride_a_t
        dh_col -= stride_dh_t
        h_col -= D
        dx_col -= D
        da_col -= D
    if HAS_H0:
        tl.store(dh0_ptr + b * D + offs_d, (a_next * dh).to(dh0_ptr.dtype.element_ty), mask=mask_d)


def _block_d(D: int) -> int:
    return min(256, max(16, triton.next_power_of_2(D)))


def sequential_scan_fwd(x, a, h0, output_final_state, block_d=None):
    """x, a: (B, T, D); h0: (B, D) | None -> h: (B, T, D) x.dtype, h_T: (B, D) fp32 | None."""
    B, T, D = x.shape
    BLOCK_D = block_d or _block_d(D)
    h = torch.empty(B, T, D, dtype=x.dtype, device=x.device)
    h_T = torch.empty(B, D, dtype=torch.float32, device=x.device) if output_final_state else None
    h0_strides = h0.stride() if h0 is not None else (0, 0)
    _seq_fwd_kernel[(triton.cdiv(D, BLOCK_D), B)](
        x, a, h0, h, h_T, T, D, *x.stride(), *a.stride(), *h0_strides,
        BLOCK_D=BLOCK_D, HAS_H0=h0 is not None, STORE_FINAL=output_final_state,
    )
    return h, h_T


def sequential_scan_bwd(a, h, h0, dh, dh_T, block_d=None):
    """a, h, dh: (B, T, D); h0, dh_T: (B, D) | None -> dx, da: (B, T, D) a.dtype, dh0: (B, D) h0.dtype | None."""
    B, T, D = a.shape
    BLOCK_D = block_d or _block_d(D)
    dx = torch.empty(B, T, D, dtype=a.dtype, device=a.device)
    da = torch.empty(B, T, D, dtype=a.dtype, device=a.device)
    dh0 = torch.empty(B, D, dtype=h0.dtype, device=a.device) if h0 is not None else None
    h0_strides = h0.stride() if h0 is not None else (0, 0)
    dh_T_strides = dh_T.stride() if dh_T is not None else (0, 0)
    _seq_bwd_kernel[(triton.cdiv(D, BLOCK_D), B)](
        a, h, h0, dh, dh_T, dx, da, dh0, T, D,
        *a.stride(), *h0_strides, *dh.stride(), *dh_T_strides,
        BLOCK_D=BLOCK_D, HAS_H0=h0 is not None, HAS_DH_T=dh_T is not None,
    )
    return dx, da, dh0


def linear_scan_sequential(x, a, h0=None, output_final_state=False, *, block_d=None):
    """`kernels.linear_scan(impl="sequential")` without the input checks. block_d overrides the channel tile."""
    return apply_scan(x, a, h0, output_final_state, sequential_scan_fwd, sequential_scan_bwd, block_d=block_d)
