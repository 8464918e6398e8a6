"""geognn: geometric graph neural networks for molecules and materials.

Flow: files / ase.Atoms / pymatgen -> ``read_structures`` -> ``build_graph`` -> ``collate``
-> ``Model`` (backbone -> heads) -> energy [eV], forces [eV/Å], stress [eV/Å³].
Conventions (units, edge direction, cell rows, stress sign) live in ``geognn.conventions``.
"""

from .backbones import BACKBONES
from .graph.build import build_graph, collate, edge_vectors
from .io import StructureError, read_structures
from .model import Model, build_model, load_model
from .symmetry.frames import FrameAveraging

__version__ = "0.1.0"


def __getattr__(name):  # the calculator pulls in ase.calculators: import it on first use
    if name == "GeoGNNCalculator":
        from .calculator import GeoGNNCalculator

        return GeoGNNCalculator
    raise AttributeError(f"module 'geognn' has no attribute '{name}'")


__all__ = ["BACKBONES", "FrameAveraging", "GeoGNNCalculator", "Model", "StructureError", "build_graph", "build_model",
           "collate", "edge_vectors", "load_model", "read_structures", "__version__"]
