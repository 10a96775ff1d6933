"""Dedicated item cold-start recommenders: models built to place a new item (no interaction) from its content.

``content_regression``  DeepMusic-style regression (van den Oord et al., NeurIPS 2013): content -> the
                        backbone's item vector, MSE on the warm items.
``dropoutnet``          DropoutNet (Volkovs et al., NeurIPS 2017): towers over [preference, content] with input
                        dropout of the item preference, trained to reproduce the backbone's scores.
``aldi``                ALDI (Huang et al., SIGIR 2023): a content student distilled from the backbone teacher
                        (rating distribution, ranking and identification terms).
``collective_ease``     cEASE^R (Jeunen et al., RecSys 2020): EASE^R on the history stacked over the content.
``additive_ease``       Add-EASE^R (same paper): a blend of EASE^R on the history and EASE^R on the content.

Each takes one content matrix (``(n_items, d)`` float32, rows aligned to item index, all-zero row = missing),
fits on the warm history only and scores every item, warm and new. The trained three learn over the
collaborative space of a backbone fitted on the same history (:func:`~vlm4rec.coldstart.base.default_backbone`:
LightGCN) and are :class:`~vlm4rec.matching.IterativeRecommender`\\ s, so validation early-stops them. Each
module's docstring names its paper, the reference code it follows and its deviations; each configuration is a
pydantic model beside its class (``MODELS[name]`` pairs the two). :func:`candidates` turns a model name, a content
matrix and a grid into the candidate list :func:`vlm4rec.cold_start.select_and_test_new_items` takes.
"""
from __future__ import annotations

import itertools
import json
from functools import partial
from typing import Any, Mapping, Sequence

import numpy as np

from vlm4rec.coldstart.aldi import ALDI, ALDIConfig
from vlm4rec.coldstart.base import ColdStartConfig, ColdStartRecommender, default_backbone
from vlm4rec.coldstart.dropoutnet import DropoutNet, DropoutNetConfig
from vlm4rec.coldstart.regression import ContentRegression, ContentRegressionConfig
from vlm4rec.coldstart.side_ease import AdditiveEASE, AdditiveEASEConfig, CollectiveEASE, CollectiveEASEConfig
from vlm4rec.evaluation import Candidate
from vlm4rec.matching import Recommender
from vlm4rec.training import TrainingOptions

#: name -> (class, its configuration type)
MODELS: dict[str, tuple[type[ColdStartRecommender], type[ColdStartConfig]]] = {
    "content_regression": (ContentRegression, ContentRegressionConfig),
    "dropoutnet": (DropoutNet, DropoutNetConfig),
    "aldi": (ALDI, ALDIConfig),
    "collective_ease": (CollectiveEASE, CollectiveEASEConfig),
    "additive_ease": (AdditiveEASE, AdditiveEASEConfig),
}
#: the models with a backbone and a seeded training (the others are closed forms)
TRAINED: frozenset[str] = frozenset({"content_regression", "dropoutnet", "aldi"})

__all__ = ["ALDI", "AdditiveEASE", "CollectiveEASE", "ContentRegression", "DropoutNet", "MODELS", "TRAINED",
           "candidates", "default_backbone"]


def candidates(model: str, content: np.ndarray, grid: Mapping[str, Sequence[Any]],
               fixed: Mapping[str, Any] | None = None, seed: int = 0,
               backbone: Recommender | None = None) -> list[Candidate]:
    """One :class:`~vlm4rec.evaluation.Candidate` per point of the product of ``grid``'s lists (in the grid's
    key order, last key fastest), each building ``model`` over ``content`` with the configuration
    ``{**fixed, **point}`` (validated by the model's config type before any training; a ``device`` key goes
    to :class:`~vlm4rec.training.TrainingOptions` with ``seed``). A trained model gets ``backbone``: pass one
    :class:`~vlm4rec.cold_start.FittedOnce` to share its fit among the candidates (None: each candidate fits
    its own default backbone)."""
    if model not in MODELS:
        raise ValueError(f"unknown cold-start model {model!r}; expected one of {sorted(MODELS)}")
    cls, config_type = MODELS[model]
    fixed = dict(fixed or {})
    if "seed" in fixed or "seed" in grid:
        raise ValueError("the seed is an argument of candidates(), not a grid value or fixed option")
    if model not in TRAINED and ("device" in fixed or "device" in grid or backbone is not None):
        raise ValueError(f"{model} is a closed form: it takes no device and no backbone")
    out = []
    for values in itertools.product(*grid.values()):
        config = {**fixed, **dict(zip(grid, values))}
        json.dumps(config)  # configs are saved as JSON
        settings = config_type(**{key: value for key, value in config.items() if key != "device"})
        extra = ({"backbone": backbone, "options": TrainingOptions(device=config.get("device", "cpu"), seed=seed)}
                 if model in TRAINED else {})
        out.append(Candidate(config=config, build=partial(cls, content, settings, **extra)))
    return out
