"""The validation grid of profile matching (the VLM4Rec method), shared by the match stage, the
robustness re-evaluation and the ablation cells, and the match stage's grid of every method (shared with
the robustness re-evaluation). A shared helper of these stages, not a stage."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from vlm4rec.baselines import baseline_candidates
from vlm4rec.config import BaselineParams, ProfileParams
from vlm4rec.evaluation import Candidate
from vlm4rec.matching import ProfileRecommender
from vlm4rec.pipeline.outputs import EMBEDDINGS_DIR
from vlm4rec.representations import load_vectors


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


def method_grid(representations: list[str], key: str, profile: ProfileParams,
                baselines: BaselineParams) -> dict[str, list[Candidate]]:
    """Every baseline of ``baselines.methods`` and a profile matcher per representation (read now, so that
    an unknown name fails before any work, naming the params ``key``)."""
    methods = {m: baseline_candidates(m, baselines) for m in baselines.methods}
    return methods | {rep: profile_candidates(load_vectors(EMBEDDINGS_DIR, rep, key), profile, rep)
                      for rep in representations}
