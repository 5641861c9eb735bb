"""Causal softmax self-attention with rotary positions: the Transformer baseline's token mixer.

It has the interface of the recurrent mixer in model.py (forward over (B, T, D), step over (B, D) with a
state) and about its parameter count (4·D² against 4·D·R), so the two mixers swap in a config field.

Dimensions (as in model.py): B batch, T sequence length, D d_model, H heads, Dh = D / H head width,
S positions held in the KV cache.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

ROPE_BASE = 10_000.0
"""Base of the rotary frequencies (Su et al. 2021; the GPT-NeoX/Llama value)."""


class KVCache(NamedTuple):
    """One attention layer's decoding state: the rotated keys and the values of every position so far."""

    k: torch.Tensor
    """(B, H, S, Dh) keys, rotary embedding applied."""
    v: torch.Tensor
    """(B, H, S, Dh) values."""


def apply_rotary(x: torch.Tensor, start_pos: int) -> torch.Tensor:
    """Rotate x: (B, H, T, Dh) by the angles of positions start_pos .. start_pos + T - 1 (half-split layout).

    The angles are computed here in at least float32, never from a buffer that `model.to(bf16)` would round.
    """
    T, Dh = x.shape[-2:]
    dtype = torch.promote_types(x.dtype, torch.float32)
    inv_freq = ROPE_BASE ** (-torch.arange(0, Dh, 2, device=x.device, dtype=dtype) / Dh)  # (Dh/2,)
    pos = torch.arange(start_pos, start_pos + T, device=x.device, dtype=dtype)  # (T,)
    angles = pos[:, None] * inv_freq  # (T, Dh/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.to(dtype).chunk(2, dim=-1)  # each (B, H, T, Dh/2)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)  # (B, H, T, Dh)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (`F.scaled_dot_product_attention`) with rotary position embedding.

    Packed documents are NOT isolated: a token attends across EOS into earlier documents of the same
    sequence (`tokens` is accepted for the mixer interface and ignored). The baseline is trained that way,
    as GPT-2 was.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.qkv_proj = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def _qkv(self, x: torch.Tensor, start_pos: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, T, D) -> q, k, v: (B, H, T, Dh), q and k rotated for positions start_pos + t."""
        B, T, _ = x.shape
        qkv = self.qkv_proj(x).view(B, T, 3, self.n_heads, self.head_dim)  # (B, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, Dh)
        return apply_rotary(q, start_pos), apply_rotary(k, start_pos), v

    def _merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        """y: (B, H, T, Dh) -> (B, T, D) through the output projection."""
        B, _, T, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, H, Dh) -> (B, T, D)

    def forward(
        self, x: torch.Tensor, tokens: torch.Tensor, output_final_state: bool = False
    ) -> tuple[torch.Tensor, KVCache | None]:
        """x: (B, T, D) normed input; tokens: (B, T), unused -> (y: (B, T, D), the KV cache or None)."""
        q, k, v = self._qkv(x, start_pos=0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, Dh)
        return self._merge_heads(y), KVCache(k, v) if output_final_state else None

    def step(self, x: torch.Tensor, token: torch.Tensor, state: KVCache) -> tuple[torch.Tensor, KVCache]:
        """x: (B, D) the new position's normed input; token: (B,), unused -> (y: (B, D), state grown by one).

        The cache grows by concatenation: O(S) per token, as attention itself is.
        """
        q, k, v = self._qkv(x[:, None], start_pos=state.k.shape[2])  # each (B, H, 1, Dh)
        k = torch.cat([state.k.to(k.dtype), k], dim=2)  # (B, H, S + 1, Dh)
        v = torch.cat([state.v.to(v.dtype), v], dim=2)  # (B, H, S + 1, Dh)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, Dh): one query sees every cached position
        return self._merge_heads(y)[:, 0], KVCache(k, v)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        """An empty cache: k, v of shape (batch_size, H, 0, Dh)."""
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        return KVCache(empty, empty)
