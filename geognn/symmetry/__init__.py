"""Symmetry tools: frames and frame averaging (frames.py), grids on the sphere (sphere.py) and
measured symmetry errors of any model (report.py)."""

from .frames import DegenerateFrameWarning, FrameAveraging
from .report import SymmetryReport, symmetry_report
from .sphere import fibonacci_grid, orientation_grid, random_rotation, repulsion_grid

__all__ = ["DegenerateFrameWarning", "FrameAveraging", "SymmetryReport", "fibonacci_grid", "orientation_grid",
           "random_rotation", "repulsion_grid", "symmetry_report"]
