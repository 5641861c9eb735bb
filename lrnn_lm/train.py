"""Training: `python train.py --config small.yaml [--section.field value ...]`.

`train(cfg)` builds the data module, the LightningModule and a Lightning Trainer from the config, fits
(from run_dir/checkpoints/last.ckpt with --trainer.resume), evaluates the best checkpoint (lowest val/loss) on
the whole validation and test splits, prints a summary and writes it to run_dir/summary.json.

Checkpoints, in run_dir/checkpoints, written by Lightning on rank 0, atomically (a kill while writing leaves
the previous file): last.ckpt every trainer.checkpoint_every steps and at the end, best.ckpt at the lowest
val/loss. A checkpoint holds the model, optimizer, scheduler, loop progress, the data position (see
resumable_loader.py), torch's random state (`RNGState`), the config and the tokenizer, in plain containers,
and is loaded with weights_only=True.

A non-finite loss stops the run before the optimizer step (see lit_module.py): last.ckpt stays the last good state.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ThroughputMonitor, Timer
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from .config import Config, TrainerConfig, load_config
from .data import LMDataModule
from .lit_module import LitLM


def train(cfg: Config, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Fit, evaluate and summarise one run; `callbacks` are added to the Trainer's (tests use them to observe)."""
    t = cfg.trainer
    L.seed_everything(t.seed, workers=True)
    run_dir, ckpt_dir = Path(t.run_dir), Path(t.run_dir) / "checkpoints"
    resume_from = _last_checkpoint(ckpt_dir) if t.resume else None
    run_dir.mkdir(parents=True, exist_ok=True)

    data = LMDataModule(cfg.data, cfg.model.vocab_size, cfg.model.eos_id, seed=t.seed)
    module = LitLM(json.loads(json.dumps(cfg.to_dict())))  # plain dicts and lists, so weights_only loading works
    if t.compile is True or (t.compile == "auto" and _on_gpu(t)):
        module.model.compile()  # in place: the state_dict keys stay those of the plain model
    timer, logger = Timer(), make_logger(t)
    best = ModelCheckpoint(ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                           auto_insert_metric_name=False, enable_version_counter=False)
    monitors = [LearningRateMonitor(logging_interval="step"),
                ThroughputMonitor(batch_size_fn=lambda b: b["inputs"].size(0), length_fn=lambda b: b["inputs"].numel())]
    trainer = L.Trainer(
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=resolve_precision(t),
        gradient_clip_val=cfg.optim.grad_clip or None,
        val_check_interval=t.val_every,
        check_val_every_n_epoch=None,  # validate every val_every steps, across epoch boundaries
        limit_val_batches=t.limit_val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every,
        logger=logger,
        default_root_dir=run_dir,
        callbacks=[
            ModelCheckpoint(ckpt_dir, every_n_train_steps=t.checkpoint_every, save_top_k=0, save_last=True,
                            enable_version_counter=False),
            best,
            *(monitors if logger else []),
            timer,
            RNGState(),
            SameRunOnResume(),
            *callbacks,
        ],
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=True)
    train_time = timer.time_elapsed("train")  # over all resumes: Timer's state is in the checkpoint
    trainer.save_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)  # the final state, whatever max_steps is

    # The summary evaluates the weights with the lowest validation loss (the final ones if none was measured),
    # on the whole validation and test splits.
    trainer.limit_val_batches = 1.0
    evaluated = best.best_model_path or None
    validation = trainer.validate(module, datamodule=data, ckpt_path=evaluated, verbose=False, weights_only=True)[0]
    test = trainer.test(module, datamodule=data, ckpt_path=evaluated, verbose=False, weights_only=True)[0]
    tokens_seen = trainer.global_step * cfg.data.batch_size * cfg.data.seq_len * trainer.world_size
    summary = {
        "params": module.model.num_params(),
        "steps": trainer.global_step,
        "tokens_seen": tokens_seen,
        "wall_time_s": round(time.perf_counter() - start, 1),
        "tokens_per_s": round(tokens_seen / max(train_time, 1e-9)),
        "evaluated": evaluated or "final weights",
        "validation": _evaluation(validation, "val"),
        "test": _evaluation(test, "test"),
    }
    if trainer.is_global_zero:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(format_summary(summary, run_dir))
    return summary


class RNGState(Callback):
    """Keeps torch's random state (dropout's masks) in every checkpoint and restores it when fit resumes, so that
    a resumed run draws the masks the uninterrupted one would have. Lightning's checkpoints do not hold it, and
    `train` seeds every run from the start. The CUDA state is the strategy's device's, each rank's own (in DDP every
    rank is seeded alike, so rank 0's state, the one written, is every rank's). The data order has its own
    (resumable_loader.py)."""

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        # the strategy's device, not the module's: after fit Lightning moves the module to the CPU, and the final
        # last.ckpt is written then
        device = trainer.strategy.root_device
        checkpoint["rng_states"] = {"cpu": torch.get_rng_state(),
                                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}

    def on_load_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states is None or trainer.state.fn != TrainerFn.FITTING:  # evaluation draws nothing
            return
        torch.set_rng_state(states["cpu"])
        device = trainer.strategy.root_device
        if states["cuda"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state(states["cuda"], device)


class SameRunOnResume(Callback):
    """Refuses to resume from a checkpoint whose config differs in what the restored state depends on: the model,
    the data (its windows, batch size and order), the optimizer and its schedule's rate, the seed. Lightning would
    restore the old learning rates and place the data position in another order of windows without a word. Free to
    change: how long and how often (max_steps, val_every, checkpoint_every, ...), where it runs and logs."""

    FREE = {"data": {"num_workers", "cache_dir"},
            "trainer": {"max_steps", "val_every", "limit_val_batches", "checkpoint_every", "accelerator", "devices",
                        "num_nodes", "strategy", "precision", "compile", "logger", "wandb_project", "wandb_mode",
                        "log_every", "run_dir", "resume"}}

    def on_load_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        saved = checkpoint["hyper_parameters"]["config"]
        now = module.hparams["config"]  # the run's config as the checkpoint holds it: plain dicts and lists
        changed = [f"{section}.{name}: {saved.get(section, {}).get(name)!r} in the checkpoint, {value!r} now"
                   for section, fields in now.items() for name, value in fields.items()
                   if name not in self.FREE.get(section, ()) and saved.get(section, {}).get(name) != value]
        if changed:
            raise ValueError("trainer.resume: expected the checkpoint's settings for what it restores, got changes: "
                             + "; ".join(changed) + ". Start a new run_dir to train with them.")


def _evaluation(logged: dict[str, Any], prefix: str) -> dict[str, float | int]:
    return {k: float(logged[f"{prefix}/{k}"]) for k in ("loss", "ppl", "bpb")} | {
        k: int(logged[f"{prefix}/{k}"]) for k in ("tokens", "bytes")}


def format_summary(s: dict[str, Any], run_dir: Path) -> str:
    lines = [f"{s['params'] / 1e6:.2f}M params | {s['steps']} steps, {s['tokens_seen']:,} tokens | "
             f"wall {s['wall_time_s']:.1f} s | {s['tokens_per_s']:,} tokens/s (training)"]
    lines.append(f"evaluated: {s['evaluated']}")
    for split in ("validation", "test"):
        m = s[split]
        lines.append(f"{split:>10}: loss {m['loss']:.3f}  ppl {m['ppl']:.2f}  bits/byte {m['bpb']:.3f}")
    lines.append(f"summary: {run_dir / 'summary.json'}  checkpoints: {run_dir / 'checkpoints'}")
    return "\n".join(lines)


def resolve_precision(t: TrainerConfig) -> str | int:
    """trainer.precision, with 'auto' = bf16-mixed on GPU, 32-true on CPU."""
    return t.precision if t.precision != "auto" else ("bf16-mixed" if _on_gpu(t) else "32-true")


def _on_gpu(t: TrainerConfig) -> bool:
    return t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available())


def _last_checkpoint(ckpt_dir: Path) -> str:
    path = ckpt_dir / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"trainer.resume: no checkpoint at {path}; run without --trainer.resume to start")
    return str(path)


def make_logger(t: TrainerConfig) -> Logger | bool:
    """trainer.logger: wandb (offline unless WANDB_API_KEY is set or wandb_mode says otherwise), csv, or none."""
    if t.logger == "none":
        return False
    if t.logger == "csv":
        return CSVLogger(t.run_dir, name="csv")  # csv/version_N/metrics.csv: a resumed run adds a version
    mode = t.wandb_mode
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return WandbLogger(project=t.wandb_project, save_dir=t.run_dir, offline=mode == "offline", mode=mode)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="train.py", allow_abbrev=False,
        description="Train a linear-RNN language model. Any config field can be overridden: --section.field value "
                    "(e.g. --model.d_model 512 --trainer.max_steps 2000 --trainer.resume).")
    parser.add_argument("--config", help="a YAML file, or a preset name in configs/ (e.g. small.yaml)")
    args, overrides = parser.parse_known_args(argv)
    try:
        cfg = load_config(args.config, overrides)
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    try:
        train(cfg)
    except FloatingPointError as e:
        sys.exit(f"error: {e}\nThe last good checkpoint is {Path(cfg.trainer.run_dir) / 'checkpoints' / 'last.ckpt'}")


if __name__ == "__main__":
    main()
