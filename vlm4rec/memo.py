"""Per-process memos of costly closed forms (EASE^R's inverse, an item matrix's neighbour lists), keyed by the
contents of their inputs, never by object identity: a grid's candidates and a stage's phases that refit on the
same history share one computation, and another input is never served a stale result."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

import numpy as np
import scipy.sparse as sp

Value = TypeVar("Value")


def fingerprint(*parts: np.ndarray | sp.spmatrix) -> str:
    """A digest of arrays' and CSR / CSC matrices' shapes, dtypes and stored contents (in storage order)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        if sp.issparse(part) and part.format not in ("csr", "csc"):
            raise TypeError(f"fingerprint reads CSR or CSC matrices, got {part.format}")
        arrays = (part.indptr, part.indices, part.data) if sp.issparse(part) else (np.asarray(part),)
        digest.update(repr((type(part).__name__, part.shape, part.dtype)).encode())
        for array in arrays:
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def read_only(array: np.ndarray) -> np.ndarray:
    """``array``, flagged read-only: a memoised result that no caller may change in place."""
    array.flags.writeable = False
    return array


class ContentMemo(Generic[Value]):
    """The ``size`` values used last, by key (least recently used first out)."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"a memo holds at least one value, got size {size}")
        self.size = size
        self._values: OrderedDict[Hashable, Value] = OrderedDict()

    def __len__(self) -> int:
        return len(self._values)

    def lookup(self, key: Hashable) -> Value | None:
        """The value held for ``key`` (now the most recently used), or None."""
        if key in self._values:
            self._values.move_to_end(key)
        return self._values.get(key)

    def store(self, key: Hashable, value: Value) -> Value:
        """Hold ``value`` for ``key``, dropping the least recently used beyond ``size``."""
        self._values[key] = value
        self._values.move_to_end(key)
        while len(self._values) > self.size:
            self._values.popitem(last=False)
        return value

    def get(self, key: Hashable, compute: Callable[[], Value]) -> Value:
        """The value held for ``key``, computed and held first if there is none."""
        held = self.lookup(key)
        return held if held is not None else self.store(key, compute())

    def clear(self) -> None:
        self._values.clear()
