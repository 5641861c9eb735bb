"""How the command-line programs end: one line for what a user can fix, a traceback only for bugs.

`run_cli(main)` runs a program's main. An error a user can fix (a bad config value, a missing or corrupt file, a
run_dir in use, a bad argument) ends the process with one line on stderr, `error: <what>, <what to do>`, and
exit code 2. A run stopped by a signal exits with 128 + the signal's number (SIGTERM: 143, SIGINT: 130), as
shells and schedulers expect, after saying how to resume. A non-finite training loss exits with 1. With
LRNN_LM_DEBUG=1 in the environment every error shows its traceback instead.

These modules import nothing heavy, so that argument errors come before Lightning loads and a checkpoint is read.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

DEBUG_VARIABLE = "LRNN_LM_DEBUG"
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
               UnicodeDecodeError)
"""Raised by this project's checks with a message that names the problem and the fix (a TypeError is a caller's
bug, and keeps its traceback)."""


class RunInterrupted(Exception):
    """Training stopped at a step boundary on a signal, after writing last.ckpt (or with nothing to save)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors in this module's one-line form."""

    def error(self, message: str) -> None:
        fail(f"{message}; see {self.prog} --help")


def check_checkpoint_path(path: str) -> None:
    """--ckpt: a checkpoint file written by train.py, or a folder written by `python -m lrnn_lm.export`."""
    p = Path(path)
    if p.is_dir():
        missing = [name for name in ("config.json", "model.safetensors", "tokenizer.json") if not (p / name).is_file()]
        if missing:
            raise FileNotFoundError(f"--ckpt {path}: a folder without {', '.join(missing)}; expected a checkpoint "
                                    "file or a folder written by python -m lrnn_lm.export")
    elif not p.is_file():
        raise FileNotFoundError(f"--ckpt {path}: no such file or folder")


def debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def fail(message: str, code: int = 2) -> None:
    """Print `error: message` on one line and exit with `code`."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def run_cli(main: Callable[[], object]) -> None:
    """Run `main()`, ending the process as this module's docstring says."""
    if debugging():
        main()
        return
    try:
        main()
    except RunInterrupted as e:
        print(str(e), file=sys.stderr, flush=True)
        raise SystemExit(128 + e.signum) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except FloatingPointError as e:
        fail(str(e), code=1)
    except USER_ERRORS as e:
        message = str(e) or type(e).__name__
        if isinstance(e, UnicodeDecodeError):
            message = f"{message}: expected UTF-8 text"
        fail(f"{message} (set {DEBUG_VARIABLE}=1 for the traceback)")


def train_main(argv: list[str] | None = None) -> None:
    """`python train.py --config small.yaml [--section.field value ...]`: parse, then train."""
    launched = time.perf_counter()  # the summary's startup_s counts from here: parsing, then the heavy imports
    args = sys.argv[1:] if argv is None else list(argv)

    def main() -> None:
        from .config import parse_config

        cfg = parse_config(args, prog="train.py", description=(
            "Train a linear-RNN language model, then evaluate it on the validation and test splits. A preset "
            "(--config) sets the fields; any field can be overridden as --section.field value."))
        from .train import train  # Lightning loads only once the config is known to be good

        train(cfg, launched_at=launched)

    run_cli(main)
