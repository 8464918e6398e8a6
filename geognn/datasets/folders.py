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
import itertools
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms

from ..io import StructureError, _read_ase, format_for, read_file, validate_atoms
from .base import AtomsListDataset, check_on_error, collect, energy_factor, stress_3x3, stress_factor

#: File names tried for an id of ``id_prop.csv``, in order ({} is the id).
CIF_FOLDER_PATTERNS = (
    "{}",
    "{}.cif",
    "{}.vasp",
    "{}.poscar",
    "POSCAR-{}",
    "POSCAR-{}.vasp",
    "{}.xyz",
    "{}.extxyz",
    "{}.json",
)


def _label_unit(unit: str) -> tuple[float, str]:
    """(factor to geognn units, reported unit) of a label given in ``unit``.

    Energies become eV (``Hartree`` -> eV), energies per atom become eV/atom (``meV/atom`` ->
    eV/atom); anything else (a band gap's "eV" is an energy too, "K", "GPa", "class") is kept
    as given.
    """
    try:
        return energy_factor(unit), "eV"
    except ValueError:
        pass
    text = str(unit).replace(" ", "")
    if text.lower().endswith("/atom"):
        try:
            return energy_factor(text[: -len("/atom")]), "eV/atom"
        except ValueError:
            pass
    return 1.0, unit  # not an energy: stored as given


def _units_for(names: Sequence[str], unit: str | dict[str, str], what: str) -> dict[str, str]:
    """The unit of each label: one string for all, or a dict name -> unit (missing names: eV)."""
    if isinstance(unit, str):
        return {n: unit for n in names}
    unknown = sorted(set(unit) - set(names))
    if unknown:
        raise ValueError(f"{what}: units given for {unknown}, which are not among the labels used {list(names)}")
    return {n: unit.get(n, "eV") for n in names}


def _as_names(target) -> list[str] | None:
    if target is None:
        return None
    names = [target] if isinstance(target, str) else list(target)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"target(s) {names}: give one or more distinct label names")
    return names


# --------------------------------------------------------------------------- cif-folder
def open_cif_folder(
    root: str | Path,
    *,
    target: str | Sequence[str] | None = None,
    energy_unit: str | dict[str, str] = "eV",
    id_prop: str = "id_prop.csv",
    on_error: str = "raise",
    limit: int | None = None,
    allow_partial_occupancy: bool = False,
) -> AtomsListDataset:
    """A CGCNN-layout folder: ``id_prop.csv`` and one structure file per id (``id``, ``id.cif``,
    ``id.vasp``, ``POSCAR-id``, ... see ``CIF_FOLDER_PATTERNS``; CIFs go through pymatgen with
    geognn's checks).

    ``id_prop.csv`` either has no header and rows ``id,value`` (CGCNN's layout: one label, named
    ``target``, default ``"energy"``), or a header row ``id,name1,name2,...`` naming its label
    columns: then ``target`` picks one or several of them (default: all), and a name the header
    does not have is a ValueError listing the labels it has. Each value becomes
    ``info[name]``; with a single label it is also ``info["energy"]`` (the trainer's historical key).

    ``energy_unit``: the unit of the values (default "eV"), one string for all labels or a dict
    name -> unit. Energies are converted to eV, energies per atom to eV/atom (``meV/atom``);
    any other unit is kept as given and only reported in ``targets`` (``"K"``, ``"class"``).
    ``ids[i]`` is the CSV's id. A missing file, an unreadable structure, or a missing, NaN or
    non-numeric label is a bad item (``on_error``), reported with its id, column and line.
    Structure files that no row names are reported in a warning (never silently ignored).
    """
    root = Path(root)
    check_on_error(on_error)
    names = _as_names(target)
    table = root / id_prop
    if not table.is_file():
        raise FileNotFoundError(f"{table}: no {id_prop} in the folder (CGCNN layout: rows 'id,value')")
    with open(table, newline="") as fh:
        rows = [(k, r) for k, r in enumerate(csv.reader(fh), start=1) if r and any(c.strip() for c in r)]
    header = None
    if rows and len(rows[0][1]) >= 2 and rows[0][1][1].strip() and not _is_number(rows[0][1][1]):
        header = [c.strip() for c in rows[0][1]]
        rows = rows[1:]
    if header is not None:
        available = header[1:]
        if len(set(available)) != len(available):
            raise ValueError(f"{table}: repeated column names in the header {available}")
        names = names or available
        missing = [n for n in names if n not in available]
        if missing:
            raise ValueError(
                f"{table} has no label {', '.join(map(repr, missing))}; its labels are {', '.join(available)}"
            )
        columns = {n: available.index(n) + 1 for n in names}
    else:
        names = names or ["energy"]
        if len(names) > 1:
            raise ValueError(
                f"{table} has no header row, so it holds one label; to learn {names} write a "
                f"header 'id,{','.join(names)}' and one column per label"
            )
        columns = {names[0]: 1}
        if rows and max(len(r) for _, r in rows) > 2:
            warnings.warn(
                f"{table}: rows have more than 2 columns and no header; only the first value column "
                "is used (name the columns in a header row to use several)",
                stacklevel=2,
            )
    units = _units_for(names, energy_unit, str(table))
    conversions = {n: _label_unit(units[n]) for n in names}  # name -> (factor, reported unit)
    used: set[Path] = set()
    seen: set[str] = set()

    def make(line_no: int, row: list[str]) -> Atoms:
        item_id = row[0].strip()
        if item_id in seen:
            raise StructureError(item_id, f"{table} line {line_no}: duplicate id")
        seen.add(item_id)
        path = next(
            (root / p.format(item_id) for p in CIF_FOLDER_PATTERNS if (root / p.format(item_id)).is_file()), None
        )
        if path is None:
            raise StructureError(
                item_id,
                f"no structure file for this id in {root} "
                f"(looked for {', '.join(p.format(item_id) for p in CIF_FOLDER_PATTERNS[:5])}, ...)",
            )
        used.add(path)
        values = {}
        for name, col in columns.items():
            text = row[col].strip() if len(row) > col else ""
            what = f"{table} line {line_no}" + (f", column {name!r}" if header is not None else "")
            if not text:
                raise StructureError(item_id, f"{what}: missing label")
            if not _is_number(text) or not math.isfinite(float(text)):
                raise StructureError(item_id, f"{what}: label {text!r} is not a finite number")
            values[name] = float(text) * conversions[name][0]
        frames = read_file(path, allow_partial_occupancy=allow_partial_occupancy)
        if len(frames) != 1:
            raise StructureError(str(path), f"holds {len(frames)} structures, expected 1")
        atoms = frames[0]
        atoms.info.update(values)
        if len(values) == 1:
            atoms.info["energy"] = next(iter(values.values()))
        return atoms

    items = ((r[0].strip(), (lambda k=k, r=r: make(k, r))) for k, r in rows)
    structures, ids, skipped = collect(items, on_error, str(root), limit)
    if limit is None:
        unused = sorted(
            f.name for f in root.iterdir() if f.is_file() and f != table and format_for(f) is not None and f not in used
        )
        if unused:
            warnings.warn(
                f"{root}: {len(unused)} structure file(s) have no row in {id_prop} and are not "
                f"used: {', '.join(unused[:5])}" + (" ..." if len(unused) > 5 else ""),
                stacklevel=2,
            )
    targets = {n: conversions[n][1] for n in names}
    if len(names) == 1:
        targets = {"energy": targets[names[0]], **targets}
    dataset = AtomsListDataset(structures, ids, targets, skipped)
    dataset.labels = list(names)  # the scalar labels read, in order
    return dataset


def cif_folder_labels(root: str | Path, id_prop: str = "id_prop.csv") -> list[str]:
    """The label names of a CGCNN folder: its header's columns, or ["energy"] without a header."""
    table = Path(root) / id_prop
    if not table.is_file():
        raise FileNotFoundError(f"{table}: no {id_prop} in the folder (CGCNN layout: rows 'id,value')")
    with open(table, newline="") as fh:
        first = next((r for r in csv.reader(fh) if r and any(c.strip() for c in r)), [])
    if len(first) >= 2 and first[1].strip() and not _is_number(first[1]):
        return [c.strip() for c in first[1:]]
    return ["energy"]


def write_cif_folder(
    root: str | Path,
    structures: Sequence[Atoms],
    labels: dict[str, Sequence[float]],
    *,
    ids: Sequence[str] | None = None,
    header: bool = True,
) -> Path:
    """Write ``structures`` as a CGCNN folder that ``open_cif_folder`` reads: ``<id>.cif`` each
    and ``id_prop.csv`` with one column per label (a header row ``id,name1,...`` unless
    ``header=False``, which needs exactly one label). ``ids`` default to ``info["id"]`` or the
    index. Values are written with ``repr`` (exact round trip). Returns ``root``.

    >>> write_cif_folder("mp20", atoms_list, {"e_form": e_form, "band_gap": gaps}, ids=material_ids)
    """
    from ase.io import write

    root = Path(root)
    structures = list(structures)
    if ids is None:
        ids = [str(a.info.get("id", k)) for k, a in enumerate(structures)]
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise ValueError("write_cif_folder: ids must be unique")
    if any(len(v) != len(structures) for v in labels.values()) or len(ids) != len(structures):
        raise ValueError("write_cif_folder: structures, ids and every label need the same length")
    if not header and len(labels) != 1:
        raise ValueError("write_cif_folder: header=False (CGCNN's layout) holds exactly one label")
    root.mkdir(parents=True, exist_ok=True)
    names = list(labels)
    with open(root / "id_prop.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        if header:
            writer.writerow(["id", *names])
        for k, (item_id, atoms) in enumerate(zip(ids, structures)):
            write(root / f"{item_id}.cif", atoms, format="cif")
            writer.writerow([item_id, *(repr(float(labels[n][k])) for n in names)])
    return root


def cif_table_to_folder(
    table: str | Path,
    root: str | Path,
    *,
    columns: dict[str, str],
    id_column: str = "material_id",
    cif_column: str = "cif",
    limit: int | None = None,
) -> Path:
    """A CSV with one CIF text per row (MP-20 / CDVAE's ``train.csv``: ``material_id``, ``cif``,
    ``formation_energy_per_atom``, ``band_gap``, ...) written as a CGCNN folder at ``root``.

    ``columns`` maps the table's column -> label name in ``id_prop.csv`` (e.g.
    ``{"formation_energy_per_atom": "e_form", "band_gap": "band_gap"}``). The CIF texts are
    copied verbatim as ``<id>.cif``. Returns ``root``.
    """
    table, root = Path(table), Path(root)
    with open(table, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in (id_column, cif_column, *columns) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{table}: no column(s) {missing}; it has {reader.fieldnames}")
        rows = list(itertools.islice(reader, limit))
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "id_prop.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", *columns.values()])
        for r in rows:
            (root / f"{r[id_column]}.cif").write_text(r[cif_column])
            writer.writerow([r[id_column], *(r[c] for c in columns)])
    return root


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


def _labelled(
    atoms: Atoms,
    extra: dict,
    item_id: str,
    *,
    targets: list[str],
    forces_key: str,
    stress_key: str,
    factors: dict[str, float],
    f_factor: float,
    s_factor: float,
    required: set[str],
) -> Atoms:
    """A clean copy of ``atoms`` (no calculator) with the labels in geognn units; checks ``required``.

    ``targets``: scalar labels, each converted by ``factors[name]``; "energy" may also come from
    the calculator's results. ``required``: "targets", "forces", "stress" that must be present.
    """
    results = dict(getattr(atoms.calc, "results", {}) or {}) if atoms.calc is not None else {}
    forces = _find(forces_key, atoms.arrays, extra, results if forces_key == "forces" else None)
    stress = _find(stress_key, atoms.info, extra, results if stress_key == "stress" else None)
    out = Atoms(
        numbers=atoms.numbers,
        positions=atoms.positions,
        cell=atoms.cell,
        pbc=atoms.pbc,
        tags=atoms.get_tags() if atoms.has("tags") else None,
        constraint=atoms.constraints,
    )
    out.info.update(
        {k: v for k, v in atoms.info.items() if isinstance(v, (str, int, float)) and k not in (*targets, stress_key)}
    )
    found, missing_targets = set(), []
    for name in targets:
        value = _find(name, atoms.info, extra, results if name == "energy" else None)
        if value is None:
            missing_targets.append(name)
            continue
        try:
            value = float(np.asarray(value, dtype=float).reshape(-1)[0])
        except (TypeError, ValueError):
            raise StructureError(item_id, f"label {name!r} is not a number ({value!r})") from None
        if not math.isfinite(value):
            raise StructureError(item_id, f"non-finite {name} ({value})")
        out.info[name] = value * factors[name]
    if len(targets) == 1 and not missing_targets:
        out.info["energy"] = out.info[targets[0]]
    if not missing_targets:
        found.add("targets")
    if forces is not None:
        f = np.asarray(forces, dtype=float)
        if f.shape != (len(atoms), 3):
            raise StructureError(item_id, f"forces have shape {f.shape}, expected ({len(atoms)}, 3)")
        if not np.isfinite(f).all():
            raise StructureError(item_id, "non-finite forces")
        out.arrays["forces"] = f * f_factor
        found.add("forces")
    if stress is not None:
        try:
            out.info["stress"] = stress_3x3(stress) * s_factor
        except ValueError as exc:
            raise StructureError(item_id, str(exc)) from None
        found.add("stress")
    missing = sorted((required - found) - {"targets"}) + (missing_targets if "targets" in required else [])
    if missing:
        raise StructureError(item_id, f"missing label(s) {sorted(missing)}")
    validate_atoms(out)
    return out


def _scalar_labels(atoms: Atoms, extra: dict | None) -> set[str]:
    """Names of the numeric scalar labels a frame carries (info, extra, calculator energy)."""
    names = set()
    for store in (atoms.info, extra or {}):
        for k, v in store.items():
            if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
                names.add(k)
    if atoms.calc is not None and "energy" in (getattr(atoms.calc, "results", {}) or {}):
        names.add("energy")
    return names


def _frames_dataset(
    frames_with_ids,
    what: str,
    *,
    target,
    energy_unit,
    stress_unit,
    forces_key,
    stress_key,
    on_error,
    limit,
    require,
    units=None,
) -> AtomsListDataset:
    e_factor, s_factor = energy_factor(energy_unit), stress_factor(stress_unit)
    names = _as_names(target) or ["energy"]
    label_units = _units_for(names, units, what) if units is not None else {}
    conversions = {n: (_label_unit(label_units[n]) if n in label_units else (e_factor, "eV")) for n in names}
    frames_with_ids = list(frames_with_ids)
    if frames_with_ids:  # a label no frame has is a mistake in the request, not bad data
        present = set().union(*(_scalar_labels(a, x) for a, x, _ in frames_with_ids))
        absent = [n for n in names if n not in present]
        if absent:
            raise ValueError(
                f"{what} has no label {', '.join(map(repr, absent))}; its labels are "
                f"{', '.join(sorted(present)) or 'none'}"
            )
    if require is None:  # the labels of the first frame are required of all
        require = {"energy"}
        if frames_with_ids:
            atoms, extra, _ = frames_with_ids[0]
            require |= _probe_labels(atoms, extra, forces_key, stress_key)
    require = {"targets" if r == "energy" else r for r in require}
    kw = dict(
        targets=names,
        forces_key=forces_key,
        stress_key=stress_key,
        factors={n: c[0] for n, c in conversions.items()},
        f_factor=e_factor,
        s_factor=s_factor,
        required=require,
    )
    items = (
        (item_id, (lambda a=a, x=x, item_id=item_id: _labelled(a, x, item_id, **kw)))
        for a, x, item_id in frames_with_ids
    )
    structures, ids, skipped = collect(items, on_error, what, limit)
    targets = {n: c[1] for n, c in conversions.items()}
    if len(names) == 1:
        targets = {"energy": targets[names[0]], **targets}
    if "forces" in require:
        targets["forces"] = "eV/Å"
    if "stress" in require:
        targets["stress"] = "eV/Å^3"
    dataset = AtomsListDataset(structures, ids, targets, skipped)
    dataset.labels = list(names)  # the scalar labels read, in order
    return dataset


def _probe_labels(atoms, extra, forces_key, stress_key) -> set[str]:
    results = dict(getattr(atoms.calc, "results", {}) or {}) if atoms.calc is not None else {}
    found = set()
    if _find(forces_key, atoms.arrays, extra, results if forces_key == "forces" else None) is not None:
        found.add("forces")
    if _find(stress_key, atoms.info, extra, results if stress_key == "stress" else None) is not None:
        found.add("stress")
    return found


# --------------------------------------------------------------------------- extxyz
def open_extxyz(
    root: str | Path,
    *,
    target: str | Sequence[str] | None = None,
    energy_unit: str = "eV",
    stress_unit: str = "eV/Å^3",
    forces_key: str = "forces",
    stress_key: str = "stress",
    require: set[str] | None = None,
    on_error: str = "raise",
    limit: int | None = None,
    units: dict[str, str] | None = None,
) -> AtomsListDataset:
    """Frames of an extended XYZ file (or all ``*.xyz``/``*.extxyz`` of a folder, sorted).

    Labels from ``info``/``arrays`` or the calculator ASE attaches: ``target`` names one or several
    scalar labels (``info`` keys; default ``"energy"``, which may also be the calculator's energy),
    forces under ``forces_key``, stress under ``stress_key`` (Voigt or 3x3). Scalar labels are in
    ``energy_unit`` (converted to eV) unless ``units`` gives a label's own unit (name -> unit, e.g.
    ``{"e_form": "eV/atom", "tc": "K"}``, see ``open_cif_folder``). A target that no frame has is a
    ValueError listing the labels they have. ``require``: labels every frame must have (default:
    the targets and whatever the first frame has of forces/stress); a frame missing one, or with
    a NaN label, is a bad item. ``ids[i]`` is ``"<file name>@<frame>"``.
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

    return _frames_dataset(
        frames(),
        str(root),
        target=target,
        energy_unit=energy_unit,
        stress_unit=stress_unit,
        forces_key=forces_key,
        stress_key=stress_key,
        on_error=on_error,
        limit=limit,
        require=require,
        units=units,
    )


# --------------------------------------------------------------------------- ASE database
def open_ase_db(
    root: str | Path,
    *,
    target: str | Sequence[str] | None = None,
    energy_unit: str = "eV",
    stress_unit: str = "eV/Å^3",
    forces_key: str = "forces",
    stress_key: str = "stress",
    id_key: str | None = None,
    require: set[str] | None = None,
    on_error: str = "raise",
    limit: int | None = None,
    selection=None,
    units: dict[str, str] | None = None,
) -> AtomsListDataset:
    """Rows of an ASE database (``.db`` SQLite, ``.json``; ``selection`` as in ``db.select``).

    Labels from the stored calculator results, the row's key-value pairs or its ``data``, under
    ``target`` (one or several names, default ``"energy"``), ``forces_key`` and ``stress_key``;
    units and missing labels as in ``open_extxyz``; tags and constraints are kept. ``ids[i]`` is
    the row id, or the value of the key ``id_key`` when given.
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

    return _frames_dataset(
        frames(),
        str(root),
        target=target,
        energy_unit=energy_unit,
        stress_unit=stress_unit,
        forces_key=forces_key,
        stress_key=stress_key,
        on_error=on_error,
        limit=limit,
        require=require,
        units=units,
    )
