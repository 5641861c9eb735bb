"""Helpers for the end-to-end tests: a tiny run's overrides, train.py in a subprocess, a recording callback, and a
training loss made NaN.

As a script, `python tests/lrnn_lm/tiny_run.py OUT_DIR [--section.field value ...]` trains with `Recorder`,
so that a multi-process run (DDP re-launches this script for each rank) leaves one record per rank. With
TINY_RUN_NAN_AT=rank:step in the environment it instead runs train.py's main with that rank's loss made NaN
in the non-finite guard at that step (`poison_loss_in_guard`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[2]


def write_local_corpus(folder: Path) -> Path:
    """train/validation/test.jsonl of speeches from the embedded plays (~40/6/6 KB): real text, quick to tokenize."""
    from lrnn_lm.corpus import embedded_plays

    folder.mkdir(parents=True, exist_ok=True)
    plays = embedded_plays()
    for split, n in {"train": 400, "validation": 60, "test": 60}.items():
        speeches = [p for text in plays[split]["text"][:2] for p in text.split("\n\n") if p.startswith("**")]
        lines = [json.dumps({"text": speech}) + "\n" for speech in speeches[:n]]
        (folder / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
    return folder


def tiny_overrides(run_dir: Path, corpus: Path, **fields) -> list[str]:
    """A model of ~30K parameters on `write_local_corpus`: a step takes milliseconds on a CPU.

    The tokenizer and token caches go next to the corpus folder, so the runs on one corpus share them.
    """
    values = {
        "model.vocab_size": 512, "model.d_model": 32, "model.n_layers": 1, "data.source": str(corpus),
        "data.seq_len": 32, "data.batch_size": 4, "data.cache_dir": str(corpus.parent / f"{corpus.name}-cache"),
        "optim.warmup_steps": 2, "trainer.accelerator": "cpu", "trainer.logger": "csv",
        "trainer.limit_val_batches": 2, "trainer.log_every": 1, "trainer.run_dir": str(run_dir),
    } | {k.replace("__", "."): v for k, v in fields.items()}
    return [arg for k, v in values.items() for arg in (f"--{k}", str(v))]


SCRIPT_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
"""Offline, and one thread: tiny models gain nothing from more, and lose a lot when the CPU is shared."""


def run_script(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`python *args` from the repository root with SCRIPT_ENV, output captured."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=os.environ | SCRIPT_ENV, capture_output=True,
                          text=True, timeout=timeout)


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class Recorder(L.Callback):
    """Per training batch: (global step after it, digest of the inputs, loss); at the end, a digest of the weights.

    With out_dir, each rank writes them to out_dir/rank{r}.json at the end of training.
    """

    def __init__(self, out_dir: Path | None = None):
        self.out_dir, self.batches, self.losses, self.params = out_dir, [], [], None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.batches.append((trainer.global_step, digest(batch["inputs"])))
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, module):
        self.params = digest(torch.cat([p.detach().flatten() for p in module.model.parameters()]))
        if self.out_dir is not None:
            record = {"batches": self.batches, "losses": self.losses, "params": self.params}
            (Path(self.out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def nan_loss_from_step(monkeypatch, step: int) -> None:
    """Make the training loss NaN from optimizer step `step` (0-based global_step) on."""
    from lrnn_lm.lit_module import LitLM

    nll = LitLM._training_nll

    def nan_from(self, batch):
        total, n_tokens = nll(self, batch)
        return (total * float("nan") if self.global_step >= step else total), n_tokens

    monkeypatch.setattr(LitLM, "_training_nll", nan_from)


def poison_loss_in_guard(rank: int, step: int, out_dir: Path) -> None:
    """From now on, rank `rank` counts the optimizer step it takes from global step `step` as non-finite, in the
    guard only: its loss and gradients stay finite, so the other ranks learn of it only through the guard's
    collective check. Each rank whose check stops the run writes out_dir/rank{r}.stopped (the global step then)
    before the error goes on."""
    from lrnn_lm.lit_module import LitLM

    record, check = LitLM.record_step, LitLM.check_finite

    def poisoned_record(self, finite):
        if self.global_rank == rank and self.global_step == step:
            finite = torch.zeros_like(finite)
        record(self, finite)

    def observed_check(self):
        try:
            check(self)
        except FloatingPointError:
            (Path(out_dir) / f"rank{self.global_rank}.stopped").write_text(str(self.global_step))
            raise

    LitLM.record_step, LitLM.check_finite = poisoned_record, observed_check


if __name__ == "__main__":
    from lrnn_lm.config import load_config
    from lrnn_lm.train import main, train

    if "TINY_RUN_NAN_AT" in os.environ:  # "rank:step": through train.py's main, which turns the error into an exit
        poison_loss_in_guard(*map(int, os.environ["TINY_RUN_NAN_AT"].split(":")), Path(sys.argv[1]))
        main(sys.argv[2:])
    else:
        train(load_config(None, sys.argv[2:]), callbacks=[Recorder(Path(sys.argv[1]))])
