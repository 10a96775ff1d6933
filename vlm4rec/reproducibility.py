"""Bit-for-bit reruns of torch training on CPU: deterministic kernels and a fixed thread count.

Floating-point sums depend on their order; torch may pick kernels whose reduction order varies between
runs (scatter-adds in sparse and indexing backward passes) and the order of a parallel reduction can
depend on the number of threads. Training therefore runs inside :func:`deterministic_torch`, which asks
torch for deterministic algorithms and pins the intra-op thread count (restoring both afterwards).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

#: Intra-op threads for training: fixed so that a rerun on a machine with more cores computes the same sums.
TRAINING_THREADS = 2


@contextmanager
def deterministic_torch(threads: int = TRAINING_THREADS) -> Iterator[None]:
    """Deterministic torch algorithms and ``threads`` intra-op threads inside the block."""
    previous_threads = torch.get_num_threads()
    previous_mode = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_mode)
        torch.set_num_threads(previous_threads)
