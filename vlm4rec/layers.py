"""Linear layers initialised from a ``torch.Generator`` (never the global random state), for every model
that trains here: the multimodal recommenders (:mod:`vlm4rec.multimodal`) and the learned fusions
(:mod:`vlm4rec.fusion`)."""
from __future__ import annotations

import math
from typing import Literal

import torch
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
