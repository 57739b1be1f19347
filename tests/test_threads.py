"""``torch_threads``: the thread count of one operation, put back afterwards (also when the operation fails)."""

from __future__ import annotations

import pytest
import torch

from licsearch.model.threads import torch_threads


def test_the_count_is_set_inside_and_restored_after_even_on_error() -> None:
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(other):
        raise RuntimeError("the operation failed")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
