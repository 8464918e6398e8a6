"""The user's own data: a CGCNN-style folder of CIF/POSCAR files with ``id_prop.csv``, extended XYZ
files and ASE databases. All three load eagerly (parsed and validated at open time), so a bad
structure or label is reported with its id before training starts (``on_error``).

Units are explicit: ``energy_unit`` says what the file uses (eV default; ``kcal/mol`` for MD17,
``Hartree``, ``meV``, ``kJ/mol``), forces are read in ``energy_unit``/Å, stress in
``stress_unit`` (eV/Å^3 default, ``GPa``, ``kbar``; ASE's sign convention is assumed: VASP's
OUTCAR "pressure" has the opposite sign). Everything is converted to eV, eV/Å, eV/Å³.
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms

from ..io import StructureError, _read_ase, format_for, read_file, validate_atoms
from .base import (AtomsListDataset, check_on_error, collect, energy_factor, stress_3x3,
                   stress_factor)

#: File names tried for an id of ``id_prop.csv``, in order ({} is the id).
CIF_FOLDER_PATTERNS = ("{}", "{}.cif", "{}.vasp", "{}.poscar", "POSCAR-{}", "POSCAR-{}.vasp",
                       "{}.xyz", "{}.extxyz", "{}.json")


def _label_unit(unit: str) -> tuple[float, str]:
    """(factor to geognn units, reported unit) of a label given in ``unit``."""
    try:
        return energy_factor(unit), "eV"
    except ValueError:
        return 1.0, unit  # not an energy (a band gap in eV/atom, a class, ...): stored as given


# --------------------------------------------------------------------------- cif-folder
def open_cif_folder(root: str | Path, *, target: str | None = None, energy_unit: str = "eV",
                    id_prop: str = "id_prop.csv", on_error: str = "raise", limit: int | None = None,
                    allow_partial_occupancy: bool = False) -> AtomsListDataset:
    """A CGCNN-layout folder: ``id_prop.csv`` rows ``id,value`` (no header needed) and one
    structure file per id (``id``, ``id.cif``, ``id.vasp``, ``POSCAR-id``, ... see
    ``CIF_FOLDER_PATTERNS``; CIFs go through pymatgen with geognn's checks).

    The value becomes ``info[target]`` (default name ``"energy"``) and ``info["energy"]``;
    ``energy_unit`` is the unit of the values: an energy unit (converted to eV) or any other
    string, kept as given and only reported in ``targets`` (``"eV/atom"`` for a per-atom
    formation energy, ``"K"``, ``"class"``). ``ids[i]`` is the CSV's id.
    A missing file, an unreadable structure or a missing/non-numeric label is a bad item.
    Structure files that no row names are reported in a warning (never silently ignored).
    """
    root = Path(root)
    check_on_error(on_error)
    target = target or "energy"
    factor, reported = _label_unit(energy_unit)
    table = root / id_prop
    if not table.is_file():
        raise FileNotFoundError(f"{table}: no {id_prop} in the folder (CGCNN layout: rows 'id,value')")
    with open(table, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if rows and len(rows[0]) >= 2 and rows[0][1].strip() and not _is_number(rows[0][1]):
        rows = rows[1:]  # a header line
    if rows and max(len(r) for r in rows) > 2:
        warnings.warn(f"{table}: rows have more than 2 columns; only the first value column is used",
                      stacklevel=2)
    used: set[Path] = set()
    seen: set[str] = set()

    def make(line_no: int, row: list[str]) -> Atoms:
        item_id = row[0].strip()
        if item_id in seen:
            raise StructureError(item_id, f"{table} line {line_no}: duplicate id")
        seen.add(item_id)
        path = next((root / p.format(item_id) for p in CIF_FOLDER_PATTERNS
                     if (root / p.format(item_id)).is_file()), None)
        if path is None:
            raise StructureError(item_id, f"no structure file for this id in {root} "
                                 f"(looked for {', '.join(p.format(item_id) for p in CIF_FOLDER_PATTERNS[:5])}, ...)")
        used.add(path)
        text = row[1].strip() if len(row) > 1 else ""
        if not text:
            raise StructureError(item_id, f"{table} line {line_no}: missing label")
        if not _is_number(text) or not math.isfinite(float(text)):
            raise StructureError(item_id, f"{table} line {line_no}: label {text!r} is not a finite number")
        frames = read_file(path, allow_partial_occupancy=allow_partial_occupancy)
        if len(frames) != 1:
            raise StructureError(str(path), f"holds {len(frames)} structures, expected 1")
        atoms = frames[0]
        value = float(text) * factor
        atoms.info[target] = value
        atoms.info["energy"] = value
        return atoms

    items = ((r[0].strip(), (lambda k=k, r=r: make(k, r))) for k, r in enumerate(rows, start=1))
    structures, ids, skipped = collect(items, on_error, str(root), limit)
    if limit is None:
        unused = sorted(f.name for f in root.iterdir() if f.is_file() and f != table
                        and format_for(f) is not None and f not in used)
        if unused:
            warnings.warn(f"{root}: {len(unused)} structure file(s) have no row in {id_prop} and are not "
                          f"used: {', '.join(unused[:5])}" + (" ..." if len(unused) > 5 else ""), stacklevel=2)
    return AtomsListDataset(structures, ids, {"energy": reported, target: reported}, skipped)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------- labels of ASE frames
def _find(key: str, *stores):
    for store in stores:
        if store and key in store and store[key] is not None:
            return store[key]
    return None


def _labelled(atoms: Atoms, extra: dict, item_id: str, *, target: str, forces_key: str, stress_key: str,
              e_factor: float, s_factor: float, required: set[str]) -> Atoms:
    """A clean copy of ``atoms`` (no calculator) with the labels in geognn units; checks ``required``."""
    results = dict(getattr(atoms.calc, "results", {}) or {}) if atoms.calc is not None else {}
    energy = _find(target, atoms.info, extra, results if target == "energy" else None)
    forces = _find(forces_key, atoms.arrays, extra, results if forces_key == "forces" else None)
    stress = _find(stress_key, atoms.info, extra, results if stress_key == "stress" else None)
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc,
                tags=atoms.get_tags() if atoms.has("tags") else None, constraint=atoms.constraints)
    out.info.update({k: v for k, v in atoms.info.items()
                     if isinstance(v, (str, int, float)) and k not in (target, stress_key)})
    found = set()
    if energy is not None:
        value = float(np.asarray(energy, dtype=float).reshape(-1)[0])
        if not math.isfinite(value):
            raise StructureError(item_id, f"non-finite {target} ({value})")
        out.info["energy"] = value * e_factor
        if target != "energy":
            out.info[target] = out.info["energy"]
        found.add("energy")
    if forces is not None:
        f = np.asarray(forces, dtype=float)
        if f.shape != (len(atoms), 3):
            raise StructureError(item_id, f"forces have shape {f.shape}, expected ({len(atoms)}, 3)")
        if not np.isfinite(f).all():
            raise StructureError(item_id, "non-finite forces")
        out.arrays["forces"] = f * e_factor
        found.add("forces")
    if stress is not None:
        try:
            out.info["stress"] = stress_3x3(stress) * s_factor
        except ValueError as exc:
            raise StructureError(item_id, str(exc)) from None
        found.add("stress")
    missing = sorted(required - found)
    if missing:
        raise StructureError(item_id, f"missing label(s) {missing}")
    validate_atoms(out)
    return out


def _frames_dataset(frames_with_ids, what: str, *, target, energy_unit, stress_unit, forces_key,
                    stress_key, on_error, limit, require) -> AtomsListDataset:
    e_factor, s_factor = energy_factor(energy_unit), stress_factor(stress_unit)
    frames_with_ids = list(frames_with_ids)
    if require is None:  # the labels of the first frame are required of all
        require = {"energy"}
        if frames_with_ids:
            atoms, extra, _ = frames_with_ids[0]
            probe = _probe_labels(atoms, extra, target, forces_key, stress_key)
            require |= probe
    require = set(require)
    kw = dict(target=target, forces_key=forces_key, stress_key=stress_key, e_factor=e_factor,
              s_factor=s_factor, required=require)
    items = ((item_id, (lambda a=a, x=x, item_id=item_id: _labelled(a, x, item_id, **kw)))
             for a, x, item_id in frames_with_ids)
    structures, ids, skipped = collect(items, on_error, what, limit)
    targets = {"energy": "eV"}
    if target != "energy":
        targets[target] = "eV"
    if "forces" in require:
        targets["forces"] = "eV/Å"
    if "stress" in require:
        targets["stress"] = "eV/Å^3"
    return AtomsListDataset(structures, ids, targets, skipped)


def _probe_labels(atoms, extra, target, forces_key, stress_key) -> set[str]:
    results = dict(getattr(atoms.calc, "results", {}) or {}) if atoms.calc is not None else {}
    found = set()
    if _find(forces_key, atoms.arrays, extra, results if forces_key == "forces" else None) is not None:
        found.add("forces")
    if _find(stress_key, atoms.info, extra, results if stress_key == "stress" else None) is not None:
        found.add("stress")
    return found


# --------------------------------------------------------------------------- extxyz
def open_extxyz(root: str | Path, *, target: str | None = None, energy_unit: str = "eV",
                stress_unit: str = "eV/Å^3", forces_key: str = "forces", stress_key: str = "stress",
                require: set[str] | None = None, on_error: str = "raise",
                limit: int | None = None) -> AtomsListDataset:
    """Frames of an extended XYZ file (or all ``*.xyz``/``*.extxyz`` of a folder, sorted).

    Labels from ``info``/``arrays`` or the calculator ASE attaches: the energy under ``target``
    (default ``"energy"``), forces under ``forces_key``, stress under ``stress_key`` (Voigt or 3x3).
    ``require``: labels every frame must have (default: ``energy`` and whatever the first frame
    has); a frame missing one is a bad item. ``ids[i]`` is ``"<file name>@<frame>"``.
    A file that cannot be parsed at all raises StructureError naming it (ASE cannot resume
    after a broken frame, so that file cannot be partly skipped).
    """
    root = Path(root)
    check_on_error(on_error)
    files = sorted(f for f in root.iterdir() if f.suffix.lower() in (".xyz", ".extxyz")) if root.is_dir() else [root]
    if not files:
        raise StructureError(str(root), "folder holds no .xyz/.extxyz files")

    def frames():
        for f in files:
            try:
                read = _read_ase(f, "extxyz")
            except Exception as exc:
                raise StructureError(str(f), f"could not read as extended XYZ ({type(exc).__name__}: {exc})") from exc
            for k, a in enumerate(read):
                yield a, None, f"{f.name}@{k}"

    return _frames_dataset(frames(), str(root), target=target or "energy", energy_unit=energy_unit,
                           stress_unit=stress_unit, forces_key=forces_key, stress_key=stress_key,
                           on_error=on_error, limit=limit, require=require)


# --------------------------------------------------------------------------- ASE database
def open_ase_db(root: str | Path, *, target: str | None = None, energy_unit: str = "eV",
                stress_unit: str = "eV/Å^3", forces_key: str = "forces", stress_key: str = "stress",
                id_key: str | None = None, require: set[str] | None = None, on_error: str = "raise",
                limit: int | None = None, selection=None) -> AtomsListDataset:
    """Rows of an ASE database (``.db`` SQLite, ``.json``; ``selection`` as in ``db.select``).

    Labels from the stored calculator results, the row's key-value pairs or its ``data``, under
    ``target`` (default ``"energy"``), ``forces_key`` and ``stress_key``; tags and constraints
    are kept. ``ids[i]`` is the row id, or the value of the key ``id_key`` when given.
    """
    import ase.db

    root = Path(root)
    check_on_error(on_error)
    try:
        db = ase.db.connect(str(root))
        rows = list(db.select(selection) if selection is not None else db.select())
    except Exception as exc:
        raise StructureError(str(root), f"could not open as an ASE database ({type(exc).__name__}: {exc})") from exc

    def frames():
        for row in rows:
            extra = {**row.key_value_pairs, **(row.get("data", {}) or {})}
            item_id = str(row.key_value_pairs.get(id_key, row.id)) if id_key else str(row.id)
            yield row.toatoms(), extra, item_id

    return _frames_dataset(frames(), str(root), target=target or "energy", energy_unit=energy_unit,
                           stress_unit=stress_unit, forces_key=forces_key, stress_key=stress_key,
                           on_error=on_error, limit=limit, require=require)
