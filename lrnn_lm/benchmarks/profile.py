"""Where a training step's time goes: torch.profiler around the loop benchmark's bare step, or around train.py's.

    python -m lrnn_lm.benchmarks.profile --config small.yaml [--steps 20] [--out DIR] [--section.field value ...]
    python -m lrnn_lm.benchmarks.profile --config small.yaml --train-py [...]

The step is `loop.bare_step`'s (the preset's model compiled as train.py compiles it, bf16 autocast, fused AdamW,
random tokens). After --warmup steps (compilation), --steps steps are timed without the profiler, then again under
it. Prints the step's wall time, the GPU time its kernels take (the sum of their device times), how busy that keeps
the GPU, kernels per step and the largest kernels and host-side operations: a step whose GPU time is far below its
wall time waits on the host (launches, syncs), one near it on the GPU. The profiler slows the host, so its wall time
is only for comparing host costs. Writes OUT/profile_<preset>.json and the profiler's table, OUT/profile_<preset>.txt.

--train-py profiles `lrnn_lm.train.train` itself (Lightning's loop, callbacks, clipping, the guard) on the preset's
data, validation and logging off, the same way: after --warmup optimizer steps, --steps are timed, then --steps more
are profiled (files OUT/profile_<preset>_train_py.*). Both modes also count, per step, the host calls that wait for
the GPU or for a copy (`host_waits`): one of them in every step keeps the GPU idle while the host prepares the next.
--train-py also counts them separately in the log steps (every trainer.log_every, which read the GPU by design)
and in the other steps (`host_waits_by_step`), since an average over both cannot tell a wait in every step from a
few dozen at each log step. --stacks records Python stacks too, and names the callers of each wait and each read
of a tensor into host memory (`host_waits_by_caller`: per caller, how often a step).
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

import lightning as L
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from kernels.benchmarks.common import DEVICE, run_info, sync

from ..config import load_config
from .loop import bare_step

HOST_WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
              "cudaHostAlloc", "cudaFreeHost", "cudaFree")
"""CUDA runtime calls that block the host until the GPU (or a copy) is done: a `.item()` of a device tensor is a
cudaMemcpyAsync and a cudaStreamSynchronize (aten::_local_scalar_dense, its op, also counts host tensors' items)."""

TOP = 15
"""Kernels and host-side operations listed."""


def _steps_wall_s(step, steps: int) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - t0


def summarize(events, steps: int, wall_s: float, profiled_wall_s: float) -> dict:
    """Per-step figures from a profile's key_averages() over `steps` steps."""
    # kernels and copies only: a range (the optimizer's `Optimizer.step#...`, this script's step ranges) is also
    # recorded on the GPU, as an annotation spanning what it holds, and would count that time twice
    device = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA and e.count
              and not getattr(e, "is_user_annotation", False) and not e.key.startswith("Optimizer.")]
    host = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    gpu_ms = sum(e.self_device_time_total for e in device) / 1e3 / steps

    def per_step(us: float) -> float:
        return round(us / 1e3 / steps, 4)

    return {
        "wall_ms": round(wall_s / steps * 1e3, 3),
        "profiled_wall_ms": round(profiled_wall_s / steps * 1e3, 3),
        "gpu_ms": round(gpu_ms, 3),
        "gpu_busy": round(gpu_ms / (wall_s / steps * 1e3), 3),
        "kernels_per_step": round(sum(e.count for e in device) / steps, 1),
        "top_kernels": [{"name": e.key, "ms_per_step": per_step(e.self_device_time_total), "per_step": e.count / steps}
                        for e in sorted(device, key=lambda e: -e.self_device_time_total)[:TOP]],
        "top_host": [{"name": e.key, "ms_per_step": per_step(e.self_cpu_time_total), "per_step": e.count / steps}
                     for e in sorted(host, key=lambda e: -e.self_cpu_time_total)[:TOP]],
        "host_waits": {e.key: e.count / steps for e in host if e.key in HOST_WAITS},
    }


LOG_STEP, OTHER_STEP = "train.py log step", "train.py step"
"""The profiler ranges `ProfileSteps` puts around each optimizer step: one whose metrics are logged and checked
(every trainer.log_every steps), and any other."""


class ProfileSteps(L.Callback):
    """Times optimizer steps [warmup, warmup + steps), then profiles the next `steps`, each in a range named
    LOG_STEP or OTHER_STEP. A step runs from the start of its first batch to the start of the next step's: the
    module's hooks after the optimizer (the log step's check and reads) and the next batch's loading count in it.
    train.py must run one batch past warmup + 2 · steps, where the profile ends."""

    def __init__(self, warmup: int, steps: int, activities, log_every: int, with_stack: bool = False):
        self.warmup, self.steps, self.activities, self.log_every = warmup, steps, activities, log_every
        self.with_stack = with_stack
        self.t0 = self.wall = self.profiled_wall = None
        self.prof = self._range = None
        self._seen_step: int | None = None

    def on_train_batch_start(self, trainer, *args) -> None:
        step = trainer.global_step  # optimizer steps done: this batch belongs to step + 1
        if step == self._seen_step:
            return  # another batch of the same optimizer step (gradient accumulation)
        self._seen_step = step
        if self._range is not None:
            self._range.__exit__(None, None, None)
            self._range = None
        if step == self.warmup:
            sync()
            self.t0 = time.perf_counter()
        elif step == self.warmup + self.steps:
            sync()
            self.wall = time.perf_counter() - self.t0
            self.prof = profile(activities=self.activities, with_stack=self.with_stack)
            self.prof.__enter__()
            self.t0 = time.perf_counter()
        elif step == self.warmup + 2 * self.steps and self.prof is not None:
            sync()
            self.profiled_wall = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)
            return
        if self.prof is not None and self.profiled_wall is None:
            self._range = record_function(LOG_STEP if (step + 1) % self.log_every == 0 else OTHER_STEP)
            self._range.__enter__()


def host_waits_by_step(events, names=HOST_WAITS) -> dict:
    """The host calls that wait (`names`), counted per LOG_STEP and per OTHER_STEP range of a profile's events ->
    {"log_steps": n, "per_log_step": {name: count}, "other_steps": n, "per_other_step": {...}, "outside_steps":
    {name: total count}}. A call counts in the range during which it starts: by time, not by the profiler's
    parent links, which need a CUDA runtime record and the range to be filed under the same thread."""
    ranges = sorted((e for e in events if e.name in (LOG_STEP, OTHER_STEP)), key=lambda e: e.time_range.start)
    starts = [r.time_range.start for r in ranges]
    counts = {LOG_STEP: Counter(), OTHER_STEP: Counter(), None: Counter()}
    for e in events:
        if e.name not in names:
            continue
        i = bisect.bisect_right(starts, e.time_range.start) - 1
        inside = i >= 0 and e.time_range.start < ranges[i].time_range.end
        counts[ranges[i].name if inside else None][e.name] += 1
    n = Counter(r.name for r in ranges)

    def per(kind):
        return {k: round(v / n[kind], 2) for k, v in sorted(counts[kind].items())} if n[kind] else {}

    return {"log_steps": n[LOG_STEP], "per_log_step": per(LOG_STEP), "other_steps": n[OTHER_STEP],
            "per_other_step": per(OTHER_STEP), "outside_steps": dict(sorted(counts[None].items()))}


READS = ("aten::_local_scalar_dense",)
"""The op of `.item()`, `float(t)`, `bool(t)` (also of host tensors). A `.cpu()` or `.tolist()` of a device tensor
shows as the cudaStreamSynchronize that its copy waits with."""
_PYTHON_FRAME = re.compile(r"\.py\(\d+\): ")


def host_waits_by_caller(events, steps: int, names=HOST_WAITS + READS, depth: int = 8) -> list[dict]:
    """For a profile recorded with_stack: each host wait or read (`names`) by the Python frames that called it,
    innermost first (`depth` of them, the profiler's own left out) -> [{"op", "per_step", "stack"}], commonest
    first. A CUDA runtime call's own caller is the aten op it serves (a cudaStreamSynchronize under
    aten::_local_scalar_dense is an `.item()`), which counts as the first frame."""
    counts: Counter = Counter()
    for e in events:
        if e.name not in names:
            continue
        frames, p = [], e.cpu_parent
        while p is not None and len(frames) < depth:
            if (_PYTHON_FRAME.search(p.name) and "torch/profiler" not in p.name) or (not frames and "::" in p.name):
                frames.append(p.name)
            p = p.cpu_parent
        counts[(e.name, tuple(frames))] += 1
    return [{"op": op, "per_step": round(n / steps, 2), "stack": list(stack)}
            for (op, stack), n in counts.most_common()]


def train_py_profiled(config: str, extra: list[str], steps: int, warmup: int, activities, with_stack: bool = False):
    """Runs train.py's `train` for warmup + 2 · steps optimizer steps and one more, where the profile ends
    (validation, the logger and checkpoints off; metrics are still logged and checked every trainer.log_every
    steps) -> (the profiler, wall seconds of `steps` unprofiled steps, of `steps` profiled ones)."""
    from ..train import train

    total = warmup + 2 * steps + 1
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(config, [*extra, "--trainer.max_steps", str(total), "--trainer.val_every", str(100 * total),
                                   "--trainer.checkpoint_every", str(100 * total), "--trainer.logger", "none",
                                   "--trainer.run_dir", run_dir])
        probe = ProfileSteps(warmup, steps, activities, cfg.trainer.log_every, with_stack)
        train(cfg, callbacks=[probe])
    return probe.prof, probe.wall, probe.profiled_wall


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="small.yaml")
    p.add_argument("--steps", type=int, default=20, help="steps timed, and steps profiled")
    p.add_argument("--warmup", type=int, default=15, help="steps before timing (compilation)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--train-py", action="store_true", help="profile train.py's training loop, not the bare step")
    p.add_argument("--stacks", action="store_true", help="record Python stacks, and name the callers of the host "
                   "calls that wait and of the reads into host memory (slows the profiled steps further)")
    args, extra = p.parse_known_args()
    cfg = load_config(args.config, extra)
    info = run_info() | {"config": args.config, "overrides": extra, "batch": [cfg.data.batch_size, cfg.data.seq_len],
                         "what": "train.py" if args.train_py else "bare step"}
    print(json.dumps(info), flush=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    if args.train_py:
        prof, wall, profiled_wall = train_py_profiled(args.config, extra, args.steps, args.warmup, activities,
                                                      args.stacks)
    else:
        step, _ = bare_step(cfg)
        for _ in range(args.warmup):
            step()
        wall = _steps_wall_s(step, args.steps)
        with profile(activities=activities, with_stack=args.stacks) as prof:
            profiled_wall = _steps_wall_s(step, args.steps)
    events = prof.key_averages()
    report = summarize(events, args.steps, wall, profiled_wall)
    if args.train_py:
        report["host_waits_by_step"] = host_waits_by_step(prof.events())
    if args.stacks:
        report["host_waits_by_caller"] = host_waits_by_caller(prof.events(), args.steps)
    print(f"wall {report['wall_ms']:.2f} ms/step, GPU {report['gpu_ms']:.2f} ms/step (busy {report['gpu_busy']:.2f}), "
          f"{report['kernels_per_step']:.0f} kernels/step")
    for title, key in (("kernels", "top_kernels"), ("host", "top_host")):
        print(f"-- {title}, ms per step")
        for r in report[key]:
            print(f"  {r['ms_per_step']:8.3f}  {r['per_step']:6.1f}x  {r['name'][:100]}")
    print("-- host calls that wait, per step: " + (", ".join(f"{k} {v:.2f}" for k, v in report["host_waits"].items())
                                                   or "none"))
    if args.train_py:
        by_step = report["host_waits_by_step"]
        for kind in ("log", "other"):
            print(f"   per {kind} step ({by_step[kind + '_steps']} steps): "
                  + (", ".join(f"{k} {v:.2f}" for k, v in by_step[f"per_{kind}_step"].items()) or "none"))
        print("   outside the steps (in all): "
              + (", ".join(f"{k} {v}" for k, v in by_step["outside_steps"].items()) or "none"))
    if args.stacks:
        print("-- host waits and reads by caller, per step (innermost frame first)")
        for r in report["host_waits_by_caller"][:TOP]:
            print(f"  {r['per_step']:6.2f}x  {r['op']}  <- " + "  <- ".join(r["stack"][:5]))
    args.out.mkdir(parents=True, exist_ok=True)
    name = Path(args.config).stem + ("_train_py" if args.train_py else "")
    (args.out / f"profile_{name}.json").write_text(json.dumps({"info": info} | report, indent=2) + "\n")
    sort = "self_cuda_time_total" if DEVICE == "cuda" else "self_cpu_time_total"
    (args.out / f"profile_{name}.txt").write_text(events.table(sort_by=sort, row_limit=60) + "\n")


if __name__ == "__main__":
    main()
