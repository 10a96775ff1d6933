"""The method catalogue: every method family of the study once, with its kind, what it can score and its
typed configuration.

A *family* is what the tables and tests group results by (:attr:`vlm4rec.evaluation.MethodKey.family`). Its
name is fixed for the closed families (``ease``, ``fusion_gating``) and formed from the study's names for the
open ones: a profile family is named by its representation (``title``), a hybrid by
``hybrid_<representation>_ease`` (:func:`hybrid_method`), a multimodal recommender by its graph cell
(``freedom-description-image``, ``params.yaml: graph.cells``). The names are formed here and resolved here
(:func:`family_of`), so that no module tells families apart by how their names look.

Each trainable model holds a pydantic configuration (as LensKit's ``ALSConfig`` beside ``ALS``): the model
validates its options with it at construction, and ``params.yaml``'s per-model options
(``graph.training.<regime>.models.<model>``) and grid points (``graph.<scale>.grids.<model>``) are validated
against it when params.yaml is loaded (:func:`option_problems`), before any data is read. The configurations
live here, without torch, so that validating params.yaml never imports the models.

Adding a model is one entry of :data:`CATALOGUE` (its kind, what it scores, its configuration and the class
that implements it) plus the class itself.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any, Collection, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Kind = Literal["profile", "baseline", "fusion", "hybrid", "graph_model", "cold_start_model"]
Init = Literal["normal", "reference"]
Negatives = Literal["all", "seen"]
NewItemScoring = Literal["learned", "content"]
ModalityMix = Literal["fixed", "learned"]
L2Norm = Literal["squared", "frobenius"]
ContentGraph = Literal["transductive", "inductive"]


# ----------------------------------------------------------------------------------------------- configurations

class BPRConfig(BaseModel):
    """The BPR training options every multimodal recommender shares
    (:class:`~vlm4rec.multimodal.bpr.BPRRecommender`; its docstring says what each does). Defaults are the
    fast regime's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(64, ge=1, description="embedding size")
    lr: float = Field(0.05, gt=0, description="Adam learning rate")
    l2: float = Field(1e-4, ge=0, description="weight of the model's L2 term")
    l2_norm: L2Norm = Field("squared", description="squared (0.5 * squared rows / batch: the papers' L2) | "
                                                   "frobenius (MMRec's EmbLoss: each block's norm / batch)")
    epochs: int = Field(60, ge=0, description="epochs of fit; the most fit_monitored trains")
    batch_size: int = Field(32768, ge=1, description="(user, positive, negative) triples per Adam step")
    eval_every: int = Field(5, ge=1, description="epochs between validation checks")
    patience: int = Field(2, ge=1, description="checks without improvement before stopping")
    init: Init = Field("normal", description="initialisation of the ID tables and layers")
    lr_decay: float = Field(1.0, gt=0, le=1, description="learning rate * lr_decay^(epoch / lr_decay_step)")
    lr_decay_step: float = Field(50.0, gt=0, description="epochs over which the learning rate falls by lr_decay")
    negatives: Negatives = Field("all", description="BPR negatives from every item or the seen ones")
    unseen_items: NewItemScoring = Field(
        "learned", description="new items: learned ID parameters, or scored from content alone")


class LightGCNConfig(BPRConfig):
    layers: int = Field(3, ge=0, description="propagation depth K")


VBPRPenalty = Literal["batch", "paper"]
VBPRSplit = Literal["half", "each"]


class VBPRConfig(BPRConfig):
    lr: float = Field(0.01, gt=0, description="Adam learning rate")
    l2: float = Field(1e-2, ge=0, description="batch: the L2 term on the batch's scoring vectors; paper: "
                                               "lambda_Theta on the batch's ID parameters")
    penalty: VBPRPenalty = Field("batch", description="batch (the scoring vectors, as MMRec) | paper (lambda_Theta "
                                                      "on the ID parameters, l2_content on E and beta')")
    l2_content: float = Field(0.0, ge=0, description="the paper penalty's lambda_E on E and beta'")
    split: VBPRSplit = Field("half", description="half (gamma and theta dim / 2 each) | each (dim each: "
                                                 "MMRec's 64 + 64)")

    @model_validator(mode="after")
    def _content_penalty_needs_the_paper_penalty(self) -> "VBPRConfig":
        if self.l2_content and self.penalty != "paper":
            raise ValueError(f"l2_content={self.l2_content} applies only with penalty='paper' "
                             f"(penalty={self.penalty!r} penalises E and beta' through the scoring vectors)")
        if self.penalty == "paper" and self.l2_norm != "squared":
            raise ValueError(f"penalty='paper' is the paper's squared L2; l2_norm={self.l2_norm!r} applies only "
                             f"with penalty='batch' (MMRec's EmbLoss of the scoring vectors)")
        return self


class ItemGraphConfig(LightGCNConfig):
    """The options of the models with item-item content graphs (FREEDOM, SMORE)."""

    content_graph: ContentGraph = Field(
        "transductive", description="new items: graphs over every item's features (transductive in content) | "
                                    "over the warm items, each new item inserted at scoring (inductive)")

    @model_validator(mode="after")
    def _inductive_graphs_need_new_items(self) -> "ItemGraphConfig":
        if self.content_graph == "inductive" and self.unseen_items != "content":
            raise ValueError("content_graph='inductive' inserts the new items at scoring; it needs "
                             f"unseen_items='content' (got {self.unseen_items!r})")
        return self


class FREEDOMConfig(ItemGraphConfig):
    layers: int = Field(2, ge=0, description="user-item LightGCN layers")
    l2: float = Field(0.0, ge=0, description="LightGCN's ego-embedding L2 term (0: the reference loss)")
    item_layers: int = Field(1, ge=1, description="item-item graph convolutions")
    knn_k: int = Field(10, ge=1, description="neighbours per item in each modality graph, itself included")
    edge_drop: float = Field(0.8, ge=0, lt=1, description="share of user-item edges pruned per epoch")
    projection_weight: float = Field(1e-3, ge=0, description="weight of the modality projection BPR losses")
    modality_mix: ModalityMix = Field("fixed", description="the reference's fixed graph weights "
                                                                           "or learned ones")
    image_weight: float = Field(0.1, ge=0, le=1, description="the image graph's weight in the fixed mix")
    image_modality: str = Field("image", description="the modality name that plays the image role")
    finetune_features: bool = Field(False, description="train the normalised feature tables too")


class SMOREConfig(ItemGraphConfig):
    lr_decay: float = Field(0.96, gt=0, le=1, description="learning rate * lr_decay^(epoch / lr_decay_step)")
    item_layers: int = Field(1, ge=1, description="item-item graph convolutions per view")
    image_knn_k: int = Field(10, ge=1, description="neighbours per item in the image graph, itself included")
    text_knn_k: int = Field(10, ge=1, description="neighbours per item in the text graph, itself included")
    cl_weight: float = Field(0.01, ge=0, description="weight of the InfoNCE terms")
    temperature: float = Field(0.2, gt=0, description="InfoNCE temperature")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the preference gates")
    image_modality: str = Field("image", description="the name of the image modality")
    finetune_features: bool = Field(False, description="train the normalised feature tables too")


# ----------------------------------------------------------------------------------------------- catalogue

@dataclass(frozen=True)
class Family:
    """One method family: its catalogue ``name``, ``kind``, display name, whether it can score warm items
    (with interactions in the fitted history) and new items (without any), why not (``no_signal``), a note on
    how it scores new items (``note``), its typed configuration and the class that implements it
    (``module:Class``, imported on demand by :meth:`implementation`)."""

    name: str
    kind: Kind
    display: str
    scores_warm: bool = True
    scores_new: bool = True
    no_signal: str = ""
    note: str = ""
    config: type[BPRConfig] | None = None
    implemented_by: str = ""
    uses_content: bool = True

    def implementation(self) -> type:
        """The class that implements the family (imported now: torch models are not loaded with the catalogue)."""
        module, _, name = self.implemented_by.partition(":")
        return getattr(importlib.import_module(module), name)


PROFILE = Family("profile", "profile", "profile matching")
HYBRID = Family("hybrid", "hybrid", "content + EASE^R hybrid",
                note="the EASE^R part gives new items no signal: their order among themselves is the content's")

#: Every family, in the order the study lists them (the order of the no-signal notes in the new-item metrics).
CATALOGUE: dict[str, Family] = {family.name: family for family in (
    PROFILE,
    Family("mostpop", "baseline", "MostPop", scores_new=False, uses_content=False,
           no_signal="no signal for new items (popularity counts training interactions: a new item has none)"),
    Family("itemknn_cf", "baseline", "ItemKNN-CF", scores_new=False, uses_content=False,
           no_signal="no signal for new items (a new item has no co-interactions)"),
    Family("ease", "baseline", "EASE^R", scores_new=False, uses_content=False,
           no_signal="no signal for new items (a new item's column of the training matrix is empty)"),
    Family("fusion_late", "fusion", "weighted late fusion"),
    Family("fusion_attention", "fusion", "attention fusion"),
    Family("fusion_gating", "fusion", "gating fusion"),
    Family("fusion_frequency_filter", "fusion", "frequency-filter fusion"),
    HYBRID,
    Family("lightgcn", "graph_model", "LightGCN", scores_new=False, uses_content=False,
           no_signal="no signal for new items (a new item has no edge and no learned embedding)",
           config=LightGCNConfig, implemented_by="vlm4rec.multimodal.lightgcn:LightGCN"),
    Family("vbpr", "graph_model", "VBPR", config=VBPRConfig, implemented_by="vlm4rec.multimodal.vbpr:VBPR"),
    Family("freedom", "graph_model", "FREEDOM", config=FREEDOMConfig,
           implemented_by="vlm4rec.multimodal.freedom:FREEDOM"),
    Family("smore", "graph_model", "SMORE", config=SMOREConfig, implemented_by="vlm4rec.multimodal.smore:SMORE"),
    Family("content_regression", "cold_start_model", "content regression (DeepMusic-style)",
           implemented_by="vlm4rec.coldstart.regression:ContentRegression"),
    Family("dropoutnet", "cold_start_model", "DropoutNet", implemented_by="vlm4rec.coldstart.dropoutnet:DropoutNet"),
    Family("aldi", "cold_start_model", "ALDI", implemented_by="vlm4rec.coldstart.aldi:ALDI"),
    Family("collective_ease", "cold_start_model", "cEASE^R (collective)",
           implemented_by="vlm4rec.coldstart.side_ease:CollectiveEASE"),
    Family("additive_ease", "cold_start_model", "Add-EASE^R (additive)",
           implemented_by="vlm4rec.coldstart.side_ease:AdditiveEASE"),
)}

LEARNED_FUSIONS = ("attention", "gating", "frequency_filter")


def of_kind(*kinds: Kind) -> tuple[str, ...]:
    """The catalogue names of the families of ``kinds``, in catalogue order."""
    return tuple(name for name, family in CATALOGUE.items() if family.kind in kinds)


#: The trained recommenders a graph cell can run (``params.yaml: graph.cells.*.model``).
TRAINED_MODELS = tuple(name for name, family in CATALOGUE.items() if family.config is not None)


def fusion_method(kind: str) -> str:
    """The family name of a content fusion: ``late`` or a learned kind (``gating``) -> ``fusion_gating``."""
    name = f"fusion_{kind}"
    if CATALOGUE.get(name, PROFILE).kind != "fusion":
        raise ValueError(f"unknown fusion {kind!r}; the catalogue's: {', '.join(of_kind('fusion'))}")
    return name


HYBRID_NAME = "hybrid_{}_ease"


def hybrid_method(representation: str) -> str:
    """The family name of the content + EASE^R hybrid of ``representation``."""
    return HYBRID_NAME.format(representation)


def hybrid_representation(method: str) -> str | None:
    """The representation of the hybrid family ``method`` (the inverse of :func:`hybrid_method`), or None."""
    match = re.fullmatch(re.escape(HYBRID_NAME).replace(r"\{\}", "(.+)"), method)
    return match.group(1) if match else None


def cold_start_method(model: str, representation: str) -> str:
    """The family name of the dedicated cold-start recommender ``model`` fed ``representation``
    (``collective_ease-title``)."""
    if CATALOGUE.get(model, PROFILE).kind != "cold_start_model":
        raise ValueError(f"unknown cold-start model {model!r}; the catalogue's: {', '.join(of_kind('cold_start_model'))}")
    return f"{model}-{representation}"


def cold_start_parts(method: str) -> tuple[str, str] | None:
    """(model, representation) of the cold-start family ``method`` (the inverse of :func:`cold_start_method`),
    or None."""
    model, dash, representation = method.partition("-")
    return (model, representation) if dash and representation and model in of_kind("cold_start_model") else None


def family_of(method: str, representations: Collection[str] = (), graph_models: Mapping[str, str] | None = None
              ) -> Family | None:
    """The catalogue family of the result family ``method``: a closed family by its name, a graph cell (a key
    of ``graph_models``, cell -> model) by its model, a name of ``representations`` as profile matching, a
    hybrid and a cold-start recommender by their name rules (:func:`hybrid_method`, :func:`cold_start_method`); None when none of these names it."""
    graph_models = graph_models or {}
    if method in CATALOGUE and method not in (PROFILE.name, HYBRID.name):
        return CATALOGUE[method]
    if method in graph_models:
        return CATALOGUE[graph_models[method]]
    if method in representations:
        return PROFILE
    if (parts := cold_start_parts(method)) is not None:
        return CATALOGUE[parts[0]]
    return HYBRID if hybrid_representation(method) is not None else None


def is_kind(method: str, kind: Kind, **context: Any) -> bool:
    """Whether the result family ``method`` is of ``kind`` (:func:`family_of` with ``context``)."""
    family = family_of(method, **context)
    return family is not None and family.kind == kind


# ----------------------------------------------------------------------------------------------- params.yaml options

#: Options a model takes that params.yaml's per-model options and grids may not set: the study sets them itself.
STUDY_SET = {"device": "the device of every model is graph.device",
             "seed": "the seeds are graph.<scale>.seeds",
             "unseen_items": "the protocol sets it (the cold_start stage scores new items from content alone)",
             "modalities": "a cell's modalities are graph.cells.<cell>.modalities"}


def option_problems(model: str, options: Mapping[str, Any], key: str) -> list[str]:
    """Why ``options`` (shared regime options merged with the model's own, or one grid point) cannot
    configure ``model``: one line per bad option, each naming its params.yaml key (``key`` + option)."""
    family = CATALOGUE.get(model)
    if family is None or family.config is None:
        return [f"{key}: {model!r} is not a trained model of the catalogue ({', '.join(TRAINED_MODELS)})"]
    problems = [f"{key}.{name}: not an option params.yaml may set ({reason})"
                for name, reason in STUDY_SET.items() if name in options]
    settable = {name: value for name, value in options.items() if name not in STUDY_SET}
    try:
        family.config.model_validate(settable)
    except ValidationError as err:
        fields = family.config.model_fields
        for error in err.errors():
            name = ".".join(map(str, error["loc"]))
            if error["type"] == "extra_forbidden":
                problems.append(f"{key}.{name}: {family.display} has no option {name!r} (its options: "
                                f"{', '.join(n for n in fields if n not in STUDY_SET)})")
            else:
                problems.append(f"{key}.{name} = {error.get('input')!r}: {error['msg']}")
    return problems
