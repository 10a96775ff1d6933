"""Bit-for-bit reruns of torch training: deterministic kernels and, where asked, a fixed thread count.

Floating-point sums depend on their order. Torch may pick kernels whose reduction order varies between
runs (scatter-adds in sparse and indexing backward passes; on CPU the learned fusions' training differs
in the last bits from one process to the next without the flag), and the order of a parallel reduction
can depend on the number of threads. The learned fusions (:mod:`vlm4rec.fusion`) and the multimodal
recommenders (:mod:`vlm4rec.multimodal.bpr`) therefore train inside :func:`deterministic_torch`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

#: Intra-op threads for training: fixed so that a rerun on a machine with more cores computes the same sums.
TRAINING_THREADS = 2


@contextmanager
def deterministic_torch(threads: int | None = TRAINING_THREADS) -> Iterator[None]:
    """Inside the block: deterministic torch kernels (a warning where an op has none) and ``threads``
    intra-op threads (None: the count as it is); the caller's settings again afterwards."""
    previous_threads = torch.get_num_threads()
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if threads is not None:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.set_num_threads(previous_threads)
