"""NequIP (Batzner et al., "E(3)-equivariant graph neural networks for data-efficient and accurate
interatomic potentials", Nat. Commun. 13, 2453 (2022), https://arxiv.org/abs/2101.03164).

Node features are spherical tensors ``h_i = (h_i^{l p})``, C channels for each irrep ``lp``. With
``Y(r̂_ij)`` the real spherical harmonics of the edge direction (l = 0..max_ell, parity (-1)^l,
component normalisation) and ``e(d) = Bessel_n(d) u(d)`` (8 Bessel functions times the p = 6
polynomial envelope u), each of the T interaction layers computes

.. math::
    m_i = W_2 \\frac{1}{n_{avg}} \\sum_{j \\in N(i)}
          R(d_{ij}) \\big( (W_1 h_j) \\otimes_{uvu} Y(\\hat r_{ij}) \\big), \\qquad
    R(d) = \\mathrm{MLP}(e(d))\\, u(d),

    h_i \\leftarrow [h_i +]\\ \\mathrm{Gate}\\big( m_i + \\mathrm{FCTP}(h_i, \\mathrm{onehot}(z_i)) \\big)

with ``h_i^0 = embedding(z_i)`` (C x 0e). ``W_1, W_2`` are e3nn self-interaction ``Linear`` layers,
``⊗_uvu`` the channel-wise Clebsch-Gordan product (only paths to irreps present in the hidden
irreps), ``R`` a 2 x 64 SiLU MLP (e3nn ``FullyConnectedNet``, no biases) giving one weight per
channel and path, ``n_avg`` the constant ``avg_num_neighbors``, FCTP the element-dependent
self-connection, and Gate e3nn's gated nonlinearity (SiLU on 0e, tanh on 0o scalars, sigmoid gates
on l > 0). The residual ``h_i +`` is used when input and output irreps agree (every layer but the
first). Blocks live in ``geognn.nn.e3nn_blocks`` (shared with MACE).

Parity
------
- ``parity=True`` (default): hidden irreps carry both parities of every l,
  ``C x (0e + 0o + 1o + 1e + 2e + 2o + ...)``. Products such as ``1o x 1o -> 1e`` (the cross
  product) are kept, so the network carries pseudotensors; the model is E(3)-equivariant with the
  correct transformation under reflections. Pseudoscalars (0o, e.g. a triple product
  ``r_1 . (r_2 x r_3)``, first reachable in layer 3) change sign under reflection and so tell
  mirror-image (chiral) structures apart (``node_pseudoscalars``), while the energy, read from
  the 0e channels only, is E(3)-invariant: both enantiomers get the same energy, as they should
  in an achiral environment.
- ``parity=False``: only the polar irreps ``C x (0e + 1o + 2e + 3o ...)`` (one per l, parity
  (-1)^l, i.e. "SO(3) irreps"). Paths into pseudotensors are dropped, so every feature is a
  polar tensor: the model is still E(3)-equivariant (the spherical harmonics of the polar vector
  r_ij have parity (-1)^l) and its energy E(3)-invariant, but it has no pseudoscalars: its
  invariant outputs are identical for a structure and its mirror image (``node_vectors`` are
  mirrored), so it cannot represent chirality. Cheaper: half the hidden irreps.

Args:
    hidden_channels: multiplicity C of every hidden irrep (default: 32).
    num_layers: number of interaction layers T (default: 4).
    max_ell: largest l of the spherical harmonics and hidden irreps, 0..3 (default: 1, the NequIP
        code's own default: "l=1 is a good default, l=2 is more accurate but slower"; l = 2 with
        both parities costs about 4.5x more per training step on CPU).
    num_basis: number of Bessel functions (default: 8).
    cutoff: Å; the Bessel basis and the envelope span [0, cutoff] (default: 5.0).
    radial_hidden: widths of the radial MLP's hidden layers (default: (64, 64)).
    avg_num_neighbors: constant dividing the summed messages (default: 10.0).
    parity: keep both parities of every irrep (default: True; see above).
    envelope_p: exponent p of the polynomial envelope (default: 6).
    max_z: largest atomic number the embedding and the one-hot accept when ``species`` is None
        (default: 100).
    species: atomic numbers (or symbols) the model is built for: the embedding and the
        element-dependent self-connection get one row per element; None: one row per Z in
        0..max_z (default: None).

``forward(batch)`` reads ``z`` [N], ``pos`` [N,3] Å, ``cell``, ``edge_index``, ``edge_shift`` and
returns ``node_features`` [N, C] (the 0e channels of the last layer), ``node_vectors`` [N, C, 3]
(its 1o channels, Cartesian x, y, z; absent when max_ell = 0) and, when ``parity=True``,
``node_pseudoscalars`` [N, C] (its 0o channels).
"""

from __future__ import annotations

from typing import Sequence

import torch
from e3nn import o3
from torch import nn

from .. import conventions as K
from ..nn.e3nn_blocks import (
    EdgeConvolution,
    ElementSelfConnection,
    ExactCouplingsMixin,
    SphericalInputs,
    all_parity_irreps,
    cartesian_from_1o,
    check_radial_settings,
    irrep_selector,
    make_gate,
    natural_irreps,
    take_irrep,
)
from ..nn.species import normalise_species
from .base import Backbone, require_positive, require_positive_integers

#: Largest ``max_ell`` accepted (cost grows fast with l; 3 is NequIP's largest published setting).
MAX_ELL = 3


class NequIPLayer(nn.Module):
    """One NequIP interaction: convolution + element self-connection, gate, residual.

    ``forward(h [N, irreps_in], z [N], edge_index, edge_sh, basis, envelope)
    -> [N, irreps_hidden]``.
    """

    def __init__(
        self,
        irreps_in,
        irreps_hidden,
        irreps_sh,
        num_elements: int,
        num_basis: int,
        radial_hidden: Sequence[int],
        avg_num_neighbors: float,
    ):
        super().__init__()
        self.gate = make_gate(irreps_hidden)
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), self.gate.irreps_out
        self.conv = EdgeConvolution(
            irreps_in, irreps_sh, self.gate.irreps_in, num_basis, radial_hidden, avg_num_neighbors
        )
        self.self_connection = ElementSelfConnection(irreps_in, num_elements, self.gate.irreps_in)
        self.residual = self.irreps_in == self.irreps_out

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        self.self_connection.reset_parameters()

    def forward(self, h, z, edge_index, edge_sh, basis, envelope):
        pre = self.conv(h, edge_index, edge_sh, basis, envelope) + self.self_connection(h, z)
        out = self.gate(pre)  # [N, irreps_hidden]
        return h + out if self.residual else out


class NequIP(ExactCouplingsMixin, Backbone):
    __doc__ = __doc__

    name = "nequip"
    geometry = "spherical tensors"  # Backbone.geometry: e3nn features up to max_ell
    first_layer_geometry = "vector sums"  # Backbone.first_layer_geometry: one layer sees sums of r_hat_ij

    def __init__(
        self,
        hidden_channels: int = 32,
        num_layers: int = 4,
        max_ell: int = 1,
        num_basis: int = 8,
        cutoff: float = 5.0,
        radial_hidden: Sequence[int] = (64, 64),
        avg_num_neighbors: float = 10.0,
        parity: bool = True,
        envelope_p: int = 6,
        max_z: int = 100,
        species: Sequence[int] | None = None,
    ):
        radial_hidden = [int(w) for w in radial_hidden]
        species = normalise_species(species)
        super().__init__(
            hidden_channels=hidden_channels,
            num_layers=num_layers,
            max_ell=max_ell,
            num_basis=num_basis,
            cutoff=cutoff,
            radial_hidden=radial_hidden,
            avg_num_neighbors=avg_num_neighbors,
            parity=parity,
            envelope_p=envelope_p,
            max_z=max_z,
            species=species,
        )
        if not 0 <= int(max_ell) <= MAX_ELL or int(max_ell) != max_ell:
            raise ValueError(f"max_ell must be an integer in 0..{MAX_ELL}, got {max_ell}")
        require_positive_integers(
            hidden_channels=hidden_channels, num_layers=num_layers, num_basis=num_basis, max_z=max_z
        )
        require_positive(cutoff=cutoff, avg_num_neighbors=avg_num_neighbors)
        check_radial_settings(envelope_p, radial_hidden)
        self.cutoff = float(cutoff)
        self.parity = bool(parity)
        channels = int(hidden_channels)
        self.num_elements = self.init_elements(species, max_z)  # rows of every per-element table
        self.inputs = SphericalInputs(channels, int(max_ell), num_basis, cutoff, envelope_p, self.num_elements)
        self.irreps_sh = self.inputs.irreps_sh  # 0e + 1o + 2e + ...
        hidden = (all_parity_irreps if self.parity else natural_irreps)(channels, int(max_ell))
        layers, irreps = [], o3.Irreps(f"{channels}x0e")
        for _ in range(int(num_layers)):
            layers.append(
                NequIPLayer(
                    irreps, hidden, self.irreps_sh, self.num_elements, num_basis, radial_hidden, avg_num_neighbors
                )
            )
            irreps = layers[-1].irreps_out
        self.layers = nn.ModuleList(layers)
        self.irreps_hidden = irreps
        # columns of the outputs' irreps, computed once: forward never touches e3nn Irreps objects
        # (torch.compile cannot guard on them; see geognn.nn.e3nn_blocks.irrep_selector)
        self._out_irreps = {ir: irrep_selector(irreps, ir) for ir in ("0e", "1o", "0o")}
        self.reset_parameters()
        self._keep_couplings_exact()

    @property
    def feature_order(self) -> int:
        """``max_ell``: edge harmonics and hidden irreps stop there (Backbone.feature_order)."""
        return int(self.hparams["max_ell"])

    def reset_parameters(self) -> None:
        self.inputs.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, batch) -> dict[str, torch.Tensor]:
        rows = self.element_rows(batch[K.Z])  # [N] rows of the element tables
        edge_index = batch[K.EDGE_INDEX]
        h, edge_sh, basis, envelope = self.inputs(batch, rows)  # [N, C x 0e], edge features
        for layer in self.layers:
            h = layer(h, rows, edge_index, edge_sh, basis, envelope)  # [N, irreps_hidden]
        out = {K.NODE_FEATURES: take_irrep(h, self._out_irreps["0e"]).squeeze(-1)}  # [N, C]
        if self.hparams["max_ell"] >= 1:
            out[K.NODE_VECTORS] = cartesian_from_1o(take_irrep(h, self._out_irreps["1o"]))  # [N, C, 3]
        if self.parity:
            out["node_pseudoscalars"] = take_irrep(h, self._out_irreps["0o"]).squeeze(-1)  # [N, C]
        return out
