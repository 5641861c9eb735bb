"""The training run's callbacks: last.ckpt on a schedule and on a signal, best.ckpt re-rooted in its own run_dir,
torch's random state in every checkpoint, and the training speed measured without a host sync per step."""

from __future__ import annotations

import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn


def mid_accumulation(trainer: L.Trainer) -> bool:
    """Whether the batch just run ended no optimizer step (gradient accumulation goes on). Lightning's fit loop
    knows it through a private method: this is the one place to change if Lightning renames it."""
    return trainer.fit_loop._should_accumulate()


def validates_after_this_batch(trainer: L.Trainer) -> bool:
    """Whether fit validates once the hooks of the batch just run have returned, as Lightning's epoch loop decides
    it (a private method: the one place to change if Lightning renames it)."""
    loop = trainer.fit_loop
    return loop.epoch_loop._should_check_val_fx(loop._data_fetcher)


def skip_the_validation_after_this_batch(trainer: L.Trainer) -> None:
    """Lightning validates whenever fit stops early (`trainer.should_stop`); this skips that validation (the epoch
    loop's private flag for it, as Lightning sets it itself on a restart)."""
    trainer.fit_loop.epoch_loop._skip_next_val = True


class LastCheckpoint(Callback):
    """Writes last.ckpt every `every` optimizer steps, at the last step, and at the step boundary after SIGTERM or
    SIGINT, then stops the run (`stopped_by`: the signal's number). The checkpoint is written from the end of a
    training batch, so it holds the mid-epoch data position even at the last step: a run extended with more
    steps continues the epoch where it stopped.

    At a step that validates, it is written after the validation instead (after best.ckpt's update): Lightning
    resumes a checkpoint written before a step's validation as if that validation had run, so a kill during it
    would lose it for good (its loss, and best.ckpt's chance to hold that step's weights), and a non-finite
    validation loss would stop the run with a checkpoint of the state that scored it. So is a signal's: at once,
    or after the validation of a step that validates. (Lightning also validates any step at which a run stops
    early; after a signal that validation is skipped, so a stopped and resumed run validates the steps an
    uninterrupted one does.)

    Under several processes the ranks agree on stopping every `sync_every` steps (a collective sum, at the steps
    where the non-finite guard synchronises anyway), so that all of them stop at the same step."""

    def __init__(self, path: Path, every: int, sync_every: int):
        self.path, self.every, self.sync_every = Path(path), every, sync_every
        self.saved_step: int | None = None
        self.stopped_by: int | None = None
        self.interrupted_again = False  # a second Ctrl-C stopped the run at once
        self._signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._after_validation = False  # write at the end of this step's validation

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._trainer = trainer  # before the handlers, which read it
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None and signum == signal.SIGINT:
            self.interrupted_again = True  # Lightning turns the KeyboardInterrupt into exit 1: train() turns it back
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
        if mid_accumulation(trainer):
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
            validates = validates_after_this_batch(trainer)
            if not validates:
                self._save(trainer)
            self._after_validation = validates
        if stop:
            self.stopped_by = self._signal or signal.SIGTERM  # another rank's signal
            trainer.should_stop = True
            if not validates:
                # a signal is no reason to validate: the uninterrupted run would not validate this step, and the
                # extra validation could make best.ckpt hold this step's weights, which it would not otherwise
                skip_the_validation_after_this_batch(trainer)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._after_validation and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the whole state, to resume from
        self.saved_step = trainer.global_step
        self._after_validation = False

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


class TrainingSpeed(Callback):
    """Training tokens per second over windows of `every` optimizer steps, validation time excluded.

    The GPU is synchronised only at window ends (the steps whose metrics lit_module.py reads anyway) and around
    validation, so measuring does not slow the steps it measures. `summary()`: the steady-state rate (the median
    window after the first, which holds compilation and warm-up), the first window's time, how much longer it
    took than steady steps would have (compilation and warm-up), the training time (every window, compilation and
    checkpoint writes included) and the validation time during fit. `started`: when training began (after data
    preparation and Lightning's setup), as time.perf_counter()."""

    def __init__(self, every: int, tokens_per_step: int):
        self.every, self.tokens_per_step, self.world_size = every, tokens_per_step, 1  # world_size: at train start
        self.marks: list[tuple[int, float, float]] = []  # (optimizer step, time, validation time so far)
        self.validation_s, self._validation_started = 0.0, None

    @staticmethod
    def _now(trainer: L.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    @property
    def started(self) -> float | None:
        return self.marks[0][1] if self.marks else None

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
        if mid_accumulation(trainer) or (step % self.every != 0 and step < trainer.max_steps):
            return
        self.marks.append((step, self._now(trainer), self.validation_s))
        rate = self._rate(self.marks[-2], self.marks[-1])
        if rate is not None:  # a host tensor: a float would be copied to the device, and read back from it
            module.log("train/tokens_per_s", torch.tensor(rate), batch_size=1)

    def _rate(self, a, b) -> float | None:
        steps, seconds = b[0] - a[0], (b[1] - a[1]) - (b[2] - a[2])
        return steps * self.tokens_per_step * self.world_size / seconds if steps > 0 and seconds > 0 else None

    def summary(self) -> dict[str, float | None]:
        windows = list(zip(self.marks, self.marks[1:]))
        rates = [r for a, b in windows[1:] if (r := self._rate(a, b)) is not None]
        steady = statistics.median(rates) if rates else (self._rate(*windows[0]) if windows else None)
        out = {"tokens_per_s": round(steady) if steady else None, "first_window_s": None,
               "compile_and_warmup_s": None, "validation_s": round(self.validation_s, 1),
               "training_s": round(sum((b[1] - a[1]) - (b[2] - a[2]) for a, b in windows), 1)}
        if windows and steady:
            (s0, t0, v0), (s1, t1, v1) = windows[0]
            first = (t1 - t0) - (v1 - v0)
            steady_s = (s1 - s0) * self.tokens_per_step * self.world_size / steady
            out.update(first_window_s=round(first, 1), compile_and_warmup_s=round(max(0.0, first - steady_s), 1))
        return out
