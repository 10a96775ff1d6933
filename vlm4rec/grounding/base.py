"""The grounder interface: images + prompts in, one description per image out.

A grounder's identity (``grounder_id``, ``model_id``, ``settings()``) is part of the description
cache key, so anything that can change its outputs must appear in one of the three.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from PIL import Image

from vlm4rec.errors import StudyError


class GroundingError(RuntimeError):
    """A grounder could not describe one image. ``kind`` is a short countable category."""

    def __init__(self, kind: str, reason: str):
        super().__init__(f"{kind}: {reason}")
        self.kind, self.reason = kind, reason


class GroundingStopped(StudyError):
    """A grounder cannot describe anything more in this run (e.g. every model server is unreachable).

    It ends the run rather than failing item after item; batches finished before it stay in the cache,
    so a rerun resumes where it stopped.
    """


class Grounder(ABC):
    """Describes images. Subclasses set ``grounder_id``, ``description_of_method`` and ``batch_size``.

    ``batch_size`` is how many images the runner hands over per call (and per cache commit).
    """

    grounder_id: ClassVar[str]
    description_of_method: ClassVar[str]
    batch_size: int

    @property
    @abstractmethod
    def model_id(self) -> str:
        """Model name or path plus revision (or a content fingerprint), e.g. ``Qwen/Qwen2-VL-2B@abc123``."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """JSON-serialisable decoding settings that change outputs (never secrets)."""

    @abstractmethod
    def describe(self, images: list[Image.Image], prompts: list[str]) -> list[str]:
        """One description per (RGB image, prompt) pair, in order. Raises on any failure."""

    def describe_outcomes(self, images: list[Image.Image], prompts: list[str]) -> list[str | GroundingError]:
        """Like :meth:`describe`, but a failing image yields a :class:`GroundingError` in its slot.

        Default: the whole batch at once; if that raises, each image alone, so one bad image does not
        fail its batch-mates. :class:`GroundingStopped` is never isolated: it ends the run. Backends whose
        requests are independent override this.
        """
        _check_lengths(images, prompts)
        try:
            return list(self.describe(images, prompts))
        except GroundingStopped:
            raise
        except Exception as err:  # noqa: BLE001 - isolated below, recorded per image
            if len(images) == 1:
                return [as_grounding_error(err)]
        outcomes: list[str | GroundingError] = []
        for image, prompt in zip(images, prompts):
            try:
                outcomes.append(self.describe([image], [prompt])[0])
            except GroundingStopped:
                raise
            except Exception as err:  # noqa: BLE001 - recorded per image
                outcomes.append(as_grounding_error(err))
        return outcomes

    def usage(self) -> dict[str, Any]:
        """Counts of the backend's work since the grounder was built (e.g. requests per server): nested
        dicts of integers, never secrets. Empty by default."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r}, settings={self.settings()!r})"


def as_grounding_error(err: Exception) -> GroundingError:
    """Wrap any exception raised while describing, keeping its type name as the kind."""
    if isinstance(err, GroundingError):
        return err
    return GroundingError(type(err).__name__, str(err))


def _check_lengths(images: list[Image.Image], prompts: list[str]) -> None:
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
