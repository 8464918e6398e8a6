"""Expressivity: the geometric Weisfeiler-Leman test (gwl.py), a library of hard pairs (pairs.py),
learned-model probes (models.py) and the ``geognn expressivity`` report (report.py)."""

from .gwl import GWLResult, graph_from_atoms, graph_from_bonds, gwl_test, isometric_copy
from .models import distinguishes, identifies_orientation, layers_needed, separation
from .pairs import HardPair, load_pairs

__all__ = ["GWLResult", "HardPair", "distinguishes", "graph_from_atoms", "graph_from_bonds", "gwl_test",
           "identifies_orientation", "isometric_copy", "layers_needed", "load_pairs", "separation"]
