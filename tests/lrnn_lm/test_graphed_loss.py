"""GraphedNLL: the training loss and its gradients replayed from CUDA graphs equal the model's own, step after step
of an optimizer, on every scan path and with a loss of several chunks; train.py with graphs trains as without them,
and waits for the GPU at log steps only (on a GPU). Where graphs apply, and the errors where they do not (on the
CPU)."""

import copy

import lightning as L
import pytest
import torch

import lrnn_lm.loss
from lrnn_lm.config import Config, DataConfig, ModelConfig, TrainerConfig, load_config
from lrnn_lm.graphed_loss import GraphedNLL, TrainingNLL, graphs_apply
from lrnn_lm.train import resolve_cuda_graphs, train

from .tiny_model import VOCAB, tiny_model
from .tiny_run import Recorder, tiny_overrides

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
@pytest.mark.parametrize("shape", [(3, 300), (1, 4096)], ids=["one-chunk", "look-back"])
def test_graphed_steps_match_the_models_own(autocast, compiled, shape, monkeypatch):
    """Three optimizer steps on fresh batches: loss, every gradient and the updated weights agree with the same steps
    run without graphs. (3, 300) takes the scan's one-chunk path, (1, 4096) its look-back; the loss runs in chunks
    of 128 tokens, the last one shorter."""
    monkeypatch.setattr(lrnn_lm.loss, "MAX_CHUNK_ELEMENTS", 128 * VOCAB)
    plain = tiny_model(dropout=0.0, d_model=64, conv_size=4).cuda().train()
    graphed_model = copy.deepcopy(plain)
    if compiled:
        plain.compile_blocks()
        graphed_model.compile_blocks()
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True) for m in (plain, graphed_model)]
    graphed = None
    # Relative to each tensor's norm: the look-back scan and the embedding's backward sum in an order that varies
    # from run to run, so single elements near zero may differ by far more than their own size.
    rel = 2e-2 if autocast else 1e-5
    for step in range(3):
        inputs, targets = batch(*shape, seed=step)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            expected = plain.nll(inputs, targets, check_ids=False)[0]
            if graphed is None:
                graphed = GraphedNLL(graphed_model, inputs, targets, ignore_index=-100)
            got = graphed(inputs, targets)
        assert_close_in_norm(got, expected, rel, "loss")
        expected.backward()
        got.backward()
        for (name, p), q in zip(plain.named_parameters(), graphed_model.parameters()):
            assert q.grad is not None and torch.isfinite(q.grad).all(), name
            assert_close_in_norm(q.grad, p.grad, rel, f"{name}'s gradient at step {step}")
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, p), q in zip(plain.named_parameters(), graphed_model.parameters()):
        assert_close_in_norm(q, p, rel, f"{name} after 3 steps")
    graphed.release()


def assert_close_in_norm(got: torch.Tensor, expected: torch.Tensor, rel: float, what: str) -> None:
    error = (got.double() - expected.double()).norm().item()
    scale = expected.double().norm().item()
    assert error <= rel * scale + 1e-12, f"{what}: |got - expected| = {error:.3g}, |expected| = {scale:.3g}"


@cuda
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_dropout_masks_advance_and_the_rng_is_put_back(compiled):
    """Compiled blocks draw their dropout masks from seeds that Inductor draws on the device at each call: captured,
    each replay must still draw new ones, not repeat the capture's."""
    model = tiny_model(dropout=0.3, d_model=64).cuda().train()
    if compiled:
        model.compile_blocks()
    inputs, targets = batch()
    torch.cuda.manual_seed(5)
    before = torch.cuda.get_rng_state()
    graphed = GraphedNLL(model, inputs, targets, ignore_index=-100)
    assert torch.equal(torch.cuda.get_rng_state(), before)  # the warm-up's draws are not kept
    losses = [graphed(inputs, targets).item() for _ in range(4)]
    assert len(set(losses)) == 4, losses  # each replay draws new masks
    assert not torch.equal(torch.cuda.get_rng_state(), before)
    graphed.release()


def test_training_nll_without_graphs_is_the_models_own():
    model = tiny_model(d_model=64).train()
    inputs, targets = batch(device="cpu")
    nll, n = TrainingNLL(model, ignore_index=-100)(inputs, targets)
    expected, expected_n = model.nll(inputs, targets, -100)
    assert torch.equal(nll, expected) and int(n) == int(expected_n) == targets.numel() - 5 * targets.shape[0]


@cuda
def test_training_nll_captures_once_and_runs_other_batches_as_the_model():
    model = tiny_model(d_model=64).cuda().train()
    training_nll = TrainingNLL(model, ignore_index=-100, cuda_graphs=True)
    inputs, targets = batch()
    training_nll(inputs, targets)
    graphed = training_nll.graphed
    assert graphed is not None
    nll, n = training_nll(*batch(seed=1))
    assert training_nll.graphed is graphed and int(n) == int((batch(seed=1)[1] != -100).sum())
    short = batch(T=299)
    torch.testing.assert_close(training_nll(*short)[0], model.nll(*short, -100)[0])  # another shape: the model's
    training_nll.release()
    assert training_nll.graphed is None


@cuda
def test_what_fits():
    model = tiny_model(d_model=64).cuda().train()
    graphed = GraphedNLL(model, *batch(), ignore_index=-100)
    assert graphed.fits(*batch(seed=1))
    assert not graphed.fits(*batch(T=299))  # another shape
    model.eval()
    assert not graphed.fits(*batch(seed=1))  # dropout is captured: evaluation runs the model itself


@cuda
def test_train_py_with_graphs_trains_as_without(tmp_path, corpus):
    """The tiny run on the GPU, compiled, with and without graphs: the graphs are replayed, and the per-batch losses
    agree (same seed, no dropout; bf16 autocast)."""

    class SawGraphs(Recorder):
        replayed = 0

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
            self.replayed += module.training_nll.graphed is not None

    runs = {}
    for graphs in (False, True):
        cfg = load_config(None, tiny_overrides(tmp_path / f"graphs-{graphs}", corpus, trainer__accelerator="gpu",
                                               trainer__max_steps=12, trainer__cuda_graphs=graphs))
        runs[graphs] = SawGraphs()
        train(cfg, callbacks=[runs[graphs]])
    assert runs[True].replayed == 12 and runs[False].replayed == 0
    torch.testing.assert_close(torch.tensor(runs[True].losses), torch.tensor(runs[False].losses), rtol=2e-2, atol=0)


def test_the_capture_needs_training_mode():
    with pytest.raises(ValueError, match="training mode"):
        GraphedNLL(tiny_model().eval(), *batch(device="cpu"), ignore_index=-100)


def test_where_graphs_apply():
    cuda0 = torch.device("cuda", 0)
    assert graphs_apply(cuda0) is None
    assert "CUDA device" in graphs_apply(torch.device("cpu"))
    assert "single-device" in graphs_apply(cuda0, single_device=False)
    assert "accumulate" in graphs_apply(cuda0, accumulate_grad_batches=4)
    assert "checkpointing" in graphs_apply(cuda0, activation_checkpointing=True)
    assert "num_workers" in graphs_apply(cuda0, loader_workers=2)


def test_trainer_cuda_graphs_setting():
    cuda0 = torch.device("cuda", 0)

    def config(cuda_graphs="auto", accumulate=1, checkpointing=False, workers=0) -> Config:
        return Config(model=ModelConfig(activation_checkpointing=checkpointing), data=DataConfig(num_workers=workers),
                      trainer=TrainerConfig(cuda_graphs=cuda_graphs, accumulate_grad_batches=accumulate))

    assert TrainerConfig().cuda_graphs == "auto"
    assert resolve_cuda_graphs(config(), cuda0) is True
    assert resolve_cuda_graphs(config(), torch.device("cpu")) is False  # 'auto': only where they apply
    assert resolve_cuda_graphs(config(), cuda0, single_device=False) is False
    assert resolve_cuda_graphs(config(cuda_graphs=False), cuda0) is False
    assert resolve_cuda_graphs(config(accumulate=2), cuda0) is False
    assert resolve_cuda_graphs(config(checkpointing=True), cuda0) is False
    assert resolve_cuda_graphs(config(workers=2), cuda0) is False
    with pytest.raises(ValueError, match="trainer.cuda_graphs.*accumulate_grad_batches 2"):
        resolve_cuda_graphs(config(cuda_graphs=True, accumulate=2), cuda0)
    with pytest.raises(ValueError, match="trainer.cuda_graphs"):
        TrainerConfig(cuda_graphs="maybe")


class SyncsForbidden(L.Callback):
    """Makes every host sync an error (torch.cuda.set_sync_debug_mode) from the start of optimizer step `first` to
    the start of step `last` (1-based), so the batches between two log steps, Lightning's bookkeeping after each
    included, must run without one."""

    def __init__(self, first: int, last: int):
        self.first, self.last, self.steps_checked = first, last, 0

    def on_train_batch_start(self, trainer, *args):
        step = trainer.global_step + 1  # the optimizer step this batch makes
        if step == self.last:
            torch.cuda.set_sync_debug_mode("default")
        elif self.first <= step < self.last:
            torch.cuda.set_sync_debug_mode("error")
            self.steps_checked += 1

    def on_exception(self, trainer, *args):
        torch.cuda.set_sync_debug_mode("default")


@cuda
def test_train_py_does_not_sync_the_host_between_log_steps(tmp_path, corpus):
    """A host sync in every step keeps the GPU idle while the host prepares the next step: only the log steps (the
    non-finite guard's check, the logged values) may wait for the GPU."""
    forbid = SyncsForbidden(first=7, last=10)  # log steps 5 and 10: 6..9 between, with values logged at 5
    # No logger: its learning-rate monitor syncs at the start of a log step, before this test's callback can stop
    # forbidding syncs (the training module logs its values all the same)
    cfg = load_config(None, tiny_overrides(tmp_path / "run", corpus, trainer__accelerator="gpu", trainer__max_steps=12,
                                           trainer__log_every=5, trainer__val_every=100, trainer__checkpoint_every=100,
                                           trainer__logger="none"))
    try:
        train(cfg, callbacks=[forbid])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert forbid.steps_checked == 3
