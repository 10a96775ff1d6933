"""Scale-out on Ray: the ground, embed, match and robustness stages' heavy work on a Ray cluster, same results.

This package holds the cluster configuration and the actor-pool plumbing; one module per stage's work
(:mod:`.grounding`, :mod:`.embedding`, :mod:`.matching`) so that a stage depends only on its own.

``compute.executor: ray`` with ``compute.ray`` (:class:`~vlm4rec.config.RayParams`) runs, instead of the local
loops:

* grounding: :class:`.grounding.RayDescriber` plugs into :func:`vlm4rec.grounding.ground_items`. The driver still
  works out what the cache lacks and writes every finished batch into the SQLite cache (the one writer);
  a Ray Data pipeline describes the batches with ``map_batches`` over a pool of ``actors`` actors, each
  holding one grounder built from a picklable :class:`GrounderSpec` and reading the images from their
  paths (with the sha256 check of a local run). With ``pin_servers`` each actor of an ``openai`` fleet
  sends its requests to its own server while that server is in.
* embedding: :func:`.embedding.encode_texts_ray` and :func:`.embedding.encode_image_paths_ray`, the same encoder batches as the
  local :func:`~vlm4rec.encoders.encode_texts` / :func:`~vlm4rec.encoders.encode_image_paths`, on actors.
* matching: :func:`.matching.recommend_ray`, one Ray task per block of users, all reading the fitted model (item
  matrix, profiles) from the object store, where it is put once; top-K lists come back in user order.
  :func:`.matching.ranker` picks the ranking function for ``compute.executor`` x ``eval.device``.

Each batch or block is one Ray task. When its worker dies, Ray Data restarts the actor and runs the batch
again, at most :data:`MAX_BATCH_ATTEMPTS` times in all: a batch that kills its actor every time (a poison
batch) then comes back as :class:`WorkerDied`, which grounding records as failed items (counted like any
other grounding failure) and embedding reports as an error, and the other batches go on. A Python
exception is no death: it fails the run. A matching task is rerun up to 3 times. The run completes with
every batch written once. Ray is imported only in here, and only when one of these runs:
the package imports and runs without it.
"""
from __future__ import annotations

import importlib.util
import pickle
import socket
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlm4rec.config import ComputeParams, RayParams
from vlm4rec.errors import StudyError, os_reason


def ray_config(compute: ComputeParams) -> RayParams | None:
    """The Ray cluster settings ``compute.ray`` when ``compute.executor`` is ``ray``; None for ``local``."""
    return compute.ray if compute.executor == "ray" else None


def connect(config: RayParams) -> None:
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
    check_reachable(config.address)
    import vlm4rec

    ray.init(address=config.address, runtime_env={"py_modules": [vlm4rec]})


#: Seconds a cluster's head has to accept a connection (Ray itself would retry for minutes).
CONNECT_TIMEOUT_S = 10.0


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A :class:`StudyError` unless the head of ``compute.ray.address`` (``host:port`` or
    ``ray://host:port``) accepts a TCP connection within ``timeout_s``; ``auto`` is Ray's own quick lookup."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise StudyError(f"compute.ray.address {address!r} must be auto, host:port or ray://host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise StudyError(f"compute.ray.address {address}: the Ray head did not accept a connection within "
                         f"{timeout_s:g} s ({os_reason(err)}). Start the cluster (ray start --head), fix the "
                         "address, or set it to null to start a local cluster.") from None


# --------------------------------------------------------------------------------------------------
# Actor pools over Ray Data
# --------------------------------------------------------------------------------------------------

#: Runs of one batch whose worker dies (the first and Ray's retries) before it counts as :class:`WorkerDied`.
MAX_BATCH_ATTEMPTS = 3


@dataclass(frozen=True)
class WorkerDied:
    """The result of a batch whose worker process died on each of its ``attempts`` (a poison batch: an
    input that crashes the model or exhausts its memory every time)."""

    attempts: int = MAX_BATCH_ATTEMPTS

    def __str__(self) -> str:
        return (f"the Ray worker died on each of the {self.attempts} runs of this batch (an input that crashes "
                "the model or exhausts its memory?); see the Ray worker logs")


@dataclass(frozen=True)
class _Raised:
    """A Python exception of :meth:`_BatchActor.process`, carried back to the driver to be raised there (a
    block that errors in Ray Data would count as a dead worker's)."""

    error: BaseException


class _BatchActor(ABC):
    """A Ray Data actor: each input row is one pickled (index, work) pair, each output row the pickled
    (index, result) of :meth:`process` (or its exception)."""

    @abstractmethod
    def process(self, index: int, work: Any) -> Any:
        """The result of one work item (one batch)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [pickle.dumps((index, self._process(index, work)))
                   for index, work in map(pickle.loads, batch["payload"])]
        return {"payload": np.array(results, dtype=object)}

    def _process(self, index: int, work: Any) -> Any:
        try:
            return self.process(index, work)
        except Exception as err:  # noqa: BLE001 - raised again by the driver
            return _Raised(err)


def _stream(works: Sequence[Any], actor: type[_BatchActor], options: dict[str, Any],
            config: RayParams) -> Iterator[tuple[int, Any]]:
    """(index, result) of every work item, processed by a pool of ``config.actors`` actors of ``actor``
    (built with ``options``), yielded as each finishes (any order). One item is one block and one task, so
    a finished item streams back at once and a retry repeats one item. An item whose worker died on each of
    its :data:`MAX_BATCH_ATTEMPTS` runs is yielded last, with a :class:`WorkerDied` result; an exception of
    ``process`` is raised here."""
    import ray

    if not works:
        return
    rows = [{"payload": pickle.dumps((index, work))} for index, work in enumerate(works)]
    with warnings.catch_warnings():  # Ray 2.60 has no named parameter for the retries of an actor's task
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", category=DeprecationWarning)
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            actor, fn_constructor_kwargs=options, batch_size=1,
            # one batch in flight per actor: a dying actor takes only its own batch's attempt with it
            compute=ray.data.ActorPoolStrategy(size=config.actors, max_tasks_in_flight_per_actor=1),
            num_cpus=config.num_cpus,
            num_gpus=config.num_gpus, max_restarts=-1, max_task_retries=MAX_BATCH_ATTEMPTS - 1)
    dataset.context.enable_progress_bars = False  # the caller shows its own bar
    dataset.context.print_on_execution_start = False
    dataset.context.max_errored_blocks = len(rows)  # a batch that killed its worker every time: WorkerDied below
    done: set[int] = set()
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for payload in batch["payload"]:
            index, result = pickle.loads(payload)
            if isinstance(result, _Raised):
                raise result.error
            done.add(index)
            yield index, result
    for index in sorted(set(range(len(works))) - done):
        yield index, WorkerDied()


def _completed(results: Iterator[tuple[int, Any]], what: str) -> Iterator[tuple[int, Any]]:
    """The results of :func:`_stream` where every batch must succeed (embedding): a :class:`WorkerDied`
    batch is a StudyError naming ``what`` and the batch."""
    for index, result in results:
        if isinstance(result, WorkerDied):
            raise StudyError(f"{what} on Ray: batch {index}: {result}")
        yield index, result
