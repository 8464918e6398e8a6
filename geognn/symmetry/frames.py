r"""Frames for frame averaging: exact rotation/reflection symmetry for any backbone, by averaging over frames.

This module is geometry only (``FrameBuilder``: which frames a batch gets); the wrapper that runs
the backbone on them, ``FrameAveraging``, is in ``geognn.backbones.frame_averaging``.

Frame averaging (FA; Puny et al., ICLR 2022, https://arxiv.org/abs/2110.03336) makes any
function Φ of a point cloud invariant (or equivariant) by averaging it over a *frame* F(X), a
small set of orthogonal matrices computed from the input such that F(X Qᵀ) = Q F(X) for every
orthogonal Q (eq. 3 of the paper, "equivariance of the frame"). In geognn's row convention
(positions are rows, a rotation Q maps x -> x Qᵀ) the averaged quantities are, per structure,

.. math::
    E(X) = \frac{1}{|F(X)|} \sum_{R \in F(X)} E_\Phi(X R)                 \qquad (Puny eq. 4)

    v(X) = \frac{1}{|F(X)|} \sum_{R \in F(X)} v_\Phi(X R)\, R^\top          \qquad (Puny eq. 5)

Under X -> X Qᵀ the frame becomes Q F(X), so X Qᵀ (Q R) = X R: every term is unchanged and E
is invariant; output vectors v_Φ (node_vectors, direct forces) are predicted in the frame's
coordinates and rotated back with Rᵀ, so v -> v Qᵀ. This holds for *any* Φ: the wrapper, not
the backbone, provides the symmetry. Stochastic frame averaging (SFA; Duval et al., FAENet,
ICML 2023, https://arxiv.org/abs/2305.05577) replaces the mean by one frame drawn uniformly from
F(X) per structure and forward pass: an unbiased estimate of the mean (E_R[E_Φ(XR)] = E(X)).

Which quantity the frame is built from (periodic systems included)
-----------------------------------------------------------------
A crystal has no canonical "centred positions" (which periodic image? which cell?), so the
frame is the PCA of the *edge second moment* of the graph, per structure b::

    C_b = Σ_{e in b} w(|r_e|) r_e r_eᵀ / Σ_e w(|r_e|),   w(d) = ½ (cos(π d / r_c) + 1) for d < r_c

with r_e = pos[j] + shift @ cell - pos[i] the edge vectors (``edge_vectors``) and r_c the
backbone's cutoff. The set of edge vectors within r_c is a property of the crystal alone:
unchanged by translations, by moving atoms by lattice vectors (image choice), by another
basis of the same lattice, and copied n times in an n-fold supercell (so C_b, hence the frame,
is the same and the energy of the supercell is n times the energy). It rotates as C -> Q C Qᵀ,
which makes the frame equivariant. w goes to 0 with zero slope at r_c, so C_b is continuous
and differentiable when atoms cross the cutoff. For a molecule smaller than r_c with w ≈ 1,
Σ_{i,j} r_ij r_ijᵀ = 2N Σ_i (x_i - x̄)(x_i - x̄)ᵀ: the classic centred-position covariance.

3D frames (``dim=3``): with eigenvectors v_1, v_2, v_3 of C_b (eigenvalues λ_1 ≥ λ_2 ≥ λ_3) and
signs s ∈ {±1}³, F = {[s_1 v_1, s_2 v_2, s_3 v_3]}: 8 matrices for O(3), the 4 with det +1 for
SO(3). The *set* does not depend on the arbitrary signs eigh returns, so no sign convention is
needed for ``frames="all"``.

2D frames (``dim=2``, slabs with pbc = (T, T, F) in any order): the surface normal n (unit
vector ⟂ to the two periodic lattice vectors, pointing to the side of the non-periodic cell
vector) is kept fixed as the frame's third axis, and the PCA is done in the plane: with
v_1, v_2 the eigenvectors of Pᵀ C P restricted to the plane, F = {[s_1 v_1, s_2 v_2, n]}: 4
frames (O(2) about the normal, ``group="O3"``) or the 2 with det +1 (``group="SO3"``). Only
rotations and reflections that keep n are symmetries, as in the FAENet paper; pos @ R keeps the
component along n (the height above the surface).

``frames="det"`` (one frame, FAENet's "deterministic" variant): each sign s_k is fixed by the
sign of the species-weighted third moment m_k = Σ_e w_e (z_j - z_i) (r_e·v_k)³ (odd moments of
the edge set alone vanish: it holds r and -r). Where |m_k| is below 1e-4 (``SIGN_TOL``) times
its scale Σ_e w_e |z_j - z_i| |r_e|³ (one-element structures, symmetric ones) the sign is
ambiguous and that structure falls back to all its sign frames (counted in
``stats["sign_ambiguous"]``), so "det" is never wrong.

Degenerate spectra
------------------
If two eigenvalues are (nearly) equal, e.g. methane, benzene, cubic cells, their eigenvectors
are not defined by C_b and the FA average jumps under tiny perturbations. A spectrum counts as
degenerate when a relative gap (λ_k - λ_{k+1}) / λ_1 (in the plane for 2D) is below
``degenerate_tol`` (default 1e-2: float32 eigenvectors then carry errors ≲ 1e-7 / 1e-2 = 1e-5,
within the float32 symmetry tolerance). Such structures use a finite frame set built from the
geometry itself, equivariant by construction, hence still *exact*:

- anchor edges A: among the species of the structure, take for each species the shortest shell
  of edges centred on its atoms (lengths within 1e-4 relative of the shortest); A is the smallest
  of these shells (ties: smaller atomic number). Methane: the 4 H->C bonds; cubic ABO3: the
  6 B-O bonds.
- 3D, one degenerate pair (symmetric tops, tetragonal/hexagonal cells): the third eigenvector u
  is well defined up to sign; for each anchor edge a with a component ⟂ u, e_1 = that component
  normalised, e_2 = (±u) × e_1, e_3 = ±u (O(3) adds -e_2): 2·|A|·(1 or 2) frames.
- 3D, isotropic spectrum (methane, cubic cells): for each ordered pair (a, b) of non-collinear
  vectors in A (or, if A is collinear, b in the first longer shell with a non-collinear vector),
  Gram-Schmidt gives e_1 = â, e_2 ∝ b - (b·â)â, e_3 = e_1 × e_2; O(3) adds [e_1, e_2, -e_3]. If
  every edge is collinear (linear molecules), e_2 is any unit vector ⟂ e_1: the input is invariant
  under rotations about e_1, so the choice cannot matter.
- 2D (slab normal n kept): for each a in A with an in-plane component, e_1 = normalised in-plane
  part of a, e_2 = n × e_1 (and -e_2 for O(3)).

Equivalent anchor edges (the copies of one bond in a supercell, equal to 1e-4 in direction) are
merged into their mean before frames are built, and equal frames (to 1e-4) into theirs, so a
supercell gets the cell's frames and the frame gradient reaches every copy alike: forces and
stress of a supercell, of another cell of the same crystal and of a permuted structure equal the
cell's to float64 round-off (≤ 1e-10 relative; keeping the first copy gave 1e-3 - 1e-2 for FAENet,
issue 16). Methane costs 24 backbone passes with O(3), a cubic perovskite 16-48. Note that a
second moment is *always* degenerate for crystals with a 3-, 4- or 6-fold axis (any symmetric
3 x 3 tensor they leave invariant is uniaxial), so most ideal crystals and the OC20 slabs (in
3D) take this path; rattled or relaxed-with-adsorbate structures often do not. Occurrences are counted in
``stats["degenerate"]`` with a one-time ``DegenerateFrameWarning``. A structure without edges gets
the identity (nothing to rotate). Where a gap crosses ``degenerate_tol`` the frame set switches
and E jumps (by the backbone's frame-to-frame spread; zero for an equivariant backbone): a price
of canonical frames, whose PCA average is discontinuous at degeneracies anyway. Forces are exact
gradients on either side.

Gradients
---------
Frames are *not* detached: autograd differentiates through eigh (well conditioned, since every
eigen-gap used is ≥ ``degenerate_tol`` λ_1; the backward skips the coupling of tied eigenvalues,
which torch turns into 0/0 = NaN for a whole structure, e.g. a cubic cell with C exactly ∝ I
batched next to a non-degenerate one: ``_EighWithDegenerateSafeBackward``) and through
Gram-Schmidt, so forces and stress from autograd are the exact gradients of the averaged energy
(finite-difference checks pass to 1e-6 in float64). Forces from autograd through the averaged
energy are the default (``geognn.Model`` always does this); backbones that predict vectors
(node_vectors, e.g. FAENet's direct force head) get them rotated back and averaged by eq. 5.

Batches mix structures with different numbers of frames: the backbone runs K times on the whole
batch (K = 8 / 4 / 2 / 1, the count of a non-degenerate structure); the further frames of
degenerate structures run once more as one batch of rotated copies of those structures only
(structures with fewer than K frames pad with weight 0).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import conventions as K
from ..graph.build import graph_index, num_graphs
from ..nn.scatter import scatter_sum

FRAME_MODES = ("all", "stochastic", "det")
GROUPS = ("O3", "SO3")
DIMS = (2, 3)
#: relative tolerance for two edges to belong to the same length shell (degenerate fallback)
SHELL_TOL = 1e-4  # well above float32 round-off of lengths (~1e-7 relative)
#: |m_k| / scale below which a "det" sign counts as ambiguous (float32 round-off is ~1e-6 of scale)
SIGN_TOL = 1e-4
#: |sin(angle)| below which two edge vectors count as collinear
COLLINEAR_TOL = 1e-4


class DegenerateFrameWarning(UserWarning):
    """A structure's edge covariance had (nearly) equal eigenvalues; a larger frame set was used."""


@dataclass
class FrameSet:
    """Frames of a batch: ``rotations`` [K, B, 3, 3] (columns are the frame axes, x' = x @ R) run as
    K passes over the whole batch, ``weights`` [K, B]; ``extra`` {structure b: [M_b, 3, 3]} more frames
    of structures that have more than K (degenerate ones), each of weight ``extra_weight[b]``; the
    weights of a structure sum to 1. ``degenerate`` [B] bool, ``sign_ambiguous`` [B] bool."""

    rotations: torch.Tensor
    weights: torch.Tensor
    degenerate: torch.Tensor
    sign_ambiguous: torch.Tensor
    extra: dict = field(default_factory=dict)
    extra_weight: dict = field(default_factory=dict)


def _sign_combinations(group: str, n_axes: int, dtype, device) -> torch.Tensor:
    """[S, n_axes] sign vectors: all 2^n for O(3), those with product +1 for SO(3)."""
    signs = torch.tensor(list(itertools.product((1.0, -1.0), repeat=n_axes)), dtype=dtype, device=device)
    if group == "SO3":
        signs = signs[signs.prod(-1) > 0]
    return signs


def _slab_normals(cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """[B, 3] unit surface normals of slabs (exactly two periodic directions); ValueError otherwise."""
    n_periodic = pbc.sum(-1)
    if not bool((n_periodic == 2).all()):
        bad = [tuple(bool(x) for x in row) for row in pbc[n_periodic != 2].tolist()][:3]
        raise ValueError(
            f"dim=2 frames need slabs with exactly two periodic directions "
            f"(pbc like (True, True, False)); got pbc {bad}. Use dim=3 for molecules "
            "and bulk crystals."
        )
    order = torch.argsort((~pbc).to(torch.int8), dim=-1, stable=True)  # periodic first, then the free one
    rows = torch.arange(cell.shape[0], device=cell.device)
    a, b, c = cell[rows, order[:, 0]], cell[rows, order[:, 1]], cell[rows, order[:, 2]]
    normal = torch.linalg.cross(a, b)
    side = torch.sign((normal * c).sum(-1))
    side = torch.where(side == 0, torch.ones_like(side), side)  # no c component: keep a x b
    normal = normal * side.unsqueeze(-1)
    return normal / normal.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(cell.dtype).tiny)


def _orthonormal_to(n: torch.Tensor) -> torch.Tensor:
    """Unit vectors ⟂ n ([3] or [B, 3]; deterministic, used only where the choice provably does not matter)."""
    axis = torch.nn.functional.one_hot(n.abs().argmin(-1), 3).to(n.dtype)
    u = torch.linalg.cross(n, axis)
    return u / u.norm(dim=-1, keepdim=True)


class _EighWithDegenerateSafeBackward(torch.autograd.Function):
    """``torch.linalg.eigh`` of symmetric [B, n, n] matrices whose backward ignores the coupling of
    (nearly) equal eigenvalues.

    The gradient is ``gA = V (diag(gL) + F ∘ skew(Vᵀ gV)) Vᵀ`` with ``F_ij = 1 / (λ_j - λ_i)`` (i ≠
    j), ``skew(M) = (M - Mᵀ) / 2``, as torch computes it. torch evaluates every F_ij, and an
    exact tie gives 0 / 0 = NaN for the whole matrix even where the loss does not use the tied
    eigenvectors (or receives no gradient at all): a cubic cell aligned with the axes has C
    exactly ∝ I in float32 and float64, and a batch holding it next to a structure whose
    eigenvectors are used got NaN forces and stress on its atoms. Here F_ij = 0 where |λ_j - λ_i|
    < ``gap_tol`` · max|λ|. That is exact for how frames use eigenvectors: a structure with such a
    gap is degenerate (FrameBuilder gives it frames from its edges, using at most the one
    eigenvector separated by ≥ ``gap_tol`` λ_1 from the others), so ``Vᵀ gV`` is 0 at the masked
    entries; non-degenerate structures have every gap ≥ ``gap_tol`` λ_1 and keep torch's formula.
    The backward is written in differentiable ops (second derivatives, force training)."""

    @staticmethod
    def forward(ctx, matrices, gap_tol):
        values, vectors = torch.linalg.eigh(matrices)
        ctx.gap_tol = gap_tol
        ctx.save_for_backward(values, vectors)
        return values, vectors

    @staticmethod
    def backward(ctx, grad_values, grad_vectors):
        values, vectors = ctx.saved_tensors
        vt = vectors.transpose(-1, -2)
        inner = torch.zeros_like(vectors) if grad_vectors is None else vt @ grad_vectors  # [B, n, n]
        inner = 0.5 * (inner - inner.transpose(-1, -2))  # as torch: the symmetric-matrix gradient
        gap = values.unsqueeze(-2) - values.unsqueeze(-1)  # [B, i, j] = λ_j - λ_i
        scale = values.detach().abs().amax(-1, keepdim=True).unsqueeze(-1)
        coupled = gap.detach().abs() >= ctx.gap_tol * scale  # False on the diagonal and at ties
        factor = torch.where(coupled, 1.0 / torch.where(coupled, gap, torch.ones_like(gap)), torch.zeros_like(gap))
        middle = factor * inner
        if grad_values is not None:
            middle = middle + torch.diag_embed(grad_values)
        return vectors @ middle @ vt, None


def _equal_groups(rows: torch.Tensor, tol: float) -> torch.Tensor:
    """[K, D] -> [G, K] averaging matrix of the groups of equal rows (max |difference| <= tol),
    groups in order of first occurrence (greedy: a row joins the group of the first row equal to it)."""
    k = rows.shape[0]
    same = torch.cdist(rows.detach().unsqueeze(0), rows.detach().unsqueeze(0), p=float("inf"))[0] <= tol
    same = same.cpu().numpy()  # [K, K]
    group = np.full(k, -1)
    n_groups = 0
    for first in range(k):
        if group[first] < 0:
            group[same[first] & (group < 0)] = n_groups
            n_groups += 1
    members = torch.nn.functional.one_hot(torch.as_tensor(group, device=rows.device), n_groups).T.to(rows.dtype)
    return members / members.sum(-1, keepdim=True)


def _unique_frames(frames: torch.Tensor, tol: float = 1e-4) -> torch.Tensor:
    """[K, 3, 3] -> [G, 3, 3], one frame per group of equal frames (max |difference| <= tol): the
    group's *mean*, in the order of first occurrence.

    Equal frames arise from equivalent edges. Their values are the same, but each is
    differentiable in the positions of its own atoms; keeping only the first would send the whole
    frame gradient to those atoms. The mean spreads it evenly (see ``_merge_equal_vectors``).
    """
    members = _equal_groups(frames.reshape(frames.shape[0], 9), tol)
    return torch.einsum("gk,kij->gij", members, frames)


def _merge_equal_vectors(vectors: torch.Tensor, tol: float = 1e-4) -> torch.Tensor:
    """[M, 3] edge vectors -> [G, 3], the mean of each group of equal directions (unit vectors equal
    to ``tol``; callers pass vectors of one length shell).

    The anchor edges of an n-fold supercell are n copies of the cell's: the same vectors, each a
    function of the positions of its own copy's atoms. Frames built from the merged vectors are the
    cell's, whatever n (no n² pairs), and the frame gradient reaches every copy equally, so forces
    on a supercell are the cell's to round-off (they differed by 1e-3 - 1e-2 relative for FAENet
    when the first copy's edge was kept, issue 16), and permutations or another cell choice cannot
    change which atoms receive it.
    """
    if vectors.shape[0] <= 1:
        return vectors
    unit = vectors / vectors.norm(dim=-1, keepdim=True)
    return _equal_groups(unit, tol) @ vectors


class FrameBuilder:
    """Computes the frames of a batch (see the module docstring for the definitions)."""

    def __init__(self, dim: int, group: str, cutoff: float, degenerate_tol: float):
        self.dim, self.group, self.cutoff, self.tol = dim, group, float(cutoff), float(degenerate_tol)

    # ------------------------------------------------------------------ second moment and PCA
    def edge_weights(self, distance: torch.Tensor) -> torch.Tensor:
        """[E] smooth weights w(d) = ½(cos(π d / r_c) + 1), 0 beyond r_c."""
        w = 0.5 * (torch.cos(torch.pi * distance / self.cutoff) + 1.0)
        return torch.where(distance < self.cutoff, w, torch.zeros_like(w))

    def principal_axes(self, vec, weight, edge_graph, n_graphs, normals=None):
        """Eigenvectors [B, 3, d] (columns, eigenvalues descending), small-gap mask [B, d-1], degenerate [B].

        3D: eigenvectors of C_b. 2D: the two in-plane eigenvectors of C_b restricted to the plane ⟂ n.
        """
        outer = weight[:, None, None] * vec[:, :, None] * vec[:, None, :]  # [E, 3, 3]
        total = scatter_sum(weight, edge_graph, n_graphs)  # [B]
        cov = scatter_sum(outer.reshape(-1, 9), edge_graph, n_graphs).reshape(n_graphs, 3, 3)
        cov = cov / total.clamp_min(torch.finfo(vec.dtype).tiny)[:, None, None]
        if normals is not None:  # in-plane basis U = [u1, u2] (any), then a 2 x 2 problem
            u1 = _orthonormal_to(normals.detach())
            u1 = u1 - (u1 * normals).sum(-1, keepdim=True) * normals  # exact ⟂ n, keeps autograd to n
            u1 = u1 / u1.norm(dim=-1, keepdim=True)
            basis = torch.stack([u1, torch.linalg.cross(normals, u1)], dim=-1)  # [B, 3, 2]
            cov = basis.transpose(1, 2) @ cov @ basis  # [B, 2, 2]
        values, vectors = _EighWithDegenerateSafeBackward.apply(cov, self.tol)  # ascending; no NaN at ties
        values, vectors = values.flip(-1), vectors.flip(-1)  # descending
        if normals is not None:
            vectors = basis @ vectors  # [B, 3, 2] in-plane eigenvectors in Cartesian coordinates
        top = values[:, :1].clamp_min(torch.finfo(vec.dtype).tiny)
        small_gap = ((values[:, :-1] - values[:, 1:]) / top < self.tol).detach()  # [B, d - 1]
        degenerate = small_gap.any(-1) | (total <= 0)
        return vectors, small_gap, degenerate

    # ------------------------------------------------------------------ frames
    def sign_frames(self, axes: torch.Tensor, normals=None) -> torch.Tensor:
        """[S, B, 3, 3] the sign-flipped frames of principal axes [B, 3, d]."""
        d = axes.shape[-1]
        if d == 3 and self.group == "SO3":  # make the axes proper, then keep sign products +1
            axes = torch.cat([axes[..., :2], axes[..., 2:] * torch.linalg.det(axes).detach()[:, None, None]], -1)
        if d == 2:
            full = torch.cat([axes, normals.unsqueeze(-1)], -1)
            if self.group == "SO3":
                full = torch.cat(
                    [full[..., :1], full[..., 1:2] * torch.linalg.det(full).detach()[:, None, None], full[..., 2:]], -1
                )
            axes = full
        signs = _sign_combinations(self.group, d, axes.dtype, axes.device)  # [S, d]
        if d == 2:
            signs = torch.cat([signs, torch.ones_like(signs[:, :1])], -1)  # the normal keeps its sign
        return axes.unsqueeze(0) * signs[:, None, None, :]

    def third_moment_signs(self, axes, vec, weight, dz, edge_graph, n_graphs):
        """Signs [B, d] fixing each axis by m_k = Σ w (z_j - z_i)(r·v_k)³, and an ambiguity mask [B]."""
        proj = torch.einsum("ed,edk->ek", vec.detach(), axes.detach()[edge_graph])  # [E, d]
        w = (weight * dz).detach()[:, None]
        moment = scatter_sum(w * proj**3, edge_graph, n_graphs)  # [B, d]
        scale = scatter_sum(w.abs() * vec.detach().norm(dim=-1, keepdim=True) ** 3, edge_graph, n_graphs)
        n_fixed = axes.shape[-1] - (1 if self.group == "SO3" else 0)  # SO(3): last sign from det
        ambiguous = (moment[:, :n_fixed].abs() <= SIGN_TOL * scale).any(-1)
        signs = torch.where(moment >= 0, 1.0, -1.0).to(vec.dtype)
        return signs, ambiguous

    def fallback_frames(self, vec, distance, z_center, axis=None, axis_signs=(1.0,)) -> torch.Tensor:
        """[K_b, 3, 3] frames of one degenerate structure, built from its shortest anchor edges.

        ``axis`` None: fully degenerate 3D spectrum (pairs of anchor edges). Otherwise the frame's
        third axis is ``axis`` times each of ``axis_signs`` (the slab normal, kept fixed: (1,); the
        distinct eigenvector of a 3D spectrum with one degenerate pair: (1, -1)) and only the
        degenerate plane ⟂ axis is resolved by anchor edges.
        """
        dtype, device = vec.dtype, vec.device
        keep = distance < self.cutoff
        vec, distance, z_center = vec[keep], distance[keep], z_center[keep]
        if axis is not None:  # only components in the plane ⟂ axis matter
            in_plane = vec - (vec @ axis)[:, None] * axis
            has = in_plane.norm(dim=-1) > COLLINEAR_TOL * distance
            vec, distance, z_center = in_plane[has], in_plane[has].norm(dim=-1), z_center[has]
        if vec.shape[0] == 0:  # nothing resolves the rest of the frame: any completion gives the same input
            if axis is None:
                return torch.eye(3, dtype=dtype, device=device).unsqueeze(0)
            u = _orthonormal_to(axis.detach()).to(dtype)
            return torch.stack([torch.stack([u, torch.linalg.cross(s * axis, u), s * axis], -1) for s in axis_signs])
        d_det = distance.detach()
        anchor = None
        for z in torch.unique(z_center).tolist():  # the smallest shortest-shell among species
            mine = z_center == z
            shell = mine & (d_det <= d_det[mine].min() * (1 + SHELL_TOL))
            if anchor is None or int(shell.sum()) < int(anchor.sum()):
                anchor = shell
        a_vecs = _merge_equal_vectors(vec[anchor])  # copies of one edge (supercells) count once
        a_hat = a_vecs / a_vecs.norm(dim=-1, keepdim=True)
        frames = []
        if axis is not None:
            for s in axis_signs:
                third = s * axis
                for e1 in a_hat:
                    e2 = torch.linalg.cross(third, e1)
                    frames.append(torch.stack([e1, e2, third], -1))
                    if self.group == "O3":
                        frames.append(torch.stack([e1, -e2, third], -1))
            return _unique_frames(torch.stack(frames))

        # 3D: second vectors from the anchor shell, else from the first shell with a non-collinear one
        def pair_frames(b_vecs):
            cross = torch.linalg.cross(
                a_hat[:, None, :].expand(-1, len(b_vecs), -1), b_vecs[None, :, :].expand(len(a_hat), -1, -1)
            )  # [A, B, 3]
            ok = (cross.detach().norm(dim=-1) > COLLINEAR_TOL * b_vecs.detach().norm(dim=-1)[None, :]).nonzero()
            if not len(ok):
                return None
            e1, b = a_hat[ok[:, 0]], b_vecs[ok[:, 1]]
            e2 = b - (b * e1).sum(-1, keepdim=True) * e1
            e2 = e2 / e2.norm(dim=-1, keepdim=True)
            e3 = torch.linalg.cross(e1, e2)
            out = [torch.stack([e1, e2, e3], -1)]
            if self.group == "O3":
                out.append(torch.stack([e1, e2, -e3], -1))
            return _unique_frames(torch.cat(out))

        found = pair_frames(a_vecs)
        if found is None:
            for length in torch.unique(d_det).tolist():
                found = pair_frames(_merge_equal_vectors(vec[(d_det - length).abs() <= length * SHELL_TOL]))
                if found is not None:
                    break
        if found is not None:
            return found
        # every edge collinear (linear molecule): rotations about the axis leave the input unchanged
        for e1 in a_hat:
            e2 = _orthonormal_to(e1.detach()).to(dtype)
            e3 = torch.linalg.cross(e1, e2)
            frames.append(torch.stack([e1, e2, e3], -1))
            if self.group == "O3":
                frames.append(torch.stack([e1, e2, -e3], -1))
        return _unique_frames(torch.stack(frames))

    def __call__(self, batch, vec: torch.Tensor, mode: str, n_samples: int = 1) -> FrameSet:
        """Frames of every structure of ``batch`` given its edge vectors ``vec`` [E, 3] Å.

        ``mode``: "all" (the full frame), "det" (one frame where signs are unambiguous) or
        "sample" (``n_samples`` frames drawn uniformly, with replacement, from the full frame).
        """
        n_graphs = num_graphs(batch)
        j, i = batch[K.EDGE_INDEX]
        edge_graph = graph_index(batch)[i]
        distance = vec.norm(dim=-1)
        weight = self.edge_weights(distance)
        normals = _slab_normals(batch[K.CELL], batch[K.PBC].bool()) if self.dim == 2 else None
        axes, small_gap, degenerate = self.principal_axes(vec, weight, edge_graph, n_graphs, normals)
        frames = self.sign_frames(axes, normals)  # [S, B, 3, 3]
        z = batch[K.Z]
        ambiguous = torch.zeros_like(degenerate)
        if mode == "det":
            signs, ambiguous = self.third_moment_signs(
                axes, vec, weight, (z[j] - z[i]).to(vec.dtype), edge_graph, n_graphs
            )
            chosen = self.sign_frames(axes * signs[:, None, :], normals)[0:1]  # the all-plus combination
            ambiguous = ambiguous & ~degenerate
        per_graph: list[torch.Tensor | None] = [None] * n_graphs
        special = (degenerate | ambiguous).nonzero().flatten().tolist()
        for b in special:
            if bool(degenerate[b]):
                mask = edge_graph == b
                axis, axis_signs = None, (1.0, -1.0)
                if normals is not None:  # slab: the normal stays fixed
                    axis, axis_signs = normals[b], (1.0,)
                elif not bool(small_gap[b].all()):  # one degenerate pair: the third eigenvector is defined
                    axis = axes[b, :, 2] if bool(small_gap[b, 0]) else axes[b, :, 0]
                per_graph[b] = self.fallback_frames(vec[mask], distance[mask], z[i[mask]], axis, axis_signs)
            else:
                per_graph[b] = frames[:, b]
        common = frames if mode != "det" else chosen
        if mode == "sample":
            counts = torch.tensor([common.shape[0] if f is None else f.shape[0] for f in per_graph])
            picks = (torch.rand(n_samples, n_graphs) * counts).long().clamp_max(counts - 1)  # [n, B]
            rows = torch.arange(n_graphs, device=vec.device)
            out = common[picks.clamp_max(common.shape[0] - 1).to(vec.device), rows]  # [n, B, 3, 3]
            if special:
                out = out.clone()
                for b in special:
                    out[:, b] = per_graph[b][picks[:, b].to(vec.device)]
            weights = torch.full((n_samples, n_graphs), 1.0 / n_samples, dtype=vec.dtype, device=vec.device)
            return FrameSet(out, weights, degenerate, ambiguous)
        if not special:
            weights = torch.full(common.shape[:2], 1.0 / common.shape[0], dtype=vec.dtype, device=vec.device)
            return FrameSet(common, weights, degenerate, ambiguous)
        # K passes over the whole batch (K = the common count); a structure with more frames runs the
        # rest as extra copies (FrameAveraging batches them), one with fewer pads with weight 0
        n_frames = common.shape[0]
        rotations, weights, extra, extra_weight = [], [], {}, {}
        for b in range(n_graphs):
            f = common[:, b] if per_graph[b] is None else per_graph[b]
            w = torch.zeros(n_frames, dtype=vec.dtype, device=vec.device)
            w[: f.shape[0]] = 1.0 / f.shape[0]
            if f.shape[0] > n_frames:
                extra[b], extra_weight[b] = f[n_frames:], 1.0 / f.shape[0]
                f = f[:n_frames]
            pad = n_frames - f.shape[0]
            rotations.append(torch.cat([f, f[:1].expand(pad, 3, 3)]) if pad else f)
            weights.append(w)
        return FrameSet(torch.stack(rotations, 1), torch.stack(weights, 1), degenerate, ambiguous, extra, extra_weight)
