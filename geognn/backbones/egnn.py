"""EGNN (Satorras, Hoogeboom, Welling, "E(n) Equivariant Graph Neural Networks", ICML 2021,
https://arxiv.org/abs/2102.09844), adapted to periodic graphs with a cutoff radius.

The paper's layer (its Eqs. 3-6), with ``x`` the coordinates and ``a_ij`` edge attributes::

    m_ij      = phi_e(h_i, h_j, ||x_i - x_j||^2, a_ij)
    x_i^(l+1) = x_i + C sum_j (x_i - x_j) phi_x(m_ij)
    m_i       = sum_j m_ij
    h_i^(l+1) = h_i + phi_h(h_i, m_i)          (the residual form of the authors' code)

and the next layer reads ``||x_i^(l+1) - x_j^(l+1)||^2``: geometry moved by one layer is seen by
the next, which is how orientation travels along a chain (Joshi et al., ICML 2023: EGNN is an
equivariant GNN, bounded by GWL, not IGWL).

What geognn implements, layer by layer l = 0..L-1. ``r_ij = pos[j] + shift @ cell - pos[i]``
(centre -> neighbour, from ``edge_vectors``), ``d_ij = |r_ij|`` its length in the input geometry,
``f_c`` a cosine envelope and ``u_i^l`` the displacement of atom i accumulated so far (u^0 = 0):

.. math::
    r_{ij}^l = r_{ij} + u_j^l - u_i^l, \\qquad
    a_{ij}^l = s \\big[\\, |r_{ij}^l|^2 / r_c^2,\\; e(d_{ij}) \\big], \\qquad
    s = \\sqrt{2H / \\sqrt{\\pi}},

    m_{ij} = f_c(d_{ij})\\, \\phi_e\\big(h_i, h_j, a_{ij}^l\\big), \\qquad
    m_i = \\frac{1}{A} \\sum_{j} m_{ij}, \\qquad
    h_i \\leftarrow h_i + \\phi_h(h_i, m_i),

    u_i^{l+1} = u_i^l - \\frac{w}{A} \\sum_j \\frac{r_{ij}^l}{|r_{ij}^l| + 1}\\, f_c(d_{ij})\\, \\phi_x(m_{ij})

(``x_i - x_j = -r_ij``: the minus sign is the paper's ``(x_i - x_j)``; ``|r| + 1`` in Å; the paper's
``C`` is ``w / A``, with ``w`` = ``coords_weight``, the authors' code's name). Returned:
``node_features`` h^L [N, H] (invariant) and ``node_vectors`` u^L [N, 1, 3] Å, the total
displacement x^L - x^0 (equivariant).

Design choices, and why:

- **Coordinates move as relative vectors** (``update_coords=True``, the default: the paper's
  general model, and the dojo's). ``pos`` itself is never changed: each layer's edge vector is
  the input edge vector plus the difference of the two atoms' accumulated displacements. A
  periodic image of atom j moves with atom j, so this is exactly ``x_j^l + shift @ cell - x_i^l``
  and stays correct across cell boundaries, and forces and stress stay autograd derivatives with
  respect to the real positions and cell (everything is a function of ``edge_vectors``).
- ``update_coords=False`` is the paper's QM9 setting (invariant targets, coordinates fixed): every
  layer reads the input distances and ``u`` is only accumulated for ``node_vectors``; ``h`` is then
  the output of a distance-only (IGWL-bounded) model.
- **Cutoff and envelope.** The paper uses a fully connected graph; with a cutoff radius every
  message and every displacement term is multiplied by ``f_c(d_ij) = 0.5 (cos(pi d / r_c) + 1)``
  of the *input* distance, which decides which edges exist: value and slope vanish at r_c, so
  energies and forces are continuous when an atom crosses the cutoff sphere, whatever the
  displaced geometry looks like.
- **Edge attributes, and their scale.** The geometry enters as ``|r_ij^l|^2 / r_c^2`` (the paper's
  ``||x_i - x_j||^2`` at layer l, made dimensionless) and a Gaussian basis ``e(d_ij)`` of the
  input distance (the paper's fixed edge attribute ``a_ij``; no square root of a moved distance,
  which would be singular if two atoms met), both multiplied by ``s = sqrt(2H / sqrt(pi))`` (12.0
  for H = 128). Why: phi_e's first Linear sees the 2H node features ``[h_i, h_j]`` (the embedding
  is N(0, 1), so ``|[h_i, h_j]|^2 ~ 2H``) next to the 1 + G geometric ones. The Gaussians (width =
  spacing) have ``sum_k e_k(d)^2 ~ sqrt(pi)`` for any d inside the cutoff, whatever G, so unscaled
  the distance is < 1 % of that input's squared norm: messages hardly depend on geometry at
  initialisation, and since Adam moves every weight by about the learning rate, the distance
  pathway also learns roughly ``s`` times more slowly. On the QM9 subset (trainer defaults, seed
  0, coordinates fixed) the train loss after 2 epochs was 0.91 unscaled, 0.99 for a geometry-blind
  EGNN and 0.45 with ``s``. A constant factor on invariant features leaves symmetry and
  smoothness untouched.
- **Normalised sums.** Sums over neighbours are divided by a constant ``A``
  (``avg_num_neighbors``), not by each atom's neighbour count: a count jumps when an atom crosses
  the cutoff, which would make the energy discontinuous. The paper's ``C = 1/(M-1)`` for the
  coordinate update becomes the same ``1/A``.
- **Stable displacements.** Each relative vector in the coordinate update is divided by its
  length plus one Å (a stabilisation the dojo's EGNN layer mentions; the authors' code has a
  ``normalize`` option dividing by the length alone, which is singular when two atoms meet): a
  term is at most
  ``|phi_x(m_ij)|`` long, however far the neighbour. With phi_x at its plain init, atoms of QM9
  molecules and MP-20 crystals move by at most ~0.1 Å over 4 layers at initialisation (default
  model, seeds 0 and 1), and the energies and forces of an untrained ``geognn.Model`` are as with
  fixed coordinates (energy per atom spread 0.2-0.7 eV, forces 0.2-0.4 eV/Å rms;
  tests/test_backbone_egnn.py). The authors' code also draws phi_x's last layer with gain 1e-3;
  geognn keeps the plain init, so the coordinate pathway is not silent at initialisation (the
  expressivity probes of random models rely on it).
- The paper's optional edge-inference gate ``e_ij = sigmoid(phi_inf(m_ij))`` is not used: with a
  cutoff, the envelope already weights edges by distance, and on the QM9 subset the gate slowed
  learning (train loss after 2 epochs 0.68 with it, 0.45 without).

Distances only enter through ``|r_ij^l|`` and ``d_ij``, so ``h`` is E(3)-invariant (reflections
included) and ``u`` is a polar vector: under ``x -> M x`` (M orthogonal), ``u -> M u``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .. import conventions as K
from ..graph.build import edge_vectors
from ..graph.features import GaussianRBF, cosine_cutoff
from ..nn.blocks import MLP
from ..nn.scatter import scatter_sum
from ..nn.species import normalise_species
from .base import Backbone, require_positive


class EGNNLayer(nn.Module):
    """One E_GCL layer: edge MLP phi_e, node MLP phi_h, coordinate MLP phi_x.

    ``forward(h [N, H], edge_index [2, E], edge_vec [E, 3] (r_ij^l, Å), basis [E, G] (e(d_ij),
    already scaled by s), envelope [E]) -> (h [N, H], du [N, 3])`` with ``du`` (Å) the
    displacement this layer makes, ``-(w/A) sum_j r_ij^l / (|r_ij^l| + 1) f_c phi_x(m_ij)``.
    """

    def __init__(
        self,
        hidden_channels: int,
        num_rbf: int,
        avg_num_neighbors: float,
        cutoff: float,
        edge_attr_scale: float,
        coords_weight: float = 1.0,
    ):
        super().__init__()
        self.inv_avg = 1.0 / float(avg_num_neighbors)
        self.coord_factor = float(coords_weight) / float(avg_num_neighbors)  # C = w / A
        self.cutoff = float(cutoff)
        self.edge_attr_scale = float(edge_attr_scale)
        # phi_e: two linear layers, SiLU after each (as in the paper's code)
        self.phi_e = nn.Sequential(
            MLP([2 * hidden_channels + 1 + num_rbf, hidden_channels, hidden_channels], nn.SiLU), nn.SiLU()
        )
        self.phi_h = MLP([2 * hidden_channels, hidden_channels, hidden_channels], nn.SiLU)
        self.phi_x = MLP([hidden_channels, hidden_channels, 1], nn.SiLU, bias_last=False)

    def reset_parameters(self) -> None:
        self.phi_e[0].reset_parameters()
        self.phi_h.reset_parameters()
        self.phi_x.reset_parameters()

    def forward(self, h, edge_index, edge_vec, basis, envelope):
        j, i = edge_index  # messages flow j -> i
        n = h.shape[0]
        env = envelope.unsqueeze(-1)  # [E, 1]
        dist2 = (edge_vec * edge_vec).sum(-1, keepdim=True)  # [E, 1] |r_ij^l|^2, Å^2
        edge_attr = torch.cat([dist2 * (self.edge_attr_scale / self.cutoff**2), basis], dim=-1)  # [E, 1 + G] a_ij^l
        m_ij = self.phi_e(torch.cat([h.index_select(0, i), h.index_select(0, j), edge_attr], dim=-1))
        m_ij = m_ij * env  # [E, H]
        m_i = scatter_sum(m_ij, i, dim_size=n) * self.inv_avg  # [N, H]
        h = h + self.phi_h(torch.cat([h, m_i], dim=-1))  # [N, H]
        # [E, 3] r_ij^l / (|r_ij^l| + 1); the clamp keeps the gradient finite if two moved atoms met
        unit = edge_vec / (dist2.clamp_min(1e-12).sqrt() + 1.0)
        terms = -unit * (self.phi_x(m_ij) * env)  # [E, 3] (x_i - x_j)/(|x_i - x_j| + 1) phi_x(m_ij) f_c
        du = scatter_sum(terms, i, dim_size=n) * self.coord_factor  # [N, 3]
        return h, du


class EGNN(Backbone):
    """E(n)-equivariant GNN backbone (invariant ``node_features``, equivariant ``node_vectors``).

    Args:
        hidden_channels: width H of the atom features h and messages m (default: 128).
        num_layers: number of E_GCL layers L (default: 4).
        num_rbf: size of the Gaussian distance basis used as edge attribute a_ij (default: 16).
        cutoff: Å; envelope and basis span [0, cutoff] (default: 5.0).
        avg_num_neighbors: the constant A dividing every sum over neighbours (default: 10.0).
        max_z: largest atomic number the embedding accepts when ``species`` is None (default: 100).
        species: atomic numbers (or symbols) the model is built for: the embedding gets one row
            per element; None: one row per Z in 0..max_z (default: None).
        update_coords: move the coordinates every layer, as in the paper's Eq. 4 (default: True);
            False keeps them fixed (the paper's QM9 setting; h is then distance-only).
        coords_weight: w, the factor on every coordinate update, C = w / A (default: 1.0; the
            authors' code has the same option).

    ``forward(batch)`` reads ``z`` [N], ``pos`` [N,3] Å, ``cell``, ``edge_index``, ``edge_shift``
    and returns ``{"node_features": h [N, H], "node_vectors": u [N, 1, 3] Å}`` (u: the total
    displacement of each atom over the L layers; equivariant).
    """

    name = "egnn"
    geometry = "vectors"
    first_layer_geometry = "vector sums"  # Backbone.first_layer_geometry: one layer sees sums of r_hat_ij

    def __init__(
        self,
        hidden_channels: int = 128,
        num_layers: int = 4,
        num_rbf: int = 16,
        cutoff: float = 5.0,
        avg_num_neighbors: float = 10.0,
        max_z: int = 100,
        update_coords: bool = True,
        coords_weight: float = 1.0,
        species: Sequence[int] | None = None,
    ):
        species = normalise_species(species)
        super().__init__(
            hidden_channels=hidden_channels,
            num_layers=num_layers,
            num_rbf=num_rbf,
            cutoff=cutoff,
            avg_num_neighbors=avg_num_neighbors,
            max_z=max_z,
            update_coords=update_coords,
            coords_weight=coords_weight,
            species=species,
        )
        if cutoff <= 0:
            raise ValueError(f"cutoff must be > 0 Å, got {cutoff}")
        if hidden_channels < 1 or num_layers < 1:
            raise ValueError(f"hidden_channels and num_layers must be >= 1, got {hidden_channels}, {num_layers}")
        require_positive(avg_num_neighbors=avg_num_neighbors, coords_weight=coords_weight)
        if max_z < 1:
            raise ValueError(f"max_z must be >= 1, got {max_z}")
        if not isinstance(update_coords, bool):
            raise ValueError(f"update_coords must be True or False, got {update_coords!r}")
        self.cutoff = float(cutoff)
        num_elements = self.init_elements(species, max_z)
        self.update_coords = update_coords
        if not update_coords:
            self.geometry = "distances"  # h never sees a moved coordinate: a distance-only model
        self.embedding = nn.Embedding(num_elements, hidden_channels)  # one row per element
        self.rbf = GaussianRBF(0.0, cutoff, num_rbf)  # ValueError for num_rbf < 2
        # s: geometric inputs of phi_e as large as the node inputs (module docstring)
        self.edge_attr_scale = math.sqrt(2.0 * hidden_channels / math.sqrt(math.pi))
        self.layers = nn.ModuleList(
            EGNNLayer(hidden_channels, num_rbf, avg_num_neighbors, cutoff, self.edge_attr_scale, coords_weight)
            for _ in range(num_layers)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embedding.weight)
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, batch) -> dict[str, torch.Tensor]:
        rows = self.element_rows(batch[K.Z])  # [N] rows of the element table
        j, i = batch[K.EDGE_INDEX]
        edge_vec = edge_vectors(batch)  # [E, 3] r_ij, centre -> neighbour
        distance = edge_vec.norm(dim=-1)  # [E] d_ij (> 0: atoms never overlap)
        basis = self.rbf(distance) * self.edge_attr_scale  # [E, G] s e(d_ij), fixed over layers
        envelope = cosine_cutoff(distance, self.cutoff)  # [E]
        h = self.embedding(rows)  # [N, H]
        u = h.new_zeros((h.shape[0], 3))  # [N, 3] accumulated displacement
        vec = edge_vec  # [E, 3] r_ij^l
        for layer in self.layers:
            h, du = layer(h, batch[K.EDGE_INDEX], vec, basis, envelope)
            u = u + du
            if self.update_coords:
                vec = edge_vec + u.index_select(0, j) - u.index_select(0, i)  # r_ij + u_j - u_i
        return {K.NODE_FEATURES: h, K.NODE_VECTORS: u.unsqueeze(1)}
