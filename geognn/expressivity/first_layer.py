"""What one message-passing layer can see, for backbones whose first layer sees less than GWL.

GWL's first iteration compares the complete geometry of every 1-hop neighbourhood. Several
equivariant backbones see less after one layer, because their neighbours carry no orientation
yet: the vectors an atom holds after one layer are sums over its neighbours,

    v_i^c = sum_j  w^c(z_j, r_ij) r_hat_ij        (one per channel c, w^c generic),

and the invariant readout (scalars and squared vector norms) sees the distances and the inner
products of these sums. Grouping the neighbours of i into classes a = (z_j, r_ij) with
R_a = sum_{j in a} r_hat_ij, those inner products are linear combinations of the Gram matrix

    S_i(a, b) = R_a . R_b = sum_{j in a, k in b} cos(theta_jk),

so with generic weights a one-layer model sees exactly: z_i, the multiset of (z_j, r_ij), and
S_i. This is the ``"vector sums"`` class of ``Backbone.first_layer_geometry`` (PaiNN, EGNN and
NequIP: their first-layer scalars use distances only, their first-layer vectors are such sums).
Orientation reaches them from the second layer, where GWL's bound applies.

Example: a centre with four neighbours at one distance, as a square or as a tetrahedron (the
2-body pair): both have R = 0, so S is equal and a one-layer PaiNN cannot separate them, though
their angles differ (GWL and IGWL_(3) separate them at iteration 1).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch_geometric.data import Data

from .. import conventions as K
from .gwl import DEFAULT_TOL, _histograms_differ
from .inputs import as_graph

#: Values of ``Backbone.first_layer_geometry`` this module can test ("" means no extra limit).
FIRST_LAYER_GEOMETRIES = ("vector sums",)


def _rounded(x: float, tol: float) -> int:
    return int(round(x / tol))


def vector_sum_colours(data: Data, tol: float = DEFAULT_TOL) -> list[tuple]:
    """Per atom, the invariants a one-layer "vector sums" model sees (module docstring):
    ``(z_i, sorted (z_j, r_ij) classes with counts, sorted ((a, b), S_i(a, b)))``, with r in Å and
    S rounded to multiples of ``tol``. ``data``: a geognn graph (``pos``, ``edge_index`` row 0
    neighbour j, row 1 centre i, ``edge_shift``/``cell`` for periodic graphs)."""
    from ..graph.build import edge_vectors

    vectors = edge_vectors(data).double()  # [E, 3], centre -> neighbour
    neighbour, centre = data[K.EDGE_INDEX]
    z = data[K.Z].tolist()
    lengths = vectors.norm(dim=-1)
    units = vectors / lengths.clamp_min(1e-300).unsqueeze(-1)
    colours = []
    for i in range(data[K.POS].shape[0]):
        edges = (centre == i).nonzero().flatten().tolist()
        classes: dict[tuple, torch.Tensor] = {}
        counts: Counter = Counter()
        for e in edges:
            key = (z[int(neighbour[e])], _rounded(float(lengths[e]), tol))
            classes[key] = classes.get(key, torch.zeros(3, dtype=units.dtype)) + units[e]
            counts[key] += 1
        keys = sorted(classes)
        gram = tuple(
            ((a, b), _rounded(float(classes[a] @ classes[b]), tol)) for n, a in enumerate(keys) for b in keys[n:]
        )
        colours.append((z[i], tuple(sorted(counts.items())), gram))
    return colours


def first_layer_separates(g1: Data, g2: Data, geometry: str, tol: float = DEFAULT_TOL) -> bool:
    """Whether a one-layer model of the given ``first_layer_geometry`` can tell g1 from g2.

    ``g1``, ``g2``: anything ``inputs.as_graph`` accepts; ``geometry``: one of
    ``FIRST_LAYER_GEOMETRIES``. Exact up to the rounding ``tol`` (Å for distances, dimensionless
    for S). The class is invariant under rotations and reflections, so it is the same for O(3)
    and SO(3)."""
    if geometry not in FIRST_LAYER_GEOMETRIES:
        raise ValueError(f"first_layer_geometry must be one of {', '.join(FIRST_LAYER_GEOMETRIES)}, got {geometry!r}")
    g1, g2 = as_graph(g1, "g1"), as_graph(g2, "g2")
    c1, c2 = vector_sum_colours(g1, tol), vector_sum_colours(g2, tol)
    periodic = any(K.PBC in g and bool(torch.as_tensor(g[K.PBC]).any()) for g in (g1, g2))
    return _histograms_differ(Counter(c1), Counter(c2), len(c1), len(c2), periodic)
