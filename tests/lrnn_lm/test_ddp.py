"""Data-parallel training on the CPU: 2 processes (gloo), then a resume with 2 processes.

Each rank records the digests of its batches and, at the end, of its weights (tiny_run.Recorder).
"""

import json
import math

import pytest
import torch

from .tiny_run import run_script, tiny_overrides, write_local_corpus


def run_ddp(tmp_path, records, *extra):
    records.mkdir()
    args = tiny_overrides(tmp_path / "run", tmp_path / "corpus", trainer__devices=2, trainer__strategy="ddp",
                          model__scan="reference", trainer__checkpoint_every=3, trainer__val_every=3)
    done = run_script("tests/lrnn_lm/tiny_run.py", str(records), *args, *extra, timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1)], done


@pytest.mark.slow
def test_two_ranks_see_different_batches_and_keep_equal_weights(tmp_path):
    write_local_corpus(tmp_path / "corpus")
    ranks, done = run_ddp(tmp_path, tmp_path / "first", "--trainer.max_steps", "6")
    batches = [{digest for _, digest in rank["batches"]} for rank in ranks]
    assert [len(b) for b in batches] == [6, 6] and not batches[0] & batches[1]
    assert ranks[0]["params"] == ranks[1]["params"]
    assert all(math.isfinite(loss) for rank in ranks for loss in rank["losses"])
    assert done.stdout.count("bits/byte") == 2  # the summary, printed by rank 0 only
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6

    resumed, _ = run_ddp(tmp_path, tmp_path / "resumed", "--trainer.max_steps", "9", "--trainer.resume")
    assert [[step for step, _ in rank["batches"]] for rank in resumed] == [[7, 8, 9], [7, 8, 9]]
    assert resumed[0]["params"] == resumed[1]["params"]
    assert not {d for _, d in resumed[0]["batches"]} & {d for _, d in resumed[1]["batches"]}


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_that_step(tmp_path, monkeypatch):
    # Rank 1 alone counts its 4th optimizer step (from global step 3) as non-finite: the guard's check is collective,
    # so both ranks stop at the check after that step (every step here: log_every 1), nothing hangs, and last.ckpt
    # is step 3's good state.
    write_local_corpus(tmp_path / "corpus")
    monkeypatch.setenv("TINY_RUN_NAN_AT", "1:3")
    args = tiny_overrides(tmp_path / "run", tmp_path / "corpus", trainer__devices=2, trainer__strategy="ddp",
                          model__scan="reference", trainer__checkpoint_every=3, trainer__val_every=100,
                          trainer__max_steps=9)
    (tmp_path / "records").mkdir()
    done = run_script("tests/lrnn_lm/tiny_run.py", str(tmp_path / "records"), *args, timeout=180)
    assert done.returncode != 0
    for r in (0, 1):  # rank 0's own steps were fine
        assert (tmp_path / "records" / f"rank{r}.stopped").read_text() == "4", done.stderr[-4000:]
    assert "non-finite training loss or gradient norm in optimizer steps 4-4 (counted 1 times, on 1 of 2 ranks)" \
        in done.stderr, done.stderr[-4000:]
    assert done.returncode == 1 and "The last good checkpoint is" in done.stderr
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(w).all() for w in ckpt["state_dict"].values())
