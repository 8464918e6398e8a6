"""Conformance checks that any geognn ``Model`` (any backbone) can be run through.

Each check transforms a structure, runs the model on both versions and returns the measured
errors in physical units (``CheckResult``: energy in eV/atom, forces in eV/Å, stress in eV/Å³,
cutoff jumps in eV), on the learned part of the model (per-element reference energies removed),
rather than a bare bool, so a failing test says by how much. ``assert_check`` raises with that
report. Tolerances per dtype (float64 and float32) are in ``TOLERANCE``, with the measured errors
they were set from in ``geognn.testing.checks``.

Transforms act on ``ase.Atoms``; graphs are rebuilt for the transformed structure with the
model's own cutoff, exactly as a user would. ``symmetry_report`` measures the rotation and
reflection error of any model (also those that are not exactly equivariant) over many rotations.
"""

from .checks import (
    INITIAL_SCALE,
    STEPS,
    TOLERANCE,
    CheckResult,
    Measured,
    Tolerance,
    assert_check,
    check_batching,
    check_cell_basis_change,
    check_cutoff_smoothness,
    check_determinism,
    check_finite_difference_forces,
    check_finite_difference_stress,
    check_initial_scale,
    check_permutation,
    check_reflection,
    check_rotation,
    check_supercell,
    check_translation,
    check_vector_equivariance,
    check_wrapping,
    predict,
    random_rotation,
    reference_energies_removed,
    transformed,
)
from .report import SymmetryReport, symmetry_report

__all__ = [
    "INITIAL_SCALE",
    "STEPS",
    "TOLERANCE",
    "CheckResult",
    "Measured",
    "Tolerance",
    "assert_check",
    "check_batching",
    "check_cell_basis_change",
    "check_cutoff_smoothness",
    "check_determinism",
    "check_finite_difference_forces",
    "check_finite_difference_stress",
    "check_initial_scale",
    "check_permutation",
    "check_reflection",
    "check_rotation",
    "check_supercell",
    "check_translation",
    "check_vector_equivariance",
    "check_wrapping",
    "predict",
    "random_rotation",
    "reference_energies_removed",
    "transformed",
    "SymmetryReport",
    "symmetry_report",
]
