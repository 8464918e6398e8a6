"""e3nn building blocks shared by the spherical-tensor backbones (NequIP, MACE).

Blocks are small and separate from the assembled models (MACE's ``modules/blocks.py`` habit):
``geognn.backbones.nequip`` and ``geognn.backbones.mace`` compose them.

Notation: ``C`` is the multiplicity (channels) per irrep, ``N`` atoms, ``E`` edges, ``[N, irreps]``
a tensor laid out as e3nn's ``irreps.dim`` columns. Edges follow geognn's convention:
``edge_index[0]`` = neighbour j (source), ``edge_index[1]`` = centre i (target), and the edge vector
``r_ij`` points from i to j. Spherical harmonics are those of ``r_ij / |r_ij|``; because they have
parity ``(-1)^l``, flipping the edge direction (MACE's convention) would flip odd ``l``.

Parity and the l = 1 basis: irreps ``lp`` carry parity ``p``; polar (true) tensors of order l have
``p = (-1)^l`` ("natural" parity: 0e, 1o, 2e, 3o). ``cartesian_from_1o`` converts a ``1o`` block to
Cartesian (x, y, z); the component order of e3nn's ``1o`` is read off e3nn's own spherical
harmonics once, not assumed: it is (x, y, z) in e3nn 0.6.0 (checked in tests), while the order
(y, z, x) is often quoted for e3nn; a hard-coded permutation would silently break on one of them.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from e3nn import nn as enn
from e3nn import o3
from torch import nn

from ..graph.build import edge_vectors
from ..graph.features import BesselRBF, polynomial_envelope
from .scatter import scatter_sum
from .tensor_product import ChannelwiseTensorProduct


# --------------------------------------------------------------------------- irreps helpers
def natural_irreps(channels: int, lmax: int) -> o3.Irreps:
    """``C x (0e + 1o + 2e + ...)`` up to ``lmax``: polar tensors only (parity (-1)^l)."""
    return o3.Irreps([(channels, (l, (-1) ** l)) for l in range(lmax + 1)])


def all_parity_irreps(channels: int, lmax: int) -> o3.Irreps:
    """``C x (0e + 0o + 1o + 1e + 2e + 2o + ...)`` up to ``lmax``: both parities for each l."""
    return o3.Irreps([(channels, (l, p)) for l in range(lmax + 1) for p in ((-1) ** l, -((-1) ** l))])


def irrep_columns(irreps: o3.Irreps, ir: o3.Irrep | str) -> list[int]:
    """Column indices of every block of ``irreps`` equal to ``ir``, multiplicity-major."""
    ir = o3.Irrep(ir)
    cols: list[int] = []
    for (mul, this), sl in zip(irreps, irreps.slices()):
        if this == ir:
            cols.extend(range(sl.start, sl.stop))
    return cols


def irrep_selector(irreps: o3.Irreps, ir: o3.Irrep | str) -> tuple[tuple[int, ...], int]:
    """``(columns, 2l+1)`` of irrep ``ir`` in ``irreps``, plain ints for :func:`take_irrep`.

    Modules compute this once in ``__init__``: forward code that ``torch.compile`` traces must not
    touch e3nn's ``Irrep`` objects (Dynamo guards on them as tuples, and ``Irrep.__len__`` raises).
    """
    ir = o3.Irrep(ir)
    return tuple(irrep_columns(irreps, ir)), ir.dim


def take_irrep(x: torch.Tensor, selector: tuple[tuple[int, ...], int]) -> torch.Tensor:
    """The columns ``selector = irrep_selector(irreps, ir)`` of ``x`` [N, irreps.dim] as
    [N, mul, 2l+1] (mul = 0 if ``ir`` is absent)."""
    cols, ir_dim = selector
    index = torch.tensor(cols, dtype=torch.long, device=x.device)
    return x.index_select(-1, index).reshape(x.shape[0], -1, ir_dim)  # [N, mul, 2l+1]


def select_irrep(x: torch.Tensor, irreps: o3.Irreps, ir: o3.Irrep | str) -> torch.Tensor:
    """The blocks of ``x`` [N, irreps.dim] of irrep ``ir`` as [N, mul, 2l+1] (mul = 0 if absent)."""
    return take_irrep(x, irrep_selector(irreps, ir))


def _cartesian_permutation() -> list[int]:
    """``perm`` with ``cartesian[..., k] = v_1o[..., perm[k]]``, from e3nn's Y^1 of the unit axes."""
    y1 = o3.spherical_harmonics(
        1, torch.eye(3, dtype=torch.float64), normalize=True, normalization="component"
    )  # [3 axes, 3 components]
    perm = [int(y1[k].abs().argmax()) for k in range(3)]
    # Y^1 is sqrt(3) times a signed permutation of (x, y, z): check it is a pure permutation
    expected = torch.zeros(3, 3, dtype=torch.float64)
    expected[range(3), perm] = math.sqrt(3.0)
    if sorted(perm) != [0, 1, 2] or not torch.allclose(y1, expected):
        raise RuntimeError(f"unexpected e3nn l=1 basis: Y1(eye) = {y1.tolist()}")
    return perm


#: cartesian[..., k] = e3nn_1o[..., CARTESIAN_FROM_1O[k]]
CARTESIAN_FROM_1O: tuple[int, ...] = tuple(_cartesian_permutation())


def cartesian_from_1o(v: torch.Tensor) -> torch.Tensor:
    """[..., 3] in e3nn's ``1o`` component order -> [..., 3] Cartesian (x, y, z)."""
    index = torch.tensor(CARTESIAN_FROM_1O, dtype=torch.long, device=v.device)
    return v.index_select(-1, index)


def reset_e3nn_parameters(module: nn.Module) -> None:
    """Redraw the weights of e3nn layers inside ``module`` the way e3nn initialises them.

    e3nn's ``Linear`` and ``TensorProduct`` draw weights from N(0, 1) and normalise the paths in
    forward, so ``normal_`` is their initialisation; biases start at zero.
    """
    for sub in module.modules():
        if isinstance(sub, (o3.Linear, o3.TensorProduct)):
            for name, p in sub.named_parameters(recurse=False):
                if name == "bias":
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p)


def refresh_wigner_3j(module: nn.Module) -> None:
    """Recompute the Clebsch-Gordan (Wigner 3j) constants of tensor products in their dtype.

    e3nn's compiled tensor products and ``ChannelwiseTensorProduct`` keep ``_w3j_l1_l2_l3``
    buffers created in the default dtype at construction. A model built in float32 and converted
    with ``.double()`` would carry float32-rounded coefficients, and its equivariance would only
    hold to ~1e-8 instead of ~1e-15; recomputing them in float64 and casting to the buffer's dtype
    fixes that.
    """
    for sub in module.modules():
        for name, buf in list(sub._buffers.items()):
            if name.startswith("_w3j_") and buf is not None and buf.is_floating_point():
                l1, l2, l3 = (int(x) for x in name[len("_w3j_") :].split("_"))
                exact = o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
                if exact.shape != buf.shape:  # not a plain 3j symbol: leave it alone
                    continue
                sub._buffers[name] = exact.to(dtype=buf.dtype, device=buf.device)


def _refresh_after_load(module: nn.Module, incompatible_keys) -> None:
    refresh_wigner_3j(module)


class ExactCouplingsMixin:
    """Keep e3nn's Clebsch-Gordan constants exact in the module's dtype (see ``refresh_wigner_3j``).

    Mix into a backbone (``class NequIP(ExactCouplingsMixin, Backbone)``) and call
    ``self._keep_couplings_exact()`` in ``__init__``: the constants are then recomputed after every
    ``.to(dtype)`` / ``.double()`` (also when called on a parent module) and every
    ``load_state_dict`` (a float32 checkpoint loaded into a float64 model).
    """

    def _keep_couplings_exact(self) -> None:
        self.register_load_state_dict_post_hook(_refresh_after_load)
        refresh_wigner_3j(self)

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        refresh_wigner_3j(self)
        return out


# --------------------------------------------------------------------------- radial part
class RadialEmbedding(nn.Module):
    """NequIP's radial basis: ``e_n(d) = BesselRBF_n(d) * u(d)``, ``u`` the polynomial envelope.

    ``forward(distance [E]) -> (basis [E, num_basis], envelope u(d) [E])``. The envelope (p = 6:
    u, u', u'' vanish at r_c) is returned too so the radial network's output can be multiplied by
    it, making every edge contribution vanish smoothly at the cutoff whatever the network's biases.
    """

    def __init__(self, cutoff: float, num_basis: int = 8, envelope_p: int = 6, trainable: bool = True):
        super().__init__()
        self.cutoff = float(cutoff)
        self.envelope_p = int(envelope_p)
        self.bessel = BesselRBF(cutoff, num_basis, trainable=trainable)

    def reset_parameters(self) -> None:
        """Frequencies back to n pi / r_c (they may have been trained)."""
        with torch.no_grad():
            n = torch.arange(
                1, self.bessel.freqs.numel() + 1, dtype=self.bessel.freqs.dtype, device=self.bessel.freqs.device
            )
            self.bessel.freqs.copy_(n * math.pi / self.cutoff)

    def forward(self, distance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        envelope = polynomial_envelope(distance, self.cutoff, self.envelope_p)  # [E]
        return self.bessel(distance) * envelope.unsqueeze(-1), envelope  # [E, B], [E]

    def extra_repr(self) -> str:
        return f"envelope_p={self.envelope_p}"


def check_radial_settings(envelope_p: int, radial_hidden: Sequence[int]) -> None:
    """ValueError for an envelope that is not smooth enough or an empty/invalid radial MLP."""
    if envelope_p < 2:
        raise ValueError(f"envelope_p must be >= 2 (smooth forces), got {envelope_p}")
    if not radial_hidden or min(radial_hidden) < 1:
        raise ValueError(f"radial_hidden must be a non-empty list of positive widths, got {radial_hidden}")


class SphericalInputs(nn.Module):
    """What every e3nn backbone starts from: the element embedding h^0 (C x 0e), and the edge
    features Y(r_ij) and the radial basis with its envelope.

    ``forward(batch, rows) -> (h0 [N, C], edge_sh [E, irreps_sh], basis [E, B], envelope [E])``,
    with ``rows`` [N] each atom's row of the ``num_elements``-row element tables
    (``Backbone.element_rows``); geometry comes only from ``edge_vectors(batch)`` (r_ij, centre -> neighbour).
    """

    def __init__(self, channels: int, max_ell: int, num_basis: int, cutoff: float, envelope_p: int, num_elements: int):
        super().__init__()
        self.num_elements = int(num_elements)
        self.embedding = nn.Embedding(self.num_elements, channels)  # h^0: C x 0e
        self.radial_embedding = RadialEmbedding(cutoff, num_basis, envelope_p)
        self.irreps_sh = o3.Irreps.spherical_harmonics(int(max_ell))  # 0e + 1o + 2e + ...
        self.spherical_harmonics = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embedding.weight)
        self.radial_embedding.reset_parameters()

    def forward(self, batch, rows: torch.Tensor):
        vec = edge_vectors(batch)  # [E, 3] Å, centre i -> neighbour j
        distance = vec.norm(dim=-1)  # [E]; edges never have zero length
        basis, envelope = self.radial_embedding(distance)  # [E, B], [E]
        edge_sh = self.spherical_harmonics(vec)  # [E, irreps_sh]
        return self.embedding(rows), edge_sh, basis, envelope  # [N, C], ...


class RadialMLP(nn.Module):
    """``R(d) = MLP(e(d)) * u(d)``: per-edge tensor-product weights from the radial basis.

    e3nn's ``FullyConnectedNet`` (as in NequIP): widths ``[num_basis, *hidden, num_weights]``, no
    biases, weights N(0, 1) / sqrt(fan_in) and SiLU rescaled to unit second moment, so the weights
    it produces are O(1) whatever the depth. ``forward(basis [E, B], envelope [E]) -> [E, W]``.
    """

    def __init__(self, num_basis: int, hidden: Sequence[int], num_weights: int):
        super().__init__()
        self.mlp = enn.FullyConnectedNet([num_basis, *hidden, num_weights], nn.functional.silu)

    def reset_parameters(self) -> None:
        for p in self.mlp.parameters():
            nn.init.normal_(p)

    def forward(self, basis: torch.Tensor, envelope: torch.Tensor) -> torch.Tensor:
        return self.mlp(basis) * envelope.unsqueeze(-1)  # [E, W]


# --------------------------------------------------------------------------- convolution
#: Build the channel-wise products with e3nn's ``o3.TensorProduct`` instead of
#: ``ChannelwiseTensorProduct`` (same maths, slower): only for benchmarks and tests comparing the two.
_USE_E3NN_TENSOR_PRODUCT = False


class _E3nnTensorProduct(o3.TensorProduct):
    """e3nn's ``TensorProduct`` with ``ChannelwiseTensorProduct``'s ``index``/``dim_size`` sum."""

    def forward(self, x, y, weight=None, index=None, dim_size=None):
        out = super().forward(x, y, weight)
        return out if index is None else scatter_sum(out, index, dim_size)


def channelwise_tensor_product(irreps_in1, irreps_in2, irreps_out, instructions) -> nn.Module:
    """The tensor product of ``instructions`` ("uvu" or "uuu", per-sample external weights):
    ``ChannelwiseTensorProduct``, or e3nn's ``o3.TensorProduct`` when ``_USE_E3NN_TENSOR_PRODUCT``."""
    if _USE_E3NN_TENSOR_PRODUCT:
        return _E3nnTensorProduct(
            irreps_in1, irreps_in2, irreps_out, instructions, shared_weights=False, internal_weights=False
        )
    return ChannelwiseTensorProduct(irreps_in1, irreps_in2, irreps_out, instructions)


class EdgeConvolution(nn.Module):
    """Equivariant point convolution (NequIP's interaction; MACE's one-particle basis A_i).

    .. math::
        \\tilde h_j = W_1 h_j, \\qquad
        m_i = \\frac{1}{n_{avg}} \\sum_{j \\in N(i)} R(d_{ij}) \\,
              \\big(\\tilde h_j \\otimes_{uvu} Y(\\hat r_{ij})\\big), \\qquad
        \\text{out}_i = W_2 m_i

    ``W_1``, ``W_2`` are e3nn ``Linear`` layers (channel mixing within each irrep). The tensor
    product is channel-wise ("uvu": channel u of h_j times the single copy of Y^l, one weight per
    channel and path) and keeps only paths whose output irrep appears in ``irreps_out``; its
    weights ``R(d_ij)`` [E, weight_numel] come from the radial MLP (e3nn's ``TensorProduct`` with
    ``shared_weights=False, internal_weights=False``, computed by ``ChannelwiseTensorProduct``,
    which also sums the messages over the edges of each centre). The sum is divided by the constant
    ``avg_num_neighbors`` (never the per-atom count: that would make the energy discontinuous
    when a neighbour crosses the cutoff).

    ``forward(h [N, irreps_in], edge_index [2, E], edge_sh [E, irreps_sh], basis [E, B],
    envelope [E]) -> [N, irreps_out]``.
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_out: o3.Irreps,
        num_basis: int,
        radial_hidden: Sequence[int],
        avg_num_neighbors: float,
    ):
        super().__init__()
        self.irreps_in, self.irreps_sh = o3.Irreps(irreps_in), o3.Irreps(irreps_sh)
        self.irreps_out = o3.Irreps(irreps_out)
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.linear_in = o3.Linear(self.irreps_in, self.irreps_in)  # W_1
        wanted = {ir for _, ir in self.irreps_out}
        mid, instructions = [], []
        for i1, (mul, ir1) in enumerate(self.irreps_in):
            for i2, (_, ir2) in enumerate(self.irreps_sh):
                for ir in ir1 * ir2:
                    if ir in wanted:
                        instructions.append((i1, i2, len(mid), "uvu", True))
                        mid.append((mul, ir))
        self.irreps_mid = o3.Irreps(mid)
        self.tp = channelwise_tensor_product(self.irreps_in, self.irreps_sh, self.irreps_mid, instructions)
        self.radial = RadialMLP(num_basis, radial_hidden, self.tp.weight_numel)  # R(d)
        self.linear_out = o3.Linear(self.irreps_mid, self.irreps_out)  # W_2

    def reset_parameters(self) -> None:
        reset_e3nn_parameters(self)
        self.radial.reset_parameters()

    def forward(self, h, edge_index, edge_sh, basis, envelope):
        j, i = edge_index  # messages flow j -> i
        x = self.linear_in(h)  # [N, irreps_in]
        weights = self.radial(basis, envelope)  # [E, weight_numel]
        # sum over j of R(d_ij) (x_j (x) Y(r_ij)): the products summed over the edges into each centre
        m = self.tp(x.index_select(0, j), edge_sh, weights, index=i, dim_size=h.shape[0])  # [N, irreps_mid]
        m = m / self.avg_num_neighbors
        return self.linear_out(m)  # [N, irreps_out]


class ElementSelfConnection(nn.Module):
    """Self-connection with element-dependent weights (NequIP's ``FCTP(h_i, onehot(z_i))``).

    .. math::
        sc_i^{(o)} = \\frac{1}{\\sqrt{\\sum_{k \\to o} C_k}} \\sum_{k \\to o} W^{(k,o)}_{z_i}\\, h_i^{(k)}

    for every output block ``o`` of ``irreps_out`` and every input block ``k`` of ``irreps_in`` with
    the same irrep: one ``C_k x C_o`` channel-mixing matrix per element and path, applied to all
    2l+1 components alike (so the map is equivariant), with e3nn's fan-in normalisation. This is
    the function e3nn's ``FullyConnectedTensorProduct`` computes with a one-hot ``num_elements x
    0e`` attribute (with the attributes scaled to unit norm), but evaluated by selecting each
    atom's matrix instead of multiplying by a one-hot: atoms are grouped by element and each group
    gets one matmul, so the cost does not grow with ``num_elements`` (the tensor product spent most
    of its time multiplying zeros). The number of groups depends on the data, so ``torch.compile``
    runs this module eagerly (``torch.compiler.disable``; the rest of a compiled backbone stays
    compiled): gathering a matrix per atom instead traces, but its backward costs 1.7x (378 atoms)
    to 10x (4,096 atoms) the grouped module's on a CPU core.
    ``forward(h [N, irreps_in], z [N] element rows in 0..num_elements-1) -> [N, irreps_out]``
    (the rows of ``Backbone.element_rows``; the atomic numbers when the table has a row per Z).
    """

    def __init__(self, irreps_in: o3.Irreps, num_elements: int, irreps_out: o3.Irreps):
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        self.num_elements = int(num_elements)
        self.paths: list[tuple[int, int]] = []  # (input block k, output block o)
        weights = []
        for o, (mul_out, ir_out) in enumerate(self.irreps_out):
            for k, (mul_in, ir_in) in enumerate(self.irreps_in):
                if ir_in == ir_out:
                    self.paths.append((k, o))
                    weights.append(nn.Parameter(torch.empty(self.num_elements, mul_in, mul_out)))
        self.weights = nn.ParameterList(weights)  # [Z, C_k, C_o] per path
        fan_in = [0] * len(self.irreps_out)
        for k, o in self.paths:
            fan_in[o] += self.irreps_in[k].mul
        self.path_norm = [1.0 / math.sqrt(fan_in[o]) for _, o in self.paths]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w in self.weights:
            nn.init.normal_(w)

    @torch.compiler.disable
    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        n = h.shape[0]
        in_slices = self.irreps_in.slices()
        blocks = [h[:, sl].reshape(n, mul, ir.dim) for (mul, ir), sl in zip(self.irreps_in, in_slices)]
        # geognn export traces the gathered form: no loop over the elements present (see below)
        apply = self._gathered if torch.jit.is_tracing() else self._grouped
        out = apply(blocks, z)  # [N, C_o, 2l+1] per output irrep
        return torch.cat([b.reshape(n, -1) for b in out], dim=-1)  # [N, irreps_out]

    def _grouped(self, blocks: list[torch.Tensor], z: torch.Tensor) -> list[torch.Tensor]:
        """One matmul per element present (the class docstring): input blocks [N, C_k, 2l+1] ->
        output blocks [N, C_o, 2l+1]."""
        n = z.shape[0]
        out = [blocks[0].new_zeros((n, mul, ir.dim)) for mul, ir in self.irreps_out]
        for element in torch.unique(z).tolist():
            atoms = (z == element).nonzero().squeeze(1)  # [n_e]
            for (k, o), w, norm in zip(self.paths, self.weights, self.path_norm):
                x = blocks[k].index_select(0, atoms)  # [n_e, C_k, 2l+1]
                y = torch.einsum("nci,cd->ndi", x, w[element]) * norm  # [n_e, C_o, 2l+1]
                out[o] = out[o].index_add(0, atoms, y)
        return out

    def _gathered(self, blocks: list[torch.Tensor], z: torch.Tensor) -> list[torch.Tensor]:
        """The same map with each atom's matrix gathered (``w[z]`` [N, C_k, C_o]): no Python loop
        over the elements present, so a trace holds for any elements (``geognn export``); slower
        than ``_grouped``, so only used while tracing."""
        n = z.shape[0]
        out = [blocks[0].new_zeros((n, mul, ir.dim)) for mul, ir in self.irreps_out]
        for (k, o), w, norm in zip(self.paths, self.weights, self.path_norm):
            out[o] = out[o] + torch.einsum("nci,ncd->ndi", blocks[k], w.index_select(0, z)) * norm
        return out

    def extra_repr(self) -> str:
        return f"{self.irreps_in} x {self.num_elements} elements -> {self.irreps_out}"


# --------------------------------------------------------------------------- gate
def _act_for_parity(p: int) -> Callable:
    return nn.functional.silu if p == 1 else torch.tanh  # 0o needs an odd function: tanh


def make_gate(irreps_hidden: o3.Irreps) -> enn.Gate:
    """e3nn ``Gate`` whose output is ``irreps_hidden`` (scalars first, then gated irreps).

    Scalars pass through SiLU (0e) or tanh (0o, which must stay odd under inversion). Each
    non-scalar channel is multiplied by ``sigmoid`` of an extra 0e gate scalar, so the gate's
    input is ``scalars + gates + gated`` (``gate.irreps_in``).
    """
    irreps_hidden = o3.Irreps(irreps_hidden)
    scalars = o3.Irreps([(m, ir) for m, ir in irreps_hidden if ir.l == 0])
    gated = o3.Irreps([(m, ir) for m, ir in irreps_hidden if ir.l > 0])
    if [ir for _, ir in irreps_hidden] != [ir for _, ir in scalars + gated]:
        raise ValueError(f"hidden irreps must list scalars first, got {irreps_hidden}")
    gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
    return enn.Gate(
        scalars, [_act_for_parity(ir.p) for _, ir in scalars], gates, [torch.sigmoid] if gated.num_irreps else [], gated
    )


# --------------------------------------------------------------------------- MACE product basis
class SymmetricContraction(nn.Module):
    """MACE's higher-body-order basis from A, by iterated channel-wise tensor products.

    .. math::
        P^{(1)} = A, \\qquad
        P^{(\\nu)}_{i,k} = \\big(P^{(\\nu-1)}_{i,k} \\otimes A_{i,k}\\big)_{w^{(\\nu)}_{z_i k \\eta}},
        \\qquad
        B^{(1)}_{i,kLM} = w^{(1)}_{z_i k L} A_{i,kLM}, \\qquad
        B^{(\\nu)}_{i} = P^{(\\nu)}_{i}\\big|_{\\text{target irreps}}, \\qquad
        \\text{out}_i = \\sum_{\\nu=1}^{\\text{correlation}} B^{(\\nu)}_i

    Each product is a channel-wise tensor product in "uuu" mode (``ChannelwiseTensorProduct``, the
    maths of e3nn's ``TensorProduct``: channel k of P times channel k of A, as in MACE's symmetric
    contraction, which never mixes channels) with one weight per element,
    channel and coupling path eta, looked up from an ``nn.Embedding`` of the atomic number. So
    ``P^(nu)`` is a polynomial of degree nu in A (body order nu + 1), every coupling weighted by
    element. Intermediate products keep both parities of every l <= lmax(A) (pseudotensors such as
    the cross product A x A in 1e are needed to reach e.g. 0o or, at nu = 3, more 0e paths); the
    last product keeps only the target irreps.

    Why iterated products rather than ``o3.ReducedTensorProducts``: it spans the same equivariant
    polynomials up to two truncations (intermediate l capped at lmax(A), and weights that factor
    over the successive couplings instead of one free weight per generalised Clebsch-Gordan path),
    maps one-to-one onto the recursion above and uses only standard tensor products, while
    ReducedTensorProducts solves for its basis numerically in the full product space at every
    construction. Products of copies of the same A_k are automatically symmetric, so no explicit
    symmetrisation is needed.

    ``forward(A [N, irreps_in], z [N] element rows in 0..num_elements-1) -> [N, irreps_out]``
    (the rows of ``Backbone.element_rows``). ``irreps_in`` and ``irreps_out`` must have a single
    multiplicity C.
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, correlation: int, num_elements: int):
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        muls = {m for m, _ in self.irreps_in} | {m for m, _ in self.irreps_out}
        if len(muls) != 1:
            raise ValueError(f"SymmetricContraction needs one multiplicity, got {irreps_in} -> {irreps_out}")
        if correlation < 1:
            raise ValueError(f"correlation must be >= 1, got {correlation}")
        (channels,) = muls
        self.correlation = int(correlation)
        lmax = max(ir.l for _, ir in self.irreps_in)
        # nu = 1: per-element, per-channel, per-irrep weights on A's target irreps
        self.first_cols = [irrep_columns(self.irreps_in, ir) for _, ir in self.irreps_out]
        # (multiplicity, 2l+1) of each target block as plain ints: forward never touches the Irreps
        # (torch.compile cannot guard on e3nn's Irrep objects; see irrep_selector)
        self._out_layout = tuple((mul, ir.dim) for mul, ir in self.irreps_out)
        self.first_weights = nn.Embedding(num_elements, channels * len(self.irreps_out))
        self.products = nn.ModuleList()
        self.product_weights = nn.ModuleList()
        self.target_cols: list[list[list[int]]] = []  # per nu >= 2: columns of each target irrep in P
        prev = self.irreps_in
        for nu in range(2, self.correlation + 1):
            candidates = all_parity_irreps(channels, lmax) if nu < self.correlation else self.irreps_out
            reached = {ir for _, ir1 in prev for _, ir2 in self.irreps_in for ir in ir1 * ir2}
            out = o3.Irreps([(m, ir) for m, ir in candidates if ir in reached])  # only reachable irreps
            wanted = [ir for _, ir in out]
            instructions = [
                (i1, i2, wanted.index(ir), "uuu", True)
                for i1, (_, ir1) in enumerate(prev)
                for i2, (_, ir2) in enumerate(self.irreps_in)
                for ir in ir1 * ir2
                if ir in wanted
            ]
            tp = channelwise_tensor_product(prev, self.irreps_in, out, instructions)
            self.products.append(tp)
            self.product_weights.append(nn.Embedding(num_elements, tp.weight_numel))
            self.target_cols.append([irrep_columns(out, ir) for _, ir in self.irreps_out])
            prev = out
        self.channels = channels

    def reset_parameters(self) -> None:
        nn.init.normal_(self.first_weights.weight)
        for emb in self.product_weights:
            nn.init.normal_(emb.weight)

    def _gather(self, x: torch.Tensor, cols: list[list[int]]) -> torch.Tensor:
        """Columns of each target irrep, in target order -> [N, irreps_out] (zeros where absent)."""
        blocks = []
        for (mul, ir_dim), c in zip(self._out_layout, cols):
            if c:
                blocks.append(x.index_select(-1, torch.tensor(c, dtype=torch.long, device=x.device)))
            else:
                blocks.append(x.new_zeros(x.shape[0], mul * ir_dim))
        return torch.cat(blocks, dim=-1)

    def forward(self, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        n = a.shape[0]
        # nu = 1: B^(1)_{kLM} = w_{z k L} A_{kLM}
        w1 = self.first_weights(z).view(n, len(self._out_layout), self.channels)  # [N, n_irreps, C]
        blocks = []
        for k, ((mul, ir_dim), c) in enumerate(zip(self._out_layout, self.first_cols)):
            if c:
                block = a.index_select(-1, torch.tensor(c, dtype=torch.long, device=a.device))
                blocks.append((block.view(n, mul, ir_dim) * w1[:, k].unsqueeze(-1)).reshape(n, -1))
            else:
                blocks.append(a.new_zeros(n, mul * ir_dim))
        out = torch.cat(blocks, dim=-1)  # [N, irreps_out]
        p = a
        for tp, emb, cols in zip(self.products, self.product_weights, self.target_cols):
            p = tp(p, a, emb(z))  # [N, irreps of P^(nu)]
            out = out + self._gather(p, cols)
        return out

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out}, correlation={self.correlation}"
