"""A library of hard pairs of geometric graphs, each with what theory predicts for it.

Every pair is built by a function below whose docstring says where the construction comes from
and why the expected outcomes hold. The expected outcomes are data (``HardPair.expected``): for
each group ("O3", "SO3") and each test ("GWL", "GWL_(l<=1)", "GWL_(l<=2)", "IGWL", "IGWL_(2)",
"IGWL_(3)", "IGWL_(4)") the first GWL iteration at which the pair is told apart, or None if it
never is. GWL_(l<=L) (``tensor_gwl.py``) is GWL whose nodes hold tensors of order <= L only. The tests in
``tests/test_expressivity_gwl.py`` check each of them and each pair's claimed geometric facts.

Families:

- ``k-chain``: Joshi et al. (ICML 2023, Sec. 5.1): GWL needs floor(k/2) + 1 iterations, IGWL never.
- ``rotational symmetry``: Joshi et al. (Sec. 5.2): an L-fold symmetric structure and its rotated
  copy are isometric (no invariant test separates them); an equivariant model identifies the
  orientation only with tensors of order >= L (``HardPair.orientation_order``).
- ``Pozdnyakov``: environments degenerate for low body orders, after Pozdnyakov et al.,
  "Incompleteness of Atomic Structure Representations", PRL 125, 166001 (2020).
- ``periodic``: crystals: fcc vs hcp (same distances, different angles) and one crystal written in
  two different unit cells (must never be told apart).

Lengths are in Å; every node has label (atomic number) 6 unless stated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.build import bulk
from torch_geometric.data import Data

from .gwl import graph_from_atoms, graph_from_bonds

#: Names of the tests, in the order reports show them.
TESTS = ("GWL", "GWL_(l<=1)", "GWL_(l<=2)", "IGWL", "IGWL_(2)", "IGWL_(3)", "IGWL_(4)")
#: Families of pairs, in library order.
FAMILIES = ("k-chain", "rotational symmetry", "Pozdnyakov", "periodic")
#: Bond length used by the molecular pairs, Å.
BOND = 1.5
#: Nearest-neighbour distance of the fcc/hcp crystals, Å (that of copper).
FCC_HCP_NEIGHBOUR_DISTANCE = 2.55


@dataclass(frozen=True)
class HardPair:
    """Two geometric graphs and the theory's prediction for them.

    Attributes:
        name: unique short name (e.g. "4-chain").
        family: one of FAMILIES.
        g1, g2: ``Data`` graphs (explicit adjacency; periodic graphs carry cell and shifts).
        expected: {"O3": {test: iterations or None}, "SO3": {...}} for every test in TESTS.
        orientation_order: for rotationally symmetric pairs, the smallest tensor order that can
            tell the structure from its rotated copy (L for L-fold symmetry); None otherwise.
        description: where the pair comes from and what theory predicts (the builder's docstring).
    """

    name: str
    family: str
    g1: Data = field(repr=False)
    g2: Data = field(repr=False)
    expected: dict = field(repr=False)
    orientation_order: int | None = None
    description: str = field(default="", repr=False)

    @property
    def is_orientation_pair(self) -> bool:
        """True for pairs that are isometric copies and probe orientation, not separation."""
        return self.orientation_order is not None

    @property
    def longest_edge(self) -> float:
        """Longest edge (Å) of either graph: a backbone's cutoff must exceed it."""
        from ..graph.build import edge_vectors

        return max(float(edge_vectors(g).norm(dim=-1).max()) for g in (self.g1, self.g2))


def _expected(gwl=None, igwl=None, igwl2=None, igwl3=None, igwl4=None, so3=None, order1=None, order2=None) -> dict:
    """Expected iterations per test; ``so3`` overrides some tests under SO(3) (chiral pairs);
    ``order1``, ``order2``: GWL_(l<=1), GWL_(l<=2)."""
    o3 = dict(zip(TESTS, (gwl, order1, order2, igwl, igwl2, igwl3, igwl4)))
    return {"O3": o3, "SO3": {**o3, **(so3 or {})}}


def _doc(function) -> str:
    return " ".join((function.__doc__ or "").split())


# --------------------------------------------------------------------------- k-chains
def k_chain_pair(k: int, bond: float = BOND, bend_deg: float = 60.0) -> HardPair:
    """k-chain pair (Joshi et al., ICML 2023, Sec. 5.1 and their Fig. 3).

    k atoms on a straight line (spacing ``bond``) and one end atom bonded to each end of the line,
    bent away from it by ``bend_deg``, in the xy-plane: in g1 both end atoms lie on the same side
    of the line (a "U"), in g2 on opposite sides (an "S"). All bond lengths are equal and every
    node sees the same angles in both graphs, so no 1-hop invariant (IGWL, any body order) ever
    separates them. The two differ only in the relative orientation of the two ends, which are
    k + 1 bonds apart: GWL needs a node whose receptive field holds both ends, i.e.
    floor(k/2) + 1 iterations (the middle of the path), and so does an equivariant GNN in layers.
    Vectors suffice (GWL_(l<=1) and GWL_(l<=2) as GWL): each end's bond direction travels inward as
    a vector, and the middle node compares the two ends' vectors by their inner product, which is
    the same for both ends in the "U" and opposite in the "S" (the difference is in the plane).
    """
    if int(k) != k or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k}")
    bend = np.deg2rad(bend_deg)
    line = [[bond * i, 0.0, 0.0] for i in range(k)]
    up = bond * np.sin(bend)

    def chain(second_end_up: bool) -> Data:
        first_end = [-bond * np.cos(bend), up, 0.0]
        last_end = [bond * (k - 1) + bond * np.cos(bend), up if second_end_up else -up, 0.0]
        positions = np.array([first_end] + line + [last_end])
        return graph_from_bonds(positions, [6] * (k + 2), [(a, a + 1) for a in range(k + 1)])

    return HardPair(
        f"{k}-chain",
        "k-chain",
        chain(True),
        chain(False),
        _expected(gwl=k // 2 + 1, order1=k // 2 + 1, order2=k // 2 + 1),
        description=_doc(k_chain_pair),
    )


# --------------------------------------------------------------------------- rotational symmetry
def rotational_symmetry_pair(fold: int, radius: float = BOND) -> HardPair:
    """An L-fold symmetric star and its copy rotated by pi/L (Joshi et al., Sec. 5.2).

    A centre atom bonded to ``fold`` = L atoms evenly spaced on a circle of ``radius`` in the
    xy-plane, and the same star rotated by pi/L about z. The two are isometric, so no invariant
    test (GWL, IGWL) ever separates them. The question is whether an *equivariant* output can
    tell their orientations apart: an output of tensor order l is invariant under the L-fold
    rotation only through its spherical components with m = 0 mod L; the m = 0 part is blind to
    rotations about z, so the orientation is visible only if some |m| >= L, i.e. l >= L
    (``orientation_order`` = L). Cartesian vectors (order 1) never see it for L >= 2.
    """
    if int(fold) != fold or fold < 2:
        raise ValueError(f"fold must be an integer >= 2, got {fold}")
    angles = 2 * np.pi * np.arange(fold) / fold

    def star(offset: float) -> Data:
        ring = np.stack([radius * np.cos(angles + offset), radius * np.sin(angles + offset), np.zeros(fold)], 1)
        positions = np.concatenate([np.zeros((1, 3)), ring])
        return graph_from_bonds(positions, [6] + [1] * fold, [(0, a + 1) for a in range(fold)])

    return HardPair(
        f"{fold}-fold",
        "rotational symmetry",
        star(0.0),
        star(np.pi / fold),
        _expected(),
        orientation_order=int(fold),
        description=_doc(rotational_symmetry_pair),
    )


# --------------------------------------------------------------------------- Pozdnyakov et al.
def _star_graph(directions, radius: float = BOND, centre_z: int = 6, neighbour_z: int = 1) -> Data:
    """Centre atom at the origin bonded to one atom at ``radius`` * each unit direction."""
    d = np.asarray(directions, dtype=np.float64)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    positions = np.concatenate([np.zeros((1, 3)), radius * d])
    return graph_from_bonds(positions, [centre_z] + [neighbour_z] * len(d), [(0, a + 1) for a in range(len(d))])


def two_body_degenerate_pair() -> HardPair:
    """Same distances, different angles: the simplest degeneracy of Pozdnyakov et al. (PRL 2020).

    A centre bonded to four atoms at the same distance, arranged as a square (g1) or a
    tetrahedron (g2). Every 2-body scalar (the four centre-neighbour distances) is the same, so
    IGWL_(2) (and a distance-only GNN such as SchNet) never separates them; the angles differ
    (90 and 180 degrees vs 109.47 degrees), so 3-body scalars separate them at iteration 1.
    Tensors of order 1 never do (GWL_(l<=1)): by symmetry (D4h, Td) the centre's vectors are zero
    in both, every leaf's vectors lie along its bond, and the projections on the bond are equal.
    Order 2 does at once: the sum of Y_2(u) over the neighbours is non-zero for the planar square
    and zero for the tetrahedron (GWL_(l<=2) at iteration 1).
    """
    square = [[1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]]
    tetrahedron = [[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]
    return HardPair(
        "2-body",
        "Pozdnyakov",
        _star_graph(square),
        _star_graph(tetrahedron),
        _expected(gwl=1, igwl=1, igwl3=1, igwl4=1, order2=1),
        description=_doc(two_body_degenerate_pair),
    )


#: Two subsets of the vertices of a regular octagon with the same multiset of cyclic differences
#: ({1, 1, 2, 3, 3, 4} in units of 45 degrees) that are not rotations or reflections of each other.
HOMOMETRIC_OCTAGON_SUBSETS = ((0, 1, 2, 5), (0, 1, 3, 4))


def three_body_degenerate_pair() -> HardPair:
    """Same distances and angles, different 4-body scalars (non-chiral; after Pozdnyakov et al.).

    Pozdnyakov et al. showed that environments can share every 3-body correlation (all
    distance-distance-angle triples) and still differ. Here the neighbours of a centre lie on a
    circle at the vertices {0, 1, 2, 5} (g1) and {0, 1, 3, 4} (g2) of a regular octagon: both
    subsets have the cyclic differences {1, 1, 2, 3, 3, 4} x 45 degrees (a homometric pair), so the
    multisets of angles between neighbours are equal and IGWL_(2), IGWL_(3) never separate them.
    The triples of angles differ (g1 has a triple of octagon steps {1, 1, 2}, g2 has none), so
    IGWL_(4) separates them at iteration 1. Both are planar, hence achiral.
    The centre's vector sum R has the same length in both (|R|^2 = 4 + 2 sum of cos over the
    angles), so order 1 needs 2 iterations: the neighbours then see R's projection on their
    bond, whose multiset differs (GWL_(l<=1) at 2). Order 2 separates at 1: the contraction of
    R (x) R with the sum of Y_2(u) is a sum over triples of neighbours, a 4-body scalar.
    """

    def octagon(subset):
        angles = np.pi / 4 * np.asarray(subset)
        return _star_graph(np.stack([np.cos(angles), np.sin(angles), np.zeros(len(subset))], 1))

    g1, g2 = (octagon(s) for s in HOMOMETRIC_OCTAGON_SUBSETS)
    return HardPair(
        "3-body",
        "Pozdnyakov",
        g1,
        g2,
        _expected(gwl=1, igwl=1, igwl4=1, order1=2, order2=1),
        description=_doc(three_body_degenerate_pair),
    )


#: Three neighbour directions and distances (Å) of the chiral environment.
CHIRAL_NEIGHBOURS = (((1.0, 0.0, 0.3), 1.1), ((0.0, 1.0, 0.3), 1.4), ((-0.6, -0.5, 0.9), 1.8))


def chiral_pair() -> HardPair:
    """A chiral environment and its mirror image: only a pseudoscalar (signed volume) separates them.

    A centre bonded to three atoms at three different distances, not coplanar with it (g1), and
    its mirror image through the yz-plane (g2). Every distance, angle and Gram matrix is the
    same, so under O(3) nothing separates them (they are congruent by a reflection). Under SO(3)
    the sign of the volume x_1 . (x_2 x x_3), a 4-body pseudoscalar, separates them at iteration 1:
    IGWL_(4) with the sign (SO3), IGWL and GWL (SO3); IGWL_(2) and IGWL_(3) never. This is the
    chiral case of the 3-body degeneracy discussed by Pozdnyakov et al. Without parity (SO(3)),
    the cross product of two neighbour vectors dotted with the third is that volume, so
    GWL_(l<=1) and GWL_(l<=2) separate them at 1 too.
    """
    directions = np.array([d for d, _ in CHIRAL_NEIGHBOURS], dtype=np.float64)
    lengths = np.array([r for _, r in CHIRAL_NEIGHBOURS])
    positions = np.concatenate(
        [np.zeros((1, 3)), directions / np.linalg.norm(directions, axis=1, keepdims=True) * lengths[:, None]]
    )
    mirror = positions * np.array([-1.0, 1.0, 1.0])
    bonds = [(0, 1), (0, 2), (0, 3)]
    g1, g2 = graph_from_bonds(positions, [6, 1, 1, 1], bonds), graph_from_bonds(mirror, [6, 1, 1, 1], bonds)
    return HardPair(
        "chiral",
        "Pozdnyakov",
        g1,
        g2,
        _expected(so3={"GWL": 1, "GWL_(l<=1)": 1, "GWL_(l<=2)": 1, "IGWL": 1, "IGWL_(4)": 1}),
        description=_doc(chiral_pair),
    )


# --------------------------------------------------------------------------- periodic
def fcc_hcp_pair(neighbour_distance: float = FCC_HCP_NEIGHBOUR_DISTANCE) -> HardPair:
    """fcc vs ideal hcp with a cutoff that covers only the first neighbour shell.

    Both close-packed crystals have 12 nearest neighbours at the same distance d (hcp with the
    ideal c/a = sqrt(8/3)) and the next shell at sqrt(2) d; the cutoff 1.2 d keeps only the first
    shell. The distances are equal, so IGWL_(2) never separates them; the angles differ (the
    cuboctahedron of fcc vs the anticuboctahedron of hcp, which has angles fcc lacks, e.g.
    arccos(-5/6) = 146.4 degrees), so every test with angles separates them at iteration 1.
    Tensors of order <= 2 never do (GWL_(l<=1), GWL_(l<=2)): every feature at a site is invariant
    under its site group, O_h (fcc) or D_3h (hcp). Neither fixes a vector; O_h fixes no order-2
    tensor, and the one D_3h fixes (uniaxial along c) has zero weight in the ideal hcp shell (the
    sum of Y_2(u) over the 12 neighbours vanishes for c/a = sqrt(8/3)). All order <= 2 features
    are then zero at every iteration; the shells differ first at order 3 (D_3h fixes an l = 3
    tensor, O_h, being centrosymmetric, none).
    """
    d = neighbour_distance
    fcc = bulk("Cu", "fcc", a=d * np.sqrt(2))
    hcp = bulk("Cu", "hcp", a=d, c=d * np.sqrt(8 / 3))
    cutoff = 1.2 * d
    return HardPair(
        "fcc-hcp",
        "periodic",
        graph_from_atoms(fcc, cutoff),
        graph_from_atoms(hcp, cutoff),
        _expected(gwl=1, igwl=1, igwl3=1, igwl4=1),
        description=_doc(fcc_hcp_pair),
    )


def same_crystal_two_cells_pair(a: float = 5.64) -> HardPair:
    """Rock salt (NaCl) in its 2-atom primitive cell and in the 8-atom conventional cube, shifted.

    The two graphs are quotients of the same infinite crystal by different lattices: the
    conventional cell is translated by an arbitrary vector and its atoms are listed in another
    order. Every atom has the same environment in both, so no test may ever separate them (colour
    frequencies per cell atom are compared). Cutoff 1.2 a/2: the six nearest neighbours.
    """
    primitive = bulk("NaCl", "rocksalt", a=a)
    conventional = bulk("NaCl", "rocksalt", a=a, cubic=True)
    conventional = Atoms(
        conventional.numbers[::-1],
        positions=conventional.positions[::-1] + [0.31, -0.17, 0.52],
        cell=conventional.cell,
        pbc=True,
    )
    cutoff = 1.2 * a / 2
    return HardPair(
        "nacl-two-cells",
        "periodic",
        graph_from_atoms(primitive, cutoff),
        graph_from_atoms(conventional, cutoff),
        _expected(),
        description=_doc(same_crystal_two_cells_pair),
    )


# --------------------------------------------------------------------------- the library
#: k of the k-chain pairs and L of the rotationally symmetric pairs in the library.
CHAIN_LENGTHS = tuple(range(2, 9))
FOLDS = (2, 3, 5, 10)


def load_pairs(names=None) -> list[HardPair]:
    """The hard pairs (all, or those whose names are listed), in library order.

    ValueError naming the unknown names and the valid ones.
    """
    pairs = (
        [k_chain_pair(k) for k in CHAIN_LENGTHS]
        + [rotational_symmetry_pair(f) for f in FOLDS]
        + [
            two_body_degenerate_pair(),
            three_body_degenerate_pair(),
            chiral_pair(),
            fcc_hcp_pair(),
            same_crystal_two_cells_pair(),
        ]
    )
    if names is None:
        return pairs
    names = list(names)
    known = {p.name: p for p in pairs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"unknown pair(s): {', '.join(map(repr, unknown))}; choose from: {', '.join(repr(n) for n in known)}"
        )
    return [known[n] for n in names]
