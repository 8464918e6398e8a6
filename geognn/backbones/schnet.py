"""SchNet (Schütt et al., NeurIPS 2017, https://arxiv.org/abs/1706.08566; J. Chem. Phys. 148,
241722 (2018)): continuous-filter convolutions over interatomic distances.

With ``h_i^0 = embedding(z_i)`` and ``d_ij = |r_ij|`` (images included for periodic systems),
each of the T interaction blocks updates

.. math::
    x_j = W_1 h_j, \\qquad
    W(d_{ij}) = \\phi(e_k(d_{ij})) \\, f_c(d_{ij}), \\qquad
    m_i = \\sum_{j \\in N(i)} x_j \\odot W(d_{ij}),

    h_i \\leftarrow h_i + W_3\\, \\mathrm{ssp}(W_2 m_i + b_2) + b_3

where ``e_k(d) = exp(-gamma (d - mu_k)^2)`` is a Gaussian basis on [0, cutoff], ``phi`` a
two-layer filter network with shifted-softplus activation, and
``f_c(d) = 0.5 (cos(pi d / r_c) + 1)`` a cosine envelope that makes the energy continuous when
an atom crosses the cutoff. Output: the invariant per-atom features ``h^T`` [N, hidden_channels].
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .. import conventions as K
from ..graph.build import edge_vectors
from ..graph.features import GaussianRBF, cosine_cutoff
from ..nn.blocks import MLP, ShiftedSoftplus
from ..nn.scatter import scatter_sum
from ..nn.species import normalise_species
from .base import Backbone


class CFConvInteraction(nn.Module):
    """One SchNet interaction block: filter-generating network, convolution, atom-wise update.

    ``forward(h [N, H], edge_index [2, E], rbf [E, G], envelope [E]) -> h + dh [N, H]``.
    """

    def __init__(self, hidden_channels: int, num_filters: int, num_gaussians: int):
        super().__init__()
        self.filter_net = MLP([num_gaussians, num_filters, num_filters])  # phi
        self.in_to_filter = nn.Linear(hidden_channels, num_filters, bias=False)  # W_1
        self.update = nn.Sequential(  # W_3 ssp(W_2 m + b_2) + b_3
            nn.Linear(num_filters, hidden_channels), ShiftedSoftplus(), nn.Linear(hidden_channels, hidden_channels)
        )

    def reset_parameters(self) -> None:
        self.filter_net.reset_parameters()
        nn.init.xavier_uniform_(self.in_to_filter.weight)
        for layer in self.update:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, h, edge_index, rbf, envelope):
        j, i = edge_index  # messages flow j -> i
        w = self.filter_net(rbf) * envelope.unsqueeze(-1)  # [E, F]
        x = self.in_to_filter(h)  # [N, F]
        # index_select, not x[j]: its backward is a scatter-add, much faster on CPU than index_put
        m = scatter_sum(x.index_select(0, j) * w, i, dim_size=h.shape[0])  # [N, F]
        return h + self.update(m)


class SchNet(Backbone):
    """SchNet backbone (invariant; distances only, so also reflection-invariant).

    Args:
        hidden_channels: width H of the atom features (default: 128).
        num_filters: width F of the continuous filters (default: 128).
        num_layers: number of interaction blocks T (default: 6).
        num_gaussians: size of the Gaussian distance basis (default: 50).
        cutoff: Å; the envelope and the basis span [0, cutoff] (default: 5.0).
        max_z: largest atomic number the embedding accepts when ``species`` is None (default: 100).
        species: atomic numbers (or symbols) the model is built for: the embedding gets one row
            per element; None: one row per Z in 0..max_z (default: None).

    ``forward(batch)`` reads ``z`` [N], ``pos`` [N,3] Å, ``cell``, ``edge_index``, ``edge_shift``
    and returns ``{"node_features": [N, H]}``.
    """

    name = "schnet"
    geometry = "distances"  # Backbone.geometry: continuous filters of d_ij only

    def __init__(
        self,
        hidden_channels: int = 128,
        num_filters: int = 128,
        num_layers: int = 6,
        num_gaussians: int = 50,
        cutoff: float = 5.0,
        max_z: int = 100,
        species: Sequence[int] | None = None,
    ):
        species = normalise_species(species)
        super().__init__(
            hidden_channels=hidden_channels,
            num_filters=num_filters,
            num_layers=num_layers,
            num_gaussians=num_gaussians,
            cutoff=cutoff,
            max_z=max_z,
            species=species,
        )
        if cutoff <= 0:
            raise ValueError(f"cutoff must be > 0 Å, got {cutoff}")
        self.cutoff = float(cutoff)
        num_elements = self.init_elements(species, max_z)
        self.embedding = nn.Embedding(num_elements, hidden_channels)  # one row per element
        self.rbf = GaussianRBF(0.0, cutoff, num_gaussians)
        self.interactions = nn.ModuleList(
            CFConvInteraction(hidden_channels, num_filters, num_gaussians) for _ in range(num_layers)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embedding.weight)
        for block in self.interactions:
            block.reset_parameters()

    def forward(self, batch) -> dict[str, torch.Tensor]:
        rows = self.element_rows(batch[K.Z])  # [N] rows of the element table
        distance = edge_vectors(batch).norm(dim=-1)  # [E]
        rbf = self.rbf(distance)  # [E, G]
        envelope = cosine_cutoff(distance, self.cutoff)  # [E]
        h = self.embedding(rows)  # [N, H]
        for block in self.interactions:
            h = block(h, batch[K.EDGE_INDEX], rbf, envelope)
        return {K.NODE_FEATURES: h}
