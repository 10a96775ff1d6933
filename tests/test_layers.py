"""Linear layers drawn from a generator: torch's default initialisation, reproduced without the global state;
the row gather: plain indexing's values and gradients, byte for byte."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vlm4rec.layers import linear, rows
from vlm4rec.reproducibility import deterministic_torch


@pytest.mark.parametrize("d_in", [1, 3, 64, 128, 384, 512, 1280])
def test_the_torch_initialisation_draws_what_nn_linear_draws_after_manual_seed(d_in) -> None:
    """The fan-ins of the learned fusions and the references' layers: byte-equal to ``nn.Linear``'s own
    Kaiming-uniform (a = sqrt(5)) weights and uniform bias after ``torch.manual_seed``."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(7)
        expected = nn.Linear(d_in, 5)
    finally:
        torch.random.set_rng_state(state)
    layer = linear(d_in, 5, torch.Generator().manual_seed(7), init="torch")
    assert torch.equal(layer.weight, expected.weight) and torch.equal(layer.bias, expected.bias)


def test_xavier_initialisations_have_zero_bias_and_their_bound() -> None:
    layer = linear(25, 7, torch.Generator().manual_seed(0))
    assert np.abs(layer.weight.detach().numpy()).max() <= np.sqrt(6 / 32) and not layer.bias.detach().any()
    assert linear(25, 7, torch.Generator().manual_seed(0), bias=False, init="xavier_normal").bias is None
    with pytest.raises(ValueError, match="unknown linear init"):
        linear(2, 2, torch.Generator(), init="kaiming")


@pytest.mark.parametrize("index_shape", [(300,), (64, 50)])
def test_rows_gives_plain_indexings_values_and_gradients_byte_for_byte(index_shape) -> None:
    """Many repeated rows (a batch of negatives over a small catalogue): the gradient sums must come out in
    the same order as plain indexing's under deterministic algorithms, or the learned fusions would move."""
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(40, 16, generator=generator)
    index = torch.randint(0, 40, index_shape, generator=generator)
    weights = torch.randn(*index_shape, 16, generator=generator)
    with deterministic_torch():
        gathered = {}
        for name, gather in {"rows": rows, "indexing": lambda t, i: t[i]}.items():
            leaf = table.clone().requires_grad_()
            values = gather(leaf, index)
            (values * weights).sum().backward()
            gathered[name] = (values.detach(), leaf.grad)
    assert torch.equal(gathered["rows"][0], gathered["indexing"][0])
    assert torch.equal(gathered["rows"][1], gathered["indexing"][1])
