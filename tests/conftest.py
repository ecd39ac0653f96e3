"""Shared pytest fixtures."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """Run each test on one CPU thread: the models are tiny, and idle worker threads slow tests down on a
    busy machine. Module-scoped fixtures that train set the thread count themselves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
