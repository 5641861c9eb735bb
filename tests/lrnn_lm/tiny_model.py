"""The model tests' tiny language model: 64 tokens (EOS 0), 2 layers of width 32."""

import torch

from lrnn_lm.config import ModelConfig
from lrnn_lm.model import LinearRNNLM

VOCAB, EOS = 64, 0


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, eos_id=EOS) | overrides
    return ModelConfig(**fields)


def tiny_model(dtype: torch.dtype = torch.float32, seed: int = 0, **overrides) -> LinearRNNLM:
    torch.manual_seed(seed)
    return LinearRNNLM(tiny_config(**overrides)).to(dtype)
