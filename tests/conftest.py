"""Shared fixtures of the unit tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module: many small ops, and pytest-xdist runs a worker per core.

    With two threads on two busy cores (another worker, another process) small forward passes ran
    5-10x slower than with one: every small op waits for a descheduled OpenMP thread. A module opts
    in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
