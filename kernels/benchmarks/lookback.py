"""The decoupled look-back scan (kernels/lookback_scan.py, NOTES.md attempts 12, 17-21) against the committed
associative scan: agreement, run-to-run reproducibility, and the forward and backward launchers' time
(replayed from a CUDA graph; the look-back's workspace fill included) as a fraction of the copy bandwidth
measured in the same run, at the efficiency shapes.

Variants: "committed" (associative_scan's launchers and kernels/tiles.json: its chunked passes even where
`linear_scan` runs these look-back passes), "look-back" at each tile, and "no look-back" at each tile: the same
kernels with step 2 skipped (wrong results), which was what the one-tile-per-program structure costs without
its look-back. Under a register cap (MAXNREG, the 2-byte tiles since NOTES #20) it no longer is: without the
look-back the compiler schedules the kernel otherwise, and it spills (CPU-side sm_90 compile: 344 and 150 spill
instructions forward and backward, none with the look-back). A tile is "default" (`lookback_config`'s tiles
for each pass and element size) or the forward's (ROWS, WARPS, BLOCK_D, VEC, WINDOW[, MAXNREG]), optionally
followed by "/" and the backward's (else the default backward tile). Each variant runs in its own process
with a timeout, so that a look-back that never ends shows as missing rows and a message, not a stuck run.

    python -m kernels.benchmarks.lookback [--out kernels/benchmarks/results]
                                          [--tiles default 64,4,64,2,1,168/32,4,64,2,1 ...]
                                          [--shapes 1,131072,512,bfloat16 ...]
                                          [--variants look-back] [--smoke]
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
from pathlib import Path

import torch

from .common import bench_graph_ms, copy_bandwidth_gbs, print_table, run_info, scan_bytes, scan_inputs, write_csv

SHAPES = [  # (B, T, D, dtype): the efficiency benchmark's, fp32 at the first, and a short one
    (8, 2048, 2048, "bfloat16"),
    (4, 16384, 5120, "float16"),
    (16, 1024, 1024, "bfloat16"),
    (1, 131072, 512, "bfloat16"),
    (2, 65536, 512, "bfloat16"),
    (1, 131072, 512, "float32"),
    (8, 2048, 2048, "float32"),
    (4, 256, 5120, "float16"),
]
SMOKE_SHAPES = [(2, 40, 24, "bfloat16"), (1, 70, 8, "float32")]  # --smoke: CPU with TRITON_INTERPRET=1 works
TILES = ["default"]  # or forward (and backward): ROWS, WARPS, BLOCK_D, VEC, WINDOW[, MAXNREG]
VARIANTS = ["look-back", "no look-back"]  # per tile; "committed" runs once
REPEATS = 20  # forward runs compared bit for bit with the first


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def measure(variant: str, tile: dict | None, copy_gbs: float, shapes: list) -> list[dict]:
    """One variant at every shape -> rows of ms and fractions of `copy_gbs` (forward, backward, both)."""
    from kernels import associative_scan as committed
    from kernels import lookback_scan as lookback

    rows = []
    for B, T, D, dtype_name in shapes:
        dtype = getattr(torch, dtype_name)
        x, a = scan_inputs(B, T, D, dtype)
        dh = torch.randn_like(x)
        if variant == "committed":
            # configs given: the associative passes even where linear_scan looks back
            config = committed.tile_config(dtype)
            fwd = lambda: committed.associative_scan_fwd(x, a, None, False, config=config)  # noqa: E731
            bwd_config = committed.tile_config(dtype, backward=True)
            bwd_fn, opts = functools.partial(committed.associative_scan_bwd, config=bwd_config), {}
        else:
            opts = dict(look_back=variant == "look-back")
            fwd = lambda: lookback.lookback_scan_fwd(x, a, None, False, config=tile["fwd"], **opts)  # noqa: E731
            bwd_fn = functools.partial(lookback.lookback_scan_bwd, config=tile["bwd"])
        h, _ = fwd()
        tile_name = tile["name"] if tile else "tiles.json"  # as --tiles takes it
        row = dict(variant=variant, tile=tile_name, B=B, T=T, D=D, dtype=dtype_name)
        if variant == "look-back":  # against the committed kernels, with h0 and dh_T
            h0, dh_T = torch.randn(B, D, device=x.device), torch.randn(B, D, device=x.device)
            ref_h, ref_h_T = committed.associative_scan_fwd(x, a, h0, True, config=committed.tile_config(dtype))
            ref_grads = committed.associative_scan_bwd(a, ref_h, h0, dh, dh_T,
                                                       config=committed.tile_config(dtype, backward=True))
            out_h, out_h_T = lookback.lookback_scan_fwd(x, a, h0, True, config=tile["fwd"], **opts)
            out_grads = bwd_fn(a, out_h, h0, dh, dh_T, **opts)
            outs = [out_h, out_h_T, *out_grads]
            refs = [ref_h, ref_h_T, *ref_grads]
            row["max_rel_err"] = max(_rel(o, r) for o, r in zip(outs, refs))
            row["bitwise_repeats"] = sum(
                torch.equal(lookback.lookback_scan_fwd(x, a, h0, True, config=tile["fwd"], **opts)[0], out_h)
                for _ in range(REPEATS))
        fwd_ms = bench_graph_ms(fwd)
        bwd_ms = bench_graph_ms(lambda: bwd_fn(a, h, None, dh, None, **opts))
        fwd_bytes = scan_bytes(B, T, D, dtype, False)
        bwd_bytes = scan_bytes(B, T, D, dtype, True) - fwd_bytes
        row.update(fwd_ms=fwd_ms, bwd_ms=bwd_ms, fwd_frac=fwd_bytes / fwd_ms / 1e6 / copy_gbs,
                   bwd_frac=bwd_bytes / bwd_ms / 1e6 / copy_gbs,
                   fwd_bwd_frac=(fwd_bytes + bwd_bytes) / (fwd_ms + bwd_ms) / 1e6 / copy_gbs)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _parse_tile(text: str) -> dict:
    """"default" or "ROWS,WARPS,BLOCK_D,VEC,WINDOW[,MAXNREG][/the backward's]" -> {"name", "fwd", "bwd"} (None:
    the default tile). MAXNREG defaults to 0, no cap."""
    names = ("ROWS", "WARPS", "BLOCK_D", "VEC", "WINDOW", "MAXNREG")
    if text == "default":
        return dict(name=text, fwd=None, bwd=None)
    fwd, _, bwd = text.partition("/")
    config = lambda t: dict(zip(names, [*map(int, t.split(",")), 0][:len(names)]))  # noqa: E731
    return dict(name=text, fwd=config(fwd), bwd=config(bwd) if bwd else None)


def _parse_shape(text: str) -> tuple:
    """"B,T,D,dtype" -> (B, T, D, dtype name)."""
    B, T, D, dtype = text.split(",")
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"--shapes: expected B,T,D,dtype with a torch dtype name, got {text!r}")
    return int(B), int(T), int(D), dtype


def _run_variant(variant: str, tile: dict | None, copy_gbs: float, timeout_s: float, shapes: list) -> list[dict]:
    """measure() in a child process; its rows come back as JSON lines on stdout."""
    args = [sys.executable, "-m", "kernels.benchmarks.lookback", "--child", variant, json.dumps(tile), str(copy_gbs)]
    args += ["--shapes", *(",".join(map(str, s)) for s in shapes)]
    try:
        run = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
        stdout = run.stdout
        if run.returncode != 0:
            print(f"{variant} {tile}: failed\n{run.stderr[-3000:]}", flush=True)
    except subprocess.TimeoutExpired as timeout:  # keep the shapes measured before it
        print(f"{variant} {tile}: stopped after {timeout_s:.0f} s", flush=True)
        stdout = timeout.stdout.decode() if isinstance(timeout.stdout, bytes) else timeout.stdout or ""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def plot(rows: list[dict], shapes: list, info: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = sorted({(r["variant"], r["tile"]) for r in rows}, key=lambda s: (s[0] != "committed", s))
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), sharey=True)
    width = 0.8 / max(len(series), 1)
    for ax, key, title in ((axes[0], "fwd_frac", "forward"), (axes[1], "bwd_frac", "backward")):
        for i, (variant, tile) in enumerate(series):
            vals = [next((r[key] for r in rows if (r["B"], r["T"], r["D"], r["dtype"]) == s
                          and (r["variant"], r["tile"]) == (variant, tile)), 0.0) for s in shapes]
            label = f"{variant} ({tile})"
            ax.bar([j + (i - (len(series) - 1) / 2) * width for j in range(len(shapes))], vals, width, label=label)
        ax.set_xticks(range(len(shapes)), [f"({b},{t},{d})\n{dt}" for b, t, d, dt in shapes], fontsize=7)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set(title=f"{title} kernels", ylabel="fraction of copy bandwidth")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Decoupled look-back vs committed scan: {info['gpu']}, copy {info['copy_GBps']:.0f} GB/s, "
                 f"torch {info['torch']}, triton {info['triton']}, {info['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--tiles", nargs="+", default=TILES,
                   metavar="default|ROWS,WARPS,BLOCK_D,VEC,WINDOW[,MAXNREG][/the backward's]")
    p.add_argument("--timeout", type=float, default=180, help="seconds per variant")
    p.add_argument("--shapes", nargs="+", type=_parse_shape, metavar="B,T,D,dtype", help="instead of SHAPES")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS, help="at each tile")
    p.add_argument("--smoke", action="store_true", help="tiny shapes (CPU + TRITON_INTERPRET=1 works)")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    shapes = args.shapes or (SMOKE_SHAPES if args.smoke else SHAPES)
    if args.child:
        variant, tile, copy_gbs = args.child
        measure(variant, json.loads(tile), float(copy_gbs), shapes)
        return
    info = run_info()
    info["copy_GBps"] = copy_gbs = copy_bandwidth_gbs()
    print(json.dumps(info), flush=True)
    tiles = [_parse_tile(t) for t in args.tiles]
    rows = _run_variant("committed", None, copy_gbs, args.timeout, shapes)
    for tile in tiles:
        for variant in args.variants:
            rows += _run_variant(variant, tile, copy_gbs, args.timeout, shapes)
    if not rows:
        raise SystemExit("no variant measured a shape")
    for r in rows:
        r.setdefault("max_rel_err", float("nan"))
        r.setdefault("bitwise_repeats", "")
    print(f"\nKernel time as a fraction of copy bandwidth ({copy_gbs:.0f} GB/s); bitwise_repeats: forward runs of "
          f"{REPEATS} equal to the first, bit for bit")
    print_table(rows, ["variant", "tile", "B", "T", "D", "dtype", "fwd_frac", "bwd_frac", "fwd_bwd_frac", "max_rel_err",
                       "bitwise_repeats"])
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "lookback.csv", rows)
    (args.out / "lookback_run.json").write_text(json.dumps(info, indent=2))
    plot(rows, shapes, info, args.out / "lookback.png")


if __name__ == "__main__":
    main()
