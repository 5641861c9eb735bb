"""Autoregressive sampling: a parallel prefill of each prompt, then one decode step per new token.

Works on token ids only; turning text into ids and back is the caller's business (generate.py).

Prompts of different lengths are batched exactly: the prompts of each length are prefilled together, by the
parallel scan, and their states (one row each) are stacked into one batch for decoding, where every row is
computed on its own. So each sequence continues from the state it would have alone.

Decoding runs `model.step` once per token, either eagerly (any device) or replayed from a CUDA graph
(decoding.py: on CUDA, for the recurrent mixer, whose state has a fixed size; the step compiled and captured once,
one replay per token, no host work in between). A
token is drawn as argmax(p / E) with E ~ Exp(1) per entry, which samples p exactly (the exponential-race form of
the Gumbel-max trick) and runs inside a graph; temperature, top-k and top-p shape p first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .decoding import EOS_CHECK_EVERY, CudaGraphDecoder
from .model import LinearRNNLM, LayerState


@torch.no_grad()
def sample(
    model: LinearRNNLM,
    prompts: torch.Tensor | Sequence[torch.Tensor],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    decoder: str = "auto",
    on_tokens: Callable[[torch.Tensor], None] | None = None,
    vocab_limit: int | None = None,
) -> torch.Tensor:
    """Continue each prompt by max_new_tokens tokens.

    Args:
        model: the language model; run in eval mode here, its training flag restored on return.
        prompts: (B, T0) long token ids, or a list of B 1-d long tensors of any lengths >= 1, on the model's device.
        max_new_tokens: tokens to generate per prompt, >= 0.
        temperature: softmax temperature, >= 0; 0 is greedy (argmax) decoding.
        top_k: sample among the k most likely tokens only (None: the whole vocabulary; k > V means V).
        top_p: sample among the most likely tokens whose probabilities add up to top_p (nucleus sampling), in (0, 1].
        eos_id: a row that generates this token is finished: its later tokens are eos_id, and decoding stops early
            once every row is finished. None: every row runs max_new_tokens.
        generator: the random source, on the model's device (None: the global one). Under the CUDA-graph decoder,
            the global CUDA generator is used; seed it with torch.cuda.manual_seed for a reproducible sample.
        decoder: "eager", "graph" (CUDA, the recurrent mixer only) or "auto" (graph for the recurrent mixer on CUDA,
            eager elsewhere).
        on_tokens: called with each new column of tokens, (B,), as it is generated (streaming); under the graph
            decoder this reads each token back as it comes, which costs a host sync per token.
        vocab_limit: draw only ids below it (None: every id of the model's vocabulary). For a tokenizer smaller than
            the model's vocabulary, whose ids past its own stand for no text.

    Returns:
        (B, max_new_tokens) long: the new tokens of each prompt.

    The recurrent model spends O(1) time and memory per generated token; attention's KV cache grows.
    """
    rows = _check_prompts(prompts)
    model_device = model.embedding.weight.device
    if rows[0].device != model_device:
        raise ValueError(f"prompts: expected the model's device {model_device}, got {rows[0].device}")
    _check_options(max_new_tokens, temperature, top_k, top_p, eos_id, decoder, model.cfg.vocab_size)
    if vocab_limit is not None and (not isinstance(vocab_limit, int) or isinstance(vocab_limit, bool)
                                    or not 1 <= vocab_limit <= model.cfg.vocab_size
                                    or (eos_id is not None and eos_id >= vocab_limit)):
        raise ValueError(f"vocab_limit: expected None or an integer in [1, {model.cfg.vocab_size}] (the model's "
                         f"vocabulary) above eos_id {eos_id}, got {vocab_limit!r}")
    device = rows[0].device
    if decoder == "auto":
        decoder = "graph" if device.type == "cuda" and model.cfg.mixer == "lrnn" else "eager"
    if decoder == "graph" and model.cfg.mixer != "lrnn":
        raise ValueError(f"decoder: expected 'eager' or 'auto' for the {model.cfg.mixer!r} mixer (its KV cache grows "
                         "with every token, which a CUDA graph's static buffers cannot hold), got 'graph'")
    if decoder == "graph" and device.type != "cuda":
        raise ValueError(f"decoder: expected 'eager' or 'auto' off CUDA, got 'graph' with the model on {device}")
    was_training = model.training
    model.eval()
    try:
        logits, state = prefill_each(model, rows)  # (B, V), one state row per prompt
        out = torch.full((len(rows), max_new_tokens), eos_id if eos_id is not None else 0, dtype=torch.long,
                         device=device)
        if max_new_tokens == 0:
            return out
        pick = TokenPicker(temperature, top_k, top_p, vocab_limit)
        if decoder == "graph":
            CudaGraphDecoder(model, state, pick, eos_id).run(logits, out, on_tokens)
            return out
        finished = torch.zeros(len(rows), dtype=torch.bool, device=device)
        for i in range(max_new_tokens):
            token = pick(logits, generator)  # (B,)
            if eos_id is not None:
                token = token.masked_fill(finished, eos_id)
                finished |= token == eos_id
            out[:, i] = token
            if on_tokens is not None:
                on_tokens(token)
            # every EOS_CHECK_EVERY tokens: reading `finished` back is a host sync
            if eos_id is not None and (i + 1) % EOS_CHECK_EVERY == 0 and bool(finished.all()):
                break
            if i + 1 < max_new_tokens:
                # without step's checks: the tokens come from the picker, the state from prefill
                logits, state = model.decode_step(token, state)
        return out
    finally:
        model.train(was_training)


def prefill_each(model: LinearRNNLM, rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[LayerState]]:
    """Prompts of any lengths -> (the logits after each (B, V), the decoding state with one row per prompt). The
    prompts of each length are prefilled together; rows keep the prompts' order."""
    by_length: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_length.setdefault(r.shape[0], []).append(i)
    if len(by_length) > 1 and model.cfg.mixer != "lrnn":
        raise ValueError("prompts: prompts of different lengths need the recurrent mixer (an attention model's KV "
                         "caches would differ in length); give prompts of one length")
    parts = []
    for length, index in by_length.items():
        logits, state = model.prefill(torch.stack([rows[i] for i in index]), last_only=True)  # (b, V)
        parts.append((index, logits, state))
    if len(parts) == 1:
        return parts[0][1], parts[0][2]
    order = torch.tensor([i for index, _, _ in parts for i in index], device=rows[0].device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    logits = torch.cat([p[1] for p in parts])[inverse]
    state = [type(layers[0])(*(torch.cat(fields)[inverse] for fields in zip(*layers)))
             for layers in zip(*(p[2] for p in parts))]
    return logits, state


class TokenPicker:
    """logits (B, V) -> next tokens (B,): greedy at temperature 0, else a draw from softmax(logits / temperature)
    restricted to the top-k and to the top-p nucleus, as argmax(p / E), E ~ Exp(1). Only ids below vocab_limit are
    drawn (None: all V). Only tensor operations, so it can be captured in a CUDA graph."""

    def __init__(self, temperature: float, top_k: int | None, top_p: float | None, vocab_limit: int | None = None):
        self.temperature, self.top_k, self.top_p, self.vocab_limit = temperature, top_k, top_p, vocab_limit
        # a temperature whose reciprocal overflows float32 (below ~2.9e-39) is greedy decoding, its limit: CUDA divides
        # by a scalar as a multiplication by its reciprocal, which would give 0 · inf = NaN at the top token
        self.greedy = temperature < 1 / torch.finfo(torch.float32).max

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.vocab_limit is not None:
            logits = logits[:, : self.vocab_limit]
        if self.greedy:
            return logits.argmax(dim=-1)
        logits = logits.float()
        # shifted so the largest is 0 before the division: a tiny temperature then gives 0 and -inf, not inf - inf
        logits = (logits - logits.amax(dim=-1, keepdim=True)) / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)  # (B, V)
        if self.top_p is not None and self.top_p < 1:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # keep a token if the tokens before it hold less than top_p (the first is always kept)
            drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= self.top_p
            probs = probs.scatter(1, order, sorted_probs.masked_fill(drop, 0.0))
        race = torch.empty_like(probs).exponential_(1.0, generator=generator)
        return (probs / race).argmax(dim=-1)


def _check_prompts(prompts) -> list[torch.Tensor]:
    """The prompts as a list of 1-d long tensors on one device (the token range is `model.prefill`'s check)."""
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2 or prompts.shape[0] < 1 or prompts.shape[1] < 1:
            raise ValueError(f"prompts: expected a 2-d tensor (B, T0) with B, T0 >= 1, or a list of 1-d tensors, got "
                             f"shape {tuple(prompts.shape)}")
        rows = list(prompts)
    elif isinstance(prompts, (list, tuple)) and prompts:
        rows = list(prompts)
    else:
        raise ValueError(f"prompts: expected a 2-d tensor (B, T0) or a non-empty list of 1-d tensors, got "
                         f"{type(prompts).__name__}")
    for i, r in enumerate(rows):
        if not isinstance(r, torch.Tensor) or r.dim() != 1 or r.shape[0] < 1:
            got = f"shape {tuple(r.shape)}" if isinstance(r, torch.Tensor) else type(r).__name__
            raise ValueError(f"prompts[{i}]: expected a non-empty 1-d tensor of token ids, got {got}")
        if r.dtype != torch.long:
            raise TypeError(f"prompts[{i}]: expected dtype torch.int64 (long), got {r.dtype}")
        if r.device != rows[0].device:
            raise ValueError(f"prompts[{i}]: expected the device of prompts[0] ({rows[0].device}), got {r.device}")
    return rows


def _is_number(value) -> bool:
    """An int or float, not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_options(max_new_tokens, temperature, top_k, top_p, eos_id, decoder, vocab_size) -> None:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an integer >= 0, got {max_new_tokens!r}")
    if not _is_number(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature: expected a finite number >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k: expected None or an integer >= 1, got {top_k!r}")
    if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
        raise ValueError(f"top_p: expected None or a number in (0, 1], got {top_p!r}")
    if eos_id is not None and (not isinstance(eos_id, int) or isinstance(eos_id, bool) or not 0 <= eos_id < vocab_size):
        raise ValueError(f"eos_id: expected None or a token id in [0, {vocab_size}), got {eos_id!r}")
    if decoder not in ("auto", "eager", "graph"):
        raise ValueError(f"decoder: expected 'auto', 'eager' or 'graph', got {decoder!r}")
