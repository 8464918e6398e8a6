r"""DimeNet++ (Gasteiger et al., "Fast and Uncertainty-Aware Directional Message Passing for
Non-Equilibrium Molecules", 2020, https://arxiv.org/abs/2011.14115; DimeNet: Gasteiger, Groß and
Günnemann, ICLR 2020, https://arxiv.org/abs/2003.03123): directional message passing over
edge embeddings, with the angles of edge pairs (triplets) entering through a spherical basis.

Notation (geognn's convention, ``geognn/conventions.py``): edge ``e = (j -> i)`` has source j
(``edge_index[0]``), target i (``edge_index[1]``), image shift S_e of j, and vector
``r_ij = pos[j] + S_e @ cell - pos[i]`` from i to j; ``d_ij = |r_ij|``. A *triplet*
``(k -> j -> i)`` is a pair of edges ``e_kj = (k -> j)``, ``e_ji = (j -> i)`` (the target of
``e_kj`` is the source of ``e_ji``), minus the back-edge (k the very same atom *and image* as i);
see :func:`triplets`. Its angle is the bond angle at j,
``theta_kji = angle(-r_ij, r_jk)`` between the vectors from j to i and from j to k.

Bases (x = d / c, c the cutoff; u the polynomial envelope with p = envelope_exponent + 1,
``u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)``, whose value and first two
derivatives vanish at x = 1):

.. math::
    e_{\mathrm{RBF},n}(d) = \sqrt{2/c}\, \frac{\sin(n \pi d / c)}{d}\, u(d/c),
    \qquad n = 1..N_\mathrm{rad} \ (\text{trainable frequencies})

    a_{\mathrm{SBF},ln}(d, \theta) = \frac{u(x)}{x}\; \frac{\sqrt{2}}{|j_{l+1}(z_{ln})|}\,
        j_l(z_{ln} x)\; Y_l^0(\theta), \qquad l = 0..N_\mathrm{sph}-1

where ``j_l`` is the spherical Bessel function, ``z_ln`` its n-th positive zero and
``Y_l^0(theta) = sqrt((2l+1)/(4 pi)) P_l(cos theta)``. The spherical basis of triplet
``(k -> j -> i)`` uses ``d = d_jk`` (the length of ``e_kj``) and ``theta_kji``.

Blocks (sigma = SiLU/swish; ``W`` linear maps; ``||`` concatenation; ``h_i = embedding(z_i)``):

.. math::
    m_{ji}^{(0)} = \sigma\big(W [\, h_i \,\|\, h_j \,\|\, \sigma(W_{\mathrm{rbf}}\, e_\mathrm{RBF}(d_{ij})) \,]\big)
    \qquad \text{(embedding block)}

    \tilde m_{kj} = \sigma\big(W_\mathrm{down} [\sigma(W_{kj} m_{kj}) \odot W_{\mathrm{rbf}2} W_{\mathrm{rbf}1} e_\mathrm{RBF}(d_{jk})]\big)
    \quad (\text{hidden} \to \text{int\_emb\_size})

    t_{ji} = \sigma\Big(W_\mathrm{up} \sum_{k} \tilde m_{kj} \odot W_{\mathrm{sbf}2} W_{\mathrm{sbf}1}
              a_\mathrm{SBF}(d_{jk}, \theta_{kji})\Big)
    \quad (\text{int\_emb\_size} \to \text{hidden})

    m_{ji} \leftarrow \mathrm{Res}^{\text{after}}\Big(\sigma\big(W\, \mathrm{Res}^{\text{before}}
              (\sigma(W_{ji} m_{ji}) + t_{ji})\big) + m_{ji}\Big)
    \qquad \text{(interaction block)}

    P^{(b)}_i = W_\mathrm{out}\, \sigma(W_L \cdots \sigma(W_1\, W_\mathrm{up'}
              \textstyle\sum_j W'_{\mathrm{rbf}} e_\mathrm{RBF}(d_{ij}) \odot m_{ji}) \cdots)
    \qquad \text{(output block, hidden} \to \text{out\_emb\_channels} \to \text{out\_channels)}

with ``Res(x) = x + sigma(W_2 sigma(W_1 x))`` (``num_before_skip`` and ``num_after_skip`` of
them). There is one output block after the embedding block and one after each of the
``num_layers`` interaction blocks; the backbone returns their sum
``node_features_i = sum_b P_i^(b)``.

Deviations from the paper, and why:

* **Output.** DimeNet++ maps each output block straight to a per-atom energy (out_channels = 1)
  and sums them. Here the output blocks end in ``out_channels`` features (default:
  ``hidden_channels``), summed over blocks and returned as ``node_features`` [N, out_channels];
  geognn's ``Model`` head then maps them to per-atom energies (the backbone contract).
* **Last output layer initialised with scaled-orthogonal weights, not zeros** (PyG's default):
  with zeros, a freshly initialised backbone returns exactly zero features, which would make
  every symmetry and force check of an untrained model trivial; geognn's head follows anyway.
* **The spherical basis uses cos(theta) directly**, ``cos theta = -r̂_ij · r̂_jk``, rather than
  ``theta = atan2(|a x b|, a . b)``: ``Y_l^0`` needs only ``P_l(cos theta)``, and ``cos theta`` is
  a smooth function of the positions even for collinear triplets (common in crystals), where
  theta itself has a kink. Unit vectors are of edges, which never have zero length.
* **The angle is the bond angle at j** between j->i and j->k (DimeNet's geometric angle);
  PyG's DimeNet++ uses its supplement ``pi - theta``. ``Y_l^0(pi - theta) = (-1)^l Y_l^0(theta)``,
  so the two differ by a sign per l that the following linear layer absorbs.
* **Periodic systems:** triplets are built over periodic images (see :func:`triplets`), so
  a triplet ``(k -> j -> i)`` with k = i but in another image is a genuine triplet.
* The radial Bessel basis carries the factor ``sqrt(2/c)`` of ``geognn.graph.features.BesselRBF``
  (PyG's has ``c`` instead): a constant scale absorbed by the next linear layer.
* ``j_l`` is evaluated in float64 (power series for ``x < max(1, l)``, the closed form above),
  with its derivative from ``j_l' = (l/x) j_l - j_{l+1}``: the closed form alone loses all
  accuracy for high l at short distances in float32.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .. import conventions as K
from ..graph.build import edge_vectors
from ..graph.features import BesselRBF, polynomial_envelope
from ..nn.scatter import scatter_sum
from ..nn.species import normalise_species
from .base import Backbone


# ============================================================================ triplets
def triplets(
    edge_index: torch.Tensor, edge_shift: torch.Tensor | None, num_nodes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """All triplets ``(k -> j -> i)`` of a (periodic) graph, as pairs of edge indices.

    For every edge ``e_ji = (j -> i)`` (``edge_index[:, e_ji] = (j, i)``, shift ``S_ji``) the
    triplets are all edges ``e_kj = (k -> j)`` whose *target* is j (shift ``S_kj``, the image of
    k seen from j), except the back-edge: k the same atom **and** the same image as i, i.e.
    ``k == i and S_ji + S_kj == 0``. In a small periodic cell ``k == i`` with
    ``S_ji + S_kj != 0`` is another image of i and is kept; so is ``e_kj == e_ji`` for an edge
    from an atom to its own image (j -> j + S: k = j + 2S).

    Pure torch (counts, cumsum, ``repeat_interleave``): edges are grouped by target with a stable
    sort, and edge ``e_ji`` is paired with the group of its source.

    Args:
        edge_index: [2, E] long, row 0 the source (neighbour) j, row 1 the target (centre) i.
        edge_shift: [E, 3] integer image of each edge's source (any dtype holding integers);
            None means all zeros (a molecule).
        num_nodes: N, the number of atoms.

    Returns:
        ``(idx_kj, idx_ji)``, each [T] long: edge indices of the two edges of each triplet.
        Triplets are ordered by ``idx_ji``, then by ``idx_kj`` (the sort by target is stable).
    """
    src, dst = edge_index[0], edge_index[1]  # j, i  (messages flow j -> i)
    device = edge_index.device
    num_edges = src.numel()
    by_target = torch.argsort(dst, stable=True)  # [E] edges grouped by their target
    in_degree = torch.bincount(dst, minlength=num_nodes)  # [N]
    group_start = torch.cumsum(in_degree, 0) - in_degree  # [N] first position of each group
    per_edge = in_degree.index_select(0, src)  # [E] candidate e_kj for each e_ji (target of e_kj = j)
    total = int(per_edge.sum())
    idx_ji = torch.repeat_interleave(torch.arange(num_edges, device=device), per_edge, output_size=total)  # [T0]
    first = torch.cumsum(per_edge, 0) - per_edge  # [E]
    rank = torch.arange(total, device=device) - first.index_select(0, idx_ji)  # [T0] place in group
    idx_kj = by_target.index_select(0, group_start.index_select(0, src.index_select(0, idx_ji)) + rank)
    # drop the back-edge: k is i itself (same atom, same image)
    same_atom = src.index_select(0, idx_kj) == dst.index_select(0, idx_ji)  # [T0]
    if edge_shift is None:
        back = same_atom
    else:
        image = edge_shift.index_select(0, idx_kj) + edge_shift.index_select(0, idx_ji)  # [T0, 3]
        back = same_atom & (image.abs().sum(dim=-1) < 0.5)
    keep = ~back
    return idx_kj[keep], idx_ji[keep]


def triplet_cosines(edge_vec: torch.Tensor, idx_kj: torch.Tensor, idx_ji: torch.Tensor) -> torch.Tensor:
    """``cos theta_kji`` [T]: the angle at j between the vectors j -> i and j -> k.

    ``edge_vec`` [E, 3] are geognn's ``r_ij`` (centre to neighbour), so j -> i is
    ``-edge_vec[idx_ji]`` and j -> k is ``edge_vec[idx_kj]``. Smooth in the positions for every
    configuration, collinear ones included (edges have nonzero length).
    """
    unit = edge_vec / edge_vec.norm(dim=-1, keepdim=True)  # [E, 3]
    return -(unit.index_select(0, idx_ji) * unit.index_select(0, idx_kj)).sum(dim=-1)  # [T]


def triplet_angles(edge_vec: torch.Tensor, idx_kj: torch.Tensor, idx_ji: torch.Tensor) -> torch.Tensor:
    """``theta_kji`` [T] in radians, ``atan2(|a x b|, a . b)`` with a = j -> i, b = j -> k.

    For inspection and tests; the model uses :func:`triplet_cosines` (smooth at 0 and pi).
    """
    a = -edge_vec.index_select(0, idx_ji)  # [T, 3] j -> i
    b = edge_vec.index_select(0, idx_kj)  # [T, 3] j -> k
    return torch.atan2(torch.linalg.cross(a, b).norm(dim=-1), (a * b).sum(dim=-1))


# ============================================================================ spherical Bessel
def _double_factorial_odd(l: int) -> float:
    """(2l+1)!! = 1 * 3 * ... * (2l+1)."""
    return float(math.prod(range(1, 2 * l + 2, 2)))


def _series_terms(l: int, x_max: float) -> int:
    """How many terms of j_l's power series reach 1e-18 (relative to the first) for x <= x_max.

    The tolerance is a literal, not a default argument: ``torch.compile(dynamic=True)`` turns a
    float default into a symbolic input, which Dynamo cannot then use inside the autograd.Function
    (``_SphericalBessel``) that calls this ("lift_tracked_freevar_to_input" AssertionError).
    """
    k, ratio = 0, 1.0
    while ratio > 1e-18 or k < 2:
        k += 1
        ratio *= 0.5 * x_max * x_max / (k * (2 * l + 2 * k + 1))
    return k


def _spherical_jn_float64(x: torch.Tensor, l: int) -> torch.Tensor:
    """j_l(x) for x >= 0, in float64, accurate to ~1e-13 relative (checked against scipy).

    Power series ``x^l sum_k (-x^2/2)^k / (k! (2l+2k+1)!!)`` below ``max(1, l)``, where the closed
    form cancels catastrophically; the closed form (upward recursion from j_0, j_1) above.
    """
    x = x.to(torch.float64)
    switch = max(1.0, float(l))
    # series
    term = x.pow(l) / _double_factorial_odd(l)
    series = term
    minus_half_x2 = -0.5 * x * x
    for k in range(1, _series_terms(l, switch) + 1):
        term = term * minus_half_x2 / (k * (2 * l + 2 * k + 1))
        series = series + term
    # closed form (x = 0 gives NaN here; the series is chosen there)
    sin, cos = torch.sin(x), torch.cos(x)
    prev = sin / x  # j_0
    if l == 0:
        closed = prev
    else:
        cur = sin / (x * x) - cos / x  # j_1
        for n in range(1, l):
            prev, cur = cur, (2 * n + 1) / x * cur - prev
        closed = cur
    return torch.where(x < switch, series, closed)


class _SphericalBessel(torch.autograd.Function):
    """j_l(x) with derivative ``(l/x) j_l - j_{l+1}``; the backward calls this Function again,
    so it is differentiable to any order (forces in training need second derivatives)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, l: int) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.l = l
        return _spherical_jn_float64(x.detach(), l).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        l = ctx.l
        d = -spherical_jn(x, l + 1)
        if l > 0:
            d = d + (l / x) * spherical_jn(x, l)
        return grad * d, None


def spherical_jn(x: torch.Tensor, l: int) -> torch.Tensor:
    """Spherical Bessel function of the first kind ``j_l(x)``, elementwise, differentiable.

    x >= 0 (the derivative needs x > 0). Same shape and dtype as ``x``.
    """
    return _SphericalBessel.apply(x, int(l))


def spherical_jn_zeros(num_spherical: int, num_radial: int) -> torch.Tensor:
    """[num_spherical, num_radial] float64: ``z_ln``, the n-th positive zero of j_l.

    Zeros of j_0 are n pi; those of j_l interlace with those of j_{l-1} (one in each interval
    between consecutive zeros), found by bisection to machine precision.
    """
    n_total = num_radial + num_spherical - 1
    zeros = [torch.arange(1, n_total + 1, dtype=torch.float64) * math.pi]
    for l in range(1, num_spherical):
        lo, hi = zeros[-1][:-1].clone(), zeros[-1][1:].clone()
        f_lo = _spherical_jn_float64(lo, l)
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            f_mid = _spherical_jn_float64(mid, l)
            left = torch.sign(f_mid) == torch.sign(f_lo)
            lo, f_lo = torch.where(left, mid, lo), torch.where(left, f_mid, f_lo)
            hi = torch.where(left, hi, mid)
        zeros.append(0.5 * (lo + hi))
    return torch.stack([z[:num_radial] for z in zeros])


def legendre(cos_theta: torch.Tensor, num_spherical: int) -> torch.Tensor:
    """Legendre polynomials ``P_l(cos theta)``, l = 0..num_spherical-1 -> [..., num_spherical]
    (Bonnet's recursion ``(l+1) P_{l+1} = (2l+1) x P_l - l P_{l-1}``)."""
    out = [torch.ones_like(cos_theta)]
    if num_spherical > 1:
        out.append(cos_theta)
    for l in range(1, num_spherical - 1):
        out.append(((2 * l + 1) * cos_theta * out[l] - l * out[l - 1]) / (l + 1))
    return torch.stack(out, dim=-1)


class SphericalBasis(nn.Module):
    """DimeNet's 2D spherical Fourier-Bessel basis of a triplet.

    ``radial(d)`` [E, L, N] = ``u(d/c)/(d/c) * sqrt(2)/|j_{l+1}(z_ln)| * j_l(z_ln d/c)`` per edge;
    ``forward(d [E], cos_theta [T], idx_kj [T])`` -> [T, L*N], the radial part of edge ``e_kj``
    times ``Y_l^0(theta) = sqrt((2l+1)/(4 pi)) P_l(cos theta)``.
    """

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float, envelope_exponent: int):
        super().__init__()
        self.num_spherical, self.num_radial = num_spherical, num_radial
        self.cutoff, self.envelope_p = float(cutoff), envelope_exponent + 1
        zeros = spherical_jn_zeros(num_spherical, num_radial)  # [L, N] float64
        norm = torch.stack(
            [math.sqrt(2.0) / _spherical_jn_float64(zeros[l], l + 1).abs() for l in range(num_spherical)]
        )  # [L, N]
        sph_norm = torch.tensor(
            [math.sqrt((2 * l + 1) / (4 * math.pi)) for l in range(num_spherical)], dtype=torch.float64
        )
        dtype = torch.get_default_dtype()
        self.register_buffer("zeros", zeros.to(dtype))
        self.register_buffer("norm", norm.to(dtype))
        self.register_buffer("sph_norm", sph_norm.to(dtype))

    def radial(self, distance: torch.Tensor) -> torch.Tensor:
        x = (distance / self.cutoff).unsqueeze(-1)  # [E, 1]
        env = polynomial_envelope(x, 1.0, self.envelope_p) / x  # [E, 1]  u(x)/x
        rad = torch.stack([spherical_jn(self.zeros[l] * x, l) for l in range(self.num_spherical)], dim=1)  # [E, L, N]
        return env.unsqueeze(-1) * self.norm * rad  # [E, L, N]

    def forward(self, distance: torch.Tensor, cos_theta: torch.Tensor, idx_kj: torch.Tensor) -> torch.Tensor:
        rad = self.radial(distance).index_select(0, idx_kj)  # [T, L, N]
        ang = legendre(cos_theta, self.num_spherical) * self.sph_norm  # [T, L]
        return (rad * ang.unsqueeze(-1)).flatten(1)  # [T, L*N]

    def extra_repr(self) -> str:
        return (
            f"num_spherical={self.num_spherical}, num_radial={self.num_radial}, "
            f"cutoff={self.cutoff}, envelope_p={self.envelope_p}"
        )


# ============================================================================ blocks
def glorot_orthogonal_(weight: torch.Tensor, scale: float = 2.0) -> None:
    """DimeNet's initialiser: a (semi-)orthogonal matrix rescaled to variance scale/(fan_in+fan_out)."""
    with torch.no_grad():
        nn.init.orthogonal_(weight)
        weight.mul_(math.sqrt(scale / ((weight.shape[0] + weight.shape[1]) * float(weight.var()))))


def _reset_linear(lin: nn.Linear) -> None:
    glorot_orthogonal_(lin.weight)
    if lin.bias is not None:
        nn.init.zeros_(lin.bias)


class ResidualLayer(nn.Module):
    """``x + sigma(W_2 sigma(W_1 x + b_1) + b_2)``, [*, H] -> [*, H]."""

    def __init__(self, channels: int, act: nn.Module):
        super().__init__()
        self.lin1, self.lin2, self.act = nn.Linear(channels, channels), nn.Linear(channels, channels), act

    def reset_parameters(self) -> None:
        _reset_linear(self.lin1)
        _reset_linear(self.lin2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.lin2(self.act(self.lin1(x))))


class EmbeddingBlock(nn.Module):
    """Initial message ``m_ji = sigma(W [h_i || h_j || sigma(W_rbf e_RBF(d_ij))])`` -> [E, H].

    ``num_elements`` rows in the atom embedding; ``forward(rows [N], rbf [E, R], j [E], i [E])``
    takes each atom's row (``Backbone.element_rows``), not its atomic number."""

    def __init__(self, num_elements: int, num_radial: int, hidden_channels: int, act: nn.Module):
        super().__init__()
        self.embedding = nn.Embedding(num_elements, hidden_channels)
        self.lin_rbf = nn.Linear(num_radial, hidden_channels)
        self.lin = nn.Linear(3 * hidden_channels, hidden_channels)
        self.act = act

    def reset_parameters(self) -> None:
        bound = math.sqrt(3.0)
        nn.init.uniform_(self.embedding.weight, -bound, bound)  # unit variance
        _reset_linear(self.lin_rbf)
        _reset_linear(self.lin)

    def forward(self, rows, rbf, j, i):
        h = self.embedding(rows)  # [N, H]
        rbf_h = self.act(self.lin_rbf(rbf))  # [E, H]
        return self.act(self.lin(torch.cat([h.index_select(0, i), h.index_select(0, j), rbf_h], dim=-1)))


class InteractionPPBlock(nn.Module):
    """DimeNet++ interaction: directional update of the messages m_ji [E, H] from m_kj (k -> j -> i).

    ``forward(m [E, H], rbf [E, R], sbf [T, L*R], idx_kj [T], idx_ji [T]) -> [E, H]``.
    """

    def __init__(
        self,
        hidden_channels: int,
        int_emb_size: int,
        basis_emb_size: int,
        num_spherical: int,
        num_radial: int,
        num_before_skip: int,
        num_after_skip: int,
        act: nn.Module,
    ):
        super().__init__()
        self.act = act
        self.lin_rbf1 = nn.Linear(num_radial, basis_emb_size, bias=False)
        self.lin_rbf2 = nn.Linear(basis_emb_size, hidden_channels, bias=False)
        self.lin_sbf1 = nn.Linear(num_spherical * num_radial, basis_emb_size, bias=False)
        self.lin_sbf2 = nn.Linear(basis_emb_size, int_emb_size, bias=False)
        self.lin_kj = nn.Linear(hidden_channels, hidden_channels)
        self.lin_ji = nn.Linear(hidden_channels, hidden_channels)
        self.lin_down = nn.Linear(hidden_channels, int_emb_size, bias=False)
        self.lin_up = nn.Linear(int_emb_size, hidden_channels, bias=False)
        self.before_skip = nn.ModuleList(ResidualLayer(hidden_channels, act) for _ in range(num_before_skip))
        self.lin = nn.Linear(hidden_channels, hidden_channels)
        self.after_skip = nn.ModuleList(ResidualLayer(hidden_channels, act) for _ in range(num_after_skip))

    def reset_parameters(self) -> None:
        for lin in (
            self.lin_rbf1,
            self.lin_rbf2,
            self.lin_sbf1,
            self.lin_sbf2,
            self.lin_kj,
            self.lin_ji,
            self.lin_down,
            self.lin_up,
            self.lin,
        ):
            _reset_linear(lin)
        for layer in (*self.before_skip, *self.after_skip):
            layer.reset_parameters()

    def forward(self, m, rbf, sbf, idx_kj, idx_ji):
        x_ji = self.act(self.lin_ji(m))  # [E, H]
        x_kj = self.act(self.lin_kj(m)) * self.lin_rbf2(self.lin_rbf1(rbf))  # [E, H]
        x_kj = self.act(self.lin_down(x_kj))  # [E, I]  down-projection
        x_kj = x_kj.index_select(0, idx_kj) * self.lin_sbf2(self.lin_sbf1(sbf))  # [T, I]
        x_kj = scatter_sum(x_kj, idx_ji, dim_size=m.shape[0])  # [E, I]  sum over k
        x_kj = self.act(self.lin_up(x_kj))  # [E, H]  up-projection
        h = x_ji + x_kj  # [E, H]
        for layer in self.before_skip:
            h = layer(h)
        h = self.act(self.lin(h)) + m  # [E, H]  skip connection
        for layer in self.after_skip:
            h = layer(h)
        return h


class OutputPPBlock(nn.Module):
    """Per-atom output of a block: ``sum_j W_rbf e_RBF(d_ij) * m_ji`` [N, H], up-projected to
    out_emb_channels, ``num_layers`` dense layers, then a bias-free map to out_channels."""

    def __init__(
        self,
        num_radial: int,
        hidden_channels: int,
        out_emb_channels: int,
        out_channels: int,
        num_layers: int,
        act: nn.Module,
    ):
        super().__init__()
        self.act = act
        self.lin_rbf = nn.Linear(num_radial, hidden_channels, bias=False)
        self.lin_up = nn.Linear(hidden_channels, out_emb_channels, bias=False)
        self.lins = nn.ModuleList(nn.Linear(out_emb_channels, out_emb_channels) for _ in range(num_layers))
        self.lin = nn.Linear(out_emb_channels, out_channels, bias=False)

    def reset_parameters(self) -> None:
        for lin in (self.lin_rbf, self.lin_up, *self.lins, self.lin):
            _reset_linear(lin)

    def forward(self, m, rbf, i, num_nodes: int):
        x = scatter_sum(self.lin_rbf(rbf) * m, i, dim_size=num_nodes)  # [N, H]
        x = self.lin_up(x)  # [N, O]
        for lin in self.lins:
            x = self.act(lin(x))  # [N, O]
        return self.lin(x)  # [N, out_channels]


# ============================================================================ the backbone
class DimeNetPlusPlus(Backbone):
    """DimeNet++ backbone (invariant: distances and angles only, so also reflection-invariant).

    Args:
        hidden_channels: width H of the edge messages m_ji (default: 128).
        num_layers: number of interaction blocks, DimeNet's ``num_blocks`` (default: 4).
        cutoff: Å; the envelope and the bases span [0, cutoff] (default: 5.0).
        out_emb_channels: width of the output blocks after the up-projection (default: 256).
        int_emb_size: width of the triplet interaction after the down-projection (default: 64).
        basis_emb_size: width of the bottleneck the radial and spherical bases pass through
            (default: 8).
        out_channels: width F of the returned ``node_features`` (default: None, meaning
            ``hidden_channels``); the paper uses 1 (energies) here, see the module docstring.
        num_spherical: number of angular orders l = 0..L-1 of the spherical basis (default: 7).
        num_radial: number of radial functions of both bases (default: 6).
        envelope_exponent: DimeNet's envelope exponent; the polynomial envelope has
            p = envelope_exponent + 1 (default: 5).
        num_before_skip: residual layers before the skip connection (default: 1).
        num_after_skip: residual layers after the skip connection (default: 2).
        num_output_layers: dense layers in each output block (default: 3).
        max_z: largest atomic number the embedding accepts when ``species`` is None (default: 100).
        species: atomic numbers (or symbols) the model is built for: the embedding gets one row
            per element; None: one row per Z in 0..max_z (default: None).

    The activation is SiLU (swish), as in the paper. ``forward(batch)`` reads ``z`` [N],
    ``pos`` [N,3] Å, ``cell``, ``edge_index`` [2,E], ``edge_shift`` [E,3] and returns
    ``{"node_features": [N, out_channels]}``, the sum of the output blocks' per-atom features.
    Cost grows with the number of triplets, ``sum_j deg(j)^2``: fine for molecules and small
    cells at 5 Å, heavy for dense crystals at large cutoffs.
    """

    name = "dimenetpp"
    geometry = "angles"  # Backbone.geometry: distances and angles of triplets k-j-i

    def __init__(
        self,
        hidden_channels: int = 128,
        num_layers: int = 4,
        cutoff: float = 5.0,
        out_emb_channels: int = 256,
        int_emb_size: int = 64,
        basis_emb_size: int = 8,
        out_channels: int | None = None,
        num_spherical: int = 7,
        num_radial: int = 6,
        envelope_exponent: int = 5,
        num_before_skip: int = 1,
        num_after_skip: int = 2,
        num_output_layers: int = 3,
        max_z: int = 100,
        species: Sequence[int] | None = None,
    ):
        species = normalise_species(species)
        super().__init__(
            hidden_channels=hidden_channels,
            num_layers=num_layers,
            cutoff=cutoff,
            out_emb_channels=out_emb_channels,
            int_emb_size=int_emb_size,
            basis_emb_size=basis_emb_size,
            out_channels=out_channels,
            num_spherical=num_spherical,
            num_radial=num_radial,
            envelope_exponent=envelope_exponent,
            num_before_skip=num_before_skip,
            num_after_skip=num_after_skip,
            num_output_layers=num_output_layers,
            max_z=max_z,
            species=species,
        )
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0 Å, got {cutoff}")
        positive = dict(
            hidden_channels=hidden_channels,
            num_layers=num_layers,
            out_emb_channels=out_emb_channels,
            int_emb_size=int_emb_size,
            basis_emb_size=basis_emb_size,
            num_spherical=num_spherical,
            num_radial=num_radial,
            envelope_exponent=envelope_exponent,
            max_z=max_z,
        )
        if out_channels is not None:
            positive["out_channels"] = out_channels
        for key, value in positive.items():
            if int(value) != value or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value}")
        for key, value in dict(
            num_before_skip=num_before_skip, num_after_skip=num_after_skip, num_output_layers=num_output_layers
        ).items():
            if int(value) != value or value < 0:
                raise ValueError(f"{key} must be a non-negative integer, got {value}")
        self.cutoff = float(cutoff)
        num_elements = self.init_elements(species, max_z)
        self._out_channels = int(out_channels if out_channels is not None else hidden_channels)
        self.envelope_p = int(envelope_exponent) + 1
        act = nn.SiLU()
        self.rbf = BesselRBF(cutoff, num_radial, trainable=True)
        self.sbf = SphericalBasis(num_spherical, num_radial, cutoff, envelope_exponent)
        self.embedding = EmbeddingBlock(num_elements, num_radial, hidden_channels, act)
        self.interactions = nn.ModuleList(
            InteractionPPBlock(
                hidden_channels,
                int_emb_size,
                basis_emb_size,
                num_spherical,
                num_radial,
                num_before_skip,
                num_after_skip,
                act,
            )
            for _ in range(num_layers)
        )
        self.outputs = nn.ModuleList(
            OutputPPBlock(num_radial, hidden_channels, out_emb_channels, self._out_channels, num_output_layers, act)
            for _ in range(num_layers + 1)
        )
        self.reset_parameters()

    @property
    def out_channels(self) -> int:
        return self._out_channels

    @property
    def feature_order(self) -> int:
        """``num_spherical - 1``: the angular basis holds Legendre polynomials P_l(cos angle) of
        l < num_spherical, and P_l(u . v) is an inner product of the order-l harmonics Y_l(u),
        Y_l(v); so DimeNet++ is also bounded by GWL_(l<=num_spherical-1) (Backbone.feature_order)."""
        return int(self.hparams["num_spherical"]) - 1

    def reset_parameters(self) -> None:
        with torch.no_grad():  # Bessel frequencies back to n pi / c
            n = torch.arange(1, self.rbf.freqs.numel() + 1, dtype=self.rbf.freqs.dtype, device=self.rbf.freqs.device)
            self.rbf.freqs.copy_(n * math.pi / self.cutoff)
        self.embedding.reset_parameters()
        for block in (*self.interactions, *self.outputs):
            block.reset_parameters()

    def forward(self, batch) -> dict[str, torch.Tensor]:
        rows = self.element_rows(batch[K.Z])  # [N] rows of the element table
        edge_index = batch[K.EDGE_INDEX]
        j, i = edge_index  # messages flow j -> i
        num_nodes = rows.shape[0]
        idx_kj, idx_ji = triplets(edge_index, batch[K.EDGE_SHIFT], num_nodes)  # [T], [T]

        vec = edge_vectors(batch)  # [E, 3]  r_ij, i -> j
        distance = vec.norm(dim=-1)  # [E]
        rbf = self.rbf(distance) * polynomial_envelope(distance, self.cutoff, self.envelope_p).unsqueeze(-1)  # [E, R]
        sbf = self.sbf(distance, triplet_cosines(vec, idx_kj, idx_ji), idx_kj)  # [T, L*R]

        m = self.embedding(rows, rbf, j, i)  # [E, H]
        out = self.outputs[0](m, rbf, i, num_nodes)  # [N, F]
        for interaction, output in zip(self.interactions, self.outputs[1:]):
            m = interaction(m, rbf, sbf, idx_kj, idx_ji)  # [E, H]
            out = out + output(m, rbf, i, num_nodes)  # [N, F]
        return {K.NODE_FEATURES: out}
