"""sample(): shapes, greedy decoding, top-k, reproducibility, mode restore, argument checks."""

import pytest
import torch

from lrnn_lm.config import ModelConfig
from lrnn_lm.model import LinearRNNLM
from lrnn_lm.sampling import sample

VOCAB = 64


def tiny_model(mixer: str = "lrnn") -> LinearRNNLM:
    torch.manual_seed(0)
    return LinearRNNLM(ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, mixer=mixer, eos_id=0))


def prompt(batch_size: int = 2, length: int = 5) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch_size, length), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("mixer", ["lrnn", "attention"])
def test_shape_and_prompt_kept(mixer):
    p = prompt()
    out = sample(tiny_model(mixer), p, max_new_tokens=7)
    assert out.shape == (2, 12) and out.dtype == torch.long
    assert torch.equal(out[:, :5], p)
    assert ((out >= 0) & (out < VOCAB)).all()


def test_zero_new_tokens_returns_the_prompt():
    p = prompt()
    assert torch.equal(sample(tiny_model(), p, max_new_tokens=0), p)


@pytest.mark.parametrize("mixer", ["lrnn", "attention"])
def test_greedy_is_the_argmax_of_the_parallel_forward(mixer):
    model = tiny_model(mixer)
    out = sample(model, prompt(), max_new_tokens=8, temperature=0.0)
    assert torch.equal(sample(model, prompt(), max_new_tokens=8, temperature=0.0), out)
    with torch.no_grad():
        expected = model(out[:, :-1]).argmax(dim=-1)[:, 4:]  # (B, 8): the prediction at each generated slot
    assert torch.equal(out[:, 5:], expected)


def test_top_k_1_is_greedy():
    model = tiny_model()
    greedy = sample(model, prompt(), max_new_tokens=8, temperature=0.0)
    top1 = sample(model, prompt(), max_new_tokens=8, temperature=1.0, top_k=1)
    assert torch.equal(top1, greedy)


def test_a_tiny_temperature_samples_the_argmax():
    """1e-40 divides logits past fp32's range: that must still be (near-)greedy decoding, not a NaN softmax."""
    model = tiny_model()
    greedy = sample(model, prompt(), max_new_tokens=8, temperature=0.0)
    assert torch.equal(sample(model, prompt(), max_new_tokens=8, temperature=1e-40), greedy)


def test_top_k_samples_only_the_k_most_likely():
    model = tiny_model()
    p = prompt(batch_size=1).expand(256, -1)
    out = sample(model, p, max_new_tokens=1, temperature=2.0, top_k=3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        allowed = model(p[:1]).topk(3, dim=-1).indices[0, -1]  # (3,)
    assert torch.isin(out[:, -1], allowed).all()
    assert len(out[:, -1].unique()) > 1


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
        (dict(prompt=torch.ones(5, dtype=torch.long)), ValueError, "prompt: expected a 2-d tensor"),
        (dict(prompt=torch.ones(2, 0, dtype=torch.long)), ValueError, "prompt: expected a 2-d tensor"),
        (dict(prompt=torch.ones(2, 3)), TypeError, "prompt: expected dtype torch.int64"),
        (dict(prompt=torch.full((2, 3), VOCAB)), ValueError, "tokens: expected ids"),
        (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
        (dict(max_new_tokens=2.0), ValueError, "max_new_tokens"),
        (dict(temperature=-0.5), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(top_k=0), ValueError, "top_k"),
        (dict(top_k=2.5), ValueError, "top_k"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    args = dict(prompt=prompt(), max_new_tokens=3) | kwargs
    with pytest.raises(error, match=match):
        sample(tiny_model(), **args)
