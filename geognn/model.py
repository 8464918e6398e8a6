"""``Model``: a backbone plus the heads every user needs (energy, forces, stress).

The forward pass reads like a recipe::

    strain (if stress)  ->  backbone(batch) -> node_features [N, F]
    -> per-atom head [N]  -> * scale + shift  -> + reference energy of the element [N]
    -> sum per structure = energy [B] eV
    -> forces = -dE/dpos [N, 3] eV/Å ;  stress = (1/V) dE/d(strain) [B, 3, 3] eV/Å³

Forces and stress come from autograd for every backbone, because backbones read geometry only
through ``edge_vectors(batch)``. Stress uses a symmetric strain applied to positions and cell
(ASE's sign convention); it is NaN for structures with no periodic direction, where it is undefined.

Checkpoints hold a format version, the constructor configuration and the ``state_dict`` (never a
pickled module), so they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from . import conventions as K
from .backbones import get_backbone_class
from .graph.build import graph_index, num_graphs
from .nn.blocks import MLP
from .nn.scatter import scatter_sum
from .symmetry.frames import (FRAME_NODE_FEATURES, FRAME_NODE_INDEX, FRAME_WEIGHTS, FrameAveraging,
                              frame_averaging_options)

#: Version of the checkpoint layout written by Model.save; bump when it changes incompatibly.
CHECKPOINT_FORMAT_VERSION = 1
MAX_Z = 118


class ReferenceEnergies(nn.Module):
    """Per-element reference energies ``E_ref[z]`` (eV), added to each atom's energy.

    With ``fit`` these are the least-squares solution of ``E(structure) ~ sum_atoms E_ref[z]``,
    i.e. a linear model on composition; on its own it is the standard baseline for total energies.
    """

    def __init__(self, max_z: int = MAX_Z):
        super().__init__()
        self.register_buffer("energies", torch.zeros(max_z + 1))  # [max_z + 1] eV

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """[N] atomic numbers -> [N] eV."""
        return self.energies[z]

    @torch.no_grad()
    def fit(self, z_per_structure: Sequence[torch.Tensor], energies: torch.Tensor) -> None:
        """Least-squares fit on composition. Elements absent from the data keep energy 0.

        Args:
            z_per_structure: B tensors of atomic numbers.
            energies: [B] eV.
        """
        if len(z_per_structure) != len(energies):
            raise ValueError(f"{len(z_per_structure)} structures but {len(energies)} energies")
        counts = torch.stack([torch.bincount(z, minlength=self.energies.numel()) for z in z_per_structure])
        present = counts.sum(0) > 0
        a = counts[:, present].double()  # [B, n_elements]
        solution = torch.linalg.lstsq(a, energies.double().unsqueeze(-1), driver="gelsd").solution
        self.energies.zero_()
        self.energies[present] = solution.squeeze(-1).to(self.energies.dtype)

    def extra_repr(self) -> str:
        nz = torch.nonzero(self.energies).flatten().tolist()
        return "{" + ", ".join(f"{z}: {float(self.energies[z]):.4f}" for z in nz) + "} eV"


class Model(nn.Module):
    """Backbone + per-atom energy head, scale/shift, reference energies; forces/stress by autograd.

    Args:
        backbone: a name in ``geognn.BACKBONES``.
        cutoff: graph radius in Å, used both to build graphs and by the backbone.
        max_neighbors: cap used when this model builds graphs (calculator, predict); None = no cap.
        forces: compute ``forces`` by default in ``forward``.
        stress: compute ``stress`` by default in ``forward``.
        backbone_kwargs: keyword arguments of the backbone (see its docstring).
        metadata: free-form, JSON-like facts saved with the checkpoint (what it was trained on, ...).
        frame_averaging: None (the plain backbone), "all", "stochastic", "det" or a dict of
            ``geognn.FrameAveraging`` options (frames, dim, group, eval_frames, degenerate_tol):
            wraps the backbone in frame averaging; the per-atom energy is then averaged over frames.

    ``forward(batch, forces=None, stress=None)`` returns ``energy`` [B] eV, and ``forces`` [N,3]
    eV/Å, ``stress`` [B,3,3] eV/Å³ when asked (None means the constructor's default), plus
    ``node_energy`` [N] eV and the backbone's ``node_features``.
    """

    def __init__(self, backbone: str = "schnet", cutoff: float = 5.0, max_neighbors: int | None = None,
                 forces: bool = True, stress: bool = False, backbone_kwargs: dict | None = None,
                 metadata: dict | None = None, frame_averaging: str | dict | None = None):
        super().__init__()
        backbone_kwargs = dict(backbone_kwargs or {})
        if "cutoff" in backbone_kwargs:
            raise ValueError("give cutoff to the Model, not in backbone_kwargs: it sets both")
        self.backbone_name = backbone
        self.cutoff = float(cutoff)
        self.max_neighbors = max_neighbors
        self.compute_forces = bool(forces)
        self.compute_stress = bool(stress)
        self.backbone_kwargs = backbone_kwargs
        self.metadata = dict(metadata or {})
        self.backbone = get_backbone_class(backbone)(cutoff=cutoff, **backbone_kwargs)
        self.frame_averaging = frame_averaging_options(frame_averaging)
        if self.frame_averaging is not None:
            self.backbone = FrameAveraging(self.backbone, **self.frame_averaging)
        width = self.backbone.out_channels
        self.energy_head = MLP([width, max(width // 2, 1), 1])
        self.reference = ReferenceEnergies()
        self.register_buffer("scale", torch.tensor(1.0))  # eV, per-atom output scale
        self.register_buffer("shift", torch.tensor(0.0))  # eV, per-atom output shift
        self.energy_head.reset_parameters()

    # ----------------------------------------------------------------------------- config
    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments; ``Model(**model.config)`` rebuilds the architecture."""
        return dict(backbone=self.backbone_name, cutoff=self.cutoff, max_neighbors=self.max_neighbors,
                    forces=self.compute_forces, stress=self.compute_stress,
                    backbone_kwargs=dict(self.backbone_kwargs), metadata=copy.deepcopy(self.metadata),
                    frame_averaging=copy.deepcopy(self.frame_averaging))

    def reset_parameters(self) -> None:
        """Re-initialise the backbone and the head (reference energies and scale/shift are kept)."""
        self.backbone.reset_parameters()
        self.energy_head.reset_parameters()

    def set_scale_shift(self, scale: float, shift: float) -> None:
        """Per-atom energy = scale * head + shift + reference (eV)."""
        self.scale.fill_(float(scale))
        self.shift.fill_(float(shift))

    # ----------------------------------------------------------------------------- forward
    def forward(self, batch, forces: bool | None = None, stress: bool | None = None) -> dict[str, torch.Tensor]:
        want_forces = self.compute_forces if forces is None else forces
        want_stress = self.compute_stress if stress is None else stress
        with torch.set_grad_enabled(torch.is_grad_enabled() or want_forces or want_stress):
            return self._forward(batch, want_forces, want_stress)

    def _forward(self, batch, want_forces: bool, want_stress: bool) -> dict[str, torch.Tensor]:
        n_graphs = num_graphs(batch)
        atom_graph = graph_index(batch)  # [N]
        pos, cell = batch[K.POS], batch[K.CELL]
        if want_forces and not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        strain = None
        if want_stress:
            # symmetric strain eps: r -> r (1 + eps), cell rows -> cell (1 + eps)
            strain = torch.zeros(n_graphs, 3, 3, dtype=pos.dtype, device=pos.device, requires_grad=True)
            sym = 0.5 * (strain + strain.transpose(1, 2))
            pos = pos + torch.einsum("nk,nkd->nd", pos, sym[atom_graph])
            cell = cell + torch.bmm(cell, sym)
        view = copy.copy(batch)  # shallow: the caller's batch keeps its tensors
        view[K.POS], view[K.CELL] = pos, cell

        features = self.backbone(view)
        if FRAME_NODE_FEATURES in features:  # frame averaging: average energies (not features) over frames
            per_frame = self.energy_head(features.pop(FRAME_NODE_FEATURES)).squeeze(-1)  # [M] (frame, atom)
            per_frame = per_frame * features.pop(FRAME_WEIGHTS)
            node_energy = scatter_sum(per_frame, features.pop(FRAME_NODE_INDEX), len(batch[K.Z]))  # [N]
        else:
            node_energy = self.energy_head(features[K.NODE_FEATURES]).squeeze(-1)  # [N]
        node_energy = node_energy * self.scale + self.shift + self.reference(batch[K.Z])
        energy = scatter_sum(node_energy, atom_graph, n_graphs)  # [B] eV
        out = {K.ENERGY: energy, "node_energy": node_energy, **features}

        inputs = ([pos] if want_forces else []) + ([strain] if want_stress else [])
        if inputs:
            grads = torch.autograd.grad(energy.sum(), inputs, create_graph=self.training,
                                        allow_unused=True)
            grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]
            if want_forces:
                out[K.FORCES] = -grads[0]
            if want_stress:
                volume = torch.linalg.det(batch[K.CELL]).abs()  # [B] Å³
                periodic = batch[K.PBC].any(dim=-1)
                volume = torch.where(periodic & (volume > 0), volume, torch.full_like(volume, float("nan")))
                out[K.STRESS] = grads[-1] / volume.view(-1, 1, 1)
        return out

    # ----------------------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike, extra: dict | None = None) -> None:
        """Write a checkpoint atomically (temp file + rename): format version, config, weights."""
        payload = {"format_version": CHECKPOINT_FORMAT_VERSION, "config": self.config,
                   "state_dict": self.state_dict()}
        if extra:
            payload.update(extra)
        atomic_torch_save(payload, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def build_model(backbone: str = "schnet", cutoff: float = 5.0, forces: bool = True, stress: bool = False,
                max_neighbors: int | None = None, metadata: dict | None = None,
                frame_averaging: str | dict | None = None, **backbone_kwargs) -> Model:
    """A ``Model`` with the named backbone; extra keywords go to the backbone's constructor.

    ``frame_averaging`` (None, "all", "stochastic", "det" or a dict of options) wraps the backbone
    in ``geognn.FrameAveraging``.

    >>> model = build_model("schnet", cutoff=5.0, hidden_channels=64, num_layers=3)
    >>> faenet = build_model("faenet", frame_averaging="stochastic")  # the FAENet paper's model
    """
    return Model(backbone=backbone, cutoff=cutoff, max_neighbors=max_neighbors, forces=forces,
                 stress=stress, backbone_kwargs=backbone_kwargs, metadata=metadata,
                 frame_averaging=frame_averaging)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The raw checkpoint dict (weights-only load), with its format checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable geognn checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(payload, dict) or "config" not in payload or "state_dict" not in payload:
        raise ValueError(f"{path}: not a geognn checkpoint (expected keys 'config' and 'state_dict')")
    version = payload.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format version {version}, this geognn reads "
                         f"version {CHECKPOINT_FORMAT_VERSION}")
    return payload


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Model:
    """Rebuild a ``Model`` from a checkpoint written by ``Model.save`` (eval mode)."""
    payload = load_checkpoint(path, map_location)
    model = Model(**payload["config"])
    saved_dtype = next((t.dtype for t in payload["state_dict"].values() if t.is_floating_point()), None)
    if saved_dtype is not None:
        model.to(saved_dtype)  # load float64 weights without a float32 round trip
    model.load_state_dict(payload["state_dict"])
    return model.eval()

