"""QM9 (Ramakrishnan et al., Sci. Data 1, 140022 (2014)) in its distributed layouts.

- the original ``dsgdb9nsd_*.xyz`` files (a folder of them), including Mathematica-style
  exponents (``1.2*^-6``);
- the qm9pack CSV layout (one row per molecule; the PyPI package ``qm9pack`` ships all of QM9
  in it, and ``data/qm9/`` ships a subset).

Each molecule becomes an ``ase.Atoms`` whose ``info`` holds ``qm9_id`` and every property of
``QM9_PROPERTIES`` in geognn units (energies converted from Hartree to eV with CODATA 2018).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

import numpy as np
from ase import Atoms

from ..conventions import HARTREE_TO_EV
from ..io import StructureError


class QM9Property(NamedTuple):
    column: str  # qm9pack CSV column
    xyz_field: int  # position on line 2 of the xyz file, after "gdb <id>"
    unit: str  # unit after conversion
    factor: float  # file unit -> unit


#: The 15 properties of QM9 files, by geognn name (PyG's names where they exist).
QM9_PROPERTIES: dict[str, QM9Property] = {
    "A": QM9Property("RotA_GHz", 0, "GHz", 1.0),
    "B": QM9Property("RotB_GHz", 1, "GHz", 1.0),
    "C": QM9Property("RotC_GHz", 2, "GHz", 1.0),
    "mu": QM9Property("Dipole_debye", 3, "D", 1.0),
    "alpha": QM9Property("Polarizability_bohr3", 4, "a0^3", 1.0),
    "homo": QM9Property("HOMO_au", 5, "eV", HARTREE_TO_EV),
    "lumo": QM9Property("LUMO_au", 6, "eV", HARTREE_TO_EV),
    "gap": QM9Property("HOMO_LUMO_gap_au", 7, "eV", HARTREE_TO_EV),
    "r2": QM9Property("R2_bohr2", 8, "a0^2", 1.0),
    "zpve": QM9Property("ZPVE_au", 9, "eV", HARTREE_TO_EV),
    "U0": QM9Property("InternalEnergy_0K_au", 10, "eV", HARTREE_TO_EV),
    "U": QM9Property("InternalEnergy_298K_au", 11, "eV", HARTREE_TO_EV),
    "H": QM9Property("Enthalphy_298K_au", 12, "eV", HARTREE_TO_EV),  # sic, qm9pack's spelling
    "G": QM9Property("GibbsFreeEnergy_298K_au", 13, "eV", HARTREE_TO_EV),
    "Cv": QM9Property("Heatcapacity_Cv_cal_mol_K", 14, "cal/(mol K)", 1.0),
}


def _float(text: str) -> float:
    """Parse a QM9 number, including Mathematica exponents ('1.5*^-6') and '0.'."""
    return float(text.replace("*^", "e"))


def read_qm9_xyz(path: str | Path) -> Atoms:
    """One molecule from an original ``dsgdb9nsd_NNNNNN.xyz`` file (coordinates in Å)."""
    path = Path(path)
    lines = path.read_text().splitlines()
    try:
        n = int(lines[0])
        header = lines[1].split()
        if header[0] != "gdb":
            raise ValueError(f"line 2 should start with 'gdb', got {header[0]!r}")
        qm9_id = int(header[1])
        values = [_float(v) for v in header[2:]]
        symbols, positions = [], []
        for line in lines[2:2 + n]:
            parts = line.split()
            symbols.append(parts[0])
            positions.append([_float(v) for v in parts[1:4]])
    except (IndexError, ValueError) as exc:
        raise StructureError(str(path), f"not a QM9 xyz file ({exc})") from exc
    atoms = Atoms(symbols=symbols, positions=positions)
    atoms.info.update(source=str(path), qm9_id=qm9_id)
    for name, prop in QM9_PROPERTIES.items():
        atoms.info[name] = values[prop.xyz_field] * prop.factor
    return atoms


def read_qm9pack_csv(path: str | Path, limit: int | None = None) -> list[Atoms]:
    """Molecules from a qm9pack-layout CSV (columns ``Index``, ``Elements``, ``XYZ_Ang``, ...)."""
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, nrows=limit)
    except Exception as exc:
        raise StructureError(str(path), f"could not read CSV ({exc})") from exc
    needed = {"Index", "Elements", "XYZ_Ang"} | {p.column for p in QM9_PROPERTIES.values()}
    missing = sorted(needed - set(table.columns))
    if missing:
        raise StructureError(str(path), f"not a qm9pack CSV: missing columns {missing}")
    molecules = []
    for row in table.itertuples(index=False):
        row = row._asdict()
        # literal_eval, not json: values like '0.' are Python but not JSON
        symbols = ast.literal_eval(row["Elements"])
        positions = np.asarray(ast.literal_eval(row["XYZ_Ang"]), dtype=float)
        atoms = Atoms(symbols=symbols, positions=positions)
        atoms.info.update(source=f"{path}@QM9:{int(row['Index'])}", qm9_id=int(row["Index"]))
        for name, prop in QM9_PROPERTIES.items():
            atoms.info[name] = float(row[prop.column]) * prop.factor
        molecules.append(atoms)
    return molecules


def load_qm9(path: str | Path, limit: int | None = None) -> list[Atoms]:
    """QM9 molecules from a qm9pack CSV file or a folder of original xyz files."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("dsgdb9nsd_*.xyz"))
        if not files:
            raise StructureError(str(path), "folder holds no dsgdb9nsd_*.xyz files")
        return [read_qm9_xyz(f) for f in files[:limit]]
    if path.suffix.lower() == ".csv":
        return read_qm9pack_csv(path, limit)
    raise StructureError(str(path), "expected a qm9pack .csv file or a folder of dsgdb9nsd_*.xyz files")
