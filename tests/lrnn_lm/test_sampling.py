"""sample(): shapes, greedy decoding, top-k and top-p, prompts of different lengths, EOS, reproducibility, mode
restore, argument checks; on a GPU, the CUDA-graph decoder against the eager one."""

import pytest
import torch

from lrnn_lm.model import LinearRNNLM
from lrnn_lm.sampling import prefill_each, sample

from .tiny_model import VOCAB, tiny_model

def prompt(batch_size: int = 2, length: int = 5) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch_size, length), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("mixer", ["lrnn", "attention"])
def test_shape_of_the_new_tokens(mixer):
    out = sample(tiny_model(mixer=mixer), prompt(), max_new_tokens=7)
    assert out.shape == (2, 7) and out.dtype == torch.long
    assert ((out >= 0) & (out < VOCAB)).all()


def test_zero_new_tokens():
    assert sample(tiny_model(), prompt(), max_new_tokens=0).shape == (2, 0)


@pytest.mark.parametrize("mixer", ["lrnn", "attention"])
def test_greedy_is_the_argmax_of_the_parallel_forward(mixer):
    model = tiny_model(mixer=mixer)
    new = sample(model, prompt(), max_new_tokens=8, temperature=0.0)
    assert torch.equal(sample(model, prompt(), max_new_tokens=8, temperature=0.0), new)
    out = torch.cat([prompt(), new], dim=1)
    with torch.no_grad():
        expected = model(out[:, :-1]).argmax(dim=-1)[:, 4:]  # (B, 8): the prediction at each generated slot
    assert torch.equal(new, expected)


def test_top_k_1_is_greedy():
    model = tiny_model()
    greedy = sample(model, prompt(), max_new_tokens=8, temperature=0.0)
    top1 = sample(model, prompt(), max_new_tokens=8, temperature=1.0, top_k=1)
    assert torch.equal(top1, greedy)


@pytest.mark.parametrize("temperature", [1e-40, 1e-46, 1e-300])
def test_a_tiny_temperature_samples_the_argmax(temperature):
    """1e-40 divides logits past fp32's range, and 1e-46 and below are 0 in fp32: each must still be greedy
    decoding, not a NaN softmax (whose argmax is token 0)."""
    model = tiny_model()
    greedy = sample(model, prompt(), max_new_tokens=8, temperature=0.0)
    assert torch.equal(sample(model, prompt(), max_new_tokens=8, temperature=temperature), greedy)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_vocab_limit_draws_only_ids_below_it(temperature):
    """A tokenizer smaller than the model's vocabulary: ids past its own stand for no text and are never drawn."""
    model = tiny_model()
    p = prompt(batch_size=1).expand(64, -1)
    with torch.no_grad():
        limit = int(model(p[:1])[0, -1].argmax())  # the unrestricted greedy choice lies just past the limit
    assert limit >= 1
    out = sample(model, p, max_new_tokens=6, temperature=temperature, vocab_limit=limit,
                 generator=torch.Generator().manual_seed(0))
    assert (out < limit).all()
    with pytest.raises(ValueError, match="vocab_limit"):
        sample(model, p, max_new_tokens=1, vocab_limit=VOCAB + 1)


def test_top_k_samples_only_the_k_most_likely():
    model = tiny_model()
    p = prompt(batch_size=1).expand(256, -1)
    out = sample(model, p, max_new_tokens=1, temperature=2.0, top_k=3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        allowed = model(p[:1]).topk(3, dim=-1).indices[0, -1]  # (3,)
    assert torch.isin(out[:, -1], allowed).all()
    assert len(out[:, -1].unique()) > 1


def test_top_p_samples_only_the_nucleus():
    """Only the likeliest tokens whose probabilities reach top_p are drawn; a tiny top_p is greedy."""
    model = tiny_model()
    p = prompt(batch_size=1).expand(512, -1)
    with torch.no_grad():
        probs = torch.softmax(model(p[:1])[0, -1] / 2.0, dim=-1)
    sorted_probs, order = probs.sort(descending=True)
    n_nucleus = int(((sorted_probs.cumsum(0) - sorted_probs) < 0.5).sum())
    out = sample(model, p, max_new_tokens=1, temperature=2.0, top_p=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.isin(out[:, 0], order[:n_nucleus]).all() and len(out[:, 0].unique()) == n_nucleus > 1
    greedy = sample(model, prompt(), max_new_tokens=6, temperature=0.0)
    assert torch.equal(sample(model, prompt(), max_new_tokens=6, temperature=1.0, top_p=1e-6), greedy)


def test_sampling_draws_the_softmax():
    """argmax(p / Exp(1)) draws token i with probability p_i: frequencies over many draws match the softmax."""
    model = tiny_model()
    p = prompt(batch_size=1).expand(20000, -1)
    out = sample(model, p, max_new_tokens=1, temperature=1.0, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        probs = torch.softmax(model(p[:1])[0, -1], dim=-1)
    freq = torch.bincount(out[:, 0], minlength=VOCAB).double() / out.shape[0]
    assert (freq - probs.double()).abs().max() < 0.015


def test_prompts_of_different_lengths_each_continue_as_they_would_alone():
    model = tiny_model().double()
    g = torch.Generator().manual_seed(5)
    rows = [torch.randint(1, VOCAB, (n,), generator=g) for n in (3, 9, 1, 9, 6)]
    logits, state = prefill_each(model, rows)
    together = sample(model, rows, max_new_tokens=10, temperature=0.0)
    for i, row in enumerate(rows):
        alone_logits, alone_state = model.prefill(row[None])
        torch.testing.assert_close(logits[i], alone_logits[0, -1], rtol=1e-12, atol=1e-12)
        for layer, alone in zip(state, alone_state):
            for field, field_alone in zip(layer, alone):
                torch.testing.assert_close(field[i], field_alone[0], rtol=1e-12, atol=1e-12)
        assert torch.equal(together[i], sample(model, row[None], max_new_tokens=10, temperature=0.0)[0])


def test_each_row_stops_at_its_own_eos():
    model = tiny_model()

    def run(eos_id):
        return sample(model, prompt(batch_size=4), max_new_tokens=40, temperature=1.0, eos_id=eos_id,
                      generator=torch.Generator().manual_seed(2))

    free = run(None)
    eos = int(free[0, 10])  # a token that row 0 draws mid-row, and then goes on past
    assert (free[0, 11:] != eos).any()
    stopped = run(eos)
    ended = 0
    for row, free_row in zip(stopped.tolist(), free.tolist()):
        end = free_row.index(eos) + 1 if eos in free_row else len(free_row)
        ended += end < len(free_row)
        assert row[:end] == free_row[:end]  # the same draws up to and including its EOS
        assert all(t == eos for t in row[end:])
    assert ended >= 1


def test_attention_needs_prompts_of_one_length():
    rows = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
    with pytest.raises(ValueError, match="prompts of different lengths need the recurrent mixer"):
        sample(tiny_model(mixer="attention"), rows, max_new_tokens=2)


def test_generator_makes_sampling_reproducible():
    model = tiny_model()

    def run(seed: int) -> torch.Tensor:
        return sample(model, prompt(), max_new_tokens=16, top_k=20, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


@pytest.mark.parametrize("training", [True, False])
def test_training_flag_is_restored(training):
    model = tiny_model()
    model.train(training)
    sample(model, prompt(), max_new_tokens=2)
    assert model.training is training
    assert all(m.training is training for m in model.modules())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(prompts=torch.ones(5, dtype=torch.long)), ValueError, "prompts: expected a 2-d tensor"),
        (dict(prompts=torch.ones(2, 0, dtype=torch.long)), ValueError, "prompts: expected a 2-d tensor"),
        (dict(prompts=torch.ones(2, 3)), TypeError, r"prompts\[0\]: expected dtype torch.int64"),
        (dict(prompts=[torch.ones(2, dtype=torch.long), torch.ones(0, dtype=torch.long)]), ValueError, r"prompts\[1\]"),
        (dict(prompts=torch.full((2, 3), VOCAB)), ValueError, "tokens: expected ids"),
        (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
        (dict(max_new_tokens=2.0), ValueError, "max_new_tokens"),
        (dict(temperature=-0.5), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(top_k=0), ValueError, "top_k"),
        (dict(top_k=2.5), ValueError, "top_k"),
        (dict(top_p=0.0), ValueError, "top_p"),
        (dict(top_p=1.5), ValueError, "top_p"),
        (dict(eos_id=VOCAB), ValueError, "eos_id"),
        (dict(eos_id=True), ValueError, "eos_id"),
        (dict(temperature=True), ValueError, "temperature"),
        (dict(top_p=True), ValueError, "top_p"),
        (dict(prompts=torch.ones(2, 3, dtype=torch.long, device="meta")), ValueError,
         r"prompts: expected the model's device cpu, got meta"),
        (dict(decoder="fast"), ValueError, "decoder"),
        (dict(decoder="graph"), ValueError, "decoder: expected 'eager' or 'auto' off CUDA"),
        (dict(decoder="graph", mixer="attention"), ValueError, "for the 'attention' mixer"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    kwargs = dict(kwargs)
    model = tiny_model(mixer=kwargs.pop("mixer", "lrnn"))
    args = dict(prompts=prompt(), max_new_tokens=3) | kwargs
    if match.endswith("off CUDA") and torch.cuda.is_available():
        pytest.skip("the graph decoder runs on CUDA")
    with pytest.raises(error, match=match):
        sample(model, **args)


def test_the_graph_decoders_step_writes_the_state_in_place_with_weights_cast_once():
    """step_in_place, compiled (as the CUDA-graph decoder captures it) and eager: the logits of model.decode_step, the
    new state written into the state's own tensors; under autocast, the weights cast once give the very logits of
    autocast's per-matmul casts. One compilation serves every call, whatever the DecodeStep wrapper."""
    from torch._dynamo.utils import counters

    from lrnn_lm.decoding import DecodeStep, autocast_weights, compiled_step_in_place, step_in_place

    model = tiny_model().eval()
    tokens = prompt()
    torch._dynamo.reset()
    graphs_before = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        _, state = model.prefill(tokens)
        token = tokens[:, -1]
        logits, expected = model.decode_step(token, state)
        for step in (step_in_place, compiled_step_in_place(), compiled_step_in_place()):
            buffers = [type(s)(*(t.clone() for t in s)) for s in state]
            got = step(DecodeStep(model), {}, token, buffers)
            torch.testing.assert_close(got, logits, rtol=1e-5, atol=1e-5)
            for new, written in zip(expected, buffers):
                for a, b in zip(new, written):
                    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        assert counters["stats"]["unique_graphs"] == graphs_before + 1
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, _ = model.decode_step(token, state)
            weights = autocast_weights(DecodeStep(model), "cpu")
            assert weights and all(w.dtype == torch.bfloat16 for w in weights.values())
            buffers = [type(s)(*(t.clone() for t in s)) for s in state]
            assert torch.equal(step_in_place(DecodeStep(model), weights, token, buffers), logits)
        assert autocast_weights(DecodeStep(model), "cpu") == {}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert autocast_weights(DecodeStep(tiny_model(torch.float64)), "cpu") == {}  # autocast leaves float64 be


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("compile_step", [True, False], ids=["compiled", "eager-step"])
def test_graph_decoder_gives_the_eager_tokens_under_greedy_decoding(compile_step, monkeypatch):
    """small.yaml's shape, prompts of different lengths: the CUDA-graph decoder's greedy tokens are the eager step's,
    and EOS ends rows as it does eagerly. The eager step replayed from a graph runs the very kernels of the eager
    loop (bf16 autocast); the compiled step fuses them, which moves the logits by rounding, so it is compared in
    float32, where a flipped argmax would need a near-tie."""
    import lrnn_lm.decoding as decoding
    from lrnn_lm.config import load_config

    init = decoding.CudaGraphDecoder.__init__
    monkeypatch.setattr(decoding.CudaGraphDecoder, "__init__",
                        lambda self, *a, **k: init(self, *a, **(k | {"compile": compile_step})))
    torch.manual_seed(0)
    model = LinearRNNLM(load_config("small.yaml").model).cuda().eval()
    g = torch.Generator("cuda").manual_seed(0)
    rows = [torch.randint(1, model.cfg.vocab_size, (n,), device="cuda", generator=g) for n in (1024, 700, 1024, 33)]
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=not compile_step):
        eager = sample(model, rows, 96, temperature=0.0, decoder="eager")
        graph = sample(model, rows, 96, temperature=0.0, decoder="graph")
        assert torch.equal(graph, eager)
        eos = int(eager[0, 40])  # a token row 0 emits: make it the end of a document
        eager = sample(model, rows, 96, temperature=0.0, eos_id=eos, decoder="eager")
        graph = sample(model, rows, 96, temperature=0.0, eos_id=eos, decoder="graph")
    assert torch.equal(graph, eager) and (eager[0, 41:] == eos).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graph_decoding_memory_does_not_grow_from_call_to_call():
    """Each call captures its own graph; once a call has run, more calls (and more tokens) hold no more memory."""
    torch.manual_seed(0)
    model = tiny_model(d_model=64).cuda().eval()
    p = prompt().cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        sample(model, p, 64, temperature=0.0, decoder="graph")  # compilation, caches, the warm-up stream
        torch.cuda.synchronize()
        after_first = torch.cuda.memory_allocated()
        for new_tokens in (64, 256, 64):
            sample(model, p, new_tokens, temperature=0.0, decoder="graph")
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= after_first
