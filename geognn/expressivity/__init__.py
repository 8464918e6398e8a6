"""Expressivity: the geometric Weisfeiler-Leman test (gwl.py), a library of hard pairs (pairs.py),
probes of randomly initialised backbones (models.py), the dojo's trained experiment
(training.py), one input path for all of them (inputs.py) and the ``geognn expressivity``
report (report.py)."""

from .gwl import GWLResult, graph_from_atoms, graph_from_bonds, gwl_test, isometric_copy
from .inputs import as_graph
from .models import distinguishes, identifies_orientation, layers_needed, layers_scan, separation
from .pairs import HardPair, load_pairs
from .training import dojo_k_chain_pair, k_chain_experiment, train_to_separate

__all__ = [
    "GWLResult",
    "HardPair",
    "as_graph",
    "distinguishes",
    "graph_from_atoms",
    "graph_from_bonds",
    "gwl_test",
    "identifies_orientation",
    "isometric_copy",
    "layers_needed",
    "layers_scan",
    "load_pairs",
    "separation",
    "dojo_k_chain_pair",
    "k_chain_experiment",
    "train_to_separate",
]
