"""The gated recurrence's gate, in plain PyTorch (no Triton import):

    a_t = lb + (1 - lb) σ(f_t + b),    x_t = (1 - a_t) v_t = (1 - lb) σ(-(f_t + b)) v_t,

with (a_t, x_t) = (0, v_t) where a document starts. `Gate` carries its parameters to the kernels, which compute it in
registers (gated_scan.py); `gate_pairs` computes it as tensors: the oracle of the fused kernels, what the unfused
implementations scan, and a decoding step's gate.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Gate(NamedTuple):
    """The gate's parameters, which the kernels take with the inputs (v, f) in place of (x, a).

    bias: (D,) forget bias; lower_bound: (D,) or (1,) gate lower bound (a stride of 0 broadcasts it); doc_start:
    (B, T) bool, True where a document starts, or None."""

    bias: torch.Tensor
    lower_bound: torch.Tensor
    doc_start: torch.Tensor | None


def gate_pairs(f: torch.Tensor, v: torch.Tensor, gate: Gate) -> tuple[torch.Tensor, torch.Tensor]:
    """f, v: (B, T, D), or (B, D) for one step with doc_start (B,) -> (a, x = (1 - a) v), each of f's shape, in
    float32 (float64 for float64 inputs)."""
    acc = torch.float64 if f.dtype == torch.float64 else torch.float32
    z = f.to(acc) + gate.bias.to(acc)
    lb = gate.lower_bound.to(acc)
    a = lb + (1 - lb) * torch.sigmoid(z)
    x = (1 - lb) * torch.sigmoid(-z) * v.to(acc)
    if gate.doc_start is not None:
        start = gate.doc_start[..., None]
        a = a.masked_fill(start, 0.0)
        x = torch.where(start, v.to(acc), x)
    return a, x
