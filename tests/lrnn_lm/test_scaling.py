"""The scaling benchmark's plumbing on the CPU: it runs train.py, reads the run's throughput and reports."""

from __future__ import annotations

import json
import shutil

from .tiny_run import run_script, tiny_overrides, write_local_corpus

SET_BY_THE_SCRIPT = {"--trainer.run_dir", "--trainer.logger", "--trainer.log_every"}


def test_scaling_reports_tokens_per_second_per_device(tmp_path):
    corpus = write_local_corpus(tmp_path / "corpus")
    pairs = tiny_overrides(tmp_path / "unused", corpus)
    extra = [arg for k, v in zip(pairs[::2], pairs[1::2]) if k not in SET_BY_THE_SCRIPT for arg in (k, v)]
    out_dir = tmp_path / "out"
    # windows of 20 steps: 80 steps give 4, the first dropped
    done = run_script("-m", "lrnn_lm.benchmarks.scaling", "--config", "tiny.yaml", "--gpus", "1", "--steps", "80",
                      "--out", str(out_dir), "--runs", str(tmp_path / "runs"), *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out_dir / "scaling.json").read_text())
    (run,) = report["runs"]
    assert run["gpus"] == 1 and run["steps"] == 80 and run["windows"] == 3
    assert run["tokens_per_s_per_gpu"] > 0 and run["tokens_per_s"] == run["tokens_per_s_per_gpu"]
    assert report["info"]["config"] == "tiny.yaml" and "| 1 |" in done.stdout

    # --measure-only re-reads the finished run: the same figures, nothing trained
    again = run_script("-m", "lrnn_lm.benchmarks.scaling", "--config", "tiny.yaml", "--gpus", "1", "--steps", "80",
                       "--out", str(tmp_path / "again"), "--runs", str(tmp_path / "runs"), "--measure-only", *extra)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "again" / "scaling.json").read_text())["runs"] == report["runs"]
    assert len(list((tmp_path / "runs" / "1gpu" / "csv").glob("version_*"))) == 1

    # the efficiency of a run appended to the report: its per-GPU rate over the 1-GPU run's. A "2-GPU" run made
    # from the 1-GPU run with the same total rate must come out at 0.5.
    shutil.copytree(tmp_path / "runs" / "1gpu", tmp_path / "runs" / "2gpu")
    both = run_script("-m", "lrnn_lm.benchmarks.scaling", "--config", "tiny.yaml", "--gpus", "2", "--steps", "80",
                      "--out", str(out_dir), "--runs", str(tmp_path / "runs"), "--measure-only", "--append", *extra)
    assert both.returncode == 0, both.stderr[-3000:]
    one, two = json.loads((out_dir / "scaling.json").read_text())["runs"]
    assert (one["gpus"], two["gpus"]) == (1, 2) and one["scaling_efficiency"] == 1.0
    assert abs(two["scaling_efficiency"] - 0.5) < 1e-12 and abs(two["tokens_per_s"] - one["tokens_per_s"]) < 1e-6
