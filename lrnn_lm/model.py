"""The language model: a stack of [gated linear recurrence, SwiGLU MLP] blocks, as a plain nn.Module.

    tokens -> embedding -> L x [x += mixer(RMSNorm(x)); x += MLP(RMSNorm(x))] -> RMSNorm -> tied LM head

The mixer is the gated linear recurrence (`LinearRecurrence`, HGRN/Griffin family) run by
`kernels.gated_linear_scan`, or causal attention (attention.py) for the Transformer baseline. Training runs the
parallel scan over (B, T, ·); decoding runs `step`, O(1) time and memory per token for the recurrence.

Dimensions:
    B   batch size
    T   sequence length
    V   vocabulary size                     cfg.vocab_size
    D   residual stream width               cfg.d_model
    R   recurrence width                    cfg.d_rnn
    K   short convolution kernel size       cfg.conv_size
    F   SwiGLU hidden width                 cfg.d_mlp
    L   number of blocks                    cfg.n_layers
    H, Dh, S   attention heads, head width, cached positions (attention.py)

Every activation is laid out (B, T, ·), the layout the scan takes: no transposes around the recurrence.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from kernels import gated_linear_scan
from kernels.gate import Gate, gate_pairs

from .attention import CausalSelfAttention, KVCache
from .config import ModelConfig
from .loss import chunked_linear_cross_entropy


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32: gates and the recurrence are computed in float32 (float64 in a float64 model)."""
    return torch.promote_types(dtype, torch.float32)


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last dim (Zhang & Sennrich 2019); normalised in float32, cast back."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(_compute_dtype(x.dtype))
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return x32.to(x.dtype) * self.weight


class RecurrentState(NamedTuple):
    """One recurrent layer's decoding state; O(1) in the number of tokens seen."""

    h: torch.Tensor
    """(B, R) the recurrence state h_t, float32 (float64 in a float64 model)."""
    conv: torch.Tensor
    """(B, K - 1, R) the last K - 1 inputs of the short convolution, oldest first; zeros before a document."""


LayerState = RecurrentState | KVCache
"""A model's decoding state is `list[LayerState]`, one entry per block."""


class ShortConv(nn.Module):
    """Causal depthwise convolution over time on (B, T, R), written as K shifted multiply-adds:

        y_t = bias + sum_{j<K} weight[j] ⊙ v_{t-K+1+j}        (v_s = 0 for s < 1)

    `step` computes the same sum over a rolling window of the last K inputs, with the same weights.
    Given `doc_id`, an input v_s counts for y_t only if s and t lie in the same document, so the
    convolution does not reach across a document start (exactly: masked inputs are zero, like padding).
    """

    def __init__(self, width: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(kernel_size, width))  # (K, R), weight[K-1] taps v_t
        self.bias = nn.Parameter(torch.empty(width))  # (R,)
        bound = 1 / math.sqrt(kernel_size)  # nn.Conv1d's default for a depthwise conv (fan-in K)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, v: torch.Tensor, doc_id: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """v: (B, T, R); doc_id: (B, T) long, document index per position, or None (no resets)
        -> (y: (B, T, R), tail: (B, K-1, R), the state `step` continues from)."""
        K, T = self.kernel_size, v.shape[1]
        v_pad = F.pad(v, (0, 0, K - 1, 0))  # (B, K-1+T, R), zeros before the sequence
        doc_pad = None if doc_id is None else F.pad(doc_id, (K - 1, 0))  # (B, K-1+T), padding in doc 0
        y = self.bias
        for j in range(K):
            v_j = v_pad[:, j : j + T]  # (B, T, R): v_{t-K+1+j}
            if doc_pad is not None and j < K - 1:
                v_j = v_j.masked_fill((doc_pad[:, j : j + T] != doc_id).unsqueeze(-1), 0.0)
            y = y + self.weight[j] * v_j
        y = y.to(v.dtype)  # in v's dtype (bf16 under autocast): the scan reads it as it is, at 2 bytes an element
        tail = v_pad[:, T:]  # (B, K-1, R)
        if doc_pad is not None:
            tail = tail.masked_fill((doc_pad[:, T:] != doc_id[:, -1:]).unsqueeze(-1), 0.0)
        return y, tail

    def step(
        self, v: torch.Tensor, state: torch.Tensor, is_doc_start: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """v: (B, R) the new input; state: (B, K-1, R); is_doc_start: (B,) bool or None -> (y: (B, R), state)."""
        if is_doc_start is not None:
            state = state.masked_fill(is_doc_start[:, None, None], 0.0)  # forget the previous document
        window = torch.cat([state.to(v.dtype), v[:, None]], dim=1)  # (B, K, R)
        y = self.bias + (self.weight * window).sum(dim=1)  # (B, R)
        return y.to(v.dtype), window[:, 1:]  # in v's dtype, as `forward` gives it


class LinearRecurrence(nn.Module):
    """Gated linear recurrence (HGRN, Qin et al. 2023; Griffin's RG-LRU, De et al. 2024) with a gated output.

        v_t, f_t, g_t = split(W_in x_t)                           x_t: (D,), each (R,)
        v_t <- ShortConv(v)_t                                     (Mamba, Gu & Dao 2023; Griffin)
        a_t = lb + (1 - lb) σ(f_t + b_f),   1 - a_t = (1 - lb) σ(-f_t - b_f)
        a_t = 0, 1 - a_t = 1             where tokens_t == eos (the EOS token opens a document)
        h_t = a_t ⊙ h_{t-1} + (1 - a_t) ⊙ v_t                     kernels.gated_linear_scan
        y_t = W_out (RMSNorm(h_t) ⊙ silu(g_t))

    h_t is a convex combination of inputs, so |h_t| <= max_s |v_s|: the state stays bounded at any length.
    The lower bound lb = layer / L rises with depth (HGRN's idea, with a fixed rather than learned bound):
    lower layers may forget fast, upper layers are forced to remember longer. 1 - a_t is computed as
    σ(-f), never as 1 - a, which would cancel to zero in float32 when a ≈ 1. The gate and the state are float32
    whatever the autocast dtype (a bfloat16 a_t near 1 has steps of 2^-8); on CUDA the gate is computed inside the
    scan's kernels from f and v as they come out of W_in and the convolution (bf16 under autocast), so no float32
    copy of them is ever stored (kernels/gated_scan.py).
    """

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        D, R = cfg.d_model, cfg.d_rnn
        self.d_rnn = R
        self.scan_impl = cfg.scan
        self.eos_id = cfg.eos_id if cfg.reset_at_doc_start else None
        # a buffer, not a Python float: compiled blocks then share one graph whatever their layer
        self.register_buffer("lower_bound", torch.tensor(layer / cfg.n_layers if cfg.gate_lower_bound else 0.0),
                             persistent=False)
        self.in_proj = nn.Linear(D, 3 * R, bias=False)  # -> v, f, g
        self.forget_bias = nn.Parameter(torch.zeros(R))  # b_f; zero, as HGRN: σ = 1/2 at init
        self.conv = ShortConv(R, cfg.conv_size) if cfg.conv_size > 1 else None
        self.out_norm = RMSNorm(R, cfg.norm_eps)
        self.out_proj = nn.Linear(R, D, bias=False)

    def _output(self, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """h, g: (..., R) -> (..., D)."""
        return self.out_proj(self.out_norm(h).to(g.dtype) * F.silu(g))

    def forward(
        self, x: torch.Tensor, tokens: torch.Tensor, output_final_state: bool = False
    ) -> tuple[torch.Tensor, RecurrentState | None]:
        """x: (B, T, D) normed input; tokens: (B, T) -> (y: (B, T, D), the state after T, or None)."""
        B, T, _ = x.shape
        v, f, g = self.in_proj(x).split(self.d_rnn, dim=-1)  # each (B, T, R), views of one (B, T, 3R) projection
        is_doc_start = None if self.eos_id is None else tokens == self.eos_id  # (B, T)
        if self.conv is not None:
            doc_id = None if is_doc_start is None else is_doc_start.cumsum(dim=1)  # (B, T)
            v, conv_tail = self.conv(v, doc_id)
        else:
            conv_tail = v.new_zeros(B, 0, self.d_rnn)  # (B, 0, R)
        h, h_T = gated_linear_scan(f, v, self.forget_bias, self.lower_bound, is_doc_start, impl=self.scan_impl,
                                   output_final_state=output_final_state)  # (B, T, R) in v's dtype
        return self._output(h, g), RecurrentState(h_T, conv_tail) if output_final_state else None

    def step(
        self, x: torch.Tensor, token: torch.Tensor, state: RecurrentState
    ) -> tuple[torch.Tensor, RecurrentState]:
        """x: (B, D) normed input; token: (B,) -> (y: (B, D), the state after this token)."""
        v, f, g = self.in_proj(x).split(self.d_rnn, dim=-1)  # each (B, R)
        is_doc_start = None if self.eos_id is None else token == self.eos_id  # (B,)
        conv_state = state.conv
        if self.conv is not None:
            v, conv_state = self.conv.step(v, conv_state, is_doc_start)
        a, x_in = gate_pairs(f, v, Gate(self.forget_bias, self.lower_bound, is_doc_start))  # (B, R), >= float32
        h = a * state.h + x_in  # (B, R)
        return self._output(h, g), RecurrentState(h, conv_state)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> RecurrentState:
        """Zeros: h (batch_size, R) in >= float32, conv (batch_size, K-1, R)."""
        K = self.conv.kernel_size if self.conv is not None else 1
        h = torch.zeros(batch_size, self.d_rnn, device=device, dtype=_compute_dtype(dtype))
        return RecurrentState(h, torch.zeros(batch_size, K - 1, self.d_rnn, device=device, dtype=dtype))


class SwiGLU(nn.Module):
    """y = W_out (silu(W_gate x) ⊙ W_up x) (Shazeer 2020), with W_gate and W_up fused in one Linear."""

    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        self.in_proj = nn.Linear(d_model, 2 * d_hidden, bias=False)
        self.out_proj = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D) -> (..., D)."""
        gate, up = self.in_proj(x).chunk(2, dim=-1)  # each (..., F)
        return self.out_proj(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm residual block: x += mixer(RMSNorm(x)); x += SwiGLU(RMSNorm(x))."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.mixer_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if cfg.mixer == "lrnn":
            self.mixer = LinearRecurrence(cfg, layer)
        else:
            self.mixer = CausalSelfAttention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.d_mlp)
        self.dropout = nn.Dropout(cfg.dropout)
        self.checkpointing = cfg.activation_checkpointing

    def forward(
        self, x: torch.Tensor, tokens: torch.Tensor, output_final_state: bool = False
    ) -> tuple[torch.Tensor, LayerState | None]:
        """x: (B, T, D); tokens: (B, T) -> (x: (B, T, D), the mixer's state after T, or None).

        With activation checkpointing (training only) the block keeps only its input, and its backward first runs
        the forward again (torch.utils.checkpoint, non-reentrant: dropout draws the same masks)."""
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, tokens, output_final_state, use_reentrant=False)
        return self._forward(x, tokens, output_final_state)

    def _forward(
        self, x: torch.Tensor, tokens: torch.Tensor, output_final_state: bool
    ) -> tuple[torch.Tensor, LayerState | None]:
        y, state = self.mixer(self.mixer_norm(x), tokens, output_final_state)
        x = x + self.dropout(y)
        return x + self.dropout(self.mlp(self.mlp_norm(x))), state

    def step(self, x: torch.Tensor, token: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        """x: (B, D); token: (B,) -> (x: (B, D), the mixer's next state)."""
        y, state = self.mixer.step(self.mixer_norm(x), token, state)
        x = x + y
        return x + self.mlp(self.mlp_norm(x)), state


class LinearRNNLM(nn.Module, PyTorchModelHubMixin, library_name="lrnn-lm", tags=["linear-rnn"]):
    """Causal language model over token ids; the LM head is the transposed token embedding.

    Training and scoring: `forward(tokens) -> logits`, or `nll(tokens, targets)` without the logits. Decoding:
    `prefill(prompt) -> (logits, state)`, then `step(token, state) -> (logits, state)` per token, where the state is
    `list[LayerState]` (one `RecurrentState`, or `KVCache` for attention, per block). Tokens equal to cfg.eos_id
    reset the recurrence (cfg.reset_at_doc_start), in `forward`, `prefill` and `step` alike.

    `save_pretrained(folder)` / `LinearRNNLM.from_pretrained(folder or hub id)` / `push_to_hub(repo)` come from
    huggingface_hub's PyTorchModelHubMixin: config.json (the ModelConfig) and model.safetensors.
    """

    def __init__(self, config: ModelConfig | dict):
        super().__init__()
        cfg = config if isinstance(config, ModelConfig) else ModelConfig(**config)  # a dict from config.json
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.loss_compiled = False  # `compile_blocks` compiles the loss's per-chunk steps too
        self._init_weights()

    @classmethod
    def _from_pretrained(cls, *, model_id: str, strict: bool = True, **kwargs) -> LinearRNNLM:
        """PyTorchModelHubMixin's loader, strict: a model.safetensors that lacks a weight (or holds one of another
        model) is an error, not a model left partly at its random initialisation; and a folder or hub repo without
        config.json says so."""
        if "config" not in kwargs:
            raise FileNotFoundError(f"{model_id}: no config.json (the ModelConfig); expected a folder written by "
                                    "save_pretrained or `python -m lrnn_lm.export`")
        return super()._from_pretrained(model_id=model_id, strict=strict, **kwargs)

    def _init_weights(self) -> None:
        """N(0, init_std) for the embedding and every Linear; the projections that write into the residual
        stream get init_std / sqrt(2L) (GPT-2), so the stream's variance does not grow with depth."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
        for block in self.blocks:
            for proj in (block.mixer.out_proj, block.mlp.out_proj):
                nn.init.normal_(proj.weight, std=std / math.sqrt(2 * self.cfg.n_layers))

    def num_params(self) -> int:
        """Parameter count; the tied embedding / LM head is counted once."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token, as PaLM counts them for MFU: 6 x the multiply-accumulates of every matmul (each
        nn.Linear and the tied LM head), plus attention's 12 · D · T per layer (QK and AV at context T) for the
        attention mixer. The scan and elementwise ops are not counted."""
        macs = sum(m.in_features * m.out_features for m in self.modules() if isinstance(m, nn.Linear))
        macs += self.cfg.vocab_size * self.cfg.d_model  # the LM head
        attention = 12 * self.cfg.d_model * seq_len * self.cfg.n_layers if self.cfg.mixer == "attention" else 0
        return 6 * macs + attention

    def compile_blocks(self, **options) -> None:
        """torch.compile each block in place (the state_dict keys stay the plain model's), and the loss's per-chunk
        steps (loss.py). Blocks share their code, and the per-layer constants are buffers, so one compilation serves
        every block: a fraction of the time a whole-model compile takes, and the same fused kernels."""
        for block in self.blocks:
            block.compile(**options)
        self.loss_compiled = True

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D) -> (..., V)."""
        return F.linear(self.norm(x), self.embedding.weight)

    def _hidden(self, tokens: torch.Tensor, output_final_state: bool, check_ids: bool = True
                ) -> tuple[torch.Tensor, list[LayerState] | None]:
        """tokens: (B, T) -> (the last block's output (B, T, D), per-block states after T or None)."""
        _check_tokens(tokens, "tokens", 2, self.cfg.vocab_size, check_ids)
        x = self.dropout(self.embedding(tokens))  # (B, T, D)
        states = []
        for block in self.blocks:
            x, state = block(x, tokens, output_final_state)
            states.append(state)
        return x, states if output_final_state else None

    def _run(self, tokens: torch.Tensor, output_final_state: bool) -> tuple[torch.Tensor, list[LayerState] | None]:
        """tokens: (B, T) -> (logits: (B, T, V), per-block states after T or None)."""
        x, states = self._hidden(tokens, output_final_state)
        return self._logits(x), states

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, T) long -> logits (B, T, V); the logits at t predict token t + 1."""
        return self._run(tokens, output_final_state=False)[0]

    def nll(self, tokens: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, *, check_ids: bool = True
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens, targets: (B, T) long -> (summed NLL in nats, float32 (); the number of targets other than
        ignore_index). The same value as cross-entropy over `forward`'s logits, without holding them (loss.py).

        check_ids=False skips the range check of the token ids, the one host sync of a training step: for callers
        whose ids are known to lie in [0, vocab_size), e.g. batches of a tokenizer no larger than the vocabulary."""
        V = self.cfg.vocab_size
        _check_tokens(tokens, "tokens", 2, V, check_ids=False)
        _check_targets(targets, tuple(tokens.shape), ignore_index)
        if check_ids and not torch.compiler.is_compiling():
            bad_targets = ((targets < 0) & (targets != ignore_index)) | (targets >= V)
            if bool(((tokens < 0) | (tokens >= V)).any() | bad_targets.any()):  # one read for both
                _check_tokens(tokens, "tokens", 2, V)  # raises if the tokens are the ones out of range
                raise ValueError(f"targets: expected ids in [0, {V}) or ignore_index {ignore_index}, got min "
                                 f"{targets.min().item()}, max {targets.max().item()}")
        x = self.norm(self._hidden(tokens, output_final_state=False, check_ids=False)[0])  # (B, T, D)
        nll = chunked_linear_cross_entropy(x.flatten(0, 1), self.embedding.weight, targets.flatten(), ignore_index,
                                           compiled=self.loss_compiled)
        return nll, (targets != ignore_index).sum()

    def prefill(self, tokens: torch.Tensor, *, last_only: bool = False) -> tuple[torch.Tensor, list[LayerState]]:
        """tokens: (B, T) long -> (logits (B, T, V), or (B, V) at the last position only with last_only, the state
        after T, from which `step` continues). last_only is what decoding needs: a long prompt's (B, T, V) logits
        would take T · V floats a row."""
        if not last_only:
            return self._run(tokens, output_final_state=True)
        x, states = self._hidden(tokens, output_final_state=True)
        return self._logits(x[:, -1]), states

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> list[LayerState]:
        """The state before any token: zeros for the recurrence and the conv window, an empty KV cache."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        device = self.embedding.weight.device if device is None else torch.device(device)
        dtype = self.embedding.weight.dtype
        return [block.mixer.init_state(batch_size, device, dtype) for block in self.blocks]

    def step(self, token: torch.Tensor, state: list[LayerState]) -> tuple[torch.Tensor, list[LayerState]]:
        """token: (B,) long, the next token; state: from `init_state`, `prefill` or `step`
        -> (logits (B, V) predicting the token after it, the new state). The input state is not modified."""
        _check_tokens(token, "token", 1, self.cfg.vocab_size)
        self._check_state(state, batch_size=token.shape[0])
        return self.decode_step(token, state)

    def decode_step(self, token: torch.Tensor, state: list[LayerState]) -> tuple[torch.Tensor, list[LayerState]]:
        """`step` without its checks (one of them reads the tokens back, a host sync): for a caller that checked
        its token and state already, e.g. a CUDA graph replaying the step (decoding.py)."""
        x = self.embedding(token)  # (B, D)
        new_state = []
        for block, layer_state in zip(self.blocks, state):
            x, layer_state = block.step(x, token, layer_state)
            new_state.append(layer_state)
        return self._logits(x), new_state

    def _check_state(self, state: list[LayerState], batch_size: int) -> None:
        expected_type = RecurrentState if self.cfg.mixer == "lrnn" else KVCache
        if not isinstance(state, (list, tuple)) or len(state) != len(self.blocks):
            got = f"{type(state).__name__} of length {len(state)}" if isinstance(state, (list, tuple)) else state
            raise ValueError(f"state: expected a list of {len(self.blocks)} per-layer states, got {got!r}")
        for layer, layer_state in enumerate(state):
            if not isinstance(layer_state, expected_type):
                raise TypeError(
                    f"state[{layer}]: expected {expected_type.__name__}, got {type(layer_state).__name__}"
                )
            if layer_state[0].shape[0] != batch_size:
                raise ValueError(
                    f"state[{layer}]: expected batch size {batch_size} (token's), got {layer_state[0].shape[0]}"
                )


def _check_tokens(tokens: torch.Tensor, name: str, ndim: int, vocab_size: int, check_ids: bool = True) -> None:
    """Shape, dtype and (check_ids) range of token ids; the range check is one host sync, skipped under
    torch.compile."""
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tokens).__name__}")
    if tokens.dim() != ndim or tokens.numel() == 0:
        shape = "(B, T)" if ndim == 2 else "(B,)"
        raise ValueError(f"{name}: expected a non-empty {ndim}-d tensor {shape}, got shape {tuple(tokens.shape)}")
    if tokens.dtype != torch.long:
        raise TypeError(f"{name}: expected dtype torch.int64 (long), got {tokens.dtype}")
    if check_ids and not torch.compiler.is_compiling() and bool(((tokens < 0) | (tokens >= vocab_size)).any()):
        raise ValueError(
            f"{name}: expected ids in [0, {vocab_size}), got min {tokens.min().item()}, max {tokens.max().item()}"
        )


def _check_targets(targets: torch.Tensor, shape: tuple[int, ...], ignore_index: int) -> None:
    """Type, shape and dtype of `nll`'s targets (their range is checked with the tokens', in one host read)."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets: expected a torch.Tensor, got {type(targets).__name__}")
    if tuple(targets.shape) != shape:
        raise ValueError(f"targets: expected the tokens' shape {shape}, got {tuple(targets.shape)}")
    if targets.dtype != torch.long:
        raise TypeError(f"targets: expected dtype torch.int64 (long), got {targets.dtype}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")


def optimizer_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: the weights of nn.Linear layers decay; everything else does not (the embedding, which
    is also the LM head, norm weights, the forget-gate bias, the short conv's per-channel filters and bias).
    Every parameter is in exactly one group (a tied parameter once)."""
    matrices = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if id(p) in matrices else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
