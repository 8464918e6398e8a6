"""Neighbour lists for molecules and periodic systems (any mix of periodic directions).

The search is done by vesin (a compiled cell-list code, O(N) in atoms, exact for any cutoff,
including cells much smaller than the cutoff and atoms outside the cell), except for small
molecules, where a dense numpy search has less set-up cost. This module fixes the conventions
around it (which index is the centre, what the shift means), guards vesin against inputs that
would make its cell list explode (atoms thousands of cells away, 1e6 Å of vacuum), and applies
a ``max_neighbors`` cap by a symmetric rule that depends on distances only
(``nearest_neighbours_mask``).

Returned arrays follow ASE's ``neighbor_list("ijS")``: for each pair,
``D = positions[j] + S @ cell - positions[i]`` with ``|D| < cutoff``; both (i, j) and (j, i)
are listed; an atom's own images are its neighbours when they are within the cutoff.
"""

from __future__ import annotations

import numpy as np

_NEIGHBOUR_LISTS: dict[float, object] = {}


def _vesin_list(cutoff: float):
    import vesin

    nl = _NEIGHBOUR_LISTS.get(cutoff)
    if nl is None:
        if len(_NEIGHBOUR_LISTS) > 16:
            _NEIGHBOUR_LISTS.clear()
        nl = _NEIGHBOUR_LISTS[cutoff] = vesin.NeighborList(cutoff=cutoff, full_list=True)
    return nl


#: Non-periodic structures up to this many atoms use a dense O(N^2) search in numpy: for
#: molecules it is faster than any cell list (no set-up cost), and exact all the same.
DENSE_MAX_ATOMS = 200


def neighbour_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float, *, with_distances: bool = False
):
    """All pairs within ``cutoff`` Å (strictly closer than it, as ASE).

    Args:
        positions: [N, 3] Å (atoms may lie outside the cell).
        cell: [3, 3] Å, rows are lattice vectors (ignored along non-periodic directions).
        pbc: [3] bool.
        cutoff: Å, > 0.
        with_distances: also return the pair distances [E] Å.

    Returns:
        ``i`` [E] centre, ``j`` [E] neighbour, ``S`` [E, 3] int64 image of j (and ``d`` [E]).
        The order is the search's own: the same on every call for the same input, but not
        sorted (a sort costs as much as the search itself on large systems; message passing
        does not need one). Code that needs an order independent of the input's orientation,
        like ``nearest_neighbours_mask``, sorts by the keys it needs.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    n = positions.shape[0]
    if not pbc.any() and n <= DENSE_MAX_ATOMS:
        i, j, S, d = _dense_pairs(positions, cutoff)  # already in (i, j) order
    else:
        cell = np.ascontiguousarray(cell, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
        search_positions, images = _wrap_far_atoms(positions, cell, pbc)
        if not pbc.all():
            search_positions = _close_gaps_along_free_directions(search_positions, cell, pbc, cutoff)
        i, j, S, d = _vesin_list(float(cutoff)).compute(search_positions, cell, pbc.tolist(), "ijSd")
        i = i.astype(np.int64, copy=False)
        j = j.astype(np.int64, copy=False)
        S = S.astype(np.int64, copy=False)
        if images is not None:  # back to the images of the caller's positions
            S = S - images[j] + images[i]
    return (i, j, S, d) if with_distances else (i, j, S)


#: A free (non-periodic) direction longer than this many cutoffs has its empty gaps closed
#: before the cell-list search (see _close_gaps_along_free_directions).
MAX_FREE_EXTENT_IN_CUTOFFS = 1000.0


def _free_directions(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Orthonormal rows spanning the directions in which the structure is not periodic."""
    periodic = cell[pbc]
    if periodic.shape[0] == 0:
        return np.eye(3)
    _, _, vt = np.linalg.svd(periodic)  # rows beyond the rank span the orthogonal complement
    return vt[periodic.shape[0] :]


#: Atoms further than this many cells outside the cell (along periodic directions) are moved
#: back by whole lattice vectors before the search: a cell list bins their whole span.
MAX_CELLS_OUTSIDE = 2.0


def _wrap_far_atoms(positions, cell, pbc):
    """Positions moved by whole lattice vectors into the cell when some lie far outside it.

    Returns ``(positions', images)`` with ``positions = positions' + images @ cell`` (images
    [N, 3] int64, zero along free directions), or ``(positions, None)`` when nothing is far.
    A pair found as (i, j, S') for the moved positions is (i, j, S' - images[j] + images[i]).
    """
    if not pbc.any():
        return positions, None
    if pbc.all():
        fractional = positions @ np.linalg.inv(cell)
    else:
        basis = np.vstack([cell[pbc], _free_directions(cell, pbc)])  # periodic rows, then free
        fractional = np.linalg.solve(basis.T, positions.T).T[:, : int(pbc.sum())]
    if fractional.size == 0 or (
        np.all(fractional > -MAX_CELLS_OUTSIDE) and np.all(fractional < 1.0 + MAX_CELLS_OUTSIDE)
    ):
        return positions, None
    images = np.zeros((positions.shape[0], 3), dtype=np.int64)
    images[:, pbc] = np.floor(fractional).astype(np.int64)
    return positions - images @ cell, images


def _close_gaps_along_free_directions(positions, cell, pbc, cutoff):
    """Positions for the search, with empty stretches wider than the cutoff shortened.

    A cell list bins the bounding box, so an atom 1e6 Å away along a free axis means billions
    of bins (vesin then stalls or dies with SIGFPE). Along each free direction u, sort the
    atoms by r·u; wherever consecutive atoms are more than ``cutoff + 1`` Å apart in r·u, move
    every atom beyond the gap back along u so the gap is ``cutoff + 1`` Å. Atoms on the same
    side move together (their vectors, images included, are unchanged: periodic lattice
    vectors are orthogonal to u) and atoms across a gap stay more than a cutoff apart, so the
    pairs and their vectors are exactly those of the original positions. Only done when a free
    extent exceeds MAX_FREE_EXTENT_IN_CUTOFFS cutoffs, so ordinary inputs are passed untouched.
    """
    directions = _free_directions(cell, pbc)
    heights = positions @ directions.T  # [N, n_free]
    if heights.size == 0 or np.ptp(heights, axis=0).max() <= MAX_FREE_EXTENT_IN_CUTOFFS * cutoff:
        return positions
    moved = positions.copy()
    for k, u in enumerate(directions):
        order = np.argsort(heights[:, k], kind="stable")
        gaps = np.diff(heights[order, k])
        excess = np.clip(gaps - (cutoff + 1.0), 0.0, None)
        shift = np.zeros(positions.shape[0])
        shift[order[1:]] = np.cumsum(excess)
        moved -= shift[:, None] * u
    return moved


def _dense_pairs(positions: np.ndarray, cutoff: float):
    """All ordered pairs i != j closer than ``cutoff`` by the full distance matrix (no PBC)."""
    delta = positions[None, :, :] - positions[:, None, :]  # [N, N, 3], delta[i, j] = r_j - r_i
    dist2 = np.einsum("ijk,ijk->ij", delta, delta)
    np.fill_diagonal(dist2, np.inf)
    i, j = np.nonzero(dist2 < cutoff * cutoff)  # row-major: sorted by (i, j)
    return i, j, np.zeros((i.size, 3), dtype=np.int64), np.sqrt(dist2[i, j])


#: Å: pairs whose distances differ by less than this count as tied at the cap distance of
#: ``nearest_neighbours_mask``. Far above the rounding noise of a rotated, translated or
#: re-celled copy (~1e-14 Å in float64) and above the error of coordinates written with 5-6
#: decimals in a file (~1e-5 Å), far below any bond-length difference a model resolves.
CAP_TIE_TOL = 1e-4


def cap_radii(i: np.ndarray, d: np.ndarray, n_atoms: int, max_neighbors: int) -> np.ndarray:
    """[n_atoms] Å, each centre's cap radius: the distance of its ``max_neighbors``-th nearest pair.

    ``inf`` for centres with at most ``max_neighbors`` pairs (nothing to cut). Depends only on the
    multiset of the centre's distances, so not on atom order, image choice or lattice basis.
    """
    radius = np.full(n_atoms, np.inf)
    if i.size == 0:
        return radius
    order = np.lexsort((d, i))  # by centre, then distance
    sorted_d = d[order]
    counts = np.bincount(i, minlength=n_atoms)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    capped = np.flatnonzero(counts > max_neighbors)
    radius[capped] = sorted_d[starts[capped] + max_neighbors - 1]
    return radius


def nearest_neighbours_mask(
    i: np.ndarray, j: np.ndarray, S: np.ndarray, d: np.ndarray, max_neighbors: int, n_atoms: int | None = None
) -> np.ndarray:
    """Boolean mask [E] of the pairs kept by the ``max_neighbors`` cap: a symmetric, geometric rule.

    Rule: let ``r_a`` be atom a's cap radius (the distance of its ``max_neighbors``-th nearest
    pair, ``inf`` if it has no more pairs than that; :func:`cap_radii`). A pair (i, j, S) at
    distance d is kept when ``d <= max(r_i, r_j) + CAP_TIE_TOL``: when either end counts the
    other among its ``max_neighbors`` nearest, ties at the cap distance included. Hence

    - both directions of a pair are kept or dropped together (d and max(r_i, r_j) are the same
      for (i, j, S) and (j, i, -S)), as the edge convention requires;
    - the choice depends on distances only, never on atom indices or image labels: permuting
      atoms permutes the kept edges, and a supercell or another basis of the same lattice keeps
      the same edges around each atom (the same environment gives the same radii);
    - every atom keeps at least its ``max_neighbors`` nearest pairs (more when several are tied
      at the cap distance, e.g. the 12 nearest neighbours of fcc with a cap of 8), and may keep
      a few more: pairs to atoms that count it among their nearest. The total is at most
      ``2 * n_atoms * max_neighbors`` edges plus ties. Cutting ties or those extra pairs
      instead would need an order (atom index) that the physics does not have.

    Args:
        i: [E] centre indices.
        j: [E] neighbour indices.
        S: [E, 3] images (unused by the rule, kept for the signature).
        d: [E] distances, Å.
        max_neighbors: the cap (>= 1).
        n_atoms: number of atoms (default: 1 + the largest index).
    """
    if i.size == 0:
        return np.ones(0, dtype=bool)
    n_atoms = int(max(i.max(), j.max()) + 1) if n_atoms is None else int(n_atoms)
    radius = cap_radii(i, d, n_atoms, max_neighbors)
    return d <= np.maximum(radius[i], radius[j]) + CAP_TIE_TOL
