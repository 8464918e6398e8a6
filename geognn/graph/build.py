"""Turning a structure into a geometric graph (PyG ``Data``) and graphs into a ``Batch``.

The graph stores geometry only as positions, cell and integer image shifts; edge vectors are
recomputed from them by :func:`edge_vectors` inside every model, so gradients with respect to
positions (forces) and to a strain of the cell (stress) flow through autograd for every backbone.
"""

from __future__ import annotations

import copy
import warnings
from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.constraints import FixAtoms
from torch_geometric.data import Batch, Data

from .. import conventions as K
from ..conventions import MIN_INTERATOMIC_DISTANCE
from ..io import LazySource, StructureError, raise_if_overlapping, to_atoms, validate_atoms
from .neighbours import CAP_TIE_TOL, nearest_neighbours_mask, neighbour_list


class IsolatedAtomWarning(UserWarning):
    """An atom has no neighbour within the cutoff: a message-passing model sees it alone."""


class NeighbourCapWarning(UserWarning):
    """``max_neighbors`` removed edges from a graph (or ties kept more than the cap)."""


def build_graph(
    atoms, cutoff: float, max_neighbors: int | None = None, *, dtype: torch.dtype | None = None, validate: bool = True
) -> Data:
    """Geometric graph of one structure.

    Args:
        atoms: ``ase.Atoms`` or pymatgen ``Structure``/``Molecule``. Positions are used as
            given (atoms outside the cell are fine, nothing is wrapped or moved).
        cutoff: radius in Å (> 0); every pair (i, j, image) closer than this becomes an edge,
            in both directions.
        max_neighbors: cap on neighbours per centre, by a symmetric rule on distances only
            (``geognn.graph.neighbours.nearest_neighbours_mask``): a pair is kept when either
            atom counts the other among its ``max_neighbors`` nearest, ties at the cap distance
            included, so both directions of every kept pair stay and no tie is broken by atom
            order. An atom can therefore keep more than ``max_neighbors`` neighbours. Warns
            (``NeighbourCapWarning``) when edges are dropped, or when ties keep more than the cap.
            None keeps all.
        dtype: floating dtype of ``pos``, ``cell``, ``edge_shift`` (default: torch's default).
        validate: run ``geognn.io.validate_atoms`` first (NaN, overlaps, empty, bad cell, ...).

    Returns:
        ``Data`` with the keys of ``geognn.conventions``: ``z`` [N], ``pos`` [N,3] Å,
        ``cell`` [1,3,3] Å, ``pbc`` [1,3], ``natoms`` [1], ``edge_index`` [2,E] (row 0 the
        neighbour j, row 1 the centre i), ``edge_shift`` [E,3]; plus ``energy`` [1] eV,
        ``forces`` [N,3] eV/Å and ``stress`` [1,3,3] eV/Å³ when the atoms carry them
        (from an attached calculator, e.g. read from extxyz), and ``tags`` when present.

    Raises:
        StructureError: bad input (the message names the structure's source).

    Warns:
        IsolatedAtomWarning: atoms with no neighbour within the cutoff, naming their indices.
    """
    atoms = to_atoms(atoms)
    src = LazySource(atoms)
    if not np.isfinite(cutoff) or cutoff <= 0:
        raise StructureError(src, f"cutoff must be a positive number of Å, got {cutoff}")
    if max_neighbors is not None and (int(max_neighbors) != max_neighbors or max_neighbors < 1):
        raise StructureError(src, f"max_neighbors must be a positive integer or None, got {max_neighbors}")
    # the overlap check reuses this graph's neighbour list when the cutoff reaches that far
    overlap_from_graph = validate and cutoff >= MIN_INTERATOMIC_DISTANCE
    if validate:
        validate_atoms(atoms, check_overlap=not overlap_from_graph)
    dtype = dtype or torch.get_default_dtype()
    n = len(atoms)
    cell = np.asarray(atoms.cell[:], dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool)

    i, j, S, d = neighbour_list(atoms.positions, cell, pbc, cutoff, with_distances=True)
    if overlap_from_graph:
        raise_if_overlapping(src, i, j, S, d)
    if max_neighbors is not None:
        keep = nearest_neighbours_mask(i, j, S, d, int(max_neighbors), n)
        dropped = int((~keep).sum())
        if dropped:
            over = int((np.bincount(i[keep], minlength=n) > max_neighbors).sum())
            more = (
                (
                    f"; {over} atom(s) keep more than {max_neighbors} (neighbours tied at the cap "
                    "distance, or that count them among their nearest: the cap is symmetric and "
                    "breaks no tie by atom order)"
                )
                if over
                else ""
            )
            warnings.warn(
                f"{src}: max_neighbors={max_neighbors} dropped {dropped} of {i.size} edges at cutoff {cutoff} Å{more}",
                NeighbourCapWarning,
                stacklevel=2,
            )
            i, j, S = i[keep], j[keep], S[keep]
        elif np.bincount(i, minlength=n).max(initial=0) > max_neighbors:
            warnings.warn(
                f"{src}: max_neighbors={max_neighbors} dropped no edge: every pair beyond "
                f"the cap is tied at the cap distance (±{CAP_TIE_TOL} Å) or counted by its "
                "other atom among its nearest, and the cap breaks no tie by atom order",
                NeighbourCapWarning,
                stacklevel=2,
            )
    isolated = np.flatnonzero(np.bincount(i, minlength=n) == 0)
    if isolated.size:
        shortest = _shortest_distance(atoms) if isolated.size == n else None
        if shortest is not None:
            warnings.warn(
                f"{src}: cutoff {cutoff} Å is smaller than every bond (shortest interatomic "
                f"distance {shortest:.3g} Å): no atom has a neighbour",
                IsolatedAtomWarning,
                stacklevel=2,
            )
        else:
            shown = ", ".join(map(str, isolated[:10])) + (", ..." if isolated.size > 10 else "")
            warnings.warn(
                f"{src}: {isolated.size} atom(s) have no neighbour within {cutoff} Å (indices {shown})",
                IsolatedAtomWarning,
                stacklevel=2,
            )

    data = Data(
        z=torch.as_tensor(atoms.numbers, dtype=torch.long),
        pos=torch.as_tensor(atoms.positions, dtype=dtype),
        cell=torch.as_tensor(cell, dtype=dtype).unsqueeze(0),
        pbc=torch.as_tensor(pbc).unsqueeze(0),
        natoms=torch.tensor([n], dtype=torch.long),
        edge_index=torch.as_tensor(np.stack([j, i]), dtype=torch.long),
        edge_shift=torch.as_tensor(S, dtype=dtype),
    )
    _attach_labels(data, atoms, dtype)
    return data


#: Pairs closer than this (Å) count as bonds in the "cutoff smaller than every bond" warning.
BOND_LENGTH_LIMIT = 4.5


def _shortest_distance(atoms: Atoms) -> float | None:
    """Shortest interatomic distance (images included) if it is bond-like (< BOND_LENGTH_LIMIT Å)."""
    _, _, _, d = neighbour_list(atoms.positions, atoms.cell[:], atoms.pbc, BOND_LENGTH_LIMIT, with_distances=True)
    return float(d.min()) if d.size else None


def _attach_labels(data: Data, atoms: Atoms, dtype: torch.dtype) -> None:
    """Copy energy/forces/stress (from a calculator) and tags onto the graph, in eV units."""
    calc = atoms.calc
    results = getattr(calc, "results", {}) if calc is not None else {}
    if "energy" in results:
        data[K.ENERGY] = torch.tensor([float(results["energy"])], dtype=dtype)
    if "forces" in results:
        data[K.FORCES] = torch.as_tensor(np.asarray(results["forces"]), dtype=dtype)
    if "stress" in results:
        stress = np.asarray(results["stress"], dtype=np.float64)
        if stress.shape == (6,):  # Voigt xx yy zz yz xz xy, ASE's order
            xx, yy, zz, yz, xz, xy = stress
            stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        data[K.STRESS] = torch.as_tensor(stress, dtype=dtype).reshape(1, 3, 3)
    tags = atoms.get_tags()
    if np.any(tags != 0):
        data[K.TAGS] = torch.as_tensor(tags, dtype=torch.long)
    fixed = np.zeros(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            fixed[constraint.get_indices()] = True
    if fixed.any():
        data[K.FIXED] = torch.as_tensor(fixed)


#: Per-atom keys that ``build_graph`` stores only when set (absent means all 0 / False).
OPTIONAL_ATOM_KEYS: dict[str, torch.dtype] = {K.TAGS: torch.long, K.FIXED: torch.bool}


def collate(graphs: Sequence[Data]) -> Batch:
    """PyG ``Batch`` of graphs: node indices offset per graph, ``cell`` -> [B,3,3], ``batch`` [N].

    When only some graphs carry an optional per-atom key (``tags`` of an OC20 slab batched with
    untagged molecules, ``fixed``), the others get its default (zeros / False), so the batch keeps
    the key for every atom instead of failing or dropping it depending on the order.
    """
    graphs = list(graphs)
    if len(graphs) == 0:
        raise ValueError("collate needs at least one graph")
    for key, dtype in OPTIONAL_ATOM_KEYS.items():
        present = [key in g for g in graphs]
        if any(present) and not all(present):
            graphs = [g if has else _with_default(g, key, dtype) for g, has in zip(graphs, present)]
    return Batch.from_data_list(graphs)


def _with_default(graph: Data, key: str, dtype: torch.dtype) -> Data:
    graph = copy.copy(graph)  # shallow: the tensors are shared, the caller's graph is untouched
    graph[key] = torch.zeros(graph.num_nodes, dtype=dtype, device=graph[K.POS].device)
    return graph


def graph_index(batch: Data) -> torch.Tensor:
    """[N] structure index of each atom (zeros for a single un-batched graph)."""
    b = getattr(batch, K.BATCH, None)
    if b is None:
        b = torch.zeros(batch[K.POS].shape[0], dtype=torch.long, device=batch[K.POS].device)
    return b


def num_graphs(batch: Data) -> int:
    """Number of structures in a Batch (1 for a single Data)."""
    return int(batch[K.CELL].shape[0])


def edge_vectors(batch: Data) -> torch.Tensor:
    """[E, 3] Å vectors from centre i to neighbour j: ``pos[j] + shift @ cell[graph of i] - pos[i]``.

    Differentiable w.r.t. ``batch.pos`` and ``batch.cell`` (forces, stress). Backbones call
    this; they never rebuild the graph.
    """
    j, i = batch[K.EDGE_INDEX]
    pos, cell = batch[K.POS], batch[K.CELL]
    vec = pos.index_select(0, j) - pos.index_select(0, i)
    shift = batch[K.EDGE_SHIFT].to(pos.dtype)
    if shift.numel():
        edge_cell = cell[graph_index(batch)[i]]  # [E, 3, 3]
        vec = vec + torch.einsum("ek,ekd->ed", shift, edge_cell)
    return vec


def reverse_edges(edge_index: torch.Tensor, edge_shift: torch.Tensor | None = None) -> torch.Tensor:
    """Index [E] of each edge's reverse, or -1 where the graph lacks it.

    The reverse of edge e = (j -> i, image shift s) is the edge (i -> j, shift -s): its vector is
    ``-edge_vectors[e]`` exactly (same positions, same cell). ``edge_index`` [2, E] (row 0 j,
    row 1 i), ``edge_shift`` [E, 3] integer-valued (or None / empty: all zero, molecules). Radius
    graphs contain every reverse (a ``max_neighbors`` cap keeps both directions); a user's graph
    may not, and a graph with duplicate edges gets -1 everywhere (no pairing is made up). A
    self-loop (i -> i, s = 0) is its own reverse. Sorting, O(E log E).
    """
    num_edges = edge_index.shape[1]
    missing = torch.full((num_edges,), -1, dtype=torch.long, device=edge_index.device)
    if num_edges == 0:
        return missing
    j, i = edge_index.long()
    has_shift = edge_shift is not None and edge_shift.numel() > 0
    shift = edge_shift.round().long() if has_shift else torch.zeros(num_edges, 3, dtype=torch.long, device=j.device)
    reach = int(shift.abs().max()) if has_shift else 0
    width = 2 * reach + 1  # one code per shift component in -reach .. reach
    num_nodes = int(edge_index.max()) + 1
    if float(num_nodes) ** 2 * float(width) ** 3 >= 2.0**62:  # the key would overflow int64
        return missing

    def key(a, b, s):
        code = ((s[:, 0] + reach) * width + (s[:, 1] + reach)) * width + (s[:, 2] + reach)
        return (a * num_nodes + b) * width**3 + code

    keys = key(j, i, shift)
    sorted_keys, order = keys.sort()
    if num_edges > 1 and bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
        return missing  # duplicate edges: a reverse would not be unique
    wanted = key(i, j, -shift)
    at = torch.searchsorted(sorted_keys, wanted).clamp(max=num_edges - 1)
    found = sorted_keys[at] == wanted
    return torch.where(found, order[at], missing)
