"""The decoupled look-back experiment beyond the shared suite (test_scan.py runs it as "triton-lookback"):
a look-back must terminate whatever values the tiles publish."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import DEVICE

# fp32 x whose every element is a NaN with the bits of an unpublished workspace slot (0xFFFFFFFF), a = 1: the
# tiles' aggregates and states are then NaNs that carry those bits, unless published NaNs are made canonical.
SENTINEL_NAN_RUN = f"""
import torch
from kernels.lookback_scan import linear_scan_lookback
x = torch.empty(2, 100, 40, device="{DEVICE}")
x.view(torch.int32).fill_(-1)
a = torch.ones_like(x)
h, h_T = linear_scan_lookback(x, a, None, True)
assert h.isnan().all() and h_T.isnan().all()
"""


def test_nan_inputs_with_the_sentinel_bits_do_not_hang():
    """Run in a subprocess with a timeout, so that a look-back spinning forever fails the test instead of CI.
    (Checked: with the canonicalisation in `_publish` removed, this run times out on the interpreter.)"""
    repo = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    try:
        run = subprocess.run([sys.executable, "-c", SENTINEL_NAN_RUN], env=env, capture_output=True, text=True,
                             timeout=300)
    except subprocess.TimeoutExpired:
        raise AssertionError("a look-back spun for 300 s on NaN inputs") from None
    assert run.returncode == 0, run.stderr[-2000:]
