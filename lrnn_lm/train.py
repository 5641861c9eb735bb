"""Training: `python train.py --config small.yaml [--section.field value ...]` (the command line is lrnn_lm/cli.py).

`train(cfg)` takes the run_dir for itself, builds the data module, the LightningModule and a Lightning Trainer from
the config, fits (from run_dir/checkpoints/last.ckpt with --trainer.resume), evaluates the best checkpoint (lowest
val/loss) on the whole validation and test splits, prints a summary and writes it to run_dir/summary.json.

What a run guarantees:
- One run per run_dir. A lock file (run_dir/.lock, held while the process lives) refuses a second run, naming
  the one that holds it. Without --trainer.resume, a run_dir that already holds checkpoints is refused, unless
  --trainer.overwrite deletes them.
- Checkpoints are written atomically on any filesystem: to a temporary file in the same folder, flushed to disk
  and renamed over the old one (`AtomicCheckpointIO`), so a kill at any moment leaves the previous last.ckpt or
  the new one, whole. Temporaries left by a kill are deleted at the next start. summary.json is written the same
  way.
- last.ckpt is written every trainer.checkpoint_every optimizer steps, at the last step, and when SIGTERM or
  SIGINT (Ctrl-C) stops the run at the next step boundary; the process then says how to resume and exits with
  128 + the signal's number (143, 130). A second Ctrl-C stops at once. Lightning's SLURM auto-requeue
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

import contextlib
import json
import os
import signal
import socket
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.trainer.states import TrainerFn

from .cli import RunInterrupted
from .config import Config, TrainerConfig
from .data import LMDataModule
from .graphed_loss import graphs_apply
from .lit_module import LitLM, read_checkpoint

TMP_PREFIX = ".tmp-"
"""Temporary files of atomic writes start with this; any found at a start were left by a kill, and are deleted."""


def train(cfg: Config, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Fit, evaluate and summarise one run; `callbacks` are added to the Trainer's (tests use them to observe)."""
    t = cfg.trainer
    run_dir, ckpt_dir = Path(t.run_dir), Path(t.run_dir) / "checkpoints"
    lock = RunDirLock(run_dir) if _is_launching_process() else None
    try:
        resume_from = _prepare_run_dir(cfg, ckpt_dir, check=lock is not None)
        return _train(cfg, run_dir, ckpt_dir, resume_from, callbacks)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: Config, run_dir: Path, ckpt_dir: Path, resume_from: str | None,
           callbacks: Sequence[Callback]) -> dict[str, Any]:
    t = cfg.trainer
    started = time.perf_counter()
    L.seed_everything(t.seed, workers=True, verbose=False)
    data = LMDataModule(cfg.data, cfg.model.vocab_size, cfg.model.eos_id, seed=t.seed)
    module = LitLM(cfg.to_dict())
    compiled = t.compile is True or (t.compile == "auto" and _on_gpu(t))
    if compiled:
        module.model.compile_blocks()  # in place: the state_dict keys stay those of the plain model
    logger = make_logger(t)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * t.accumulate_grad_batches
    speed = TrainingSpeed(t.log_every, tokens_per_step)
    last = LastCheckpoint(ckpt_dir / "last.ckpt", t.checkpoint_every, sync_every=t.log_every)
    best = RunDirModelCheckpoint(ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                                 auto_insert_metric_name=False, enable_version_counter=False)
    trainer = L.Trainer(
        max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=resolve_precision(t, announce=True),
        plugins=[AtomicCheckpointIO()],
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
    module.cuda_graphs = resolve_cuda_graphs(cfg, trainer.strategy.root_device,
                                             isinstance(trainer.strategy, SingleDeviceStrategy))
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=True)
    except FloatingPointError as e:
        raise FloatingPointError(f"{e}. {_last_good(ckpt_dir)}") from None
    if last.stopped_by is not None:
        raise RunInterrupted(last.stopped_by, _resume_message(last, trainer))

    # The summary evaluates the weights with the lowest validation loss (the final ones if none was measured),
    # on the whole validation and test splits.
    eval_started = time.perf_counter()
    trainer.limit_val_batches = 1.0
    evaluated = best.best_model_path if best.best_model_path and Path(best.best_model_path).is_file() else None
    validation = trainer.validate(module, datamodule=data, ckpt_path=evaluated, verbose=False, weights_only=True)[0]
    test = trainer.test(module, datamodule=data, verbose=False)[0]  # the weights validate just loaded
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
        "tokens_per_s": rates["tokens_per_s"],
        "first_window_s": rates["first_window_s"],
        "compile_and_warmup_s": rates["compile_and_warmup_s"] if compiled or module.cuda_graphs else None,
        "cuda_graphs": module.cuda_graphs,
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


# --------------------------------------------------------------------------------------------------
# The run directory: one run at a time, no accidental overwrite, no stale temporaries.
# --------------------------------------------------------------------------------------------------


def _is_launching_process() -> bool:
    """Whether this is the process that owns the run: global rank 0 (before Lightning or torchrun start other ranks,
    this is the only process)."""
    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        if os.environ.get(variable, "0") not in ("", "0"):
            return False
    return True


class RunDirLock:
    """An exclusive lock on run_dir/.lock (fcntl.flock), held until release() or the process's end (a killed process
    holds nothing). The file says who holds it, so a refused run can name the other process."""

    def __init__(self, run_dir: Path):
        import fcntl

        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / ".lock"
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise ValueError(f"trainer.run_dir={str(run_dir)!r}: in use by {holder}; wait for that run to end, or "
                             "choose another run_dir") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            self.file.close()


def _prepare_run_dir(cfg: Config, ckpt_dir: Path, check: bool) -> str | None:
    """-> the checkpoint to resume from, or None. With `check` (the launching process): refuses what the module
    docstring says, deletes checkpoints under --trainer.overwrite and temporaries left by a kill."""
    t = cfg.trainer
    last = ckpt_dir / "last.ckpt"
    if check:
        clean_interrupted_writes(ckpt_dir)
    existing = sorted(p.name for p in ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    if t.resume is True and not last.is_file():
        raise FileNotFoundError(f"trainer.resume: no checkpoint at {last}; run without --trainer.resume to start")
    if t.resume is True or (t.resume == "auto" and last.is_file()):
        check_same_run(read_checkpoint(str(last), mmap=True)["hyper_parameters"]["config"], cfg.to_dict(), last)
        return str(last)
    if check and existing:
        if not t.overwrite:
            raise ValueError(f"trainer.run_dir={t.run_dir!r}: holds checkpoints ({', '.join(existing)}) of an earlier "
                             "run; add --trainer.resume to continue it, --trainer.overwrite to start afresh, or choose "
                             "another run_dir")
        for name in existing:
            (ckpt_dir / name).unlink()
        (Path(t.run_dir) / "summary.json").unlink(missing_ok=True)
    return None


def clean_interrupted_writes(folder: Path) -> None:
    """Delete the temporary files that kills during atomic writes left in `folder`."""
    if folder.is_dir():
        for stale in folder.glob(f"{TMP_PREFIX}*"):
            stale.unlink(missing_ok=True)


FREE_ON_RESUME = {
    "model": {"scan", "activation_checkpointing"},
    "data": {"num_workers", "cache_dir"},
    "trainer": {"max_steps", "val_every", "limit_val_batches", "checkpoint_every", "accelerator", "devices",
                "num_nodes", "strategy", "precision", "compile", "cuda_graphs", "logger", "wandb_project", "wandb_mode",
                "log_every", "run_dir", "resume", "overwrite"},
}
"""What may change when a run resumes: how long and how often, where it runs and logs, which scan computes the
same function. Everything else is restored from the checkpoint or decides what it means (the model's shape, the
data and its order, the optimizer and its schedule's rate, the seed)."""


def check_same_run(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    """Refuse to resume from a checkpoint whose config differs from this run's in what the restored state depends
    on (see FREE_ON_RESUME); saved, now: `Config.to_dict()`s. A field the checkpoint lacks (one added to the
    config since) counts as unchanged."""
    changed = [f"{section}.{name}: {saved[section][name]!r} in the checkpoint, {value!r} now"
               for section, fields in now.items() for name, value in fields.items()
               if name not in FREE_ON_RESUME.get(section, ()) and saved.get(section, {}).get(name, value) != value]
    if changed:
        raise ValueError(f"trainer.resume: {path} was written with other settings for what it restores: "
                         + "; ".join(changed) + "; resume with the checkpoint's settings, or start a new run_dir")


def _last_good(ckpt_dir: Path) -> str:
    last = ckpt_dir / "last.ckpt"
    if not last.is_file():
        return "No checkpoint was written yet"
    step = read_checkpoint(str(last), mmap=True).get("global_step")
    return f"The last good checkpoint is {last} (step {step}); resume from it with --trainer.resume, e.g. with a " \
           "lower --optim.lr (then also in a new run_dir: the learning rate is restored from the checkpoint)"


def _resume_message(last: "LastCheckpoint", trainer: L.Trainer) -> str:
    name = signal.Signals(last.stopped_by).name
    command = " ".join([Path(sys.argv[0]).name if sys.argv[0].endswith("train.py") else sys.argv[0], *sys.argv[1:]])
    if last.saved_step is None:
        return f"{name}: stopped before the first optimizer step; nothing to resume from"
    resume = "" if "--trainer.resume" in sys.argv else " --trainer.resume"
    return (f"{name}: stopped at step {trainer.global_step} and saved {last.path} (step {last.saved_step}). "
            f"Resume with: python {command}{resume}")


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_file(path: Path):
    """A binary file to write `path` through, so that a reader sees the old file or the new one, never part of one,
    on any filesystem: a temporary file in the same folder, flushed to disk and renamed over `path` on success (on
    an error the temporary is removed and `path` left as it was), then the folder flushed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes | str) -> None:
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save checkpoints, written through `atomic_file`: Lightning's own writer stages the file in
    $TMPDIR and moves it, which becomes a copy over the old checkpoint when $TMPDIR is another filesystem (a kill
    during that copy leaves a truncated last.ckpt)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_file(Path(path)) as f:
            torch.save(checkpoint, f)


class LastCheckpoint(Callback):
    """Writes last.ckpt every `every` optimizer steps, at the last step, and at the step boundary after SIGTERM or
    SIGINT, then stops the run (`stopped_by`: the signal's number). The checkpoint is written from the end of a
    training batch, so it holds the mid-epoch data position even at the last step: a run extended with more
    steps continues the epoch where it stopped.

    Under several processes the ranks agree on stopping every `sync_every` steps (a collective sum, at the steps
    where the non-finite guard synchronises anyway), so that all of them stop at the same step."""

    def __init__(self, path: Path, every: int, sync_every: int):
        self.path, self.every, self.sync_every = Path(path), every, sync_every
        self.saved_step: int | None = None
        self.stopped_by: int | None = None
        self._signal: int | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._on_signal)
        self._trainer = trainer

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        if self._signal is None:
            launcher = self._trainer.strategy.launcher
            if launcher is not None and hasattr(launcher, "procs") and launcher.procs:
                launcher.kill(signum)  # the ranks this process started
            print(f"\n{signal.Signals(signum).name}: stopping after this step (last.ckpt will be saved)",
                  file=sys.stderr, flush=True)
        self._signal = signum

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.fit_loop._should_accumulate():
            return
        step = trainer.global_step
        stop = self._signal is not None
        if trainer.world_size > 1:
            if step % self.sync_every != 0 and step < trainer.max_steps:
                stop = False  # decided together at the next check
            else:
                flag = torch.tensor(float(stop), device=module.device)
                stop = bool(trainer.strategy.reduce(flag, reduce_op="sum").item() > 0)
        if stop or step % self.every == 0 or step >= trainer.max_steps:
            trainer.save_checkpoint(self.path, weights_only=False)  # the whole state, to resume from
            self.saved_step = step
        if stop:
            self.stopped_by = self._signal or signal.SIGTERM  # another rank's signal
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()


class RunDirModelCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose restored file paths are re-rooted in this run's own folder: Lightning restores them as
    the absolute paths of the run that wrote the checkpoint, so a copied run_dir would evaluate (and could replace)
    the original's best.ckpt, and a moved one would fail to find it."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        here = str(self.dirpath)

        def rebase(p):
            return os.path.join(here, os.path.basename(p)) if p else p

        state = dict(state_dict, dirpath=here, best_model_path=rebase(state_dict.get("best_model_path")),
                     kth_best_model_path=rebase(state_dict.get("kth_best_model_path")),
                     last_model_path=rebase(state_dict.get("last_model_path")),
                     best_k_models={rebase(k): v for k, v in (state_dict.get("best_k_models") or {}).items()})
        if state["best_model_path"] and not os.path.isfile(state["best_model_path"]):
            state.update(best_model_path="", best_model_score=None, best_k_models={}, kth_best_model_path="")
        super().load_state_dict(state)


class RNGState(Callback):
    """Keeps torch's random state (dropout's masks) in every checkpoint and restores it when fit resumes, so that
    a resumed run draws the masks the uninterrupted one would have. Lightning's checkpoints do not hold it, and
    `train` seeds every run from the start. The CUDA state is the strategy's device's, each rank's own (in DDP every
    rank is seeded alike, so rank 0's state, the one written, is every rank's). The data order has its own
    (resumable_loader.py)."""

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        # the strategy's device, not the module's: after fit Lightning moves the module to the CPU
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


# --------------------------------------------------------------------------------------------------
# Speed: measured without a host sync per step
# --------------------------------------------------------------------------------------------------


class TrainingSpeed(Callback):
    """Training tokens per second over windows of `every` optimizer steps, validation time excluded.

    The GPU is synchronised only at window ends (the steps whose metrics lit_module.py reads anyway) and around
    validation, so measuring does not slow the steps it measures. `summary()`: the steady-state rate (the median
    window after the first, which holds compilation and warm-up), the first window's time, how much longer it
    took than steady steps would have (compilation and warm-up), and the validation time during fit."""

    def __init__(self, every: int, tokens_per_step: int):
        self.every, self.tokens_per_step, self.world_size = every, tokens_per_step, 1  # world_size: at train start
        self.marks: list[tuple[int, float, float]] = []  # (optimizer step, time, validation time so far)
        self.validation_s, self._validation_started = 0.0, None

    @staticmethod
    def _now(trainer: L.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.world_size = trainer.world_size
        self.marks = [(trainer.global_step, self._now(trainer), 0.0)]

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._validation_started = self._now(trainer)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._validation_started is not None:
            self.validation_s += self._now(trainer) - self._validation_started
            self._validation_started = None

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if trainer.fit_loop._should_accumulate() or (step % self.every != 0 and step < trainer.max_steps):
            return
        self.marks.append((step, self._now(trainer), self.validation_s))
        rate = self._rate(self.marks[-2], self.marks[-1])
        if rate is not None:
            module.log("train/tokens_per_s", rate, batch_size=1)

    def _rate(self, a, b) -> float | None:
        steps, seconds = b[0] - a[0], (b[1] - a[1]) - (b[2] - a[2])
        return steps * self.tokens_per_step * self.world_size / seconds if steps > 0 and seconds > 0 else None

    def summary(self) -> dict[str, float | None]:
        windows = list(zip(self.marks, self.marks[1:]))
        rates = [r for a, b in windows[1:] if (r := self._rate(a, b)) is not None]
        steady = statistics.median(rates) if rates else (self._rate(*windows[0]) if windows else None)
        out = {"tokens_per_s": round(steady) if steady else None, "first_window_s": None,
               "compile_and_warmup_s": None, "validation_s": round(self.validation_s, 1)}
        if windows and steady:
            (s0, t0, v0), (s1, t1, v1) = windows[0]
            first = (t1 - t0) - (v1 - v0)
            steady_s = (s1 - s0) * self.tokens_per_step * self.world_size / steady
            out.update(first_window_s=round(first, 1), compile_and_warmup_s=round(max(0.0, first - steady_s), 1))
        return out


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
    timing = [f"first {s['first_window_s']} s window" if s["first_window_s"] is not None else None,
              f"compile + warm-up ~{s['compile_and_warmup_s']} s" if s["compile_and_warmup_s"] is not None else None,
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
