"""Symmetry tools, geometry only: frames for frame averaging (frames.py; the wrapper that runs a
backbone is ``geognn.backbones.frame_averaging.FrameAveraging``), grids on the sphere
(sphere.py). Measured symmetry errors of a model (``symmetry_report``) run models, so they live
in ``geognn.testing``."""

from .frames import DegenerateFrameWarning, FrameBuilder
from .sphere import fibonacci_grid, orientation_grid, random_rotation, repulsion_grid

__all__ = [
    "DegenerateFrameWarning",
    "FrameBuilder",
    "fibonacci_grid",
    "orientation_grid",
    "random_rotation",
    "repulsion_grid",
]
