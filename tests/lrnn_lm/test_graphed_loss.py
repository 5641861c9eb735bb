"""GraphedNLL: the training loss and its gradients replayed from CUDA graphs equal the model's own, step after step
of an optimizer (on a GPU); where graphs apply, and the errors where they do not (on the CPU)."""

import copy

import pytest
import torch

from lrnn_lm.config import TrainerConfig
from lrnn_lm.graphed_loss import GraphedNLL, graphs_apply
from lrnn_lm.train import resolve_cuda_graphs

from .tiny_model import VOCAB, tiny_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def batch(B: int = 3, T: int = 300, seed: int = 0, device: str = "cuda") -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets): (B, T) ids with EOS (0) among them, a few targets ignored (-100)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (B, T + 1), generator=g)
    targets = tokens[:, 1:].clone()
    targets[:, :5] = -100
    return tokens[:, :-1].to(device), targets.to(device)


@cuda
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_graphed_steps_match_the_models_own(autocast, compiled):
    """Four optimizer steps on fresh batches: loss, every gradient and the updated weights agree with the same steps
    run without graphs."""
    plain = tiny_model(dropout=0.0, d_model=64, conv_size=4).cuda().train()
    graphed_model = copy.deepcopy(plain)
    if compiled:
        plain.compile_blocks()
        graphed_model.compile_blocks()
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, fused=True) for m in (plain, graphed_model)]
    graphed = None
    tol = dict(rtol=2e-2, atol=2e-4) if autocast else dict(rtol=1e-4, atol=1e-6)
    for step in range(4):
        inputs, targets = batch(seed=step)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            expected = plain.nll(inputs, targets, check_ids=False)[0]
            if graphed is None:
                graphed = GraphedNLL(graphed_model, inputs, targets, ignore_index=-100)
            got = graphed(inputs, targets)
        torch.testing.assert_close(got, expected, **tol)
        expected.backward()
        got.backward()
        for (name, p), q in zip(plain.named_parameters(), graphed_model.parameters()):
            assert q.grad is not None and torch.isfinite(q.grad).all(), name
            torch.testing.assert_close(q.grad, p.grad, **tol, msg=lambda m: f"{name} at step {step}: {m}")
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, p), q in zip(plain.named_parameters(), graphed_model.parameters()):
        torch.testing.assert_close(q, p, **tol, msg=lambda m: f"{name} after 4 steps: {m}")


@cuda
def test_dropout_masks_advance_and_the_rng_is_put_back():
    model = tiny_model(dropout=0.3, d_model=64).cuda().train()
    inputs, targets = batch()
    torch.cuda.manual_seed(5)
    before = torch.cuda.get_rng_state()
    graphed = GraphedNLL(model, inputs, targets, ignore_index=-100)
    assert torch.equal(torch.cuda.get_rng_state(), before)  # the warm-up's draws are not kept
    first = graphed(inputs, targets).item()
    second = graphed(inputs, targets).item()
    assert first != second  # each replay draws new masks
    assert not torch.equal(torch.cuda.get_rng_state(), before)


@cuda
def test_a_batch_of_another_shape_does_not_fit():
    model = tiny_model(d_model=64).cuda().train()
    graphed = GraphedNLL(model, *batch(), ignore_index=-100)
    assert graphed.fits(*batch(seed=1))
    assert not graphed.fits(*batch(T=299))


def test_the_capture_needs_training_mode():
    with pytest.raises(ValueError, match="training mode"):
        GraphedNLL(tiny_model().eval(), *batch(device="cpu"), ignore_index=-100)


def test_where_graphs_apply():
    cuda0 = torch.device("cuda", 0)
    assert graphs_apply(cuda0, world_size=1, accumulate_grad_batches=1) is None
    assert "CUDA device" in graphs_apply(torch.device("cpu"), 1, 1)
    assert "single device" in graphs_apply(cuda0, 2, 1)
    assert "accumulate" in graphs_apply(cuda0, 1, 4)
    assert "checkpointing" in graphs_apply(cuda0, 1, 1, activation_checkpointing=True)


def test_trainer_cuda_graphs_setting():
    cuda0 = torch.device("cuda", 0)
    auto = dict(cuda_graphs="auto")
    assert resolve_cuda_graphs(TrainerConfig(**auto), cuda0, 1) is True
    assert resolve_cuda_graphs(TrainerConfig(**auto), torch.device("cpu"), 1) is False  # only where they apply
    assert resolve_cuda_graphs(TrainerConfig(cuda_graphs=False), cuda0, 1) is False
    assert resolve_cuda_graphs(TrainerConfig(**auto, accumulate_grad_batches=2), cuda0, 1) is False
    assert resolve_cuda_graphs(TrainerConfig(**auto), cuda0, 1, activation_checkpointing=True) is False
    with pytest.raises(ValueError, match="trainer.cuda_graphs.*accumulate_grad_batches 2"):
        resolve_cuda_graphs(TrainerConfig(cuda_graphs=True, accumulate_grad_batches=2), cuda0, 1)
    with pytest.raises(ValueError, match="trainer.cuda_graphs"):
        TrainerConfig(cuda_graphs="maybe")
