"""What real clusters and real users do to a run, end to end on the CPU: kills during checkpoint writes, signals, two
runs on one run_dir, copied and moved run dirs, extended runs, changed settings on resume, and errors a user can fix,
which must end in one line."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from lrnn_lm.cli import RunInterrupted
from lrnn_lm.config import load_config
from lrnn_lm.run_dir import TMP_PREFIX
from lrnn_lm.train import train

from .tiny_run import ROOT, SCRIPT_ENV, Recorder, nan_loss_from_step, run_script, tiny_overrides


def config(run_dir, corpus, **fields):
    fields = dict(trainer__val_every=1000, trainer__logger="none") | fields
    return load_config(None, tiny_overrides(run_dir, corpus, **fields))


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, no traceback, and a single `error: ...` line on stderr that holds every fragment."""
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1, done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --- 1. a kill during a checkpoint write -------------------------------------------------------------------------

WRITER = """
import sys, torch
from lrnn_lm.run_dir import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), sys.argv[1]
state = {"w": torch.randn(4_000_000), "step": 0}
for step in range(10**9):
    state["step"] = step
    io.save_checkpoint(state, path)
    print(step, flush=True)
"""


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm, a filesystem other than the run_dir's")
def test_a_kill_at_any_point_of_a_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path):
    """SIGKILL a process that rewrites a 16 MB checkpoint in a loop, at random moments, with TMPDIR on another
    filesystem: the checkpoint always loads, whole. The temporaries the kills leave are cleaned at the next start."""
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    env = os.environ | SCRIPT_ENV | {"TMPDIR": "/dev/shm", "PYTHONPATH": str(ROOT)}
    rng = random.Random(0)
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline()  # one write done
        time.sleep(rng.uniform(0.0, 0.15))  # somewhere inside a later write
        proc.kill()
        proc.wait()
        proc.stdout.close()
        state = torch.load(path, weights_only=True)
        assert state["w"].numel() == 4_000_000
    from lrnn_lm.run_dir import clean_interrupted_writes

    assert len(list(path.parent.iterdir())) > 1  # the kills left partial temporaries
    clean_interrupted_writes(path.parent)  # what the next run does first
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


# --- 2. one run per run_dir ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_on_a_busy_run_dir_is_refused_naming_the_first(tmp_path, corpus):
    run = tmp_path / "run"
    args = tiny_overrides(run, corpus, trainer__max_steps=100000, trainer__val_every=100000, trainer__logger="none")
    first = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=os.environ | SCRIPT_ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run / ".lock").exists() or not (run / ".lock").read_text():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        second = run_script("train.py", *args, "--optim.lr", "0.01")
        assert_one_line_error(second, "trainer.run_dir", f"in use by pid {first.pid}")
    finally:
        first.kill()
        first.wait()


def test_a_finished_run_dir_is_not_overwritten_unless_asked(tmp_path, corpus):
    run = tmp_path / "run"
    train(config(run, corpus, trainer__max_steps=6, trainer__checkpoint_every=3, trainer__val_every=3))
    assert (run / "checkpoints" / "best.ckpt").is_file()
    with pytest.raises(ValueError, match=r"holds checkpoints \(best.ckpt, last.ckpt\).*--trainer.overwrite"):
        train(config(run, corpus, trainer__max_steps=2))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6  # untouched
    summary = train(config(run, corpus, trainer__max_steps=2, trainer__overwrite=True))
    assert summary["steps"] == 2 and summary["evaluated"] == "final weights"  # the old best.ckpt is gone
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]


def test_temporaries_a_kill_left_are_deleted_at_the_next_start(tmp_path, corpus):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    left = [run / f"{TMP_PREFIX}123-summary.json", run / "checkpoints" / f"{TMP_PREFIX}123-last.ckpt"]
    for path in left:
        path.write_bytes(b"half a file")
    train(config(run, corpus, trainer__max_steps=2))
    assert not any(path.exists() for path in left)
    assert not list(run.rglob(f"{TMP_PREFIX}*"))


# --- 3. a copied or moved run directory ----------------------------------------------------------------------


def test_a_copied_or_moved_run_dir_evaluates_its_own_best_checkpoint(tmp_path, corpus):
    ref = tmp_path / "ref"
    train(config(ref, corpus, trainer__max_steps=4, trainer__checkpoint_every=4, trainer__val_every=2))
    shutil.copytree(ref, tmp_path / "copy")
    copied = train(config(tmp_path / "copy", corpus, trainer__max_steps=5, trainer__checkpoint_every=4,
                          trainer__val_every=2, trainer__resume=True))
    assert copied["evaluated"] == str(tmp_path / "copy" / "checkpoints" / "best.ckpt")
    assert (ref / "checkpoints" / "best.ckpt").is_file()  # the original's is left alone
    shutil.move(ref, tmp_path / "moved")
    moved = train(config(tmp_path / "moved", corpus, trainer__max_steps=5, trainer__checkpoint_every=4,
                         trainer__val_every=2, trainer__resume=True))
    assert moved["evaluated"] == str(tmp_path / "moved" / "checkpoints" / "best.ckpt")
    assert json.loads((tmp_path / "moved" / "summary.json").read_text())["steps"] == 5


# --- 4, 5. SIGTERM and Ctrl-C stop at a step boundary, save, and resume exactly -------------------------------


class SignalAt(Recorder):
    """Sends this process `signum` at the end of training batch `at`, after that step's checkpointing: the run stops at
    the next step boundary, one step later."""

    def __init__(self, signum: int, at: int):
        super().__init__()
        self.signum, self.at = signum, at

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
        if trainer.global_step == self.at:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_at_the_step_boundary_saves_and_resumes_exactly(tmp_path, corpus, signum):
    steps = dict(trainer__max_steps=9, trainer__checkpoint_every=100, model__dropout=0.2)
    uninterrupted = Recorder()
    train(config(tmp_path / "a", corpus, **steps), callbacks=[uninterrupted])

    with pytest.raises(RunInterrupted) as stopped:
        train(config(tmp_path / "b", corpus, **steps), callbacks=[SignalAt(signum, 4)])
    assert stopped.value.signum == signum
    assert "stopped at step 5" in str(stopped.value) and "--trainer.resume" in str(stopped.value)
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5  # no loss
    resumed = Recorder()
    train(config(tmp_path / "b", corpus, **steps, trainer__resume=True), callbacks=[resumed])
    assert resumed.batches == uninterrupted.batches[5:]
    assert resumed.params == uninterrupted.params


@pytest.mark.slow
def test_sigterm_exits_143_and_says_how_to_resume(tmp_path, corpus):
    run = tmp_path / "run"
    args = tiny_overrides(run, corpus, trainer__max_steps=100000, trainer__checkpoint_every=100000,
                          trainer__val_every=100000, trainer__logger="csv")
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=os.environ | SCRIPT_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(run.glob("csv/version_0/metrics.csv")):  # training has started
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Resume with: python train.py" in err and "--trainer.resume" in err
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert saved >= 1 and f"(step {saved})" in err


# --- 6. extending a finished run -------------------------------------------------------------------------------


def test_extending_a_finished_run_continues_its_epoch(tmp_path, corpus):
    """A run of 5 steps, continued to 9, sees the batches of an uninterrupted 9-step run: the final last.ckpt holds the
    mid-epoch data position, not a finished epoch. (The weights differ: the cosine schedule follows max_steps.)"""
    uninterrupted = Recorder()
    train(config(tmp_path / "a", corpus, trainer__max_steps=9, trainer__checkpoint_every=100), callbacks=[uninterrupted])
    train(config(tmp_path / "b", corpus, trainer__max_steps=5, trainer__checkpoint_every=100))
    extended = Recorder()
    train(config(tmp_path / "b", corpus, trainer__max_steps=9, trainer__checkpoint_every=100, trainer__resume=True),
          callbacks=[extended])
    assert extended.batches == uninterrupted.batches[5:]


# --- 7. a changed model shape on resume -------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [("model.d_model", 48), ("model.n_layers", 2), ("model.vocab_size", 600)])
def test_resume_with_another_model_shape_is_refused_naming_the_field(tmp_path, corpus, field, value):
    run = tmp_path / "run"
    train(config(run, corpus, trainer__max_steps=2, trainer__checkpoint_every=2))
    with pytest.raises(ValueError, match=rf"^trainer.resume: .*{field}: .* in the checkpoint, {value} now"):
        train(config(run, corpus, trainer__max_steps=4, trainer__resume=True, **{field.replace(".", "__"): value}))


# --- 8. errors a user can fix: one line, exit code 2, no traceback ------------------------------------------------


@pytest.mark.slow
def test_errors_a_user_can_fix_are_one_line(tmp_path, corpus):
    run = tmp_path / "run"
    base = tiny_overrides(run, corpus, trainer__max_steps=2, trainer__checkpoint_every=2)
    cases = [
        (["--data.source", str(tmp_path / "nowhere.jsonl")], ["data.source", "nowhere.jsonl"]),
        (["--data.seq_len", "100000"], ["train split has", "windows"]),
        (["--trainer.resume"], ["trainer.resume: no checkpoint at"]),
        (["--model.d_model", "many"], ["model.d_model: expected int, got 'many'"]),
        (["--optim.lr", ".inf"], ["optim.lr: expected a finite number > 0 within float32's range, got inf"]),
    ]
    for extra, fragments in cases:
        assert_one_line_error(run_script("train.py", *base, *extra), *fragments)

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model:\n  d_model: [1\n")
    assert_one_line_error(run_script("train.py", "--config", str(bad_yaml)), "bad.yaml")

    latin = tmp_path / "latin"
    latin.mkdir()
    (latin / "train.txt").write_bytes("Ça, café crème".encode("latin-1"))
    assert_one_line_error(run_script("train.py", *base, "--data.source", str(latin / "train.txt")),
                          "not UTF-8", "train.txt")

    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.ckpt").write_bytes(b"")
    assert_one_line_error(run_script("train.py", *base, "--trainer.resume"), "last.ckpt", "empty")
    (ckpts / "last.ckpt").write_bytes(b"PK\x03\x04 not really a zip archive" * 100)
    assert_one_line_error(run_script("train.py", *base, "--trainer.resume"), "last.ckpt", "unreadable")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    assert_one_line_error(run_script("-m", "lrnn_lm.evaluate", "--ckpt", str(truncated)), "truncated.ckpt")
    assert_one_line_error(run_script("-m", "lrnn_lm.evaluate", "--ckpt", str(tmp_path / "none.ckpt")),
                          "--ckpt", "no such file")


ARGUMENT_CHECKS = """
import sys
from lrnn_lm import evaluate, generate
for module, argv in ((evaluate, ["--ckpt", sys.argv[1], "--batch-size", "0"]),
                     (generate, ["--ckpt", sys.argv[1], "--temperature", "-1"]),
                     (generate, ["--ckpt", sys.argv[1], "--top-p", "1.5"])):
    try:
        module.main(argv)
    except SystemExit as e:
        assert e.code == 2, e.code
    else:
        raise AssertionError(argv)
assert "lightning" not in sys.modules and "lightning.pytorch" not in sys.modules, "imported before the checks"
print("checked")
"""


def test_evaluate_and_generate_check_their_arguments_before_loading_anything(tmp_path):
    ckpt = tmp_path / "some.ckpt"
    ckpt.write_bytes(b"not opened")
    done = run_script("-c", ARGUMENT_CHECKS, str(ckpt))
    assert done.returncode == 0 and "checked" in done.stdout, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3 and "--batch-size" in errors[0] and "--temperature" in errors[1] and "--top-p" in errors[2]


# --- 9. surprises that are now said --------------------------------------------------------------------------


def test_a_tokenizer_much_smaller_than_the_vocabulary_is_warned_about(tmp_path, corpus):
    from lrnn_lm.data import LMDataModule

    data = config(tmp_path / "run", corpus).data
    data.cache_dir = str(tmp_path / "cache")
    with pytest.warns(UserWarning, match=r"model.vocab_size=50000, but the BPE trained on this train split has only \d+"):
        LMDataModule(data, vocab_size=50000).prepare_data()


def test_a_non_finite_loss_before_any_checkpoint_says_none_was_written(tmp_path, corpus, monkeypatch):
    nan_loss_from_step(monkeypatch, 0)
    with pytest.raises(FloatingPointError, match=r"optimizer steps 1-1 .*No checkpoint was written yet"):
        train(config(tmp_path / "run", corpus, trainer__max_steps=4, trainer__log_every=1))


def test_a_non_finite_validation_loss_stops_the_run_before_its_checkpoints(tmp_path, corpus, monkeypatch):
    """A NaN validation loss during fit stops the run (Lightning's ModelCheckpoint would rank it as inf and go on);
    every checkpoint left holds the state before that validation."""
    from lrnn_lm.lit_module import LitLM

    nll = LitLM._nll

    def nan_from_step_4(self, batch):
        total, n_tokens = nll(self, batch)
        return (total * float("nan") if self.global_step >= 4 else total), n_tokens

    monkeypatch.setattr(LitLM, "_nll", nan_from_step_4)
    run = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="non-finite validation loss .* after optimizer step 4"):
        train(config(run, corpus, trainer__max_steps=8, trainer__val_every=2, trainer__checkpoint_every=4))
    steps = {p.name: torch.load(p, weights_only=True)["global_step"] for p in (run / "checkpoints").glob("*.ckpt")}
    assert steps and max(steps.values()) <= 2, steps


def test_sigterm_during_the_final_evaluation_is_an_interruption(tmp_path, corpus):
    """Lightning ends a SIGTERM outside the training loop with exit 0, which a scheduler takes for a finished run:
    train() makes it a RunInterrupted (exit 143 from the command line) that says what was saved."""
    from lightning.pytorch.trainer.states import TrainerFn

    from lrnn_lm.cli import RunInterrupted

    class SigtermAtFinalValidation(L.Callback):
        def on_validation_start(self, trainer, module):
            if trainer.state.fn == TrainerFn.VALIDATING:
                os.kill(os.getpid(), signal.SIGTERM)

    run = tmp_path / "run"
    with pytest.raises(RunInterrupted, match=r"during the final evaluation.*last\.ckpt holds step 3") as stop:
        train(config(run, corpus, trainer__max_steps=3, trainer__val_every=100), callbacks=[SigtermAtFinalValidation()])
    assert stop.value.signum == signal.SIGTERM and not (run / "summary.json").exists()


def test_resume_auto_starts_afresh_where_a_killed_run_left_only_best_ckpt(tmp_path, corpus, capsys):
    """Validating more often than it checkpoints, a run killed before its first last.ckpt leaves best.ckpt alone:
    nothing to resume from. A requeued `--trainer.resume auto` starts afresh there rather than refusing for ever."""
    run = tmp_path / "run"
    steps = dict(trainer__max_steps=2, trainer__val_every=1, trainer__checkpoint_every=100)
    train(config(run, corpus, **steps))
    (run / "checkpoints" / "last.ckpt").unlink()
    # a finished run whose last.ckpt was deleted (it has a summary): its results are not deleted
    with pytest.raises(ValueError, match="holds checkpoints"):
        train(config(run, corpus, **steps, trainer__resume="auto"))
    (run / "summary.json").unlink()  # now as a kill between the first validation and the first last.ckpt
    # another run's best.ckpt (other settings): not deleted either
    with pytest.raises(ValueError, match="holds checkpoints"):
        train(config(run, corpus, **steps, trainer__resume="auto", optim__lr=0.5))
    assert [p.name for p in (run / "checkpoints").glob("*.ckpt")] == ["best.ckpt"]
    capsys.readouterr()
    summary = train(config(run, corpus, **steps, trainer__resume="auto"))
    assert summary["steps"] == 2 and "starting afresh (removing best.ckpt)" in capsys.readouterr().err


def test_a_signal_adds_no_validation(tmp_path, corpus):
    """Lightning validates wherever fit stops early: after a signal at a step that does not validate, that
    validation is skipped, so a stopped and resumed run validates the steps an uninterrupted one does, and its
    best.ckpt holds the same step."""
    from lightning.pytorch.trainer.states import TrainerFn

    class Validations(L.Callback):
        def __init__(self):
            self.steps = []

        def on_validation_end(self, trainer, module):
            if trainer.state.fn == TrainerFn.FITTING:
                self.steps.append(trainer.global_step)

    steps = dict(trainer__max_steps=8, trainer__val_every=4, trainer__checkpoint_every=100)
    uninterrupted = Validations()
    train(config(tmp_path / "a", corpus, **steps), callbacks=[uninterrupted])
    stopped, resumed = Validations(), Validations()
    with pytest.raises(RunInterrupted):
        train(config(tmp_path / "b", corpus, **steps), callbacks=[SignalAt(signal.SIGTERM, 4), stopped])
    train(config(tmp_path / "b", corpus, **steps, trainer__resume=True), callbacks=[resumed])
    assert uninterrupted.steps == [4, 8] and stopped.steps + resumed.steps == [4, 8]
    best = [torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["global_step"]
            for run in (tmp_path / "a", tmp_path / "b")]
    assert best[0] == best[1]


@pytest.mark.parametrize("field, value", [("accelerator", "tpu"), ("devices", "abc"), ("precision", "bf17"),
                                          ("strategy", "nonsense")])
def test_settings_lightning_refuses_are_named(tmp_path, corpus, field, value):
    """The Trainer's arguments that only Lightning can judge: its refusal is a ValueError that names the config
    fields (a traceback from inside Lightning, before)."""
    with pytest.raises(ValueError, match=rf"^trainer\.accelerator / devices .*{value!r}.*: Lightning refused them"):
        train(config(tmp_path / "run", corpus, **{f"trainer__{field}": value}))


def test_a_lock_left_to_a_dead_runs_forked_workers_is_waited_for(tmp_path):
    """A run killed while its DataLoader workers live on: they share its lock (forked) until they notice, within
    seconds. A requeued run waits for them rather than refusing a holder that is dead."""
    from lrnn_lm.run_dir import RunDirLock

    holder = textwrap.dedent(f"""
        import os, socket, sys, time
        from lrnn_lm.run_dir import RunDirLock
        lock = RunDirLock(__import__("pathlib").Path({str(tmp_path)!r}))
        if os.fork() == 0:  # the worker: holds the shared lock a while longer, then exits
            os.close(1), os.close(2)  # not the caller's pipes: it would wait for them
            time.sleep(1.5)
            os._exit(0)
        print("locked", flush=True)
        os._exit(0)  # the run, killed: its pid is dead now, its worker is not
    """)
    proc = subprocess.run([sys.executable, "-c", holder], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "locked", proc.stderr
    started = time.monotonic()
    RunDirLock(tmp_path).release()
    assert 0.5 < time.monotonic() - started < RunDirLock.DEAD_HOLDER_WAIT_S


def test_a_second_ctrl_c_stops_at_once_as_an_interrupt(tmp_path, corpus):
    """The first Ctrl-C stops at the next step boundary; a second stops at once, as a KeyboardInterrupt (exit 130
    from the command line), not the exit 1 Lightning makes of it, which is a failed run's code."""

    class TwoCtrlC(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "run", corpus, trainer__max_steps=8), callbacks=[TwoCtrlC()])


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU where there is none")
def test_a_gpu_asked_for_where_there_is_none_is_named(tmp_path, corpus):
    with pytest.raises(ValueError, match="^trainer.accelerator: expected 'auto' or 'cpu' where torch sees no CUDA"):
        train(config(tmp_path / "run", corpus, trainer__accelerator="gpu"))


def test_a_signal_at_a_step_that_validates_saves_after_the_validation(tmp_path, corpus):
    """Stopped at a step that validates, last.ckpt is written after that validation (as at any such step): a
    checkpoint written before it would resume as if it had run, and hold the state a non-finite validation
    loss would then reject."""
    from lightning.pytorch.trainer.states import TrainerFn

    class Order(L.Callback):
        def __init__(self):
            self.events = []

        def on_validation_start(self, trainer, module):
            if trainer.state.fn == TrainerFn.FITTING:
                self.events.append(("validating", trainer.global_step))

        def on_save_checkpoint(self, trainer, module, checkpoint):
            self.events.append(("saved", trainer.global_step))

    order = Order()
    with pytest.raises(RunInterrupted):  # signalled after step 3: stops at step 4, which validates
        train(config(tmp_path / "run", corpus, trainer__max_steps=8, trainer__val_every=4,
                     trainer__checkpoint_every=100), callbacks=[SignalAt(signal.SIGTERM, 3), order])
    assert ("validating", 4) in order.events and ("saved", 4) in order.events
    assert ("saved", 4) not in order.events[:order.events.index(("validating", 4))]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
