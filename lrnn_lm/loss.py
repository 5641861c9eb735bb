"""Cross-entropy of a linear head without the (N, V) logits: the LM head and the loss, fused, in chunks of tokens.

    nll = Σ_i [logsumexp(x_i Wᵀ) − (x_i Wᵀ)[y_i]]        x: (N, D), W: (V, D), y: (N,)

A 32k vocabulary at 32k tokens a step makes 1 G logits: 2 GB in bf16, 4 GB more for their float32 softmax, and
as much again for their gradient, all alive at once when the head and `F.cross_entropy` run one after the other.
`chunked_linear_cross_entropy` computes the logits of CHUNK tokens at a time, keeps only each token's
log-sum-exp (N floats), and recomputes the chunk's logits in the backward to form (softmax − onehot) Wᵀ and its
weight gradient: one extra head matmul in exchange for never holding more than one chunk's logits (the approach of
Liger's and fla's fused linear cross-entropy, in plain PyTorch). The matmuls run in the autocast dtype when
autocast is on, the softmax in float32.

Between the matmuls, each chunk's work is elementwise over (n, V): the log-sum-exp and the picked logit forward,
softmax − onehot backward. Eagerly that is a float32 copy of the logits and half a dozen passes over it, which at a
32k vocabulary cost about as much as the head's matmuls. Compiled (`compiled=True`, which `model.compile_blocks`
turns on), each of the two steps reads the chunk's logits once, in fused kernels, and writes only its result: the
log-sum-exp and the summed NLL forward, the logits' gradient in their dtype backward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

MAX_CHUNK_ELEMENTS = 2**26
"""Logits per chunk (tokens × vocabulary): 256 MB in float32."""


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def chunk_forward(logits: torch.Tensor, y: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: (n, V) any float dtype; y: (n,) targets (>= 0); keep: (n,) bool -> (lse (n,) float32, the chunk's
    summed NLL over kept targets, () float32)."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(1, y[:, None])[:, 0]
    return lse, ((lse - picked) * keep).sum()


def chunk_backward(logits: torch.Tensor, lse: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """logits: (n, V); lse: (n,) float32; y: (n,) targets (>= 0); scale: (n, 1) float32, the incoming gradient where
    the target is kept, else 0 -> d nll / d logits = (softmax − onehot(y)) · scale, (n, V) in logits' dtype."""
    probs = (logits.float() - lse[:, None]).exp_()  # (n, V) float32
    # the one-hot as a comparison, not a scatter: compiled, the whole step is then one elementwise kernel
    onehot = torch.arange(logits.shape[1], device=logits.device) == y[:, None]  # (n, V)
    return probs.sub_(onehot.to(probs.dtype)).mul_(scale).to(logits.dtype)


@functools.cache
def _compiled(step: Callable) -> Callable:
    """A chunk step under torch.compile, made once per process (a chunk of another length, such as a shorter last one,
    recompiles it once with the length dynamic)."""
    return torch.compile(step)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, ignore_index: int, chunk: int, dtype: torch.dtype, compiled: bool):
        N = x.shape[0]
        lse = torch.empty(N, dtype=torch.float32, device=x.device)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        w = weight.to(dtype)
        step = _compiled(chunk_forward) if compiled else chunk_forward
        for i in range(0, N, chunk):
            y = targets[i : i + chunk]
            lse[i : i + chunk], nll = step(x[i : i + chunk].to(dtype) @ w.t(), y.clamp_min(0), y != ignore_index)
            total = total + nll
        ctx.save_for_backward(x, weight, targets, lse)
        ctx.ignore_index, ctx.chunk, ctx.dtype, ctx.compiled = ignore_index, chunk, dtype, compiled
        return total

    @staticmethod
    def backward(ctx, grad_total):
        x, weight, targets, lse = ctx.saved_tensors
        dtype, chunk = ctx.dtype, ctx.chunk
        w = weight.to(dtype)
        dx = torch.empty_like(x)
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        step = _compiled(chunk_backward) if ctx.compiled else chunk_backward
        for i in range(0, x.shape[0], chunk):
            x_c = x[i : i + chunk].to(dtype)
            y = targets[i : i + chunk]
            scale = ((y != ctx.ignore_index) * grad_total.float())[:, None]  # (n, 1)
            g = step(x_c @ w.t(), lse[i : i + chunk], y.clamp_min(0), scale)  # d nll / d logits, (n, V) in dtype
            dx[i : i + chunk] = (g @ w).to(x.dtype)
            dw += (g.t() @ x_c).float()
        return dx, dw.to(weight.dtype), None, None, None, None, None


def chunked_linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                 ignore_index: int = -100, compiled: bool = False) -> torch.Tensor:
    """x: (N, D) features, weight: (V, D) the head, targets: (N,) long -> () float32, the summed NLL in nats over the
    targets other than ignore_index, in chunks of MAX_CHUNK_ELEMENTS // V tokens (at least 1). compiled: run each
    chunk's elementwise steps compiled."""
    chunk = max(1, MAX_CHUNK_ELEMENTS // weight.shape[0])
    return _ChunkedLinearCrossEntropy.apply(x, weight, targets, ignore_index, chunk, _compute_dtype(x), compiled)
