"""Training: `python train.py --config small.yaml [--section.field value ...]` (the command line is lrnn_lm/cli.py).

`train(cfg)` takes the run_dir for itself, builds the data module, the LightningModule and a Lightning Trainer from
the config, fits (from run_dir/checkpoints/last.ckpt with --trainer.resume), evaluates the best checkpoint (lowest
val/loss) on the whole validation and test splits, prints a summary and writes it to run_dir/summary.json.

What a run guarantees:
- One run per run_dir (run_dir.py). A lock file (run_dir/.lock, held while the process lives) refuses a second
  run, naming the one that holds it. Without --trainer.resume, a run_dir that already holds checkpoints is
  refused, unless --trainer.overwrite deletes them.
- Checkpoints are written atomically on any filesystem: to a temporary file in the same folder, flushed to disk
  and renamed over the old one (`AtomicCheckpointIO`), so a kill at any moment leaves the previous last.ckpt or
  the new one, whole. Temporaries left by a kill are deleted at the next start. summary.json is written the same
  way.
- last.ckpt is written (callbacks.py) every trainer.checkpoint_every optimizer steps, at the last step, and when
  SIGTERM or SIGINT (Ctrl-C) stops the run at the next step boundary; the process then says how to resume and
  exits with 128 + the signal's number (143, 130). A second Ctrl-C stops at once. Lightning's SLURM auto-requeue
  (SIGUSR1) is left to Lightning.
- --trainer.resume restores the model, optimizer, scheduler, step, data position (mid-epoch included, also after
  a finished run: more steps continue the same epoch) and torch's random state, so a resumed run ends with the
  weights an uninterrupted one would have, bit for bit on one device. A checkpoint whose settings differ from the
  run's in what it restores (model shape, data, optimizer, seed) is refused with the fields named.
- The best checkpoint is resolved in this run's own run_dir, so a copied or moved run_dir evaluates its own.
- A non-finite loss or gradient norm stops the run within trainer.log_every steps, before any checkpoint holds a
  state after it (lit_module.py); the message names the last good checkpoint.

A checkpoint holds the model, optimizer, scheduler, loop progress, the data position (resumable_loader.py),
torch's random state (`RNGState`), the config and the tokenizer, in plain containers, and is read with
weights_only=True.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from .callbacks import LastCheckpoint, RNGState, RunDirModelCheckpoint, TrainingSpeed
from .cli import RunInterrupted
from .config import Config, TrainerConfig
from .data import LMDataModule
from .graphed_loss import graphs_apply
from .lit_module import LitLM
from .run_dir import AtomicCheckpointIO, RunDirLock, is_launching_process, last_checkpoint_step, last_good_message, \
    prepare_run_dir, write_atomically


def train(cfg: Config, callbacks: Sequence[Callback] = (), launched_at: float | None = None) -> dict[str, Any]:
    """Fit, evaluate and summarise one run; `callbacks` are added to the Trainer's (tests use them to observe).
    launched_at: the time.perf_counter() at which the process began its work (the command line's), for the
    summary's startup_s."""
    t = cfg.trainer
    run_dir, ckpt_dir = Path(t.run_dir), Path(t.run_dir) / "checkpoints"
    lock = RunDirLock(run_dir) if is_launching_process() else None
    try:
        resume_from = prepare_run_dir(cfg, ckpt_dir, check=lock is not None)
        return _train(cfg, run_dir, ckpt_dir, resume_from, callbacks, launched_at)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: Config, run_dir: Path, ckpt_dir: Path, resume_from: str | None,
           callbacks: Sequence[Callback], launched_at: float | None) -> dict[str, Any]:
    t = cfg.trainer
    started = time.perf_counter()
    if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator: expected 'auto' or 'cpu' where torch sees no CUDA GPU, got "
                         f"{t.accelerator!r}")
    L.seed_everything(t.seed, workers=True, verbose=False)
    data = LMDataModule(cfg.data, cfg.model.vocab_size, cfg.model.eos_id, seed=t.seed)
    module = LitLM(cfg.to_dict())
    compiled = t.compile is True or (t.compile == "auto" and _on_gpu(t))
    if compiled:
        module.model.compile_blocks()  # in place: the state_dict keys stay those of the plain model
    logger = make_logger(t)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * t.accumulate_grad_batches
    speed = TrainingSpeed(t.log_every, tokens_per_step)
    checkpoint_io = AtomicCheckpointIO()
    last = LastCheckpoint(ckpt_dir / "last.ckpt", t.checkpoint_every, sync_every=t.log_every)
    best = RunDirModelCheckpoint(ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                                 auto_insert_metric_name=False, enable_version_counter=False)
    precision = resolve_precision(t, announce=True)
    try:
        trainer = L.Trainer(
            max_steps=t.max_steps,
            accumulate_grad_batches=t.accumulate_grad_batches,
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=t.strategy,
            precision=precision,
            plugins=[checkpoint_io],
            val_check_interval=t.val_every * t.accumulate_grad_batches,  # counted in batches
            check_val_every_n_epoch=None,  # validate every val_every steps, across epoch boundaries
            limit_val_batches=t.limit_val_batches,
            num_sanity_val_steps=0,
            log_every_n_steps=t.log_every,
            logger=logger,
            default_root_dir=run_dir,
            enable_model_summary=False,
            callbacks=[
                TQDMProgressBar(refresh_rate=t.log_every),  # refreshed at the steps whose metrics are read anyway
                speed,
                best,
                last,
                *([LearningRateMonitor(logging_interval="step")] if logger else []),
                RNGState(),
                *callbacks,
            ],
        )
    except (ValueError, TypeError, ImportError, MisconfigurationException) as e:
        # Lightning's own message, which names its argument, not the config field
        raise ValueError(f"trainer.accelerator / devices / strategy / precision / num_nodes ({t.accelerator!r}, "
                         f"{t.devices!r}, {t.strategy!r}, {t.precision!r}, {t.num_nodes!r}): Lightning refused them: "
                         f"{' '.join(str(e).split())[:500]}") from e
    graphs = resolve_cuda_graphs(cfg, trainer.strategy.root_device, isinstance(trainer.strategy, SingleDeviceStrategy))
    module.training_nll.cuda_graphs = graphs
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=True)
    except FloatingPointError as e:
        raise FloatingPointError(f"{e}. {last_good_message(ckpt_dir)}") from None
    except SIGTERMException:  # Lightning's own handler, outside the training loop (setup, the first batch's loading)
        raise RunInterrupted(signal.SIGTERM, f"SIGTERM: stopped during the run's setup or its first step. "
                             f"{_saved(ckpt_dir)}") from None
    except SystemExit:
        if last.interrupted_again:  # Lightning exits 1 on a KeyboardInterrupt, the code of a failed run
            raise KeyboardInterrupt from None
        raise
    if last.stopped_by is not None:
        raise RunInterrupted(last.stopped_by, _resume_message(last, trainer))

    # The summary evaluates the weights with the lowest validation loss (the final ones if none was measured),
    # on the whole validation and test splits.
    eval_started = time.perf_counter()
    trainer.limit_val_batches = 1.0
    evaluated = best.best_model_path if best.best_model_path and Path(best.best_model_path).is_file() else None
    try:
        validation = trainer.validate(module, datamodule=data, ckpt_path=evaluated, verbose=False,
                                      weights_only=True)[0]
        test = trainer.test(module, datamodule=data, verbose=False)[0]  # the weights validate just loaded
    except SIGTERMException:  # Lightning exits 0 on it, which a scheduler would take for a finished run
        raise RunInterrupted(signal.SIGTERM, "SIGTERM: stopped during the final evaluation, after training "
                             f"finished; no summary was written. {_saved(ckpt_dir)}") from None
    eval_s = time.perf_counter() - eval_started
    tokens_seen = trainer.global_step * tokens_per_step * trainer.world_size
    rates = speed.summary()
    flops_per_token = module.model.flops_per_token(cfg.data.seq_len)
    peak = peak_bf16_flops(trainer.strategy.root_device) if _on_gpu(t) else None
    summary = {
        "params": module.model.num_params(),
        "steps": trainer.global_step,
        "tokens_seen": tokens_seen,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "startup_s": round(started - launched_at, 1) if launched_at is not None else None,
        "data_preparation_s": round(data.preparation_s, 1),
        "setup_s": round(speed.started - started - data.preparation_s, 1) if speed.started is not None else None,
        "tokens_per_s": rates["tokens_per_s"],
        "training_s": rates["training_s"],
        "first_window_s": rates["first_window_s"],
        "compile_and_warmup_s": rates["compile_and_warmup_s"] if compiled or graphs else None,
        "checkpoint_writes": checkpoint_io.writes,
        "checkpoint_write_s": round(checkpoint_io.write_s, 1),
        "cuda_graphs": graphs,
        "validation_during_training_s": rates["validation_s"],
        "final_evaluation_s": round(eval_s, 1),
        "flops_per_token": flops_per_token,
        "flops_method": "6 x the multiply-accumulates per token of every matmul (linear layers, tied LM head; "
                        "attention's QK and AV at the training context), as PaLM counts MFU; scans and "
                        "elementwise ops are not counted",
        "mfu": (round(flops_per_token * rates["tokens_per_s"] / (peak * trainer.world_size), 4)
                if peak and rates["tokens_per_s"] else None),
        "peak_bf16_flops_per_device": peak,
        "evaluated": evaluated or "final weights",
        "validation": _evaluation(validation, "val"),
        "test": _evaluation(test, "test"),
    }
    if trainer.is_global_zero:
        write_atomically(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        print(format_summary(summary, run_dir))
    return summary


def _saved(ckpt_dir: Path) -> str:
    """What a run stopped outside its training steps leaves to resume from."""
    step = last_checkpoint_step(ckpt_dir)
    if step is None:
        return "No checkpoint was written yet: run it again to start over"
    return f"{ckpt_dir / 'last.ckpt'} holds step {step}; run the same command with --trainer.resume to continue from it"


def _resume_message(last: LastCheckpoint, trainer: L.Trainer) -> str:
    name = signal.Signals(last.stopped_by).name
    command = " ".join([Path(sys.argv[0]).name if sys.argv[0].endswith("train.py") else sys.argv[0], *sys.argv[1:]])
    if last.saved_step is None:
        return f"{name}: stopped before the first optimizer step; nothing to resume from"
    given = any(arg == "--trainer.resume" or arg.startswith("--trainer.resume=") for arg in sys.argv)
    resume = "" if given else " --trainer.resume"
    return (f"{name}: stopped at step {trainer.global_step} and saved {last.path} (step {last.saved_step}). "
            f"Resume with: python {command}{resume}")


# --------------------------------------------------------------------------------------------------
# Reporting, precision, loggers
# --------------------------------------------------------------------------------------------------


def _evaluation(logged: dict[str, Any], prefix: str) -> dict[str, float | int]:
    return {k: float(logged[f"{prefix}/{k}"]) for k in ("loss", "ppl", "bpb")} | {
        k: int(logged[f"{prefix}/{k}"]) for k in ("tokens", "bytes")}


def format_summary(s: dict[str, Any], run_dir: Path) -> str:
    rate = f"{s['tokens_per_s']:,} tokens/s steady" if s["tokens_per_s"] else "tokens/s not measured"
    lines = [f"{s['params'] / 1e6:.2f}M params | {s['steps']} steps, {s['tokens_seen']:,} tokens | "
             f"wall {s['wall_time_s']:.1f} s | {rate}" + (f" (MFU {s['mfu']:.1%})" if s.get("mfu") else "")]
    within = [f"first window {s['first_window_s']} s" if s["first_window_s"] is not None else None,
              f"compile + warm-up ~{s['compile_and_warmup_s']} s" if s["compile_and_warmup_s"] is not None else None,
              f"{s['checkpoint_writes']} checkpoint writes {s['checkpoint_write_s']} s"
              if s.get("checkpoint_writes") is not None else None]
    within = ", ".join(x for x in within if x)
    timing = [f"startup {s['startup_s']} s" if s.get("startup_s") is not None else None,
              f"data {s['data_preparation_s']} s" if s.get("data_preparation_s") is not None else None,
              f"setup {s['setup_s']} s" if s.get("setup_s") is not None else None,
              f"training {s['training_s']} s" + (f" ({within})" if within else "")
              if s.get("training_s") is not None else None,
              f"validation {s['validation_during_training_s']} s", f"final evaluation {s['final_evaluation_s']} s"]
    lines.append(" | ".join(x for x in timing if x))
    lines.append(f"evaluated: {s['evaluated']}")
    for split in ("validation", "test"):
        m = s[split]
        lines.append(f"{split:>10}: loss {m['loss']:.3f}  ppl {m['ppl']:.2f}  bits/byte {m['bpb']:.3f}")
    lines.append(f"summary: {run_dir / 'summary.json'}  checkpoints: {run_dir / 'checkpoints'}")
    return "\n".join(lines)


def resolve_precision(t: TrainerConfig, announce: bool = False) -> str | int:
    """trainer.precision, with 'auto' = bf16-mixed on a GPU that has bf16, 16-mixed on one that has not (said when
    `announce`), 32-true on a CPU."""
    if t.precision != "auto":
        return t.precision
    if not _on_gpu(t):
        return "32-true"
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return "bf16-mixed"
    if announce:
        print(f"precision: {torch.cuda.get_device_name()} has no bf16; training in 16-mixed (fp16 with a loss "
              "scaler). Set --trainer.precision to choose another.", file=sys.stderr)
    return "16-mixed"


H200_BF16_FLOPS = 989.4e12
"""Dense bf16 peak of an H200 SXM (its datasheet's; the H100 SXM's compute): Lightning's table names the H200 only as
"H200 SXM1"/"NVL1", which plain "NVIDIA H200" device names do not match."""


def peak_bf16_flops(device: torch.device) -> float | None:
    """The GPU's dense bf16 peak FLOP/s (Lightning's table of datasheet figures), or None where unknown."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unknown GPU is a warning there; here it is a None
        peak = get_available_flops(device, torch.bfloat16)
    if peak is None and "h200" in torch.cuda.get_device_name(device).lower():
        peak = H200_BF16_FLOPS
    return peak


def resolve_cuda_graphs(cfg: Config, device: torch.device, single_device: bool = True) -> bool:
    """trainer.cuda_graphs: 'auto' = where graphs apply (graphed_loss.graphs_apply); true where they do not raises."""
    if cfg.trainer.cuda_graphs is False:
        return False
    why_not = graphs_apply(device, single_device=single_device,
                           accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
                           activation_checkpointing=cfg.model.activation_checkpointing,
                           loader_workers=cfg.data.num_workers)
    if why_not is not None and cfg.trainer.cuda_graphs is True:
        raise ValueError(f"trainer.cuda_graphs: expected a setup where graphs apply, got true: {why_not}")
    return why_not is None


def _on_gpu(t: TrainerConfig) -> bool:
    return t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available())


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
    """The command line of train.py (lrnn_lm.cli.train_main)."""
    from .cli import train_main

    train_main(argv)


if __name__ == "__main__":
    main()
