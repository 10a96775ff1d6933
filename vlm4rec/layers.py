"""Layers of every model that trains here (the multimodal recommenders of :mod:`vlm4rec.multimodal`, the
cold-start models of :mod:`vlm4rec.coldstart` and the learned fusions of :mod:`vlm4rec.fusion`): linear
layers initialised from a ``torch.Generator`` (never the global random state) and a fast row gather."""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

LinearInit = Literal["xavier_uniform", "xavier_normal", "torch"]


def linear(d_in: int, d_out: int, generator: torch.Generator, bias: bool = True,
           init: LinearInit = "xavier_uniform") -> nn.Linear:
    """A Linear layer initialised from ``generator`` (no global RNG): Xavier-uniform or Xavier-normal
    weights and zero bias, or ``torch``'s own default (weights and bias U(-1/sqrt(d_in), 1/sqrt(d_in)): the
    draws of ``nn.Linear(d_in, d_out)`` after ``torch.manual_seed``, whose Kaiming-uniform bound with
    ``a = sqrt(5)`` is the same number; what an ``nn.Linear`` of the FREEDOM and SMORE reference code and of
    the learned fusions starts from)."""
    layer = torch.nn.utils.skip_init(nn.Linear, d_in, d_out, bias=bias)
    if init == "torch":
        bound = 1.0 / math.sqrt(d_in)
        nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
        if bias:
            nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
        return layer
    if init == "xavier_uniform":
        nn.init.xavier_uniform_(layer.weight, generator=generator)
    elif init == "xavier_normal":
        nn.init.xavier_normal_(layer.weight, generator=generator)
    else:
        raise ValueError(f"unknown linear init {init!r}")
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a 2-d table and any shape of ``index``; its backward pass (an embedding-gradient
    kernel) is several times faster on CPU than that of plain indexing under deterministic algorithms, with
    the same sums in the same order, which matters with batches of tens of thousands."""
    return F.embedding(index, table)
