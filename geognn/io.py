"""Reading structures from files and converting between ASE and pymatgen.

``read_structures`` is the single entry point: it takes files or folders (read recursively)
and returns ``ase.Atoms`` objects, each with ``atoms.info["source"]`` naming the file (and
the frame, for multi-frame files) so that later errors can say where a structure came from.

Parsing is left to ASE and pymatgen; this module decides which reader to use, rejects what
cannot be trusted (partial occupancies, unknown elements, NaN coordinates, empty files) and
turns every failure into a :class:`StructureError` that names the file and the problem.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from .conventions import MIN_INTERATOMIC_DISTANCE

PathLike = Union[str, os.PathLike]

#: File suffixes (lower case) that read_structures recognises, with the ASE format to use.
#: CIF files go through pymatgen (symmetry expansion, occupancy checks), the rest through ASE.
SUFFIX_FORMATS = {
    ".cif": "cif",
    ".vasp": "vasp",
    ".poscar": "vasp",
    ".xyz": "extxyz",
    ".extxyz": "extxyz",
    ".db": "db",
    ".traj": "traj",
    ".json": "json",
}
#: VASP files are often named without a suffix.
VASP_NAME_PREFIXES = ("POSCAR", "CONTCAR")


class StructureError(ValueError):
    """A structure that cannot be read or used; the message names its source and the problem."""

    def __init__(self, source, problem: str):
        self.source = str(source) if source is not None else "<structure>"
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


def source_of(atoms: Atoms) -> str:
    """The name used in error messages for ``atoms``: its file (and frame), else a generic label."""
    return str(atoms.info.get("source", f"<{atoms.get_chemical_formula() or 'empty'} structure>"))


class LazySource:
    """``source_of(atoms)``, computed only when formatted (errors and warnings are rare; the
    chemical formula of the fallback label is not free to build for every graph)."""

    __slots__ = ("atoms",)

    def __init__(self, atoms: Atoms):
        self.atoms = atoms

    def __str__(self) -> str:
        return source_of(self.atoms)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


# --------------------------------------------------------------------------- file discovery
def format_for(path: Path) -> str | None:
    """ASE/pymatgen format for ``path`` from its suffix or VASP-style name, or None if unknown."""
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None and path.name.upper().startswith(VASP_NAME_PREFIXES):
        fmt = "vasp"
    return fmt


def expand_paths(paths: PathLike | Sequence[PathLike]) -> list[Path]:
    """Files named by ``paths``; folders are searched recursively for readable suffixes.

    Raises StructureError for a path that does not exist or a folder without structure files.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and format_for(f) is not None)
            if not found:
                raise StructureError(
                    str(p),
                    "folder contains no structure files "
                    f"(looked for {', '.join(sorted(SUFFIX_FORMATS))}, POSCAR*, CONTCAR*)",
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise StructureError(str(p), "no such file or folder")
    return files


# --------------------------------------------------------------------------- readers
def read_structures(
    path_or_paths: PathLike | Sequence[PathLike], *, allow_partial_occupancy: bool = False
) -> list[Atoms]:
    """Read every structure in the given files and folders (recursively).

    Formats: CIF (via pymatgen, symmetry operations expanded to the full cell), POSCAR/CONTCAR/
    .vasp, .xyz/.extxyz (all frames, with energies/forces when present), ASE .db/.json
    databases and .traj trajectories (all rows/frames).

    Each returned ``Atoms`` has ``info["source"]`` = ``"file"`` or ``"file@k"`` for the k-th
    frame of a multi-structure file. Raises :class:`StructureError` on the first file that
    cannot be read; use :func:`read_file` per file to collect errors instead.

    ``allow_partial_occupancy``: CIF sites with occupancy < 1 are rejected by default; with
    this flag they are kept as fully occupied sites of the majority species (and a warning says so).
    """
    out: list[Atoms] = []
    for f in expand_paths(path_or_paths):
        out.extend(read_file(f, allow_partial_occupancy=allow_partial_occupancy))
    return out


def read_file(path: PathLike, *, allow_partial_occupancy: bool = False) -> list[Atoms]:
    """All structures in one file, validated; raises StructureError naming the file."""
    path = Path(path)
    fmt = format_for(path)
    if fmt is None:
        raise StructureError(
            str(path),
            f"unknown file type '{path.suffix or path.name}' "
            f"(known: {', '.join(sorted(SUFFIX_FORMATS))}, POSCAR*, CONTCAR*)",
        )
    if not path.is_file():
        raise StructureError(str(path), "no such file")
    if path.stat().st_size == 0:
        raise StructureError(str(path), "file is empty")
    try:
        if fmt == "cif":
            frames = _read_cif(path, allow_partial_occupancy)
        else:
            frames = _read_ase(path, fmt)
    except StructureError:
        raise
    except KeyError as exc:  # ASE's and pymatgen's readers raise KeyError('Xx') for unknown symbols
        key = exc.args[0] if exc.args else None
        if isinstance(key, str) and key[:1].isalpha() and len(key) <= 3 and key not in chemical_symbols:
            raise StructureError(str(path), f"unknown element '{key}'") from exc
        raise StructureError(str(path), f"could not read as {fmt}: {_describe(exc)}") from exc
    except Exception as exc:  # parsers raise anything from ValueError to struct.error
        raise StructureError(
            str(path), f"could not read as {fmt}, malformed or truncated file? ({_describe(exc)})"
        ) from exc
    if not frames:
        raise StructureError(str(path), "file holds no structures")
    for k, atoms in enumerate(frames):
        atoms.info["source"] = str(path) if len(frames) == 1 else f"{path}@{k}"
        validate_atoms(atoms)
    return frames


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_ase(path: Path, fmt: str) -> list[Atoms]:
    import ase.io

    frames = ase.io.read(str(path), index=":", format=fmt)
    return list(frames) if isinstance(frames, list) else [frames]


def _read_cif(path: Path, allow_partial_occupancy: bool) -> list[Atoms]:
    from pymatgen.core.periodic_table import DummySpecies
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parser = CifParser(str(path), occupancy_tolerance=1.0)
            structures = parser.parse_structures(primitive=False)
        except KeyError:
            raise  # an unknown element symbol; read_file names it
        except Exception as exc:  # pymatgen raises ValueError, ZeroDivisionError, IndexError, ...
            notes = "; ".join(str(w.message).splitlines()[0] for w in caught)
            raise StructureError(
                str(path), f"malformed or truncated CIF ({_describe(exc)})" + (f" [{notes}]" if notes else "")
            ) from exc
    out = []
    for s in structures:
        dummies = sorted({str(sp.symbol) for sp in s.composition.elements if isinstance(sp, DummySpecies)})
        if dummies:  # pymatgen turns unknown symbols into DummySpecies
            raise StructureError(str(path), f"unknown element '{dummies[0]}'")
        mismatch = parser.check(s)  # compares the sites with _chemical_formula_sum, when given
        if mismatch:
            raise StructureError(
                str(path),
                f"atoms do not match the CIF's own formula ({mismatch.strip()}); "
                "the file may be truncated or lack atoms such as hydrogens",
            )
        if not s.is_ordered:
            disordered = [i for i, site in enumerate(s) if not site.is_ordered]
            if not allow_partial_occupancy:
                raise StructureError(
                    str(path),
                    f"partial occupancies on {len(disordered)} site(s) "
                    f"(first: site {disordered[0]}, {s[disordered[0]].species}); "
                    "order the structure first, or pass allow_partial_occupancy=True "
                    "(geognn predict --allow-partial-occupancy)",
                )
            warnings.warn(
                f"{path}: {len(disordered)} partially occupied site(s) replaced by their majority species", stacklevel=3
            )
            s = s.copy()
            for i in disordered:
                majority = max(s[i].species.items(), key=lambda kv: kv[1])[0]
                s.replace(i, majority)
        out.append(to_atoms(s))
    return out


# --------------------------------------------------------------------------- conversions
def to_atoms(structure) -> Atoms:
    """``ase.Atoms`` from ``ase.Atoms`` (returned as is), pymatgen ``Structure`` or ``Molecule``."""
    if isinstance(structure, Atoms):
        return structure
    try:
        from pymatgen.core import IMolecule, IStructure, Molecule
    except ImportError:  # pragma: no cover - pymatgen is a dependency
        IStructure = Molecule = IMolecule = ()  # type: ignore
    if isinstance(structure, (IStructure, IMolecule, Molecule)):
        if not structure.is_ordered:
            raise StructureError(None, "pymatgen structure has partial occupancies; order it first")
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = AseAtomsAdaptor.get_atoms(structure)
        # keep only what geognn uses: pymatgen site properties would become arrays of objects
        plain = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        plain.info.update({k: v for k, v in atoms.info.items() if isinstance(v, (str, int, float))})
        return plain
    raise TypeError(f"expected ase.Atoms or a pymatgen Structure/Molecule, got {type(structure).__name__}")


def to_pymatgen(atoms: Atoms):
    """pymatgen ``Structure`` (periodic in all directions) or ``Molecule`` (no periodicity)."""
    from pymatgen.io.ase import AseAtomsAdaptor

    if atoms.pbc.all():
        return AseAtomsAdaptor.get_structure(atoms)
    if not atoms.pbc.any():
        return AseAtomsAdaptor.get_molecule(atoms)
    raise StructureError(source_of(atoms), f"pymatgen has no type for mixed periodicity pbc={atoms.pbc.tolist()}")


# --------------------------------------------------------------------------- validation
def validate_atoms(atoms: Atoms, *, check_overlap: bool = True) -> None:
    """Raise StructureError for a structure no model should see.

    Checks: not empty; atomic numbers in 1..118; finite positions and cell; a periodic
    direction has a non-zero lattice vector and a fully periodic cell is not singular; no two
    atoms (or periodic images) closer than MIN_INTERATOMIC_DISTANCE Å.
    """
    src = LazySource(atoms)
    n = len(atoms)
    if n == 0:
        raise StructureError(src, "empty structure (no atoms)")
    z = atoms.numbers
    bad = np.flatnonzero((z < 1) | (z > 118))
    if bad.size:
        raise StructureError(src, f"unknown element (atomic number {int(z[bad[0]])}) at atom {int(bad[0])}")
    pos = atoms.positions
    if not np.isfinite(pos).all():
        i = int(np.flatnonzero(~np.isfinite(pos).all(axis=1))[0])
        raise StructureError(src, f"non-finite (NaN or inf) coordinates at atom {i}")
    cell = np.asarray(atoms.cell[:], dtype=float)
    if not np.isfinite(cell).all():
        raise StructureError(src, "non-finite (NaN or inf) lattice vectors")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    for d in np.flatnonzero(pbc):
        if np.linalg.norm(cell[d]) < 1e-8:
            raise StructureError(src, f"periodic along lattice vector {int(d)} but that vector is zero")
    if pbc.any():
        # all periodic directions must be linearly independent (a singular cell folds space)
        # measured relative to the vector lengths: 1 for orthogonal vectors, 0 for dependent ones
        periodic = cell[pbc]
        lengths = np.prod(np.linalg.norm(periodic, axis=1))
        if periodic.shape[0] == 3:
            independence = abs(np.linalg.det(periodic)) / lengths
        elif periodic.shape[0] == 2:
            independence = np.linalg.norm(np.cross(periodic[0], periodic[1])) / lengths
        else:
            independence = 1.0
        if independence < 1e-6:
            raise StructureError(
                src, f"singular cell: periodic lattice vectors are linearly dependent (cell={cell.round(4).tolist()})"
            )
    if check_overlap:
        from .graph.neighbours import neighbour_list

        i, j, S, d = neighbour_list(pos, cell, pbc, MIN_INTERATOMIC_DISTANCE, with_distances=True)
        raise_if_overlapping(src, i, j, S, d)


def raise_if_overlapping(source: str, i: np.ndarray, j: np.ndarray, S: np.ndarray, d: np.ndarray) -> None:
    """StructureError if any pair (i, j, image S) of a neighbour list is closer than MIN_INTERATOMIC_DISTANCE."""
    close = np.flatnonzero(d < MIN_INTERATOMIC_DISTANCE)
    if close.size:
        k = close[np.argmin(d[close])]
        a, b, shift = int(i[k]), int(j[k]), S[k].tolist()
        if a == b:
            what = f"atom {a} and its own periodic image {shift} are"
        elif any(shift):
            what = f"atom {a} and the periodic image {shift} of atom {b} are"
        else:
            what = f"atoms {a} and {b} are"
        raise StructureError(
            source, f"overlapping atoms: {what} {d[k]:.3g} Å apart (minimum {MIN_INTERATOMIC_DISTANCE} Å)"
        )
