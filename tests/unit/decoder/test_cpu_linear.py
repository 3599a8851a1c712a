"""Input-major linears compute nn.Linear's product (to float32 rounding), for every batch size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from internvl_serve.decoder.engine.cpu_linear import InputMajorLinear, use_input_major_linears


@pytest.mark.parametrize("rows", [1, 3, 24, 64, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_same_product_as_nn_linear(rows, bias):
    torch.manual_seed(rows)
    linear = nn.Linear(48, 80, bias=bias)
    x = torch.randn(rows, 48)
    fast = InputMajorLinear(linear)
    assert torch.allclose(fast(x), linear(x), rtol=1e-5, atol=1e-5)
    assert fast(x.view(1, rows, 48)).shape == (1, rows, 80)


def test_replaces_linears_in_place_but_the_skipped():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 2))
    keep = model[2]
    assert use_input_major_linears(model, skip=(keep,)) == 2
    assert isinstance(model[0], InputMajorLinear) and isinstance(model[1][0], InputMajorLinear)
    assert model[2] is keep
