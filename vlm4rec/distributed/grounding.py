"""Grounding on Ray: :class:`RayDescriber` describes the batches the cache lacks on an actor pool, each
actor holding one grounder built from a picklable :class:`GrounderSpec`; the driver writes the results."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm4rec.config import OpenAIParams, RayParams
from vlm4rec.distributed import WorkerDied, _BatchActor, _stream, connect
from vlm4rec.grounding import GrounderParams, build_grounder
from vlm4rec.grounding.base import Grounder, GroundingStopped
from vlm4rec.grounding.cache import FAILED, CacheEntry
from vlm4rec.grounding.runner import DescribedBatch, Describer, GrounderIdentity, Unit, describe_batch


@dataclass(frozen=True)
class GrounderSpec:
    """How to build a grounder on an actor: its section (``params.yaml: ground.<backend>``) for
    :func:`vlm4rec.grounding.build_grounder`, and an ``openai`` grounder's server pinning. Picklable; the model
    is built where it runs."""

    params: GrounderParams
    prefer_first: bool = False

    def build(self) -> Grounder:
        return build_grounder(self.params, self.prefer_first)

    def pinned(self, slot: int) -> "GrounderSpec":
        """The spec of the actor in ``slot``: an ``openai`` fleet rotated to start at server ``slot``
        (modulo the fleet's size), which it prefers while that server is in; any other spec as it is."""
        urls = self.params.base_url if isinstance(self.params, OpenAIParams) else None
        if isinstance(urls, str) or not urls:
            return self
        start = slot % len(urls)
        return GrounderSpec(self.params.model_copy(update={"base_url": [*urls[start:], *urls[:start]]}), True)


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

    def __init__(self, spec: GrounderSpec, config: RayParams):
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
        for index, done in _stream(works, _GroundingActor, {"spec": self.spec, "slots": slots}, self.config):
            if isinstance(done, GroundingStopped):
                raise done
            yield self._failed(index, batches[index], done) if isinstance(done, WorkerDied) else done

    def _failed(self, index: int, batch: list[Unit], died: WorkerDied) -> DescribedBatch:
        """A poison batch's units, each a failure of kind ``worker_died`` (counted, and retried by a later
        run like any failure)."""
        who = self.identity
        return DescribedBatch(index, [CacheEntry(key=u.key, image_sha256=u.sha256, grounder_id=who.grounder_id,
                                                 model_id=who.model_id, prompt=u.prompt, settings=who.settings,
                                                 status=FAILED, error_kind="worker_died", error=str(died))
                                      for u in batch], {})
