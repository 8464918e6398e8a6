"""The geometric Weisfeiler-Leman test (GWL) and its invariant versions IGWL and IGWL_(k).

Joshi, Bodnar, Mathis, Cohen, Liò, "On the Expressive Power of Geometric Graph Neural Networks"
(ICML 2023, https://arxiv.org/abs/2301.09308) define GWL as the geometric analogue of the
Weisfeiler-Leman colour refinement. Every node i carries a colour ``c_i`` and a *geometric
object* ``g_i`` that grows by one hop per iteration::

    g_i^(t) = ( (c_i^(t-1), g_i^(t-1)),  {{ (c_j^(t-1), g_j^(t-1), x_ij) : j in N(i) }} )
    c_i^(t) = HASH(g_i^(t)),      HASH(g) = HASH(h)  <=>  g = Q h for some Q in G

with ``x_ij = pos_j (+ image shift) - pos_i`` and G = O(3) (or SO(3)). Two graphs are told apart
at iteration t when their colour histograms differ. Any message-passing GNN whose invariant
outputs are G-invariant is bounded by GWL: t layers cannot separate what t GWL iterations cannot.

IGWL (``invariant=True``) keeps only colours: ``c_i^(t) = HASH(c_i^(t-1), {{(c_j^(t-1), x_ij)}})``
up to G, i.e. the neighbours' colours plus the complete invariant geometry of the 1-hop
neighbourhood, but no orientation travelling from further away. IGWL_(k) (``body_order=k``) sees
only k-body scalars of the neighbourhood: k = 2 distances; k = 3 also the angles between pairs of
neighbours; k = 4 also the Gram matrix of triples of neighbours (and, for SO(3), the sign of their
volume ``x_ij . (x_ik x x_il)``, which tells mirror images apart). GWL_(l<=L) (``max_order=L``,
``tensor_gwl.py``) is GWL whose nodes hold only tensors of order <= L: the class of PaiNN and EGNN
(L = 1) and of NequIP and MACE (L = their ``max_ell``).

How the hash is made exact
--------------------------
The nested object g_i^(t) is never stored. It is equivalent to the pair (colour, *pose*): the pose
of g is the set of frames in which g reads as its canonical form, so ``g = F . canonical(c)`` for
any F in the pose, and ``Q g`` has pose ``Q . pose``. The canonical form of node i at iteration t
is then computed from (c_i, pose_i) and the (c_j, pose_j, x_ij) of its neighbours:

1. Direction vectors: the x_ij, the axes of the neighbours' poses and of the node's own pose, each
   with an invariant key (kind, colour, length).
2. Candidate frames: among ordered pairs (a, b) of non-parallel directions with ``a`` in the class
   of smallest key, those with the smallest invariant pair key (key of b, a.b). Each gives the
   right-handed frame ``(a, b - (a.b)a, a x b)`` normalised; for O(3) also its mirror ``-e3``.
   This candidate set is defined by invariants only, so it rotates with the structure.
3. The object is written in each candidate frame (coordinates and pose matrices rounded to
   multiples of ``tol``, multisets sorted); the canonical form is the smallest such writing and
   the new pose is the set of frames that attain it. If all directions are parallel the object is
   symmetric about that axis: it is written as projections on the axis and its pose is the set of
   minimising axis directions; with no direction at all (no neighbours, iteration 0) there is no pose.

Colours are ranks of the canonical forms (sorted over both graphs), so results do not depend on
node order, and a graph compared with a rotated, reflected (O(3)), translated, permuted copy of
itself is never distinguished (up to the tolerance).

Tolerance: coordinates (Å), cosines and pose matrix entries are compared after rounding to the
nearest multiple of ``tol`` (default 1e-4); two directions count as parallel when the sine of their
angle is below ``tol``. Geometric differences smaller than ``tol`` are not seen; values that land
exactly on a rounding boundary (measure zero) could split a colour.

Cost and intended sizes: per node and iteration, with d neighbours and poses of up to m frames,
there are at most O(D^2) candidate frames (D = d + 3 m d directions; in practice the smallest key
class leaves a few dozen), each written in O(d m log m). Poses stay bounded by the symmetry of the
neighbourhood (<= 96 frames for a cuboctahedron), so the cost does not grow with the iteration
count. Meant for the hard pairs of ``pairs.py`` (<= ~30 atoms, <= 12 neighbours); a test of two
small crystals with 12 neighbours runs in seconds, not for large graphs.

Periodic structures: the graph of a crystal is its unit-cell quotient; the infinite crystal has
infinitely many nodes, so colour *frequencies* per atom of the cell are compared, which do not
depend on the choice of cell. For molecules the histograms (counts) are compared.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import permutations

import numpy as np
import torch
from torch_geometric.data import Data

from .. import conventions as K
from .inputs import as_graph
from .tensor_gwl import check_order, tensor_gwl_colours

#: Groups the colours are invariant under: "O3" (rotations and reflections) or "SO3" (rotations).
GROUPS = ("O3", "SO3")
#: Body orders accepted for IGWL_(k).
BODY_ORDERS = (2, 3, 4)
#: Default rounding step of the canonical forms (Å for coordinates, dimensionless for cosines).
DEFAULT_TOL = 1e-4


@dataclass(frozen=True)
class GWLResult:
    """Outcome of :func:`gwl_test`.

    Attributes:
        distinguished: whether the colour histograms differ at some iteration <= max_iter.
        iterations: first iteration at which they differ (0 = node labels alone), None if never.
        histograms: per iteration t = 0, 1, ..., a pair of dicts colour -> count (first graph,
            second graph). Colours are ranks of canonical forms and comparable within one result.
        test: "GWL", "IGWL" or "IGWL_(k)".
        group: "O3" or "SO3".
    """

    distinguished: bool
    iterations: int | None
    histograms: list[tuple[dict[int, int], dict[int, int]]] = field(repr=False)
    test: str = "GWL"
    group: str = "O3"


def test_name(invariant: bool, body_order: int | None, max_order: int | None = None) -> str:
    """ "GWL", "GWL_(l<=L)", "IGWL" or "IGWL_(k)" for the given options."""
    if not invariant:
        return "GWL" if max_order is None else f"GWL_(l<={max_order})"
    return "IGWL" if body_order is None else f"IGWL_({body_order})"


def test_options(name: str) -> dict:
    """Keyword arguments of :func:`gwl_test` for a test name ("GWL", "GWL_(l<=L)", "IGWL",
    "IGWL_(k)"): the inverse of :func:`test_name`. ValueError for any other name."""
    import re

    if name == "GWL":
        return {}
    if name == "IGWL":
        return {"invariant": True}
    match = re.fullmatch(r"GWL_\(l<=(\d+)\)", name)
    if match:
        return {"max_order": int(match.group(1))}
    match = re.fullmatch(r"IGWL_\((\d+)\)", name)
    if match and int(match.group(1)) in BODY_ORDERS:
        return {"invariant": True, "body_order": int(match.group(1))}
    raise ValueError(f"unknown test {name!r}: expected GWL, GWL_(l<=L), IGWL or IGWL_(k) with k in {BODY_ORDERS}")


# --------------------------------------------------------------------------- graphs the test runs on
def graph_from_bonds(positions, numbers, bonds) -> Data:
    """Molecule graph with a *given* adjacency (both directions are added).

    Args:
        positions: [N, 3] Å. numbers: [N] atomic numbers (node labels).
        bonds: iterable of pairs (a, b) of node indices, each listed once.

    Returns a ``Data`` with the keys every backbone reads (``z``, ``pos``, zero ``cell`` [1,3,3],
    ``pbc`` [1,3] False, ``natoms``, ``edge_index`` [2, 2B], zero ``edge_shift`` [2B, 3]).
    """
    pos = torch.as_tensor(np.asarray(positions, dtype=np.float64))
    z = torch.as_tensor(np.asarray(numbers), dtype=torch.long)
    if pos.ndim != 2 or pos.shape[1] != 3 or z.shape != (pos.shape[0],):
        raise ValueError(f"positions must be [N, 3] and numbers [N], got {tuple(pos.shape)} and {tuple(z.shape)}")
    pairs = np.asarray(list(bonds), dtype=np.int64).reshape(-1, 2)
    n = pos.shape[0]
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n or np.any(pairs[:, 0] == pairs[:, 1])):
        raise ValueError(f"bonds must join two different nodes among 0..{n - 1}")
    edge_index = torch.as_tensor(np.concatenate([pairs, pairs[:, ::-1]]).T.copy())
    return Data(
        z=z,
        pos=pos,
        cell=torch.zeros(1, 3, 3, dtype=pos.dtype),
        pbc=torch.zeros(1, 3, dtype=torch.bool),
        natoms=torch.tensor([n]),
        edge_index=edge_index,
        edge_shift=torch.zeros(edge_index.shape[1], 3, dtype=pos.dtype),
    )


def graph_from_atoms(atoms, cutoff: float) -> Data:
    """Radius graph (cutoff in Å) of a molecule or a periodic crystal, via ``geognn.build_graph``."""
    from ..graph.build import build_graph

    return build_graph(atoms, cutoff, dtype=torch.float64)


def isometric_copy(data, rotation=None, translation=None, permutation=None) -> Data:
    """The same structure moved by ``x -> rotation @ x + translation`` with its nodes reordered.

    Computed in the dtype of ``data``'s positions (a float32 graph gives a float32 copy, with its
    round-off). ``data``: any graph ``inputs.as_graph`` accepts; the copy is a geognn graph.

    Args:
        rotation: [3, 3] orthogonal matrix (det -1 for a reflection); default identity.
        translation: [3] Å; default zero.
        permutation: [N] new order: node k of the copy is node ``permutation[k]`` of ``data``.

    The cell rotates with the positions (its rows are vectors); image shifts are unchanged.
    """
    data = as_graph(data, "data")
    n = data[K.POS].shape[0]
    pos = data[K.POS].clone()
    rot = torch.eye(3, dtype=pos.dtype) if rotation is None else torch.as_tensor(rotation, dtype=pos.dtype)
    shift = torch.zeros(3, dtype=pos.dtype) if translation is None else torch.as_tensor(translation, dtype=pos.dtype)
    perm = torch.arange(n) if permutation is None else torch.as_tensor(permutation, dtype=torch.long)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n)
    out = data.clone()
    out[K.POS] = (pos @ rot.T + shift)[perm]
    out[K.Z] = data[K.Z][perm]
    if K.CELL in data:
        out[K.CELL] = data[K.CELL] @ rot.T
    out[K.EDGE_INDEX] = inverse[data[K.EDGE_INDEX]]
    return out


# --------------------------------------------------------------------------- the test
def gwl_test(
    g1,
    g2,
    invariant: bool = False,
    body_order: int | None = None,
    max_iter: int = 10,
    group: str = "O3",
    tol: float = DEFAULT_TOL,
    graph_cutoff: float | None = None,
    max_order: int | None = None,
) -> GWLResult:
    """Run GWL (or GWL_(l<=L), IGWL, IGWL_(k)) on two geometric graphs side by side.

    Args:
        g1: the first graph; anything ``geognn.expressivity.inputs.as_graph`` accepts:
            ``Data`` with ``pos`` [N, 3] Å, ``edge_index`` [2, E] (row 0 neighbour j, row 1
            centre i, both directions) and node labels (``z``, the dojo's ``atoms`` or one-hot
            ``x``); optionally ``cell``, ``edge_shift`` and ``pbc`` for periodic graphs
            (``graph_from_atoms``); or an ``ase.Atoms`` with ``graph_cutoff`` (Å).
        g2: the second graph, any of the same kinds as ``g1``.
        invariant: False for GWL; True for IGWL (or IGWL_(k) with ``body_order``).
        body_order: None (all invariant geometry of the 1-hop neighbourhood) or k in (2, 3, 4);
            only with ``invariant=True``.
        max_iter: number of refinement iterations (>= 1). GWL runs all of them unless the graphs
            are told apart (orientation can keep travelling while the colour partition is stable);
            IGWL stops once the partition is stable (the classical WL argument).
        group: "O3" or "SO3" (SO(3) tells mirror images apart).
        tol: rounding step of the canonical forms (see the module docstring).
        graph_cutoff: Å, radius of the graphs built from ``ase.Atoms`` inputs (ignored otherwise).
        max_order: None (GWL: tensors of every order) or L >= 1: GWL_(l<=L), whose nodes hold only
            tensors up to order L (``tensor_gwl.py``; the class of PaiNN and EGNN at L = 1, of
            NequIP and MACE at their ``max_ell``); only with ``invariant=False``.

    Returns:
        :class:`GWLResult`.
    """
    if group not in GROUPS:
        raise ValueError(f"group must be one of {', '.join(GROUPS)}, got {group!r}")
    if body_order is not None and body_order not in BODY_ORDERS:
        raise ValueError(f"body_order must be None or one of {BODY_ORDERS}, got {body_order!r}")
    if body_order is not None and not invariant:
        raise ValueError(
            "body_order restricts the invariant test: pass invariant=True (IGWL_(k)), or body_order=None for GWL"
        )
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter}")
    if max_order is not None:
        if invariant:
            raise ValueError(
                "max_order bounds the tensors of GWL: pass invariant=False with it (IGWL holds no tensors)"
            )
        max_order = check_order(max_order)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    first = _Geometry.from_data(as_graph(g1, "g1", graph_cutoff), "g1")
    second = _Geometry.from_data(as_graph(g2, "g2", graph_cutoff), "g2")
    union = _Geometry.union(first, second)
    periodic = first.periodic or second.periodic
    split = first.num_nodes
    mirror = group == "O3"

    def histograms(colours):
        return dict(Counter(colours[:split].tolist())), dict(Counter(colours[split:].tolist()))

    def differ(hist):
        return _histograms_differ(hist[0], hist[1], first.num_nodes, second.num_nodes, periodic)

    colours = _ranks([(int(z),) for z in union.z])
    poses: list = [None] * union.num_nodes
    history = [histograms(colours)]
    name = test_name(invariant, body_order, max_order)
    if differ(history[-1]):
        return GWLResult(True, 0, history, name, group)
    if max_order is not None:
        for t, new_colours in enumerate(tensor_gwl_colours(union, max_order, max_iter, mirror, tol), start=1):
            history.append(histograms(new_colours))
            if differ(history[-1]):
                return GWLResult(True, t, history, name, group)
        return GWLResult(False, None, history, name, group)
    for t in range(1, int(max_iter) + 1):
        forms, new_poses = [], []
        for i in range(union.num_nodes):
            nbrs, vecs = union.neighbours[i], union.vectors[i]
            if body_order is not None:
                forms.append(_body_order_form(int(colours[i]), colours[nbrs], vecs, body_order, not mirror, tol))
                continue
            nbr_poses = [None] * len(nbrs) if invariant else [poses[j] for j in nbrs]
            own_pose = None if invariant else poses[i]
            form, pose = _canonical_form(int(colours[i]), own_pose, colours[nbrs], vecs, nbr_poses, mirror, tol)
            forms.append(form)
            new_poses.append(pose)
        new_colours = _ranks(forms)
        history.append(histograms(new_colours))
        if differ(history[-1]):
            return GWLResult(True, t, history, name, group)
        stable = len(set(new_colours.tolist())) == len(set(colours.tolist()))
        colours, poses = new_colours, new_poses or poses
        if invariant and stable:
            break
    return GWLResult(False, None, history, name, group)


def _histograms_differ(h1: dict, h2: dict, n1: int, n2: int, periodic: bool) -> bool:
    """Counts differ (molecules) or frequencies per cell atom differ (crystals)."""
    if not periodic:
        return h1 != h2
    return {c: Fraction(k, n1) for c, k in h1.items()} != {c: Fraction(k, n2) for c, k in h2.items()}


def _ranks(forms: list) -> np.ndarray:
    """Colour of each node: the rank of its canonical form among the distinct forms (sorted)."""
    distinct = {form: rank for rank, form in enumerate(sorted(set(forms)))}
    return np.array([distinct[form] for form in forms], dtype=np.int64)


class _Geometry:
    """Labels, edge lists and edge vectors of one graph (or of two side by side), as numpy arrays."""

    def __init__(self, z, neighbours, vectors, periodic):
        self.z = z  # [N]
        self.neighbours = neighbours  # per node: [d_i] neighbour indices
        self.vectors = vectors  # per node: [d_i, 3] Å, x_ij
        self.periodic = periodic
        self.num_nodes = len(z)

    @classmethod
    def from_data(cls, data: Data, name: str) -> "_Geometry":
        from ..graph.build import edge_vectors

        for key in (K.POS, K.Z, K.EDGE_INDEX):
            if key not in data:
                raise ValueError(f"{name} has no '{key}': GWL needs pos [N,3], z [N] and edge_index [2,E]")
        pos, z, edge_index = data[K.POS], data[K.Z], data[K.EDGE_INDEX]
        n = pos.shape[0]
        if pos.ndim != 2 or pos.shape[1] != 3 or z.shape != (n,):
            raise ValueError(f"{name}: pos must be [N, 3] and z [N], got {tuple(pos.shape)} and {tuple(z.shape)}")
        if edge_index.ndim != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"{name}: edge_index must be [2, E], got {tuple(edge_index.shape)}")
        if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
            raise ValueError(f"{name}: edge_index refers to nodes outside 0..{n - 1}")
        with torch.no_grad():
            if K.EDGE_SHIFT in data and K.CELL in data:
                vec = edge_vectors(data).double().numpy()
            else:
                j, i = edge_index
                vec = (pos[j] - pos[i]).double().numpy()
        lengths = np.linalg.norm(vec, axis=1)
        if np.any(lengths < 1e-8):
            raise ValueError(f"{name}: an edge joins a node to itself at zero distance (self-loop); remove it")
        j, i = edge_index.numpy()
        _check_both_directions(name, i, j, vec)
        order = np.argsort(i, kind="stable")
        starts = np.searchsorted(i[order], np.arange(n + 1))
        neighbours = [j[order[starts[a] : starts[a + 1]]] for a in range(n)]
        vectors = [vec[order[starts[a] : starts[a + 1]]] for a in range(n)]
        periodic = bool(data[K.PBC].any()) if K.PBC in data else False
        return cls(z.numpy().astype(np.int64), neighbours, vectors, periodic)

    @classmethod
    def union(cls, a: "_Geometry", b: "_Geometry") -> "_Geometry":
        return cls(
            np.concatenate([a.z, b.z]),
            list(a.neighbours) + [nb + a.num_nodes for nb in b.neighbours],
            list(a.vectors) + list(b.vectors),
            a.periodic or b.periodic,
        )


def _check_both_directions(name: str, i, j, vec) -> None:
    """ValueError unless every edge j -> i (vector x_ij) has its reverse i -> j (vector -x_ij)."""
    rounded = np.rint(vec * 1e4).astype(np.int64)
    forward = Counter(zip(i.tolist(), j.tolist(), map(tuple, rounded.tolist())))
    backward = Counter(zip(j.tolist(), i.tolist(), map(tuple, (-rounded).tolist())))
    if forward != backward:
        raise ValueError(
            f"{name}: edge_index must contain both directions of every edge "
            "(for each j -> i also i -> j, with the opposite image shift)"
        )


# --------------------------------------------------------------------------- canonical forms
def _quantise(values, tol: float) -> np.ndarray:
    """Values rounded to integer multiples of tol (int64), so that equal-within-tol compares equal."""
    return np.rint(np.asarray(values) / tol).astype(np.int64)


def _rows_as_sorted_bytes(rows: np.ndarray) -> np.ndarray:
    """[..., m, w] int64 -> [...] bytes objects of the rows sorted (a canonical multiset encoding)."""
    w = rows.shape[-1]
    as_void = np.ascontiguousarray(rows).view(np.dtype((np.void, 8 * w)))[..., 0]  # [..., m]
    as_void = np.sort(as_void, axis=-1)
    flat = as_void.reshape(-1, as_void.shape[-1])
    return np.array([r.tobytes() for r in flat], dtype=object).reshape(as_void.shape[:-1])


def _pose_directions(pose):
    """Unit vectors [M, 3] carried by a pose, and which axis each is (0, 1, 2; 3 for an axis pose)."""
    if pose is None:
        return np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    kind, arr = pose
    if kind == "axis":  # arr [m, 3]
        return arr, np.full(len(arr), 3)
    cols = np.transpose(arr, (0, 2, 1)).reshape(-1, 3)  # frames [m, 3, 3] (columns = axes) -> [3m, 3]
    return cols, np.tile(np.arange(3), len(arr))


def _write_pose(pose, frames: np.ndarray, tol: float) -> np.ndarray:
    """Encode a pose in each of the frames [nf, 3, 3] -> [nf] bytes (or axis projections [nf] bytes)."""
    nf = len(frames)
    if pose is None:
        return np.full(nf, b"", dtype=object)
    kind, arr = pose
    if kind == "axis":
        coords = np.einsum("fab,ma->fmb", frames, arr)  # R^T u, [nf, m, 3]
        return _rows_as_sorted_bytes(_quantise(coords, tol))
    rel = np.einsum("fba,mbc->fmac", frames, arr).reshape(nf, len(arr), 9)  # R^T F, [nf, m, 9]
    return _rows_as_sorted_bytes(_quantise(rel, tol))


def _canonical_form(
    colour: int, own_pose, nbr_colours: np.ndarray, vecs: np.ndarray, nbr_poses: list, mirror: bool, tol: float
):
    """Canonical form of one node's object (see module docstring) and its pose.

    Args:
        colour: c_i^(t-1). own_pose: pose of g_i^(t-1) or None.
        nbr_colours: [d] c_j^(t-1). vecs: [d, 3] Å, x_ij. nbr_poses: d poses of g_j^(t-1) (or None).
        mirror: also use reflected frames (group O(3)).

    Returns (form, pose): form is a hashable, sortable tuple; pose is None, ("axis", [m, 3]) or
    ("frame", [m, 3, 3]) with frame columns the axes in global coordinates.
    """
    lengths = _quantise(np.linalg.norm(vecs, axis=1), tol)
    dirs, keys = [vecs], [np.stack([np.zeros_like(lengths), nbr_colours, lengths, np.zeros_like(lengths)], 1)]
    own_dirs, own_axes = _pose_directions(own_pose)
    dirs.append(own_dirs)
    keys.append(np.stack([np.ones_like(own_axes), np.zeros_like(own_axes), np.zeros_like(own_axes), own_axes], 1))
    for c, length, pose in zip(nbr_colours, lengths, nbr_poses):
        d, axes = _pose_directions(pose)
        dirs.append(d)
        keys.append(np.stack([np.full_like(axes, 2), np.full_like(axes, c), np.full_like(axes, length), axes], 1))
    dirs, keys = np.concatenate(dirs), np.concatenate(keys)

    if len(dirs) == 0:  # no geometry at all: colours only
        return (colour, b"", ()), None  # an isolated node (nothing else carries no direction)
    key_class = np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1)  # invariant rank of each key
    first = np.flatnonzero(key_class == key_class.min())
    units = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    a_units = units[first]  # [A, 3]
    sines = np.linalg.norm(np.cross(a_units[:, None, :], units[None, :, :]), axis=-1)  # [A, M]
    usable = sines > tol
    if usable.any():
        dots = _quantise(a_units @ dirs.T, tol)  # [A, M], a^ . b
        pair_key = np.where(usable, key_class[None, :], np.iinfo(np.int64).max)
        best_class = pair_key.min()
        usable &= pair_key == best_class
        best_dot = dots[usable].min()
        ia, ib = np.nonzero(usable & (dots == best_dot))
        e1 = a_units[ia]
        e2 = dirs[ib] - np.sum(dirs[ib] * e1, axis=1, keepdims=True) * e1
        e2 /= np.linalg.norm(e2, axis=1, keepdims=True)
        e3 = np.cross(e1, e2)
        frames = np.stack([e1, e2, e3], axis=2)  # [nf, 3, 3], columns are the axes
        if mirror:
            frames = np.concatenate([frames, np.stack([e1, e2, -e3], axis=2)])
        frames = frames[np.unique(_quantise(frames.reshape(-1, 9), tol), axis=0, return_index=True)[1]]
        coords = _quantise(np.einsum("fab,da->fdb", frames, vecs), tol)  # R^T x_ij, [nf, d, 3]
        kind = "frame"
    else:  # every direction is parallel to one axis: the object is symmetric about it
        frames = a_units[np.unique(_quantise(a_units, tol), axis=0, return_index=True)[1]]  # [nf, 3]
        coords = _quantise(vecs @ frames.T, tol).T[:, :, None]  # u . x_ij, [nf, d, 1]
        kind = "axis"
    nf = len(frames)
    write = _write_axis_pose if kind == "axis" else _write_pose
    own = write(own_pose, frames, tol)
    heads = np.concatenate([np.broadcast_to(nbr_colours[None, :, None], (nf, len(vecs), 1)), coords], axis=2)
    entries = [write(pose, frames, tol) for pose in nbr_poses]  # each [nf] bytes
    forms = []
    for f in range(nf):
        rows = sorted((heads[f, k].tobytes(), entries[k][f]) for k in range(len(vecs)))
        forms.append((colour, own[f], tuple(rows)))
    best = min(forms)
    chosen = np.array([form == best for form in forms])
    return best, (kind, frames[chosen])


def _write_axis_pose(pose, axes: np.ndarray, tol: float) -> np.ndarray:
    """Encode a pose as projections on each candidate axis [nf, 3] -> [nf] bytes (rank-1 objects)."""
    nf = len(axes)
    if pose is None:
        return np.full(nf, b"", dtype=object)
    directions, _ = _pose_directions(pose)  # parallel to the axis whenever the object has rank 1
    return _rows_as_sorted_bytes(_quantise(directions @ axes.T, tol).T[:, :, None])


def _body_order_form(
    colour: int, nbr_colours: np.ndarray, vecs: np.ndarray, body_order: int, chiral: bool, tol: float
) -> tuple:
    """IGWL_(k) form: colour and multisets of the k'-body scalars (k' <= k) of the neighbourhood.

    2-body: (c_j, |x_ij|); 3-body over ordered pairs j != k: (c_j, c_k, |x_ij|, |x_ik|, cos angle jik);
    4-body over ordered triples: colours, lengths, the three cosines (the Gram matrix) and, when
    ``chiral`` (SO(3)), the sign of the volume det[x_ij, x_ik, x_il] (0 if below tol).
    """
    c = [int(v) for v in nbr_colours]
    lengths = np.linalg.norm(vecs, axis=1)
    q_len = _quantise(lengths, tol).tolist()
    units = vecs / lengths[:, None]
    q_cos = _quantise(units @ units.T, tol).tolist()
    form = [colour, tuple(sorted(zip(c, q_len)))]
    d = len(c)
    if body_order >= 3:
        form.append(tuple(sorted((c[a], c[b], q_len[a], q_len[b], q_cos[a][b]) for a, b in permutations(range(d), 2))))
    if body_order >= 4:
        triples = []
        for a, b, e in permutations(range(d), 3):
            sign = 0
            if chiral:
                volume = float(np.linalg.det(units[[a, b, e]]))
                sign = 0 if abs(volume) < tol else (1 if volume > 0 else -1)
            triples.append(
                (c[a], c[b], c[e], q_len[a], q_len[b], q_len[e], q_cos[a][b], q_cos[a][e], q_cos[b][e], sign)
            )
        form.append(tuple(sorted(triples)))
    return tuple(form)
