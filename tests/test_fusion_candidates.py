"""The validation grids of the content fusions and hybrids."""
from __future__ import annotations

import pytest

from vlm4rec.fusion_candidates import learned_grid, simplex_grid

from study_params import section


def test_simplex_grid_enumerates_every_weight_vector_summing_to_one() -> None:
    grid = simplex_grid(["a", "b", "c"], 0.5)
    assert sorted(tuple(w.values()) for w in grid) == sorted(
        [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)])
    assert len(simplex_grid(["a", "b", "c"], 0.25)) == 15  # C(4 + 2, 2)
    with pytest.raises(ValueError, match="divide 1"):
        simplex_grid(["a"], 0.3)


def test_learned_grid_crosses_the_knobs_and_adds_combine_only_for_frequency_filter() -> None:
    fusion = section("fusion", temperature_grid=[0.05, 0.1], weight_decay_grid=[0.0], combine_grid=["sum", "product"])
    assert learned_grid("gating", fusion) == [{"temperature": 0.05, "weight_decay": 0.0},
                                              {"temperature": 0.1, "weight_decay": 0.0}]
    assert len(learned_grid("frequency_filter", fusion)) == 4
    assert {c["combine"] for c in learned_grid("frequency_filter", fusion)} == {"sum", "product"}
