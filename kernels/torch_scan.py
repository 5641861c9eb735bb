"""A pure-PyTorch scan for the CPU: Hillis–Steele doubling, log2(T) vectorised steps, fp32 accumulation.

This is what `impl="auto"` runs on CPU tensors. Each step combines every element with the one k steps
back: (A, H)_t <- (A_{t-k} A_t, A_t H_{t-k} + H_t), k = 1, 2, 4, ... (Hillis & Steele 1986). It does
O(T log T) work, but in log2(T) large tensor ops rather than T small ones, so training on 2 CPU cores
is bounded by the matmuls, not the recurrence. The backward is the same scan run in reverse
(Martin & Cundy 2018): dh_t = dh_t^out + a_{t+1} dh_{t+1}.
"""

from __future__ import annotations

import torch

from .function import apply_scan


def _doubling_scan(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """x, a: (B, T, D) in the accumulation dtype -> h: (B, T, D) with h_t = a_t h_{t-1} + x_t, h_{-1} = 0."""
    h, A = x, a
    T, k = x.shape[1], 1
    while k < T:
        h = torch.cat([h[:, :k], torch.addcmul(h[:, k:], A[:, k:], h[:, :-k])], dim=1)
        if 2 * k < T:
            A = torch.cat([A[:, :k], A[:, k:] * A[:, :-k]], dim=1)
        k *= 2
    return h


def _acc(t: torch.Tensor) -> torch.Tensor:
    return t.double() if t.dtype == torch.float64 else t.float()


def torch_scan_fwd(x, a, h0, output_final_state):
    x32, a32 = _acc(x), _acc(a)
    if h0 is not None:
        # fold the initial state into the first input: h_1 = a_1 h0 + x_1
        x32 = torch.cat([torch.addcmul(x32[:, :1], a32[:, :1], _acc(h0)[:, None]), x32[:, 1:]], dim=1)
    h32 = _doubling_scan(x32, a32)
    h_T = h32[:, -1].clone() if output_final_state else None
    return h32.to(x.dtype), h_T


def torch_scan_bwd(a, h, h0, dh, dh_T):
    a32, dh32 = _acc(a), _acc(dh)
    if dh_T is not None:
        dh32 = torch.cat([dh32[:, :-1], dh32[:, -1:] + _acc(dh_T)[:, None]], dim=1)
    # reverse scan with gates shifted one step: g_t = dh_t^out + a_{t+1} g_{t+1}
    a_next = torch.cat([a32[:, 1:], torch.zeros_like(a32[:, :1])], dim=1)
    g = _doubling_scan(dh32.flip(1), a_next.flip(1)).flip(1)
    h_first = torch.zeros_like(g[:, :1]) if h0 is None else _acc(h0)[:, None]
    h_prev = torch.cat([h_first, _acc(h[:, :-1])], dim=1)
    dx = g.to(a.dtype)
    da = (g * h_prev).to(a.dtype)
    dh0 = None if h0 is None else (a32[:, 0] * g[:, 0]).to(h0.dtype)
    return dx, da, dh0


def linear_scan_torch(x, a, h0=None, output_final_state=False):
    """See `kernels.linear_scan`; x, a: (B, T, D), h0: (B, D) | None -> (h, h_T | None). Any device."""
    return apply_scan(x, a, h0, output_final_state, torch_scan_fwd, torch_scan_bwd)
