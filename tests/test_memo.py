"""Content memos: keyed by what the inputs hold, least recently used out first."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from vlm4rec.memo import ContentMemo, fingerprint


def test_fingerprints_follow_contents_not_objects() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert fingerprint(x) == fingerprint(x.copy())
    assert fingerprint(x) != fingerprint(x.astype(np.float64))  # same values, another dtype
    assert fingerprint(x) != fingerprint(x.reshape(4, 3))       # same bytes, another shape
    y = x.copy()
    y[2, 3] += 1
    assert fingerprint(x) != fingerprint(y)
    m = sp.csr_matrix(np.eye(4))
    assert fingerprint(m) == fingerprint(m.copy()) != fingerprint(sp.csr_matrix(2 * np.eye(4)))
    assert fingerprint(m) != fingerprint(sp.csc_matrix(np.eye(4)))
    assert fingerprint(m, x) != fingerprint(m, y)
    with pytest.raises(TypeError, match="CSR or CSC"):
        fingerprint(sp.coo_matrix(np.eye(4)))


def test_the_memo_computes_once_per_key_and_drops_the_least_recently_used() -> None:
    memo: ContentMemo[int] = ContentMemo(size=2)
    calls: list[str] = []

    def compute(key: str) -> int:
        calls.append(key)
        return len(calls)

    assert memo.get("a", lambda: compute("a")) == 1
    assert memo.get("a", lambda: compute("a")) == 1
    memo.get("b", lambda: compute("b"))
    memo.lookup("a")                        # "a" used last: "b" goes first
    memo.get("c", lambda: compute("c"))
    assert memo.lookup("b") is None and memo.lookup("a") == 1 and len(memo) == 2
    assert calls == ["a", "b", "c"]
    with pytest.raises(ValueError, match="at least one"):
        ContentMemo(size=0)
