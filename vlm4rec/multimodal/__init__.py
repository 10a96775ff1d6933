"""The field's multimodal recommenders, trained with BPR on the fitted history only.

``lightgcn``  LightGCN (He et al., SIGIR 2020): collaborative filtering on the user-item graph, no content.
``vbpr``      VBPR (He & McAuley, AAAI 2016): matrix factorisation plus a learned projection of content.
``freedom``   FREEDOM (Zhou & Shen, ACM MM 2023): LightGCN with degree-sensitive edge pruning plus frozen
              item-item kNN graphs of the modalities (any number of them, as its reference code).
``smore``     SMORE (Ong & Khong, WSDM 2025): spectral fusion of an image and a text modality,
              modality-gated ID embeddings over item-item graphs, modality-aware preferences, InfoNCE.

Each module's docstring says which reference code it follows (MMRec, the authors' repositories) and where it
deviates. The training options of both regimes (``params.yaml: graph.regime``) are those of
:class:`~vlm4rec.multimodal.bpr.BPRRecommender`.

Each is an :class:`~vlm4rec.matching.IterativeRecommender`, so :func:`vlm4rec.evaluation.select_and_test_seeds`
early-stops it on validation and refits it for the chosen number of epochs. :func:`candidates` turns a model
name, its modalities and a hyperparameter grid into the candidate list that function takes (the grids of
the study are ``params.yaml: graph.default`` for a 2-core CPU and ``graph.full``, the references' own grids,
for a GPU); :func:`regime_options` gives the options every candidate of a model gets in the study's training
regime. The models, their kinds and their configurations are catalogued in :mod:`vlm4rec.methods`.
A modality is any ``(n_items, d)`` float32 matrix with rows aligned to item index; an all-zero row means
the item lacks it.
"""
from __future__ import annotations

import itertools
import json
from functools import partial
from typing import Any, Mapping, Sequence

import numpy as np

from vlm4rec.config import GraphParams
from vlm4rec.evaluation import Candidate
from vlm4rec.methods import CATALOGUE, TRAINED_MODELS, ContentGraph
from vlm4rec.multimodal.bpr import BPRRecommender
from vlm4rec.multimodal.freedom import FREEDOM
from vlm4rec.multimodal.lightgcn import LightGCN
from vlm4rec.multimodal.smore import SMORE
from vlm4rec.multimodal.vbpr import VBPR
from vlm4rec.training import TrainingOptions

#: Every model of ``params.yaml: graph.cells.*.model`` (:data:`vlm4rec.methods.TRAINED_MODELS`), by name.
MODELS: dict[str, type[BPRRecommender]] = {name: CATALOGUE[name].implementation() for name in TRAINED_MODELS}
__all__ = ["FREEDOM", "LightGCN", "MODELS", "SMORE", "VBPR", "candidates", "new_item_options", "regime_options"]
CONTENT_FREE: frozenset[str] = frozenset(name for name in TRAINED_MODELS if not CATALOGUE[name].uses_content)


def regime_options(graph: GraphParams, model: str) -> dict[str, Any]:
    """The training options every candidate of ``model`` gets in the chosen regime
    (:meth:`~vlm4rec.config.GraphTrainingParams.model_options`) and the device, ``graph.device``."""
    return graph.chosen_regime.model_options(model) | {"device": graph.device}


def new_item_options(graph: GraphParams, model: str, content_graph: ContentGraph) -> dict[str, Any]:
    """A graph cell's options in its new-item form: the regime's, new items scored from content alone and,
    for the models with item-item content graphs, the form of those graphs."""
    options = regime_options(graph, model) | {"unseen_items": "content"}
    config = CATALOGUE[model].config
    if config is not None and "content_graph" in config.model_fields:
        options["content_graph"] = content_graph
    return options


def candidates(model: str, modalities: Mapping[str, np.ndarray], grid: Mapping[str, Sequence[Any]],
               fixed: Mapping[str, Any] | None = None, seed: int = 0) -> list[Candidate]:
    """One :class:`~vlm4rec.evaluation.Candidate` per point of the product of ``grid``'s lists (in the grid's
    key order, last key fastest), each building ``MODELS[model]`` with ``modalities`` (none for LightGCN),
    that point, the ``fixed`` options and :class:`~vlm4rec.training.TrainingOptions` of the ``fixed`` device
    (``cpu`` without one) and ``seed``. A candidate's config is ``{**fixed, **point}``."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {sorted(MODELS)}")
    if model in CONTENT_FREE and modalities:
        raise ValueError(f"{model} uses no modalities, got {sorted(modalities)}")
    if model not in CONTENT_FREE and not modalities:
        raise ValueError(f"{model} needs at least one modality")
    fixed = dict(fixed or {})
    if "seed" in fixed or "seed" in grid:
        raise ValueError("the seed is an argument of candidates(), not a grid value or fixed option")
    content = {} if model in CONTENT_FREE else {"modalities": dict(modalities)}
    out = []
    for values in itertools.product(*grid.values()):
        config = {**fixed, **dict(zip(grid, values))}
        json.dumps(config)  # configs are saved as JSON
        training = {key: value for key, value in config.items() if key != "device"}
        options = TrainingOptions(device=config.get("device", "cpu"), seed=seed)
        out.append(Candidate(config=config, build=partial(MODELS[model], **content, **training, options=options)))
    return out
