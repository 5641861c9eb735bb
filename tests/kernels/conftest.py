"""Kernel-test fixtures: every output buffer starts as NaN, and every test draws fresh random inputs."""

import fcntl
import os
import tempfile

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def nan_poisoned_outputs(monkeypatch):
    """Launchers allocate with torch.empty: fill those buffers with NaN so an unwritten element fails."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        out = real_empty(*args, **kwargs)
        if out.is_floating_point():
            out.fill_(float("nan"))
        return out

    monkeypatch.setattr(torch, "empty", empty)


@pytest.fixture
def gen(request):
    """A generator with a fresh seed per test (LRNN_TEST_SEED=N reproduces a run); the seed is in the report."""
    seed = int(os.environ.get("LRNN_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed}")
    return torch.Generator(device="cpu").manual_seed(seed)


@pytest.fixture
def most_of_the_gpu():
    """For a test that takes tens of GB: one such test at a time across pytest-xdist's workers (a file lock), and its
    memory handed back to the driver afterwards, so that `-n 8` on an 80 GB GPU does not run out of memory."""
    with open(os.path.join(tempfile.gettempdir(), "lrnn-kernel-tests-gpu-memory.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            torch.cuda.empty_cache()
            fcntl.flock(lock, fcntl.LOCK_UN)
