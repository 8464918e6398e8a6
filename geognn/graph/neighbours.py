"""Neighbour lists for molecules and periodic systems (any mix of periodic directions).

The search itself is done by vesin (a compiled cell-list code, O(N) in atoms, exact for any
cutoff, including cells much smaller than the cutoff and atoms outside the cell). This module
fixes the conventions around it: which index is the centre, what the shift means, how a
``max_neighbors`` cap is applied deterministically.

Returned arrays follow ASE's ``neighbor_list("ijS")``: for each pair,
``D = positions[j] + S @ cell - positions[i]`` with ``|D| <= cutoff``; both (i, j) and (j, i)
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


def neighbour_list(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float,
                   *, with_distances: bool = False):
    """All pairs within ``cutoff`` Å.

    Args:
        positions: [N, 3] Å (atoms may lie outside the cell).
        cell: [3, 3] Å, rows are lattice vectors (ignored along non-periodic directions).
        pbc: [3] bool.
        cutoff: Å, > 0.
        with_distances: also return the pair distances [E] Å.

    Returns:
        ``i`` [E] centre, ``j`` [E] neighbour, ``S`` [E, 3] int64 image of j (and ``d`` [E]),
        sorted by (i, j, S) so the order is reproducible whatever the search did.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    if not pbc.any():
        cell = np.zeros((3, 3))
    i, j, S, d = _vesin_list(float(cutoff)).compute(positions, cell, pbc.tolist(), "ijSd")
    i = i.astype(np.int64, copy=False)
    j = j.astype(np.int64, copy=False)
    S = S.astype(np.int64, copy=False)
    order = np.lexsort((S[:, 2], S[:, 1], S[:, 0], j, i))
    i, j, S, d = i[order], j[order], S[order], d[order]
    return (i, j, S, d) if with_distances else (i, j, S)


def nearest_neighbours_mask(i: np.ndarray, d: np.ndarray, max_neighbors: int) -> np.ndarray:
    """Boolean mask keeping, for each centre ``i``, its ``max_neighbors`` nearest pairs.

    Pairs must already be in a canonical order (as ``neighbour_list`` returns them). Ties in
    distance (common in symmetric crystals, equal up to rounding noise) are broken by that
    order: distances are rounded to 1e-8 Å and a stable sort keeps (j, S) order among equals,
    so the choice does not depend on floating-point noise or on the search algorithm.
    """
    if i.size == 0:
        return np.ones(0, dtype=bool)
    d_key = np.round(d, 8)
    order = np.lexsort((np.arange(i.size), d_key, i))  # by centre, then distance, then canonical
    sorted_i = i[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_i)) + 1]
    rank = np.arange(i.size) - np.repeat(starts, np.diff(np.r_[starts, i.size]))
    keep = np.zeros(i.size, dtype=bool)
    keep[order[rank < max_neighbors]] = True
    return keep
