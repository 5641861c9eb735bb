"""The training loss's forward and backward, each captured once in a CUDA graph and replayed at every step.

A compiled training step of a small model launches hundreds of kernels (small.yaml: about 500), most of them
shorter than the host's time to launch them, so the GPU idles for half the step (docs/training-speed.md).
`GraphedNLL` captures `model.nll` and its backward with `torch.cuda.make_graphed_callables` on the first batch:
each step then costs the host two graph launches and a copy of the batch into the graph's input buffers, whatever
the model's depth. `TrainingNLL` is what a training step calls: it captures at the first batch where graphs are
on, replays for batches of that shape, and runs the model as it is otherwise. The optimizer, gradient clipping and
the non-finite guard stay outside the graphs, as do evaluation and any batch of another shape, which run the model
as it is.

Where it applies (`graphs_apply` says why not): CUDA, a single-device strategy, no gradient accumulation, no
activation checkpointing and no loader workers. The backward graph writes each gradient into a static buffer that
autograd hands to the parameter as its .grad without a copy; a second micro-batch's replay would overwrite the
first's gradient before the two are summed, and so would zero_grad(set_to_none=False) (lit_module.py sets None).
Under DDP the reducer's hooks would see the gradients outside the graph, which is untested here.

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


def graphs_apply(device: torch.device, *, single_device: bool = True, accumulate_grad_batches: int = 1,
                 activation_checkpointing: bool = False, loader_workers: int = 0) -> str | None:
    """None where GraphedNLL can serve training, else the reason it cannot. single_device: a single-device strategy
    (DDP wraps even one process's model in gradient hooks); loader_workers: the training DataLoader's workers."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, got {device.type}"
    if not single_device:
        return "CUDA graphs are used with a single-device strategy only, got a distributed one"
    if accumulate_grad_batches != 1:
        return f"CUDA graphs cannot accumulate gradients, got accumulate_grad_batches {accumulate_grad_batches}"
    if activation_checkpointing:
        return "CUDA graphs are not used with activation checkpointing (its recomputation saves the RNG state)"
    if loader_workers > 0:
        # with workers, the loader's pin-memory thread makes CUDA calls, which invalidate a capture in progress
        return f"CUDA graphs are captured with data.num_workers 0 only, got {loader_workers}"
    return None


class GraphedNLL:
    """`model.nll(tokens, targets, ignore_index)[0]` for training, from CUDA graphs captured on the first batch.

    Call it with (B, T) batches that `fits`; the result is an autograd output whose backward replays the backward
    graph. The model's parameters must stay in place (the optimizer's in-place update is what the graphs read);
    the graphs are this object's, not the model's, so the model called directly runs as it always does.
    `release` frees them.
    """

    def __init__(self, model: LinearRNNLM, tokens: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                 warmup_iters: int = 3):
        if not model.training:
            raise ValueError("model: expected training mode for the capture (dropout is part of the graph), got eval")
        self.model = model
        self.shape = tuple(tokens.shape)
        device = tokens.device
        rng = torch.cuda.get_rng_state(device)
        try:
            with _autocast_without_cache(device):
                self._loss = torch.cuda.make_graphed_callables(
                    _SummedNLL(model, ignore_index), (tokens.clone(), targets.clone()), num_warmup_iters=warmup_iters,
                    allow_unused_input=True)
        finally:
            torch.cuda.set_rng_state(rng, device)

    def fits(self, tokens: torch.Tensor, targets: torch.Tensor) -> bool:
        """Whether a batch can replay the graphs: the captured shape, the model still in training mode."""
        return self.model.training and tuple(tokens.shape) == self.shape and tuple(targets.shape) == self.shape

    def __call__(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """tokens, targets: (B, T) long, of the captured shape -> the summed NLL, () float32. The value lives in the
        graph's output buffer: read it (or copy it) before the next call."""
        return self._loss(tokens, targets)

    def release(self) -> None:
        """Free the graphs and their memory pool now. make_graphed_callables leaves the wrapped module's forward
        holding the module itself (a reference cycle that only the garbage collector would break)."""
        self._loss.__dict__.pop("forward", None)
        self._loss = None


class TrainingNLL:
    """`model.nll` as a training step computes it: (summed NLL in nats, predicted tokens), from CUDA graphs captured at
    the first batch where `cuda_graphs` is on, else from the model. The ids are not range-checked (a host sync per
    batch): the caller vouches for them, as the data module does by refusing a tokenizer larger than the vocabulary.
    """

    def __init__(self, model: LinearRNNLM, ignore_index: int, cuda_graphs: bool = False):
        self.model = model
        self.ignore_index = ignore_index
        self.cuda_graphs = cuda_graphs
        self.graphed: GraphedNLL | None = None  # captured at the first call with cuda_graphs on

    def __call__(self, tokens: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens, targets: (B, T) long -> (summed NLL, () float32; predicted tokens, () long). A batch of another
        shape than the captured one, or the model in eval mode, runs the model as it is."""
        if self.cuda_graphs and self.graphed is None:
            self.graphed = GraphedNLL(self.model, tokens, targets, self.ignore_index)
        if self.graphed is not None and self.graphed.fits(tokens, targets):
            return self.graphed(tokens, targets), (targets != self.ignore_index).sum()
        return self.model.nll(tokens, targets, self.ignore_index, check_ids=False)

    def release(self) -> None:
        """Free the graphs and their memory pool (a later call with cuda_graphs on captures again)."""
        if self.graphed is not None:
            self.graphed.release()
            self.graphed = None
            torch.cuda.empty_cache()  # a released graph pool's blocks go back to the device here


def _autocast_without_cache(device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast in force (if any) with its cast cache off; nothing if autocast is off."""
    if not torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.get_autocast_dtype(device.type), cache_enabled=False)
