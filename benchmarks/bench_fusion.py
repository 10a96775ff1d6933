"""Training time of the learned fusions at MovieLens-1M size on CPU (target: <= 5 min per model).

Synthetic catalogue of ML-1M's shape: 6,040 users, 3,706 items, modalities 384 + 384 + 1280 (the text
ones carry a cluster signal users prefer, the image one is noise); per user ~66 train and ~10 validation
positives (ML-1M's rating >= 4 positives under the 70/10/20 temporal split). Prints, per fusion kind,
the wall and CPU time of ``train_fusion``, the epochs run, the best epoch and seconds per epoch. Training
runs on ``TRAINING_THREADS`` intra-op threads (``train_fusion`` pins them, for reproducible sums).

    python benchmarks/bench_fusion.py [--epochs 50] [--batch-size 512] [--kinds ...]
"""
from __future__ import annotations

import argparse
import time
from typing import get_args

import numpy as np
import scipy.sparse as sp

from vlm4rec.fusion import FusionKind, make_fusion, train_fusion
from vlm4rec.reproducibility import TRAINING_THREADS
from vlm4rec.splits import History

N_USERS, N_ITEMS, N_CLUSTERS = 6040, 3706, 40
DIMS = {"description": 384, "title": 384, "image": 1280}


def synthetic_ml1m(seed: int = 0) -> tuple[dict[str, np.ndarray], History, sp.csr_matrix]:
    """Modalities, train history and validation positives with ML-1M's sizes."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, N_CLUSTERS, N_ITEMS)
    modalities = {}
    for name, d in DIMS.items():
        centroids = rng.normal(size=(N_CLUSTERS, d)) if name != "image" else np.zeros((N_CLUSTERS, d))
        modalities[name] = (centroids[cluster] + rng.normal(size=(N_ITEMS, d))).astype(np.float32)
    n_train = rng.integers(10, 120, N_USERS)
    train, val = [], []
    for user in range(N_USERS):
        liked = rng.choice(N_CLUSTERS, 3, replace=False)
        pool = np.flatnonzero(np.isin(cluster, liked))
        items = rng.choice(pool, min(len(pool), n_train[user] + 10), replace=False)
        train.append((np.full(len(items) - 10, user), items[10:]))
        val.append((np.full(10, user), items[:10]))

    def csr(pairs: list[tuple[np.ndarray, np.ndarray]]) -> sp.csr_matrix:
        rows, cols = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
        return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(N_USERS, N_ITEMS))

    history = csr(train)
    return modalities, History(matrix=history, recency=history.copy()), csr(val)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--kinds", nargs="+", default=list(get_args(FusionKind)), choices=get_args(FusionKind))
    args = parser.parse_args()
    modalities, history, val_targets = synthetic_ml1m()
    print(f"torch threads {TRAINING_THREADS}; users {N_USERS}, items {N_ITEMS}, "
          f"train positives {history.matrix.nnz}, validation positives {val_targets.nnz}")
    for kind in args.kinds:
        model = make_fusion(kind, DIMS, dim=128, seed=0)
        started, cpu_started = time.perf_counter(), time.process_time()
        result = train_fusion(model, modalities, history, history, val_targets, seed=0, epochs=args.epochs,
                              batch_size=args.batch_size)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        epochs_run = len(result.val_loss_curve) - 1
        print(f"{kind:9s} wall {wall:7.1f} s  cpu {cpu:7.1f} s  epochs run {epochs_run:3d}  best epoch {result.best_epoch:3d}  "
              f"{wall / epochs_run:5.2f} s/epoch  val loss {result.val_loss_curve[0]:.3f} -> "
              f"{result.best_val_loss:.3f}")


if __name__ == "__main__":
    main()
