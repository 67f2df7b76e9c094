"""`kernels.stream_threads`: one stream is scored on one thread, and the count comes back."""

from __future__ import annotations

import pytest
import torch

from rnnlab.kernels.choice import stream_threads


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_one_stream_on_one_thread_then_restored(two_threads):
    with stream_threads(1, "cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), stream_threads(1, torch.device("cpu")):
        raise RuntimeError("a failed evaluation")
    assert torch.get_num_threads() == 2  # restored on the way out of an error too


def test_batched_scoring_keeps_its_threads(two_threads):
    with stream_threads(32, "cpu"):
        assert torch.get_num_threads() == 2
    with stream_threads(1, "meta"):  # not a CPU: the host's threads are not the step's
        assert torch.get_num_threads() == 2
