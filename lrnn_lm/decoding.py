"""Decoding at the GPU's pace: the decode step compiled, captured in one CUDA graph, and replayed once per token.

An eager decode step is a few hundred small kernels (every layer's norms, projections, gates and state update), each
launched by Python: at batch 1 the host, not the GPU, sets the pace, as launching them takes far longer than reading
the weights. Here the decode step is compiled, then captured with torch.cuda.graphs on static buffers: the token,
every layer's state, the output tokens and a step counter all stay on the device. A replay runs a whole step and
the sampling of the next token, writes it into the output at the counter and advances the counter; the host only
replays, and reads the tokens at the end (or as they come, when streaming). Memory is constant in the number of
tokens generated: the buffers, the graph's pool and, under autocast, a copy of the linear layers' weights in the
autocast dtype are allocated once per call.

Inside the graph, a replay is a chain of small dependent kernels whose count sets its time, so the compiled step
is built to launch few of them: it writes each layer's new state into the state buffers itself (so the compiler
can fuse the writes into the kernels that compute the state, instead of a copy kernel per tensor), and under
autocast it takes the linear layers' weights already cast to the autocast dtype, once per call (autocast would cast
each of them at every step: a kernel each, the same values). The tied LM head is still cast at each step, as the
embedding lookup needs the weight in its own dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from .model import LayerState, LinearRNNLM

EOS_CHECK_EVERY = 32
"""Replays between reads of the finished flags (one host sync each), to stop once every row has ended."""


class DecodeStep(nn.Module):
    """`model.decode_step` as a module's forward, so that `torch.func.functional_call` can run it on other weights."""

    def __init__(self, model: LinearRNNLM):
        super().__init__()
        self.model = model

    def forward(self, token: torch.Tensor, state: list[LayerState]) -> tuple[torch.Tensor, list[LayerState]]:
        return self.model.decode_step(token, state)


def autocast_weights(step: DecodeStep, device_type: str) -> dict[str, torch.Tensor]:
    """{name: weight} of every nn.Linear of `step`, cast to the autocast dtype of `device_type`: what autocast casts
    at each of their matmuls, cast once. Empty where autocast is off; float64 weights, which autocast leaves as they
    are, and weights in its dtype already are left out."""
    if not torch.is_autocast_enabled(device_type):
        return {}
    dtype = torch.get_autocast_dtype(device_type)
    return {f"{name}.weight": m.weight.detach().to(dtype) for name, m in step.named_modules()
            if isinstance(m, nn.Linear) and m.weight.dtype not in (dtype, torch.float64)}


def step_in_place(step: DecodeStep, weights: dict[str, torch.Tensor], token: torch.Tensor,
                  state: list[LayerState]) -> torch.Tensor:
    """token: (B,); state: the decoding state, overwritten with the state after the token -> logits (B, V).
    weights: parameters of `step` to use in place of its own (`autocast_weights`)."""
    logits, new_state = torch.func.functional_call(step, weights, (token, state))
    for old, new in zip(state, new_state):
        for a, b in zip(old, new):
            a.copy_(b)
    return logits


@functools.cache
def compiled_step_in_place() -> Callable:
    """`step_in_place` under torch.compile, made once per process: compiled code is cached per model shape and reused
    by every later call (a new torch.compile wrapper per call would cost milliseconds to set up)."""
    return torch.compile(step_in_place, dynamic=False)


@functools.cache
def _warmup_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for every capture's warm-up: cuBLAS keeps a workspace (32 MB on Hopper) for each
    stream it has run on, so a new stream per call would leave one more behind at every call."""
    return torch.cuda.Stream(device)


class CudaGraphDecoder:
    """`step_in_place` + token picking, captured once on static copies of `state` (the state after the prompts).

    compile: compile the step first (fewer, fused kernels); False captures the eager step."""

    def __init__(self, model: LinearRNNLM, state: list[LayerState], pick: Callable, eos_id: int | None,
                 compile: bool = True):
        self.pick, self.eos_id = pick, eos_id
        self.state = [type(s)(*(t.clone() for t in s)) for s in state]
        batch = self.state[0][0].shape[0]
        device = self.state[0][0].device
        self.token = torch.zeros(batch, dtype=torch.long, device=device)
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)
        self.index = torch.zeros(1, dtype=torch.long, device=device)
        self.decode_step = DecodeStep(model)
        self.weights = autocast_weights(self.decode_step, device.type)
        self.step = compiled_step_in_place() if compile else step_in_place
        self.graph: torch.cuda.CUDAGraph | None = None

    def _body(self, token, state, finished, index, out) -> None:
        """One decode step on the given buffers: the next token from (token, state), written into out[:, index]."""
        logits = self.step(self.decode_step, self.weights, token, state)
        nxt = self.pick(logits)  # (B,)
        if self.eos_id is not None:
            nxt = nxt.masked_fill(finished, self.eos_id)
            finished |= nxt == self.eos_id
        out.index_copy_(1, index, nxt[:, None])
        index += 1
        token.copy_(nxt)

    def _capture(self, out: torch.Tensor) -> None:
        """Compile and warm up on scratch copies of the buffers (a side stream, as graph capture asks), then capture
        the step on the real ones."""
        scratch = ([type(s)(*(t.clone() for t in s)) for s in self.state], self.token.clone(), self.finished.clone(),
                   torch.zeros_like(self.index), torch.zeros_like(out))
        side = _warmup_stream(self.token.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            state, token, finished, index, scratch_out = scratch
            for _ in range(3):
                index.zero_()
                self._body(token, state, finished, index, scratch_out)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._body(self.token, self.state, self.finished, self.index, out)

    def run(self, logits: torch.Tensor, out: torch.Tensor, on_tokens: Callable[[torch.Tensor], None] | None) -> None:
        """logits: (B, V) after the prompts; out: (B, N), filled with eos_id by the caller -> out holds the N new
        tokens (eos_id after a row's end)."""
        first = self.pick(logits)
        if self.eos_id is not None:
            self.finished |= first == self.eos_id
        out[:, 0] = first
        if on_tokens is not None:
            on_tokens(first)
        if out.shape[1] == 1:
            return
        self._capture(out)
        self.token.copy_(first)
        self.index.fill_(1)
        for i in range(1, out.shape[1]):
            self.graph.replay()
            if on_tokens is not None:
                on_tokens(out[:, i])
            if self.eos_id is not None and i % EOS_CHECK_EVERY == 0 and bool(self.finished.all()):
                return
