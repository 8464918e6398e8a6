"""Measured rotation/reflection symmetry errors of any model: ``symmetry_report``.

It runs models, so it lives in geognn.testing (above geognn.model on the import ladder), not in
geognn.symmetry (geometry only).

For each structure X and each of ``n_rotations`` random orthogonal matrices Q (proper rotations,
and with ``reflections=True`` as many improper ones, -Q), the model is run on X and on X Qᵀ
(positions and cell rows transformed, graph rebuilt as a user would). Errors per (structure, Q):

    invariance error   |E(X Qᵀ) - E(X)| / n_atoms                          eV/atom
    equivariance error max_i |F_i(X Qᵀ) - F_i(X) Qᵀ|                        eV/Å

The report gives mean, max and a histogram (log10 bins) of each. It measures, it does not
assume: exact models show round-off (1e-15 in float64, 1e-6 in float32); a stochastic frame
average shows its sampling spread; an unconstrained backbone its learned (or not) symmetry.
The model is run in its current train/eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from ase import Atoms

from .checks import predict, random_rotation, transformed

#: histogram bin edges, log10 of the error
LOG10_BINS = np.arange(-16.0, 2.0, 2.0)


@dataclass
class SymmetryReport:
    """Errors per (structure, transform): ``energy`` eV/atom [S*T], ``forces`` eV/Å [S*T]."""

    energy: np.ndarray
    forces: np.ndarray
    n_structures: int
    n_transforms: int
    summary: dict = field(default_factory=dict)

    def histogram(self, which: str = "energy") -> tuple[np.ndarray, np.ndarray]:
        """Counts per log10 bin and the bin edges (errors of exactly 0 go to the first bin)."""
        values = np.log10(np.maximum(getattr(self, which), 10.0 ** LOG10_BINS[0]))
        edges = np.concatenate([LOG10_BINS, [np.inf]])
        return np.histogram(values, bins=edges)[0], edges

    def __str__(self) -> str:
        s = self.summary
        lines = [
            f"symmetry report: {self.n_structures} structures x {self.n_transforms} random transforms",
            f"  energy invariance error (eV/atom): mean {s['energy_mean']:.2e}, max {s['energy_max']:.2e}",
            f"  force equivariance error (eV/Å):   mean {s['forces_mean']:.2e}, max {s['forces_max']:.2e}",
            "  histogram of log10(error):  " + "  ".join(f"[{e:g},{e + 2:g})" for e in LOG10_BINS),
        ]
        for which in ("energy", "forces"):
            counts, _ = self.histogram(which)
            lines.append(f"  {which:<8}" + " " * 19 + "  ".join(f"{c:>8d}" for c in counts))
        return "\n".join(lines)


def symmetry_report(
    model, structures: Sequence[Atoms], n_rotations: int = 8, *, reflections: bool = True, seed: int = 0
) -> SymmetryReport:
    """Invariance error of energies and equivariance error of forces of ``model`` under random
    rotations (and reflections) of ``structures`` (ase.Atoms; molecules or crystals).

    Returns a ``SymmetryReport``: per-transform errors, ``summary`` (mean/max), ``histogram()``;
    ``print(report)`` shows a table.
    """
    if int(n_rotations) != n_rotations or n_rotations < 1:
        raise ValueError(f"n_rotations must be a positive integer, got {n_rotations}")
    structures = list(structures)
    if not structures or not all(isinstance(a, Atoms) for a in structures):
        raise ValueError("structures must be a non-empty sequence of ase.Atoms")
    rng = np.random.default_rng(seed)
    mats = [random_rotation(rng) for _ in range(n_rotations)]
    if reflections:
        mats += [-random_rotation(rng) for _ in range(n_rotations)]
    energy_err, force_err = [], []
    for atoms in structures:
        ref = predict(model, [atoms], stress=False)[0]
        moved = predict(model, [transformed(atoms, m) for m in mats], stress=False)
        for m, got in zip(mats, moved):
            energy_err.append(abs(got["energy"] - ref["energy"]) / len(atoms))
            force_err.append(float(np.max(np.linalg.norm(got["forces"] - ref["forces"] @ m.T, axis=-1))))
    energy, forces = np.asarray(energy_err), np.asarray(force_err)
    summary = {
        "energy_mean": float(energy.mean()),
        "energy_max": float(energy.max()),
        "forces_mean": float(forces.mean()),
        "forces_max": float(forces.max()),
    }
    return SymmetryReport(energy, forces, len(structures), len(mats), summary)
