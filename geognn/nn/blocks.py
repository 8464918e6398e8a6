"""Small building blocks shared by backbones and heads."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class ShiftedSoftplus(nn.Module):
    """``ssp(x) = softplus(x) - log 2`` (SchNet's activation; ssp(0) = 0, smooth everywhere)."""

    def __init__(self):
        super().__init__()
        self.shift = math.log(2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(x) - self.shift


class MLP(nn.Sequential):
    """Linear layers of the given widths with an activation between them (none after the last).

    ``MLP([64, 32, 1])`` maps [..., 64] -> [..., 1].
    """

    def __init__(self, widths: Sequence[int], activation: type[nn.Module] = ShiftedSoftplus, bias_last: bool = True):
        if len(widths) < 2:
            raise ValueError(f"MLP needs at least input and output widths, got {list(widths)}")
        layers: list[nn.Module] = []
        for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            last = k == len(widths) - 2
            layers.append(nn.Linear(a, b, bias=bias_last or not last))
            if not last:
                layers.append(activation())
        super().__init__(*layers)

    def reset_parameters(self) -> None:
        for layer in self:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
