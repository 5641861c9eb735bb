"""The LightningModule: a thin wrapper that gives `LinearRNNLM` a loss, metrics and an optimizer.

Batches come from data.py: {"inputs": (B, T), "targets": (B, T) with IGNORE_INDEX padding, "n_bytes": ()}.
Logged: train/{loss, ppl, bpb, grad_norm} every step and val|test/{loss, ppl, bpb, tokens, bytes} per
evaluation, where loss is the mean NLL per predicted token in nats, ppl = exp(loss) and
bpb = NLL / (ln 2 · bytes) over the UTF-8 bytes the targets stand for (exact, see data.py). Evaluation sums
NLL, tokens and bytes over the whole split and across ranks before dividing.

A non-finite loss or gradient norm raises FloatingPointError before the optimizer step, on every rank at the
same step, so neither the weights nor any checkpoint ever hold that state.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torchmetrics import SumMetric

from .config import Config
from .data import IGNORE_INDEX, LMDataModule
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
        self.eval_nll, self.eval_tokens, self.eval_bytes = (SumMetric().set_dtype(torch.float64) for _ in range(3))
        self.flops_per_batch = None  # read by ThroughputMonitor; we log tokens/s, not FLOPs
        self._loss: torch.Tensor | None = None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, T) -> logits (B, T, V)."""
        return self.model(tokens)

    def _nll(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (summed NLL in nats, number of predicted tokens)."""
        logits = self.model(batch["inputs"])  # (B, T, V)
        targets = batch["targets"]  # (B, T)
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        return nll, (targets != IGNORE_INDEX).sum()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        nll, n_tokens = self._nll(batch)
        loss = nll / n_tokens
        self._loss = loss.detach()
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({"train/ppl": loss.detach().exp(), "train/bpb": nll.detach() / (LN2 * batch["n_bytes"])})
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.parameters() if p.grad is not None])
        self.log("train/grad_norm", grad_norm)
        # Under 16-mixed, GradScaler makes inf gradients on purpose when the scale overflows and skips that
        # step itself; only a non-finite loss is a failure there.
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        finite = torch.isfinite(self._loss) & (torch.isfinite(grad_norm) | (scaler is not None))  # () on the device
        # One host sync per step: the ranks' failures are summed on the device (an all-reduce under DDP) and the
        # count is read once, so every rank takes the same decision. (Reading the flag and then reducing it, as
        # strategy.reduce_boolean_decision does, costs two syncs.)
        failed_ranks = int(self.trainer.strategy.reduce((~finite).float(), reduce_op="sum"))
        if failed_ranks:
            raise FloatingPointError(
                f"step {self.global_step}: non-finite training loss or gradient norm on {failed_ranks} of "
                f"{self.trainer.world_size} ranks (rank {self.global_rank}: loss {self._loss.item()}, gradient norm "
                f"{grad_norm.item()}); stopped before the optimizer step, so no checkpoint holds this state")

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
        metrics = {"loss": loss, "ppl": loss.exp(), "bpb": nll / (LN2 * n_bytes), "tokens": n_tokens, "bytes": n_bytes}
        # The sums are already global (torchmetrics syncs them); sync_dist only keeps Lightning's bookkeeping quiet.
        self.log_dict({f"{prefix}/{k}": v for k, v in metrics.items()}, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        o, max_steps = self.cfg.optim, self.cfg.trainer.max_steps
        # not fused=True: Lightning's mixed-precision plugin refuses to clip the gradients of a fused optimizer
        optimizer = torch.optim.AdamW(optimizer_param_groups(self.model, o.weight_decay), lr=o.lr, betas=o.betas)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, o.warmup_steps, max_steps, o.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_checkpoint(path: str) -> tuple[LitLM, Tokenizer]:
    """A checkpoint written by training -> (the module with its weights, on the CPU; the tokenizer it was trained with).

    Loaded with weights_only=True: a checkpoint holds tensors and plain containers only (the config as dicts,
    the tokenizer as the JSON string the data module saved), so loading it runs no code from the file.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    module = LitLM(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    return module, Tokenizer.from_str(ckpt[LMDataModule.__qualname__]["tokenizer"])
