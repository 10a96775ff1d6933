"""Benchmark of the graph recommenders (vlm4rec.multimodal) at MovieLens-1M size on this machine.

Per model (LightGCN; VBPR, FREEDOM and SMORE with a 384-d text-like and a 1280-d image-like modality):
build time (graphs, kNN), seconds per training epoch (every train positive once, the default batch size)
and seconds per evaluation (scoring vectors + top-50 for every validation user + metrics, the path early
stopping calls). For the sparse propagation, all from the same run: the GFLOP/s of the user-item graph
products as training runs them (LightGCN's 3 layers forward and backward through the autograd function),
against the machine's raw sparse-dense rates on the same matrix (torch CSR with int32 indices, the kernel
used, and with int64 indices; scipy single-threaded; torch COO ``sparse.mm``).

Data: synthetic at ML-1M size by default (6,040 users, 3,706 items, ~575k positives with Zipf-like item
popularity and log-normal history lengths, temporal 70/10/20 split, random features); ``--prepared DIR
--embeddings DIR`` runs on a prepared dataset and its embeddings instead (``--text NAME --image NAME``).
Run: ``python benchmarks/bench_graph_models.py [--epochs 2] [--models lightgcn vbpr freedom smore]
[--threads 1] [--skip-propagation]``; on a shared machine compare the CPU seconds per epoch of one thread.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_info

from vlm4rec.data import PreparedData, load_prepared
from vlm4rec.evaluation import DEFAULT_KS, EvalData, validation_monitor
from vlm4rec.multimodal import MODELS
from vlm4rec.multimodal.graphs import GraphOperator, interaction_graph, layer_mean, torch_csr
from vlm4rec.splits import SplitConfig, assign_split, binarize

DIM = 64
LAYERS = 3


def synthetic_prepared(n_users: int = 6040, n_items: int = 3706, positives: int = 575_000,
                       seed: int = 0) -> PreparedData:
    """ML-1M-sized interactions: log-normal history lengths (20..1500, mean ~positives / n_users), items
    drawn without replacement with probability ~ 1 / (rank + 10), random timestamps, temporal split."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(positives / n_users) - 0.4, 0.9, n_users), 20, 1500).astype(np.int64)
    popularity = 1.0 / (np.arange(n_items) + 10.0)
    popularity = popularity[rng.permutation(n_items)] / popularity.sum()
    items = np.concatenate([rng.choice(n_items, n, replace=False, p=popularity) for n in lengths])
    inter = pd.DataFrame({"user_idx": np.repeat(np.arange(n_users), lengths), "item_idx": items,
                          "timestamp": rng.integers(0, 10**9, len(items)), "rating": np.float32(5.0)})
    inter["split"] = assign_split(inter, SplitConfig())
    return PreparedData(items=pd.DataFrame({"item_idx": np.arange(n_items), "item_id": np.arange(n_items).astype(str)}),
                        users=pd.DataFrame({"user_idx": np.arange(n_users), "user_id": np.arange(n_users).astype(str)}),
                        interactions=inter)


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` runs after one warm-up (the machine may be shared)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def propagation_rates(history: sp.csr_matrix, repeats: int) -> dict[str, float]:
    """GFLOP/s (2 * nnz * DIM per product) of the raw sparse-dense products on the user-item graph (scipy
    csr @ dense, single-threaded; torch COO sparse.mm; torch CSR @ dense with int32 indices, the kernel
    GraphOperator uses, and with int64 indices) and
    of the training propagation (layer_mean over GraphOperator, forward + backward: 2 * LAYERS products,
    plus autograd and the layer sums)."""
    graph = interaction_graph(history)
    x = np.random.default_rng(0).standard_normal((graph.shape[0], DIM), dtype=np.float32)
    flop = 2.0 * graph.nnz * DIM
    coo = graph.tocoo()
    torch_coo = torch.sparse_coo_tensor(np.vstack([coo.row, coo.col]), coo.data, graph.shape,
                                        check_invariants=False).coalesce()
    csr = torch_csr(graph, torch.device("cpu"))
    csr_int64 = torch.sparse_csr_tensor(csr.crow_indices().long(), csr.col_indices().long(), csr.values(),
                                        graph.shape)
    x_torch = torch.from_numpy(x)
    operator = GraphOperator(graph, symmetric=True)
    weights = torch.randn(graph.shape[0], DIM)
    ego = torch.from_numpy(x.copy()).requires_grad_(True)

    def training_propagation() -> None:
        ego.grad = None
        (layer_mean(operator, ego, LAYERS) * weights).sum().backward()

    return {"nnz": graph.nnz,
            "scipy": flop / best_seconds(lambda: graph @ x, repeats) / 1e9,
            "torch_coo": flop / best_seconds(lambda: torch.sparse.mm(torch_coo, x_torch), repeats) / 1e9,
            "torch_csr": flop / best_seconds(lambda: csr @ x_torch, repeats) / 1e9,
            "torch_csr_int64": flop / best_seconds(lambda: csr_int64 @ x_torch, repeats) / 1e9,
            "training": 2 * LAYERS * flop / best_seconds(training_propagation, repeats) / 1e9}


def model_costs(name: str, modalities: dict[str, np.ndarray], data: EvalData, epochs: int) -> dict[str, float]:
    """Build time (graphs, kNN, initial weights; a 0-epoch fit), the median seconds per training epoch (wall
    and CPU time of this process: on a shared machine the CPU time moves less than the wall time) and per
    evaluation (refresh the scoring vectors + rank and score every validation user, the call early stopping
    makes), from one ``epochs``-epoch monitored fit that checks validation after every epoch."""
    content = {} if name == "lightgcn" else {"modalities": modalities}
    history = data.train_history
    start = time.perf_counter()
    MODELS[name](**content, epochs=0).fit(history)
    build = time.perf_counter() - start
    validation = validation_monitor(data.validation(), DEFAULT_KS, "ndcg@10")
    calls: list[tuple[float, float]] = []  # (start, end) of each check
    cpu_calls: list[tuple[float, float]] = []

    def monitor(model) -> float:
        begin, cpu_begin = time.perf_counter(), time.process_time()
        value = validation(model)
        calls.append((begin, time.perf_counter()))
        cpu_calls.append((cpu_begin, time.process_time()))
        return value

    model = MODELS[name](**content, epochs=epochs, eval_every=1, patience=epochs + 1)
    model.fit_monitored(history, monitor)
    epoch_s = [begin - previous_end for (_, previous_end), (begin, _) in zip(calls, calls[1:])]
    epoch_cpu_s = [begin - previous_end for (_, previous_end), (begin, _) in zip(cpu_calls, cpu_calls[1:])]
    return {"build_s": build, "epoch_s": float(np.median(epoch_s)), "epoch_cpu_s": float(np.median(epoch_cpu_s)),
            "eval_s": float(np.median([end - begin for begin, end in calls])),
            "batches_per_epoch": int(np.ceil(binarize(history.matrix).nnz / model.batch_size))}


def print_propagation_rates(history: sp.csr_matrix, repeats: int) -> None:
    rates = propagation_rates(history, repeats)
    print(f"\nsparse propagation, user-item graph nnz={rates['nnz']}, d={DIM} (GFLOP/s, best of {repeats}):")
    print(f"  scipy csr @ dense (single-threaded)            {rates['scipy']:6.2f}")
    print(f"  torch.sparse.mm, COO                           {rates['torch_coo']:6.2f}")
    print(f"  torch CSR @ dense (GraphOperator's kernel)     {rates['torch_csr']:6.2f}  (int32 indices)")
    print(f"  torch CSR @ dense, int64 indices               {rates['torch_csr_int64']:6.2f}")
    print(f"  training propagation ({LAYERS} layers, fwd + bwd)     {rates['training']:6.2f}  "
          f"= {rates['training'] / rates['torch_csr']:.0%} of torch CSR, "
          f"{rates['training'] / rates['scipy']:.0%} of scipy")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "?")
    blas = [f"{i['internal_api']} {i['version']} ({i['num_threads']} threads)"
            for i in threadpool_info() if i["user_api"] == "blas"]
    return (f"nproc={os.cpu_count()}, CPU {cpu}, {platform.python_implementation()} {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy BLAS {', '.join(blas) or '?'}")


def load_data(args: argparse.Namespace) -> tuple[EvalData, dict[str, np.ndarray]]:
    if args.prepared is None:
        data = EvalData.from_prepared(synthetic_prepared())
        rng = np.random.default_rng(1)
        return data, {"text": rng.standard_normal((data.n_items, 384), dtype=np.float32),
                      "image": np.abs(rng.standard_normal((data.n_items, 1280), dtype=np.float32))}
    from vlm4rec.representations import Representation
    data = EvalData.from_prepared(load_prepared(Path(args.prepared)))
    return data, {"text": Representation.load(Path(args.embeddings), args.text).vectors,
                  "image": Representation.load(Path(args.embeddings), args.image).vectors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per model")
    parser.add_argument("--repeats", type=int, default=10, help="best of this many sparse products")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--prepared", help="a prepared dataset directory (default: synthetic ML-1M size)")
    parser.add_argument("--embeddings", help="embeddings directory, with --prepared")
    parser.add_argument("--text", default="title_description_image_only")
    parser.add_argument("--image", default="image")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--skip-propagation", action="store_true", help="time the models only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(machine())
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.1f}")
    data, modalities = load_data(args)
    history = binarize(data.train_history.matrix)
    print(f"data: {data.n_users} users x {data.n_items} items, {history.nnz} train positives, "
          f"{len(data.val_users)} validation users; modalities "
          + ", ".join(f"{k} {v.shape[1]}-d" for k, v in modalities.items()))

    if not args.skip_propagation:
        print_propagation_rates(history, args.repeats)

    print(f"\nper model, default hyperparameters, median of {args.epochs} epochs (an epoch includes refreshing the "
          f"scoring vectors; an evaluation ranks top-{max(DEFAULT_KS)} for every validation user):")
    print(f"  {'model':<9} {'build s':>8} {'s/epoch':>8} {'CPU s/epoch':>12} {'batches':>8} {'s/eval':>7}")
    for name in args.models:
        cost = model_costs(name, modalities, data, args.epochs)
        print(f"  {name:<9} {cost['build_s']:8.2f} {cost['epoch_s']:8.2f} {cost['epoch_cpu_s']:12.2f} "
              f"{cost['batches_per_epoch']:8d} {cost['eval_s']:7.2f}", flush=True)
    print(f"\nload average (1 min) at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
