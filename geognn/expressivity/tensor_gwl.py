"""GWL with tensors of bounded order: the test that bounds PaiNN, EGNN, NequIP and MACE.

GWL (``gwl.py``) lets every node carry its whole geometric object, i.e. tensors of every order.
A backbone whose features are Cartesian vectors (order 1: PaiNN, EGNN) or spherical tensors up to
order L (NequIP, MACE with ``max_ell = L``) carries less, and some pairs show it: a centre with
four neighbours as a square or as a tetrahedron (the 2-body pair) has no vector at the centre in
either case, so no order-1 model ever separates the two, while GWL does at once. ``GWL_(l<=L)``
is the same colour refinement with the node's geometric object replaced by what an order-L
equivariant network can hold and compute.

The test
--------
Node i carries a colour c_i and, for each irrep (l, p) with 1 <= l <= L and parity p (plus the
pseudo-scalars (0, -1) under O(3)), an orthonormal basis B_i^(l,p) of the span of all order-l
features an order-L network could have built at i (at most 2l + 1 vectors of R^(2l+1), real
spherical harmonics as e3nn's). With u_ij the unit vector from i to neighbour j, d_ij its length
and Y_l the spherical harmonics (parity (-1)^l), one iteration does:

1. Edge keys: e_ij = (c_j, d_ij, every inner product between same-irrep members of
   {Y_l(u_ij)}, B_i, B_j). These are all the scalars an edge update can read (EGNN's updated
   distance |x_i + v_i - x_j - v_j| is one of their functions).
2. Generating features at i, each with a key made of invariants only: for every class K of equal
   edge keys and every l, l2, l3 <= L,
       sum_{j in K} Y_l(u_ij),       sum_{j in K} [B_j[k] (x) Y_l2(u_ij)]_l3,
   plus the node's own basis B_i (the residual path). ``[a (x) b]_l3`` is the Clebsch-Gordan
   product (e3nn's ``wigner_3j``), the only bilinear equivariant map.
3. Products at the node: every [a (x) b]_l3 (l3 <= L) of two basis members is added, repeatedly,
   until the spans stop growing (any correlation order, MACE's included).
4. The new basis is Gram-Schmidt of these features in the order of their keys; the coefficients of
   every feature in the new basis are invariants. The new colour hashes c_i, the multiset of edge
   keys and these coefficients.

Every step is a function an order-L equivariant network can compute (sums over neighbour classes
stand for learned weights that depend on the edge's invariants; Gram-Schmidt and the coefficients
are functions of inner products), and conversely any such network's order-<=L features at i lie in
the span B_i with invariant coefficients, its scalars are functions of the colour: so t layers of
such a network cannot separate what t iterations of this test cannot. It is also bounded by GWL
(every step is an O(3)-equivariant function of the t-hop neighbourhood). Chains therefore need
floor(k/2) + 1 iterations at any L >= 1, as for GWL, while the square and the tetrahedron are
never separated at L = 1 and at once at L = 2.

With group "SO3" parity is not tracked (pseudo-tensors count as tensors), so mirror images may be
told apart through products such as the triple product of three vectors.

Tolerance: inner products and lengths are rounded to multiples of ``tol``; a Gram-Schmidt residual
below ``rank_tol`` counts as zero. Cost: per node and iteration O(d L^2) features and O(L^6)
products; meant for the hard pairs (tens of atoms).
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache

import numpy as np
import torch

#: Largest tensor order the test accepts (the cost grows as L^6).
MAX_ORDER = 6
#: Default Gram-Schmidt rank tolerance: a residual norm below this is zero (features are O(1)).
RANK_TOL = 1e-4


@lru_cache(maxsize=None)
def _cg(l1: int, l2: int, l3: int) -> np.ndarray:
    """e3nn's real Wigner 3j symbol [2l1+1, 2l2+1, 2l3+1] (float64)."""
    from e3nn import o3

    return o3.wigner_3j(l1, l2, l3, dtype=torch.float64).numpy()


def _spherical_harmonics(l: int, units: np.ndarray) -> np.ndarray:
    """Y_l of unit vectors [E, 3] -> [E, 2l+1] (e3nn's real basis, component normalisation)."""
    from e3nn import o3

    return o3.spherical_harmonics(l, torch.as_tensor(units), normalize=True, normalization="component").numpy()


class _State:
    """One node's features: irrep (l, p) -> orthonormal basis [K, 2l+1] (rows), K <= 2l+1."""

    __slots__ = ("basis",)

    def __init__(self):
        self.basis: dict[tuple[int, int], np.ndarray] = {}


def _irreps(max_order: int, mirror: bool) -> list[tuple[int, int]]:
    """The irreps (l, p) a node may hold: l = 1..L with both parities, and (0, -1) under O(3).
    Without ``mirror`` (SO(3)) parity is not tracked: p is always +1."""
    if not mirror:
        return [(l, 1) for l in range(1, max_order + 1)]
    return [(0, -1)] + [(l, p) for l in range(1, max_order + 1) for p in (1, -1)]


def _product_targets(a: tuple[int, int], b: tuple[int, int], max_order: int, mirror: bool):
    """Irreps of [a (x) b]_l3 kept by the test (l3 <= L; true scalars are inner products, already
    in the colour)."""
    (l1, p1), (l2, p2) = a, b
    parity = p1 * p2 if mirror else 1
    for l3 in range(abs(l1 - l2), min(l1 + l2, max_order) + 1):
        if l3 == 0 and parity == 1:
            continue
        yield l3, parity


def _product(x: np.ndarray, y: np.ndarray, l1: int, l2: int, l3: int) -> np.ndarray:
    return np.einsum("i,j,ijk->k", x, y, _cg(l1, l2, l3))


class _Span:
    """Gram-Schmidt of keyed features per irrep, in a canonical order, with their coefficients."""

    def __init__(self, rank_tol: float):
        self.rank_tol = rank_tol
        self.basis: dict[tuple[int, int], list[np.ndarray]] = defaultdict(list)
        self.records: list[tuple] = []  # (irrep, key, coefficients) in the order features came

    def add(self, irrep, key, vector: np.ndarray) -> bool:
        """Add one feature; True if it enlarged the span."""
        rows = self.basis[irrep]
        coefficients = [float(b @ vector) for b in rows]
        residual = vector - sum((c * b for c, b in zip(coefficients, rows)), np.zeros_like(vector))
        norm = float(np.linalg.norm(residual))
        grew = norm > self.rank_tol and len(rows) < 2 * irrep[0] + 1
        if grew:
            rows.append(residual / norm)
            coefficients.append(norm)
        self.records.append((irrep, key, coefficients))
        return grew

    def add_sorted(self, features: dict) -> None:
        """Add features {(irrep, key): vector} in the order of their keys (invariant data only)."""
        for irrep, key in sorted(features, key=lambda item: (item[0], repr(item[1]))):
            self.add(irrep, key, features[(irrep, key)])


def _edge_invariants(own: _State, nbr: _State, harmonics: dict, irreps, mirror: bool) -> list[float]:
    """Step 1: every inner product between same-irrep members of {Y_l(u_ij)}, B_i and B_j, in a
    fixed order (the layout is set by the colours of i and j)."""
    values = []
    for l, p in irreps:
        members = [("own", own.basis.get((l, p), ())), ("nbr", nbr.basis.get((l, p), ()))]
        if l >= 1 and (not mirror or p == (-1) ** l):
            members.append(("Y", [harmonics[l]]))
        flat = [(tag, v) for tag, vectors in members for v in vectors]
        for a in range(len(flat)):
            for b in range(a + 1, len(flat)):
                if flat[a][0] != flat[b][0]:
                    values.append(float(flat[a][1] @ flat[b][1]))
    return values


def _node_update(colour, own: _State, edges, max_order, mirror, rank_tol):
    """Canonical form (structure, values) and new state of one node (module docstring, steps 2-4).

    ``edges``: list of (edge class, neighbour state, {l: Y_l(u_ij) [2l+1]}); edges of one class
    have neighbours of one colour (the class includes it)."""
    classes: dict[int, list] = defaultdict(list)
    for edge_class, state_j, harmonics in edges:
        classes[int(edge_class)].append((state_j, harmonics))

    features: dict = {}
    for key, members in classes.items():
        for l in range(1, max_order + 1):
            irrep = (l, (-1) ** l if mirror else 1)
            features[(irrep, ("Y", key, l))] = sum(h[l] for _, h in members)
        for (l1, p1), rows in members[0][0].basis.items():  # equal colours: equal feature layouts
            for k in range(len(rows)):
                for l2 in range(0, max_order + 1):
                    y_irrep = (l2, (-1) ** l2 if mirror else 1)
                    for irrep in _product_targets((l1, p1), y_irrep, max_order, mirror):
                        l3 = irrep[0]
                        total = sum(
                            _product(state.basis[(l1, p1)][k], h[l2] if l2 else np.ones(1), l1, l2, l3)
                            for state, h in members
                        )
                        features[(irrep, ("M", key, (l1, p1), k, l2, l3))] = total
    for irrep, rows in own.basis.items():
        for k, row in enumerate(rows):
            features[(irrep, ("S", k))] = row

    span = _Span(rank_tol)
    span.add_sorted(features)
    done = 0
    while True:  # products of basis members until the spans stop growing
        members = [(irrep, k, row) for irrep in sorted(span.basis) for k, row in enumerate(span.basis[irrep])]
        pairs = [(a, b) for a in range(len(members)) for b in range(a, len(members)) if b >= done]
        done = len(members)
        grew = False
        for a, b in pairs:
            (ia, ka, xa), (ib, kb, xb) = members[a], members[b]
            for irrep in _product_targets(ia, ib, max_order, mirror):
                vector = _product(xa, xb, ia[0], ib[0], irrep[0])
                grew |= span.add(irrep, ("P", ia, ka, ib, kb, irrep[0]), vector)
        if not grew:
            break

    structure = (
        int(colour),
        tuple(sorted((k, len(v)) for k, v in classes.items())),
        tuple((irrep, repr(key), len(c)) for irrep, key, c in span.records),
    )
    values = [x for _, _, c in span.records for x in c]
    state = _State()
    state.basis = {irrep: np.array(rows) for irrep, rows in span.basis.items() if rows}
    return (repr(structure), values), state


def tolerant_ranks(forms: list, tol: float) -> np.ndarray:
    """Colours of ``forms`` [(structure: str, values: list[float])]: two forms get one colour when
    their structures are equal and every value is within ``tol`` (chains of such pairs included),
    so round-off below ``tol`` never splits a colour, as rounding to a grid can (a value near a
    grid boundary). Colours are ranks of the classes ordered by structure, then by values compared
    with the same tolerance: they do not depend on node order."""
    import functools

    groups: dict[str, list[int]] = defaultdict(list)
    for n, (structure, _) in enumerate(forms):
        groups[structure].append(n)
    parent = list(range(len(forms)))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for members in groups.values():
        values = np.array([forms[n][1] for n in members], dtype=np.float64).reshape(len(members), -1)
        close = np.abs(values[:, None, :] - values[None, :, :]).max(axis=-1, initial=0.0) <= tol
        for a, b in zip(*np.nonzero(np.triu(close, 1))):
            parent[find(members[a])] = find(members[b])
    clusters: dict[int, list[int]] = defaultdict(list)
    for n in range(len(forms)):
        clusters[find(n)].append(n)

    def compare(a, b):
        (sa, va), (sb, vb) = forms[a], forms[b]
        if sa != sb:
            return -1 if sa < sb else 1
        for x, y in zip(va, vb):
            if abs(x - y) > tol:
                return -1 if x < y else 1
        return 0

    representatives = sorted((min(m) for m in clusters.values()), key=functools.cmp_to_key(compare))
    colour_of_root = {find(r): c for c, r in enumerate(representatives)}
    return np.array([colour_of_root[find(n)] for n in range(len(forms))], dtype=np.int64)


def tensor_gwl_colours(union, max_order: int, max_iter: int, mirror: bool, tol: float, rank_tol: float = RANK_TOL):
    """Colours per iteration of ``GWL_(l<=L)`` on ``union`` (``gwl._Geometry``: both graphs' nodes
    side by side): yields one int array [N] per iteration t = 1..max_iter. Lengths (Å) and inner
    products are compared with tolerance ``tol`` (``tolerant_ranks``)."""
    irreps = _irreps(max_order, mirror)
    lengths = [np.linalg.norm(v, axis=1) if len(v) else np.zeros(0) for v in union.vectors]
    units = [v / d[:, None] if len(v) else v for v, d in zip(union.vectors, lengths)]
    harmonics = [
        {l: _spherical_harmonics(l, u) if len(u) else np.zeros((0, 2 * l + 1)) for l in range(max_order + 1)}
        for u in units
    ]
    colours = tolerant_ranks([(repr(int(z)), []) for z in union.z], tol)
    states = [_State() for _ in range(union.num_nodes)]
    for _ in range(int(max_iter)):
        edge_forms, edge_ids = [], []
        for i in range(union.num_nodes):
            for e, j in enumerate(union.neighbours[i]):
                h = {l: harmonics[i][l][e] for l in harmonics[i]}
                values = [float(lengths[i][e])] + _edge_invariants(states[i], states[j], h, irreps, mirror)
                edge_forms.append((repr((int(colours[i]), int(colours[j]))), values))
                edge_ids.append((i, e, j, h))
        edge_classes = tolerant_ranks(edge_forms, tol)
        per_node: list[list] = [[] for _ in range(union.num_nodes)]
        for (i, _, j, h), edge_class in zip(edge_ids, edge_classes):
            per_node[i].append((edge_class, states[j], h))
        forms, new_states = [], []
        for i in range(union.num_nodes):
            form, state = _node_update(colours[i], states[i], per_node[i], max_order, mirror, rank_tol)
            forms.append(form)
            new_states.append(state)
        colours, states = tolerant_ranks(forms, tol), new_states
        yield colours


def check_order(max_order) -> int:
    """``max_order`` as an int in 1..MAX_ORDER, or ValueError."""
    if int(max_order) != max_order or not 1 <= max_order <= MAX_ORDER:
        raise ValueError(f"max_order must be an integer from 1 to {MAX_ORDER}, got {max_order!r}")
    return int(max_order)


__all__ = ["MAX_ORDER", "check_order", "tensor_gwl_colours", "tolerant_ranks"]
