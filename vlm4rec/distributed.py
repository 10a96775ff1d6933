"""Scale-out on Ray: the ground, embed and match stages' heavy work on a Ray cluster, same results.

``compute.executor: ray`` with ``compute.ray`` (:class:`RayConfig`) runs, instead of the local loops:

* grounding: :class:`RayDescriber` plugs into :func:`vlm4rec.grounding.ground_items`. The driver still
  works out what the cache lacks and writes every finished batch into the SQLite cache (the one writer);
  a Ray Data pipeline describes the batches with ``map_batches`` over a pool of ``actors`` actors, each
  holding one grounder built from a picklable :class:`GrounderSpec` and reading the images from their
  paths (with the sha256 check of a local run). With ``pin_servers`` each actor of an ``openai`` fleet
  sends its requests to its own server while that server is in.
* embedding: :func:`encode_texts_ray` and :func:`encode_image_paths_ray`, the same encoder batches as the
  local :func:`~vlm4rec.encoders.encode_texts` / :func:`~vlm4rec.encoders.encode_image_paths`, on actors.
* matching: :func:`recommend_ray`, one Ray task per block of users, all reading the fitted model (item
  matrix, profiles) from the object store, where it is put once; top-K lists come back in user order.
  :func:`ranker` picks the ranking function for ``compute.executor`` x ``eval.device``.

Each batch or block is one Ray task, retried with Ray's defaults when its worker dies: Ray Data restarts a
dead actor and reruns its batch without limit (a batch that kills its actor every time would loop; a
Python exception is no death, it fails the run), a matching task is rerun up to 3 times. The run
completes with every batch written once. Ray is imported only in here, and only when one of these runs:
the package imports and runs without it.
"""
from __future__ import annotations

import functools
import importlib.util
import pickle
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from vlm4rec.errors import StudyError
from vlm4rec.grounding import build_grounder
from vlm4rec.grounding.base import Grounder, GroundingStopped
from vlm4rec.grounding.runner import DescribedBatch, Describer, GrounderIdentity, Unit, describe_batch
from vlm4rec.matching import Recommender, recommend, recommend_torch

if TYPE_CHECKING:  # torch comes with the encoders: imported where they run, not by grounding or matching workers
    from vlm4rec.encoders import ImageEncoder, ImageFeatures

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class RayConfig:
    """``compute.ray``: ``address`` of the cluster (None: start a local one on this machine, ``auto``: the
    cluster this node belongs to, ``ray://host:port``: a remote head); resources of each actor or task
    (``num_cpus``, ``num_gpus``; a GPU per actor runs its model on ``cuda``); ``actors`` per pool; with
    ``pin_servers`` each grounding actor prefers its own server of an ``openai`` fleet."""

    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    actors: int = 2
    pin_servers: bool = False

    def __post_init__(self) -> None:
        if self.actors < 1 or self.num_cpus < 0 or self.num_gpus < 0:
            raise StudyError(f"compute.ray needs actors >= 1, num_cpus >= 0 and num_gpus >= 0; got actors="
                             f"{self.actors}, num_cpus={self.num_cpus}, num_gpus={self.num_gpus}")

    @property
    def device(self) -> str:
        """Where an actor runs its model: ``cuda`` (the GPU Ray gave it) when actors get GPUs, else ``cpu``."""
        return "cuda" if self.num_gpus > 0 else "cpu"


def ray_config_from_params(compute: dict[str, Any]) -> RayConfig | None:
    """The :class:`RayConfig` of ``params.yaml: compute`` when ``compute.executor`` is ``ray``; None for
    ``local`` (the default)."""
    executor = compute.get("executor", "local")
    if executor not in EXECUTORS:
        raise StudyError(f"compute.executor must be one of {EXECUTORS}, got {executor!r}")
    if executor == "local":
        return None
    options = compute.get("ray") or {}
    unknown = sorted(set(options) - set(RayConfig.__dataclass_fields__))
    if unknown:
        raise StudyError(f"compute.ray has unknown keys {unknown}; known: {sorted(RayConfig.__dataclass_fields__)}")
    return RayConfig(**options)


def connect(config: RayConfig) -> None:
    """Join the cluster ``config.address`` names, or start a local one, unless this process is connected
    already (then that cluster is used). A remote cluster gets this process's ``vlm4rec`` package, so that
    its workers run the same code as the driver."""
    import ray

    if ray.is_initialized():
        return
    if config.address is None:
        ray.init(include_dashboard=False)
        return
    if config.address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise StudyError(f"compute.ray.address {config.address} needs the Ray Client (pip install "
                         "'ray[client]==2.60.0', not pinned here); or run the stage on a node of the cluster "
                         "with address: auto")
    import vlm4rec

    ray.init(address=config.address, runtime_env={"py_modules": [vlm4rec]})


# --------------------------------------------------------------------------------------------------
# Actor pools over Ray Data
# --------------------------------------------------------------------------------------------------

class _BatchActor(ABC):
    """A Ray Data actor: each input row is one pickled (index, work) pair, each output row the pickled
    (index, result) of :meth:`process`."""

    @abstractmethod
    def process(self, index: int, work: Any) -> Any:
        """The result of one work item (one batch)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [pickle.dumps((index, self.process(index, work)))
                   for index, work in map(pickle.loads, batch["payload"])]
        return {"payload": np.array(results, dtype=object)}


def _stream(works: Sequence[Any], actor: type[_BatchActor], options: dict[str, Any],
            config: RayConfig) -> Iterator[tuple[int, Any]]:
    """(index, result) of every work item, processed by a pool of ``config.actors`` actors of ``actor``
    (built with ``options``), yielded as each finishes (any order). One item is one block and one task, so
    a finished item streams back at once and a retry repeats one item."""
    import ray

    if not works:
        return
    rows = [{"payload": pickle.dumps((index, work))} for index, work in enumerate(works)]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        actor, fn_constructor_kwargs=options, batch_size=1, compute=ray.data.ActorPoolStrategy(size=config.actors),
        num_cpus=config.num_cpus, num_gpus=config.num_gpus)
    dataset.context.enable_progress_bars = False  # the caller shows its own bar
    dataset.context.print_on_execution_start = False
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for payload in batch["payload"]:
            yield pickle.loads(payload)


# --------------------------------------------------------------------------------------------------
# Grounding
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GrounderSpec:
    """How to build a grounder on an actor: :func:`vlm4rec.grounding.build_grounder` ``kind`` and its
    keyword ``options`` (``params.yaml: ground.<backend>``). Picklable; the model is built where it runs."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Grounder:
        return build_grounder(self.kind, **self.options)

    def pinned(self, slot: int) -> "GrounderSpec":
        """The spec of the actor in ``slot``: an ``openai`` fleet rotated to start at server ``slot``
        (modulo the fleet's size), which it prefers while that server is in; any other spec as it is."""
        urls = self.options.get("base_url")
        if self.kind != "openai" or isinstance(urls, str) or not urls:
            return self
        start = slot % len(urls)
        return replace(self, options={**self.options, "base_url": [*urls[start:], *urls[:start]],
                                      "prefer_first": True})


@dataclass
class _Slots:
    """Hands out 0, 1, 2, ... to the actors of one pool (a Ray actor), for server pinning."""

    taken: int = 0

    def take(self) -> int:
        self.taken += 1
        return self.taken - 1


class _GroundingActor(_BatchActor):
    """Holds one grounder; describes one batch of units per call. A stop (every server unreachable) is
    returned, not raised, so that the driver gets it as it is."""

    def __init__(self, spec: GrounderSpec, slots: Any = None):
        import ray

        self.grounder = (spec.pinned(ray.get(slots.take.remote())) if slots is not None else spec).build()

    def process(self, index: int, work: list[tuple[str, str, str, str]]) -> DescribedBatch | GroundingStopped:
        units = [Unit(key, sha256, Path(path), prompt) for key, sha256, path, prompt in work]
        try:
            return describe_batch(index, units, self.grounder)
        except GroundingStopped as stop:
            return stop


def _identity_of(spec: GrounderSpec) -> GrounderIdentity:
    return GrounderIdentity.of(spec.build())


class RayDescriber(Describer):
    """Describes pending batches on a Ray Data actor pool; pass it to ``ground_items`` as the grounder.

    The grounder's identity (it keys the cache) comes from one grounder built in a Ray task with an
    actor's resources, so that the driver never loads a model. Each :meth:`describe` call starts its own
    pool (its actors load the model once each) and the actors end with it. Actors read the images at the
    paths the driver has: a relative path resolves in the worker's working directory (the driver's, on a
    local cluster), so a multi-node cluster needs absolute paths on a file system every node mounts.
    """

    def __init__(self, spec: GrounderSpec, config: RayConfig):
        import ray

        connect(config)
        self.spec, self.config = spec, config
        probe = ray.remote(num_cpus=config.num_cpus, num_gpus=config.num_gpus)(_identity_of)
        self.identity: GrounderIdentity = ray.get(probe.remote(spec))

    def describe(self, batches: list[list[Unit]]) -> Iterator[DescribedBatch]:
        import ray

        if not batches:
            return
        works = [[(u.key, u.sha256, str(u.path), u.prompt) for u in batch] for batch in batches]
        slots = ray.remote(num_cpus=0)(_Slots).remote() if self.config.pin_servers else None
        for _, done in _stream(works, _GroundingActor, {"spec": self.spec, "slots": slots}, self.config):
            if isinstance(done, GroundingStopped):
                raise done
            yield done


# --------------------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------------------

class _TextActor(_BatchActor):
    def __init__(self, spec: str, device: str, batch_size: int):
        from vlm4rec.encoders import load_text_encoder

        self.encoder, self.batch_size = load_text_encoder(spec, device), batch_size

    def process(self, index: int, work: list[str]) -> np.ndarray:
        from vlm4rec.encoders import encode_text_batch

        return encode_text_batch(work, self.encoder, self.batch_size)


def encode_texts_ray(texts: Sequence[str], encoder_spec: str, batch_size: int, config: RayConfig,
                     progress: bool = True) -> np.ndarray:
    """:func:`vlm4rec.encoders.encode_texts` with ``load_text_encoder(encoder_spec)`` on Ray actors: the same
    batches (longest texts first), so the same vectors up to float rounding of another thread count
    (within 1e-6). ``(0, 0)`` for no texts."""
    from vlm4rec.encoders import text_batches

    connect(config)
    batches = text_batches(texts, batch_size)
    out = np.zeros((len(texts), 0), dtype=np.float32)
    options = {"spec": encoder_spec, "device": config.device, "batch_size": batch_size}
    with tqdm(total=len(texts), unit="item", desc="encode texts (ray)", disable=not progress) as bar:
        for index, vectors in _stream([[texts[i] for i in rows] for rows in batches], _TextActor, options, config):
            if out.shape[1] != vectors.shape[1]:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[batches[index]] = vectors
            bar.update(len(vectors))
    return out


_EncodedImages = tuple[list[int], np.ndarray | None, list[tuple[int, str | None, str, str]], str, int]


class _ImageActor(_BatchActor):
    def __init__(self, factory: Callable[[], ImageEncoder], paths: list[str | Path | None]):
        self.encoder, self.paths = factory(), paths

    def process(self, index: int, work: range) -> _EncodedImages:
        """Indices encoded, their vectors, failure rows, the encoder's name and dimension."""
        from vlm4rec.encoders import prepare_image_batch

        batch = prepare_image_batch(self.paths, work, self.encoder)
        vectors = self.encoder.embed(batch.pixels) if batch.pixels is not None else None
        return batch.indices, vectors, batch.failures, self.encoder.name, self.encoder.dim


def encode_image_paths_ray(paths: Sequence[str | Path | None], encoder_factory: Callable[[], ImageEncoder],
                           batch_size: int, config: RayConfig, progress: bool = True) -> ImageFeatures:
    """:func:`vlm4rec.encoders.encode_image_paths` on Ray actors, each holding ``encoder_factory()`` (a
    picklable callable, e.g. ``functools.partial(EfficientNetLite0Features, device=config.device)``) and
    reading the images at ``paths`` (see :class:`RayDescriber` on paths). Same batches, same vectors up to
    float rounding of another thread count (within 1e-6), same failure rows."""
    from vlm4rec.encoders import ImageFeatures, failure_table

    connect(config)
    started = time.perf_counter()
    paths = list(paths)
    vectors, failures, encoder = np.zeros((len(paths), 0), dtype=np.float32), [], ""
    works = [range(start, min(start + batch_size, len(paths))) for start in range(0, len(paths), batch_size)]
    options = {"factory": encoder_factory, "paths": paths}
    with tqdm(total=len(paths), unit="img", desc="encode images (ray)", disable=not progress) as bar:
        for _, (indices, batch_vectors, batch_failures, encoder, dim) in _stream(works, _ImageActor, options, config):
            if vectors.shape[1] != dim:
                vectors = np.zeros((len(paths), dim), dtype=np.float32)
            if batch_vectors is not None:
                vectors[indices] = batch_vectors
            failures.extend(batch_failures)
            bar.update(len(indices) + len(batch_failures))
    failures.sort(key=lambda failure: failure[0])
    return ImageFeatures(vectors, failure_table(failures), encoder, time.perf_counter() - started)


# --------------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------------

Ranker = Callable[[Recommender, np.ndarray, sp.csr_matrix, int], np.ndarray]


def rank_here(model: Recommender, users: np.ndarray, exclude: sp.csr_matrix, k: int, block_size: int,
              device: str | None) -> np.ndarray:
    """In this process: :func:`~vlm4rec.matching.recommend` (``device`` None) or
    :func:`~vlm4rec.matching.recommend_torch` on ``device``."""
    if device is None:
        return recommend(model, users, exclude, k, block_size)
    return recommend_torch(model, users, exclude, k, block_size, device)


def recommend_ray(model: Recommender, users: np.ndarray, exclude: sp.csr_matrix, k: int, block_size: int,
                  config: RayConfig, device: str | None = None) -> np.ndarray:
    """:func:`rank_here` with each block of ``block_size`` users ranked by one Ray task; the fitted ``model``
    and ``exclude`` go to the object store once and every task reads them from there. Returns exactly the
    local engine's top-K lists, in user order."""
    import ray

    if device is not None and device.startswith("cuda") and config.num_gpus <= 0:
        raise StudyError("eval.device: cuda on Ray needs compute.ray.num_gpus > 0 (tasks see no GPU otherwise)")
    users = np.asarray(users, dtype=np.int64)
    if len(users) == 0:
        return recommend(model, users, exclude, k, block_size)
    connect(config)
    model_ref, exclude_ref = ray.put(model), ray.put(sp.csr_matrix(exclude))
    rank = ray.remote(num_cpus=config.num_cpus, num_gpus=config.num_gpus)(rank_here)
    blocks = [rank.remote(model_ref, users[start:start + block_size], exclude_ref, k, block_size, device)
              for start in range(0, len(users), block_size)]
    return np.concatenate(ray.get(blocks))


def ranker(config: RayConfig | None, device: str = "cpu", block_size: int = 2048) -> Ranker:
    """``rank(model, users, exclude, k)`` as ``compute`` (``config``: None = local) and ``eval.device`` ask:
    the numpy engine for ``cpu``, the torch engine on any other device; here or on Ray."""
    torch_device = None if device == "cpu" else device
    if config is None:
        return functools.partial(rank_here, block_size=block_size, device=torch_device)
    return functools.partial(recommend_ray, block_size=block_size, config=config, device=torch_device)
