"""Embed stage: every item representation the study compares, aligned to the item table."""
from __future__ import annotations

from functools import cache, partial
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from vlm4rec.config import ComputeParams, EmbedParams, GroundParams, RayParams
from vlm4rec.encoders import (EfficientNetLite0Features, ImageEncoder, OpenClipImageEncoder,
                              encode_image_paths, encode_texts, load_text_encoder)
from vlm4rec.data import load_prepared
from vlm4rec.distributed import ray_config
from vlm4rec.distributed.embedding import encode_image_paths_ray, encode_texts_ray
from vlm4rec.pipeline.outputs import EMBEDDINGS_DIR, GROUNDING_DIR, PREPARED_DIR, peak_rss_mb, timed
from vlm4rec.pipeline.stage_metrics import EmbedMetrics
from vlm4rec.representations import Representation, from_features, from_texts, item_texts
from vlm4rec.stage_outputs import read_output


def description_series(descriptions: pd.DataFrame, arm: str) -> pd.Series:
    """Successful descriptions of one arm, indexed by item_idx (what representations expect)."""
    ok = descriptions[(descriptions["arm"] == arm) & (descriptions["status"] == "ok")]
    return ok.set_index("item_idx")["description"]


def image_encoder_factory(embed: EmbedParams, device: str = "cpu") -> Callable[[], ImageEncoder]:
    """A picklable builder of ``embed.image_encoder`` on ``device``: offline EfficientNet-Lite0, or open_clip
    with a local weights file (built here, or once per Ray actor)."""
    if embed.image_encoder == "open_clip":
        return partial(OpenClipImageEncoder, embed.open_clip, device=device)
    return partial(EfficientNetLite0Features, device=device)


def text_representations(items: pd.DataFrame, descriptions: pd.DataFrame, arms: list[str],
                         encoder_spec: str, batch_size: int, grounder: str,
                         ray: RayParams | None = None) -> list[Representation]:
    """title, title_meta and, per prompt arm, description_<arm> and title_description_<arm>; then the content
    reference ``genres`` (the metadata without the title).

    Every distinct text of the study's representations is encoded once, in one pass (here, or on Ray actors
    when ``ray`` is given: the same vectors), since fallbacks repeat titles across representations; the
    content reference is encoded in a pass of its own, so that adding it leaves every other vector unchanged
    to the bit (the encoder batches texts by length, and a batch's padding moves last bits)."""
    jobs: list[tuple[str, str, pd.Series | None, str]] = [
        ("title", "title", None, "title"), ("title_meta", "title_meta", None, "title + genres/metadata")]
    for arm in arms:
        series = description_series(descriptions, arm)
        jobs += [(f"description_{arm}", "description", series, f"{grounder} descriptions, prompt arm {arm}"),
                 (f"title_description_{arm}", "title_description", series,
                  f"title + {grounder} descriptions, prompt arm {arm}")]
    references = [("genres", "genres", None, "genres/metadata without the title (a content reference)")]
    local_encoder = cache(partial(load_text_encoder, encoder_spec))  # loaded once, and only where needed
    return [rep for group in (jobs, references)
            for rep in encoded_in_one_pass(items, group, encoder_spec, local_encoder, batch_size, ray)]


def encoded_in_one_pass(items: pd.DataFrame, jobs: list[tuple[str, str, pd.Series | None, str]],
                        encoder_spec: str, local_encoder: Callable[[], Any], batch_size: int,
                        ray: RayParams | None) -> list[Representation]:
    """One representation per job ``(name, text kind, descriptions, what it is)``, every distinct text of the
    jobs encoded once, in one pass (on Ray actors when ``ray`` is given, else by ``local_encoder()``)."""
    label = f"sentence encoder {encoder_spec}"
    texts = {name: item_texts(items, kind, series) for name, kind, series, _ in jobs}
    distinct = list(dict.fromkeys(t for chosen in texts.values() for t, gone in zip(chosen.texts, chosen.is_missing)
                                  if not gone))
    if ray is not None and distinct:  # the driver loads no encoder
        vectors = encode_texts_ray(distinct, encoder_spec, batch_size, ray)
    else:  # (with nothing to encode, the local encoder still gives the width)
        vectors = encode_texts(distinct, local_encoder(), batch_size=batch_size)
    row_of = {text: row for row, text in enumerate(distinct)}

    def encoded(chosen: Sequence[str]) -> np.ndarray:
        return vectors[[row_of[text] for text in chosen]]

    return [from_texts(name, texts[name], encoded, vectors.shape[1], f"{label} on {what}") for name, _, _, what in jobs]


def run(embed: EmbedParams, ground: GroundParams, compute: ComputeParams) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Encode every representation the study compares and save them aligned to the item table."""
    costs: dict[str, Any] = {}
    ray = ray_config(compute)
    data = load_prepared(PREPARED_DIR)
    descriptions = read_output(GROUNDING_DIR / "descriptions.parquet", pd.read_parquet)
    grounder = descriptions["grounder_method"].iloc[0] if len(descriptions) else "no grounder"
    with timed(costs, "wall"):
        with timed(costs, "text"):
            reps = text_representations(data.items, descriptions, ground.prompt_arms,
                                        embed.text_encoder, embed.text_batch_size, grounder, ray)
        paths = data.items["image_path"].tolist()
        if ray is None:
            features = encode_image_paths(paths, image_encoder_factory(embed)(), embed.image_batch_size)
        else:
            features = encode_image_paths_ray(paths, image_encoder_factory(embed, ray.device),
                                              embed.image_batch_size, ray)
        costs["image_s"] = round(features.seconds, 3)
        reps.append(from_features("image", features.vectors, f"image features: {features.encoder}"))
        reps += [from_features(name, array, f"precomputed {name} shipped with the dataset")
                 for name, array in data.features.items()]
        for rep in reps:
            rep.save(EMBEDDINGS_DIR)
    n_texts = sum(r.n_items for r in reps if r.name not in data.features and r.name != "image")
    costs |= {"text_items_per_s": round(n_texts / max(costs["text_s"], 1e-9), 1),
              "images_per_s": round(features.images_per_s, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}
    summary = pd.DataFrame([{"name": r.name, "dim": r.dim, "coverage": r.coverage, "fallback": r.n_fallback,
                             "missing": r.n_missing, "source": r.source} for r in reps]).set_index("name")
    metrics = {"representations": summary.drop(columns="source").to_dict(orient="index"),
               "without_content": [r.name for r in reps if not r.has_content],  # refused by every later stage
               "image_failures": features.failures.to_dict(orient="records"), "cost": costs}
    EmbedMetrics.model_validate(metrics).save(EmbedMetrics.path())
    return summary, metrics
