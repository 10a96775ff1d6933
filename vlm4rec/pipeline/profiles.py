"""The validation grid of profile matching (the VLM4Rec method), shared by the match stage, the
robustness re-evaluation and the ablation cells."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from vlm4rec.config import ProfileParams
from vlm4rec.evaluation import Candidate
from vlm4rec.matching import ProfileRecommender


def profile_candidates(vectors: np.ndarray, profile: ProfileParams, name: str) -> list[Candidate]:
    """One aggregation with its own knob tried on validation (recency half-life, knn_sum neighbourhood;
    the uniform mean has none)."""
    aggregation, cap = profile.aggregation, profile.history_cap

    def build(**knobs: Any) -> Callable[[], ProfileRecommender]:
        return lambda: ProfileRecommender(vectors, aggregation=aggregation, history_cap=cap, name=name,
                                          **knobs)

    base = {"aggregation": aggregation, "history_cap": cap}
    if aggregation == "recency":
        return [Candidate(base | {"half_life": h}, build(half_life=h)) for h in profile.half_life_grid]
    if aggregation == "knn_sum":
        return [Candidate(base | {"knn_k": k}, build(knn_k=k)) for k in profile.knn_k_grid]
    return [Candidate(base, build())]
