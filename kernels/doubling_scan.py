"""A pure-PyTorch scan: Hillis–Steele doubling, log2(T) vectorised steps, fp32 accumulation.

This is what `impl="auto"` runs on CPU tensors. Each step combines every element with the one k steps
back: (A, H)_t <- (A_{t-k} A_t, A_t H_{t-k} + H_t), k = 1, 2, 4, ... (Hillis & Steele 1986). It does
O(T log T) work, but in log2(T) large tensor ops rather than T small ones, so training on 2 CPU cores
is bounded by the matmuls, not the recurrence. The backward is the same scan run in reverse
(Martin & Cundy 2018): dh_t = dh_t^out + a_{t+1} dh_{t+1}.

Overflow. The doubling scan adds partial sums in another order than the loop, so where the loop overflows to
±inf and stays there, two partial sums of opposite infinite sign can meet and give NaN, and a gate product
that underflows to 0 can meet an infinite state. Channels whose result is not finite are therefore recomputed
by the loop, so that this scan returns what `reference.py` returns wherever that is ±inf or NaN.
"""

from __future__ import annotations

import torch

from .autograd import apply_scan
from .reference import linear_scan_reference


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


def _scan(x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """x, a: (B, T, D); h0: (B, D) | None, all in the accumulation dtype -> h: (B, T, D), the doubling scan, with
    the loop's result in every channel where the doubling one is not finite."""
    if h0 is not None:  # folded into the first input: h_1 = a_1 h0 + x_1
        h = _doubling_scan(torch.cat([torch.addcmul(x[:, :1], a[:, :1], h0[:, None]), x[:, 1:]], dim=1), a)
    else:
        h = _doubling_scan(x, a)
    bad = ~torch.isfinite(h).all(dim=1)  # (B, D)
    if bad.any():
        # the bad channels of (B, T, D) as N sequences (N, T, 1) for the reference loop
        rows = linear_scan_reference(x.transpose(1, 2)[bad][..., None], a.transpose(1, 2)[bad][..., None],
                                     None if h0 is None else h0[bad][:, None])[0][..., 0]
        h = h.transpose(1, 2).clone()
        h[bad] = rows
        h = h.transpose(1, 2)
    return h


def _acc(t: torch.Tensor) -> torch.Tensor:
    return t.double() if t.dtype == torch.float64 else t.float()


def doubling_scan_fwd(x, a, h0, output_final_state):
    """x, a: (B, T, D); h0: (B, D) | None -> h: (B, T, D) x.dtype, h_T: (B, D) fp32 (fp64 for fp64) | None."""
    h32 = _scan(_acc(x), _acc(a), None if h0 is None else _acc(h0))
    h_T = h32[:, -1].clone() if output_final_state else None
    return h32.to(x.dtype), h_T


def doubling_scan_bwd(a, h, h0, dh, dh_T):
    """a, h, dh: (B, T, D); h0, dh_T: (B, D) | None -> dx, da: (B, T, D) a.dtype, dh0: (B, D) h0.dtype | None."""
    a32, dh32 = _acc(a), _acc(dh)
    if dh_T is not None:
        dh32 = torch.cat([dh32[:, :-1], dh32[:, -1:] + _acc(dh_T)[:, None]], dim=1)
    # reverse scan with gates shifted one step: g_t = dh_t^out + a_{t+1} g_{t+1}
    a_next = torch.cat([a32[:, 1:], torch.zeros_like(a32[:, :1])], dim=1)
    g = _scan(dh32.flip(1), a_next.flip(1)).flip(1)
    h_first = torch.zeros_like(g[:, :1]) if h0 is None else _acc(h0)[:, None]
    h_prev = torch.cat([h_first, _acc(h[:, :-1])], dim=1)
    dx = g.to(a.dtype)
    da = (g * h_prev).to(a.dtype)
    dh0 = None if h0 is None else (a32[:, 0] * g[:, 0]).to(h0.dtype)
    return dx, da, dh0


def linear_scan_doubling(x, a, h0=None, output_final_state=False):
    """See `kernels.linear_scan`; x, a: (B, T, D), h0: (B, D) | None -> (h, h_T | None). Any device."""
    return apply_scan(x, a, h0, output_final_state, doubling_scan_fwd, doubling_scan_bwd)
