"""Autoregressive sampling: one parallel prefill of the prompt, then one `model.step` per new token.

Works on token ids only; turning text into ids and back is the caller's business.
"""

from __future__ import annotations

import math

import torch

from .model import LinearRNNLM


@torch.no_grad()
def sample(
    model: LinearRNNLM,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue each prompt by max_new_tokens tokens.

    Args:
        model: the language model; run in eval mode here, its training flag restored on return.
        prompt: (B, T0) long token ids, T0 >= 1, on the model's device.
        max_new_tokens: tokens to generate, >= 0.
        temperature: softmax temperature, >= 0; 0 is greedy (argmax) decoding.
        top_k: sample among the k most likely tokens only (None: the whole vocabulary; k > V means V).
        generator: the random source for torch.multinomial, on the model's device (None: the global one).

    Returns:
        (B, T0 + max_new_tokens) long: the prompt followed by the generated tokens.

    The recurrent model spends O(1) time and memory per generated token; attention's KV cache grows.
    """
    if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2 or prompt.shape[1] < 1:
        got = f"shape {tuple(prompt.shape)}" if isinstance(prompt, torch.Tensor) else type(prompt).__name__
        raise ValueError(f"prompt: expected a 2-d tensor (B, T0) with T0 >= 1, got {got}")
    if prompt.dtype != torch.long:
        raise TypeError(f"prompt: expected dtype torch.int64 (long), got {prompt.dtype}")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an integer >= 0, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature: expected a finite number >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k: expected None or an integer >= 1, got {top_k!r}")

    was_training = model.training
    model.eval()
    try:
        logits, state = model.prefill(prompt)  # (B, T0, V)
        logits = logits[:, -1]  # (B, V)
        out = [prompt]
        for i in range(max_new_tokens):
            token = _pick(logits, temperature, top_k, generator)  # (B,)
            out.append(token[:, None])
            if i + 1 < max_new_tokens:
                logits, state = model.step(token, state)
        return torch.cat(out, dim=1)  # (B, T0 + max_new_tokens)
    finally:
        model.train(was_training)


def _pick(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """logits: (B, V) -> next token ids (B,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    # shifted so the largest is 0 before the division: a tiny temperature then gives 0 and -inf, not inf - inf
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]
