"""The LightningModule: a thin wrapper that gives `LinearRNNLM` a loss, metrics and an optimizer.

Batches come from data.py: {"inputs": (B, T), "targets": (B, T) with IGNORE_INDEX padding, "n_bytes": ()}.
Logged: train/{loss, ppl, bpb, grad_norm} every trainer.log_every optimizer steps, and val|test/{loss, ppl, bpb,
tokens, bytes} per evaluation, where loss is the mean NLL per predicted token in nats, ppl = exp(loss) and
bpb = NLL / (ln 2 · bytes) over the UTF-8 bytes the targets stand for (exact, see data.py). Evaluation sums NLL,
tokens and bytes over the whole split and across ranks before dividing.

On CUDA (`trainer.cuda_graphs`), a training step's forward and backward replay CUDA graphs captured at the first
batch (graphed_loss.py): two launches a step where the model alone launches hundreds of small kernels.

No host sync in a training step. The step's metrics stay on the device; they are read, logged and checked
every log_every steps. The non-finite guard counts, on the device, the optimizer steps whose loss or gradient
norm is not finite; the count is read (and summed over ranks) every log_every steps and before every
checkpoint is written, and a non-zero count raises FloatingPointError on every rank at once. So a non-finite
state never reaches a checkpoint, and a run stops within log_every steps of the first bad one.

The optimizer is AdamW with fused=True on CUDA; gradients are clipped here (`torch.nn.utils.clip_grad_norm_`),
not by Lightning, whose mixed-precision plugin refuses to clip a fused optimizer's gradients, and the clip's
total norm is the norm the guard and the log use: it is computed once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from tokenizers import Tokenizer
from torchmetrics import SumMetric

from .callbacks import mid_accumulation
from .config import Config
from .data import IGNORE_INDEX, LMDataModule
from .graphed_loss import TrainingNLL
from .model import LinearRNNLM, optimizer_param_groups

LN2 = math.log(2)


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate multiplier at optimizer step `step`: linear warmup to 1, then cosine down to min_lr_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LitLM(L.LightningModule):
    """config: `Config.to_dict()` as plain dicts and lists, stored in every checkpoint as hyper_parameters."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = Config.from_dict(config)
        self.model = LinearRNNLM(self.cfg.model)
        # nan_strategy "disable": a NaN batch makes the sum NaN (torchmetrics' default drops it with a warning, which
        # reports a finite loss over fewer tokens than it divides by), and no host sync checks each update for NaN
        self.eval_nll, self.eval_tokens, self.eval_bytes = (SumMetric(nan_strategy="disable").set_dtype(torch.float64)
                                                            for _ in range(3))
        # Device-side state of the steps since the last check (see the module docstring).
        self._bad_steps: torch.Tensor | None = None  # () int: optimizer steps with a non-finite loss or norm
        self._step_sums: tuple[torch.Tensor, ...] | None = None  # this step's batches so far: NLL, tokens, bytes
        self._last_checked_step = 0
        self._metrics: dict[str, torch.Tensor] = {}  # the last optimizer step's, on the device
        # the training loss, from CUDA graphs where train.py turns them on (trainer.cuda_graphs, graphed_loss.py)
        self.training_nll = TrainingNLL(self.model, IGNORE_INDEX)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, T) -> logits (B, T, V)."""
        return self.model(tokens)

    def _nll(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (summed NLL in nats, number of predicted tokens). The ids are not range-checked (a host sync per
        batch): the data module refuses a tokenizer larger than model.vocab_size."""
        return self.model.nll(batch["inputs"], batch["targets"], ignore_index=IGNORE_INDEX, check_ids=False)

    def _training_nll(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`_nll` for a training batch: replayed from CUDA graphs where they are on."""
        return self.training_nll(batch["inputs"], batch["targets"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        nll, n_tokens = self._training_nll(batch)
        loss = nll / n_tokens
        sums = (nll.detach(), n_tokens, batch["n_bytes"])
        self._step_sums = sums if self._step_sums is None else tuple(a + b for a, b in zip(self._step_sums, sums))
        return loss

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        # None, never zeros: with CUDA graphs each .grad is the backward graph's own buffer, which autograd would add
        # the next replay's gradient to (itself), doubling it
        optimizer.zero_grad(set_to_none=True)

    def on_train_start(self) -> None:
        self._last_checked_step = self.global_step  # a resumed run's first check covers the steps since the resume

    def on_train_end(self) -> None:
        self.training_nll.release()  # the graphs' memory pool holds a step's activations: free it for evaluation

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)  # 16-mixed's GradScaler
        if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            # Lightning leaves the unscaling to an optimizer that unscales in its step (fused AdamW, on CUDA): the
            # norm and the clip below need the true gradients. GradScaler.step then knows they are unscaled.
            scaler.unscale_(optimizer)
        params = [p for p in self.parameters() if p.grad is not None]
        clip = self.cfg.optim.grad_clip
        if clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        # the step's loss over all its batches (under gradient accumulation, not the last one's), computed now: with
        # CUDA graphs the summed NLL is the graph's output buffer, which the next step's replay overwrites
        nll, n_tokens, n_bytes = self._step_sums
        self._metrics = {"loss": nll / n_tokens, "bpb": nll / (LN2 * n_bytes), "grad_norm": grad_norm}
        self._step_sums = None
        # Under 16-mixed, GradScaler makes inf gradients on purpose when the scale overflows and skips that
        # step itself; only a non-finite loss is a failure there.
        finite = torch.isfinite(nll) & (torch.isfinite(grad_norm) | (scaler is not None))  # nll: every batch's sum
        self.record_step(finite)

    def record_step(self, finite: torch.Tensor) -> None:
        """Count one optimizer step as finite or not, on the device."""
        bad = (~finite).to(torch.int32)
        self._bad_steps = bad if self._bad_steps is None else self._bad_steps + bad

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        t = self.cfg.trainer
        if mid_accumulation(self.trainer) or self.global_step % t.log_every != 0:
            return
        self.check_finite()
        # One read (the guard's check just waited for the device, so it waits for nothing), and the values are logged
        # as host tensors: Lightning reads the progress bar's values at the end of every batch, not only of the
        # batches that log them, and a value on the device would make each of those reads a sync.
        loss, bpb, grad_norm = torch.stack([self._metrics[k].float() for k in ("loss", "bpb", "grad_norm")]).cpu()
        self.log_dict({"train/loss": loss, "train/ppl": loss.clamp(max=80.0).exp(), "train/bpb": bpb,
                       "train/grad_norm": grad_norm}, prog_bar=False, batch_size=1)
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=1)

    def check_finite(self) -> None:
        """Raise FloatingPointError on every rank if any rank had a non-finite step since the last check."""
        counts = torch.zeros(2, device=self.device) if self._bad_steps is None else torch.stack(
            [self._bad_steps.float(), (self._bad_steps > 0).float()])
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum") if self.trainer.world_size > 1 else counts
        bad_steps, bad_ranks = (int(v) for v in counts.tolist())
        first, last = self._last_checked_step + 1, self.global_step
        self._bad_steps, self._last_checked_step = None, self.global_step
        if bad_steps:
            raise FloatingPointError(
                f"non-finite training loss or gradient norm in optimizer steps {first}-{last} (counted {bad_steps} "
                f"times, on {bad_ranks} of {self.trainer.world_size} ranks); stopped, and no checkpoint holds a state "
                "after it")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # in fit, including validation's best.ckpt (trainer.training is False there): nothing non-finite is written
        if self.trainer.state.fn == TrainerFn.FITTING:
            self.check_finite()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._accumulate(batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._accumulate(batch)

    def _accumulate(self, batch: dict[str, torch.Tensor]) -> None:
        nll, n_tokens = self._nll(batch)
        self.eval_nll.update(nll)
        self.eval_tokens.update(n_tokens)
        self.eval_bytes.update(batch["n_bytes"])

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def _log_evaluation(self, prefix: str) -> None:
        nll, n_tokens, n_bytes = (m.compute() for m in (self.eval_nll, self.eval_tokens, self.eval_bytes))
        for m in (self.eval_nll, self.eval_tokens, self.eval_bytes):
            m.reset()
        loss = nll / n_tokens
        if prefix == "val" and self.trainer.state.fn == TrainerFn.FITTING and not torch.isfinite(loss):
            # before Lightning's checkpoint callbacks run (at validation end): a NaN would rank as the worst score
            # and training would go on from weights that no longer score. A non-finite training step since the last
            # check is the likelier cause, and its error names the steps.
            self.check_finite()
            raise FloatingPointError(
                f"non-finite validation loss ({loss.item()}) after optimizer step {self.global_step}; stopped, and no "
                "checkpoint holds a state after it")
        metrics = {"loss": loss, "ppl": loss.exp(), "bpb": nll / (LN2 * n_bytes), "tokens": n_tokens, "bytes": n_bytes}
        # The sums are already global (torchmetrics syncs them); sync_dist only keeps Lightning's bookkeeping quiet.
        self.log_dict({f"{prefix}/{k}": v for k, v in metrics.items()}, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        o, max_steps = self.cfg.optim, self.cfg.trainer.max_steps
        fused = self.device.type == "cuda"  # one kernel for the whole update; clipping is done above
        optimizer = torch.optim.AdamW(optimizer_param_groups(self.model, o.weight_decay), lr=o.lr, betas=o.betas,
                                      fused=fused)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, o.warmup_steps, max_steps, o.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_checkpoint(path: str) -> tuple[LitLM, Tokenizer]:
    """A checkpoint written by training -> (the module with its weights, on the CPU; the tokenizer it was trained with).

    Loaded with weights_only=True: a checkpoint holds tensors and plain containers only (the config as dicts,
    the tokenizer as the JSON string the data module saved), so loading it runs no code from the file.
    """
    ckpt = read_checkpoint(path)
    module = LitLM(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    return module, Tokenizer.from_str(ckpt[LMDataModule.__qualname__]["tokenizer"])


def read_checkpoint(path: str, mmap: bool = False) -> dict[str, Any]:
    """torch.load(weights_only=True) of a training checkpoint, with a clear error naming the file when it is missing,
    empty, truncated or not one of ours. mmap: map the tensors rather than read them (to read its config only)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    if p.stat().st_size == 0:
        raise ValueError(f"checkpoint {path}: the file is empty (a write was interrupted?); use another checkpoint")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises several types for a damaged file (RuntimeError, EOFError, UnpicklingError)
        raise ValueError(f"checkpoint {path}: unreadable ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                         "it may be truncated or not a checkpoint; use another checkpoint") from e
    if not isinstance(ckpt, dict) or "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"checkpoint {path}: not a checkpoint written by train.py (no hyper_parameters/state_dict)")
    return ckpt
