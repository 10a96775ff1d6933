"""Linear layers drawn from a generator: torch's default initialisation, reproduced without the global state."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vlm4rec.layers import linear


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
