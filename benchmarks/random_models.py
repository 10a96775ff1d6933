"""Random-weight vision-language models of real architectures, built fully offline (not part of the package).

No LVLM weights reach this environment. Tests and the GPU benchmark still exercise the real ``hf``
loading and generation code by building a model from a config (random init), a processor with a
byte-level tokenizer (no vocabulary download) and a chat template, and saving both with
``save_pretrained`` so that they load exactly as a user's checkpoint would. Outputs are gibberish;
shapes, padding, batching and cost are real. Benchmarks import this module from their own folder, tests
through pytest's ``pythonpath`` (pyproject.toml).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlm4rec.grounding.hf import HFGrounder

#: A minimal chat template: "user: <image tokens><text>\nassistant:"; ``image_markup`` is the family's.
_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}IMAGE_MARKUP"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}")

_LLAVA_TOKENS = {"image": "<image>"}
_QWEN_TOKENS = {"image": "<|image_pad|>", "video": "<|video_pad|>", "vision_start": "<|vision_start|>",
                "vision_end": "<|vision_end|>"}


@dataclass(frozen=True)
class RandomVLMSpec:
    """An architecture family (``llava``, ``llava_next`` or ``qwen2_vl``) with vision/text config overrides.

    ``vocab_size`` pads the byte-level tokenizer with filler tokens so the output layer has the real
    model's size (it dominates per-token cost of small models).
    """

    name: str
    family: str
    vision: dict[str, Any]
    text: dict[str, Any]
    vocab_size: int = 0
    image_size: int = 32
    extra: dict[str, Any] = field(default_factory=dict)


TINY_LLAVA = RandomVLMSpec(
    "tiny-llava", "llava",
    vision={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "patch_size": 8, "projection_dim": 32},
    text={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 512},
    image_size=32)

TINY_QWEN2_VL = RandomVLMSpec(
    "tiny-qwen2-vl", "qwen2_vl",
    vision={"depth": 2, "embed_dim": 32, "hidden_size": 32, "num_heads": 4, "patch_size": 14,
            "spatial_merge_size": 2, "temporal_patch_size": 2},
    text={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 1024,
          "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}},
    extra={"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16})

#: Qwen2-VL-2B-Instruct's published architecture (675M vision tower, 1.5B Qwen2 text model).
QWEN2_VL_2B_LIKE = RandomVLMSpec(
    "qwen2-vl-2b-like", "qwen2_vl",
    vision={"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
    text={"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
          "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
          "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
          "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}},
    vocab_size=151936,
    extra={"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280})

#: llava-v1.6-mistral-7b's published architecture (CLIP ViT-L/14-336 + Mistral-7B, anyres 336 grid).
LLAVA_NEXT_7B_LIKE = RandomVLMSpec(
    "llava-next-7b-like", "llava_next",
    vision={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
            "num_attention_heads": 16, "patch_size": 14, "projection_dim": 768},
    text={"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
          "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 32768,
          "rms_norm_eps": 1e-5, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
    vocab_size=32064, image_size=336,
    extra={"image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]})

SPECS = {spec.name: spec for spec in (TINY_LLAVA, TINY_QWEN2_VL, QWEN2_VL_2B_LIKE, LLAVA_NEXT_7B_LIKE)}


def byte_level_tokenizer(special_tokens: list[str], vocab_size: int = 0) -> Any:
    """A fast tokenizer over the 256 byte symbols plus ``<pad>``, ``<s>``, ``</s>`` and ``special_tokens``,
    padded with never-produced filler tokens up to ``vocab_size``. Needs no download or training."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in ["<pad>", "<s>", "</s>", *special_tokens]:
        vocab[token] = len(vocab)
    filler = range(max(0, vocab_size - len(vocab)))
    vocab.update({f"<filler_{i}>": len(vocab) + i for i in filler})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", additional_special_tokens=list(special_tokens))


def build_random_vlm(spec: RandomVLMSpec, seed: int = 0, dtype: torch.dtype = torch.float32,
                     device: str = "cpu") -> tuple[torch.nn.Module, Any]:
    """(model in eval mode, processor) for ``spec`` with seeded random weights, built on ``device``."""
    from transformers import AutoModelForImageTextToText

    processor, config = _PROCESSOR_AND_CONFIG[spec.family](spec)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    return model.eval(), processor


def save_random_vlm(spec: RandomVLMSpec, out_dir: str | Path, seed: int = 0) -> Path:
    """Write ``spec``'s random model and its processor to ``out_dir`` as a loadable checkpoint."""
    model, processor = build_random_vlm(spec, seed)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return Path(out_dir)


def grounder_around(model: torch.nn.Module, processor: Any, model_id: str, max_new_tokens: int = 64,
                    min_new_tokens: int = 0, batch_size: int = 4) -> HFGrounder:
    """An ``hf`` grounder around an already-built model and processor (random weights built on a GPU, where
    writing and re-reading a 15 GB checkpoint would cost minutes): the package's generation code, unchanged."""
    grounder = HFGrounder.__new__(HFGrounder)
    grounder._attach(model, processor, model_id=model_id, max_new_tokens=max_new_tokens,
                     min_new_tokens=min_new_tokens, batch_size=batch_size, load_in_4bit=False)
    return grounder


def _text_config(spec: RandomVLMSpec, tokenizer: Any, default_type: str) -> dict[str, Any]:
    return {"model_type": default_type, **spec.text, "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id}


def _llava_family(spec: RandomVLMSpec) -> tuple[Any, Any]:
    """LLaVA-1.5 (``llava``) or LLaVA-NeXT (``llava_next``, anyres tiling over ``image_grid_pinpoints``)."""
    import transformers as tf

    image_processor_cls, processor_cls, config_cls = {
        "llava": (tf.CLIPImageProcessor, tf.LlavaProcessor, tf.LlavaConfig),
        "llava_next": (tf.LlavaNextImageProcessor, tf.LlavaNextProcessor, tf.LlavaNextConfig)}[spec.family]
    tiling = {"image_grid_pinpoints": spec.extra["image_grid_pinpoints"]} if spec.family == "llava_next" else {}
    tokenizer = byte_level_tokenizer(list(_LLAVA_TOKENS.values()), spec.vocab_size)
    image_processor = image_processor_cls(size={"shortest_edge": spec.image_size},
                                          crop_size={"height": spec.image_size, "width": spec.image_size}, **tiling)
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer,
                              patch_size=spec.vision["patch_size"], vision_feature_select_strategy="default",
                              num_additional_image_tokens=1,
                              chat_template=_CHAT_TEMPLATE.replace("IMAGE_MARKUP", _LLAVA_TOKENS["image"]))
    config = config_cls(vision_config={"model_type": "clip_vision_model", "image_size": spec.image_size, **spec.vision},
                        text_config=_text_config(spec, tokenizer, "llama"),
                        image_token_index=tokenizer.convert_tokens_to_ids(_LLAVA_TOKENS["image"]),
                        vision_feature_select_strategy="default", vision_feature_layer=-2, **tiling)
    return processor, config


def _qwen2_vl(spec: RandomVLMSpec) -> tuple[Any, Any]:
    from transformers import Qwen2VLConfig, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    tokenizer = byte_level_tokenizer(list(_QWEN_TOKENS.values()), spec.vocab_size)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in _QWEN_TOKENS.items()}
    markup = _QWEN_TOKENS["vision_start"] + _QWEN_TOKENS["image"] + _QWEN_TOKENS["vision_end"]
    patching = {"min_pixels": spec.extra["min_pixels"], "max_pixels": spec.extra["max_pixels"],
                "patch_size": spec.vision["patch_size"], "merge_size": spec.vision["spatial_merge_size"],
                "temporal_patch_size": spec.vision["temporal_patch_size"]}
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**patching), tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor(**patching),
                                 chat_template=_CHAT_TEMPLATE.replace("IMAGE_MARKUP", markup))
    config = Qwen2VLConfig(vision_config={"model_type": "qwen2_vl_vision", **spec.vision},
                           text_config=_text_config(spec, tokenizer, "qwen2_vl_text"),
                           image_token_id=ids["image"], video_token_id=ids["video"],
                           vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"],
                           tie_word_embeddings=spec.text.get("tie_word_embeddings", False))
    return processor, config


_PROCESSOR_AND_CONFIG = {"llava": _llava_family, "llava_next": _llava_family, "qwen2_vl": _qwen2_vl}
