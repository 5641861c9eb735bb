"""The training loss's forward and backward, each captured once in a CUDA graph and replayed at every step.

A compiled training step of a small model launches hundreds of kernels (small.yaml: about 500), most of them
shorter than the host's time to launch them, so the GPU idles for half the step (docs/training-speed.md).
`GraphedNLL` captures `model.nll` and its backward with `torch.cuda.make_graphed_callables` on the first batch:
each step then costs the host two graph launches and a copy of the batch into the graph's input buffers, whatever
the model's depth. The optimizer, gradient clipping and the non-finite guard stay outside the graphs, as do
evaluation and any batch of another shape, which run the model as it is.

Where it applies (`graphs_apply` says why not): CUDA, a single device, no gradient accumulation and no activation
checkpointing. The backward
graph writes each gradient into a static buffer that autograd hands to the parameter as its .grad without a copy;
a second micro-batch's replay would overwrite the first's gradient before the two are summed. Under DDP the
reducer's hooks would see the gradients outside the graph, which is untested here.

Autocast is entered again around the capture with its weight-cast cache off, as make_graphed_callables requires
(the casts are captured into the graph). The CUDA RNG state is put back after the capture's warm-up iterations,
so the first replay draws the dropout masks an uncaptured step would have drawn.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .model import LinearRNNLM


class _SummedNLL(nn.Module):
    """model.nll as a module, for make_graphed_callables (which takes a module's parameters as the graph's inputs)."""

    def __init__(self, model: LinearRNNLM, ignore_index: int):
        super().__init__()
        self.model = model
        self.ignore_index = ignore_index

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """tokens, targets: (B, T) long -> the summed NLL in nats, () float32."""
        return self.model.nll(tokens, targets, self.ignore_index, check_ids=False)[0]


def graphs_apply(device: torch.device, world_size: int, accumulate_grad_batches: int,
                 activation_checkpointing: bool = False) -> str | None:
    """None where GraphedNLL can serve training, else the reason it cannot."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, got {device.type}"
    if world_size != 1:
        return f"CUDA graphs are used on a single device, got {world_size} processes"
    if accumulate_grad_batches != 1:
        return f"CUDA graphs cannot accumulate gradients, got accumulate_grad_batches {accumulate_grad_batches}"
    if activation_checkpointing:
        return "CUDA graphs are not used with activation checkpointing (its recomputation saves the RNG state)"
    return None


class GraphedNLL:
    """`model.nll(tokens, targets, ignore_index)[0]` for training, from CUDA graphs captured on the first batch.

    Call it with (B, T) batches of the capture's shape (`fits`); the result is an autograd output whose backward
    replays the backward graph. The model must stay in training mode and its parameters in place (an optimizer's
    in-place update is what the graph reads); the captured graphs are this object's, not the model's, so a model
    used elsewhere runs as it always does.
    """

    def __init__(self, model: LinearRNNLM, tokens: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                 warmup_iters: int = 3):
        if not model.training:
            raise ValueError("model: expected training mode for the capture (dropout is part of the graph), got eval")
        self.shape = tuple(tokens.shape)
        device = tokens.device
        rng = torch.cuda.get_rng_state(device)
        with _autocast_without_cache(device):
            self._graphed = torch.cuda.make_graphed_callables(
                _SummedNLL(model, ignore_index), (tokens.clone(), targets.clone()), num_warmup_iters=warmup_iters,
                allow_unused_input=True)
        torch.cuda.set_rng_state(rng, device)

    def fits(self, tokens: torch.Tensor, targets: torch.Tensor) -> bool:
        """Whether a batch has the captured shape (a batch of another shape must run the model itself)."""
        return tuple(tokens.shape) == self.shape and tuple(targets.shape) == self.shape

    def __call__(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """tokens, targets: (B, T) long, of the captured shape -> the summed NLL, () float32. The value lives in the
        graph's output buffer: read it (or copy it) before the next call."""
        return self._graphed(tokens, targets)


def _autocast_without_cache(device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast in force (if any) with its cast cache off; nothing if autocast is off."""
    if not torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.get_autocast_dtype(device.type), cache_enabled=False)
