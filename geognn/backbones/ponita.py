"""PΘNITA and PNITA (Bekkers, Vadgama, Hesselink, van der Linden, Romero, "Fast, Expressive SE(n)
Equivariant Networks through Weight-Sharing in Position-Orientation Space", ICLR 2024,
https://arxiv.org/abs/2310.02970).

Every atom i carries a signal over a grid of orientations ``o_1 .. o_O`` on the sphere (the
homogeneous space R3 x S2): features ``h_i(o)`` [N, O, C]. Weights are shared over all pairs of
position-orientations that an SE(3) transformation maps onto each other, by making every kernel a
function of the pair's invariant attributes. With ``x_ij = x_j - x_i`` (geognn's edge vector
``r_ij = pos[j] + shift @ cell - pos[i]``, periodic images included):

.. math::
    a^{R3 \\times S2}_{ij}(o) = \\big[\\, x_{ij} \\cdot o,\\;
        \\| x_{ij} - (x_{ij} \\cdot o)\\, o \\| \\,\\big],
    \\qquad a^{S2}(o, o') = o \\cdot o'.

Separable group convolution (one layer), depthwise over the C channels:

.. math::
    \\tilde h_i(o) = \\sum_{j \\in \\mathcal N(i)} k_{spatial}\\big(a_{ij}(o)\\big) \\odot h_j(o)
        \\qquad \\text{(over edges, for each orientation)}

    (\\mathrm{conv}\\, h)_i(o) = \\frac{1}{O} \\sum_{o'} k_{sphere}(o \\cdot o') \\odot
        \\tilde h_i(o') + b \\qquad \\text{(over the sphere)}

with kernels built from basis embeddings shared by all layers and a per-layer linear map to the
channels, ``k_spatial = W^l_s phi_s(a) u(|x_ij|)`` and ``k_sphere = W^l_f phi_f(o . o')``, where
``phi = GELU(Linear(GELU(Linear(poly_D(t)))))`` (widths: features -> ``basis_hidden``, default C
-> B, as in the paper's code), ``poly_D(t)`` a basis of the polynomials of
degree 1..D in the attributes ``t`` (mapped to [-1, 1], see below), and ``u`` the polynomial
envelope (1 at 0, zero value and first two derivatives at the cutoff: energies are smooth as atoms
cross it). ConvNeXt block with layer scale ``gamma``:

.. math::
    h \\leftarrow h + \\gamma \\odot \\mathrm{Linear}_{wC \\to C}\\big(\\mathrm{GELU}(
        \\mathrm{Linear}_{C \\to wC}(\\mathrm{LayerNorm}(\\mathrm{conv}\\, h)))\\big).

Lift: ``h_i(o) = embedding(z_i)`` for every o. Readout, with ``g = Linear(h)`` [N, O, F]:
``node_features_i = (1/O) sum_o g_i(o)`` (invariant) and ``node_vectors_i = (1/O) sum_o g_i(o) o``
[N, F, 3] (equivariant), the grid versions of the integrals over S2.

PNITA (``space="R3"``, the paper's ablation): no orientations (O = 1), the only attribute is the
distance ``a_ij = |x_ij|``, no sphere convolution; invariant, no ``node_vectors``.

Symmetry, honestly:

- Translations, permutations, periodic images, the choice of cell and batching: exact, because
  everything is built from edge vectors and per-atom sums.
- Rotations (PΘNITA): the attributes are invariant when positions and orientations rotate together,
  so the continuous model (integrals over S2) is exactly SE(3)-equivariant; the grid is fixed while
  the molecule rotates, so the network is equivariant only up to the quadrature error of the grid.
  ``rotation_symmetry = "approximate"``; the error, measured in tests/test_backbone_ponita.py and
  benchmarks/bench_ponita.py, falls as ``num_ori`` grows. PNITA is exactly invariant.
- Reflections: the paper's method is stated for SE(3), but the three attributes are also invariant
  under reflections (dot products and norms), so the continuous model is E(3)-invariant and
  reflections are respected to the same discretisation error as rotations (measured in the tests);
  ``node_vectors`` are polar vectors. PNITA is exactly reflection invariant.
- ``random_grid_rotation=True`` rotates the grid by a fresh uniformly random rotation in every
  training forward pass (augmentation: the model cannot fit to the grid's orientation); eval is
  deterministic.
- Trained models vary faster with orientation than random ones, and their rotation error on the
  training grid is large (QM9, 120 s on CPU, 8 orientations: median 127 meV against a 272 meV
  MAE; ``benchmarks/rotation_error_trained.py``). Random grid rotation alone does not lower it, but
  it makes training a stochastic estimate of the continuous-sphere model, whose weights do not
  depend on the grid. ``eval_num_ori`` then evaluates that model on a finer grid: trained on 8
  randomly rotated orientations and evaluated on 64, the median error fell to 7.8 meV and the
  MAE improved (316 -> 289 meV). Without random rotation in training, the finer grid lowers the
  error as much but costs accuracy (269 -> 347 meV): the model had fitted the coarse grid.

Choices of this implementation (not in the paper):

- The perpendicular norm is ``sqrt(|x - (x . o) o|^2 + eps)``, ``eps = 1e-6 Å^2`` (``PERP_EPS``):
  the plain norm has an infinite gradient when ``x_ij`` is parallel to ``o`` (autograd forces and
  their second derivatives in training would be NaN). This shifts the attribute by at most 1e-3 Å.
- Polynomial basis (conditioning). The attributes are mapped affinely onto [-1, 1] with the
  cutoff r_c: ``t = 2 |x| / r_c - 1`` (PNITA), ``t = (x . o / r_c, 2 perp / r_c - 1)`` (PΘNITA),
  ``t = o . o'`` (sphere); ``poly_D(t)`` is the products ``prod_k P_{n_k}(t_k)``, ``1 <= sum n_k <= D``,
  of Legendre polynomials scaled to unit mean square on [-1, 1] (``P_n * sqrt(2n + 1)``). With the
  bias of the first Linear (the constant) this spans exactly the polynomials of degree <= D in the
  attributes, as the paper's monomials do, so the model class is unchanged; the parametrisation is
  not. Monomials of ``|x| / r_c`` in [0, 1] (used before) are nearly collinear (``a, a^2, a^3``
  correlate > 0.9) and small, so at initialisation every kernel is a near-linear function of the
  distance: neither PNITA nor PΘNITA could resolve bond lengths, and both learned QM9 energies
  far slower per step than PaiNN (train loss 0.96 vs 0.03 after 300 steps, PNITA width 64).
  With these features, after 200 steps: PNITA 0.28 (monomials 0.98), PΘNITA (8 orientations) 0.19
  (monomials 0.94), PaiNN 0.05; they learn as fast per step as 3 sine features of the distance,
  and raising ``degree`` helps (PNITA degree 12: 0.06), which it did not with monomials.
  Price: the kernels now vary faster with the orientation, so the grid's quadrature error is
  larger: for the random-weight model of tests/test_backbone_ponita.py (num_ori 20, QM9 molecules)
  the scaled rotation error rose from ~8e-3 to ~0.14 (the smooth near-linear kernels, which could
  not learn, were also integrated almost exactly by the grid). It still falls as num_ori grows.
- Initialisation: Xavier for every Linear, the embedding N(0, 1). With this the convolutions'
  outputs at initialisation are small (std ~5e-3 for PΘNITA at the defaults on QM9, ~0.2 for
  PNITA; the sphere convolution multiplies by a second small kernel), about LayerNorm's
  sqrt(eps) = 3e-3, where LayerNorm acts as a fixed gain. He initialisation of the basis MLP makes
  them O(1) but measured slower learning per step (PΘNITA width 64, 8 orientations, train loss
  0.65 vs 0.19 after 200 steps with seed 0, 0.74 vs 0.42 after 150 with seed 1), so it is not used.
- Sums over neighbours are plain sums (no division by the neighbour count, which would jump as an
  atom crosses the cutoff); LayerNorm follows every convolution.
- Basis MLP width: features -> hidden -> B with hidden = ``basis_hidden`` (default: C), the
  paper's code's shape. geognn used features -> B -> B before; ``basis_hidden=basis_dim`` selects
  it (a state dict of that shape says so when loaded into the new one). Where B = C (the CPU
  default) the two are the same module; at the paper's B = 256, C = 128 the new shape has half the
  flops and parameters in the basis MLPs' second layer.
- Speed only (same function up to float rounding), measured against the authors' code in
  ``benchmarks/bench_ponita_reference.py`` (energies + forces, QM9 batch of 32, 1 thread, one
  interleaved run on the 2-core VM; the README names the commit, machine and load): reference
  time / geognn time 2.29 at the paper's QM9 size and 2.00 at the defaults on the default grid
  (antipodal at these even counts), 1.67 and 1.61 on the Fibonacci lattice, with glibc's default
  allocator; with ``geognn.runtime.tune_allocator()`` applied to both, 1.64 and 1.36 (Fibonacci:
  1.16 and 1.09). So on the Fibonacci lattice geognn does about the reference's arithmetic
  without its page faults; the antipodal grid does less of it:
  - On a grid that holds every orientation's opposite (``grid="antipodal"``,
    ``geognn.symmetry.sphere.antipodal_grid``; the default ``grid="auto"`` at an even count) the
    reverse of an edge, vector ``-x_ij``, has at o the attributes the edge has at -o, so its basis
    and kernels are the edge's read at the opposite orientations. Of each pair only one edge is
    kept (``reverse_edges``), and ``EdgeMessages`` sums both directions from one kernel block: the
    basis MLP and the [E, O, B] x [B, C] kernel products, most of the cost, are halved. Same
    function as computing every edge (tests/test_ponita_speed.py: energies, forces, stress and
    training gradients to 1e-11); edges without a reverse (a user's own graph) are computed alone.
    The grid samples an even function on the sphere at only O / 2 distinct points, yet its
    rotation error is within about 20 % of the Fibonacci lattice's at the same O and smaller at
    the same cost (``benchmarks/grid_rotation_error.py``; the README has the numbers), and the
    same training reaches the same error on it (``benchmarks/grid_training.py``). So it is the
    default wherever the count allows.
  - The per-edge work runs in blocks of edges (``edge_block_size``: ``EDGE_BLOCK_FLOATS`` = 1 MiB
    of float32 per [E_b, O, B] tensor). Formed for all edges at once, each [E, O, C] or
    [E, O, B] tensor was tens to hundreds of MB, which glibc maps and unmaps on every call:
    ~0.2-0.4 M minor page faults per energy + forces call on a QM9 batch of 32, and every
    pass over such a tensor went to main memory. In blocks, the kernel ``W_s phi`` of a block is
    used while in cache, and freed blocks are reused by the allocator (page faults: below ~10 k
    per call with the next item; the reference takes ~0.4-0.5 M).
  - ``EdgeMessages`` sums ``k_ij(o) * h_j(o)`` into the centres block by block with a hand-written
    backward (made of differentiable operations: second derivatives for force training work), so
    that the backward accumulates, in place, one gradient of ``h`` instead of one full-size
    gradient per block (an out-of-place sum copied the [N, O, C] gradient once per block: 15 %
    of a call), and no [E, O, C] tensor but the kernels is kept for it.
  - The sphere convolution (``SphereConv``) is one batched product over channels on operands made
    channels-first by 2-D transposes (``bmm`` on permuted views copied the gradient once per
    channel in its backward, and a 3-D permutation copies ~7x slower than a 2-D transpose).
  - The ConvNeXt MLP (row-wise) runs in blocks of rows of the same size, so no [N, O, wC]
    tensor is formed either (12 MB per layer and pass on that batch, mapped and faulted in anew).
  - The attributes and their polynomial features ([E, O, M], small) are formed once for all
    edges; the sphere basis once per call for all layers (``sample_kernels``); the lifted
    features stay [N, 1, C] (broadcast over orientations) until the first convolution.
  - Under ``torch.jit.trace`` (``geognn export``), scripting or ``torch.compile`` the edge work and
    the ConvNeXt MLP run as one block of plain operations, so the recorded graph does not depend on
    the number of edges or atoms.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from .. import conventions as K
from ..graph.build import edge_vectors, reverse_edges
from ..graph.features import polynomial_envelope
from ..nn.scatter import scatter_sum
from ..nn.species import normalise_species
from ..symmetry.sphere import GRID_METHODS, antipodes, concrete_method, orientation_grid, random_rotation
from .base import Backbone, require_positive, require_positive_integers

#: Å^2 added under the square root of the perpendicular norm (see module docstring).
PERP_EPS = 1e-6
#: The two homogeneous spaces: position-orientation (PΘNITA) and position only (PNITA).
SPACES = ("R3S2", "R3")
#: Floats per block of edges in the per-edge work (2**18 = 1 MiB of float32 per [E_b, O, B] or
#: [E_b, O, C] tensor); speed only, see the module docstring.
EDGE_BLOCK_FLOATS = 2**18


class PolynomialFeatures(nn.Module):
    """Products of scaled Legendre polynomials of total degree 1..``degree``: [..., A] -> [..., M].

    ``out[..., m] = prod_k sqrt(2 n_mk + 1) P_{n_mk}(t_k)`` over the exponent tuples
    ``1 <= sum_k n_mk <= degree`` (``exponents`` [M, A]). Each factor has unit mean square for
    ``t_k`` uniform on [-1, 1], and distinct products are orthogonal there, so the features are
    well conditioned on the attributes' range. Together with a constant they span the same space
    as the monomials of degree <= ``degree``. Built by the three-term recurrence
    ``(n + 1) P_{n+1} = (2n + 1) t P_n - n P_{n-1}`` (products only: differentiable to any order).
    """

    def __init__(self, num_attributes: int, degree: int):
        super().__init__()
        exponents = [e for e in itertools.product(range(degree + 1), repeat=num_attributes) if 1 <= sum(e) <= degree]
        self.register_buffer("exponents", torch.tensor(exponents, dtype=torch.long), persistent=False)
        self.degree = degree

    @property
    def out_features(self) -> int:
        return self.exponents.shape[0]

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        legendre = [torch.ones_like(t), t]  # P_0, P_1
        for n in range(1, self.degree):
            legendre.append(((2 * n + 1) * t * legendre[n] - n * legendre[n - 1]) / (n + 1))
        scaled = torch.stack(
            [p * (2 * n + 1) ** 0.5 for n, p in enumerate(legendre[: self.degree + 1])], dim=-2
        )  # [..., D+1, A]: scaled[..., n, k] = sqrt(2n+1) P_n(t_k)
        columns = [scaled[..., self.exponents[:, k], k] for k in range(t.shape[-1])]  # A x [..., M]
        out = columns[0]
        for column in columns[1:]:
            out = out * column
        return out


class AttributeEmbedding(nn.Module):
    """Basis ``phi(t) = GELU(Linear(GELU(Linear(poly_D(t)))))``: [..., A] -> [..., basis_dim].

    ``t`` are attributes mapped to [-1, 1]; the hidden layer is ``hidden_dim`` wide (the paper's
    features -> hidden -> basis). Xavier initialisation (see the module docstring for why not He).
    """

    def __init__(self, num_attributes: int, degree: int, basis_dim: int, hidden_dim: int):
        super().__init__()
        self.poly = PolynomialFeatures(num_attributes, degree)
        self.lin1 = nn.Linear(self.poly.out_features, hidden_dim)
        self.lin2 = nn.Linear(hidden_dim, basis_dim)
        self.act = nn.GELU()

    def reset_parameters(self) -> None:
        for lin in (self.lin1, self.lin2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        width = state_dict.get(prefix + "lin1.weight")
        if width is not None and width.shape[0] != self.lin1.out_features:
            errors.append(
                f"{prefix}lin1 is {width.shape[1]} -> {width.shape[0]} in the state dict but "
                f"{self.lin1.in_features} -> {self.lin1.out_features} here: a PONITA/PNITA saved before "
                f"the basis MLP became features -> hidden_channels -> basis_dim needs the keyword "
                f"basis_hidden={width.shape[0]} (its backbone_kwargs)"
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def mlp(self, features: torch.Tensor) -> torch.Tensor:
        """The two layers on precomputed ``poly(t)`` [..., M] -> [..., basis_dim]."""
        return self.act(self.lin2(self.act(self.lin1(features))))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.poly(t))


def edge_block_size(floats_per_edge: int, block_floats: int | None = None) -> int:
    """Edges per block of the per-edge work: ``block_floats // floats_per_edge``, at least 1.

    ``block_floats`` defaults to ``EDGE_BLOCK_FLOATS`` (read at call time). ``floats_per_edge`` is
    the widest per-edge row, ``O x max(B, basis hidden width, C)``.
    """
    block = EDGE_BLOCK_FLOATS if block_floats is None else block_floats
    return max(1, int(block) // max(1, int(floats_per_edge)))


def sample_kernels(basis: torch.Tensor, maps: list[nn.Linear]) -> list[torch.Tensor]:
    """``[m(basis) for m in maps]`` as one matrix product: [..., B] -> one [..., C_m] per map.

    Every layer's kernel is a bias-free linear map of the same basis, so stacking the weights
    [sum C_m, B] replaces L small products by one larger one (same flops, same values up to float
    rounding). The results are views into one [..., sum C_m] tensor.
    """
    weight = torch.cat([m.weight for m in maps])  # [sum C_m, B]
    return list(nn.functional.linear(basis, weight).split([m.out_features for m in maps], dim=-1))


def _plain_ops() -> bool:
    """True while tracing, scripting or compiling: then the edge work runs as one block of plain ops."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def sum_messages(h, num_ori, edge_blocks, paired, antipode, kernels) -> torch.Tensor:
    """``out_i(o) = sum_{e: i_e = i} k_e(o) * h_{j_e}(o)`` block by block -> [N, O, C] (no graph).

    ``h`` [N, O or 1, C]; ``edge_blocks`` [2, E_b] each (row 0 j, row 1 i); ``paired`` one bool per
    block; ``antipode`` [O] or None; ``kernels`` an iterable of [E_b, O, C], one per block (a
    generator forms each block's kernel just before its use). A paired block also sums each edge's
    reverse, ``out_j(o) += k(-o) * h_i(o)``, in the flipped frame (``EdgeMessages``).
    """
    out = h.new_zeros(h.shape[0], num_ori, h.shape[2])
    flip = antipode is not None and any(paired)
    flipped = torch.zeros_like(out) if flip else None  # reverse edges, flipped frame
    h_flip = h.index_select(1, antipode) if flip and h.shape[1] > 1 else h
    for (j, i), k, both in zip(edge_blocks, kernels, paired):  # messages flow from j to centre i
        out.index_add_(0, i, h.index_select(0, j) * k)
        if flip and both:  # and from i to j, with k(-o)
            flipped.index_add_(0, j, h_flip.index_select(0, i) * k)
    if flip:
        out += flipped.index_select(1, antipode)
    return out


class EdgeMessages(torch.autograd.Function):
    """``out_i(o) = sum_{e: i_e = i} k_e(o) * h_{j_e}(o)`` over blocks of edges -> [N, O, C].

    ``apply(h [N, O or 1, C], num_ori, edge_blocks (tuple of [2, E_b]: row 0 j, row 1 i),
    paired (tuple of bool, one per block), antipode ([O] index of each orientation's opposite, or
    None), *kernels ([E_b, O, C] each))``. The same sum as ``scatter_sum(h[j] * k, i)``, written
    so that no [E, O, C] tensor but the kernels is formed (gathered features and products exist
    one block at a time) and the backward accumulates into one gradient of ``h`` instead of one per
    block, and no [E, O, C] tensor but the kernels is kept for it.

    A block marked ``paired`` also carries the reverse of each of its edges (i -> j), whose kernel
    on an antipodal grid is the edge's own kernel at the opposite orientations,
    ``k_rev(o) = k(-o)`` (``_PositionOrientationNetwork.forward``): its messages
    ``out_j(o) += k(-o) * h_i(o)`` are summed in the flipped frame, ``flipped_j(o') += k(o') *
    h_i(-o')``, and flipped back once, so the kernel block is used twice while in cache.

    The backward is made of differentiable operations, so second derivatives (training on forces)
    work; tests/test_ponita_speed.py checks both against finite differences. Its accumulators are
    created from the incoming gradient (``zeros_like(grad)``), so they are batched under ``vmap``
    and are summed into in place.
    """

    @staticmethod
    def forward(ctx, h, num_ori, edge_blocks, paired, antipode, *kernels):
        out = sum_messages(h, num_ori, edge_blocks, paired, antipode, kernels)
        ctx.edge_blocks, ctx.paired, ctx.antipode = edge_blocks, paired, antipode
        ctx.save_for_backward(h, *kernels)
        return out

    @staticmethod
    def backward(ctx, grad):
        h, *kernels = ctx.saved_tensors
        antipode = ctx.antipode
        need_h, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[5:]
        flip = antipode is not None and any(ctx.paired)
        broadcast = h.shape[1] == 1 and grad.shape[1] != 1  # h was broadcast over the orientations
        like = grad[:, :1] if broadcast else grad
        grad_h = torch.zeros_like(like) if need_h else None
        grad_h_flip = torch.zeros_like(like) if need_h and flip else None
        grad_flip = grad.index_select(1, antipode) if flip else None
        h_flip = h.index_select(1, antipode) if flip and not broadcast else h
        grad_k = []
        for (j, i), k, need, both in zip(ctx.edge_blocks, kernels, need_k, ctx.paired):
            g = grad.index_select(0, i)  # [E_b, O, C]: at the centres
            gk = g * h.index_select(0, j) if need else None
            if need_h:
                gh = g * k
                grad_h.index_add_(0, j, gh.sum(1, keepdim=True) if broadcast else gh)
            if flip and both:
                g = grad_flip.index_select(0, j)  # the reverse edges' centres are the j
                if need:
                    gk = gk + g * h_flip.index_select(0, i)
                if need_h:
                    gh = g * k
                    grad_h_flip.index_add_(0, i, gh.sum(1, keepdim=True) if broadcast else gh)
            grad_k.append(gk)
        if grad_h_flip is not None:
            grad_h = grad_h + (grad_h_flip if broadcast else grad_h_flip.index_select(1, antipode))
        return (grad_h, None, None, None, None, *grad_k)


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    """[A, B, C] -> contiguous [C, A, B], as one 2-D transpose (several times faster on a CPU than
    ``permute(2, 0, 1).contiguous()``, which copies a 3-D permutation element by element)."""
    a, b, c = x.shape
    return x.reshape(a * b, c).t().contiguous().view(c, a, b)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """[C, A, B] -> contiguous [A, B, C] (the inverse of ``_channels_first``)."""
    c, a, b = x.shape
    return x.reshape(c, a * b).t().contiguous().view(a, b, c)


class SphereConv(torch.autograd.Function):
    """``out[n, p, c] = sum_q x[n, q, c] k[p, q, c]``: x [N, O, C], k [O, O, C] -> [N, O, C].

    Depthwise over c: one [N, O] x [O, O] product per channel (``bmm`` over a [C, N, O] copy).
    Plain ``bmm`` on permuted views gives the same values, but its backward copies the strided
    gradient once per channel (640 small copies per energy + forces call at the paper's QM9
    size); here every operand is made channels-first once, by 2-D transposes. The backward is
    made of differentiable operations (second derivatives work).
    """

    @staticmethod
    def forward(ctx, x, k):
        ctx.save_for_backward(x, k)  # the inputs themselves: the backward's graph reaches them
        k_t = k.permute(2, 1, 0).contiguous()  # [C, Q, P] (small)
        return _channels_last(torch.bmm(_channels_first(x), k_t))  # [C, N, P] -> [N, P, C]

    @staticmethod
    def backward(ctx, grad):
        x, k = ctx.saved_tensors
        g_t = _channels_first(grad)  # [C, N, P]
        grad_x = grad_k = None
        if ctx.needs_input_grad[0]:
            grad_x = _channels_last(torch.bmm(g_t, k.permute(2, 0, 1).contiguous()))  # [C, N, Q] -> [N, Q, C]
        if ctx.needs_input_grad[1]:
            grad_k = torch.bmm(_channels_first(x).transpose(1, 2), g_t).permute(2, 1, 0)  # [C, Q, P] -> [P, Q, C]
        return grad_x, grad_k


class SeparableConv(nn.Module):
    """Depthwise separable group convolution: over edges per orientation, then over the sphere.

    Owns the kernel maps ``spatial_kernel`` (W_s: B -> C) and ``sphere_kernel`` (W_f, or None for
    PNITA) and the bias: ``forward(h [N, O or 1, C], edge_index [2, E], spatial_basis [E, O, B],
    k_sphere [O, O, C] or None) -> [N, O, C]``. ``spatial_basis`` is the sampled basis (envelope
    included); the kernel ``k_spatial = W_s spatial_basis`` [E, O, C] is formed here, one block of
    edges at a time: ``edge_index`` and ``spatial_basis`` may also be equal-length lists of blocks
    ([2, E_b] and [E_b, O, B]), whose messages are summed (see ``edge_block_size``).
    ``k_sphere[p, q]`` is the kernel at ``o_p . o_q`` (output p, input q), sampled by the network
    (``sample_kernels``); None skips the sphere convolution (PNITA). An input with one
    orientation (the lift) is broadcast over the grid.
    """

    def __init__(self, channels: int, basis_dim: int, sphere: bool):
        super().__init__()
        self.spatial_kernel = nn.Linear(basis_dim, channels, bias=False)  # W_s
        self.sphere_kernel = nn.Linear(basis_dim, channels, bias=False) if sphere else None  # W_f
        self.bias = nn.Parameter(torch.zeros(channels))

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.spatial_kernel.weight)
        if self.sphere_kernel is not None:
            nn.init.xavier_uniform_(self.sphere_kernel.weight)
        nn.init.zeros_(self.bias)

    def forward(self, h, edge_index, spatial_basis, k_sphere=None, paired=None, antipode=None):
        num_ori = 1 if k_sphere is None else k_sphere.shape[0]
        if isinstance(spatial_basis, torch.Tensor):  # one block of edges
            edge_index, spatial_basis = [edge_index], [spatial_basis]
        paired = (False,) * len(spatial_basis) if paired is None else tuple(paired)
        if any(paired) and antipode is None:
            raise ValueError("paired blocks of edges need the grid's antipode index")
        weight = self.spatial_kernel.weight  # W_s [C, B]
        if _plain_ops():  # one block: traced/compiled graphs must not depend on the number of edges
            if any(paired):
                raise ValueError("paired blocks of edges are not traced: pass every edge unpaired")
            (j, i), basis = torch.cat(edge_index, dim=1), torch.cat(spatial_basis)
            k_spatial = nn.functional.linear(basis, weight)  # [E, O, C]
            out = scatter_sum(h.index_select(0, j) * k_spatial, i, dim_size=h.shape[0])  # [N, O, C]
        elif not torch.is_grad_enabled():  # inference: each block's kernel is formed and used while in cache
            kernels = (nn.functional.linear(basis, weight) for basis in spatial_basis)  # lazily, [E_b, O, C]
            out = sum_messages(h, num_ori, edge_index, paired, antipode, kernels)  # [N, O, C]
        else:  # messages flow from neighbour j to centre i, one block of edges at a time
            kernels = [nn.functional.linear(basis, weight) for basis in spatial_basis]  # [E_b, O, C] each
            out = EdgeMessages.apply(h, num_ori, tuple(edge_index), paired, antipode, *kernels)  # [N, O, C]
        if k_sphere is not None:  # depthwise over c: one [N, O] x [O, O] product per channel
            if _plain_ops():  # traced/compiled: plain operations (same values; autograd's backward)
                out = _channels_last(torch.bmm(_channels_first(out), k_sphere.permute(2, 1, 0))) / num_ori
            else:
                out = SphereConv.apply(out, k_sphere) / num_ori
        return out + self.bias


class ConvNeXtBlock(nn.Module):
    """``h + gamma * Linear(GELU(Linear(LayerNorm(conv h))))``: [N, O, C] -> [N, O, C].

    ``layer_scale``: initial value of the per-channel ``gamma``, or None for no layer scale.
    """

    def __init__(self, channels: int, basis_dim: int, widening_factor: int, layer_scale: float | None, sphere: bool):
        super().__init__()
        self.conv = SeparableConv(channels, basis_dim, sphere)
        self.norm = nn.LayerNorm(channels)
        self.widen = nn.Linear(channels, widening_factor * channels)
        self.narrow = nn.Linear(widening_factor * channels, channels)
        self.act = nn.GELU()
        self.layer_scale_init = layer_scale
        self.gamma = nn.Parameter(torch.empty(channels)) if layer_scale is not None else None

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        self.norm.reset_parameters()
        for lin in (self.widen, self.narrow):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        if self.gamma is not None:
            nn.init.constant_(self.gamma, self.layer_scale_init)

    def forward(self, h, edge_index, spatial_basis, k_sphere, paired=None, antipode=None):
        """h [N, O or 1, C], edges, basis, sphere kernel and pairing as ``SeparableConv`` -> [N, O, C]."""
        x = self.norm(self.conv(h, edge_index, spatial_basis, k_sphere, paired, antipode))  # [N, O, C]
        size = edge_block_size(self.widen.out_features)  # rows of [rows, wC] per block
        if _plain_ops() or x.shape[0] * x.shape[1] <= size:
            update = self.narrow(self.act(self.widen(x)))
        else:  # the same row-wise MLP in blocks of rows: no [N, O, wC] tensor (see module docstring)
            rows = x.reshape(-1, x.shape[-1]).split(size)
            update = torch.cat([self.narrow(self.act(self.widen(r))) for r in rows]).view_as(x)
        if self.gamma is not None:
            update = self.gamma * update
        return h + update


def grid_method(grid: str, count: int, name: str) -> str:
    """The construction ``grid`` stands for at ``count`` orientations ("auto": antipodal if even,
    else Fibonacci), checked: an antipodal grid needs an even count (``name``, the argument's
    name, makes the error say what to change)."""
    if grid == "antipodal" and count % 2:
        raise ValueError(
            f"grid='antipodal' pairs every orientation with its opposite, so {name} must be even, got "
            f"{count}; use an even {name}, grid='auto' or grid='fibonacci'"
        )
    return concrete_method(grid, count)


def invariant_attributes(edge_vec: torch.Tensor, grid: torch.Tensor | None) -> torch.Tensor:
    """Spatial attributes of the pairs (x_i, o) -> (x_j, o), in Å.

    ``edge_vec`` [E, 3] = x_j - x_i. With ``grid`` [O, 3] (R3 x S2): ``[x . o, |x - (x . o) o|]``
    -> [E, O, 2], the norm smoothed by ``PERP_EPS``. With ``grid=None`` (R3): ``|x|`` -> [E, 1, 1].
    """
    if grid is None:
        return edge_vec.norm(dim=-1).view(-1, 1, 1)
    along = edge_vec @ grid.T  # [E, O]
    perp = edge_vec.unsqueeze(1) - along.unsqueeze(-1) * grid  # [E, O, 3]
    return torch.stack([along, torch.sqrt(perp.pow(2).sum(-1) + PERP_EPS)], dim=-1)


def unit_attributes(attributes: torch.Tensor, cutoff: float) -> torch.Tensor:
    """``invariant_attributes`` (Å) mapped affinely onto [-1, 1] for ``PolynomialFeatures``.

    [E, O, 2] ``(along, perp)`` -> ``(along / r_c, 2 perp / r_c - 1)``; [E, 1, 1] ``|x|`` ->
    ``2 |x| / r_c - 1`` (edges are at most ``cutoff`` long, so the values lie in [-1, 1]).
    """
    if attributes.shape[-1] == 1:
        return 2.0 * attributes / cutoff - 1.0
    along, perp = attributes.unbind(-1)
    return torch.stack([along / cutoff, 2.0 * perp / cutoff - 1.0], dim=-1)


class _PositionOrientationNetwork(Backbone):
    """Shared implementation of PONITA (``space="R3S2"``) and PNITA (``space="R3"``)."""

    rotation_symmetry = "approximate"

    def __init__(
        self,
        *,
        space: str,
        hidden_channels: int,
        num_layers: int,
        num_ori: int,
        cutoff: float,
        basis_dim: int,
        degree: int,
        widening_factor: int,
        layer_scale: float | None,
        grid: str,
        basis_hidden: int | None,
        random_grid_rotation: bool,
        max_z: int,
        record: dict,
        eval_num_ori: int | None = None,
        species: list[int] | None = None,
    ):
        super().__init__(**record)  # the public class's own keywords, for checkpoints and repr
        if space not in SPACES:
            raise ValueError(f"unknown space '{space}'; choose one of: {', '.join(SPACES)}")
        require_positive_integers(
            hidden_channels=hidden_channels,
            num_layers=num_layers,
            basis_dim=basis_dim,
            degree=degree,
            widening_factor=widening_factor,
            max_z=max_z,
        )
        require_positive(cutoff=cutoff)
        if basis_hidden is not None:
            require_positive_integers(basis_hidden=basis_hidden)
        if layer_scale is not None:
            require_positive(layer_scale=layer_scale)
        self.space = space
        self.cutoff = float(cutoff)
        num_elements = self.init_elements(species, max_z)
        self.random_grid_rotation = bool(random_grid_rotation)
        sphere = space == "R3S2"
        if sphere:
            require_positive_integers(num_ori=num_ori)
            if grid not in GRID_METHODS:
                raise ValueError(f"unknown grid '{grid}'; choose one of: {', '.join(GRID_METHODS)}")
            points = orientation_grid(num_ori, grid_method(grid, num_ori, "num_ori"), dtype=torch.get_default_dtype())
            self.register_buffer("grid", points, persistent=False)  # [O, 3], derived from the hparams
            eval_points = None
            if eval_num_ori is not None:
                require_positive_integers(eval_num_ori=eval_num_ori)
                method = grid_method(grid, eval_num_ori, "eval_num_ori")
                eval_points = orientation_grid(eval_num_ori, method, dtype=torch.get_default_dtype())
            self.register_buffer("eval_grid", eval_points, persistent=False)  # [O_eval, 3] or None
            # [O] opposites, where the grid has them: then an edge and its reverse share kernels
            self.register_buffer("grid_antipode", antipodes(points), persistent=False)
            self.register_buffer(
                "eval_antipode", None if eval_points is None else antipodes(eval_points), persistent=False
            )
        else:
            self.grid = None
            self.eval_grid = None
            self.grid_antipode = None
            self.eval_antipode = None
        self.embedding = nn.Embedding(num_elements, hidden_channels)  # one row per element
        basis_hidden = hidden_channels if basis_hidden is None else basis_hidden
        self.spatial_basis = AttributeEmbedding(2 if sphere else 1, degree, basis_dim, basis_hidden)
        self.sphere_basis = AttributeEmbedding(1, degree, basis_dim, basis_hidden) if sphere else None
        self.block_width = max(basis_dim, basis_hidden, hidden_channels)  # widest per-edge, per-orientation row
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(hidden_channels, basis_dim, widening_factor, layer_scale, sphere) for _ in range(num_layers)
        )
        self.readout = nn.Linear(hidden_channels, hidden_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embedding.weight)
        self.spatial_basis.reset_parameters()
        if self.sphere_basis is not None:
            self.sphere_basis.reset_parameters()
        for block in self.blocks:
            block.reset_parameters()
        nn.init.xavier_uniform_(self.readout.weight)
        nn.init.zeros_(self.readout.bias)

    def orientations(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The grid [O, 3] used by this forward pass: ``eval_grid`` in eval mode when set, else
        ``grid`` (randomly rotated in training if asked)."""
        if self.grid is None:
            return None
        grid = self.eval_grid if self._eval_grid_in_use() else self.grid
        grid = grid.to(dtype)
        grid = grid / grid.norm(dim=-1, keepdim=True)  # unit to this dtype's precision
        if self.training and self.random_grid_rotation:
            grid = grid @ random_rotation(dtype=dtype, device=grid.device).T
            antipode = self.antipode()
            if antipode is not None:  # keep opposites bitwise opposite (a product may round rows apart)
                first = torch.arange(grid.shape[0], device=grid.device) < antipode  # one of each pair
                grid = grid.index_copy(0, antipode[first], -grid[first])
        return grid

    def _eval_grid_in_use(self) -> bool:
        return not self.training and self.eval_grid is not None

    def antipode(self) -> torch.Tensor | None:
        """[O] index of each orientation's opposite on this pass's grid, or None (a grid without
        antipodal pairs, PNITA). A rotation of the grid keeps its pairs."""
        return self.eval_antipode if self._eval_grid_in_use() else self.grid_antipode

    def edge_basis(
        self, edge_vec: torch.Tensor, grid: torch.Tensor | None, size: int | None, split_at: int = 0
    ) -> list[torch.Tensor]:
        """Sampled spatial basis with the envelope, ``phi_s(a_ij(o)) u(|x_ij|)``: [E, 3] -> blocks of
        ``size`` edges (None: one block), [E_b, O, B] each; with ``split_at``, the first
        ``split_at`` edges and the rest are blocked separately (no block straddles them). The
        attributes and their polynomial features ([E, O, M], small) are formed for all edges at
        once, the MLP's wide layers one block at a time."""
        envelope = polynomial_envelope(edge_vec.norm(dim=-1), self.cutoff).view(-1, 1, 1)  # [E, 1, 1]
        attributes = unit_attributes(invariant_attributes(edge_vec, grid), self.cutoff)  # [E, O, 2] or [E, 1, 1]
        features = self.spatial_basis.poly(attributes)  # [E, O, M]
        if size is None:
            return [self.spatial_basis.mlp(features) * envelope]
        parts = [(features[:split_at], envelope[:split_at]), (features[split_at:], envelope[split_at:])]
        return [
            self.spatial_basis.mlp(f) * u
            for part_f, part_u in parts
            if part_f.shape[0]
            for f, u in zip(part_f.split(size), part_u.split(size))
        ]  # [E_b, O, B] each

    def edge_blocks(self, batch, edge_vec: torch.Tensor, grid, antipode):
        """The edges' work split into blocks: (edge_index blocks [2, E_b], sampled basis blocks
        [E_b, O, B], paired flags). With an antipodal grid, of each edge and its reverse only one
        is kept, in a paired block (``EdgeMessages``): the reverse's attributes at o are the
        edge's at -o, since its vector is ``-x_ij``, so its basis and kernels are the edge's read
        at ``antipode``; this halves the basis MLP and the kernel products, which dominate the
        cost. Edges without a reverse in the graph go in unpaired blocks. While tracing or
        compiling: one unpaired block of every edge (the graph must not depend on E)."""
        edge_index = batch[K.EDGE_INDEX]
        if _plain_ops():
            return [edge_index], self.edge_basis(edge_vec, grid, None), None
        size = edge_block_size((1 if grid is None else grid.shape[0]) * self.block_width)
        if antipode is None:
            blocks = edge_index.split(size, dim=1)
            return blocks, self.edge_basis(edge_vec, grid, size), (False,) * len(blocks)
        reverse = reverse_edges(edge_index, batch[K.EDGE_SHIFT])  # [E], -1: none
        order = torch.arange(edge_index.shape[1], device=edge_index.device)
        has_reverse = (reverse >= 0) & (reverse != order)  # a self-loop of zero shift is unpaired
        kept_paired = order[has_reverse & (order < reverse)]  # one edge of each pair
        unpaired = order[~has_reverse]
        kept = torch.cat([kept_paired, unpaired])
        basis = self.edge_basis(edge_vec.index_select(0, kept), grid, size, split_at=kept_paired.numel())
        index = edge_index.index_select(1, kept)
        blocks = list(index[:, : kept_paired.numel()].split(size, dim=1)) if kept_paired.numel() else []
        num_paired_blocks = len(blocks)
        if unpaired.numel():
            blocks += list(index[:, kept_paired.numel() :].split(size, dim=1))
        paired = (True,) * num_paired_blocks + (False,) * (len(blocks) - num_paired_blocks)
        return blocks, basis, paired

    def forward(self, batch) -> dict[str, torch.Tensor]:
        rows = self.element_rows(batch[K.Z])  # [N] rows of the element table
        edge_vec = edge_vectors(batch)  # [E, 3] Å, x_j - x_i
        grid = self.orientations(edge_vec.dtype)  # [O, 3] or None
        antipode = self.antipode()  # [O] or None
        num_ori = 1 if grid is None else grid.shape[0]
        edge_index, spatial_basis, paired = self.edge_blocks(batch, edge_vec, grid, antipode)
        if grid is None:
            k_sphere = [None] * len(self.blocks)
        else:
            sphere_basis = self.sphere_basis((grid @ grid.T).unsqueeze(-1))  # [O, O, B]
            k_sphere = sample_kernels(sphere_basis, [b.conv.sphere_kernel for b in self.blocks])  # L x [O, O, C]
        h = self.embedding(rows).unsqueeze(1)  # [N, 1, C], lifted: the same for every orientation
        for block, kf in zip(self.blocks, k_sphere):
            h = block(h, edge_index, spatial_basis, kf, paired, antipode)  # [N, O, C]
        g = self.readout(h)  # [N, O, F]
        out = {K.NODE_FEATURES: g.mean(dim=1)}  # [N, F]
        if grid is not None:
            out[K.NODE_VECTORS] = torch.einsum("nof,od->nfd", g, grid) / num_ori  # [N, F, 3]
        return out


class PONITA(_PositionOrientationNetwork):
    """PΘNITA: ConvNeXt group convolutions on position-orientation space R3 x S2.

    Args:
        hidden_channels: C, channels per atom and orientation (default: 128, the paper's).
        num_layers: ConvNeXt blocks (default: 5, the paper's).
        num_ori: O, orientations on the sphere (default: 20). Rotation error falls as O grows;
            cost and memory grow linearly (edges x O x C tensors) plus an O x O x C sphere kernel.
        cutoff: Å; envelope radius and scale of the attributes (default: 5.0).
        basis_dim: B, width of the attribute embeddings (default: 128; narrower than the paper's QM9
            runs to keep CPU cost down, see the README for the paper setting).
        basis_hidden: width of the basis MLPs' hidden layer, or None for ``hidden_channels``, the
            paper's features -> hidden -> basis (default: None). ``basis_hidden=basis_dim`` is
            geognn's earlier features -> basis -> basis.
        degree: D, highest degree of the polynomial features (default: 3, the paper's).
        widening_factor: w of the ConvNeXt MLP (default: 4, the paper's).
        layer_scale: initial per-channel scale of each block's update, or None for no layer scale
            (default: None).
        grid: "auto" (default: "antipodal" for an even count, "fibonacci" for an odd one, decided
            separately for ``num_ori`` and ``eval_num_ori``), "fibonacci", "antipodal" (even
            counts only) or "repulsion" (``geognn.symmetry.sphere``). On the antipodal grid an
            edge and its reverse share one kernel computation: about 1.2-1.4x faster at the same
            ``num_ori``, with a rotation error within about 20 % of the Fibonacci lattice's
            (see the module docstring). Checkpoints record the grid, so models saved while
            "fibonacci" was the default rebuild on it.
        random_grid_rotation: rotate the grid randomly in every training forward pass (default: False).
        eval_num_ori: orientations of the grid used in eval mode (prediction, validation), or None
            for ``num_ori`` (default: None). No weight depends on the grid, so a model trained on a
            coarse randomly rotated grid can be evaluated on a fine one (see the module docstring).
        max_z: largest atomic number the embedding accepts when ``species`` is None (default: 100).
        species: atomic numbers (or symbols) the model is built for: the embedding gets one row
            per element; None: one row per Z in 0..max_z (default: None).

    ``forward(batch)`` returns ``{"node_features": [N, C] (invariant up to the grid's
    discretisation), "node_vectors": [N, C, 3] (equivariant up to it)}``.
    """

    name = "ponita"
    geometry = "orientation grid"  # Backbone.geometry: features on a grid of directions
    reflection_invariant = True  # up to the grid's discretisation, like rotations (see module docstring)

    def __init__(
        self,
        hidden_channels: int = 128,
        num_layers: int = 5,
        num_ori: int = 20,
        cutoff: float = 5.0,
        basis_dim: int = 128,
        basis_hidden: int | None = None,
        degree: int = 3,
        widening_factor: int = 4,
        layer_scale: float | None = None,
        grid: str = "auto",
        random_grid_rotation: bool = False,
        eval_num_ori: int | None = None,
        max_z: int = 100,
        species: list[int] | None = None,
    ):
        hparams = dict(
            hidden_channels=hidden_channels,
            num_layers=num_layers,
            num_ori=num_ori,
            cutoff=cutoff,
            basis_dim=basis_dim,
            basis_hidden=basis_hidden,
            degree=degree,
            widening_factor=widening_factor,
            layer_scale=layer_scale,
            grid=grid,
            random_grid_rotation=random_grid_rotation,
            eval_num_ori=eval_num_ori,
            max_z=max_z,
            species=normalise_species(species),
        )
        super().__init__(space="R3S2", **hparams, record=hparams)


class PNITA(_PositionOrientationNetwork):
    """PNITA: the same ConvNeXt network on positions only (R3), distance attributes; exactly invariant.

    Args: as ``PONITA`` without the sphere (no ``num_ori``, ``grid``, ``random_grid_rotation``).
    ``forward(batch)`` returns ``{"node_features": [N, C]}`` (E(3)-invariant).
    """

    name = "pnita"
    geometry = "distances"  # Backbone.geometry: no orientations, invariants of d_ij only
    rotation_symmetry = "exact"
    reflection_invariant = True

    def __init__(
        self,
        hidden_channels: int = 128,
        num_layers: int = 5,
        cutoff: float = 5.0,
        basis_dim: int = 128,
        basis_hidden: int | None = None,
        degree: int = 3,
        widening_factor: int = 4,
        layer_scale: float | None = None,
        max_z: int = 100,
        species: list[int] | None = None,
    ):
        hparams = dict(
            hidden_channels=hidden_channels,
            num_layers=num_layers,
            cutoff=cutoff,
            basis_dim=basis_dim,
            basis_hidden=basis_hidden,
            degree=degree,
            widening_factor=widening_factor,
            layer_scale=layer_scale,
            max_z=max_z,
            species=normalise_species(species),
        )
        super().__init__(space="R3", **hparams, num_ori=1, grid="fibonacci", random_grid_rotation=False, record=hparams)
