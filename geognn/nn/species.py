"""The elements a model is built for, and the row of each in the model's per-element tables.

Backbones hold per-element weights: the atom embedding, and for MACE and NequIP the element-dependent
self-connection and product-basis weights. Each is a table with one row per element, and
``SpeciesIndex`` maps atomic numbers ``z`` to those rows:

- ``species=None``: the rows are the atomic numbers themselves, ``max_z + 1`` rows (row 0 unused).
  This is the layout every model had before species existed, so their checkpoints load unchanged.
- ``species=[1, 6, 8]``: ``len(species)`` rows, one per element in ascending atomic number
  (H -> row 0, C -> row 1, O -> row 2). A model for QM9's five elements has 5 rows where the
  default has 101.

An element with no row is a ``ValueError`` naming it and the species the model was built for,
raised before any table is indexed (never an ``IndexError`` or a CUDA device assert).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

#: Largest atomic number of a known element (oganesson).
MAX_ATOMIC_NUMBER = 118


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols  # 119 entries: "X" (Z=0), "H" ... "Og" (Z=118)

    return chemical_symbols[z] if 1 <= z <= MAX_ATOMIC_NUMBER else f"Z={z}"


def normalise_species(species: Iterable[int | str] | None) -> list[int] | None:
    """``species`` as sorted distinct atomic numbers (a plain list, so it can be stored in a
    checkpoint), or None. Entries are atomic numbers (1..118) or element symbols ("H", "C").

    ValueError naming the entry that is neither, or for an empty list.
    """
    if species is None:
        return None
    if isinstance(species, (str, bytes)) or not isinstance(species, Iterable):
        raise ValueError(f"species must be a list of atomic numbers or element symbols, got {species!r}")
    from ase.data import atomic_numbers

    out = set()
    for entry in species:
        if isinstance(entry, str):
            if entry not in atomic_numbers or atomic_numbers[entry] == 0:
                raise ValueError(f"species: {entry!r} is not an element symbol")
            out.add(int(atomic_numbers[entry]))
            continue
        try:
            value = int(entry)
        except (TypeError, ValueError):
            value = None
        if isinstance(entry, bool) or value is None or value != entry or not 1 <= value <= MAX_ATOMIC_NUMBER:
            raise ValueError(f"species: {entry!r} is not an atomic number in 1..{MAX_ATOMIC_NUMBER}")
        out.add(value)
    if not out:
        raise ValueError("species is empty: give the atomic numbers of the elements the model is for")
    return sorted(out)


def describe_elements(numbers: Sequence[int]) -> str:
    """``"Cl (Z=17), Br (Z=35)"`` for atomic numbers [17, 35]."""
    return ", ".join(f"{_symbol(z)} (Z={z})" if 1 <= z <= MAX_ATOMIC_NUMBER else f"Z={z}" for z in numbers)


def unknown_elements(numbers: Iterable[int], species: Sequence[int] | None, max_z: int) -> list[int]:
    """The distinct atomic numbers in ``numbers`` (sorted) that a model built for ``species``
    (None: every Z in 0..max_z) has no row for."""
    present = {int(z) for z in numbers}
    allowed = set(species) if species is not None else set(range(0, int(max_z) + 1))
    return sorted(present - allowed)


def unknown_elements_message(unknown: Sequence[int], species: Sequence[int] | None, max_z: int, owner: str) -> str:
    """One line saying that ``owner`` (e.g. "this model", "this SchNet") has no weights for the
    atomic numbers ``unknown``: the species it was built for, or its ``max_z``."""
    plural = len(unknown) > 1
    if species is None:
        zs = ", ".join(f"Z={z}" for z in unknown)
        return f"element{'s' if plural else ''} {zs} {'are' if plural else 'is'} beyond what {owner} can embed (max_z={max_z})"
    built = ", ".join(_symbol(z) for z in species)
    return (
        f"element{'s' if plural else ''} {describe_elements(unknown)} {'have' if plural else 'has'} no "
        f"weights in {owner}, which was built for the species {built} (species={list(species)}); "
        f"train a model on data that holds {', '.join(_symbol(z) for z in unknown)}"
    )


class SpeciesIndex(nn.Module):
    """Atomic numbers -> rows of per-element tables (see the module docstring).

    Args:
        species: atomic numbers (or element symbols) the model is built for, or None (default)
            for every Z in 0..max_z, each its own row.
        max_z: largest atomic number when ``species`` is None (default: 100); unused otherwise.
        owner: how error messages name the module that owns the tables (default: "this model").

    ``num_elements``: rows a per-element table needs. ``forward(z [N] int64) -> rows [N] int64``;
    ValueError naming the elements that have no row.
    """

    def __init__(self, species: Iterable[int | str] | None = None, max_z: int = 100, owner: str = "this model"):
        super().__init__()
        normalised = normalise_species(species)
        self.species: tuple[int, ...] | None = None if normalised is None else tuple(normalised)
        self.owner = owner
        if self.species is None:
            if int(max_z) != max_z or max_z < 1:
                raise ValueError(f"max_z must be a positive integer, got {max_z}")
            self.max_z = int(max_z)
            table = torch.arange(self.max_z + 1)  # row = Z
            self.num_elements = self.max_z + 1
        else:
            self.max_z = max(self.species)
            table = torch.full((self.max_z + 1,), -1, dtype=torch.long)  # -1: no row
            table[list(self.species)] = torch.arange(len(self.species))
            self.num_elements = len(self.species)
        # derived from the species, so not saved: checkpoints from before species still load
        self.register_buffer("rows", table, persistent=False)  # [max_z + 1] int64

    def unknown(self, numbers: Iterable[int]) -> list[int]:
        """Distinct atomic numbers in ``numbers`` (sorted) that have no row."""
        return unknown_elements(numbers, self.species, self.max_z)

    def message(self, unknown: Sequence[int]) -> str:
        return unknown_elements_message(unknown, self.species, self.max_z, self.owner)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """[N] atomic numbers -> [N] rows; ValueError naming the elements without a row."""
        n = self.rows.numel()
        rows = self.rows[z.clamp(0, n - 1)]  # [N]; clamped so the lookup itself cannot fail
        bad = (z < 0) | (z >= n) | (rows < 0)  # [N]
        if bool(bad.any()):  # one host sync, as the max_z check before it
            raise ValueError(self.message(torch.unique(z[bad]).tolist()))
        return rows

    def extra_repr(self) -> str:
        return f"species={list(self.species)}" if self.species is not None else f"max_z={self.max_z}"
