"""Row conventions of item vector matrices: unit rows, zero rows = missing."""
import numpy as np

from vlm4rec.vectors import coverage_of, normalize_rows


def test_normalize_rows_keeps_zero_rows_zero():
    out = normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert out.dtype == np.float32


def test_coverage_of_counts_nonzero_rows():
    assert coverage_of(np.array([[0.0, 1.0], [0.0, 0.0], [1e-9, 0.0], [0.0, 0.0]])) == 0.5
    assert np.isnan(coverage_of(np.zeros((0, 3))))
