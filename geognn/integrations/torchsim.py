"""TorchSim model interface for geognn: relax (FIRE, with cell) or run MD on many structures in one batch.

    import torch_sim as ts
    from geognn.integrations.torchsim import GeoGNNModel

    model = GeoGNNModel("runs/default/model.pt", device="cpu", dtype=torch.float64)
    state = ts.io.atoms_to_state(list_of_atoms, model.device, model.dtype)
    relaxed = ts.optimize(state, model, optimizer=ts.frechet_cell_fire,
                          convergence_fn=ts.generate_force_convergence_fn(0.05))

Needs ``torch-sim-atomistic`` (0.3.0 is the version tested; ``pip install torch-sim-atomistic==0.3.0``).
``import geognn`` never imports this module; importing it without TorchSim raises an ImportError
that says what to install.

Conventions, checked against TorchSim 0.3.0's code (``torch_sim/state.py``, ``models/lennard_jones.py``,
``optimizers.py``):

- ``state.cell`` is [n_systems, 3, 3] with lattice vectors as *columns*; geognn (like ASE) stores
  them as rows, so the graph gets ``state.row_vector_cell`` (the transpose).
- Units are TorchSim's "metal" units, the same as geognn's: Å, eV, eV/Å, and stress in eV/Å³.
- Stress has ASE's sign in both (``sigma = (1/V) dE/d(strain)``): TorchSim's cell optimisers take
  ``-V * (stress + p)`` as the force on the cell (``p`` the external pressure, in the stress's
  units, eV/Å³), and its MACE wrapper passes MACE's ASE-convention stress on unchanged. So geognn's
  stress is passed on unchanged; ``tests/test_torchsim.py`` checks sign and units by relaxing a cell
  under pressure with TorchSim and with ASE's ``FrechetCellFilter`` (same volume).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from ase import Atoms

try:
    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface
except ImportError as err:  # pragma: no cover - exercised only where TorchSim is absent
    raise ImportError(
        f"geognn.integrations.torchsim needs TorchSim: pip install torch-sim-atomistic==0.3.0 (import failed: {err})"
    ) from err

from .. import conventions as K
from ..calculator import energy_model
from ..graph.build import build_graph, collate
from ..model import Ensemble, Model

#: dtypes TorchSim states and geognn models can share.
DTYPES = (torch.float32, torch.float64)


class GeoGNNModel(ModelInterface):
    """A geognn ``Model`` (or ``Ensemble``, or a checkpoint) as a TorchSim model.

    Every call builds one graph per system with geognn's own neighbour list (``build_graph``, the
    model's cutoff and ``max_neighbors``, as the ASE calculator does), collates them into one batch
    and runs the model once for all systems; forces and stress come from the model's autograd.

    Args:
        checkpoint_or_model: a ``Model`` or ``Ensemble`` with an extensive energy target (eV,
            readout sum), or the path of a checkpoint (``Model.save``); an ensemble gives the
            members' mean.
        device: torch device (default: "cuda" when available, else "cpu", as TorchSim's models).
        dtype: ``torch.float32`` or ``torch.float64`` (default: torch.float64, as TorchSim's models
            and ``GeoGNNCalculator``). The weights are cast to it; a model passed in whose dtype or
            device differs is copied first, so the caller's model is left as it was.
        compute_forces: return ``forces`` (default: True).
        compute_stress: return ``stress`` (default: True); needs periodic states (``state.pbc``).
        validate: run ``geognn.io.validate_atoms`` on every system at every call (NaN, overlapping
            atoms, ...; default: True). False saves a little time per step in long runs.

    ``forward(state)`` takes a ``torch_sim.SimState`` (or a dict of its fields) with
    ``positions`` [n_atoms, 3] Å, ``cell`` [n_systems, 3, 3] Å (columns are lattice vectors),
    ``atomic_numbers`` [n_atoms], ``system_idx`` [n_atoms] and ``pbc`` (bool), and returns
    ``energy`` [n_systems] eV, ``forces`` [n_atoms, 3] eV/Å and ``stress`` [n_systems, 3, 3] eV/Å³
    (ASE's and TorchSim's sign), all detached, in the model's dtype on its device.

    Raises:
        ValueError: a dtype other than float32/float64, a model with no extensive energy target,
            or (in ``forward``) stress asked for a non-periodic state.
    """

    def __init__(
        self,
        checkpoint_or_model: Model | Ensemble | str | os.PathLike,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
        compute_forces: bool = True,
        compute_stress: bool = True,
        validate: bool = True,
    ) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"GeoGNNModel dtype must be torch.float32 or torch.float64, got {dtype!r}")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = energy_model(checkpoint_or_model, device, dtype, "GeoGNNModel")
        self._device, self._dtype = device, dtype
        self._compute_forces, self._compute_stress = bool(compute_forces), bool(compute_stress)
        self._memory_scales_with = "n_atoms_x_density"  # radial cutoff: memory grows with density
        self.validate = bool(validate)

    def batch_from_state(self, state: ts.SimState):
        """The geognn ``Batch`` of ``state``'s systems on the model's device (one graph per system)."""
        system_idx = state.system_idx
        counts = torch.bincount(system_idx).tolist()
        positions = state.positions.detach()
        cells = state.row_vector_cell.detach()  # [n_systems, 3, 3], rows are lattice vectors
        pos_np = positions.cpu().numpy().astype(np.float64)
        cell_np = cells.cpu().numpy().astype(np.float64)
        z_np = state.atomic_numbers.detach().cpu().numpy()
        pbc = [bool(state.pbc)] * 3
        graphs, start = [], 0
        for b, n in enumerate(counts):
            atoms = Atoms(
                numbers=z_np[start : start + n], positions=pos_np[start : start + n], cell=cell_np[b], pbc=pbc
            )
            graphs.append(
                build_graph(
                    atoms, self.model.cutoff, self.model.max_neighbors, dtype=self._dtype, validate=self.validate
                )
            )
            start += n
        batch = collate(graphs).to(self._device)
        # the state's own tensors (same values): no round trip through numpy for the geometry
        batch[K.POS] = positions.to(device=self._device, dtype=self._dtype)
        batch[K.CELL] = cells.to(device=self._device, dtype=self._dtype)
        return batch

    def forward(self, state: ts.SimState | dict, **kwargs) -> dict[str, torch.Tensor]:
        """``energy`` [n_systems] eV, ``forces`` [n_atoms, 3] eV/Å, ``stress`` [n_systems, 3, 3] eV/Å³."""
        if isinstance(state, dict):
            state = ts.SimState(**state, masses=torch.ones_like(state["positions"][:, 0]))
        if self._compute_stress and not state.pbc:
            raise ValueError(
                "GeoGNNModel: stress is undefined for a non-periodic state (pbc=False); "
                "build it with compute_stress=False for molecules"
            )
        batch = self.batch_from_state(state)
        out = self.model(batch, forces=self._compute_forces, stress=self._compute_stress)
        results = {"energy": out[K.ENERGY].detach()}
        if self._compute_forces:
            results["forces"] = out[K.FORCES].detach()
        if self._compute_stress:
            results["stress"] = out[K.STRESS].detach()
        return results
