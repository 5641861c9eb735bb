"""The oracle: h_t = a_t ⊙ h_{t-1} + x_t as a plain loop over t, accumulated in float32.

Slow on purpose and never optimised: every other implementation is tested against it, and autograd
through this loop is the reference for every gradient.
"""

from __future__ import annotations

import torch


def linear_scan_reference(
    x: torch.Tensor,
    a: torch.Tensor,
    h0: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x, a: (B, T, D); h0: (B, D) or None -> h: (B, T, D) in x.dtype, h_T: (B, D) float32 or None.

    Accumulates in float32 (float64 inputs stay float64) and casts h back to x.dtype at the end.
    """
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    B, T, D = x.shape
    h_t = torch.zeros(B, D, dtype=acc_dtype, device=x.device) if h0 is None else h0.to(acc_dtype)
    hs = []
    for t in range(T):
        h_t = a[:, t].to(acc_dtype) * h_t + x[:, t].to(acc_dtype)
        hs.append(h_t)
    h = torch.stack(hs, dim=1)
    h_T = h_t if output_final_state else None
    return h.to(x.dtype), h_T
