"""The model-level benchmarks run end to end on the CPU at tiny sizes (`--smoke`), and write their tables."""

import json
import math
import sys

import pytest
import torch

from lrnn_lm.benchmarks import generation, peers

from .tiny_run import tiny_overrides


def run_main(module, monkeypatch, *argv) -> None:
    monkeypatch.setattr(sys, "argv", [module.__name__, *argv])
    module.main()


def test_peers_smoke_times_every_model_it_can_run(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    run_main(peers, monkeypatch, "--smoke", "--out", str(tmp_path))
    report = json.loads((tmp_path / "peers.json").read_text())
    names = {r["model"] for r in report["rows"]}
    assert {"lrnn-lm", "lrnn-lm, activation checkpointing", "lrnn-lm attention baseline"} <= names
    assert all(r["tokens_per_s"] > 0 for r in report["rows"])
    assert (tmp_path / "peers.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "peers.csv").exists()


def test_peers_reports_a_model_that_runs_out_of_memory_and_still_writes_its_table(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")

    def out_of_memory(tokens):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setitem(peers.MODELS, "lrnn-lm attention baseline",
                        lambda smoke, graphs: peers.lrnn_model("attention", smoke=smoke)._replace(loss=out_of_memory))
    run_main(peers, monkeypatch, "--smoke", "--models", "lrnn-lm", "lrnn-lm attention baseline", "--out", str(tmp_path))
    rows = {r["model"]: r for r in json.loads((tmp_path / "peers.json").read_text())["rows"]}
    assert rows["lrnn-lm attention baseline"]["oom"] and rows["lrnn-lm"]["tokens_per_s"] > 0
    assert (tmp_path / "peers.png").exists()


def test_generation_smoke_reports_each_batch(tmp_path, monkeypatch):
    run_main(generation, monkeypatch, "--smoke", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "generation.json").read_text())["rows"]
    assert [(r["batch"], r["decoder"]) for r in rows] == [(1, "eager"), (2, "eager")]
    # decoding alone is a difference of two timed calls: NaN, never a negative or absurd figure, where noise wins
    assert all(r["tokens_per_s"] > 0 and r["seconds"] > 0 and r["seconds_half_tokens"] > 0
               and (math.isnan(r["decode_tokens_per_s"]) or r["ms_per_step"] > 0)
               and r["weights_read_bound_tokens_per_s"] > 0 for r in rows)
    assert (tmp_path / "generation.png").stat().st_size > 0


def test_loop_reads_a_finished_runs_summary(tmp_path, monkeypatch):
    """--train-summary compares the bare step with the figure a finished train.py run wrote, as JSON and CSV; a
    summary of steps of another size or another CUDA-graph setting is refused."""
    from lrnn_lm.benchmarks import loop
    from lrnn_lm.config import load_config

    overrides = ["--data.batch_size", "2", "--model.d_model", "32"]
    tokens_per_step = 2 * load_config("tiny.yaml", overrides).data.seq_len
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"tokens_per_s": 1000, "wall_time_s": 1.0, "steps": 5,
                                   "tokens_seen": 5 * tokens_per_step, "cuda_graphs": False}))
    run_main(loop, monkeypatch, "--config", "tiny.yaml", "--steps", "2", "--warmup", "1", "--out", str(tmp_path),
             "--train-summary", str(summary), *overrides)
    report = json.loads((tmp_path / "loop_tiny.json").read_text())
    assert report["train_py"]["tokens_per_s"] == 1000
    assert report["ratio"] == pytest.approx(1000 / report["bare_step"]["tokens_per_s"])
    assert (tmp_path / "loop_tiny.csv").read_text().count("\n") == 3  # header, bare step, train.py

    summary.write_text(json.dumps({"tokens_per_s": 1000, "wall_time_s": 1.0, "steps": 5,
                                   "tokens_seen": 10 * tokens_per_step, "cuda_graphs": False}))
    with pytest.raises(ValueError, match="--train-summary"):
        run_main(loop, monkeypatch, "--config", "tiny.yaml", "--steps", "2", "--warmup", "1", "--out", str(tmp_path),
                 "--train-summary", str(summary), *overrides)


def test_the_bare_step_clips_and_steps_as_training_does(monkeypatch):
    """The bare step computes what train.py's step computes besides the loss: the clipped gradient norm once a step,
    and AdamW over train.py's two parameter groups (weight decay on the matrices only)."""
    from lrnn_lm.benchmarks import loop
    from lrnn_lm.config import load_config

    clips, optimizers = [], []
    real_clip, real_adamw = torch.nn.utils.clip_grad_norm_, torch.optim.AdamW
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: clips.append(a[1]) or real_clip(*a, **k))
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **k: optimizers.append(real_adamw(*a, **k)) or optimizers[-1])
    cfg = load_config("tiny.yaml", ["--data.batch_size", "2", "--data.seq_len", "16", "--model.d_model", "32"])
    step, _ = loop.bare_step(cfg, cuda_graphs=False)
    step()
    step()
    assert clips == [cfg.optim.grad_clip] * 2
    assert [g["weight_decay"] for g in optimizers[0].param_groups] == [cfg.optim.weight_decay, 0.0]


def test_profile_reports_where_a_steps_time_goes(tmp_path, monkeypatch):
    """The profile of the loop benchmark's bare step: per-step wall time, kernels and host operations, as JSON and
    the profiler's table."""
    from lrnn_lm.benchmarks import profile

    run_main(profile, monkeypatch, "--config", "tiny.yaml", "--steps", "2", "--warmup", "1", "--out", str(tmp_path),
             "--data.batch_size", "2", "--model.d_model", "32")
    report = json.loads((tmp_path / "profile_tiny.json").read_text())
    assert report["wall_ms"] > 0 and report["profiled_wall_ms"] > 0
    assert {"name", "ms_per_step", "per_step"} <= set(report["top_host"][0])
    assert any("aten::" in r["name"] for r in report["top_host"])
    assert "Self CPU" in (tmp_path / "profile_tiny.txt").read_text()


def test_profile_of_train_py_times_and_profiles_its_steps(tmp_path, monkeypatch, corpus):
    """--train-py profiles Lightning's loop itself (train.py's `train`), and counts the host calls that wait."""
    from lrnn_lm.benchmarks import profile

    run_main(profile, monkeypatch, "--config", "tiny.yaml", "--train-py", "--steps", "2", "--warmup", "1",
             "--out", str(tmp_path), *tiny_overrides(tmp_path / "run", corpus))
    report = json.loads((tmp_path / "profile_tiny_train_py.json").read_text())
    assert report["info"]["what"] == "train.py"
    assert report["wall_ms"] > 0 and report["profiled_wall_ms"] > 0
    assert any("optimizer_step" in r["name"] or "aten::" in r["name"] for r in report["top_host"])
    assert isinstance(report["host_waits"], dict)
    assert {"log_steps", "per_log_step", "other_steps", "per_other_step"} <= set(report["host_waits_by_step"])


def test_profile_of_train_py_counts_host_reads_per_log_step_and_other_step(tmp_path, corpus):
    """Each profiled step is a range of its own, and a host call counts in its step's: on the CPU, where no CUDA call
    waits, the tensor reads (`.item()`) stand in. A log step (every 2nd here) reads its logged values on top of
    what every step reads (the progress bar's value)."""
    from lrnn_lm.benchmarks import profile

    prof, _, _ = profile.train_py_profiled("tiny.yaml", tiny_overrides(tmp_path / "run", corpus, trainer__log_every=2),
                                           steps=4, warmup=1, activities=[profile.ProfilerActivity.CPU])
    by_step = profile.host_waits_by_step(prof.events(), names={"aten::_local_scalar_dense"})
    assert (by_step["log_steps"], by_step["other_steps"]) == (2, 2)
    reads = [by_step[k].get("aten::_local_scalar_dense", 0) for k in ("per_log_step", "per_other_step")]
    assert reads[0] > reads[1] > 0


def test_profile_stacks_name_the_callers_of_host_reads(tmp_path, corpus):
    """--stacks: each read into host memory is filed under the Python frames that made it. On the CPU, where no CUDA
    call waits, the `.item()`s of Lightning's progress bar (at the end of every batch) stand in."""
    from lrnn_lm.benchmarks import profile

    prof, _, _ = profile.train_py_profiled("tiny.yaml", tiny_overrides(tmp_path / "run", corpus, trainer__log_every=2),
                                           steps=4, warmup=1, activities=[profile.ProfilerActivity.CPU],
                                           with_stack=True)
    callers = profile.host_waits_by_caller(prof.events(), steps=4)
    assert callers and all(c["per_step"] > 0 and c["op"] in profile.HOST_WAITS + profile.READS for c in callers)
    progress_bar = [c for c in callers if any("convert_tensors_to_scalars" in f for f in c["stack"])]
    assert progress_bar and all(c["stack"][0] == "aten::item" for c in progress_bar), callers[:5]
    assert sum(c["per_step"] for c in progress_bar) >= 1  # at least one value read at the end of every batch


def test_profile_gpu_time_counts_kernels_not_ranges():
    """A range recorded on the GPU (the optimizer's, the step ranges of --train-py) spans the kernels it holds: the
    step's GPU time sums kernels only."""
    from types import SimpleNamespace

    from lrnn_lm.benchmarks import profile

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def event(key, device, us, annotation=False):
        return SimpleNamespace(key=key, device_type=device, count=1, self_device_time_total=us,
                               self_cpu_time_total=us, is_user_annotation=annotation)

    events = [event("a_kernel", cuda, 3000), event(profile.OTHER_STEP, cuda, 4000, annotation=True),
              event("Optimizer.step#AdamW.step", cuda, 4000, annotation=True), event("aten::mm", cpu, 500)]
    report = profile.summarize(events, steps=2, wall_s=0.004, profiled_wall_s=0.005)
    assert report["gpu_ms"] == 1.5 and report["kernels_per_step"] == 0.5
