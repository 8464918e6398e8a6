r"""FAENet (Duval et al., "FAENet: Frame Averaging Equivariant GNN for Materials Modeling",
ICML 2023, https://arxiv.org/abs/2305.05577): a simple, fast message-passing network that reads
raw edge vectors and has *no* symmetry constraint of its own; rotation symmetry comes from
(stochastic) frame averaging around it (``geognn.FrameAveraging``):

    build_model("faenet", frame_averaging="stochastic")     # the paper's model

Architecture (paper §4.2; names in brackets are this file's modules)

Embedding block [``FAENetEmbedding``]::

    h_i^0 = σ(W_h [ emb_z(z_i) ‖ emb_period(p(z_i)) ‖ emb_group(g(z_i)) ‖ emb_tag(t_i) ])      (atoms)
    e_ij  = σ(W_e s [ rbf(d_ij) ‖ r_ij / r_c ])                                                (edges)

with p, g the period and group of the element (computed from z), t_i the OC20 tag (0 bulk,
1 surface, 2 adsorbate; 0 when the graph has none), rbf a Gaussian basis of the distance
d_ij = |r_ij|, r_ij ∈ R³ the edge vector (in the frame's coordinates under FA), σ = SiLU and
s = sqrt((G + 3 + F) / 2 / (sqrt(π) + 3/5)) a constant (6.2 at the defaults; see "Scale").

Interaction block l = 1..L [``FAENetInteraction``], "edge-feature filters" (down-scale,
filter, aggregate, up-scale)::

    x_i   = W_d h_i                                         (down-scale to F filters)
    f_ij  = σ(W_f e_ij + W_c x_i + W_n x_j) · f_c(d_ij)     (filter from the edge and both atoms)
    m_i   = Σ_{j ∈ N(i)} x_j ⊙ f_ij / (1 + Σ_{j ∈ N(i)} f_c(d_ij))
    h_i  <- h_i + σ(W_u m_i)                                (up-scale, residual)

f_c(d) = ½ (cos(π d / r_c) + 1) makes energies smooth when atoms cross the cutoff (the
reference package has none; geognn's conformance suite requires it).

Scale (why the two constants above). With a plain sum m_i = Σ_j x_j ⊙ f_ij, a message grows
with the number of neighbours (8 per atom in small QM9 molecules, ~50 in crystals at 6 Å) and
*quadratically* with h (f_ij is linear in x_i, x_j once the SiLU is in its linear part), so the
growth compounds over the layers: untrained, default size, 6 Å, the largest energy was 1.6e4
eV/atom on 8 QM9 molecules, 4e11 eV/atom on JARVIS crystals and 7e7 on OC20 slabs, with forces up
to 2e11 eV/Å (issue 16). The reference package re-standardises each layer with GraphNorm, a
statistic over the whole structure (non-local, and not smooth in the neighbour set). Here the sum
is divided by the smooth neighbour count 1 + Σ_j f_c(d_ij) instead: local, continuous at the cutoff
(f_c and its slope vanish there), the same for a supercell, and it makes the message an average,
O(1) whether the neighbourhood is dense or sparse. That alone left the geometry a minor input:
the edge pathway W_f e_ij had std 0.15 against 0.58 for each atom pathway, and forces came out at
~0.03 eV/Å. The inputs of W_e (Xavier: pre-activation variance |a|^2 2 / (fan_in + fan_out)) have
|rbf|^2 ≈ sqrt(π) (Gaussians spaced by their width) and |r / r_c|^2 ≈ 3/5 on average; s brings
|s a|^2 to (fan_in + fan_out) / 2, unit pre-activation variance as for the atom embedding, so both
pathways weigh alike. Untrained, default size, 6 Å (two seeds): max |E| per atom 0.09-0.55 eV,
mean |F| 0.10-0.35 eV/Å on QM9, JARVIS, MP-20, mlearn Si and OC20 slabs (schnet and painn:
0.1-2.4 eV/atom, 0.25-2.5 eV/Å); tests/test_faenet.py asserts these scales.

Output block: ``node_features`` = σ(W_o h^L) [N, hidden_channels]; the energy head (per-atom MLP
and sum) is geognn.Model's, as for every backbone. With ``force_head=True`` a direct force
head σ-MLP(h^L) -> [N, 1, 3] is returned as ``node_vectors`` (eV/Å, in the frame's axes;
FrameAveraging rotates it back). Forces by autograd of the energy are geognn's default.

Differences from the reference implementation (PyPI ``faenet``): no physics-property
embedding table (mendeleev) and no graph normalisation (the smooth neighbour-count average and
the constant s above keep the scale instead); the cutoff envelope above; the energy head is
geognn's per-atom MLP. These keep the model self-contained, local and smooth.
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
from .base import Backbone, require_positive_integers

#: atomic numbers that end each period (He, Ne, Ar, Kr, Xe, Rn, Og)
_PERIOD_ENDS = (2, 10, 18, 36, 54, 86, 118)


def period_and_group(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Period (1..7) and group (1..18; lanthanides/actinides get 3) of atomic numbers z [N] (long)."""
    ends = torch.tensor(_PERIOD_ENDS, device=z.device)
    period = torch.bucketize(z, ends, right=False) + 1  # z <= 2 -> 1, ...
    starts = torch.cat([ends.new_zeros(1), ends])[period - 1]  # last z of the previous period
    pos = z - starts  # 1-based position within the period
    group = torch.where(period == 1, torch.where(pos == 1, 1, 18), pos)
    short = (period == 2) | (period == 3)  # 8 elements: groups 1, 2, 13..18
    group = torch.where(short & (pos > 2), pos + 10, group)
    long_f = period >= 6  # 32 elements: 1, 2, f-block (group 3), then 4..18
    group = torch.where(long_f & (pos >= 3) & (pos <= 17), 3, group)
    group = torch.where(long_f & (pos >= 18), pos - 14, group)
    return period, group


class FAENetEmbedding(nn.Module):
    """Atom embedding h^0 [N, H] from z, period, group and tag; edge embedding e [E, F] from rbf and r_ij.

    ``num_elements`` rows in the element embedding; ``forward(z [N], rows [N], tags [N], rbf, vec)``
    reads each atom's row of it (``Backbone.element_rows``) and its period and group from ``z``."""

    def __init__(
        self,
        hidden_channels: int,
        num_filters: int,
        num_gaussians: int,
        num_elements: int,
        pg_hidden_channels: int,
        tag_hidden_channels: int,
        cutoff: float,
    ):
        super().__init__()
        self.cutoff = float(cutoff)
        # s: unit pre-activation variance for W_e (module docstring, "Scale")
        self.edge_scale = math.sqrt((num_gaussians + 3 + num_filters) / 2 / (math.sqrt(math.pi) + 0.6))
        z_channels = hidden_channels - 2 * pg_hidden_channels - tag_hidden_channels
        if z_channels < 1:
            raise ValueError(
                f"hidden_channels={hidden_channels} must exceed 2 * pg_hidden_channels + "
                f"tag_hidden_channels = {2 * pg_hidden_channels + tag_hidden_channels}"
            )
        self.emb_z = nn.Embedding(num_elements, z_channels)  # one row per element
        self.emb_period = nn.Embedding(8, pg_hidden_channels) if pg_hidden_channels else None
        self.emb_group = nn.Embedding(19, pg_hidden_channels) if pg_hidden_channels else None
        self.emb_tag = nn.Embedding(3, tag_hidden_channels) if tag_hidden_channels else None
        self.atom_mix = nn.Linear(hidden_channels, hidden_channels)
        self.edge_mix = nn.Linear(num_gaussians + 3, num_filters)
        self.act = nn.SiLU()

    def reset_parameters(self) -> None:
        for emb in (self.emb_z, self.emb_period, self.emb_group, self.emb_tag):
            if emb is not None:
                nn.init.normal_(emb.weight)
        for lin in (self.atom_mix, self.edge_mix):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, z, rows, tags, rbf, vec):
        parts = [self.emb_z(rows)]
        if self.emb_period is not None:
            period, group = period_and_group(z)
            parts += [self.emb_period(period), self.emb_group(group)]
        if self.emb_tag is not None:
            parts.append(self.emb_tag(tags))
        h = self.act(self.atom_mix(torch.cat(parts, -1)))  # [N, H]
        e = self.act(self.edge_mix(self.edge_scale * torch.cat([rbf, vec / self.cutoff], -1)))  # [E, F]
        return h, e


class FAENetInteraction(nn.Module):
    """One interaction block: ``forward(h [N, H], e [E, F], edge_index, envelope [E], count [N]) -> h + dh``
    with ``count`` = 1 + Σ_j f_c(d_ij), the smooth neighbour count of each centre."""

    def __init__(self, hidden_channels: int, num_filters: int):
        super().__init__()
        self.down = nn.Linear(hidden_channels, num_filters)  # W_d
        self.filter_edge = nn.Linear(num_filters, num_filters)  # W_f
        self.filter_centre = nn.Linear(num_filters, num_filters, bias=False)  # W_c
        self.filter_neighbour = nn.Linear(num_filters, num_filters, bias=False)  # W_n
        self.up = nn.Linear(num_filters, hidden_channels)  # W_u
        self.act = nn.SiLU()

    def reset_parameters(self) -> None:
        for lin in (self.down, self.filter_edge, self.filter_centre, self.filter_neighbour, self.up):
            nn.init.xavier_uniform_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, h, e, edge_index, envelope, count):
        j, i = edge_index  # messages flow j -> i
        x = self.down(h)  # [N, F]
        centre, neighbour = self.filter_centre(x), self.filter_neighbour(x)
        f = self.act(self.filter_edge(e) + centre.index_select(0, i) + neighbour.index_select(0, j))
        f = f * envelope.unsqueeze(-1)  # [E, F]
        m = scatter_sum(x.index_select(0, j) * f, i, dim_size=h.shape[0]) / count.unsqueeze(-1)  # [N, F]
        return h + self.act(self.up(m))


class FAENet(Backbone):
    """FAENet backbone: no rotation symmetry of its own; wrap it in frame averaging.

    Args:
        hidden_channels: width H of the atom features (default: 128).
        num_filters: width F of edge features and filters (default: 128).
        num_layers: number of interaction blocks L (default: 4).
        num_gaussians: size of the Gaussian distance basis (default: 50).
        pg_hidden_channels: width of each of the period and group embeddings, 0 = off (default: 32).
        tag_hidden_channels: width of the OC20 tag embedding, 0 = off (default: 0; 32 for OC20).
        force_head: also return a direct force prediction as ``node_vectors`` [N, 1, 3] eV/Å.
        cutoff: Å (default: 6.0, as in the paper for OC20).
        max_z: largest atomic number the embedding accepts when ``species`` is None (default: 100).
        species: atomic numbers (or symbols) the model is built for: the element embedding gets one
            row per element; None: one row per Z in 0..max_z (default: None). Period and group
            embeddings are not per element and keep their size.

    ``forward(batch)`` reads ``z`` [N], ``tags`` [N] (optional), geometry through
    ``edge_vectors`` and returns ``{"node_features": [N, H]}`` (+ ``node_vectors``).
    """

    name = "faenet"
    geometry = "frame"  # Backbone.geometry: projected coordinates, invariant through frame averaging
    rotation_symmetry = "none"
    reflection_invariant = False

    def __init__(
        self,
        hidden_channels: int = 128,
        num_filters: int = 128,
        num_layers: int = 4,
        num_gaussians: int = 50,
        pg_hidden_channels: int = 32,
        tag_hidden_channels: int = 0,
        force_head: bool = False,
        cutoff: float = 6.0,
        max_z: int = 100,
        species: Sequence[int] | None = None,
    ):
        species = normalise_species(species)
        super().__init__(
            hidden_channels=hidden_channels,
            num_filters=num_filters,
            num_layers=num_layers,
            num_gaussians=num_gaussians,
            pg_hidden_channels=pg_hidden_channels,
            tag_hidden_channels=tag_hidden_channels,
            force_head=force_head,
            cutoff=cutoff,
            max_z=max_z,
            species=species,
        )
        require_positive_integers(
            hidden_channels=hidden_channels,
            num_filters=num_filters,
            num_layers=num_layers,
            num_gaussians=num_gaussians,
            max_z=max_z,
        )
        for key, value in (("pg_hidden_channels", pg_hidden_channels), ("tag_hidden_channels", tag_hidden_channels)):
            if int(value) != value or value < 0:
                raise ValueError(f"{key} must be an integer >= 0, got {value}")
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0 Å, got {cutoff}")
        self.cutoff = float(cutoff)
        num_elements = self.init_elements(species, max_z)
        self.embedding = FAENetEmbedding(
            hidden_channels, num_filters, num_gaussians, num_elements, pg_hidden_channels, tag_hidden_channels, cutoff
        )
        self.rbf = GaussianRBF(0.0, cutoff, num_gaussians)
        self.interactions = nn.ModuleList(FAENetInteraction(hidden_channels, num_filters) for _ in range(num_layers))
        self.output = nn.Linear(hidden_channels, hidden_channels)
        self.force_head = (
            MLP([hidden_channels, hidden_channels // 2 or 1, 3], activation=nn.SiLU) if force_head else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.embedding.reset_parameters()
        for block in self.interactions:
            block.reset_parameters()
        nn.init.xavier_uniform_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        if self.force_head is not None:
            self.force_head.reset_parameters()

    def forward(self, batch) -> dict[str, torch.Tensor]:
        z = batch[K.Z]
        rows = self.element_rows(z)  # [N] rows of the element table
        tags = batch[K.TAGS] if K.TAGS in batch else torch.zeros_like(z)
        if tags.shape != z.shape:  # PyG concatenates tags of only those graphs that have them
            raise ValueError(
                f"tags for {tags.shape[0]} of {z.shape[0]} atoms: some structures of the batch "
                "have OC20 tags and some do not; give every structure tags (0 = bulk) or none"
            )
        if tags.numel() and (int(tags.min()) < 0 or int(tags.max()) > 2):
            raise ValueError(
                f"tags must be 0 (bulk), 1 (surface) or 2 (adsorbate); got values {sorted(set(tags.tolist()))}"
            )
        vec = edge_vectors(batch)  # [E, 3] Å, raw: FAENet is not rotation invariant by itself
        distance = vec.norm(dim=-1)
        h, e = self.embedding(z, rows, tags, self.rbf(distance), vec)
        envelope = cosine_cutoff(distance, self.cutoff)  # [E]
        count = 1.0 + scatter_sum(envelope, batch[K.EDGE_INDEX][1], dim_size=z.shape[0])  # [N] smooth count
        for block in self.interactions:
            h = block(h, e, batch[K.EDGE_INDEX], envelope, count)
        out = {K.NODE_FEATURES: nn.functional.silu(self.output(h))}
        if self.force_head is not None:
            out[K.NODE_VECTORS] = self.force_head(h).unsqueeze(1)  # [N, 1, 3] eV/Å
        return out
