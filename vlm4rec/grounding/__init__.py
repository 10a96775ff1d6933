"""Grounding: item image -> natural-language description, cached (docs/protocol.md, "Method").

Backends: ``tagger`` (offline default, classifier-grounded; not an LVLM), ``hf`` (transformers
vision-language models) and ``openai`` (OpenAI-compatible servers). :func:`ground_items` runs one over a
catalogue through a :class:`DescriptionCache`.
"""
from __future__ import annotations

from vlm4rec.config import HFParams, OpenAIParams, TaggerParams
from vlm4rec.grounding.base import Grounder, GroundingError
from vlm4rec.grounding.cache import CacheEntry, DescriptionCache, cache_key
from vlm4rec.grounding.prompts import IMAGE_ONLY, IMAGE_TITLE, PROMPT_ARMS, build_prompt, mentions_title
from vlm4rec.grounding.runner import GroundingResult, ground_items

#: The sections that configure a grounder (``params.yaml: ground.<backend>``).
GrounderParams = TaggerParams | HFParams | OpenAIParams


def build_grounder(params: GrounderParams, prefer_first: bool = False) -> Grounder:
    """The grounder its section configures (``params.yaml: ground.<backend>``, e.g.
    ``build_grounder(ground.backend_params)``); ``prefer_first`` is an ``openai`` grounder's server pinning (a
    Ray actor's). Backends are imported only when asked for."""
    if isinstance(params, TaggerParams):
        from vlm4rec.grounding.tagger import TaggerGrounder
        return TaggerGrounder(params)
    if isinstance(params, HFParams):
        from vlm4rec.grounding.hf import HFGrounder
        return HFGrounder(params)
    if isinstance(params, OpenAIParams):
        from vlm4rec.grounding.openai_api import OpenAIGrounder
        return OpenAIGrounder(params, prefer_first)
    raise TypeError(f"{type(params).__name__} configures no grounder; expected TaggerParams, HFParams or OpenAIParams")


__all__ = ["IMAGE_ONLY", "IMAGE_TITLE", "PROMPT_ARMS", "CacheEntry", "DescriptionCache", "Grounder", "GrounderParams",
           "GroundingError", "GroundingResult", "build_grounder", "build_prompt", "cache_key", "ground_items",
           "mentions_title"]
