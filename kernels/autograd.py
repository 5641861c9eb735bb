"""Autograd for every scan implementation, in plain PyTorch (no Triton import).

An implementation is a pair of plain launcher functions:

    forward(x, a, h0, output_final_state) -> (h, h_T)          h: (B, T, D) x.dtype, h_T: (B, D) fp32 | None
    backward(a, h, h0, dh, dh_T) -> (dx, da, dh0)              dh0 is None when h0 is None

The backward needs only a, h and h0 (not x): dh_t = dh_t^out + a_{t+1} dh_{t+1}, dx_t = dh_t,
da_t = dh_t h_{t-1}, dh0 = a_1 dh_1. No second forward is run.

Eager calls go through a plain autograd.Function, which costs less host time than a custom op's dispatch (tens of
µs a call: more than the kernels take at small shapes), and where no gradient can flow the forward runs alone.
"""

from __future__ import annotations

from typing import Callable

import torch


def wants_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd would record a call on these tensors: grad mode on and one of them requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


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
    off, or no input requires one) the forward runs alone: autograd.Function.apply costs tens of µs of host time."""
    if not wants_grad(x, a, h0):
        return forward(x, a, h0, output_final_state, **opts)
    out = LinearScanFunction.apply(x, a, h0, output_final_state, forward, backward, opts)
    return out if output_final_state else (out, None)
