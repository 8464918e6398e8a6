"""ASE calculator: the user's door to a trained geognn model (MD, relaxations, phonons, ...).

    from geognn import GeoGNNCalculator
    atoms.calc = GeoGNNCalculator("runs/default/model.pt")
    atoms.get_potential_energy(); atoms.get_forces(); atoms.get_stress()

Units map one to one (geognn uses ASE's eV, Å, eV/Å³). Stress is only defined for structures
with a periodic direction; asking for it on a molecule raises PropertyNotImplementedError.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from . import conventions as K
from .graph.build import build_graph, collate
from .model import Ensemble, Model, load_model

#: (ASE property, geognn output key): geognn and ASE share units, so no factors are needed.
RESULTS_MAP = (("energy", K.ENERGY), ("free_energy", K.ENERGY), ("forces", K.FORCES), ("stress", K.STRESS))


class GeoGNNCalculator(Calculator):
    """ASE calculator for a ``geognn.Model`` or a checkpoint path.

    Args:
        model_or_checkpoint: a ``Model`` or ``Ensemble`` with an extensive energy target, or the
            path of a checkpoint (``Model.save``); an ensemble gives the members' mean.
        device: torch device to run on (default: "cpu").
        dtype: floating dtype for the graph and the model (default: torch.float64, so that
            finite-difference checks and tight relaxations behave; float32 is faster).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model_or_checkpoint: Model | Ensemble | str | os.PathLike, device: str = "cpu",
                 dtype: torch.dtype = torch.float64, **kwargs):
        super().__init__(**kwargs)
        model = model_or_checkpoint if isinstance(model_or_checkpoint, (Model, Ensemble)) \
            else load_model(model_or_checkpoint)
        if model.energy_target is None:
            raise ValueError(f"the calculator needs a model with an extensive energy target (eV, readout sum); "
                             f"this one predicts {model.target_names}")
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device, self.dtype = torch.device(device), dtype

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        periodic = bool(self.atoms.pbc.any())
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError("stress is undefined for a structure with no periodic direction")
        graph = build_graph(self.atoms, self.model.cutoff, self.model.max_neighbors, dtype=self.dtype)
        batch = collate([graph]).to(self.device)
        out = self.model(batch, forces=True, stress=periodic)
        for ase_key, key in RESULTS_MAP:
            if key not in out:
                continue
            value = out[key].detach().cpu().numpy().astype(np.float64)
            if key == K.ENERGY:
                self.results[ase_key] = float(value[0])
            elif key == K.STRESS:
                s = value[0]  # Voigt order xx yy zz yz xz xy, as ASE
                self.results[ase_key] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
            else:
                self.results[ase_key] = value
