"""QM9 (Ramakrishnan et al., Sci. Data 1, 140022 (2014)) in its distributed layouts.

Sources (``open_dataset("qm9", root)``, or ``QM9Dataset(root)``):

- a folder of the original ``dsgdb9nsd_NNNNNN.xyz`` files, or the distributed tarball
  ``dsgdb9nsd.xyz.tar.bz2`` (read member by member, not unpacked). Mathematica-style exponents
  (``7.9254*^-6``) are parsed;
- the qm9pack CSV layout (one ``.csv`` file, or a folder of ``qm9_part*.csv``), which holds the
  130,831 characterised molecules only;
- an ASE database with schnetpack's property names (``energy_U0``, ... in ``row.data``) or
  geognn's (``U0``, ...), units from the database's ``_property_unit_dict`` metadata when given,
  else QM9's own (Hartree, D, a0^3, GHz, cal/mol/K).

The 3,054 "uncharacterised" molecules (whose geometry failed QM9's consistency check) are
excluded by default, as PyG and schnetpack do. Their ids come from QM9's ``uncharacterized.txt``
(distributed next to the tarball on figshare): found as ``uncharacterized.txt`` in the source
folder or next to the source file, or given with ``uncharacterized=PATH``. An xyz source without
that list is an error unless ``keep_uncharacterized=True``.

Targets: the 19 of ``QM9_TARGETS`` (PyG's set): the 15 file properties, energies converted from
Hartree to eV with CODATA 2018 (``conventions.HARTREE_TO_EV``), plus the atomisation energies
``U0_atom``, ``U_atom``, ``H_atom``, ``G_atom`` = energy - sum of the free-atom energies of QM9's
``atomref`` table (``QM9_ATOMREF_HARTREE``). ``energy_unit`` changes the unit of every energy
target (default eV).

Processing (parsing, validation) runs once per source; the result (z, positions, the 19 targets
in eV, ids and the bad molecules) is cached as tensors, see ``geognn.datasets.cache``.
"""

from __future__ import annotations

import ast
import re
import tarfile
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
from ase import Atoms
from tqdm.auto import tqdm

from ..conventions import HARTREE_TO_EV
from ..io import StructureError, validate_atoms
from . import cache as _cache
from .base import StructureDataset, check_on_error, energy_factor, warn_skipped


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

#: Free-atom energies (Hartree) of QM9's atomref table (B3LYP/6-31G(2df,p)), by atomic number.
QM9_ATOMREF_HARTREE: dict[str, dict[int, float]] = {
    "U0": {1: -0.500273, 6: -37.846772, 7: -54.583861, 8: -75.064579, 9: -99.718730},
    "U": {1: -0.498857, 6: -37.845355, 7: -54.582445, 8: -75.063163, 9: -99.717314},
    "H": {1: -0.497912, 6: -37.844411, 7: -54.581501, 8: -75.062219, 9: -99.716370},
    "G": {1: -0.510927, 6: -37.861317, 7: -54.598897, 8: -75.079532, 9: -99.733544},
}

#: Atomisation targets and the energy they are computed from.
ATOMISATION_TARGETS = {"U0_atom": "U0", "U_atom": "U", "H_atom": "H", "G_atom": "G"}

#: All 19 targets (PyG's order) -> unit with the default energy_unit="eV".
QM9_TARGETS: dict[str, str] = {
    **{
        name: QM9_PROPERTIES[name].unit
        for name in ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "Cv")
    },
    **{name: "eV" for name in ATOMISATION_TARGETS},
    **{name: QM9_PROPERTIES[name].unit for name in ("A", "B", "C")},
}
_TARGET_NAMES = list(QM9_TARGETS)
ENERGY_TARGETS = frozenset(name for name, unit in QM9_TARGETS.items() if unit == "eV")

#: schnetpack's names for the QM9 properties in its ASE databases.
SCHNETPACK_NAMES = {
    "rotational_constant_A": "A",
    "rotational_constant_B": "B",
    "rotational_constant_C": "C",
    "dipole_moment": "mu",
    "isotropic_polarizability": "alpha",
    "homo": "homo",
    "lumo": "lumo",
    "gap": "gap",
    "electronic_spatial_extent": "r2",
    "zpve": "zpve",
    "energy_U0": "U0",
    "energy_U": "U",
    "enthalpy_H": "H",
    "free_energy": "G",
    "heat_capacity": "Cv",
}
#: Unit strings of database metadata -> factor to geognn units, for the properties in eV.
_DB_ENERGY_UNITS = {"Ha": HARTREE_TO_EV, "Hartree": HARTREE_TO_EV, "hartree": HARTREE_TO_EV, "eV": 1.0}

_XYZ_NAME = re.compile(r"dsgdb9nsd_(\d+)\.xyz$")


def _float(text: str) -> float:
    """Parse a QM9 number, including Mathematica exponents ('1.5*^-6') and '0.'."""
    return float(text.replace("*^", "e"))


# --------------------------------------------------------------------------- single-record readers
def parse_qm9_xyz(text: str, source: str) -> Atoms:
    """One molecule from the text of an original QM9 xyz file; ``source`` names it in errors."""
    lines = text.splitlines()
    try:
        n = int(lines[0])
        header = lines[1].split()
        if header[0] != "gdb":
            raise ValueError(f"line 2 should start with 'gdb', got {header[0]!r}")
        qm9_id = int(header[1])
        values = [_float(v) for v in header[2:]]
        if len(values) != len(QM9_PROPERTIES):
            raise ValueError(f"line 2 has {len(values)} properties, expected {len(QM9_PROPERTIES)}")
        symbols, positions = [], []
        for line in lines[2 : 2 + n]:
            parts = line.split()
            symbols.append(parts[0])
            positions.append([_float(v) for v in parts[1:4]])
        if len(symbols) != n:
            raise ValueError(f"{n} atoms announced, {len(symbols)} found (truncated file?)")
        atoms = Atoms(symbols=symbols, positions=positions)
    except (IndexError, ValueError, KeyError) as exc:
        raise StructureError(source, f"not a QM9 xyz file ({exc})") from exc
    atoms.info.update(source=source, qm9_id=qm9_id)
    for name, prop in QM9_PROPERTIES.items():
        atoms.info[name] = values[prop.xyz_field] * prop.factor
    return atoms


def read_qm9_xyz(path: str | Path) -> Atoms:
    """One molecule from an original ``dsgdb9nsd_NNNNNN.xyz`` file (coordinates in Å)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise StructureError(str(path), f"cannot read ({exc})") from exc
    return parse_qm9_xyz(text, str(path))


def _csv_row_atoms(row: dict, source: str) -> Atoms:
    try:
        # literal_eval, not json: values like '0.' are Python but not JSON
        symbols = ast.literal_eval(row["Elements"])
        positions = np.asarray(ast.literal_eval(row["XYZ_Ang"]), dtype=float).reshape(-1, 3)
        atoms = Atoms(symbols=symbols, positions=positions)
        values = {name: float(row[prop.column]) * prop.factor for name, prop in QM9_PROPERTIES.items()}
    except (ValueError, SyntaxError, KeyError, TypeError) as exc:
        raise StructureError(source, f"malformed qm9pack row ({type(exc).__name__}: {exc})") from exc
    atoms.info.update(source=source, qm9_id=int(row["Index"]), **values)
    return atoms


def read_qm9pack_csv(path: str | Path, limit: int | None = None) -> list[Atoms]:
    """Molecules from a qm9pack-layout CSV (columns ``Index``, ``Elements``, ``XYZ_Ang``, ...)."""
    return [make() for _, make in _iter_csv(Path(path), limit)]


def _iter_csv(path: Path, limit: int | None = None):
    import pandas as pd

    try:
        table = pd.read_csv(path, nrows=limit)
    except Exception as exc:
        raise StructureError(str(path), f"could not read CSV ({exc})") from exc
    needed = {"Index", "Elements", "XYZ_Ang"} | {p.column for p in QM9_PROPERTIES.values()}
    missing = sorted(needed - set(table.columns))
    if missing:
        raise StructureError(str(path), f"not a qm9pack CSV: missing columns {missing}")
    for row in table.to_dict("records"):
        source = f"{path}@QM9:{row['Index']}"
        yield str(row["Index"]), (lambda row=row, source=source: _csv_row_atoms(row, source))


def load_qm9(path: str | Path, limit: int | None = None) -> list[Atoms]:
    """QM9 molecules from a qm9pack CSV file or a folder of original xyz files (no cache, no
    exclusion of uncharacterised molecules: the pre-dataset interface, kept for old callers)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("dsgdb9nsd_*.xyz"))
        if not files:
            raise StructureError(str(path), "folder holds no dsgdb9nsd_*.xyz files")
        return [read_qm9_xyz(f) for f in files[:limit]]
    if path.suffix.lower() == ".csv":
        return read_qm9pack_csv(path, limit)
    raise StructureError(str(path), "expected a qm9pack .csv file or a folder of dsgdb9nsd_*.xyz files")


def read_uncharacterized(path: str | Path) -> set[int]:
    """QM9 ids listed in ``uncharacterized.txt`` (each data line starts with the 1-based id)."""
    ids = set()
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if parts and parts[0].isdigit():
            ids.add(int(parts[0]))
    if not ids:
        raise StructureError(str(path), "no molecule ids found in the uncharacterised list")
    return ids


# --------------------------------------------------------------------------- sources
def _source_kind(root: Path) -> str:
    name = root.name.lower()
    if root.is_dir():
        if next(root.glob("dsgdb9nsd_*.xyz"), None) is not None:
            return "xyz-folder"
        if next(root.glob("*.csv"), None) is not None:
            return "csv-folder"
        raise StructureError(str(root), "folder holds neither dsgdb9nsd_*.xyz files nor qm9pack *.csv files")
    if name.endswith((".tar", ".tar.bz2", ".tbz2", ".tar.gz", ".tgz", ".tar.xz")):
        return "tarball"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".db", ".json")):
        return "db"
    raise StructureError(
        str(root),
        "not a QM9 source: expected a folder of dsgdb9nsd_*.xyz files, the "
        "dsgdb9nsd.xyz.tar.bz2 tarball, a qm9pack .csv (or a folder of them) or an ASE .db",
    )


def _source_files(root: Path, kind: str) -> list[Path] | None:
    if kind == "xyz-folder":
        return sorted(root.glob("dsgdb9nsd_*.xyz"))
    if kind == "csv-folder":
        return sorted(root.glob("*.csv"))
    return None


def _iter_records(root: Path, kind: str) -> Iterator[tuple[str, Callable[[], Atoms]]]:
    """``(id, make)`` per molecule; ``make()`` parses it (raising StructureError if bad)."""
    if kind == "xyz-folder":
        for f in _source_files(root, kind):
            m = _XYZ_NAME.search(f.name)
            yield str(int(m.group(1))), (lambda f=f: read_qm9_xyz(f))
    elif kind == "csv-folder":
        for f in _source_files(root, kind):
            yield from _iter_csv(f)
    elif kind == "csv":
        yield from _iter_csv(root)
    elif kind == "tarball":
        try:
            with tarfile.open(root, "r:*") as tar:
                for member in tar:
                    m = _XYZ_NAME.search(member.name)
                    if not member.isfile() or m is None:
                        continue
                    data = tar.extractfile(member).read()
                    source = f"{root}:{member.name}"
                    yield (
                        str(int(m.group(1))),
                        (lambda data=data, source=source: parse_qm9_xyz(data.decode("utf-8", "replace"), source)),
                    )
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise StructureError(str(root), f"broken or truncated tarball ({exc})") from exc
    elif kind == "db":
        yield from _iter_db(root)


def _iter_db(root: Path):
    import ase.db

    try:
        db = ase.db.connect(str(root))
        units = (db.metadata or {}).get("_property_unit_dict", {})
        rows = list(db.select())
    except Exception as exc:
        raise StructureError(str(root), f"could not open as an ASE database ({exc})") from exc

    def make(row):
        source = f"{root}@id={row.id}"
        atoms = row.toatoms()
        found = {}
        for store in (row.key_value_pairs, row.get("data", {}) or {}):
            for key, value in store.items():
                name = SCHNETPACK_NAMES.get(key, key)
                if name in QM9_PROPERTIES:
                    unit = units.get(key)
                    prop = QM9_PROPERTIES[name]
                    if prop.unit == "eV":
                        factor = _DB_ENERGY_UNITS.get(unit, prop.factor) if unit else prop.factor
                    else:
                        factor = 1.0
                    found[name] = float(np.asarray(value, dtype=float).reshape(-1)[0]) * factor
        missing = sorted(set(QM9_PROPERTIES) - set(found))
        if missing:
            raise StructureError(source, f"row lacks QM9 properties {missing}")
        qm9_id = int(row.key_value_pairs.get("qm9_id", row.key_value_pairs.get("index", row.id)))
        atoms = Atoms(numbers=atoms.numbers, positions=atoms.positions)
        atoms.info.update(source=source, qm9_id=qm9_id, **found)
        return atoms

    for row in rows:
        qid = row.key_value_pairs.get("qm9_id", row.key_value_pairs.get("index", row.id))
        yield str(qid), (lambda row=row: make(row))


def _find_uncharacterized(root: Path) -> Path | None:
    for folder in ([root] if root.is_dir() else []) + [root.parent]:
        candidate = folder / "uncharacterized.txt"
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------- processing
def _atomisation(z: np.ndarray, energy_ev: float, reference: str) -> float:
    refs = QM9_ATOMREF_HARTREE[reference]
    try:
        return energy_ev - HARTREE_TO_EV * sum(refs[int(k)] for k in z)
    except KeyError as exc:
        raise StructureError(None, f"no QM9 atom reference energy for element Z={exc.args[0]}") from None


def process_qm9(root: Path, kind: str, exclude: set[int] | None) -> dict:
    """Parse and validate every molecule of a source; tensors for the cache (targets in eV)."""
    zs, poss, natoms, targets, ids, bad, excluded = [], [], [], [], [], [], 0
    for item_id, make in tqdm(
        _iter_records(root, kind), desc=f"processing QM9 from {root.name}", unit="mol", mininterval=2.0
    ):
        try:
            atoms = make()
            if exclude and atoms.info["qm9_id"] in exclude:
                excluded += 1
                continue
            validate_atoms(atoms)
            info = atoms.info
            row = [
                info[name]
                if name in QM9_PROPERTIES
                else _atomisation(atoms.numbers, info[ATOMISATION_TARGETS[name]], ATOMISATION_TARGETS[name])
                for name in _TARGET_NAMES
            ]
        except StructureError as exc:
            bad.append([item_id, str(exc) if exc.source != "<structure>" else exc.problem])
            continue
        zs.append(atoms.numbers.astype(np.int64))
        poss.append(atoms.positions)
        natoms.append(len(atoms))
        targets.append(row)
        ids.append(int(atoms.info["qm9_id"]))
    return {
        "version": _cache.CACHE_VERSION,
        "z": torch.from_numpy(np.concatenate(zs) if zs else np.zeros(0, np.int64)),
        "pos": torch.from_numpy(np.concatenate(poss) if poss else np.zeros((0, 3))),
        "natoms": torch.tensor(natoms, dtype=torch.long),
        "targets": torch.tensor(targets, dtype=torch.float64).reshape(-1, len(_TARGET_NAMES)),
        "target_names": list(_TARGET_NAMES),
        "qm9_id": torch.tensor(ids, dtype=torch.long),
        "bad": bad,
        "excluded": excluded,
    }


class QM9Dataset(StructureDataset):
    """QM9 molecules as ``ase.Atoms`` (no PBC, Å) with all 19 targets in ``info``.

    Args:
        root: a QM9 source (see the module docstring).
        target: which target is also copied to ``info["energy"]`` (default ``"U0"``).
        energy_unit: unit of every energy target (``"eV"`` default, ``"meV"``, ``"Hartree"``,
            ``"kcal/mol"``, ...); ``targets`` says which unit each label has.
        keep_uncharacterized: keep the 3,054 uncharacterised molecules (default: exclude them).
        uncharacterized: path of QM9's ``uncharacterized.txt`` (default: looked for next to ``root``).
        on_error: "raise" (a bad molecule stops with its id) or "skip" (recorded in ``skipped``).
        limit: keep only the first ``limit`` molecules (in source order). The whole source is
            still processed (once; the cache holds all of it).
        cache: use and write the processed cache (default True); ``cache_dir`` (default
            ``geognn.datasets.cache.default_cache_dir()``).

    ``ids[i]`` is the QM9 index as a string (``"5005"`` for ``dsgdb9nsd_005005.xyz``).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        target: str | None = None,
        energy_unit: str = "eV",
        keep_uncharacterized: bool = False,
        uncharacterized: str | Path | None = None,
        on_error: str = "raise",
        limit: int | None = None,
        cache: bool = True,
        cache_dir: str | Path | None = None,
    ):
        root = Path(root)
        check_on_error(on_error)
        target = target or "U0"
        if target not in QM9_TARGETS:
            raise ValueError(f"unknown QM9 target {target!r}; choose one of {list(QM9_TARGETS)}")
        self._to_unit = 1.0 / energy_factor(energy_unit)
        self.target = target
        self.root = root
        kind = _source_kind(root)

        exclude: set[int] | None = None
        list_fp = None
        if not keep_uncharacterized:
            list_path = Path(uncharacterized) if uncharacterized else _find_uncharacterized(root)
            if list_path is not None:
                exclude = read_uncharacterized(list_path)
                list_fp = _cache.fingerprint(list_path)
            elif kind in ("xyz-folder", "tarball"):
                raise StructureError(
                    str(root),
                    "cannot exclude QM9's 3,054 uncharacterised molecules: no "
                    "uncharacterized.txt next to the xyz files. Download it with them "
                    "(figshare, DOI 10.6084/m9.figshare.978904) and pass "
                    "uncharacterized=PATH, or keep them with keep_uncharacterized=True",
                )
            # qm9pack CSVs hold only characterised molecules; a database is taken as it is

        payload = None
        cache_path = None
        if cache:
            source_fp = _cache.fingerprint(root, _source_files(root, kind))
            options = {"exclude": list_fp, "keep_uncharacterized": keep_uncharacterized}
            cache_path = _cache.cache_file("qm9", source_fp, options, cache_dir)
            payload = _cache.load(cache_path)
        self.cache_path = cache_path
        self.from_cache = payload is not None
        if payload is None:
            payload = process_qm9(root, kind, exclude)
            if cache:
                _cache.save(cache_path, payload)

        bad = [tuple(b) for b in payload["bad"]]
        if bad and on_error == "raise":
            item_id, problem = bad[0]
            raise StructureError(
                f"{root} (QM9 id {item_id})",
                f"{problem}; {len(bad)} bad molecule(s) in all (pass on_error='skip' to leave them out)",
            )
        n = len(payload["natoms"]) if limit is None else min(int(limit), len(payload["natoms"]))
        self.excluded = int(payload["excluded"])
        natoms = payload["natoms"].numpy()[:n]
        self._offsets = np.concatenate([[0], np.cumsum(natoms)])
        self._z = payload["z"].numpy()[: self._offsets[-1]]
        self._pos = payload["pos"].numpy()[: self._offsets[-1]]
        self._targets = payload["targets"].numpy()[:n].copy()
        energy_cols = [k for k, name in enumerate(_TARGET_NAMES) if name in ENERGY_TARGETS]
        self._targets[:, energy_cols] *= self._to_unit
        self._target_col = _TARGET_NAMES.index(target)
        qm9_ids = payload["qm9_id"].numpy()[:n]
        units = {name: (energy_unit if name in ENERGY_TARGETS else unit) for name, unit in QM9_TARGETS.items()}
        super().__init__([str(int(q)) for q in qm9_ids], {"energy": units[target], **units}, bad)
        self._qm9_ids = qm9_ids
        warn_skipped(self.skipped, f"QM9 at {root}")

    def _get(self, i: int) -> Atoms:
        a, b = self._offsets[i], self._offsets[i + 1]
        atoms = Atoms(numbers=self._z[a:b], positions=self._pos[a:b])
        values = self._targets[i]
        atoms.info.update(zip(_TARGET_NAMES, values.tolist()))
        atoms.info["energy"] = float(values[self._target_col])
        atoms.info["qm9_id"] = int(self._qm9_ids[i])
        return atoms

    def target_array(self, name: str | None = None) -> np.ndarray:
        """All values of one target (default: the chosen one), in the dataset's units, [len]."""
        return self._targets[:, _TARGET_NAMES.index(name or self.target)].copy()
