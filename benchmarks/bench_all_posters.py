"""All MovieLens-1M posters grounded and embedded, end to end, on this machine.

Target (issue 3): every poster (3,872) grounded with the offline tagger and embedded (MiniLM on the
descriptions, EfficientNet-Lite0 image features) in at most 5 minutes on 2 cores. Grounding starts from
an empty cache in a temporary folder; model loading is included in each phase's time.

    python benchmarks/bench_all_posters.py [--posters ../shared/data/ml-1m/posters] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from vlm4rec.config import load_params
from vlm4rec.encoders import EfficientNetLite0Features, encode_image_paths, encode_texts, load_text_encoder
from vlm4rec.grounding import DescriptionCache, build_grounder, ground_items

DEFAULT_POSTERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m" / "posters"
TARGET_S = 300.0


def poster_table(posters: Path) -> pd.DataFrame:
    """Every poster as an items table (item_idx, item_id, title, image_path, has_image)."""
    paths = sorted(posters.glob("*.jpg"))
    return pd.DataFrame({"item_idx": np.arange(len(paths)), "item_id": [p.stem for p in paths],
                         "title": [p.stem for p in paths], "image_path": [str(p) for p in paths],
                         "has_image": True})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posters", type=Path, default=DEFAULT_POSTERS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    items = poster_table(args.posters)
    times: dict[str, float] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, DescriptionCache(Path(tmp) / "cache.sqlite") as cache:
        result = ground_items(items, build_grounder(load_params().ground.tagger), cache, "image_only", progress=False)
    times["ground_s"] = time.perf_counter() - start
    descriptions = result.table.set_index("item_idx")["description"].fillna("").tolist()
    phase = time.perf_counter()
    text_vectors = encode_texts(descriptions, load_text_encoder(), progress=False)
    times["embed_text_s"] = time.perf_counter() - phase
    phase = time.perf_counter()
    features = encode_image_paths(items["image_path"].tolist(), EfficientNetLite0Features(), progress=False)
    times["embed_image_s"] = time.perf_counter() - phase
    times["total_s"] = time.perf_counter() - start
    report = {"posters": len(items), "described": result.counts["ok"], "failed": result.counts["failed"],
              "image_vectors": features.n_encoded, "text_vectors": len(text_vectors),
              **{k: round(v, 1) for k, v in times.items()},
              "ground_images_per_s": round(len(items) / times["ground_s"], 1),
              "target_s": TARGET_S, "meets_target": times["total_s"] <= TARGET_S,
              "cpus": os.cpu_count(), "load_average_after": os.getloadavg()[0]}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
