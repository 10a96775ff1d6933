"""GPU throughput of the ``hf`` grounder on random-weight models of real architectures.

No LVLM weights are needed or downloaded: each model is built from its published architecture
(``benchmarks/random_models.py``: Qwen2-VL-2B-like, LLaVA-NeXT-7B-like) with random bf16 weights
directly on the GPU, with an offline byte-level tokenizer and processor, and driven through
``HFGrounder.describe`` (the same chat template, left padding and greedy ``generate`` a user's weights
get). Every generation is forced to exactly ``--new-tokens`` tokens (min_new_tokens = max_new_tokens),
so images/s and generated tokens/s are comparable across batch sizes. Images are poster-sized
(185x278, like MovieLens posters) crops of scikit-image's sample photos.

    python benchmarks/bench_hf_gpu.py --quick            # ~3 min on one H100: both models, batch 1/8/32
    python benchmarks/bench_hf_gpu.py --batch-sizes 1 4 16 64 --new-tokens 64
    python benchmarks/bench_hf_gpu.py --device cpu --specs tiny-llava --batch-sizes 2 --new-tokens 4  # smoke test
    python benchmarks/bench_hf_gpu.py --check-batching   # batched == one-by-one greedy outputs, float32

Exits with status 2 and a message when CUDA is asked for but unavailable.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from PIL import Image

from vlm4rec.grounding.hf import HFGrounder
from vlm4rec.grounding.prompts import IMAGE_ONLY, build_prompt
from random_models import LLAVA_NEXT_7B_LIKE, QWEN2_VL_2B_LIKE, SPECS, build_random_vlm, grounder_around

POSTER_SIZE = (185, 278)


def poster_like_images(n: int) -> list[Image.Image]:
    """``n`` poster-sized RGB images cut from scikit-image's bundled photos (no files or network)."""
    from skimage import data

    photos = [Image.fromarray(p) for p in (data.chelsea(), data.coffee(), data.rocket(), data.astronaut())]
    images = []
    for i in range(n):
        photo = photos[i % len(photos)]
        left = (i * 37) % max(1, photo.width - 150)
        images.append(photo.crop((left, 0, left + 150, min(photo.height, 225))).resize(POSTER_SIZE))
    return images


def measure(grounder: HFGrounder, images: list[Image.Image], batch_size: int, batches: int,
            device: str) -> dict:
    """Warm up once, then time ``batches`` batches of ``batch_size`` images."""
    prompts = [build_prompt(IMAGE_ONLY, "")] * batch_size
    grounder.describe(images[:batch_size], prompts)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for b in range(batches):
        chunk = [images[(b * batch_size + k) % len(images)] for k in range(batch_size)]
        grounder.describe(chunk, prompts)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    n_images = batch_size * batches
    result = {"batch_size": batch_size, "images": n_images, "seconds": round(seconds, 3),
              "images_per_s": round(n_images / seconds, 2),
              "generated_tokens_per_s": round(n_images * grounder.max_new_tokens / seconds, 1)}
    if device == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def run_spec(name: str, batch_sizes: list[int], new_tokens: int, batches: int, device: str) -> dict:
    spec = SPECS[name]
    start = time.perf_counter()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, processor = build_random_vlm(spec, seed=0, dtype=dtype, device=device)
    build_s = time.perf_counter() - start
    grounder = grounder_around(model, processor, model_id=f"random:{name}",
                               max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    params = sum(p.numel() for p in model.parameters())
    images = poster_like_images(max(batch_sizes) * batches)
    probe = processor(images=[[images[0]]], text=[grounder.chat_text(build_prompt(IMAGE_ONLY, ""))],
                      return_tensors="pt")
    report = {"spec": name, "family": spec.family, "parameters_b": round(params / 1e9, 3),
              "dtype": str(dtype), "build_s": round(build_s, 1), "new_tokens": new_tokens,
              "prompt_tokens_per_image": int(probe["input_ids"].shape[1]), "runs": []}
    print(f"# {name}: {report['parameters_b']} B parameters, {report['prompt_tokens_per_image']} prompt tokens "
          f"per image, built in {report['build_s']} s", flush=True)
    for batch_size in batch_sizes:
        try:
            row = measure(grounder, images, batch_size, batches, device)
        except torch.cuda.OutOfMemoryError:
            row = {"batch_size": batch_size, "error": "CUDA out of memory"}
            torch.cuda.empty_cache()
        report["runs"].append(row)
        print(json.dumps({"spec": name, **row}), flush=True)
    del grounder, model
    if device == "cuda":
        torch.cuda.empty_cache()
    return report


def check_batching(name: str, device: str, new_tokens: int = 16) -> dict:
    """Greedy outputs of one left-padded batch against one image at a time, in float32 (random bf16
    weights tie too easily for an exact comparison): the reference code's padding bug would show here."""
    spec = SPECS[name]
    model, processor = build_random_vlm(spec, seed=0, dtype=torch.float32, device=device)
    grounder = grounder_around(model, processor, model_id=f"random:{name}", max_new_tokens=new_tokens)
    images = poster_like_images(4)
    prompts = [build_prompt(IMAGE_ONLY, ""), "Colours?", "Describe this poster in two short sentences, please.",
               "Who is on it?"]
    batched = grounder.describe(images, prompts)
    single = [grounder.describe([image], [prompt])[0] for image, prompt in zip(images, prompts)]
    result = {"spec": name, "device": device, "dtype": "float32", "new_tokens": new_tokens,
              "images": len(images), "identical": sum(b == s for b, s in zip(batched, single))}
    print(json.dumps(result), flush=True)
    del grounder, model
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch sizes 1 8 32, 32 new tokens, 2 timed batches")
    parser.add_argument("--specs", nargs="+", default=[QWEN2_VL_2B_LIKE.name, LLAVA_NEXT_7B_LIKE.name],
                        choices=sorted(SPECS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per batch size")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--check-batching", action="store_true",
                        help="only compare batched and one-by-one greedy outputs (float32) per spec")
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes, args.new_tokens, args.batches = [1, 8, 32], 32, 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_hf_gpu: CUDA is not available on this machine; run it on a GPU machine "
              "(or pass --device cpu with a tiny spec for a smoke test).", file=sys.stderr)
        return 2
    header = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "torch": torch.__version__}
    print(json.dumps(header), flush=True)
    if args.check_batching:
        reports = [check_batching(name, args.device) for name in args.specs]
    else:
        reports = [run_spec(name, args.batch_sizes, args.new_tokens, args.batches, args.device)
                   for name in args.specs]
    if args.json:
        with open(args.json, "w") as out:
            json.dump({**header, "results": reports}, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
