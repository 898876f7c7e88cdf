"""Fixtures for the whole suite. Helpers that are plain functions live in ``tests/helpers``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for the module's tests, restored afterwards.

    The tests use tiny models: one thread is faster for them, and immune to busy-waiting OpenMP
    threads on a loaded machine (several times slower with 2 threads when the cores are
    shared). A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
