"""Random scan inputs with realistic gates, and the float64 oracle with its gradients."""

from __future__ import annotations

import torch

from kernels import dispatch
from kernels.reference import linear_scan_reference


def make_inputs(B, T, D, dtype, gen, device, with_h0=True, h0_dtype=torch.float32):
    """x ~ N(0, 1); a in (0, 1) with every third channel near 1 (long memory) and ~5% exact 0s and 1s."""
    x = torch.randn(B, T, D, generator=gen)
    a = torch.rand(B, T, D, generator=gen)
    a[..., ::3] = 1 - 1e-3 * torch.rand(B, T, len(range(0, D, 3)), generator=gen)
    u = torch.rand(B, T, D, generator=gen)
    a = torch.where(u < 0.05, 0.0, torch.where(u > 0.95, 1.0, a))
    h0 = torch.randn(B, D, generator=gen).to(device, h0_dtype) if with_h0 else None
    dy = torch.randn(B, T, D, generator=gen)
    dh_T = torch.randn(B, D, generator=gen)
    to = dict(device=device, dtype=dtype)
    return x.to(**to), a.to(**to), h0, dy.to(**to), dh_T.to(device)


def outputs_and_grads(scan, x, a, h0, dy, dh_T, output_final_state=True):
    """[h, h_T, dx, da, dh0] (None where absent) of `scan`, seeded by (h * dy).sum() + (h_T * dh_T).sum(). The
    leaves are x, a and h0 as laid out (detached, not cloned: a clone of a D-slice or a batch-strided view would be
    contiguous, and the scan would never read through the view's strides)."""
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, a, h0)]
    h, h_T = scan(*leaves, output_final_state)
    loss = (h.float() * dy.float()).sum()
    if output_final_state:
        loss = loss + (h_T * dh_T).sum()
    inputs = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(loss, inputs))
    dx, da = next(grads), next(grads)
    dh0 = next(grads) if h0 is not None else None
    return [h, h_T, dx, da, dh0]


def oracle(x, a, h0, dy, dh_T, output_final_state=True, scan=linear_scan_reference):
    """The reference loop in float64 on the same (already rounded) inputs. scan: another float64 scan (at GPU sizes the
    doubling scan: the loop's T steps of autograd would take minutes)."""
    f64 = [t.double() if t is not None else None for t in (x, a, h0, dy, dh_T)]
    return outputs_and_grads(scan, *f64, output_final_state)


def rel_err(out: torch.Tensor, ref: torch.Tensor, scale: float = 1e-30) -> float:
    """‖out - ref‖ / max(‖ref‖, scale) in float64 (NaN anywhere in out gives NaN). scale = 1, the inputs' order
    of magnitude, makes it an absolute error where the reference is smaller than that."""
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(scale)).item()


def _round_like_the_kernels(t: torch.Tensor, dtype: torch.dtype, interpreted: bool) -> torch.Tensor:
    """fp32 -> dtype as the kernels' stores round: to nearest on a GPU. The Triton interpreter truncates
    fp32 -> bf16 (keeps the high 16 bits; seen with triton 3.9), so there the baseline truncates too."""
    if interpreted and dtype == torch.bfloat16 and t.dtype == torch.float32:
        return (t.contiguous().view(torch.int32) & -65536).view(torch.float32).to(dtype)
    return t.to(dtype)


def reference_in_dtype(x, a, h0, dy, dh_T, output_final_state, interpreted, scan=linear_scan_reference):
    """The reference loop's outputs and gradients, each rounded once to its tensor's dtype: the error
    budget of an exact fp32-accumulating scan that stores in the input dtype. Like the kernels, whose
    backward reads the h the forward stored, da_t = dh_t h_{t-1} takes h_{t-1} rounded to x's dtype."""
    f32 = [t.float() if t is not None else None for t in (x, a, h0)]
    out = [t.detach() if t is not None else None
           for t in outputs_and_grads(scan, *f32, dy.float(), dh_T, output_final_state)]
    h_stored = _round_like_the_kernels(out[0], x.dtype, interpreted).float()  # (B, T, D)
    h_first = f32[2][:, None] if h0 is not None else torch.zeros_like(h_stored[:, :1])  # (B, 1, D): h_0
    out[3] = out[2] * torch.cat([h_first, h_stored[:, :-1]], dim=1)  # da = dh ⊙ h_{t-1}, dh = dx
    dtypes = [x.dtype, torch.float32, x.dtype, a.dtype, h0.dtype if h0 is not None else None]
    return [None if t is None else _round_like_the_kernels(t, d, interpreted) for t, d in zip(out, dtypes)]


def force_path(path: str, monkeypatch) -> None:
    """Make the dispatcher take `path` ("one-chunk", "lookback" or "chunked") at a test's small size; the plans'
    cache is cleared (clear it again when the test ends: the patched rules' plans must not outlive it)."""
    if path == "lookback":  # every (batch row, channel block) program on an SM of its own: an uneven fill
        monkeypatch.setattr(dispatch, "num_sms", lambda device: 10**4)
        monkeypatch.setattr(dispatch, "LOOKBACK_MIN_T", 1)
    elif path == "chunked":  # chunks of 16 rows, under deterministic algorithms (no look-back)
        monkeypatch.setattr(dispatch, "chunk_len", lambda B, T, D, block_d, sms: 16)
        monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    else:
        monkeypatch.setattr(dispatch, "num_sms", lambda device: 1)
    dispatch.plan.cache_clear()
