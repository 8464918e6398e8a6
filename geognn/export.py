"""Export a ``Model`` to a TorchScript file that runs without geognn (``geognn export``).

The file is loaded with ``torch.jit.load(path)`` and nothing but torch installed. Its module takes
tensors and returns the energy and the forces of one structure::

    energy, forces = module(positions, atomic_numbers, cell, edge_index, edge_shift)

    positions       [N, 3]  float   Å (any float dtype; cast to the model's)
    atomic_numbers  [N]     int64
    cell            [3, 3]  float   Å, rows are lattice vectors; zeros for a molecule
    edge_index      [2, E]  int64   geognn's direction: row 0 the neighbour j, row 1 the centre i
    edge_shift      [E, 3]  int64   integer lattice image of j: r_ij = pos[j] + shift @ cell - pos[i]
    ->  energy      []      eV      (the model's dtype), reference energies and scale/shift included
        forces      [N, 3]  eV/Å    -dE/dpos, by autograd inside the module

The caller builds the neighbour list (both directions of every pair within ``module.cutoff`` Å,
as ``geognn.graph.build_graph`` does); ``module.cutoff`` (Å), ``module.max_neighbors`` (the
model's cap on neighbours per atom, -1 for none; see ``build_graph``), ``module.max_z``,
``module.species`` (the atomic numbers the model has weights for; empty: every Z up to ``max_z``;
other elements are an error) and ``module.backbone`` are attributes of the loaded module. Call it
with gradients enabled (not under ``torch.no_grad()``): TorchScript cannot switch them on for the
forces.

For OpenMM-Torch, ``openmm_module(exported, atomic_numbers)`` wraps an exported file for a
molecule in the interface of its ``TorchForce`` (positions in nm -> energy in kJ/mol and forces
in kJ/mol/nm, with ``setOutputsForces(True)``), building the neighbour list itself.

How: the energy (model + heads + reference energies + scale/shift) is recorded with
``torch.jit.trace`` on a small example, and a scripted wrapper adds the forces by
``torch.autograd.grad`` and checks atomic numbers. Tracing records tensor operations only, so a
backbone whose Python code branches on the data, or turns tensor sizes into Python integers,
would be recorded for the example's sizes or elements only. Therefore only the backbones in
``EXPORTABLE`` are exported (each checked by ``tests/test_export.py`` on structures of other sizes
and elements than the example), and every export is checked once more against the eager model on a
periodic structure of another size before the file is written. ``NOT_EXPORTABLE`` says why the
others are refused. ``torch.export`` (torch 2.13) was tried first and stops earlier: at the
backbones' atomic-number check (``int(z.max())``, data-dependent), at ``Model.forward``'s
``set_grad_enabled`` (an export verifier error) and at mace's element loop; its files could not be
loaded by OpenMM-Torch either, which reads TorchScript.
"""

import copy
import os
import sys
import tempfile
import types
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import nn

from . import conventions as K

#: Backbones whose traced energy is exact for any number of atoms, edges and elements (tested).
EXPORTABLE = ("schnet", "painn", "egnn", "nequip", "mace", "ponita", "pnita")

#: Backbones that cannot be exported, and why (found with torch 2.13 on CPU).
NOT_EXPORTABLE = {
    "dimenetpp": "its triplet builder sizes tensors with a Python integer (int(per_edge.sum())), so a "
    "trace holds only for the example's number of triplets",
    "faenet": "it reads OC20 tags (surface/adsorbate atoms), which the exported inputs do not carry: "
    "a file would silently treat every atom as tag 0",
}

#: |exported - eager| allowed by the check run at export time: eV for the energy, eV/Å for forces.
#: Measured in float32 on the structures of tests/test_export.py: 0 eV (bitwise equal) and at most
#: 3e-7 eV/Å; 1e-3 leaves room for another summation order, while a wrong trace is off by far more.
EXPORT_CHECK_TOL = 1e-3


class ExportError(ValueError):
    """The model cannot be exported (unsupported backbone, frame averaging, ensemble, no energy)."""


class _EnergyFunction(nn.Module):
    """Tensors -> total energy [] eV of one structure through the geognn ``Model`` (traced)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, positions, atomic_numbers, cell, edge_index, edge_shift):
        from torch_geometric.data import Data  # trace time only: the file needs neither PyG nor geognn

        data = Data(
            z=atomic_numbers,
            pos=positions,
            cell=cell.unsqueeze(0),
            pbc=(cell.abs().sum(-1) > 0).unsqueeze(0),
            edge_index=edge_index,
            edge_shift=edge_shift.to(positions.dtype),
        )
        return self.model(data, forces=False, stress=False)[K.ENERGY].sum()


class ExportedModel(nn.Module):
    """Scripted wrapper: input checks, dtype cast, energy [] eV and forces [N, 3] eV/Å by autograd."""

    cutoff: float
    max_neighbors: int
    max_z: int
    species: List[int]
    backbone: str

    def __init__(
        self,
        energy: nn.Module,
        cutoff: float,
        max_neighbors: int,
        max_z: int,
        backbone: str,
        dtype: torch.dtype,
        species: Optional[List[int]] = None,
    ):
        super().__init__()
        self.energy = energy
        self.cutoff = float(cutoff)
        self.max_neighbors = int(max_neighbors)  # -1: no cap
        self.max_z = int(max_z)
        self.backbone = backbone
        self.species = [int(z) for z in species] if species is not None else []  # []: every Z up to max_z
        known = torch.ones(self.max_z + 1, dtype=torch.bool)
        if species is not None:
            known = torch.zeros(self.max_z + 1, dtype=torch.bool)
            known[self.species] = True
        self.register_buffer("_known", known)  # [max_z + 1]: the model has weights for this Z
        self.register_buffer("_dtype_probe", torch.zeros(0, dtype=dtype))  # carries the model's dtype

    def forward(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        cell: torch.Tensor,
        edge_index: torch.Tensor,
        edge_shift: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        n = positions.shape[0]
        if positions.dim() != 2 or positions.shape[1] != 3:
            raise ValueError("positions must be [N, 3] (Å)")
        if atomic_numbers.shape != (n,):
            raise ValueError("atomic_numbers must be [N] with N = len(positions)")
        if cell.shape != (3, 3):
            raise ValueError("cell must be [3, 3] (Å; zeros for a molecule)")
        if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_shift.shape != (edge_index.shape[1], 3):
            raise ValueError("edge_index must be [2, E] and edge_shift [E, 3]")
        if n > 0 and (int(atomic_numbers.min()) < 1 or int(atomic_numbers.max()) > self.max_z):
            raise ValueError("atomic numbers must lie in [1, max_z] of this model")
        if n > 0 and not bool(self._known[atomic_numbers].all()):
            raise ValueError("atomic numbers must be among the species of this model: " + str(self.species))
        if edge_index.numel() > 0 and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
            raise ValueError("edge_index refers to an atom that does not exist")
        dtype = self._dtype_probe.dtype
        pos = positions.detach().to(dtype).requires_grad_(True)
        # TorchScript has no enable_grad(): call the module with gradients on (not under torch.no_grad())
        energy = self.energy(pos, atomic_numbers.long(), cell.to(dtype), edge_index.long(), edge_shift.long())
        grads = torch.autograd.grad([energy], [pos], allow_unused=True)
        grad: Optional[torch.Tensor] = grads[0]
        forces = torch.zeros_like(pos) if grad is None else -grad
        return energy.detach(), forces.detach()


def _example_inputs(model, n_atoms: int, periodic: bool, seed: int) -> List[torch.Tensor]:
    """A small random structure (tensors in the exported module's order) with geognn's neighbour list."""
    import numpy as np
    from ase import Atoms

    from .graph.build import build_graph

    rng = np.random.default_rng(seed)
    elements = [z for z in (1, 6, 7, 8, 14) if not model.unknown_elements([z])] or list(model.species or [1])[:5]
    numbers = rng.choice(elements, size=n_atoms)
    # atoms on a jittered grid 1.6 Å apart: no overlap, several neighbours each within any usual cutoff
    side = int(np.ceil(n_atoms ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n_atoms]
    positions = 1.6 * grid + rng.uniform(-0.2, 0.2, size=(n_atoms, 3))
    if periodic:
        length = 1.6 * side
        atoms = Atoms(numbers=numbers, positions=positions, cell=[[length, 0.2, 0], [0, length, 0], [0.3, 0, length]])
        atoms.pbc = True
    else:
        atoms = Atoms(numbers=numbers, positions=positions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isolated atoms with a tiny cutoff are fine for a trace
        g = build_graph(atoms, model.cutoff, model.max_neighbors, dtype=next(model.parameters()).dtype)
    return [g[K.POS], g[K.Z], g[K.CELL][0], g[K.EDGE_INDEX], g[K.EDGE_SHIFT].round().long()]


def check_exportable(model) -> None:
    """ExportError (one line) when ``model`` is not a plain geognn ``Model`` of an exportable backbone."""
    from .model import Ensemble, Model

    if isinstance(model, Ensemble):
        raise ExportError("an ensemble cannot be exported: export each member's checkpoint")
    if not isinstance(model, Model):
        raise ExportError(f"expected a geognn Model, got {type(model).__name__}")
    if model.energy_target is None:
        raise ExportError(f"the model has no extensive energy target (targets {model.target_names}): nothing to export")
    if model.frame_averaging is not None:
        raise ExportError("a frame-averaged model cannot be exported: its frames depend on the data")
    name = model.backbone_name
    if name not in EXPORTABLE:
        why = NOT_EXPORTABLE.get(name, "not checked for export")
        raise ExportError(f"backbone {name!r} cannot be exported ({why}); exportable: {', '.join(EXPORTABLE)}")


def export_model(model, path: str | os.PathLike) -> Path:
    """Write ``model`` (a geognn ``Model``) as a TorchScript file that runs with torch alone.

    The loaded module maps ``(positions [N,3] Å, atomic_numbers [N] int64, cell [3,3] Å,
    edge_index [2,E] int64, edge_shift [E,3] int64)`` to ``(energy [] eV, forces [N,3] eV/Å)``;
    see the module docstring. The model is not changed (a CPU copy is exported; move the loaded
    module with ``.to(device)``). Before writing, the file's module is
    compared with the eager model on a periodic structure of another size than the one traced
    (RuntimeError if they differ by more than ``EXPORT_CHECK_TOL`` eV or eV/Å).

    Raises:
        ExportError: ensembles, frame averaging, models without an energy target, and backbones
            outside ``EXPORTABLE`` (the message says why).

    Returns the path written.
    """
    check_exportable(model)
    path = Path(path)
    # a CPU copy in eval mode whose weights need no gradient: the file's autograd then computes
    # -dE/dpos only (with trainable weights, TorchScript's backward also formed every weight
    # gradient: about 2.6x slower); the caller's model is left as it was
    frozen = copy.deepcopy(model).cpu().eval().requires_grad_(False)
    dtype = next(frozen.parameters()).dtype
    example = _example_inputs(frozen, 5, periodic=False, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trace's deprecation notice and its int()/bool() notices
        energy = torch.jit.trace(_EnergyFunction(frozen), tuple(example), check_trace=False)
        module = torch.jit.script(
            ExportedModel(
                energy,
                frozen.cutoff,
                -1 if frozen.max_neighbors is None else frozen.max_neighbors,
                frozen.max_z,
                frozen.backbone_name,
                dtype,
                None if frozen.species is None else list(frozen.species),
            )
        )
    _check_against_eager(frozen, module)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:  # a temporary file renamed into place: never a half-written file
        module.save(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _check_against_eager(model, module) -> None:
    from torch_geometric.data import Data

    pos, z, cell, edge_index, shift = _example_inputs(model, 12, periodic=True, seed=1)
    try:
        energy, forces = module(pos, z, cell, edge_index, shift)
    except RuntimeError as exc:  # a trace that baked in the example's sizes fails on other ones
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise RuntimeError(
            f"the exported {model.backbone_name} model fails on a check structure of another size ({first[:200]}): not written"
        ) from None
    graph = Data(z=z, pos=pos, cell=cell.unsqueeze(0), pbc=torch.ones(1, 3, dtype=torch.bool))
    graph.edge_index, graph.edge_shift = edge_index, shift.to(pos.dtype)
    ref = model(graph, forces=True, stress=False)
    de = float((energy - ref[K.ENERGY].detach().sum()).abs())
    df = float((forces - ref[K.FORCES].detach()).abs().max()) if forces.numel() else 0.0
    if not (de <= EXPORT_CHECK_TOL and df <= EXPORT_CHECK_TOL):
        raise RuntimeError(
            f"the exported {model.backbone_name} model differs from the eager one on a check structure "
            f"(energy by {de:.3g} eV, forces by {df:.3g} eV/Å): not written"
        )


def export(model, path: str | os.PathLike) -> Path:
    """``geognn.export(model, path)``: a ``Model`` (or the path of a checkpoint) -> TorchScript file.

    Same as ``export_model``; a path is loaded with ``geognn.load_model`` first.
    """
    if isinstance(model, (str, os.PathLike)):
        from .model import load_model

        model = load_model(model)
    return export_model(model, path)


#: 1 eV in kJ/mol: e N_A / 1000, CODATA 2018 (exact e and N_A since SI 2019).
EV_TO_KJ_PER_MOL = 96.48533212331002
#: 1 nm in Å.
NM_TO_ANGSTROM = 10.0


class OpenMMMolecule(nn.Module):
    """An exported geognn model for one molecule in OpenMM-Torch's ``TorchForce`` interface.

    ``forward(positions [N, 3] nm) -> (energy [] kJ/mol, forces [N, 3] kJ/mol/nm)``: positions are
    converted to Å, every pair closer than the model's cutoff becomes an edge in both directions
    (all pairs, no periodic images), and the exported module's eV and eV/Å are converted back.
    Use it with ``TorchForce(path)`` and ``force.setOutputsForces(True)``.
    """

    cutoff: float
    nm_to_angstrom: float
    ev_to_kj_per_mol: float

    def __init__(self, exported: nn.Module, atomic_numbers: torch.Tensor):
        super().__init__()
        self.exported = exported
        self.cutoff = float(exported.cutoff)
        self.nm_to_angstrom, self.ev_to_kj_per_mol = NM_TO_ANGSTROM, EV_TO_KJ_PER_MOL  # TorchScript reads no globals
        self.register_buffer("atomic_numbers", atomic_numbers.long())

    def forward(self, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        pos = positions * self.nm_to_angstrom  # [N, 3] Å
        n = pos.shape[0]
        if n != self.atomic_numbers.shape[0]:
            raise ValueError("positions and atomic_numbers have different numbers of atoms")
        with torch.no_grad():
            dist = torch.cdist(pos, pos)  # [N, N] Å
            close = (dist < self.cutoff) & ~torch.eye(n, dtype=torch.bool, device=pos.device)
            pairs = close.nonzero()  # [E, 2] rows (centre i, neighbour j)
        edge_index = torch.stack([pairs[:, 1], pairs[:, 0]])  # [2, E]: row 0 neighbour j, row 1 centre i
        edge_shift = torch.zeros(pairs.shape[0], 3, dtype=torch.long, device=pos.device)
        cell = torch.zeros(3, 3, dtype=pos.dtype, device=pos.device)
        energy, forces = self.exported(pos, self.atomic_numbers, cell, edge_index, edge_shift)
        return (
            (energy * self.ev_to_kj_per_mol).to(positions.dtype),
            (forces * (self.ev_to_kj_per_mol * self.nm_to_angstrom)).to(positions.dtype),
        )


def openmm_module(exported, atomic_numbers) -> torch.jit.ScriptModule:
    """A scripted ``OpenMMMolecule`` for OpenMM-Torch (save it with ``.save(path)``, then
    ``openmmtorch.TorchForce(path)`` with ``setOutputsForces(True)``).

    Args:
        exported: a file written by ``export_model`` or the module ``torch.jit.load`` gives for it.
        atomic_numbers: [N] the molecule's atomic numbers, in OpenMM's particle order.

    ValueError when the model caps neighbours (``max_neighbors``): the all-pairs list would differ.
    """
    if isinstance(exported, (str, os.PathLike)):
        exported = torch.jit.load(str(exported))
    if int(exported.max_neighbors) >= 0:
        raise ValueError(
            f"the exported model caps neighbours at max_neighbors={exported.max_neighbors}; "
            "openmm_module builds all pairs within the cutoff"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice
        return torch.jit.script(OpenMMMolecule(exported, torch.as_tensor(atomic_numbers)))


class _CallableModule(types.ModuleType):
    """Makes ``geognn.export(model, path)`` work even after ``import geognn.export`` has bound the
    name ``geognn.export`` to this module rather than to the function."""

    def __call__(self, model, path: str | os.PathLike) -> Path:
        return export(model, path)


sys.modules[__name__].__class__ = _CallableModule
