"""Embedding on Ray: the local encoders' batches, on actor pools (a GPU per actor where given)."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from vlm4rec.distributed import RayConfig, _BatchActor, _completed, _stream, connect

if TYPE_CHECKING:  # torch comes with the encoders: imported where they run
    from vlm4rec.encoders import ImageEncoder, ImageFeatures


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
        work = [[texts[i] for i in rows] for rows in batches]
        for index, vectors in _completed(_stream(work, _TextActor, options, config), "text encoding"):
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
        results = _completed(_stream(works, _ImageActor, options, config), "image encoding")
        for _, (indices, batch_vectors, batch_failures, encoder, dim) in results:
            if vectors.shape[1] != dim:
                vectors = np.zeros((len(paths), dim), dtype=np.float32)
            if batch_vectors is not None:
                vectors[indices] = batch_vectors
            failures.extend(batch_failures)
            bar.update(len(indices) + len(batch_failures))
    failures.sort(key=lambda failure: failure[0])
    return ImageFeatures(vectors, failure_table(failures), encoder, time.perf_counter() - started)
