"""torch's intra-op thread count for small models."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread inside the block, restored after it. fedgate's models are tiny (a
    forward pass over a validation split takes well under a millisecond), and torch's thread
    pool on a busy host costs more than it saves (measured on the region server: 0.57 ms median
    and 290 ms worst case on two threads, 0.17 ms on one, with clients training on the same
    cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
