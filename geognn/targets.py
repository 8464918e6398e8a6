"""What a model learns: ``Target`` = (name, unit, readout), and the rules that pick a readout.

A target is one scalar per structure. The model predicts a value per atom for it and reduces
those values over the structure with the target's readout:

    sum   extensive: the value grows with the structure (total energy in eV; a 2x1x1 supercell
          has twice the energy). Forces and stress are derivatives of an extensive energy.
    mean  intensive: the value is a property of the material, not of the cell chosen to describe
          it (formation energy per atom in eV/atom, band gap in eV, any per-structure label of
          a CGCNN folder); a supercell has the same value.

The per-element reference fit follows the readout: least squares on element *counts* for
``sum`` (``E ~ sum_e n_e E_e``), on element *fractions* for ``mean`` (``y ~ sum_e x_e y_e``).

Units are strings and stored as given; the model works in geognn units, so an energy target
read from a file in Hartree or meV is converted to eV by the loader before it reaches a model.
This module only describes targets; it imports nothing from the rest of geognn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: Valid readouts: "sum" (extensive) and "mean" (intensive).
READOUTS = ("sum", "mean")

#: Units of a total energy; a target in one of these defaults to the ``sum`` readout.
TOTAL_ENERGY_UNITS = ("eV", "meV", "Hartree", "Ha", "kcal/mol", "kJ/mol")

#: Label names that are energies in eV but intensive (orbital energies and gaps): readout ``mean``.
INTENSIVE_ENERGY_WORDS = ("gap", "homo", "lumo", "fermi", "per_atom")

#: Names a target may not take: graph keys, model outputs and the PyG batch's own fields.
RESERVED_NAMES = frozenset(
    {
        "z",
        "pos",
        "cell",
        "pbc",
        "natoms",
        "batch",
        "ptr",
        "edge_index",
        "edge_shift",
        "forces",
        "stress",
        "tags",
        "fixed",
        "sid",
        "node_features",
        "node_vectors",
        "x",
        "y",
        "edge_attr",
        "num_nodes",
        "file",
        "formula",
    }
)


def is_per_atom_unit(unit: str) -> bool:
    """True for units of a quantity per atom (``eV/atom``, ``meV/atom``, ``eV / atom``)."""
    return str(unit).replace(" ", "").lower().endswith("/atom")


def is_total_energy_unit(unit: str) -> bool:
    """True for units of a total energy (``TOTAL_ENERGY_UNITS``, case-insensitive)."""
    return str(unit).strip().lower() in {u.lower() for u in TOTAL_ENERGY_UNITS}


def default_readout(unit: str, name: str = "") -> str:
    """``sum`` for a total energy, ``mean`` for everything else.

    Per-atom units (eV/atom, meV/atom) and non-energy quantities (K, GPa, a class, no unit) are
    intensive; so are labels in eV whose name says they are orbital energies or gaps
    (``INTENSIVE_ENERGY_WORDS`` in the lower-cased name: band_gap, homo, lumo, ...).
    """
    if not is_total_energy_unit(unit):
        return "mean"
    if any(word in str(name).lower() for word in INTENSIVE_ENERGY_WORDS):
        return "mean"
    return "sum"


@dataclass(frozen=True)
class Target:
    """One scalar per structure that a model learns.

    Args:
        name: the label's name; the model's output key and ``geognn predict``'s column header.
            A Python identifier, not one of ``RESERVED_NAMES``, not starting with ``node_`` and
            not ending with ``_std`` (the ensemble's spread column).
        unit: unit of the values as the model sees them (default: "eV"), e.g. "eV/atom", "K".
        readout: "sum" (extensive, default) or "mean" (intensive); see the module docstring.

    ``is_energy``: an extensive energy in eV, the only kind of target forces and stress come from.

    >>> Target("e_form", "eV/atom", "mean").is_energy
    False
    """

    name: str
    unit: str = "eV"
    readout: str = "sum"

    def __post_init__(self):
        name = self.name
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"target name {name!r}: use letters, digits and underscores (a Python identifier)")
        if name in RESERVED_NAMES or name.startswith("node_") or name.endswith("_std"):
            raise ValueError(
                f"target name {name!r} is reserved (graph keys, outputs, *_std, node_*); choose another name"
            )
        if self.readout not in READOUTS:
            raise ValueError(f"target {name!r}: readout {self.readout!r}; choose one of {list(READOUTS)}")
        if not isinstance(self.unit, str):
            raise ValueError(f"target {name!r}: unit must be a string, got {type(self.unit).__name__}")

    @property
    def is_energy(self) -> bool:
        """An extensive energy in eV (readout ``sum``): forces and stress can come from it."""
        return self.readout == "sum" and self.unit == "eV"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def coerce(cls, value) -> "Target":
        """A ``Target`` from a Target, a dict of its fields or a bare name (unit eV, readout by unit)."""
        if isinstance(value, Target):
            return value
        if isinstance(value, str):
            return cls(value, "eV", default_readout("eV", value))
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"name", "unit", "readout"})
            if unknown or "name" not in value:
                raise ValueError(f"target {value!r}: expected keys name, unit, readout")
            unit = value.get("unit", "eV")
            return cls(value["name"], unit, value.get("readout") or default_readout(unit, value["name"]))
        raise ValueError(f"cannot make a target from {type(value).__name__} {value!r}")


#: The target of every energy model (and of checkpoints written before targets existed).
ENERGY_TARGET = Target("energy", "eV", "sum")


def energy_target(targets) -> Target | None:
    """The target forces and stress come from: one named ``energy`` if it is an extensive energy,
    else the first extensive energy in ``targets``, else None."""
    energies = [t for t in targets if t.is_energy]
    named = [t for t in energies if t.name == "energy"]
    return (named or energies or [None])[0]
