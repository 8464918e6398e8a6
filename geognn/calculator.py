"""ASE calculator: the user's door to a trained geognn model (MD, relaxations, phonons, ...).

    from geognn import GeoGNNCalculator
    atoms.calc = GeoGNNCalculator("runs/default/model.pt")
    atoms.get_potential_energy(); atoms.get_forces(); atoms.get_stress()

Units map one to one (geognn uses ASE's eV, Å, eV/Å³). Stress is only defined for structures
with a periodic direction; asking for it on a molecule raises PropertyNotImplementedError.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from . import conventions as K
from .graph.build import build_graph, collate
from .model import Ensemble, Model, load_model
from .runtime import tune_allocator as tune_process_allocator

#: (ASE property, geognn output key): geognn and ASE share units, so no factors are needed.
RESULTS_MAP = (("energy", K.ENERGY), ("free_energy", K.ENERGY), ("forces", K.FORCES), ("stress", K.STRESS))

#: dtype names the calculator accepts -> torch dtype.
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def energy_model(
    model_or_checkpoint, device: torch.device, dtype: torch.dtype, user: str = "the calculator"
) -> Model | Ensemble:
    """The model (a Model, an Ensemble or a checkpoint path) on ``device`` in ``dtype``, in eval
    mode, for simulation: it must have an extensive energy target (eV, readout sum), else a
    ValueError naming ``user``. A model passed in whose dtype or device differs is copied first
    (``nn.Module.to`` casts in place), so the caller's model is left as it was."""
    model = (
        model_or_checkpoint if isinstance(model_or_checkpoint, (Model, Ensemble)) else load_model(model_or_checkpoint)
    )
    if model.energy_target is None:
        raise ValueError(
            f"{user} needs a model with an extensive energy target (eV, readout sum); "
            f"this one predicts {model.target_names}"
        )
    tensors = [*model.parameters(), *model.buffers()]
    if model is model_or_checkpoint and any(
        (t.is_floating_point() and t.dtype != dtype) or t.device != device for t in tensors
    ):
        model = copy.deepcopy(model)
    return model.to(device=device, dtype=dtype).eval()


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``"float32"``/``"float64"`` or ``torch.float32``/``torch.float64`` -> the torch dtype; else ValueError."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(
        f"GeoGNNCalculator dtype must be one of {sorted(DTYPES)} (or torch.float32/torch.float64), got {dtype!r}"
    )


class GeoGNNCalculator(Calculator):
    """ASE calculator for a ``geognn.Model`` or a checkpoint path.

    Args:
        model_or_checkpoint: a ``Model`` or ``Ensemble`` with an extensive energy target, or the
            path of a checkpoint (``Model.save``); an ensemble gives the members' mean.
        device: torch device to run on (default: "cpu").
        dtype: floating dtype for the graph and the model, ``"float32"``, ``"float64"`` or the
            matching ``torch.dtype`` (default: torch.float64, so that finite-difference checks,
            tight relaxations and long NVE runs behave; float32 is faster). The weights are cast to
            it; a model passed in whose dtype or device differs is copied first, so the caller's
            model is left as it was.
        tune_allocator: True calls ``geognn.runtime.tune_allocator()`` (default: False): glibc
            then keeps freed tensor memory in the process instead of returning and re-faulting it
            on every step (median 0.88x the time per step, but up to 3-4x the resident memory;
            process-wide and not undoable, so the calculator, which runs inside your script, only
            does it when asked; ``geognn train`` and ``predict`` do it by default).

    Raises:
        ValueError: for a dtype other than those above, or a model with no extensive energy target.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        model_or_checkpoint: Model | Ensemble | str | os.PathLike,
        device: str = "cpu",
        dtype: torch.dtype | str = torch.float64,
        tune_allocator: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if tune_allocator:
            tune_process_allocator()
        dtype = resolve_dtype(dtype)
        self.model = energy_model(model_or_checkpoint, torch.device(device), dtype, "the calculator")
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
