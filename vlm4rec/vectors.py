"""Item vector matrices: the row conventions every representation, fusion and matcher shares.

A matrix is ``(n_items, d)`` float32 with rows aligned to ``item_idx``; a real row has unit L2 norm and
an all-zero row means "this item has no vector" (missing). Kept apart from the modules that use it so
that loading or encoding vectors does not pull in the matching engine.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def coverage_of(vectors: np.ndarray) -> float:
    """Share of rows that are real vectors (not all zero)."""
    if len(vectors) == 0:
        return float("nan")
    return float(np.any(vectors != 0, axis=1).mean())


def check_modalities(modalities: Mapping[str, np.ndarray]) -> int:
    """Validate item modality matrices (name -> (n_items, d): 2-D, finite, the same number of rows); return
    that number of items."""
    if not modalities:
        raise ValueError("no modalities given")
    n_rows = {name: np.shape(x)[0] for name, x in modalities.items() if np.ndim(x) == 2}
    if len(n_rows) != len(modalities):
        bad = [name for name, x in modalities.items() if np.ndim(x) != 2]
        raise ValueError(f"modalities must be 2-D (n_items, d); not 2-D: {bad}")
    if len(set(n_rows.values())) != 1:
        raise ValueError(f"modalities disagree on the number of items: {n_rows}")
    for name, x in modalities.items():
        if not np.all(np.isfinite(x)):
            raise ValueError(f"modality {name!r} has non-finite values")
    return next(iter(n_rows.values()))
