"""What every geognn dataset shares: the ``StructureDataset`` interface, bad-item handling, units.

A dataset item is an ``ase.Atoms`` with its labels in geognn units (see ``StructureDataset``);
turning it into a graph (``geognn.build_graph``) is the caller's job, so the same dataset serves
every cutoff and backbone.
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.constraints import FixAtoms

from .. import conventions as K
from ..conventions import HARTREE_TO_EV, KCAL_PER_MOL_TO_EV
from ..io import StructureError

#: Values of ``on_error``: "raise" stops at the first bad item; "skip" leaves it out and records it.
ON_ERROR = ("raise", "skip")

#: Energy units a loader can be told its file uses, and how many eV one of them is.
#: Forces are read in <energy unit>/Å and converted with the same factor.
ENERGY_UNITS: dict[str, float] = {
    "eV": 1.0,
    "meV": 1e-3,
    "Hartree": HARTREE_TO_EV,
    "Ha": HARTREE_TO_EV,
    "kcal/mol": KCAL_PER_MOL_TO_EV,
    "kJ/mol": KCAL_PER_MOL_TO_EV / 4.184,
}

#: Stress units a loader can be told its file uses, and how many eV/Å³ one of them is.
STRESS_UNITS: dict[str, float] = {
    "eV/Å^3": 1.0,
    "eV/A^3": 1.0,
    "GPa": 1.0 / K.EV_PER_A3_TO_GPA,
    "kbar": 0.1 / K.EV_PER_A3_TO_GPA,
}


def energy_factor(unit: str) -> float:
    """eV per ``unit`` (case-insensitive: "ev", "hartree"); ValueError listing the known units otherwise."""
    for name, factor in ENERGY_UNITS.items():
        if name.lower() == str(unit).lower():
            return factor
    raise ValueError(f"unknown energy unit {unit!r}; choose one of {sorted(ENERGY_UNITS)}")


def stress_factor(unit: str) -> float:
    """eV/Å³ per ``unit``; ValueError listing the known units otherwise."""
    try:
        return STRESS_UNITS[unit]
    except KeyError:
        raise ValueError(f"unknown stress unit {unit!r}; choose one of {sorted(STRESS_UNITS)}") from None


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    return on_error


class StructureDataset(torch.utils.data.Dataset):
    """Indexable structures with labels, for training and evaluation.

    Attributes:
        ids: stable per-structure ids (``ids[i]`` belongs to item ``i``).
        targets: label name -> unit of what the items carry, e.g. ``{"energy": "eV", "forces": "eV/Å"}``.
        skipped: ``(id, reason)`` of the items left out at open time with ``on_error="skip"``.
        labels: (folder kinds) the scalar labels read, in order: what a trainer learns by default.

    ``dataset[i]`` is a fresh ``ase.Atoms`` (change it freely) with ``info["id"] = ids[i]``,
    ``info["energy"]`` (float), other scalar labels in ``info[name]``, ``arrays["forces"]``
    [N,3] eV/Å, ``info["stress"]`` [3,3] eV/Å³ (ASE sign), tags (``get_tags()``) and fixed
    atoms (a ``FixAtoms`` constraint) where the data has them. A bad item raises
    ``geognn.io.StructureError`` naming its id.
    """

    ids: list[str]
    targets: dict[str, str]

    def __init__(self, ids: Sequence[str], targets: dict[str, str], skipped=()):
        self.ids = list(ids)
        self.targets = dict(targets)
        self.skipped: list[tuple[str, str]] = list(skipped)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i) -> Atoms:
        n = len(self)
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"dataset index must be an integer, got {type(i).__name__}")
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} structures")
        atoms = self._get(i)
        atoms.info["id"] = self.ids[i]
        return atoms

    def _get(self, i: int) -> Atoms:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} structures, targets={self.targets}"
            + (f", {len(self.skipped)} skipped" if self.skipped else "")
            + ")"
        )


class AtomsListDataset(StructureDataset):
    """A dataset held in memory as a list of ``ase.Atoms`` (the eager loaders: folders, extxyz, db)."""

    def __init__(self, structures: Sequence[Atoms], ids: Sequence[str], targets: dict[str, str], skipped=()):
        super().__init__(ids, targets, skipped)
        if len(structures) != len(self.ids):
            raise ValueError("structures and ids differ in length")
        self._structures = list(structures)

    def _get(self, i: int) -> Atoms:
        return self._structures[i].copy()


def collect(items: Iterable[tuple[str, Callable[[], Atoms]]], on_error: str, what: str, limit: int | None = None):
    """Run each ``(id, make)`` of ``items``; returns ``(structures, ids, skipped)``.

    ``make()`` raising StructureError (or ValueError) is a bad item: with ``on_error="raise"``
    it is re-raised naming the id; with "skip" it is recorded in ``skipped`` and, at the end, a
    single warning gives the count and the first few. Stops after ``limit`` good structures.
    """
    structures, ids, skipped = [], [], []
    for item_id, make in items:
        if limit is not None and len(structures) >= limit:
            break
        try:
            atoms = make()
        except (StructureError, ValueError, KeyError, OSError) as exc:
            if isinstance(exc, StructureError):  # keep the file name when it is not the id
                reason = exc.problem if exc.source == item_id else str(exc)
            else:
                reason = f"{type(exc).__name__}: {exc}"
            if on_error == "raise":
                raise StructureError(item_id, f"{reason} (pass on_error='skip' to leave bad items out)") from exc
            skipped.append((item_id, reason))
            continue
        structures.append(atoms)
        ids.append(item_id)
    warn_skipped(skipped, what)
    return structures, ids, skipped


def warn_skipped(skipped: Sequence[tuple[str, str]], what: str) -> None:
    """One warning for all items skipped from ``what``, naming the first three."""
    if skipped:
        first = "; ".join(f"{i}: {r}" for i, r in skipped[:3])
        warnings.warn(
            f"{what}: skipped {len(skipped)} bad structure(s) (see dataset.skipped): {first}"
            + (" ..." if len(skipped) > 3 else ""),
            stacklevel=3,
        )


def set_fixed(atoms: Atoms, fixed) -> None:
    """Attach a ``FixAtoms`` constraint for the atoms where ``fixed`` is true (nothing if none)."""
    fixed = np.asarray(fixed).astype(bool).reshape(-1)
    if fixed.any():
        atoms.set_constraint(FixAtoms(indices=np.flatnonzero(fixed)))


def stress_3x3(stress) -> np.ndarray:
    """[3,3] stress from ASE's Voigt order (xx yy zz yz xz xy) or a 3x3 / 9-vector."""
    s = np.asarray(stress, dtype=np.float64)
    if s.shape == (6,):
        xx, yy, zz, yz, xz, xy = s
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if s.size == 9:
        return s.reshape(3, 3)
    raise ValueError(f"stress must have 6 (Voigt) or 9 components, got shape {s.shape}")
