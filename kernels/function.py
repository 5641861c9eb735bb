"""The Triton scans' routing, and their torch.library custom ops.

Each pass takes the path dispatch.py plans for it. Eager calls go through plain autograd.Functions (autograd.py's,
and GatedScanFunction here); under torch.compile the Triton scans are torch.library custom ops with the same setup
and backward, so a compiled model has no graph break at the scan. The gated recurrence's launcher pair takes (v, f)
and the gate, and its backward returns (dv, df, dh0) (gated_scan.py).
"""

from __future__ import annotations

import torch

from .associative_scan import associative_scan_bwd, associative_scan_fwd
from .autograd import apply_scan, wants_grad
from .dispatch import plan_for
from .gate import Gate
from .gated_scan import gated_scan_bwd, gated_scan_fwd
from .lookback_scan import lookback_scan_bwd, lookback_scan_fwd


# --------------------------------------------------------------------------------------------------
# The Triton scan ("associative"): each pass takes the path dispatch.py plans for it.
# --------------------------------------------------------------------------------------------------


def triton_scan_fwd(x, a, h0, output_final_state, chunk_t=None):
    """x, a: (B, T, D); h0: (B, D) | None -> (h, h_T | None). chunk_t: force the chunked (or one-chunk) path."""
    if chunk_t is None:
        p = plan_for(False, x, a)
        if p.path == "lookback":
            return lookback_scan_fwd(x, a, h0, output_final_state, config=p.tile)
        return associative_scan_fwd(x, a, h0, output_final_state, chunk_t=p.chunk_t, config=p.tile)
    return associative_scan_fwd(x, a, h0, output_final_state, chunk_t=chunk_t)


def triton_scan_bwd(a, h, h0, dh, dh_T, chunk_t=None):
    """a, h, dh: (B, T, D); h0, dh_T: (B, D) | None -> (dx, da, dh0 | None)."""
    if chunk_t is None:
        p = plan_for(True, a, dh)
        if p.path == "lookback":
            return lookback_scan_bwd(a, h, h0, dh, dh_T, config=p.tile)
        return associative_scan_bwd(a, h, h0, dh, dh_T, chunk_t=p.chunk_t, config=p.tile)
    return associative_scan_bwd(a, h, h0, dh, dh_T, chunk_t=chunk_t)


@torch.library.custom_op("lrnn::triton_scan_fwd", mutates_args=())
def _scan_fwd_op(x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None, chunk_t: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """-> h (B, T, D) x.dtype, h_T (B, D) fp32 (always written: B·D floats cost nothing)."""
    return triton_scan_fwd(x, a, h0, True, chunk_t=chunk_t or None)


@_scan_fwd_op.register_fake
def _(x, a, h0, chunk_t):
    B, T, D = x.shape
    return x.new_empty(B, T, D), x.new_empty(B, D, dtype=torch.float32)


@torch.library.custom_op("lrnn::triton_scan_bwd", mutates_args=())
def _scan_bwd_op(a: torch.Tensor, h: torch.Tensor, h0: torch.Tensor | None, dh: torch.Tensor,
                 dh_T: torch.Tensor | None, chunk_t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> dx, da (B, T, D) a.dtype, dh0 (B, D) h0.dtype (empty (0,) when h0 is None)."""
    dx, da, dh0 = triton_scan_bwd(a, h, h0, dh, dh_T, chunk_t=chunk_t or None)
    return dx, da, dh0 if dh0 is not None else a.new_empty(0)


@_scan_bwd_op.register_fake
def _(a, h, h0, dh, dh_T, chunk_t):
    # contiguous, as the kernels write them (empty_like would keep a transposed input's strides)
    return a.new_empty(a.shape), a.new_empty(a.shape), h0.new_empty(h0.shape) if h0 is not None else a.new_empty(0)


def _scan_setup_context(ctx, inputs, output):
    """Saves a (B, T, D), h (B, T, D) and h0 (B, D) | None: the backward needs no second forward."""
    x, a, h0, chunk_t = inputs
    ctx.save_for_backward(a, output[0], h0)
    ctx.chunk_t = chunk_t


def _scan_backward(ctx, dh, dh_T):
    """dh (B, T, D), dh_T (B, D) | None -> gradients of (x, a, h0, chunk_t)."""
    a, h, h0 = ctx.saved_tensors
    dx, da, dh0 = _scan_bwd_op(a, h, h0, dh, dh_T, ctx.chunk_t)
    return dx, da, dh0 if h0 is not None else None, None


_scan_fwd_op.register_autograd(_scan_backward, setup_context=_scan_setup_context)


def linear_scan_triton(x, a, h0=None, output_final_state=False, *, chunk_t=None):
    """`kernels.linear_scan(impl="associative")` without the input checks: x, a: (B, T, D); h0: (B, D) | None ->
    (h, h_T | None). chunk_t: rows of T per program, forcing the chunked path (< T) or one chunk (>= T) in both
    passes (None: dispatch.py plans each pass)."""
    if torch.compiler.is_compiling():
        h, h_T = _scan_fwd_op(x, a, h0, chunk_t or 0)
        return h, h_T if output_final_state else None
    return apply_scan(x, a, h0, output_final_state, triton_scan_fwd, triton_scan_bwd, chunk_t=chunk_t)


# --------------------------------------------------------------------------------------------------
# The fused gated scan
# --------------------------------------------------------------------------------------------------


class GatedScanFunction(torch.autograd.Function):
    """(f, v, h0, bias, lower_bound, doc_start) -> (h, h_T); saves f, v, h and h0, and recomputes the gate."""

    @staticmethod
    def forward(ctx, f, v, h0, bias, lower_bound, doc_start, output_final_state: bool):
        gate = Gate(bias, lower_bound, doc_start)
        h, h_T = gated_scan_fwd(v, f, h0, output_final_state, gate)
        ctx.save_for_backward(f, v, h, h0, bias, lower_bound, doc_start)
        return (h, h_T) if output_final_state else h

    @staticmethod
    def backward(ctx, dh, dh_T=None):
        f, v, h, h0, bias, lower_bound, doc_start = ctx.saved_tensors
        dv, df, dh0 = gated_scan_bwd(f, h, h0, dh, dh_T, Gate(bias, lower_bound, doc_start), v)
        dbias = df.sum(dim=(0, 1), dtype=torch.float32).to(bias.dtype) if ctx.needs_input_grad[3] else None
        return df, dv, dh0, dbias, None, None, None


@torch.library.custom_op("lrnn::gated_scan_fwd", mutates_args=())
def _gated_fwd_op(f: torch.Tensor, v: torch.Tensor, h0: torch.Tensor | None, bias: torch.Tensor,
                  lower_bound: torch.Tensor, doc_start: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> h (B, T, D) v.dtype, h_T (B, D) fp32."""
    return gated_scan_fwd(v, f, h0, True, Gate(bias, lower_bound, doc_start))


@_gated_fwd_op.register_fake
def _(f, v, h0, bias, lower_bound, doc_start):
    B, T, D = v.shape
    return v.new_empty(B, T, D), v.new_empty(B, D, dtype=torch.float32)


@torch.library.custom_op("lrnn::gated_scan_bwd", mutates_args=())
def _gated_bwd_op(f: torch.Tensor, v: torch.Tensor, h: torch.Tensor, h0: torch.Tensor | None, dh: torch.Tensor,
                  dh_T: torch.Tensor | None, bias: torch.Tensor, lower_bound: torch.Tensor,
                  doc_start: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> df (f's dtype), dv (v's dtype), dh0 (h0's dtype, empty (0,) without h0), dbias (bias's dtype), each
    contiguous (the chunked path computes dv and df in PyTorch, in the inputs' strides)."""
    dv, df, dh0 = gated_scan_bwd(f, h, h0, dh, dh_T, Gate(bias, lower_bound, doc_start), v)
    dbias = df.sum(dim=(0, 1), dtype=torch.float32).to(bias.dtype)
    return df.contiguous(), dv.contiguous(), dh0 if dh0 is not None else v.new_empty(0), dbias


@_gated_bwd_op.register_fake
def _(f, v, h, h0, dh, dh_T, bias, lower_bound, doc_start):
    return (f.new_empty(f.shape), v.new_empty(v.shape), h0.new_empty(h0.shape) if h0 is not None else v.new_empty(0),
            bias.new_empty(bias.shape))


def _gated_setup_context(ctx, inputs, output):
    f, v, h0, bias, lower_bound, doc_start = inputs
    ctx.save_for_backward(f, v, output[0], h0, bias, lower_bound, doc_start)


def _gated_backward(ctx, dh, dh_T):
    f, v, h, h0, bias, lower_bound, doc_start = ctx.saved_tensors
    df, dv, dh0, dbias = _gated_bwd_op(f, v, h, h0, dh, dh_T, bias, lower_bound, doc_start)
    return df, dv, dh0 if h0 is not None else None, dbias, None, None


_gated_fwd_op.register_autograd(_gated_backward, setup_context=_gated_setup_context)


def gated_scan_triton(f, v, bias, lower_bound, doc_start=None, h0=None, output_final_state=False):
    """`kernels.gated_linear_scan(impl="associative")` without the input checks -> (h, h_T | None)."""
    bias = bias.contiguous()  # the kernels read the (D,) bias at unit stride; a view's copy passes its gradient on
    if torch.compiler.is_compiling():
        h, h_T = _gated_fwd_op(f, v, h0, bias, lower_bound, doc_start)
        return h, h_T if output_final_state else None
    if not wants_grad(f, v, h0, bias):
        return gated_scan_fwd(v, f, h0, output_final_state, Gate(bias, lower_bound, doc_start))
    out = GatedScanFunction.apply(f, v, h0, bias, lower_bound, doc_start, output_final_state)
    return out if output_final_state else (out, None)
