"""Training on the CPU: the schedule, train.py → evaluate → generate, SIGKILL and resume, exact resume, NaN stop."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lrnn_lm.config import TrainerConfig, load_config
from lrnn_lm.data import LMDataModule
from lrnn_lm.evaluate import main as evaluate_main
from lrnn_lm.generate import main as generate_main
from lrnn_lm.lit_module import warmup_cosine
from lrnn_lm.train import main, make_logger, train

from .tiny_run import ROOT, SCRIPT_ENV, Recorder, nan_loss_from_step, run_script, tiny_overrides


def test_warmup_then_cosine_to_min_lr():
    lr = [warmup_cosine(step, warmup_steps=10, max_steps=110, min_lr_ratio=0.1) for step in range(120)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0) and lr[10] == pytest.approx(1.0)
    assert lr[60] == pytest.approx(0.55) and lr[110] == pytest.approx(0.1) and lr[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))


def test_wandb_is_offline_unless_there_is_a_key(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    offline = make_logger(TrainerConfig(logger="wandb", run_dir=str(tmp_path)))
    assert isinstance(offline, WandbLogger) and offline._wandb_init["mode"] == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    assert make_logger(TrainerConfig(logger="wandb", run_dir=str(tmp_path)))._wandb_init["mode"] == "online"
    assert make_logger(TrainerConfig(logger="wandb", wandb_mode="offline"))._wandb_init["mode"] == "offline"
    assert isinstance(make_logger(TrainerConfig(logger="csv", run_dir=str(tmp_path))), CSVLogger)
    assert make_logger(TrainerConfig(logger="none")) is False


def train_losses(run_dir, version=0) -> dict[int, float]:
    with open(run_dir / "csv" / f"version_{version}" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]}


@pytest.mark.slow
def test_train_then_evaluate_then_generate(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    trained = run_script("train.py", *tiny_overrides(run, corpus, trainer__max_steps=40, trainer__val_every=20,
                                                     trainer__checkpoint_every=20, optim__lr=0.01))
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["tokens_seen"] == 40 * 4 * 32
    # the speed as it was: steady state apart from warm-up, validation and the final evaluation; FLOPs and how counted
    assert summary["tokens_per_s"] > 0 and summary["first_window_s"] >= 0 and summary["final_evaluation_s"] > 0
    assert summary["validation_during_training_s"] >= 0 and summary["compile_and_warmup_s"] is None  # not compiled
    assert summary["startup_s"] > 0 and summary["data_preparation_s"] > 0  # imports and parsing; tokenizer, caches
    # the wall time's parts, none counted twice; the training time holds the checkpoint writes (last.ckpt at steps
    # 20 and 40, best.ckpt at each validation that improved)
    parts = ("data_preparation_s", "setup_s", "training_s", "validation_during_training_s", "final_evaluation_s")
    assert all(summary[k] >= 0 for k in parts) and sum(summary[k] for k in parts) <= summary["wall_time_s"] + 0.3
    assert summary["checkpoint_writes"] >= 3 and 0 <= summary["checkpoint_write_s"] <= summary["training_s"] + 0.1
    assert summary["flops_per_token"] > 0 and "PaLM" in summary["flops_method"] and summary["mfu"] is None  # CPU
    assert all(math.isfinite(summary[s][k]) for s in ("validation", "test") for k in ("loss", "ppl", "bpb"))
    assert "bits/byte" in trained.stdout
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"last.ckpt", "best.ckpt"}
    losses = list(train_losses(run).values())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5  # it learns

    last = str(run / "checkpoints" / "last.ckpt")
    best = summary["evaluated"]  # the checkpoint the summary evaluated: compare like with like
    assert best == str(run / "checkpoints" / "best.ckpt")
    evaluated = run_script("-m", "lrnn_lm.evaluate", "--ckpt", best, "--split", "test")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads(evaluated.stdout[evaluated.stdout.index("{"):])
    assert result["bytes"] == summary["test"]["bytes"]
    assert result["bpb"] == pytest.approx(summary["test"]["bpb"], rel=1e-6)  # the same protocol, the same numbers

    # shorter windows (--seq-len): the same tokens predicted, each from less context
    evaluate_main(["--ckpt", best, "--split", "test", "--seq-len", "8"])
    short = json.loads(capsys.readouterr().out)
    assert short["seq_len"] == 8 and (short["tokens"], short["bytes"]) == (result["tokens"], result["bytes"])
    assert math.isfinite(short["bpb"]) and short["bpb"] != pytest.approx(result["bpb"], rel=1e-6)
    for bad, message in ((["--seq-len", "1"], "--seq-len: expected an integer >= 2, got 1"),
                         (["--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0")):  # not "the default"
        with pytest.raises(SystemExit) as exit_:
            evaluate_main(["--ckpt", last, "--split", "test", *bad])
        assert exit_.value.code == 2 and capsys.readouterr().err.startswith(f"error: {message}")

    text = "ROMEO: But soft, what light through yonder window breaks? — ¿ü\n"
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    evaluate_main(["--ckpt", last, "--text-file", str(tmp_path / "text.txt")])  # in-process: no second start-up
    result = json.loads(capsys.readouterr().out)
    assert result["bytes"] == len(text.encode("utf-8")) and math.isfinite(result["bpb"])
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(SystemExit):
        evaluate_main(["--ckpt", last, "--text-file", str(tmp_path / "empty.txt")])
    assert "at least one token to predict" in capsys.readouterr().err

    generate = ["--ckpt", last, "--prompt", "ROMEO:", "--max-new-tokens", "20"]
    samples = []
    for seed in ("0", "0", "1"):
        generate_main([*generate, "--seed", seed])  # in-process: the CLI without another interpreter start
        samples.append(capsys.readouterr().out)
    assert all(s.startswith("ROMEO:") for s in samples) and len(samples[0]) > len("ROMEO:\n")
    assert samples[0] == samples[1] != samples[2]


@pytest.mark.slow
def test_sigkill_then_resume_continues_from_the_checkpoint(tmp_path, corpus):
    run = tmp_path / "run"
    args = tiny_overrides(run, corpus, trainer__max_steps=300, trainer__checkpoint_every=10, trainer__val_every=100)
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=os.environ | SCRIPT_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 180
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = torch.load(last, weights_only=True)["global_step"]
    assert 10 <= killed_at < 300 and killed_at % 10 == 0

    resumed = run_script("train.py", *args, "--trainer.resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in resumed.stdout + resumed.stderr
    assert torch.load(last, weights_only=True)["global_step"] == 300
    assert min(train_losses(run, version=1)) == killed_at  # logged at the steps taken before the batch


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint_at", ["mid-epoch", "end-of-epoch"])
def test_resumed_run_sees_the_same_batches_and_ends_with_the_same_weights(tmp_path, corpus, checkpoint_at):
    """Crash after a checkpoint, resume, and compare with an uninterrupted run, across an epoch boundary. With
    dropout on, so that the resumed run must also draw the masks the uninterrupted one drew."""
    def config(name, **fields):
        overrides = tiny_overrides(tmp_path / name, corpus, data__seq_len=256, trainer__val_every=1000,
                                   trainer__logger="none", model__dropout=0.2, **fields)
        return load_config(None, overrides)

    data = LMDataModule(config("probe").data, vocab_size=512)  # to count the batches of an epoch
    data.prepare_data()
    data.setup()
    epoch = len(data.train_dataloader())  # batches per epoch
    assert 5 <= epoch <= 50
    every = epoch - 2 if checkpoint_at == "mid-epoch" else epoch
    steps = dict(trainer__max_steps=epoch + 4, trainer__checkpoint_every=every)

    uninterrupted = Recorder()
    train(config("a", **steps), callbacks=[uninterrupted])

    class CrashAfter(Recorder):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == every + 1:
                raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config("b", **steps), callbacks=[CrashAfter()])
    resumed = Recorder()
    train(config("b", **steps, trainer__resume=True), callbacks=[resumed])

    assert [step for step, _ in resumed.batches] == list(range(every + 1, epoch + 5))
    assert resumed.batches == uninterrupted.batches[every:]
    assert resumed.params == uninterrupted.params


@pytest.mark.slow
def test_a_kill_during_validation_loses_neither_that_validation_nor_exactness(tmp_path, corpus):
    """A run killed while it validates a step that is also a checkpoint step resumes from the checkpoint before it,
    and validates that step again: the validation losses, the best checkpoint and the final weights are the
    uninterrupted run's."""
    def config(name, **fields):
        return load_config(None, tiny_overrides(tmp_path / name, corpus, trainer__max_steps=12, trainer__val_every=4,
                                                trainer__checkpoint_every=4, trainer__logger="none",
                                                model__dropout=0.2, **fields))

    class Validations(Recorder):
        def __init__(self, crash_at=None):
            super().__init__()
            self.crash_at, self.losses_at = crash_at, {}

        def on_validation_start(self, trainer, module):
            if trainer.state.fn == "fit" and trainer.global_step == self.crash_at:
                raise RuntimeError("simulated kill")

        def on_validation_end(self, trainer, module):
            if trainer.state.fn == "fit":
                self.losses_at[trainer.global_step] = float(trainer.callback_metrics["val/loss"])

    uninterrupted = Validations()
    whole = train(config("a"), callbacks=[uninterrupted])
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(config("b"), callbacks=[Validations(crash_at=8)])
    resumed = Validations()
    summary = train(config("b", trainer__resume=True), callbacks=[resumed])

    assert list(uninterrupted.losses_at) == [4, 8, 12] and list(resumed.losses_at) == [8, 12]
    assert resumed.losses_at == {k: uninterrupted.losses_at[k] for k in (8, 12)}
    assert resumed.params == uninterrupted.params
    assert summary["validation"] == whole["validation"] and summary["test"] == whole["test"]


def test_resume_refuses_changed_settings_but_not_a_longer_run(tmp_path, corpus):
    """A changed learning rate or batch size on resume is an error naming the field (Lightning would restore the
    old rates and put the data position in another order); more steps are fine."""
    def config(**fields):
        overrides = tiny_overrides(tmp_path / "run", corpus, trainer__val_every=1000, trainer__logger="none",
                                   trainer__checkpoint_every=2, **fields)
        return load_config(None, overrides)

    train(config(trainer__max_steps=2))
    for changed, name in ((dict(optim__lr=0.5), "optim.lr"), (dict(data__batch_size=8), "data.batch_size")):
        with pytest.raises(ValueError, match=rf"^trainer.resume: .*{name}: "):
            train(config(trainer__max_steps=4, trainer__resume=True, **changed))
    assert train(config(trainer__max_steps=4, trainer__resume=True))["steps"] == 4


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, corpus, monkeypatch, capsys):
    nan_loss_from_step(monkeypatch, 5)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:  # checked every 3 steps and before every checkpoint (every 4 steps)
        main(tiny_overrides(run, corpus, trainer__max_steps=20, trainer__checkpoint_every=4, trainer__log_every=3,
                            trainer__val_every=100, trainer__logger="none"))
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "optimizer steps 5-6" in err, err
    assert f"The last good checkpoint is {run / 'checkpoints' / 'last.ckpt'} (step 4)" in err
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(w).all() for w in ckpt["state_dict"].values())


@pytest.mark.slow
def test_after_a_resume_the_non_finite_error_names_the_steps_since_the_resume(tmp_path, corpus, monkeypatch, capsys):
    run = tmp_path / "run"
    overrides = dict(trainer__checkpoint_every=4, trainer__log_every=3, trainer__val_every=100, trainer__logger="none")
    main(tiny_overrides(run, corpus, trainer__max_steps=4, **overrides))
    nan_loss_from_step(monkeypatch, 4)
    with pytest.raises(SystemExit):  # resumed at step 4; checked at step 6
        main(tiny_overrides(run, corpus, trainer__max_steps=20, trainer__resume=True, **overrides))
    assert "optimizer steps 5-6" in capsys.readouterr().err


@pytest.mark.slow
def test_a_validation_checkpoint_between_guard_checks_is_checked_too(tmp_path, corpus, monkeypatch, capsys):
    """best.ckpt is written at validation, here after a bad step and before the next check every log_every steps:
    it is checked first, so it is never written."""
    nan_loss_from_step(monkeypatch, 4)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:  # checked at steps 3 and 6; validated (best.ckpt) at step 5
        main(tiny_overrides(run, corpus, trainer__max_steps=20, trainer__checkpoint_every=100, trainer__log_every=3,
                            trainer__val_every=5, trainer__logger="none"))
    err = capsys.readouterr().err
    assert not (run / "checkpoints" / "best.ckpt").exists(), list((run / "checkpoints").iterdir())
    assert exit_.value.code == 1 and "optimizer steps 4-5" in err, err


def test_a_non_finite_evaluation_batch_makes_the_evaluation_non_finite(tmp_path, corpus, monkeypatch):
    """One NaN batch among the validation batches: the reported loss and bits per byte are NaN, not a finite sum
    over the other batches divided by every batch's tokens."""
    from lrnn_lm.lit_module import LitLM

    nll, calls = LitLM._nll, []

    def second_batch_nan(self, batch):
        total, n_tokens = nll(self, batch)
        calls.append(1)
        return (total * float("nan") if len(calls) == 2 else total), n_tokens

    monkeypatch.setattr(LitLM, "_nll", second_batch_nan)
    cfg = load_config(None, tiny_overrides(tmp_path / "run", corpus, trainer__max_steps=2, trainer__val_every=1000,
                                           trainer__logger="none", trainer__checkpoint_every=1000))
    summary = train(cfg)
    assert math.isnan(summary["validation"]["loss"]) and math.isnan(summary["validation"]["bpb"])
    assert math.isfinite(summary["test"]["loss"])  # the test split's batches came after the NaN one


def test_gradient_accumulation_is_a_larger_batch_in_tokens_and_schedule(tmp_path, corpus):
    """accumulate_grad_batches=2 at batch 2 takes the same windows, steps and learning rates as batch 4: the same
    weights (dropout off) up to rounding, the same step losses as logged (over both batches, not the last one's),
    and tokens seen counted per optimizer step."""
    class StepLosses(Recorder):
        def __init__(self):
            super().__init__()
            self.step_losses = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
            if not trainer.fit_loop._should_accumulate():
                self.step_losses.append(float(module._metrics["loss"]))

    def run(name, **fields):
        recorder = StepLosses()
        cfg = load_config(None, tiny_overrides(tmp_path / name, corpus, trainer__max_steps=6, trainer__val_every=1000,
                                               trainer__logger="none", trainer__checkpoint_every=3, **fields))
        summary = train(cfg, callbacks=[recorder])
        return summary, recorder

    big, big_rec = run("big", data__batch_size=4)
    acc, acc_rec = run("acc", data__batch_size=2, trainer__accumulate_grad_batches=2)
    assert big["steps"] == acc["steps"] == 6 and big["tokens_seen"] == acc["tokens_seen"] == 6 * 4 * 32
    assert len(acc_rec.batches) == 2 * len(big_rec.batches) == 12
    torch.testing.assert_close(acc_rec.step_losses, big_rec.step_losses, rtol=1e-4, atol=0)
    big_w = torch.load(tmp_path / "big" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    acc_w = torch.load(tmp_path / "acc" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for k in big_w:
        torch.testing.assert_close(acc_w[k], big_w[k], rtol=1e-4, atol=1e-6)


def test_every_optimizer_step_accumulates_the_same_number_of_batches_across_epochs(tmp_path, corpus):
    """An epoch whose batches do not divide by accumulate_grad_batches drops its tail: Lightning would otherwise step
    on the leftover micro-batches, a smaller step still divided by the full count and counted as a full one."""
    cfg = load_config(None, tiny_overrides(tmp_path / "probe", corpus, data__batch_size=2))
    data = LMDataModule(cfg.data, cfg.model.vocab_size, cfg.model.eos_id)
    data.prepare_data()
    data.setup()
    batches = len(data.train_dataloader())  # of one epoch, without accumulation
    accumulate = next(k for k in range(3, 10) if batches % k)
    recorder = Recorder()
    cfg = load_config(None, tiny_overrides(tmp_path / "run", corpus, data__batch_size=2, trainer__logger="none",
                                           trainer__accumulate_grad_batches=accumulate, trainer__val_every=1000,
                                           trainer__checkpoint_every=1000, trainer__max_steps=batches // accumulate + 2))
    train(cfg, callbacks=[recorder])
    steps = [step for step, _ in recorder.batches]  # optimizer steps done after each batch
    assert steps == [(i + 1) // accumulate for i in range((batches // accumulate + 2) * accumulate)]  # 2 in epoch 2


def test_precision_auto_takes_fp16_on_a_gpu_without_bf16_and_says_so(monkeypatch, capsys):
    import lrnn_lm.train as train_module

    monkeypatch.setattr(train_module, "_on_gpu", lambda t: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100")
    assert train_module.resolve_precision(TrainerConfig(), announce=True) == "16-mixed"
    assert "Tesla V100 has no bf16; training in 16-mixed" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert train_module.resolve_precision(TrainerConfig()) == "bf16-mixed"
    assert train_module.resolve_precision(TrainerConfig(precision=32)) == 32


def test_under_16_mixed_a_fused_optimizer_is_clipped_on_the_true_gradients(tmp_path, corpus, monkeypatch):
    """16-mixed's GradScaler multiplies the loss, and Lightning leaves the gradients scaled for an optimizer that
    unscales in its step (fused AdamW, as on CUDA): the norm that clipping and the guard see, and that is logged, is
    the true gradients' norm. (Lightning refuses 16-mixed on a CPU; its plugin runs here all the same.)"""
    import lightning as L
    from lightning.pytorch.plugins.precision import MixedPrecision

    import lrnn_lm.lit_module as lit_module

    class FusedAdamW(torch.optim.AdamW):
        def __init__(self, *args, fused=None, **kwargs):
            super().__init__(*args, fused=True, **kwargs)

    monkeypatch.setattr(lit_module.torch.optim, "AdamW", FusedAdamW)

    class TrueNorm(L.Callback):  # callbacks run before the module's hook: the gradients as the scaler left them
        def __init__(self):
            self.true, self.seen = [], []

        def on_before_optimizer_step(self, trainer, module, optimizer):
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            self.true.append(float(torch.nn.utils.get_total_norm(grads)) / trainer.precision_plugin.scaler.get_scale())

        def on_train_batch_end(self, trainer, module, *args):
            self.seen.append(float(module._metrics["grad_norm"]))

    cfg = load_config(None, tiny_overrides(tmp_path / "run", corpus, optim__grad_clip=1.0))
    data = LMDataModule(cfg.data, cfg.model.vocab_size, cfg.model.eos_id, seed=0)
    module, probe = lit_module.LitLM(cfg.to_dict()), TrueNorm()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, plugins=[MixedPrecision("16-mixed", "cpu")],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        enable_model_summary=False, callbacks=[probe])
    trainer.fit(module, datamodule=data)
    assert isinstance(trainer.optimizers[0], FusedAdamW) and len(probe.seen) == 3
    assert all(math.isfinite(t) for t in probe.true)
    torch.testing.assert_close(probe.seen, probe.true, rtol=1e-3, atol=0)


def test_resume_refuses_a_train_split_whose_tokens_changed(tmp_path):
    """Documents reordered in the train file leave the tokenizer as it was (the same texts, the same merges) but
    move every window: the checkpoint's data position would point into other text, so resuming is refused."""
    from .tiny_run import write_local_corpus

    corpus = write_local_corpus(tmp_path / "corpus")

    def config(**fields):
        return load_config(None, tiny_overrides(tmp_path / "run", corpus, trainer__val_every=1000,
                                                trainer__logger="none", trainer__checkpoint_every=2, **fields))

    train(config(trainer__max_steps=2))
    lines = (corpus / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (corpus / "train.jsonl").write_text("".join(lines[1:] + lines[:1]), encoding="utf-8")
    with pytest.raises(ValueError, match="resume: the train split's tokens differ from the checkpoint's"):
        train(config(trainer__max_steps=4, trainer__resume=True))

    # outside fit (validate or test from a checkpoint, on any data) the data position is not used: no check
    from lrnn_lm.data import LMDataModule

    cfg = config()
    data = LMDataModule(cfg.data, cfg.model.vocab_size, cfg.model.eos_id)
    data.prepare_data()
    data.setup()
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["LMDataModule"]
    assert saved["train_fingerprint"] != data.train_fingerprint()
    data.load_state_dict(saved)
