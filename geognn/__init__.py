"""geognn: geometric graph neural networks for molecules and materials.

Flow: files / ase.Atoms / pymatgen -> ``read_structures`` -> ``build_graph`` -> ``collate``
-> ``Model`` (backbone -> heads) -> energy [eV], forces [eV/Å], stress [eV/Å³].
Conventions (units, edge direction, cell rows, stress sign) live in ``geognn.conventions``.

Model-side names (``BACKBONES``, ``Model``, ``Ensemble``, ``Target``, ``build_model``, ``load_model``,
``FrameAveraging``, ``GeoGNNCalculator``, ``export``) are imported on first use, so that data loading (``geognn.io``,
``geognn.graph``, ``geognn.datasets``) never imports the models.
"""

from importlib import import_module

from .graph.build import build_graph, collate, edge_vectors
from .io import StructureError, read_structures

__version__ = "0.1.0"

#: public name -> module that defines it, imported when the name is first used
_LAZY = {
    "BACKBONES": ".backbones",
    "Model": ".model",
    "build_model": ".model",
    "load_model": ".model",
    "Ensemble": ".model",
    "Target": ".targets",
    "FrameAveraging": ".backbones.frame_averaging",
    "GeoGNNCalculator": ".calculator",
    "export": ".export",
}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'geognn' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BACKBONES",
    "Ensemble",
    "FrameAveraging",
    "GeoGNNCalculator",
    "Model",
    "Target",
    "StructureError",
    "build_graph",
    "build_model",
    "collate",
    "edge_vectors",
    "export",
    "load_model",
    "read_structures",
    "__version__",
]
