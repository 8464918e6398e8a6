"""Conformance checks that any geognn ``Model`` (any backbone) can be run through.

Each check transforms a structure, runs the model on both versions and returns the measured
error (``CheckResult``: max absolute and relative error) rather than a bare bool, so a failing
test says by how much. ``assert_check`` raises with that report. Use float64 models for the
tight tolerances in ``TOLERANCE``.

Transforms act on ``ase.Atoms``; graphs are rebuilt for the transformed structure with the
model's own cutoff, exactly as a user would.
"""

from .checks import (
    TOLERANCE,
    CheckResult,
    assert_check,
    check_batching,
    check_cell_basis_change,
    check_cutoff_smoothness,
    check_determinism,
    check_finite_difference_forces,
    check_finite_difference_stress,
    check_permutation,
    check_reflection,
    check_rotation,
    check_supercell,
    check_translation,
    check_vector_equivariance,
    check_wrapping,
    predict,
    random_rotation,
    transformed,
)
from ..symmetry.report import SymmetryReport, symmetry_report

__all__ = [
    "TOLERANCE", "CheckResult", "assert_check", "check_batching", "check_cell_basis_change",
    "check_cutoff_smoothness", "check_determinism", "check_finite_difference_forces", "check_finite_difference_stress", "check_permutation",
    "check_reflection", "check_rotation", "check_supercell", "check_translation", "check_vector_equivariance", "check_wrapping",
    "predict", "random_rotation", "transformed", "SymmetryReport", "symmetry_report",
]
