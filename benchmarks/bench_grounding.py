"""Tagger grounding throughput on real posters, and warm-cache replay speed.

Targets (2-core CPU): cold tagger grounding >= 30 images/s end to end (read + hash + decode + classify +
colour statistics + cache commit), warm-cache replay >= 5,000 items/s.

    python benchmarks/bench_grounding.py [--n 512] [--batch-sizes 16 32 64] [--threads 2] [--json out.json]

Every number printed is measured in this run. The load average is printed too: other processes on the
machine slow the CPU-bound tagger down (and inflate its CPU time too: shared caches, OpenMP spinning),
so compare runs only at similar load.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vlm4rec.config import load_params
from vlm4rec.grounding.cache import DescriptionCache
from vlm4rec.grounding.prompts import IMAGE_ONLY
from vlm4rec.grounding.runner import ground_items
from vlm4rec.grounding.tagger import THUMBNAIL, TaggerGrounder, tone_words
from vlm4rec.images import load_image

DEFAULT_POSTERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m" / "posters"


def poster_items(posters: Path, n: int) -> pd.DataFrame:
    """The first ``n`` posters (by file name) as a prepared-items-like table."""
    paths = sorted(posters.glob("*.jpg"))[:n]
    if not paths:
        raise SystemExit(f"no posters under {posters}")
    return pd.DataFrame({"item_idx": np.arange(len(paths)), "item_id": [p.stem for p in paths],
                         "title": [p.stem for p in paths], "image_path": [str(p) for p in paths],
                         "has_image": True})


def cold_run(items: pd.DataFrame, tagger: TaggerGrounder, batch_size: int, cache_path: Path) -> dict:
    """An empty cache and a tagger that remembers no image: every poster goes through the classifier."""
    tagger.batch_size = batch_size
    tagger.forget()
    cpu_start = time.process_time()
    with DescriptionCache(cache_path) as cache:
        counts = ground_items(items, tagger, cache, IMAGE_ONLY, progress=False).counts
    cpu_s = time.process_time() - cpu_start
    return {"batch_size": batch_size, "images": counts["described"], "wall_s": counts["wall_s"],
            "images_per_s": round(counts["described"] / counts["wall_s"], 1), "cpu_s": round(cpu_s, 1),
            "images_per_cpu_s": round(counts["described"] / cpu_s, 1)}


def warm_replay(items: pd.DataFrame, tagger: TaggerGrounder, cache_path: Path, repeats: int = 3) -> dict:
    rates = []
    with DescriptionCache(cache_path) as cache:
        for _ in range(repeats):
            counts = ground_items(items, tagger, cache, IMAGE_ONLY, progress=False).counts
            assert counts["from_cache"] == len(items), counts
            rates.append(len(items) / counts["wall_s"])
    return {"items": len(items), "items_per_s_median": round(statistics.median(rates)), "repeats": repeats}


def stage_rates(items: pd.DataFrame, tagger: TaggerGrounder, batch_size: int) -> dict:
    """images/s of each stage alone, to show where the time goes."""
    blobs = [Path(p).read_bytes() for p in items["image_path"]]
    start = time.perf_counter()
    images = [load_image(blob) for blob in blobs]
    decode = len(images) / (time.perf_counter() - start)
    start = time.perf_counter()
    for first in range(0, len(images), batch_size):
        tagger.objects(images[first:first + batch_size])
    classify = len(images) / (time.perf_counter() - start)
    start = time.perf_counter()
    for image in images:
        thumb = np.asarray(image.resize((THUMBNAIL, THUMBNAIL)), dtype=np.float32) / 255.0
        tone_words(thumb), tagger.colour_names(thumb)
    colours = len(images) / (time.perf_counter() - start)
    return {"decode_per_s": round(decode), "classify_per_s": round(classify, 1), "colour_tone_per_s": round(colours)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posters", type=Path, default=DEFAULT_POSTERS)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    items = poster_items(args.posters, args.n)
    load_before = os.getloadavg()[0]
    tagger = TaggerGrounder(load_params().ground.tagger)  # the study's settings
    sample = load_image(items["image_path"][0])
    for batch_size in args.batch_sizes:  # one-time kernel set-up per batch shape stays out of the timings
        tagger.objects([sample] * batch_size)
    results: dict = {"posters": len(items), "torch_threads": args.threads, "cpus": os.cpu_count(), "cold": []}
    with tempfile.TemporaryDirectory() as tmp:
        for batch_size in args.batch_sizes:
            cache_path = Path(tmp) / f"cache_{batch_size}.sqlite"
            results["cold"].append(cold_run(items, tagger, batch_size, cache_path))
            print("cold", results["cold"][-1], flush=True)
        best = max(results["cold"], key=lambda r: r["images_per_s"])
        results["warm"] = warm_replay(items, tagger, Path(tmp) / f"cache_{best['batch_size']}.sqlite")
        print("warm", results["warm"], flush=True)
    results["stages_at_best_batch"] = stage_rates(items.head(128), tagger, best["batch_size"])
    print("stages", results["stages_at_best_batch"], flush=True)
    results["load_average_1min"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    print(json.dumps(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
