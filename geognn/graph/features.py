"""Edge features shared by backbones: radial bases and smooth cutoff envelopes.

All functions take distances in Å and are smooth in them, so that energies built from them
have continuous forces.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_cutoff(distance: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Behler's envelope ``f(d) = 0.5 (cos(pi d / r_c) + 1)`` for d < r_c, else 0.

    f and f' vanish at r_c, so an atom crossing the cutoff sphere changes the energy continuously.
    Shape: same as ``distance``.
    """
    f = 0.5 * (torch.cos(distance * (math.pi / cutoff)) + 1.0)
    return f * (distance < cutoff).to(distance.dtype)


class GaussianRBF(nn.Module):
    """Gaussian radial basis ``exp(-gamma (d - mu_k)^2)``, ``mu_k`` evenly spaced on [start, stop].

    ``gamma = 0.5 / delta^2`` with ``delta`` the spacing of the centres (SchNet's choice).
    Input [E] Å -> output [E, num_basis].
    """

    def __init__(self, start: float = 0.0, stop: float = 5.0, num_basis: int = 50):
        super().__init__()
        if num_basis < 2:
            raise ValueError(f"GaussianRBF needs num_basis >= 2, got {num_basis}")
        centres = torch.linspace(start, stop, num_basis)
        self.register_buffer("centres", centres)
        self.gamma = 0.5 / float(centres[1] - centres[0]) ** 2

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma * (distance.unsqueeze(-1) - self.centres) ** 2)

    def extra_repr(self) -> str:
        return (f"start={float(self.centres[0])}, stop={float(self.centres[-1])}, "
                f"num_basis={self.centres.numel()}")
