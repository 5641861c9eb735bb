"""Cross-entropy of a linear head without the (N, V) logits: the LM head and the loss, fused, in chunks of tokens.

    nll = Σ_i [logsumexp(x_i Wᵀ) − (x_i Wᵀ)[y_i]]        x: (N, D), W: (V, D), y: (N,)

A 32k vocabulary at 32k tokens a step makes 1 G logits: 2 GB in bf16, 4 GB more for their float32 softmax, and
as much again for their gradient, all alive at once when the head and `F.cross_entropy` run one after the other.
`chunked_linear_cross_entropy` computes the logits of CHUNK tokens at a time, keeps only each token's
log-sum-exp (N floats), and recomputes the chunk's logits in the backward to form (softmax − onehot) Wᵀ and its
weight gradient: one extra head matmul in exchange for never holding more than one chunk's logits (the approach of
Liger's and fla's fused linear cross-entropy, in plain PyTorch). The matmuls run in the autocast dtype when
autocast is on, the softmax in float32.
"""

from __future__ import annotations

import torch

MAX_CHUNK_ELEMENTS = 2**26
"""Logits per chunk (tokens × vocabulary): 256 MB in float32."""


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, ignore_index: int, chunk: int, dtype: torch.dtype):
        N = x.shape[0]
        lse = torch.empty(N, dtype=torch.float32, device=x.device)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        w = weight.to(dtype)
        for i in range(0, N, chunk):
            logits = (x[i : i + chunk].to(dtype) @ w.t()).float()  # (n, V)
            y = targets[i : i + chunk]
            keep = y != ignore_index
            lse[i : i + chunk] = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, y.clamp_min(0)[:, None])[:, 0]
            total = total + ((lse[i : i + chunk] - picked) * keep).sum()
        ctx.save_for_backward(x, weight, targets, lse)
        ctx.ignore_index, ctx.chunk, ctx.dtype = ignore_index, chunk, dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        x, weight, targets, lse = ctx.saved_tensors
        dtype, chunk = ctx.dtype, ctx.chunk
        w = weight.to(dtype)
        dx = torch.empty_like(x)
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for i in range(0, x.shape[0], chunk):
            x_c = x[i : i + chunk].to(dtype)
            y = targets[i : i + chunk]
            keep = (y != ctx.ignore_index)[:, None]
            # softmax (n, V), in place in the logits' float32 buffer: one chunk-sized float32 array, not three
            probs = (x_c @ w.t()).float().sub_(lse[i : i + chunk, None]).exp_()
            probs.scatter_add_(1, y.clamp_min(0)[:, None], -keep.to(probs.dtype))
            g = probs.mul_(keep.to(probs.dtype) * grad_total).to(dtype)  # d nll / d logits
            dx[i : i + chunk] = (g @ w).to(x.dtype)
            dw += (g.t() @ x_c).float()
        return dx, dw.to(weight.dtype), None, None, None, None


def chunked_linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                 ignore_index: int = -100) -> torch.Tensor:
    """x: (N, D) features, weight: (V, D) the head, targets: (N,) long -> () float32, the summed NLL in nats over the
    targets other than ignore_index, in chunks of MAX_CHUNK_ELEMENTS // V tokens (at least 1)."""
    chunk = max(1, MAX_CHUNK_ELEMENTS // weight.shape[0])
    return _ChunkedLinearCrossEntropy.apply(x, weight, targets, ignore_index, chunk, _compute_dtype(x))
