"""A run's folder: one run at a time in it, files written so that a kill never leaves half of one, and the checks
that start or resume a run there.

- `RunDirLock` holds run_dir/.lock while the process lives; a second run is refused, naming the holder.
- `prepare_run_dir` refuses a run_dir that holds another run's checkpoints (unless resuming or overwriting),
  deletes the temporaries a kill left, and refuses to resume from a checkpoint whose settings differ in what it
  restores (`FREE_ON_RESUME` lists what may change).
- `atomic_file` / `AtomicCheckpointIO`: a temporary file in the same folder, flushed to disk and renamed over the
  old one, so that a reader sees the old file or the new one, whole.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .config import Config
from .lit_module import read_checkpoint

TMP_PREFIX = ".tmp-"
"""Temporary files of atomic writes start with this; any found at a start were left by a kill, and are deleted."""


def is_launching_process() -> bool:
    """Whether this is the process that owns the run: global rank 0 (before Lightning or torchrun start other ranks,
    this is the only process)."""
    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        if os.environ.get(variable, "0") not in ("", "0"):
            return False
    return True


class RunDirLock:
    """An exclusive lock on run_dir/.lock (fcntl.flock), held until release() or the process's end (a killed process
    holds nothing, once the loader workers it forked have exited too). The file says who holds it, so a refused run
    can name the other process."""

    DEAD_HOLDER_WAIT_S = 30.0
    """How long to wait for a lock whose holder (on this host) is dead: its forked workers exit within seconds."""

    def __init__(self, run_dir: Path):
        import fcntl

        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / ".lock"
        self.file = open(self.path, "a+")
        deadline = time.monotonic() + self.DEAD_HOLDER_WAIT_S
        while True:
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                self.file.seek(0)
                holder = self.file.read().strip() or "another process"
                # A killed run's DataLoader workers (forked, so sharing its lock) hold it until they notice their
                # parent is gone: a requeued run waits for them rather than refusing a dead holder.
                if _holder_is_dead(holder) and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                self.file.close()
                raise ValueError(f"trainer.run_dir={str(run_dir)!r}: in use by {holder}; wait for that run to end, "
                                 "or choose another run_dir") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            self.file.close()


def _holder_is_dead(holder: str) -> bool:
    """Whether the lock file's "pid N on HOST since ..." names a process of this host that no longer exists."""
    words = holder.split()
    if len(words) < 4 or words[0] != "pid" or not words[1].isdigit() or words[3] != socket.gethostname():
        return False
    try:
        os.kill(int(words[1]), 0)  # PermissionError: alive, another user's
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def prepare_run_dir(cfg: Config, ckpt_dir: Path, check: bool) -> str | None:
    """-> the checkpoint to resume from, or None. With `check` (the launching process): refuses what the module
    docstring says, deletes checkpoints under --trainer.overwrite and temporaries left by a kill."""
    t = cfg.trainer
    last = ckpt_dir / "last.ckpt"
    if check:
        clean_interrupted_writes(ckpt_dir)
        clean_interrupted_writes(Path(t.run_dir))  # summary.json's
    existing = sorted(p.name for p in ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    if t.resume is True and not last.is_file():
        raise FileNotFoundError(f"trainer.resume: no checkpoint at {last}; run without --trainer.resume to start")
    if t.resume is True or (t.resume == "auto" and last.is_file()):
        check_same_run(read_checkpoint(str(last), mmap=True)["hyper_parameters"]["config"], cfg.to_dict(), last)
        return str(last)
    if check and existing:
        if t.resume == "auto" and _stopped_before_its_first_last_ckpt(cfg, ckpt_dir, existing):
            print(f"trainer.resume auto: no {last.name} in {ckpt_dir}, nothing to resume; starting afresh (removing "
                  f"{', '.join(existing)})", file=sys.stderr, flush=True)
        elif not t.overwrite:
            raise ValueError(f"trainer.run_dir={t.run_dir!r}: holds checkpoints ({', '.join(existing)}) of an earlier "
                             "run; add --trainer.resume to continue it, --trainer.overwrite to start afresh, or choose "
                             "another run_dir")
        for name in existing:
            (ckpt_dir / name).unlink()
        (Path(t.run_dir) / "summary.json").unlink(missing_ok=True)
    return None


def _stopped_before_its_first_last_ckpt(cfg: Config, ckpt_dir: Path, existing: list[str]) -> bool:
    """Whether the run_dir holds what a run of this config leaves when it is killed before its first last.ckpt
    (validating more often than it checkpoints): best.ckpt alone, no summary, best.ckpt's settings this run's. A
    finished run whose last.ckpt was deleted, or another run's, does not qualify: its results are not deleted."""
    if existing != ["best.ckpt"] or (Path(cfg.trainer.run_dir) / "summary.json").exists():
        return False
    best = ckpt_dir / "best.ckpt"
    try:
        check_same_run(read_checkpoint(str(best), mmap=True)["hyper_parameters"]["config"], cfg.to_dict(), best)
    except (ValueError, KeyError):
        return False
    return True


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
same function. (The number of processes may not: the data position is per process, and its loader refuses
another count.) Everything else is restored from the checkpoint or decides what it means (the model's shape, the
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


def last_checkpoint_step(ckpt_dir: Path) -> int | None:
    """The optimizer step ckpt_dir/last.ckpt holds, or None where there is none."""
    last = ckpt_dir / "last.ckpt"
    return read_checkpoint(str(last), mmap=True).get("global_step") if last.is_file() else None


def last_good_message(ckpt_dir: Path) -> str:
    step = last_checkpoint_step(ckpt_dir)
    if step is None:
        return "No checkpoint was written yet"
    return f"The last good checkpoint is {ckpt_dir / 'last.ckpt'} (step {step}); resume from it with " \
           "--trainer.resume, e.g. with a lower --optim.lr (then also in a new run_dir: the learning rate is " \
           "restored from the checkpoint)"


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
    during that copy leaves a truncated last.ckpt). `writes` and `write_s` count the checkpoints written and the
    seconds spent writing them (the copy of GPU tensors to the host included)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes, self.write_s = 0, 0.0

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        started = time.perf_counter()
        with atomic_file(Path(path)) as f:
            torch.save(checkpoint, f)
        self.writes += 1
        self.write_s += time.perf_counter() - started
