import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors on a busy 2-core machine: one thread spares every op a thread-pool wait; restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
