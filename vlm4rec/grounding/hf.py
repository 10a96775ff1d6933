"""``hf`` grounder: any transformers image-text-to-text model (LLaVA(-NeXT), Qwen2-VL / Qwen2.5-VL,
SmolVLM, Idefics3, ...) loaded with ``AutoProcessor`` + ``AutoModelForImageTextToText``.

Batched generation pads prompts on the LEFT: with right padding a shorter prompt's new tokens would be
generated after pad tokens, which corrupts its output (the reference code's LLaVA bug). Decoding is
greedy, so a batch yields exactly what each image yields alone (tested).

``local_files_only`` defaults to the ``HF_HUB_OFFLINE`` environment setting: offline machines load local
directories or the hub cache without network calls; online ones may download a hub id.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlm4rec.config import HFParams
from vlm4rec.errors import StudyError
from vlm4rec.grounding.base import Grounder

#: Files whose content (config) or size (weights) fingerprint a local model directory.
_CONFIG_FILES = ("config.json", "generation_config.json", "processor_config.json",
                 "preprocessor_config.json", "tokenizer_config.json", "chat_template.jinja",
                 "chat_template.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


class HFGrounder(Grounder):
    """Greedy, left-padded batched generation with a transformers vision-language model, configured by
    ``params.yaml: ground.hf`` (:class:`~vlm4rec.config.HFParams`).

    model: a local directory (``save_pretrained`` output) or a hub id. dtype: ``"auto"`` (the checkpoint's),
    or a torch dtype name such as ``"bfloat16"``. load_in_4bit: NF4 weights via bitsandbytes (CUDA only).
    min_new_tokens forces a fixed output length (benchmarks); 0 lets the model stop at end-of-sequence.
    """

    grounder_id = "hf"
    description_of_method = "hf (transformers vision-language model, greedy decoding)"

    def __init__(self, params: HFParams, min_new_tokens: int = 0):
        from huggingface_hub import constants
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not params.model:
            raise StudyError("the hf grounder needs ground.hf.model (a local model directory or a hub id)")
        model, device = params.model, params.device
        offline = constants.HF_HUB_OFFLINE if params.local_files_only is None else params.local_files_only
        resolved = _resolved_revision(model, params.revision, offline)
        load_args = {"revision": resolved, "local_files_only": offline}
        processor = AutoProcessor.from_pretrained(model, **load_args)
        loaded = AutoModelForImageTextToText.from_pretrained(
            model, dtype=_torch_dtype(params.dtype), **load_args, **_quantisation_args(device, params.load_in_4bit))
        self._attach(loaded if params.load_in_4bit else loaded.to(device), processor,
                     model_id=_model_identity(model, resolved), max_new_tokens=params.max_new_tokens,
                     min_new_tokens=min_new_tokens, batch_size=params.batch_size, load_in_4bit=params.load_in_4bit)

    def _attach(self, model: torch.nn.Module, processor: Any, *, model_id: str, max_new_tokens: int,
                min_new_tokens: int, batch_size: int, load_in_4bit: bool) -> None:
        """Set the grounder up around a built model and processor (benchmarks wrap a model built on a GPU
        this way, without writing a checkpoint)."""
        if min_new_tokens > max_new_tokens:
            raise ValueError(f"min_new_tokens={min_new_tokens} > max_new_tokens={max_new_tokens}")
        self.model, self.processor = model.eval(), processor
        self.tokenizer = _left_padded_tokenizer(processor)
        self._model_id, self.load_in_4bit = model_id, load_in_4bit
        self.max_new_tokens, self.min_new_tokens, self.batch_size = max_new_tokens, min_new_tokens, batch_size

    @property
    def model_id(self) -> str:
        return self._model_id

    def settings(self) -> dict[str, Any]:
        return {"decoding": "greedy", "max_new_tokens": self.max_new_tokens,
                "min_new_tokens": self.min_new_tokens, "dtype": str(self.model.dtype),
                "load_in_4bit": self.load_in_4bit}

    def chat_text(self, prompt: str) -> str:
        """The model's own chat template around one image and ``prompt``, ready for generation."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @torch.inference_mode()
    def describe(self, images: list[Image.Image], prompts: list[str]) -> list[str]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        inputs = self.processor(images=[[image] for image in images],
                                text=[self.chat_text(p) for p in prompts],
                                padding=True, return_tensors="pt")
        inputs = inputs.to(self.model.device, dtype=self.model.dtype)
        output = self.model.generate(**inputs, do_sample=False, num_beams=1,
                                     max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens,
                                     pad_token_id=self.tokenizer.pad_token_id)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _torch_dtype(dtype: str) -> str | torch.dtype:
    if dtype == "auto":
        return "auto"
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or a torch dtype name such as 'bfloat16'")
    return value


def _quantisation_args(device: str, load_in_4bit: bool) -> dict[str, Any]:
    """``from_pretrained`` arguments for NF4 weights placed on ``device`` (none without 4-bit)."""
    if not load_in_4bit:
        return {}
    missing = [name for name in ("bitsandbytes", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"load_in_4bit=True needs the packages {missing} (and CUDA); they are not installed. "
                          "Install them, or load the model in bfloat16/float16 instead.")
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    return {"device_map": device, "quantization_config": quantization}


def _left_padded_tokenizer(processor: Any) -> Any:
    """The processor's tokenizer, set to pad on the left, with a pad token (EOS if it had none)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _resolved_revision(model: str, revision: str | None, offline: bool) -> str | None:
    """The commit a hub id's ``revision`` points to (None for local directories)."""
    if Path(model).exists():
        return revision
    from transformers.utils.hub import resolve_revision

    return resolve_revision(model, revision, local_files_only=offline)


def _model_identity(model: str, revision: str | None) -> str:
    """``name@commit`` for a hub model; for a local directory its path plus a fingerprint of its config
    files' contents and weight files' names and sizes (hashing multi-GB weights would take minutes)."""
    path = Path(model)
    if not path.is_dir():
        commit = getattr(revision, "resolved", None) or revision or "unresolved"
        return f"{model}@{commit}"
    digest = hashlib.sha256()
    for name in _CONFIG_FILES:
        if (path / name).is_file():
            digest.update(name.encode() + b"\0" + (path / name).read_bytes())
    weights = sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    digest.update(json.dumps([(p.name, p.stat().st_size) for p in weights]).encode())
    return f"{path.resolve()}@local-{digest.hexdigest()[:16]}"
