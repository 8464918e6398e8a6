"""One input path for every expressivity entry point: whatever a user holds becomes a geognn graph.

Accepted (``as_graph``):

- a PyG ``Data`` (or any object with ``pos`` and ``edge_index`` attributes read like one) in the
  layouts of the geometric-gnn-dojo and of geognn: ``pos`` [N, 3] (float32 or float64, Å),
  ``edge_index`` [2, E] (row 0 neighbour j, row 1 centre i, both directions present) and node
  labels as one of

  * ``z`` [N]: atomic numbers (>= 1), used as they are;
  * ``atoms`` [N]: categorical labels 0, 1, ... (the dojo's key);
  * ``x`` [N, C]: one-hot labels (the column of the 1 is the label).

  Categorical labels c become atomic numbers c + 1, so that every backbone's element embedding
  accepts them (0 is not an element); only equality of labels matters to the tests and the
  probes. ``z`` wins if several are present. ``cell`` ([3, 3] or [1, 3, 3], rows = lattice
  vectors), ``pbc`` ([3] or [1, 3]), ``edge_shift`` [E, 3] and ``natoms`` are optional: a graph
  without a cell is a molecule (zero cell, no periodicity, zero shifts); with a cell and no
  ``pbc``, the directions with a non-zero lattice vector are periodic, and a periodic graph
  needs ``edge_shift``. Every other key (``y``, ``batch`` of a one-graph batch, ...) is dropped.
- an ``ase.Atoms`` (or pymatgen structure) with ``cutoff`` (Å): its radius graph, via
  ``geognn.build_graph`` (float64).

The returned graph keeps the dtype of the input positions: the probes' noise floor depends on it
(a float32 graph is compared with float32-rounded isometric copies, see ``models.py``).
Anything else is a ValueError naming the argument and what is missing.
"""

from __future__ import annotations

import torch
from torch_geometric.data import Data

from .. import conventions as K

#: What ``as_graph`` accepts, for error messages.
ACCEPTED = (
    "a torch_geometric Data with pos [N,3], edge_index [2,E] and node labels as z [N], atoms [N] "
    "or one-hot x [N,C] (optional cell, pbc, edge_shift, natoms), or an ase.Atoms / pymatgen "
    "structure with a cutoff"
)


def as_graph(obj, name: str = "graph", cutoff: float | None = None) -> Data:
    """A geognn graph (``z``, ``pos``, ``cell`` [1,3,3], ``pbc`` [1,3], ``natoms`` [1],
    ``edge_index`` [2,E], ``edge_shift`` [E,3]) from any accepted input (module docstring).

    Args:
        obj: the input. name: how errors call it (e.g. "g1"). cutoff: Å, only for structures
            (``ase.Atoms``, pymatgen), whose graph is built here.
    """
    if not (hasattr(obj, "pos") and hasattr(obj, "edge_index")) and _is_structure(obj):
        if cutoff is None:
            raise ValueError(
                f"{name}: an {type(obj).__name__} has no edges of its own: pass a cutoff (Å) to build its radius graph"
            )
        from ..graph.build import build_graph

        return build_graph(obj, float(cutoff), dtype=torch.float64)
    if not (hasattr(obj, "pos") and hasattr(obj, "edge_index")) or isinstance(obj, (dict, tuple, list)):
        missing = [k for k in ("pos", "edge_index") if not hasattr(obj, k)] if not isinstance(obj, dict) else []
        what = f" (no {' and no '.join(missing)})" if missing else ""
        raise ValueError(f"{name}: got a {type(obj).__name__}{what}; expected {ACCEPTED}")
    return _from_data(obj, name)


def _is_structure(obj) -> bool:
    from ase import Atoms

    if isinstance(obj, Atoms):
        return True
    try:
        from pymatgen.core import IStructure, Molecule
    except ImportError:  # pragma: no cover - pymatgen is a dependency
        return False
    return isinstance(obj, (IStructure, Molecule))


def _get(obj, key):
    return getattr(obj, key, None)  # PyG's Data raises AttributeError for a missing key


def _from_data(obj, name: str) -> Data:
    pos, edge_index = _get(obj, K.POS), _get(obj, K.EDGE_INDEX)
    if pos is None or edge_index is None:
        missing = [k for k, v in ((K.POS, pos), (K.EDGE_INDEX, edge_index)) if v is None]
        raise ValueError(f"{name}: no {' and no '.join(missing)}; expected {ACCEPTED}")
    pos = torch.as_tensor(pos)
    if not torch.is_floating_point(pos) or pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"{name}: pos must be a floating [N, 3] tensor (Å), got {pos.dtype} {tuple(pos.shape)}")
    if not torch.isfinite(pos).all():
        raise ValueError(f"{name}: pos holds NaN or inf")
    n = pos.shape[0]
    batch = _get(obj, K.BATCH)
    if batch is not None and torch.as_tensor(batch).numel() and int(torch.as_tensor(batch).max()) > 0:
        raise ValueError(f"{name}: a batch of {int(torch.as_tensor(batch).max()) + 1} graphs; pass one graph")
    edge_index = torch.as_tensor(edge_index)
    if edge_index.dtype not in (torch.int32, torch.int64) or edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise ValueError(
            f"{name}: edge_index must be an integer [2, E] tensor (row 0 neighbour j, row 1 centre i), "
            f"got {edge_index.dtype} {tuple(edge_index.shape)}"
        )
    edge_index = edge_index.long()
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
        raise ValueError(f"{name}: edge_index refers to nodes outside 0..{n - 1}")
    z = _labels(obj, name, n)
    cell, pbc = _cell_and_pbc(obj, name, pos.dtype)
    shift = _get(obj, K.EDGE_SHIFT)
    num_edges = edge_index.shape[1]
    if shift is None:
        if bool(pbc.any()):
            raise ValueError(
                f"{name}: periodic (pbc {pbc.tolist()[0]}) but no edge_shift [E, 3]: the image of "
                "each neighbour is needed"
            )
        shift = torch.zeros(num_edges, 3, dtype=pos.dtype)
    shift = torch.as_tensor(shift)
    if shift.shape != (num_edges, 3):
        raise ValueError(f"{name}: edge_shift must be [E, 3] = [{num_edges}, 3], got {tuple(shift.shape)}")
    natoms = _get(obj, K.NATOMS)
    if natoms is not None and int(torch.as_tensor(natoms).reshape(-1)[0]) != n:
        raise ValueError(f"{name}: natoms says {int(torch.as_tensor(natoms).reshape(-1)[0])} but pos has {n} rows")
    return Data(
        z=z,
        pos=pos,
        cell=cell,
        pbc=pbc,
        natoms=torch.tensor([n]),
        edge_index=edge_index,
        edge_shift=shift.to(pos.dtype),
    )


def _labels(obj, name: str, n: int) -> torch.Tensor:
    z, atoms, x = _get(obj, K.Z), _get(obj, "atoms"), _get(obj, "x")
    if z is not None:
        z = torch.as_tensor(z)
        if z.shape != (n,) or torch.is_floating_point(z):
            raise ValueError(f"{name}: z must be [N] = [{n}] integer atomic numbers, got {z.dtype} {tuple(z.shape)}")
        if z.numel() and int(z.min()) < 1:
            raise ValueError(
                f"{name}: z holds {int(z.min())}: atomic numbers are >= 1 (pass categorical labels "
                "0, 1, ... as 'atoms' or one-hot 'x')"
            )
        return z.long()
    if atoms is not None:
        atoms = torch.as_tensor(atoms)
        if atoms.shape != (n,) or torch.is_floating_point(atoms) or (atoms.numel() and int(atoms.min()) < 0):
            raise ValueError(
                f"{name}: atoms must be [N] = [{n}] integer labels >= 0, got {atoms.dtype} {tuple(atoms.shape)}"
            )
        return atoms.long() + 1
    if x is not None:
        x = torch.as_tensor(x)
        if x.ndim == 1 and not torch.is_floating_point(x):
            raise ValueError(f"{name}: x is [N] integers: pass categorical labels as 'atoms', or one-hot x [N, C]")
        ones = (x == 1).sum(-1) if x.ndim == 2 else None
        if x.ndim != 2 or x.shape[0] != n or not bool(((x == 0) | (x == 1)).all()) or not bool((ones == 1).all()):
            raise ValueError(
                f"{name}: x must be one-hot node labels [N, C] = [{n}, C] (one 1 per row, zeros "
                f"elsewhere), got shape {tuple(x.shape)}; other node features are not labels"
            )
        return x.argmax(-1).long() + 1
    raise ValueError(f"{name}: no node labels: expected z [N] (atomic numbers), atoms [N] (labels) or one-hot x [N, C]")


def _cell_and_pbc(obj, name: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    cell, pbc = _get(obj, K.CELL), _get(obj, K.PBC)
    if cell is None:
        if pbc is not None and bool(torch.as_tensor(pbc).any()):
            raise ValueError(f"{name}: pbc is set but there is no cell [3, 3]")
        return torch.zeros(1, 3, 3, dtype=dtype), torch.zeros(1, 3, dtype=torch.bool)
    cell = torch.as_tensor(cell)
    if cell.shape not in ((3, 3), (1, 3, 3)) or not torch.is_floating_point(cell):
        raise ValueError(
            f"{name}: cell must be a floating [3, 3] or [1, 3, 3] tensor (rows = lattice vectors, Å), "
            f"got {cell.dtype} {tuple(cell.shape)}"
        )
    cell = cell.reshape(1, 3, 3).to(dtype)
    if pbc is None:
        pbc = cell[0].abs().sum(-1) > 0
    pbc = torch.as_tensor(pbc)
    if pbc.numel() != 3:
        raise ValueError(f"{name}: pbc must have 3 entries, got shape {tuple(pbc.shape)}")
    return cell, pbc.reshape(1, 3).bool()
