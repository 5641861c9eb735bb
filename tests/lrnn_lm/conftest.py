"""Fixtures of the training tests: one thread for in-process runs, and a local corpus shared by a module's runs."""

import pytest
import torch

from .tiny_run import write_local_corpus


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from more threads, and lose a lot when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A local corpus with its tokenizer and token caches, shared by the module's runs (the first builds them)."""
    return write_local_corpus(tmp_path_factory.mktemp("corpus"))
