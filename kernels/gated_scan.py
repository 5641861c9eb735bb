"""The gated recurrence, with its gate computed inside the scan:

    a_t = lb + (1 - lb) σ(f_t + b),    1 - a_t = (1 - lb) σ(-(f_t + b)),    h_t = a_t ⊙ h_{t-1} + (1 - a_t) ⊙ v_t,

and a_t = 0, 1 - a_t = 1 where a document starts. f is the gate's pre-activation, v the input, b the forget bias
and lb the gate's lower bound (HGRN, Qin et al. 2023). 1 - a_t is computed as σ(-(f + b)), never as 1 - a, which
cancels to zero in float32 when a ≈ 1.

Computed apart, the gate is a chain of elementwise float32 tensors (σ, the lower bound, (1 - a) v, the document
masks) that the scan reads back at 8 bytes per element per tensor, and that autograd keeps. Here the Triton kernels
read f and v as they are (2 bytes each in bf16 training), compute (a_t, (1 - a_t) v_t) in registers, and scan them
with a float32 state; the backward recomputes the gate from f rather than saving it, and writes

    dv_t = (1 - a_t) g_t,    df_t = (1 - lb) σ(z_t) σ(-z_t) g_t (h_{t-1} - v_t)    (z = f + b; dv = g, df = 0 at a start)

in one pass, from the reverse scan's g_t = dh_t (associative_scan.py and lookback_scan.py, their GATED flag).
db = Σ_{B,T} df. The fused kernels serve the one-chunk and look-back paths; the chunked path (torch's
deterministic algorithms at long T with a small B·D) computes the gate in PyTorch (`gate_pairs`) around the plain
chunked scan.
"""

from __future__ import annotations

import torch

from .associative_scan import associative_scan_bwd, associative_scan_fwd
from .dispatch import plan_for
from .gate import Gate, gate_pairs
from .lookback_scan import lookback_scan_bwd, lookback_scan_fwd


def gated_scan_fwd(v, f, h0, output_final_state, gate: Gate):
    """v, f: (B, T, D); h0: (B, D) | None -> h: (B, T, D) v.dtype, h_T: (B, D) fp32 | None."""
    p = plan_for(False, v, f, gated=True)
    if p.path == "lookback":
        return lookback_scan_fwd(v, f, h0, output_final_state, config=p.tile, gate=gate)
    if p.path == "one-chunk":
        return associative_scan_fwd(v, f, h0, output_final_state, chunk_t=p.chunk_t, config=p.tile, gate=gate)
    a, x = gate_pairs(f, v, gate)
    h, h_T = associative_scan_fwd(x, a, h0, output_final_state, chunk_t=p.chunk_t, config=p.tile)
    return h.to(v.dtype), h_T


def gated_scan_bwd(f, h, h0, dh, dh_T, gate: Gate, v):
    """f, h, dh, v: (B, T, D); h0, dh_T: (B, D) | None -> dv: (B, T, D) v.dtype, df: (B, T, D) f.dtype,
    dh0: (B, D) h0.dtype | None."""
    p = plan_for(True, f, dh, v, gated=True)
    if p.path == "lookback":
        return lookback_scan_bwd(f, h, h0, dh, dh_T, config=p.tile, gate=gate, v=v)
    if p.path == "one-chunk":
        return associative_scan_bwd(f, h, h0, dh, dh_T, chunk_t=p.chunk_t, config=p.tile, gate=gate, v=v)
    z = f.float() + gate.bias.float()
    lb = gate.lower_bound.float()
    s, s_neg = torch.sigmoid(z), torch.sigmoid(-z)
    start = None if gate.doc_start is None else gate.doc_start[..., None]
    a = lb + (1 - lb) * s  # gate_pairs' a, with the sigmoids kept for the gradients
    if start is not None:
        a = a.masked_fill(start, 0.0)
    dx, da, dh0 = associative_scan_bwd(a, h, h0, dh, dh_T, chunk_t=p.chunk_t, config=p.tile)
    dv = (1 - lb) * s_neg * dx
    df = (1 - lb) * s * s_neg * (da - dx * v.float())
    if start is not None:
        dv = torch.where(start, dx, dv)
        df = df.masked_fill(start, 0.0)
    return dv.to(v.dtype), df.to(f.dtype), dh0
