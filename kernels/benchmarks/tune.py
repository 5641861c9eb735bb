"""Sweep the associative scan's tiles and write this GPU's entry of the tile table (kernels/tiles.json).

A tile is (BLOCK_T rows, BLOCK_D channels, VEC channels per thread, STAGES of the load pipeline, num_warps).
With BLOCK_D = 32 · VEC · num_warps every thread holds whole columns of the tile (the scan runs in registers);
with half that, rows are split over two lanes (8-byte loads at 64 channels for 2-byte dtypes, one shuffle
level in the scan). Each candidate runs forward and backward at the benchmark
shapes of its element size; the table keeps, per element size and pass, the tile with the best geometric
mean of that pass's fractions of copy bandwidth (the forward and the backward may get different tiles). The T-parallel path's chunk length is swept at the
long-sequence shape (printed and saved, not tabled: `dispatch.chunk_len` decides it).

    python -m kernels.benchmarks.tune [--out kernels/benchmarks/results] [--write-table] [--quick]

--write-table writes the entry of the GPU it runs on (its device name, compute capability and SM count), keeping
every other GPU's; --quick sweeps only the candidates that won somewhere before (QUICK).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from kernels.associative_scan import associative_scan_bwd, associative_scan_fwd
from kernels.dispatch import TILE_KEYS, TILES_PATH, chunk_len, num_sms, tile_table

from .common import bench_ms, copy_bandwidth_gbs, run_info, scan_bytes, scan_inputs, write_csv

SHAPES = {  # element size -> (B, T, D, dtype)
    2: [(8, 2048, 2048, torch.bfloat16), (4, 16384, 5120, torch.float16), (16, 1024, 1024, torch.bfloat16),
        (4, 256, 5120, torch.float16)],
    4: [(8, 2048, 2048, torch.float32), (16, 1024, 1024, torch.float32)],
}
CANDIDATES = {  # element size -> (BLOCK_T, BLOCK_D, VEC, STAGES, num_warps)
    2: [(32, 64, 2, 3, 1), (32, 64, 2, 4, 1), (16, 64, 2, 4, 1), (16, 64, 2, 6, 1), (64, 64, 2, 3, 1),
        (64, 64, 2, 4, 1), (64, 64, 2, 2, 1), (8, 64, 2, 8, 1), (16, 128, 4, 3, 1), (32, 128, 2, 3, 2),
        (64, 64, 4, 4, 1), (64, 64, 4, 3, 1), (32, 64, 4, 4, 1)],
    4: [(32, 64, 2, 3, 1), (32, 64, 2, 4, 1), (16, 64, 2, 4, 1), (64, 64, 2, 2, 1), (16, 128, 4, 3, 1),
        (32, 32, 1, 3, 1), (32, 64, 4, 4, 1)],
}
QUICK = {  # the tiles that led a pass somewhere, and their neighbours in stages and rows
    2: [(64, 64, 2, 4, 1), (64, 64, 2, 3, 1), (32, 64, 2, 4, 1), (32, 64, 2, 3, 1), (64, 64, 2, 2, 1),
        (16, 64, 2, 4, 1)],
    4: [(32, 64, 2, 4, 1), (32, 64, 2, 3, 1), (16, 64, 2, 4, 1), (64, 64, 2, 2, 1)],
}
LONG = (1, 131072, 512, torch.bfloat16)
CHUNKS = [512, 1024, 2048, 4096, 8192]


def tile(*values: int) -> dict:
    """(BLOCK_T, BLOCK_D, VEC, STAGES, num_warps) -> the tile's dict."""
    return dict(zip(TILE_KEYS, values))


def measure(B, T, D, dtype, config, copy_gbs, chunk_t=None) -> dict:
    """Forward and backward (no h0, no dh_T) of (B, T, D) `dtype` inputs with tile `config`: ms and fractions
    of `copy_gbs` (GB/s). chunk_t None: the launchers choose, as in the model (recorded as chosen)."""
    x, a = scan_inputs(B, T, D, dtype)
    dh = torch.randn_like(x)
    chunk_t = chunk_t or chunk_len(B, T, D, config["BLOCK_D"], num_sms(x.device))
    h, _ = associative_scan_fwd(x, a, None, False, chunk_t=chunk_t, config=config)
    fwd_bytes = scan_bytes(B, T, D, dtype, False)
    bwd_bytes = scan_bytes(B, T, D, dtype, True) - fwd_bytes
    fwd = bench_ms(lambda: associative_scan_fwd(x, a, None, False, chunk_t=chunk_t, config=config), rep_ms=40)
    bwd = bench_ms(lambda: associative_scan_bwd(a, h, None, dh, None, chunk_t=chunk_t, config=config), rep_ms=40)
    return dict(B=B, T=T, D=D, dtype=str(dtype).split(".")[-1], chunk_t=chunk_t, **config, fwd_ms=fwd,
                fwd_frac=fwd_bytes / fwd / 1e6 / copy_gbs, bwd_ms=bwd, bwd_frac=bwd_bytes / bwd / 1e6 / copy_gbs)


def _line(r: dict, columns: list[str]) -> str:
    return " ".join(f"{c}={r[c]:.3f}" if isinstance(r[c], float) else f"{c}={r[c]}" for c in columns)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("kernels/benchmarks/results"))
    p.add_argument("--write-table", action="store_true", help=f"write this GPU's best tiles to {TILES_PATH}")
    p.add_argument("--quick", action="store_true", help="sweep QUICK's candidates only")
    args = p.parse_args()
    candidates = QUICK if args.quick else CANDIDATES
    info = run_info()
    copy = copy_bandwidth_gbs()
    print(info, f"copy {copy:.0f} GB/s", flush=True)
    rows, table = [], {}
    columns = ["B", "T", "D", "dtype", "chunk_t", "BLOCK_T", "BLOCK_D", "VEC", "STAGES", "num_warps", "fwd_frac",
               "bwd_frac"]
    for size, shapes in SHAPES.items():
        scores = {"forward": {}, "backward": {}}
        for cand in candidates[size]:
            config = tile(*cand)
            fracs = {"forward": [], "backward": []}
            for B, T, D, dtype in shapes:
                r = measure(B, T, D, dtype, config, copy)
                rows.append(r)
                fracs["forward"].append(r["fwd_frac"])
                fracs["backward"].append(r["bwd_frac"])
                print(_line(r, columns), flush=True)
            for direction, f in fracs.items():
                scores[direction][cand] = math.exp(sum(map(math.log, f)) / len(f))
            print(f"element size {size}, tile {cand}: geometric mean forward {scores['forward'][cand]:.3f}, "
                  f"backward {scores['backward'][cand]:.3f}", flush=True)
            write_csv(args.out / "tune.csv", rows)
        table[str(size)] = {}
        for direction, by_tile in scores.items():
            best = max(by_tile, key=by_tile.get)
            table[str(size)][direction] = dict(tile(*best), score=round(by_tile[best], 4))
        print(f"best for element size {size}: {table[str(size)]}", flush=True)
    for chunk_t in CHUNKS:
        best = {k: v for k, v in table["2"]["forward"].items() if k != "score"}
        r = measure(*LONG, best, copy, chunk_t=chunk_t)
        rows.append(r)
        print(_line(r, columns), flush=True)
    write_csv(args.out / "tune.csv", rows)
    if args.write_table:
        props = torch.cuda.get_device_properties(0)
        entry = {"capability": [props.major, props.minor], "sms": props.multi_processor_count,
                 "measured": f"{info['date']}, torch {info['torch']}, triton {info['triton']}", **table}
        full = dict(tile_table())
        full["gpus"] = dict(full["gpus"], **{props.name: entry})
        TILES_PATH.write_text(json.dumps(full, indent=1) + "\n")
        print(f"wrote the {props.name} entry of {TILES_PATH}")


if __name__ == "__main__":
    main()
