"""The decoupled look-back scan beyond the shared suite (test_scan.py runs both its passes as "lookback"):
shapes at its own tiles' edges, look-backs that must end whatever values the tiles publish, and its configs."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.dispatch import LOOKBACK_BACKWARD_TILES, lookback_config, lookback_rows
from kernels.autograd import apply_scan

from .conftest import DEVICE
from .scan_inputs import make_inputs, oracle, outputs_and_grads, reference_in_dtype
from .test_scan import _interpreted, assert_close_to_oracle, linear_scan_lookback

TILE = lookback_config(torch.float32)  # the forward's; the backward's tiles are as wide, and as tall on a CPU
BT, BD = lookback_rows(TILE), TILE["BLOCK_D"]
EDGE_SHAPES = [  # (B, T, D): T a multiple of the tile's rows (a whole last tile) or one past, one or several
    # channel blocks
    (2, 2 * BT, BD),
    (1, 3 * BT, 2 * BD + 3),
    (1, 4 * BT + 1, BD),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=str)
def test_matches_reference_at_tile_edges(shape, dtype, gen):
    x, a, h0, dy, dh_T = make_inputs(*shape, dtype, gen, DEVICE)
    out = outputs_and_grads(linear_scan_lookback, x, a, h0, dy, dh_T)
    interpreted = _interpreted("triton-lookback")
    ref_d = reference_in_dtype(x, a, h0, dy, dh_T, True, interpreted)
    assert_close_to_oracle(out, ref_d, oracle(x, a, h0, dy, dh_T), dtype, f"{shape} {dtype}", interpreted)


# fp32 inputs whose every element is a NaN with the bits of an unpublished workspace slot (0xFFFFFFFF), a = 1:
# the tiles' aggregates and states are NaNs that keep those bits wherever NaN payloads propagate, unless
# published NaNs are made canonical. Forward and backward, over many tiles along T (so that tiles look back) and
# several channel blocks: on a GPU a tile holds 128 rows and 64 channels.
SENTINEL_NAN_SHAPE = (2, 4096, 200) if DEVICE == "cuda" else (2, 100, 40)
SENTINEL_NAN_RUN = f"""
import torch
from kernels.lookback_scan import lookback_scan_bwd, lookback_scan_fwd
x = torch.empty(*{SENTINEL_NAN_SHAPE}, device="{DEVICE}")
x.view(torch.int32).fill_(-1)
a = torch.ones_like(x)
h, h_T = lookback_scan_fwd(x, a, None, True)
dx, da, _ = lookback_scan_bwd(a, h, None, x, h_T)
assert all(t.isnan().all() for t in (h, h_T, dx, da))
"""


def test_nan_inputs_with_the_sentinel_bits_do_not_hang():
    """Run in a subprocess with a timeout, so that a look-back spinning forever fails the test instead of CI.
    The interpreter keeps NaN payloads (checked: with the canonicalisation in `_publish` removed, this run
    times out there); CUDA arithmetic returns the canonical NaN, so on a GPU the test guards less."""
    repo = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    try:
        run = subprocess.run([sys.executable, "-c", SENTINEL_NAN_RUN], env=env, capture_output=True, text=True,
                             timeout=300)
    except subprocess.TimeoutExpired:
        raise AssertionError("a look-back spun for 300 s on NaN inputs") from None
    assert run.returncode == 0, run.stderr[-2000:]


def test_configs_are_checked_and_given_per_pass(gen):
    """A config with a stray key is a ValueError naming `config`; each pass runs the tile it is given (here tiles of
    different heights)."""
    import kernels.lookback_scan as lookback

    x, a, h0, dy, dh_T = make_inputs(1, 2 * BT + 3, BD, torch.float32, gen, DEVICE)
    fwd_tile = lookback_config(torch.float32)
    bwd_tile = dict(lookback_config(torch.float32, backward=True), ROWS=fwd_tile["ROWS"] // 2)
    with pytest.raises(ValueError, match=r"^config: expected the keys"):
        lookback.lookback_scan_fwd(x, a, None, False, config=dict(fwd_tile, num_warps=4))
    h, _ = lookback.lookback_scan_fwd(x, a, None, False, config=fwd_tile)
    with pytest.raises(ValueError, match=r"^config: expected the keys"):
        lookback.lookback_scan_bwd(a, h, None, dy, None, config={k: v for k, v in fwd_tile.items() if k != "WINDOW"})

    def scan(x, a, h0, fs):
        return apply_scan(x, a, h0, fs, functools.partial(lookback.lookback_scan_fwd, config=fwd_tile),
                          functools.partial(lookback.lookback_scan_bwd, config=bwd_tile))

    out = outputs_and_grads(scan, x, a, h0, dy, dh_T)
    interpreted = _interpreted("triton-lookback")
    ref_d = reference_in_dtype(x, a, h0, dy, dh_T, True, interpreted)
    assert_close_to_oracle(out, ref_d, oracle(x, a, h0, dy, dh_T), torch.float32, "configs", interpreted)


@pytest.mark.parametrize("vec, block_d", [(1, 32), (2, 128), (4, 128)])
def test_gpu_configs_other_than_the_timed_ones_are_refused(vec, block_d, monkeypatch):
    """On a GPU only the channel blocks timed there (VEC 2, 64 channels) pass: 128-channel ones read out of bounds on
    a GPU, and VEC 1 ones were never timed. A ValueError naming `config`, before any launch."""
    import kernels.lookback_scan as lookback

    monkeypatch.setattr(lookback, "triton_interpreter_on", lambda: False)
    tile = LOOKBACK_BACKWARD_TILES[2]
    lookback._check_config(tile)  # a committed GPU tile passes
    with pytest.raises(ValueError, match=rf"^config: expected VEC 2 and BLOCK_D 64 on a GPU, got VEC {vec} and "
                                         rf"BLOCK_D {block_d}"):
        lookback._check_config(dict(tile, VEC=vec, BLOCK_D=block_d))
