"""The one place where geognn's conventions are defined.

Everything else imports from here: units, the names of the keys a graph carries, the edge
direction, the cell convention and the stress sign. Each key is a constant with a comment
``(shape) | units | meaning``.

Units
-----
Lengths in Å, energies in eV, forces in eV/Å, stress in eV/Å³ (GPa only for display).
Loaders convert from their file's units explicitly with the constants below.

Cell
----
``cell[i]`` is the i-th lattice vector (rows), as in ASE and pymatgen. A graph stores it as
``[1, 3, 3]`` so that PyG concatenates cells of a batch into ``[B, 3, 3]``.

Edges (messages flow j -> i, PyG's default)
-------------------------------------------
``edge_index[0]`` is the neighbour j (source), ``edge_index[1]`` is the centre i (target).
``edge_shift[e]`` is the integer lattice image of j. The edge vector points from the centre
to the neighbour::

    r_ij = pos[j] + edge_shift[e] @ cell - pos[i]

Both directions of every pair are present. This is the reverse of NequIP's index roles,
and the negative of MACE's edge vector; port code from there deliberately.

Stress
------
ASE's sign and definition: ``sigma = (1/V) dE/d(epsilon)`` for a symmetric strain epsilon
applied to positions and cell, in eV/Å³. A compressed crystal (one that would lower its
energy by expanding) has negative diagonal stress; pressure is ``-trace(stress) / 3``.
"""

from __future__ import annotations

from typing import Final

# --------------------------------------------------------------------------- units
#: Hartree in eV, CODATA 2018 (``ase.units`` uses CODATA 2014: 27.21138602 eV).
HARTREE_TO_EV: Final[float] = 27.211386246
#: kcal/mol in eV (1 kcal/mol = 4184 J/mol / (N_A e)), CODATA 2018 constants.
KCAL_PER_MOL_TO_EV: Final[float] = 0.0433641
#: Bohr radius in Å, CODATA 2018.
BOHR_TO_ANGSTROM: Final[float] = 0.529177210903
#: 1 eV/Å³ in GPa (1 eV = 1.602176634e-19 J exactly, SI 2019; 1 Å³ = 1e-30 m³).
EV_PER_A3_TO_GPA: Final[float] = 160.2176634
#: meV per eV, for printing errors.
MEV_PER_EV: Final[float] = 1000.0

# --------------------------------------------------------------------------- graph-level keys
ENERGY: Final[str] = "energy"  # (B,) | eV | total energy of each structure
STRESS: Final[str] = "stress"  # (B, 3, 3) | eV/Å³ | ASE sign convention
CELL: Final[str] = "cell"  # (B, 3, 3) | Å | rows are lattice vectors; zeros for molecules
PBC: Final[str] = "pbc"  # (B, 3) bool | periodic along each lattice vector
NATOMS: Final[str] = "natoms"  # (B,) long | number of atoms in each structure

# --------------------------------------------------------------------------- node-level keys
Z: Final[str] = "z"  # (N,) long | atomic numbers
POS: Final[str] = "pos"  # (N, 3) | Å | Cartesian positions, as given (never wrapped)
FORCES: Final[str] = "forces"  # (N, 3) | eV/Å | -dE/dpos
TAGS: Final[str] = "tags"  # (N,) long | optional, OC20: 0 subsurface, 1 surface, 2 adsorbate
FIXED: Final[str] = "fixed"  # (N,) bool | optional, OC20: atom fixed in DFT
BATCH: Final[str] = "batch"  # (N,) long | structure index of each atom (set by collate)

# --------------------------------------------------------------------------- edge-level keys
EDGE_INDEX: Final[str] = "edge_index"  # (2, E) long | [0] = neighbour j, [1] = centre i
EDGE_SHIFT: Final[str] = "edge_shift"  # (E, 3) | integer image of j, stored as float

# --------------------------------------------------------------------------- model outputs
NODE_FEATURES: Final[str] = "node_features"  # (N, F) | invariant per-atom features
NODE_VECTORS: Final[str] = "node_vectors"  # (N, F', 3) | optional, equivariant backbones

#: Minimum distance (Å) between two atoms below which a structure is rejected as overlapping.
MIN_INTERATOMIC_DISTANCE: Final[float] = 0.1
