"""PaiNN (Schütt, Unke, Gastegger, "Equivariant message passing for the prediction of tensorial
properties and molecular spectra", ICML 2021, https://arxiv.org/abs/2102.03150).

Each atom carries scalar features ``s_i`` [F] and vector features ``v_i`` [F, 3] (``v^0 = 0``,
``s^0 = embedding(z_i)``). With ``r_ij = pos[j] + shift @ cell - pos[i]`` (geognn's centre ->
neighbour vector), ``d_ij = |r_ij|`` and ``u_ij = r_ij / d_ij``, each of the T layers applies a
message block then an update block, both residual:

.. math::
    W(d_{ij}) = \\big(W_{vv}, W_{s}, W_{vs}\\big)
              = \\mathrm{Linear}\\big(\\mathrm{rbf}(d_{ij})\\big)\\, f_c(d_{ij}),
    \\qquad \\mathrm{rbf}_n(d) = \\sqrt{2/r_c}\\, \\sin(n \\pi d / r_c) / d,

    (\\phi_{vv}, \\phi_s, \\phi_{vs})(s_j) = \\mathrm{Linear}(\\mathrm{SiLU}(\\mathrm{Linear}(s_j))),

    \\Delta s_i^m = \\sum_j \\phi_s(s_j) \\circ W_s, \\qquad
    \\Delta v_i^m = \\sum_j v_j \\circ \\phi_{vv}(s_j) \\circ W_{vv}
                   + \\phi_{vs}(s_j) \\circ W_{vs}\\; u_{ij},

    (a_{vv}, a_{sv}, a_{ss}) = \\mathrm{Linear}(\\mathrm{SiLU}(\\mathrm{Linear}(
        [s_i, \\|V v_i\\|]))),

    \\Delta v_i^u = a_{vv} \\circ (U v_i), \\qquad
    \\Delta s_i^u = a_{ss} + a_{sv} \\circ \\langle U v_i, V v_i \\rangle

where ``U``, ``V`` are bias-free linear maps mixing the F channels of each Cartesian component
(so they commute with rotations), ``<.,.>`` and ``||.||`` act over the Cartesian axis, and
``f_c(d) = 0.5 (cos(pi d / r_c) + 1)`` is the cosine cutoff, as in the paper.

Notes:

- Direction of ``u_ij``: geognn's ``r_ij`` points from the centre i to the neighbour j. Using the
  opposite direction only flips the sign of ``W_vs`` (a learnable filter), so equivariance and
  expressiveness are the same; it is used consistently everywhere.
- ``||V v||`` is computed as ``sqrt(sum_x (V v)_x^2 + eps)`` with ``eps = 1e-8``: ``v`` starts at
  exactly zero, where the gradient of the plain norm is infinite (NaN forces). The shift is an
  invariant constant, so symmetry is exact.
- Sums over neighbours are plain sums, as in the paper; the envelope on ``W`` makes every message
  vanish smoothly at the cutoff, so energies and forces are continuous.
- Vectors are built from ``r_ij`` only, so ``s`` is E(3)-invariant (reflections included) and
  ``v`` is a polar vector: under ``x -> M x`` (M orthogonal), ``v -> M v``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .. import conventions as K
from ..graph.build import edge_vectors
from ..graph.features import BesselRBF, cosine_cutoff
from ..nn.blocks import MLP
from ..nn.scatter import scatter_sum
from ..nn.species import normalise_species
from .base import Backbone

#: Added under the square root of ||V v|| (see module docstring).
NORM_EPS = 1e-8


class PaiNNMessage(nn.Module):
    """Message block: ``(s [N, F], v [N, 3, F], ...) -> (s + ds, v + dv)``.

    ``v`` is stored channel-last ([N, 3, F]) so that ``nn.Linear`` mixes channels.
    """

    def __init__(self, hidden_channels: int, num_rbf: int):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.phi = MLP([hidden_channels, hidden_channels, 3 * hidden_channels], nn.SiLU)
        self.filter = nn.Linear(num_rbf, 3 * hidden_channels)  # W

    def reset_parameters(self) -> None:
        self.phi.reset_parameters()
        nn.init.xavier_uniform_(self.filter.weight)
        nn.init.zeros_(self.filter.bias)

    def forward(self, s, v, edge_index, rbf, envelope, unit):
        j, i = edge_index  # messages flow j -> i
        w = self.filter(rbf) * envelope.unsqueeze(-1)  # [E, 3F]
        x = self.phi(s).index_select(0, j) * w  # [E, 3F]
        x_vv, x_s, x_vs = torch.split(x, self.hidden_channels, dim=-1)  # 3 x [E, F]
        dv = v.index_select(0, j) * x_vv.unsqueeze(1) + unit.unsqueeze(-1) * x_vs.unsqueeze(1)  # [E, 3, F]
        n = s.shape[0]
        s = s + scatter_sum(x_s, i, dim_size=n)  # [N, F]
        v = v + scatter_sum(dv, i, dim_size=n)  # [N, 3, F]
        return s, v


class PaiNNUpdate(nn.Module):
    """Update block (atom-wise): ``(s [N, F], v [N, 3, F]) -> (s + ds, v + dv)``."""

    def __init__(self, hidden_channels: int):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.U = nn.Linear(hidden_channels, hidden_channels, bias=False)
        self.V = nn.Linear(hidden_channels, hidden_channels, bias=False)
        self.phi = MLP([2 * hidden_channels, hidden_channels, 3 * hidden_channels], nn.SiLU)

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.U.weight)
        nn.init.xavier_uniform_(self.V.weight)
        self.phi.reset_parameters()

    def forward(self, s, v):
        uv = self.U(v)  # [N, 3, F]
        vv = self.V(v)  # [N, 3, F]
        vv_norm = torch.sqrt((vv * vv).sum(dim=1) + NORM_EPS)  # [N, F], smooth at v = 0
        a = self.phi(torch.cat([s, vv_norm], dim=-1))  # [N, 3F]
        a_vv, a_sv, a_ss = torch.split(a, self.hidden_channels, dim=-1)  # 3 x [N, F]
        s = s + a_ss + a_sv * (uv * vv).sum(dim=1)  # [N, F]
        v = v + a_vv.unsqueeze(1) * uv  # [N, 3, F]
        return s, v


class PaiNN(Backbone):
    """Polarizable atom interaction neural network (invariant ``s``, equivariant ``v``).

    Args:
        hidden_channels: number F of scalar and of vector channels (default: 128).
        num_layers: number T of message + update layers (default: 3).
        num_rbf: size of the radial basis ``sin(n pi d / r_c) / d`` (default: 20).
        cutoff: Å; radius of the cosine cutoff and of the basis (default: 5.0).
        max_z: largest atomic number the embedding accepts when ``species`` is None (default: 100).
        species: atomic numbers (or symbols) the model is built for: the embedding gets one row
            per element; None: one row per Z in 0..max_z (default: None).

    ``forward(batch)`` reads ``z`` [N], ``pos`` [N,3] Å, ``cell``, ``edge_index``, ``edge_shift``
    and returns ``{"node_features": s [N, F], "node_vectors": v [N, F, 3] (equivariant)}``.
    """

    name = "painn"
    geometry = "vectors"  # Backbone.geometry: Cartesian vector features
    first_layer_geometry = "vector sums"  # Backbone.first_layer_geometry: one layer sees sums of r_hat_ij

    def __init__(
        self,
        hidden_channels: int = 128,
        num_layers: int = 3,
        num_rbf: int = 20,
        cutoff: float = 5.0,
        max_z: int = 100,
        species: Sequence[int] | None = None,
    ):
        species = normalise_species(species)
        super().__init__(
            hidden_channels=hidden_channels,
            num_layers=num_layers,
            num_rbf=num_rbf,
            cutoff=cutoff,
            max_z=max_z,
            species=species,
        )
        if cutoff <= 0:
            raise ValueError(f"cutoff must be > 0 Å, got {cutoff}")
        if hidden_channels < 1 or num_layers < 1 or num_rbf < 1:
            raise ValueError(
                f"hidden_channels, num_layers and num_rbf must be >= 1, got {hidden_channels}, {num_layers}, {num_rbf}"
            )
        if max_z < 1:
            raise ValueError(f"max_z must be >= 1, got {max_z}")
        self.cutoff = float(cutoff)
        num_elements = self.init_elements(species, max_z)
        self.embedding = nn.Embedding(num_elements, hidden_channels)  # one row per element
        self.rbf = BesselRBF(cutoff, num_rbf, trainable=False)
        self.messages = nn.ModuleList(PaiNNMessage(hidden_channels, num_rbf) for _ in range(num_layers))
        self.updates = nn.ModuleList(PaiNNUpdate(hidden_channels) for _ in range(num_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embedding.weight)
        for block in list(self.messages) + list(self.updates):
            block.reset_parameters()

    def forward(self, batch) -> dict[str, torch.Tensor]:
        rows = self.element_rows(batch[K.Z])  # [N] rows of the element table
        edge_index = batch[K.EDGE_INDEX]
        edge_vec = edge_vectors(batch)  # [E, 3] centre -> neighbour
        distance = edge_vec.norm(dim=-1)  # [E] (> 0: atoms never overlap)
        unit = edge_vec / distance.unsqueeze(-1)  # [E, 3]
        rbf = self.rbf(distance)  # [E, R]
        envelope = cosine_cutoff(distance, self.cutoff)  # [E]
        s = self.embedding(rows)  # [N, F]
        v = s.new_zeros((s.shape[0], 3, s.shape[1]))  # [N, 3, F]
        for message, update in zip(self.messages, self.updates):
            s, v = message(s, v, edge_index, rbf, envelope, unit)
            s, v = update(s, v)
        return {K.NODE_FEATURES: s, K.NODE_VECTORS: v.transpose(1, 2)}  # [N, F], [N, F, 3]
