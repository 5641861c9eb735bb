"""The autograd.Function of the sequential and the CPU scans: it saves (a, h, h0) and calls the launchers.
(The Triton associative scan uses it in eager mode, and registers the same pair as a torch.library custom op
for torch.compile.)

An implementation is a pair of plain launcher functions:

    forward(x, a, h0, output_final_state, **opts) -> (h, h_T)        h: (B, T, D) x.dtype, h_T: (B, D) fp32 | None
    backward(a, h, h0, dh, dh_T, **opts) -> (dx, da, dh0)           dh0 is None when h0 is None

The backward needs only a, h and h0 (not x): dh_t = dh_t^out + a_{t+1} dh_{t+1}, dx_t = dh_t,
da_t = dh_t h_{t-1}, dh0 = a_1 dh_1. No second forward is run.
"""

from __future__ import annotations

from typing import Callable

import torch


class LinearScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a, h0, output_final_state: bool, forward: Callable, backward: Callable, opts: dict):
        h, h_T = forward(x, a, h0, output_final_state, **opts)
        ctx.save_for_backward(a, h, h0)
        ctx.backward_fn, ctx.opts = backward, opts
        if h_T is None:
            return h
        return h, h_T

    @staticmethod
    def backward(ctx, dh, dh_T=None):
        a, h, h0 = ctx.saved_tensors
        dx, da, dh0 = ctx.backward_fn(a, h, h0, dh, dh_T, **ctx.opts)
        return dx, da, dh0, None, None, None, None


def apply_scan(x, a, h0, output_final_state: bool, forward: Callable, backward: Callable, **opts):
    """Run an implementation with autograd; always returns (h, h_T | None). Where no gradient can flow (grad mode
    off, or no input requires one) the forward runs alone: autograd.Function.apply costs tens of µs of host
    time, more than the kernels take at small shapes (NOTES #21)."""
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, a, h0))):
        return forward(x, a, h0, output_final_state, **opts)
    out = LinearScanFunction.apply(x, a, h0, output_final_state, forward, backward, opts)
    return out if output_final_state else (out, None)
