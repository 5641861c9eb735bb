"""The language model on the CPU: training path, decoding path, document resets, scan impls, params, errors."""

import math

import pytest
import torch

from kernels.gate import Gate, gate_pairs
from lrnn_lm.attention import KVCache
from lrnn_lm.config import ModelConfig
from lrnn_lm.model import LinearRNNLM, RecurrentState, optimizer_param_groups

from .tiny_model import EOS, VOCAB, tiny_config, tiny_model

T = 24
EOS_POSITIONS = (0, 6, 13, 14)  # a document of one token (13), and one that opens the sequence


def packed_tokens(batch_size: int = 2, seq_len: int = T, seed: int = 1) -> torch.Tensor:
    """(B, T) ids in [1, V) with EOS at EOS_POSITIONS in row 0 (row 1 has none: one long document)."""
    tokens = torch.randint(1, VOCAB, (batch_size, seq_len), generator=torch.Generator().manual_seed(seed))
    tokens[0, [p for p in EOS_POSITIONS if p < seq_len]] = EOS
    return tokens


def step_all(model: LinearRNNLM, tokens: torch.Tensor, state) -> tuple[torch.Tensor, list]:
    """Feed tokens (B, T) one at a time -> (logits (B, T, V), final state)."""
    logits = []
    for t in range(tokens.shape[1]):
        step_logits, state = model.step(tokens[:, t], state)
        logits.append(step_logits)
    return torch.stack(logits, dim=1), state


# --- training path ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mixer", ["lrnn", "attention"])
def test_forward_backward_reaches_every_parameter(mixer):
    model = tiny_model(mixer=mixer)
    tokens = packed_tokens()
    logits = model(tokens)
    assert logits.shape == (2, T, VOCAB) and logits.dtype == torch.float32
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    assert math.isfinite(loss.item())
    assert abs(loss.item() - math.log(VOCAB)) < 0.5  # near uniform at init
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("impl", ["auto", "triton", "sequential"])
def test_scan_impls_agree_on_loss_and_gradients(impl):
    """On CUDA where there is a GPU (the Triton scans run compiled), else on the CPU (interpreted)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokens = packed_tokens(seq_len=40).to(device)  # T past several tiles of the interpreted Triton scans (BLOCK_T = 16)
    results = {}
    for scan in ("reference", impl):
        model = tiny_model(scan=scan).to(device)
        logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        results[scan] = loss.detach(), {n: p.grad for n, p in model.named_parameters()}
    (ref_loss, ref_grads), (loss, grads) = results["reference"], results[impl]
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_gates_lower_bound_and_complement():
    model = tiny_model(dtype=torch.float64, n_layers=4)
    f = torch.linspace(-40, 40, 81, dtype=torch.float64)[:, None].expand(-1, 32)  # (81, R)
    v = torch.ones_like(f)
    for layer, block in enumerate(model.blocks):
        mixer = block.mixer
        assert mixer.lower_bound == layer / 4
        a, x_in = gate_pairs(f, v, Gate(mixer.forget_bias, mixer.lower_bound, None))  # x_in = (1 - a) * 1
        assert (a >= layer / 4).all() and (a <= 1).all()
        assert (x_in > 0).all()  # 1 - a stays positive where a rounds to 1
        torch.testing.assert_close(a + x_in, torch.ones_like(a))
    flat = tiny_model(gate_lower_bound=False, n_layers=4)
    assert all(block.mixer.lower_bound == 0.0 for block in flat.blocks)


# --- decoding path ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reset", [True, False])
@pytest.mark.parametrize("conv_size", [1, 4])
@pytest.mark.parametrize("mixer", ["lrnn", "attention"])
def test_step_matches_forward(mixer, conv_size, reset):
    model = tiny_model(torch.float64, mixer=mixer, conv_size=conv_size, reset_at_doc_start=reset)
    tokens = packed_tokens()
    with torch.no_grad():
        step_logits, _ = step_all(model, tokens, model.init_state(2))
        torch.testing.assert_close(step_logits, model(tokens), rtol=0, atol=1e-10)


@pytest.mark.parametrize("split", [1, 2, 7, 14, 15, T - 1])  # T0 < K-1; EOS in the conv tail
@pytest.mark.parametrize("conv_size", [1, 4])
@pytest.mark.parametrize("mixer", ["lrnn", "attention"])
def test_prefill_then_step_matches_forward(mixer, conv_size, split):
    model = tiny_model(torch.float64, mixer=mixer, conv_size=conv_size)
    tokens = packed_tokens()
    with torch.no_grad():
        prefill_logits, state = model.prefill(tokens[:, :split])
        step_logits, _ = step_all(model, tokens[:, split:], state)
        full = model(tokens)
    torch.testing.assert_close(prefill_logits, full[:, :split], rtol=0, atol=1e-10)
    torch.testing.assert_close(step_logits, full[:, split:], rtol=0, atol=1e-10)


@pytest.mark.parametrize("mixer", ["lrnn", "attention"])
def test_prefill_of_the_last_position_only(mixer):
    """prefill(last_only=True): the last position's logits, (B, V), and the same state, without the (B, T, V)
    logits a long prompt would otherwise hold."""
    model = tiny_model(torch.float64, mixer=mixer)
    tokens = packed_tokens()
    with torch.no_grad():
        all_logits, all_state = model.prefill(tokens)
        last, state = model.prefill(tokens, last_only=True)
    assert last.shape == (tokens.shape[0], VOCAB)
    torch.testing.assert_close(last, all_logits[:, -1], rtol=0, atol=1e-10)
    for layer, layer_all in zip(state, all_state):
        for field, field_all in zip(layer, layer_all):
            torch.testing.assert_close(field, field_all, rtol=0, atol=0)


def test_state_structure_and_size():
    model = tiny_model(conv_size=4)
    state = model.init_state(3)
    assert len(state) == 2 and all(isinstance(s, RecurrentState) for s in state)
    assert state[0].h.shape == (3, 32) and state[0].h.dtype == torch.float32
    assert state[0].conv.shape == (3, 3, 32)
    _, state = model.prefill(packed_tokens(batch_size=3, seq_len=T))
    _, state = model.step(torch.ones(3, dtype=torch.long), state)
    assert [tuple(t.shape) for t in state[0]] == [(3, 32), (3, 3, 32)]  # O(1): independent of T

    attention = tiny_model(mixer="attention")
    _, cache = attention.prefill(packed_tokens(seq_len=5))
    assert isinstance(cache[0], KVCache) and cache[0].k.shape == (2, 4, 5, 8)


def test_autocast_bf16_forward_and_step():
    model = tiny_model(conv_size=4)
    tokens = packed_tokens()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(tokens)
        step_logits, state = step_all(model, tokens, model.init_state(2))
    assert state[0].h.dtype == torch.float32  # the recurrence stays in float32 under autocast
    torch.testing.assert_close(step_logits.float(), logits.float(), rtol=0, atol=0.05)


# --- document resets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("reset", [True, False])
@pytest.mark.parametrize("conv_size", [1, 4])
def test_document_reset_isolates_later_documents(conv_size, reset):
    model = tiny_model(conv_size=conv_size, reset_at_doc_start=reset)
    start = 13  # EOS opens the document at 13 (and another at 14)
    tokens = packed_tokens()
    perturbed = tokens.clone()
    perturbed[0, 1:start] = torch.randint(1, VOCAB, (start - 1,), generator=torch.Generator().manual_seed(7))
    perturbed[0, 6] = EOS  # the earlier documents change, their boundaries do not
    with torch.no_grad():
        later, later_perturbed = model(tokens)[0, start:], model(perturbed)[0, start:]
    if reset:
        torch.testing.assert_close(later_perturbed, later, rtol=0, atol=0)
    else:
        assert (later_perturbed - later).abs().max() > 1e-4


def test_document_reset_in_step_drops_the_previous_state():
    model = tiny_model(conv_size=4)
    eos = torch.full((2,), EOS)
    with torch.no_grad():
        _, state = model.prefill(packed_tokens(seq_len=10))
        from_history, _ = model.step(eos, state)
        from_scratch, _ = model.step(eos, model.init_state(2))
    torch.testing.assert_close(from_history, from_scratch, rtol=0, atol=0)


# --- parameters ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [dict(d_model=32, n_layers=2), dict(d_model=256, n_layers=4)])
def test_attention_params_within_5_percent_of_lrnn(width):
    lrnn = LinearRNNLM(tiny_config(**width)).num_params()
    attention = LinearRNNLM(tiny_config(mixer="attention", **width)).num_params()
    assert abs(attention - lrnn) / lrnn < 0.05


def test_num_params_counts_the_tied_embedding_once():
    cfg = tiny_config(conv_size=4)
    V, D, R, K, F, L = cfg.vocab_size, cfg.d_model, cfg.d_rnn, cfg.conv_size, cfg.d_mlp, cfg.n_layers
    mixer = 4 * D * R + R + (K * R + R) + R  # in/out projections, forget bias, conv, output norm
    expected = V * D + L * (mixer + 3 * D * F + 2 * D) + D
    assert LinearRNNLM(cfg).num_params() == expected


def test_residual_projections_are_scaled_down_with_depth():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=256, n_layers=4)
    model = LinearRNNLM(cfg)
    expected = cfg.init_std / math.sqrt(2 * cfg.n_layers)
    for block in model.blocks:
        assert abs(block.mixer.out_proj.weight.std().item() / expected - 1) < 0.05
        assert abs(block.mlp.out_proj.weight.std().item() / expected - 1) < 0.05
        assert abs(block.mixer.in_proj.weight.std().item() / cfg.init_std - 1) < 0.05


@pytest.mark.parametrize("mixer", ["lrnn", "attention"])
def test_optimizer_param_groups_partition(mixer):
    model = tiny_model(mixer=mixer)
    decay, no_decay = optimizer_param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = [id(p) for group in (decay, no_decay) for p in group["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    decay_ids = {id(p) for p in decay["params"]}
    for name, p in model.named_parameters():
        is_matrix = name.endswith("_proj.weight")
        assert (id(p) in decay_ids) == is_matrix, name
    assert all(p.dim() == 2 for p in decay["params"])
    torch.optim.AdamW(optimizer_param_groups(model, 0.1), lr=1e-3)  # accepted as is


# --- bad input ----------------------------------------------------------------------------------------------


def _state_of_batch_3(model):
    return model.init_state(3)


BAD_CALLS = {
    "tokens 1-d": (lambda m: m(torch.ones(5, dtype=torch.long)), ValueError, "tokens: expected a non-empty 2-d"),
    "tokens empty": (lambda m: m(torch.ones(2, 0, dtype=torch.long)), ValueError, "tokens: expected a non-empty"),
    "tokens float": (lambda m: m(torch.ones(2, 5)), TypeError, "tokens: expected dtype torch.int64"),
    "tokens not a tensor": (lambda m: m([[1, 2]]), TypeError, "tokens: expected a torch.Tensor"),
    "token id >= vocab": (lambda m: m(torch.full((2, 5), VOCAB)), ValueError, r"tokens: expected ids in \[0, 64\)"),
    "token id < 0": (lambda m: m(torch.full((2, 5), -1)), ValueError, r"tokens: expected ids in \[0, 64\)"),
    "prefill id >= vocab": (lambda m: m.prefill(torch.full((1, 3), 99)), ValueError, "tokens: expected ids"),
    "nll id >= vocab": (lambda m: m.nll(torch.full((1, 3), VOCAB), torch.ones(1, 3, dtype=torch.long)), ValueError,
                        "tokens: expected ids"),
    "nll target id >= vocab": (lambda m: m.nll(torch.ones(1, 3, dtype=torch.long), torch.full((1, 3), VOCAB)),
                               ValueError, r"targets: expected ids in \[0, 64\) or ignore_index -100"),
    "nll target id < 0, not ignored": (lambda m: m.nll(torch.ones(1, 3, dtype=torch.long), torch.full((1, 3), -1)),
                                       ValueError, "targets: expected ids"),
    "nll targets shape": (lambda m: m.nll(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 2, dtype=torch.long)),
                          ValueError, r"targets: expected the tokens' shape \(1, 3\), got \(1, 2\)"),
    "nll targets float": (lambda m: m.nll(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3)), TypeError,
                          "targets: expected dtype torch.int64"),
    "step token 2-d": (lambda m: m.step(torch.ones(3, 1, dtype=torch.long), _state_of_batch_3(m)), ValueError,
                       "token: expected a non-empty 1-d"),
    "step token int32": (lambda m: m.step(torch.ones(3, dtype=torch.int32), _state_of_batch_3(m)), TypeError,
                         "token: expected dtype torch.int64"),
    "step token id >= vocab": (lambda m: m.step(torch.full((3,), VOCAB), _state_of_batch_3(m)), ValueError,
                               "token: expected ids"),
    "state batch size": (lambda m: m.step(torch.ones(2, dtype=torch.long), _state_of_batch_3(m)), ValueError,
                         r"state\[0\]: expected batch size 2 \(token's\), got 3"),
    "state length": (lambda m: m.step(torch.ones(3, dtype=torch.long), _state_of_batch_3(m)[:1]), ValueError,
                     "state: expected a list of 2 per-layer states"),
    "state type": (lambda m: m.step(torch.ones(2, dtype=torch.long), [KVCache(torch.zeros(2), torch.zeros(2))] * 2),
                   TypeError, r"state\[0\]: expected RecurrentState, got KVCache"),
    "init_state batch size": (lambda m: m.init_state(0), ValueError, "batch_size: expected an integer >= 1"),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_input_raises(case):
    call, error, match = BAD_CALLS[case]
    with pytest.raises(error, match=match):
        call(tiny_model())


@pytest.mark.parametrize(
    "overrides, match",
    [(dict(eos_id=VOCAB), "model.eos_id"), (dict(eos_id=-1), "model.eos_id"),
     (dict(reset_at_doc_start=1), "model.reset_at_doc_start"), (dict(gate_lower_bound="yes"), "model.gate_lower")],
)
def test_bad_model_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**overrides)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the compiled chunk steps run on CUDA"))])
@pytest.mark.parametrize("chunk", [None, 7])
def test_nll_is_the_cross_entropy_of_the_logits_without_holding_them(chunk, device):
    """model.nll (the chunked linear cross-entropy of loss.py) gives the summed cross-entropy of forward's logits and
    the same gradients, in float64, with ignored targets, whether the tokens fit one chunk or need several (a last
    shorter one included), eagerly on the CPU and with the chunk steps compiled on CUDA."""
    import lrnn_lm.loss as loss_module

    model = tiny_model(torch.float64, scan="reference").to(device)
    model.loss_compiled = device == "cuda"  # as compile_blocks leaves it
    tokens = packed_tokens().to(device)
    targets = torch.roll(tokens, -1, dims=1)
    targets[1, -5:] = -100  # padding
    ref = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten(), ignore_index=-100,
                                            reduction="sum")
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    with pytest.MonkeyPatch.context() as mp:
        if chunk:
            mp.setattr(loss_module, "MAX_CHUNK_ELEMENTS", chunk * VOCAB)
        nll, n = model.nll(tokens, targets)
    grads = torch.autograd.grad(nll, list(model.parameters()))
    assert n == (targets != -100).sum()
    torch.testing.assert_close(nll, ref.float(), rtol=1e-6, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


def test_nll_without_the_id_check_reads_nothing_back_and_gives_the_same_loss():
    """check_ids=False (training's call) skips the range check, a host read of a device value (a sync on a GPU),
    and nothing else. (The CPU's doubling scan reads back values of its own; a GPU's Triton scan reads none.)"""
    model = tiny_model(dropout=0.0)
    tokens = packed_tokens()
    reads = {True: 0, False: 0}
    losses = {}
    original = torch.Tensor.__bool__

    def counted(t):
        reads[check] += 1
        return original(t)

    torch.Tensor.__bool__ = counted
    try:
        for check in (True, False):
            losses[check] = model.nll(tokens[:, :-1], tokens[:, 1:], check_ids=check)
    finally:
        torch.Tensor.__bool__ = original
    assert reads[True] == reads[False] + 1
    torch.testing.assert_close(losses[False], losses[True])


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    base, checkpointed = tiny_model(dropout=0.0), tiny_model(dropout=0.0, activation_checkpointing=True)
    tokens = packed_tokens()
    results = []
    for model in (base, checkpointed):
        nll, _ = model.nll(tokens[:, :-1], tokens[:, 1:])
        results.append((nll, torch.autograd.grad(nll, list(model.parameters()))))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)


def test_the_chunk_steps_compile_to_their_eager_values():
    """The cross-entropy's chunk steps as CUDA runs them, compiled (here by Inductor's CPU backend): the eager values,
    for two chunk lengths (the second compiles the length as dynamic) and bf16 logits."""
    from lrnn_lm.loss import chunk_backward, chunk_forward

    torch._dynamo.reset()
    forward, backward = torch.compile(chunk_forward), torch.compile(chunk_backward)
    g = torch.Generator().manual_seed(0)
    for n in (12, 5):
        logits = torch.randn(n, VOCAB, generator=g).to(torch.bfloat16)
        y = torch.randint(0, VOCAB, (n,), generator=g)
        keep = torch.rand(n, generator=g) > 0.3
        scale = (keep * 0.7)[:, None]
        for got, want in zip(forward(logits, y, keep), chunk_forward(logits, y, keep)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        lse = chunk_forward(logits, y, keep)[0]
        torch.testing.assert_close(backward(logits, lse, y, scale), chunk_backward(logits, lse, y, scale))
