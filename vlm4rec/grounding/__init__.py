"""Grounding: item image -> natural-language description, cached (docs/protocol.md, "Method").

Backends: ``tagger`` (offline default, classifier-grounded; not an LVLM), ``hf`` (transformers
vision-language models) and ``openai`` (OpenAI-compatible servers). :func:`ground_items` runs one over a
catalogue through a :class:`DescriptionCache`.
"""
from __future__ import annotations

from typing import Any, get_args

from vlm4rec.config import GrounderBackend, OpenAIParams, validate_section
from vlm4rec.grounding.base import Grounder, GroundingError
from vlm4rec.grounding.cache import CacheEntry, DescriptionCache, cache_key
from vlm4rec.grounding.prompts import IMAGE_ONLY, IMAGE_TITLE, PROMPT_ARMS, build_prompt, mentions_title
from vlm4rec.grounding.runner import GroundingResult, ground_items

GROUNDERS: tuple[GrounderBackend, ...] = get_args(GrounderBackend)


def build_grounder(kind: str, **options: Any) -> Grounder:
    """The grounder ``kind`` (one of :data:`GROUNDERS`) built with ``options`` (its ``params.yaml:
    ground.<kind>`` keys: the constructor's keyword arguments, or for ``openai`` its validated section).
    Backends are imported only when asked for."""
    if kind == "tagger":
        from vlm4rec.grounding.tagger import TaggerGrounder
        return TaggerGrounder(**options)
    if kind == "hf":
        from vlm4rec.grounding.hf import HFGrounder
        return HFGrounder(**options)
    if kind == "openai":
        from vlm4rec.grounding.openai_api import OpenAIGrounder
        prefer_first = options.pop("prefer_first", False)  # a Ray actor's pinning, not a params.yaml key
        return OpenAIGrounder(validate_section(OpenAIParams, options, ("ground", "openai")), prefer_first)
    raise ValueError(f"unknown grounder {kind!r}; expected one of {GROUNDERS}")


__all__ = ["GROUNDERS", "IMAGE_ONLY", "IMAGE_TITLE", "PROMPT_ARMS", "CacheEntry", "DescriptionCache", "Grounder",
           "GroundingError", "GroundingResult", "build_grounder", "build_prompt", "cache_key", "ground_items",
           "mentions_title"]
