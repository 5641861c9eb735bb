"""Test-wide setup: without a GPU, Triton kernels run under the interpreter.

TRITON_INTERPRET must be set before anything imports triton, hence here and not in a fixture.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
