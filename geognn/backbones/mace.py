"""MACE (Batatia et al., "MACE: Higher Order Equivariant Message Passing Neural Networks for Fast
and Accurate Force Fields", NeurIPS 2022, https://arxiv.org/abs/2206.07697).

With ``h_i^0 = embedding(z_i)`` (C x 0e), ``Y(r̂_ij)`` the spherical harmonics of the edge direction
up to ``max_ell`` and ``e(d)`` the Bessel basis times the p = 6 polynomial envelope u(d), each of
the T layers computes

.. math::
    A_{i} = W_2 \\frac{1}{n_{avg}} \\sum_{j \\in N(i)} R(d_{ij})
            \\big( (W_1 h_j) \\otimes_{uvu} Y(\\hat r_{ij}) \\big)
    \\qquad \\text{(one-particle basis, irreps C x (0e + 1o + ... + max\\_ell))}

    P^{(1)}_i = A_i, \\quad
    P^{(\\nu)}_{i,k} = \\big(P^{(\\nu-1)}_{i,k} \\otimes A_{i,k}\\big)_{w^{(\\nu)}_{z_i k \\eta}}, \\quad
    B^{(1)}_{i,kLM} = w^{(1)}_{z_i k L} A_{i,kLM}, \\quad
    B^{(\\nu)}_i = P^{(\\nu)}_i \\big|_{\\text{hidden irreps}}
    \\qquad (\\nu = 1..\\text{correlation})

    h_i \\leftarrow W_3 \\sum_{\\nu} B^{(\\nu)}_i + \\mathrm{FCTP}(h_i, \\mathrm{onehot}(z_i))

``W_1, W_2, W_3`` are e3nn ``Linear`` layers, ``R`` a 2 x 64 SiLU MLP of e(d) times u(d), ``n_avg``
the constant ``avg_num_neighbors``, and FCTP the element-dependent self-connection (residual).
``B^(nu)`` has body order nu + 1, so a layer with correlation 3 sees 4-body terms.

Symmetric contraction: implemented as iterated channel-wise tensor products (``uuu``: channel k
of P times channel k of A, as in MACE, which never mixes channels inside the product), each with a
weight per element, channel and coupling path (``geognn.nn.e3nn_blocks.SymmetricContraction``).
This is chosen over ``o3.ReducedTensorProducts`` because it reads one-to-one as the recursion
above and uses only channel-wise Clebsch-Gordan products (``geognn.nn.tensor_product``, equal to
e3nn's ``TensorProduct`` to 1e-12), while ReducedTensorProducts solves for its
basis numerically in the full (sum_l (2l+1))^nu-dimensional product space at every model
construction. The difference from MACE's generalised Clebsch-Gordan contraction: intermediate
couplings are capped at l <= max_ell (both parities kept, so pseudotensor intermediates like the
cross product are not lost), and the weights of a nu-fold product factor over its successive
couplings instead of being one free weight per path. No explicit symmetrisation is needed: all
factors are copies of the same A_k, so the products lie in the symmetric power and couplings
that would be antisymmetric vanish identically.

The blocks live in ``geognn.nn.e3nn_blocks`` (shared with NequIP). As in MACE there is no
nonlinearity inside the layers: the product basis is the nonlinearity; the energy head (in
``geognn.model``) reads the invariant features.

Defaults: the paper's 2 layers, spherical harmonics up to l = 3 and correlation 3, scaled down
for CPU in width (its models use 128-256 channels and hidden irreps up to l = 2): C = 32 and hidden
irreps ``C x (0e + 1o)`` (its "L = 1" variant).

Args:
    hidden_channels: multiplicity C of every irrep (default: 32).
    num_layers: number of MACE layers T (default: 2).
    max_ell: largest l of the edge spherical harmonics and of A (default: 3; 1..3 accepted).
    hidden_max_ell: largest l of the hidden features h (polar irreps 0e, 1o, 2e; default: 1;
        must be <= max_ell).
    correlation: largest body-order index nu of the product basis, 1..3 (default: 3).
    num_basis: number of Bessel functions (default: 8).
    cutoff: Å; radial basis and envelope span [0, cutoff] (default: 5.0).
    radial_hidden: widths of the radial MLP's hidden layers (default: (64, 64)).
    avg_num_neighbors: constant dividing the summed messages (default: 10.0).
    envelope_p: exponent p of the polynomial envelope (default: 6).
    max_z: largest atomic number the embedding and the element weights accept when ``species`` is
        None (default: 100).
    species: atomic numbers (or symbols) the model is built for: the embedding, the product-basis
        weights w_z and the self-connection get one row per element; None: one row per Z in
        0..max_z (default: None).

``forward(batch)`` returns ``node_features`` [N, T * C]: the 0e channels of every layer's output,
concatenated over layers (MACE reads out the energy from every layer and sums), and
``node_vectors`` [N, C, 3]: the 1o channels of the last layer, Cartesian (x, y, z).
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
    SymmetricContraction,
    cartesian_from_1o,
    check_radial_settings,
    irrep_selector,
    natural_irreps,
    reset_e3nn_parameters,
    take_irrep,
)
from ..nn.species import normalise_species
from .base import Backbone, require_positive, require_positive_integers

#: Largest ``max_ell`` of the edge spherical harmonics accepted.
MAX_ELL = 3
#: Largest correlation order accepted.
MAX_CORRELATION = 3


class MACELayer(nn.Module):
    """One MACE layer: A (convolution), B (symmetric contraction), linear, element self-connection.

    ``forward(h [N, irreps_in], z [N], edge_index, edge_sh, basis, envelope)
    -> [N, irreps_hidden]``.
    """

    def __init__(
        self,
        irreps_in,
        irreps_hidden,
        irreps_sh,
        irreps_a,
        correlation: int,
        num_elements: int,
        num_basis: int,
        radial_hidden: Sequence[int],
        avg_num_neighbors: float,
    ):
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_hidden)
        self.conv = EdgeConvolution(irreps_in, irreps_sh, irreps_a, num_basis, radial_hidden, avg_num_neighbors)
        self.product = SymmetricContraction(irreps_a, irreps_hidden, correlation, num_elements)
        self.linear = o3.Linear(irreps_hidden, irreps_hidden)  # W_3
        self.self_connection = ElementSelfConnection(irreps_in, num_elements, irreps_hidden)

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        self.product.reset_parameters()
        reset_e3nn_parameters(self.linear)
        self.self_connection.reset_parameters()

    def forward(self, h, z, edge_index, edge_sh, basis, envelope):
        a = self.conv(h, edge_index, edge_sh, basis, envelope)  # [N, irreps_a]
        b = self.product(a, z)  # [N, irreps_hidden], sum over nu of B^(nu)
        return self.linear(b) + self.self_connection(h, z)  # [N, irreps_hidden]


class MACE(ExactCouplingsMixin, Backbone):
    __doc__ = __doc__

    name = "mace"
    geometry = "spherical tensors"  # Backbone.geometry: e3nn features up to hidden_max_ell

    def __init__(
        self,
        hidden_channels: int = 32,
        num_layers: int = 2,
        max_ell: int = 3,
        hidden_max_ell: int = 1,
        correlation: int = 3,
        num_basis: int = 8,
        cutoff: float = 5.0,
        radial_hidden: Sequence[int] = (64, 64),
        avg_num_neighbors: float = 10.0,
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
            hidden_max_ell=hidden_max_ell,
            correlation=correlation,
            num_basis=num_basis,
            cutoff=cutoff,
            radial_hidden=radial_hidden,
            avg_num_neighbors=avg_num_neighbors,
            envelope_p=envelope_p,
            max_z=max_z,
            species=species,
        )
        if int(max_ell) != max_ell or not 1 <= max_ell <= MAX_ELL:
            raise ValueError(f"max_ell must be an integer in 1..{MAX_ELL}, got {max_ell}")
        if int(hidden_max_ell) != hidden_max_ell or not 1 <= hidden_max_ell <= max_ell:
            raise ValueError(f"hidden_max_ell must be an integer in 1..max_ell={max_ell}, got {hidden_max_ell}")
        if int(correlation) != correlation or not 1 <= correlation <= MAX_CORRELATION:
            raise ValueError(f"correlation must be an integer in 1..{MAX_CORRELATION}, got {correlation}")
        require_positive_integers(
            hidden_channels=hidden_channels, num_layers=num_layers, num_basis=num_basis, max_z=max_z
        )
        require_positive(cutoff=cutoff, avg_num_neighbors=avg_num_neighbors)
        check_radial_settings(envelope_p, radial_hidden)
        self.cutoff = float(cutoff)
        channels = int(hidden_channels)
        self.num_elements = self.init_elements(species, max_z)  # rows of every per-element table
        self.inputs = SphericalInputs(channels, int(max_ell), num_basis, cutoff, envelope_p, self.num_elements)
        self.irreps_sh = self.inputs.irreps_sh  # 0e + 1o + 2e + 3o
        self.irreps_hidden = natural_irreps(channels, int(hidden_max_ell))  # C x (0e + 1o)
        irreps_a = natural_irreps(channels, int(max_ell))  # C x (0e + 1o + 2e + 3o)
        layers, irreps = [], o3.Irreps(f"{channels}x0e")
        for _ in range(int(num_layers)):
            layers.append(
                MACELayer(
                    irreps,
                    self.irreps_hidden,
                    self.irreps_sh,
                    irreps_a,
                    int(correlation),
                    self.num_elements,
                    num_basis,
                    radial_hidden,
                    avg_num_neighbors,
                )
            )
            irreps = self.irreps_hidden
        self.layers = nn.ModuleList(layers)
        # columns of the outputs' irreps, computed once: forward never touches e3nn Irreps objects
        # (torch.compile cannot guard on them; see geognn.nn.e3nn_blocks.irrep_selector)
        self._out_irreps = {ir: irrep_selector(self.irreps_hidden, ir) for ir in ("0e", "1o")}
        self.reset_parameters()
        self._keep_couplings_exact()

    @property
    def out_channels(self) -> int:
        return self.hparams["hidden_channels"] * self.hparams["num_layers"]

    @property
    def feature_order(self) -> int:
        """``max_ell``: the edge harmonics and A reach it, the hidden features stop at
        ``hidden_max_ell`` <= max_ell (Backbone.feature_order)."""
        return int(self.hparams["max_ell"])

    def reset_parameters(self) -> None:
        self.inputs.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, batch) -> dict[str, torch.Tensor]:
        rows = self.element_rows(batch[K.Z])  # [N] rows of the element tables
        edge_index = batch[K.EDGE_INDEX]
        h, edge_sh, basis, envelope = self.inputs(batch, rows)  # [N, C x 0e], edge features
        scalars = []
        for layer in self.layers:
            h = layer(h, rows, edge_index, edge_sh, basis, envelope)  # [N, irreps_hidden]
            scalars.append(take_irrep(h, self._out_irreps["0e"]).squeeze(-1))  # [N, C]
        return {
            K.NODE_FEATURES: torch.cat(scalars, dim=-1),  # [N, T * C]
            K.NODE_VECTORS: cartesian_from_1o(take_irrep(h, self._out_irreps["1o"])),
        }  # [N, C, 3]
