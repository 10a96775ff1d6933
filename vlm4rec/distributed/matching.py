"""Matching on Ray and on a device: :func:`ranker` returns the ranking function that ``compute.executor``
and ``eval.device`` ask for; every one gives exactly the local engine's top-K lists."""
from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp

from vlm4rec.config import RayParams
from vlm4rec.distributed import connect
from vlm4rec.errors import StudyError
from vlm4rec.matching import Ranker, Recommender, recommend, recommend_torch


def rank_here(model: Recommender, users: np.ndarray, exclude: sp.csr_matrix, k: int, block_size: int,
              device: str | None) -> np.ndarray:
    """In this process: :func:`~vlm4rec.matching.recommend` (``device`` None) or
    :func:`~vlm4rec.matching.recommend_torch` on ``device``."""
    if device is None:
        return recommend(model, users, exclude, k, block_size)
    return recommend_torch(model, users, exclude, k, block_size, device)


def recommend_ray(model: Recommender, users: np.ndarray, exclude: sp.csr_matrix, k: int, block_size: int,
                  config: RayParams, device: str | None = None) -> np.ndarray:
    """:func:`rank_here` with each block of ``block_size`` users ranked by one Ray task; the fitted ``model``
    and ``exclude`` go to the object store once and every task reads them from there. Returns exactly the
    local engine's top-K lists, in user order."""
    import ray

    if device is not None and device.startswith("cuda") and config.num_gpus <= 0:
        raise StudyError("eval.device: cuda on Ray needs compute.ray.num_gpus > 0 (tasks see no GPU otherwise)")
    users = np.asarray(users, dtype=np.int64)
    if len(users) == 0:
        return recommend(model, users, exclude, k, block_size)
    connect(config)
    model_ref, exclude_ref = ray.put(model), ray.put(sp.csr_matrix(exclude))
    rank = ray.remote(num_cpus=config.num_cpus, num_gpus=config.num_gpus)(rank_here)
    blocks = [rank.remote(model_ref, users[start:start + block_size], exclude_ref, k, block_size, device)
              for start in range(0, len(users), block_size)]
    return np.concatenate(ray.get(blocks))


def ranker(config: RayParams | None, device: str = "cpu", block_size: int = 2048) -> Ranker:
    """``rank(model, users, exclude, k)`` as ``compute`` (``config``: None = local) and ``eval.device`` ask:
    the numpy engine for ``cpu``, the torch engine on any other device; here or on Ray."""
    torch_device = None if device == "cpu" else device
    if config is None:
        return functools.partial(rank_here, block_size=block_size, device=torch_device)
    return functools.partial(recommend_ray, block_size=block_size, config=config, device=torch_device)
