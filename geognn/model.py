"""``Model``: a backbone plus one head per target; forces and stress from an extensive energy.

A model learns one or more ``geognn.targets.Target`` (name, unit, readout). The forward pass
reads like a recipe::

    strain (if stress)  ->  backbone(batch) -> node_features [N, F]
    for each target t:  per-atom head_t [N] -> * scale_t + shift_t -> + reference_t[z] [N]
                        -> sum (extensive) or mean (intensive) per structure = out[t.name] [B]
    energy target (extensive, eV):  forces = -dE/dpos [N, 3] eV/Å ;  stress = (1/V) dE/d(strain) [B, 3, 3] eV/Å³

The default model has the single target ``energy`` (eV, sum), so ``out["energy"]`` is the
total energy as before. Forces and stress come from autograd for every backbone, because
backbones read geometry only through ``edge_vectors(batch)``. Stress uses a symmetric strain
applied to positions and cell (ASE's sign convention); it is NaN for structures with no
periodic direction, where it is undefined.

``Ensemble`` holds several models with the same targets; it returns their mean per target
and the spread ``<target>_std``.
``FrameSpread`` (``predict_with_spread``) gives one frame-averaged or PΘNITA model's spread
over its frames or over rotations of its orientation grid, ``<target>_std``, at no extra training.

Checkpoints hold a format version, the constructor configuration and the ``state_dict`` (never a
pickled module), so they load with ``torch.load(weights_only=True)``. Version 1 checkpoints
(one energy head, before targets) are upgraded on load (``upgrade_checkpoint``).
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
from .backbones.frame_averaging import (
    FRAME_NODE_FEATURES,
    FRAME_NODE_INDEX,
    FRAME_WEIGHTS,
    FrameAveraging,
    frame_averaging_options,
)
from .graph.build import graph_index, num_graphs
from .nn.blocks import MLP
from .nn.scatter import scatter_sum
from .nn.species import normalise_species, unknown_elements, unknown_elements_message
from .runtime import CompiledBackbone
from .symmetry.sphere import random_rotation
from .targets import ENERGY_TARGET, Target, energy_target

#: Version of the checkpoint layout written by Model.save; bump when it changes incompatibly.
#: 1: one energy head (``energy_head``, ``reference``, ``scale``, ``shift``); 2: one head per target.
CHECKPOINT_FORMAT_VERSION = 2
#: Versions ``load_checkpoint`` reads (older ones are upgraded by ``upgrade_checkpoint``).
READABLE_FORMAT_VERSIONS = (1, 2)
MAX_Z = 118


class ReferenceEnergies(nn.Module):
    """Per-element reference values ``ref[z]`` in the target's unit (eV for energies), added to
    each atom's value before the readout.

    With ``fit`` these are the least-squares solution of a linear model on composition: on
    element counts for a ``sum`` readout (``E ~ sum_e n_e ref_e``, the standard baseline for total
    energies), on element fractions for a ``mean`` readout (``y ~ sum_e (n_e / N) ref_e``, the
    composition baseline of an intensive property).
    """

    def __init__(self, max_z: int = MAX_Z):
        super().__init__()
        self.register_buffer("energies", torch.zeros(max_z + 1))  # [max_z + 1] eV

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """[N] atomic numbers -> [N] eV."""
        return self.energies[z]

    @torch.no_grad()
    def fit(self, z_per_structure: Sequence[torch.Tensor], energies: torch.Tensor, readout: str = "sum") -> None:
        """Least-squares fit on composition. Elements absent from the data keep the value 0.

        Args:
            z_per_structure: B tensors of atomic numbers.
            energies: [B] labels in the target's unit (eV for energies).
            readout: "sum" fits on element counts, "mean" on element fractions (default: "sum").
        """
        if len(z_per_structure) != len(energies):
            raise ValueError(f"{len(z_per_structure)} structures but {len(energies)} energies")
        if readout not in ("sum", "mean"):
            raise ValueError(f"readout {readout!r}; choose one of ['sum', 'mean']")
        counts = torch.stack([torch.bincount(z, minlength=self.energies.numel()) for z in z_per_structure])
        present = counts.sum(0) > 0
        a = counts[:, present].double()  # [B, n_elements]
        if readout == "mean":
            a = a / a.sum(1, keepdim=True)  # element fractions
        solution = torch.linalg.lstsq(a, energies.double().unsqueeze(-1), driver="gelsd").solution
        self.energies.zero_()
        self.energies[present] = solution.squeeze(-1).to(self.energies.dtype)

    def extra_repr(self) -> str:
        nz = torch.nonzero(self.energies).flatten().tolist()
        return "{" + ", ".join(f"{z}: {float(self.energies[z]):.4f}" for z in nz) + "}"


class TargetHead(nn.Module):
    """One target's readout: per-atom MLP -> ``* scale + shift + reference[z]`` -> sum or mean.

    ``scale`` and ``shift`` (buffers, in the target's unit per atom for ``sum``, per structure
    for ``mean``) and the per-element ``reference`` are fitted on training data
    (``fit_output`` in geognn.train.loop); the MLP learns the normalised residual.
    """

    def __init__(self, target: Target, width: int):
        super().__init__()
        self.target = target
        self.mlp = MLP([width, max(width // 2, 1), 1])
        self.reference = ReferenceEnergies()
        self.register_buffer("scale", torch.tensor(1.0))  # target unit, output scale
        self.register_buffer("shift", torch.tensor(0.0))  # target unit, output shift
        self.mlp.reset_parameters()

    def node_values(self, raw: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """[N] raw head outputs and atomic numbers -> [N] per-atom values in the target's unit."""
        return raw * self.scale + self.shift + self.reference(z)

    def readout(self, node_values: torch.Tensor, atom_graph: torch.Tensor, n_graphs: int) -> torch.Tensor:
        """[N] per-atom values -> [B] per structure: their sum (extensive) or mean (intensive)."""
        total = scatter_sum(node_values, atom_graph, n_graphs)  # [B]
        if self.target.readout == "sum":
            return total
        natoms = torch.bincount(atom_graph, minlength=n_graphs).clamp(min=1).to(total.dtype)  # [B]
        return total / natoms

    def extra_repr(self) -> str:
        t = self.target
        return f"name={t.name!r}, unit={t.unit!r}, readout={t.readout!r}"


class Model(nn.Module):
    """Backbone + one head per target (scale/shift, reference values); forces/stress by autograd.

    Args:
        backbone: a name in ``geognn.BACKBONES``.
        cutoff: graph radius in Å, used both to build graphs and by the backbone.
        max_neighbors: cap used when this model builds graphs (calculator, predict); None = no cap.
        forces: compute ``forces`` by default in ``forward`` (only if the model has an energy target).
        stress: compute ``stress`` by default in ``forward`` (only if the model has an energy target).
        backbone_kwargs: keyword arguments of the backbone (see its docstring). Its ``species``
            (atomic numbers or symbols; stored sorted, as numbers, in ``config``) sizes the
            backbone's per-element weights to those elements; absent or None: one row per Z up to
            ``max_z`` (the layout of checkpoints from before species). The per-target reference
            values keep one entry per Z (119 numbers, buffers, not parameters).
        metadata: free-form, JSON-like facts saved with the checkpoint (what it was trained on, ...).
        frame_averaging: None (the plain backbone), "all", "stochastic", "det" or a dict of
            ``geognn.FrameAveraging`` options (frames, dim, group, eval_frames, degenerate_tol):
            wraps the backbone in frame averaging; per-atom values are then averaged over frames.
        targets: what the model learns: ``geognn.targets.Target`` objects (or their dicts, or
            names); None (default) = the single target ``energy`` (eV, readout sum).

    ``forward(batch, forces=None, stress=None)`` returns, for each target, ``out[name]`` [B] in
    its unit and ``out["node_" + name]`` [N] (the per-atom values before the readout), plus the
    backbone's ``node_features``. With an extensive energy target (``energy_target``) also
    ``energy`` [B] eV (that target's value, under both names), ``node_energy`` [N] eV, and when
    asked ``forces`` [N,3] eV/Å and ``stress`` [B,3,3] eV/Å³ (None means the constructor's default).
    """

    def __init__(
        self,
        backbone: str = "schnet",
        cutoff: float = 5.0,
        max_neighbors: int | None = None,
        forces: bool = True,
        stress: bool = False,
        backbone_kwargs: dict | None = None,
        metadata: dict | None = None,
        frame_averaging: str | dict | None = None,
        targets: Sequence[Target | dict | str] | None = None,
    ):
        super().__init__()
        backbone_kwargs = dict(backbone_kwargs or {})
        if backbone_kwargs.get("species") is not None:  # sorted atomic numbers: what the checkpoint stores
            backbone_kwargs["species"] = normalise_species(backbone_kwargs["species"])
        if "cutoff" in backbone_kwargs:
            raise ValueError("give cutoff to the Model, not in backbone_kwargs: it sets both")
        self.targets = tuple(Target.coerce(t) for t in (targets if targets is not None else [ENERGY_TARGET]))
        if not self.targets:
            raise ValueError("a model needs at least one target")
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError(f"target names must be unique, got {names}")
        self.energy_target = energy_target(self.targets)
        if (
            "energy" in names
            and (self.energy_target is None or self.energy_target.name != "energy")
            and any(t.is_energy for t in self.targets)
        ):
            raise ValueError(
                "a target named 'energy' that is not the extensive energy would clash with the "
                f"energy output of {self.energy_target.name!r}; rename one"
            )
        self.backbone_name = backbone
        self.cutoff = float(cutoff)
        self.max_neighbors = max_neighbors
        self.compute_forces = bool(forces) and self.energy_target is not None
        self.compute_stress = bool(stress) and self.energy_target is not None
        self.backbone_kwargs = backbone_kwargs
        self.metadata = dict(metadata or {})
        self.backbone = get_backbone_class(backbone)(cutoff=cutoff, **backbone_kwargs)
        self.frame_averaging = frame_averaging_options(frame_averaging)
        if self.frame_averaging is not None:
            self.backbone = FrameAveraging(self.backbone, **self.frame_averaging)
        width = self.backbone.out_channels
        self.heads = nn.ModuleDict({t.name: TargetHead(t, width) for t in self.targets})

    # ----------------------------------------------------------------------------- config
    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments; ``Model(**model.config)`` rebuilds the architecture."""
        return dict(
            backbone=self.backbone_name,
            cutoff=self.cutoff,
            max_neighbors=self.max_neighbors,
            forces=self.compute_forces,
            stress=self.compute_stress,
            backbone_kwargs=dict(self.backbone_kwargs),
            metadata=copy.deepcopy(self.metadata),
            frame_averaging=copy.deepcopy(self.frame_averaging),
            targets=[t.to_dict() for t in self.targets],
        )

    @property
    def target_names(self) -> list[str]:
        return [t.name for t in self.targets]

    def head(self, target: str | None = None) -> TargetHead:
        """The head of ``target``; None: the energy target's, or the only target's."""
        if target is None:
            if self.energy_target is not None:
                target = self.energy_target.name
            elif len(self.targets) == 1:
                target = self.targets[0].name
            else:
                raise ValueError(f"this model has several targets {self.target_names}: name one")
        if target not in self.heads:
            raise ValueError(f"no target {target!r} in this model; it has {self.target_names}")
        return self.heads[target]

    @property
    def reference(self) -> ReferenceEnergies:
        """Reference values of the energy target (or of the only target)."""
        return self.head().reference

    @property
    def scale(self) -> torch.Tensor:
        """Output scale of the energy target (or of the only target)."""
        return self.head().scale

    @property
    def shift(self) -> torch.Tensor:
        """Output shift of the energy target (or of the only target)."""
        return self.head().shift

    def reset_parameters(self) -> None:
        """Re-initialise the backbone and the heads (reference values and scale/shift are kept)."""
        self.backbone.reset_parameters()
        for head in self.heads.values():
            head.mlp.reset_parameters()

    def set_scale_shift(self, scale: float, shift: float, target: str | None = None) -> None:
        """Per-atom value = scale * head + shift + reference, for ``target`` (None: see ``head``)."""
        head = self.head(target)
        head.scale.fill_(float(scale))
        head.shift.fill_(float(shift))

    def compile(self, dynamic: bool | None = True, **options) -> "Model":
        """Compile the backbone with ``torch.compile`` (in place; returns the model).

        Unlike ``nn.Module.compile`` this compiles the backbone only: heads, forces and stress
        (autograd of the energy) run around it as before, and ``state_dict`` keys and checkpoints
        are unchanged. ``dynamic=True`` (default): one compiled graph serves batches of any size.
        ``options`` go to ``torch.compile`` (``backend``, ``mode``, ``fullgraph``, ``options``).

        Compilation happens on the first call (tens of seconds on a CPU) and again for new input
        shapes when ``dynamic`` is not True. Where ``torch.compile`` cannot compile the backbone
        (an unsupported operation, no C++ compiler for Inductor), that call and all later ones run
        eagerly with one ``RuntimeWarning`` naming the reason; an error the eager model gives too
        (an unknown element, say) is raised as the eager model raises it. Training steps with
        forces or stress in the loss run the backbone eagerly, with one warning: they differentiate
        the backbone twice, which ``torch.compile`` does not support
        (``geognn.runtime.DOUBLE_BACKWARD_REASON``). Speed-ups measured per backbone (CPU, some
        below 1): ``benchmarks/results/bench_compile.json``.
        """
        self._compiled = CompiledBackbone(self.backbone_name, dict(options, dynamic=dynamic))
        return self

    @property
    def compiled(self) -> CompiledBackbone | None:
        """The compiled backbone call (``compile``), or None for an eager model."""
        return getattr(self, "_compiled", None)

    # ----------------------------------------------------------------------------- forward
    def forward(self, batch, forces: bool | None = None, stress: bool | None = None) -> dict[str, torch.Tensor]:
        want_forces = self.compute_forces if forces is None else forces
        want_stress = self.compute_stress if stress is None else stress
        if (want_forces or want_stress) and self.energy_target is None:
            raise ValueError(
                f"forces and stress need an extensive energy target (eV, readout sum); this "
                f"model's targets are {[t.to_dict() for t in self.targets]}"
            )
        with torch.set_grad_enabled(torch.is_grad_enabled() or want_forces or want_stress):
            if self.compiled is None or not self.compiled.active:
                return self._forward(batch, want_forces, want_stress)
            try:
                return self._forward(batch, want_forces, want_stress)
            except Exception as exc:  # noqa: BLE001 - a compile failure, or an error eager gives too
                failure = exc
            with self.compiled.suspended():  # eager: the input's own error (if any) is raised here
                out = self._forward(batch, want_forces, want_stress)
            self.compiled.disable(failure)  # eager works, so compiling failed: warn once, stay eager
            return out

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

        if self.compiled is not None:  # compiled, except where a second derivative is needed
            twice = self.training and (want_forces or want_stress)
            features = self.compiled(self.backbone, view, double_backward=twice)
        else:
            features = self.backbone(view)
        frames = None
        if FRAME_NODE_FEATURES in features:  # frame averaging: average values (not features) over frames
            frames = (features.pop(FRAME_NODE_FEATURES), features.pop(FRAME_WEIGHTS), features.pop(FRAME_NODE_INDEX))
        out = {}
        for name, head in self.heads.items():
            if frames is not None:
                per_frame = head.mlp(frames[0]).squeeze(-1) * frames[1]  # [M] (frame, atom)
                raw = scatter_sum(per_frame, frames[2], len(batch[K.Z]))  # [N]
            else:
                raw = head.mlp(features[K.NODE_FEATURES]).squeeze(-1)  # [N]
            node_values = head.node_values(raw, batch[K.Z])  # [N] target unit
            out[name] = head.readout(node_values, atom_graph, n_graphs)  # [B] target unit
            out["node_" + name] = node_values
        if self.energy_target is not None:
            out[K.ENERGY] = out[self.energy_target.name]  # [B] eV
            out["node_energy"] = out["node_" + self.energy_target.name]  # [N] eV
        out.update(features)

        inputs = ([pos] if want_forces else []) + ([strain] if want_stress else [])
        if inputs:
            energy = out[K.ENERGY]
            grads = torch.autograd.grad(energy.sum(), inputs, create_graph=self.training, allow_unused=True)
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
    @property
    def max_z(self) -> int:
        """Largest atomic number the backbone can embed."""
        return int(self.backbone.max_z)

    @property
    def species(self) -> tuple[int, ...] | None:
        """Atomic numbers the backbone has per-element weights for (ascending), or None: every Z up to ``max_z``."""
        return self.backbone.species

    def unknown_elements(self, numbers) -> list[int]:
        """The distinct atomic numbers in ``numbers`` (sorted) this model has no weights for;
        ``unknown_elements_message`` words them for the user."""
        return unknown_elements(numbers, self.species, self.max_z)

    def unknown_elements_message(self, unknown) -> str:
        """One line naming the elements ``unknown`` and the species (or max_z) of this model."""
        return unknown_elements_message(unknown, self.species, self.max_z, "this model")

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> None:
        """Write a checkpoint atomically (temp file + rename): format version, config, weights."""
        payload = {"format_version": CHECKPOINT_FORMAT_VERSION, "config": self.config, "state_dict": self.state_dict()}
        if extra:
            payload.update(extra)
        atomic_torch_save(payload, path)


class Ensemble(nn.Module):
    """Several ``Model`` s with the same targets and graph settings: mean and spread per target.

    Members differ in their weights (trained from different seeds: ``geognn train --ensemble N``)
    and may differ in backbone, but share ``targets``, ``cutoff`` and ``max_neighbors`` so that one
    graph serves all of them.

    ``forward(batch, forces=None, stress=None)`` returns for each target ``out[name]`` [B], the
    mean over members, and ``out[name + "_std"]`` [B], their standard deviation (``ddof=1``, the
    unbiased variance over the members; zero when all members agree), in the target's unit; with
    an energy target also ``energy`` (and ``energy_std``), and ``forces`` [N,3] / ``stress``
    [B,3,3] averaged over members.

    Args:
        members: at least two models.
        metadata: facts saved with the checkpoint (default: the first member's, plus ``ensemble``).
    """

    def __init__(self, members: Sequence[Model], metadata: dict | None = None):
        super().__init__()
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0]
        for k, m in enumerate(members[1:], start=1):
            if m.targets != first.targets:
                raise ValueError(
                    f"ensemble member {k} has targets {[t.to_dict() for t in m.targets]}, member 0 "
                    f"has {[t.to_dict() for t in first.targets]}: members must learn the same targets"
                )
            if (m.cutoff, m.max_neighbors) != (first.cutoff, first.max_neighbors):
                raise ValueError(
                    f"ensemble member {k} uses cutoff {m.cutoff} Å / max_neighbors {m.max_neighbors}, "
                    f"member 0 {first.cutoff} Å / {first.max_neighbors}: they must build the same graphs"
                )
        self.members = nn.ModuleList(members)
        self.metadata = dict(metadata if metadata is not None else {**first.metadata, "ensemble": len(members)})

    # the attributes callers read from a Model
    targets = property(lambda self: self.members[0].targets)
    energy_target = property(lambda self: self.members[0].energy_target)
    target_names = property(lambda self: self.members[0].target_names)
    cutoff = property(lambda self: self.members[0].cutoff)
    max_neighbors = property(lambda self: self.members[0].max_neighbors)
    compute_forces = property(lambda self: self.members[0].compute_forces)
    compute_stress = property(lambda self: self.members[0].compute_stress)
    max_z = property(lambda self: min(m.max_z for m in self.members))

    @property
    def species(self) -> tuple[int, ...] | None:
        """Elements every member has weights for (ascending); None when no member restricts them."""
        if all(m.species is None for m in self.members):
            return None
        common = set.intersection(*(set(m.species or range(1, m.max_z + 1)) for m in self.members))
        return tuple(sorted(common))

    def unknown_elements(self, numbers) -> list[int]:
        """The distinct atomic numbers in ``numbers`` (sorted) that some member has no weights for."""
        return sorted({z for m in self.members for z in m.unknown_elements(numbers)})

    def unknown_elements_message(self, unknown) -> str:
        """One line naming the elements ``unknown`` and the species (or max_z) of this ensemble."""
        return unknown_elements_message(unknown, self.species, self.max_z, "this ensemble")

    def forward(self, batch, forces: bool | None = None, stress: bool | None = None) -> dict[str, torch.Tensor]:
        outs = [m(batch, forces=forces, stress=stress) for m in self.members]
        out = {}
        for name in self.target_names:
            values = torch.stack([o[name] for o in outs])  # [M, B]
            out[name] = values.mean(0)
            out[name + "_std"] = values.std(0, unbiased=True)
        if self.energy_target is not None:
            out[K.ENERGY] = out[self.energy_target.name]
            out[K.ENERGY + "_std"] = out[self.energy_target.name + "_std"]
        for key in (K.FORCES, K.STRESS):
            if key in outs[0]:
                out[key] = torch.stack([o[key] for o in outs]).mean(0)
        return out

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> None:
        """One checkpoint with every member's config and weights (format version, ``ensemble``)."""
        payload = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "metadata": copy.deepcopy(self.metadata),
            "ensemble": [{"config": m.config, "state_dict": m.state_dict()} for m in self.members],
        }
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


def build_model(
    backbone: str = "schnet",
    cutoff: float = 5.0,
    forces: bool = True,
    stress: bool = False,
    max_neighbors: int | None = None,
    metadata: dict | None = None,
    frame_averaging: str | dict | None = None,
    targets: Sequence[Target | dict | str] | None = None,
    compile: bool | dict = False,
    **backbone_kwargs,
) -> Model:
    """A ``Model`` with the named backbone; extra keywords go to the backbone's constructor.

    ``frame_averaging`` (None, "all", "stochastic", "det" or a dict of options) wraps the backbone
    in ``geognn.FrameAveraging``. ``targets``: ``geognn.targets.Target`` s (default: the single
    target ``energy``, eV, readout sum). ``species=[1, 6, 7, 8, 9]`` (a backbone keyword, stored
    in the checkpoint) gives the backbone's per-element weights one row per listed element instead
    of one per Z up to ``max_z``; other elements are then a ValueError naming them.
    ``compile=True`` (or a dict of ``torch.compile`` options) compiles the backbone: see
    ``Model.compile`` (not part of the config: a checkpoint loads eager; call ``compile()`` again).

    >>> model = build_model("schnet", cutoff=5.0, hidden_channels=64, num_layers=3)
    >>> qm9 = build_model("mace", species=[1, 6, 7, 8, 9])  # per-element tables for QM9's elements
    >>> faenet = build_model("faenet", frame_averaging="stochastic")  # the FAENet paper's model
    >>> crystal = build_model("schnet", targets=[Target("e_form", "eV/atom", "mean")])
    """
    model = Model(
        backbone=backbone,
        cutoff=cutoff,
        max_neighbors=max_neighbors,
        forces=forces,
        stress=stress,
        backbone_kwargs=backbone_kwargs,
        metadata=metadata,
        frame_averaging=frame_averaging,
        targets=targets,
    )
    if compile:
        model.compile(**(compile if isinstance(compile, dict) else {}))
    return model


#: Version-1 state-dict names of the single energy head -> their names under ``heads.energy``.
_V1_HEAD_KEYS = {
    "energy_head.": "heads.energy.mlp.",
    "reference.energies": "heads.energy.reference.energies",
    "scale": "heads.energy.scale",
    "shift": "heads.energy.shift",
}


def upgrade_state_dict(state_dict: dict) -> dict:
    """A version-1 ``state_dict`` (one energy head) renamed to the per-target layout; others unchanged."""
    if not any(k.startswith("energy_head.") for k in state_dict):
        return state_dict
    out = {}
    for key, value in state_dict.items():
        new = key
        for old, replacement in _V1_HEAD_KEYS.items():
            if key == old or (old.endswith(".") and key.startswith(old)):
                new = replacement + key[len(old) :]
                break
        out[new] = value
    return out


def upgrade_checkpoint(payload: dict) -> dict:
    """A checkpoint dict of any readable version in the current layout (version 1 -> 2: its one
    energy head becomes the target ``energy``, eV, readout sum, with the same weights; an EGNN
    gets ``update_coords=False``, the only EGNN there was before version 2)."""
    if payload.get("format_version") == 1:
        config = {**payload["config"], "targets": [ENERGY_TARGET.to_dict()]}
        if config.get("backbone") == "egnn":  # version-1 EGNN never moved coordinates (now the default)
            config["backbone_kwargs"] = {"update_coords": False, **(config.get("backbone_kwargs") or {})}
        payload = {
            **payload,
            "format_version": 2,
            "config": config,
            "state_dict": upgrade_state_dict(payload["state_dict"]),
        }
    return payload


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The raw checkpoint dict (weights-only load), format checked and upgraded to the current version.

    A single model has keys ``config`` and ``state_dict``; an ensemble has ``ensemble`` (a list
    of such dicts) and ``metadata``.
    """
    path = Path(path)
    if path.is_dir():
        hint = f": its model is {path / 'model.pt'}" if (path / "model.pt").is_file() else ""
        raise FileNotFoundError(f"{path}: a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # neither torch's zip nor a legacy pickle
        raise ValueError(f"{path}: not a readable geognn checkpoint (not a file written by torch.save)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path}: not a readable geognn checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    single = isinstance(payload, dict) and "config" in payload and "state_dict" in payload
    ensemble = isinstance(payload, dict) and isinstance(payload.get("ensemble"), list)
    if not (single or ensemble):
        raise ValueError(f"{path}: not a geognn checkpoint (expected keys 'config' and 'state_dict', or 'ensemble')")
    version = payload.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        newer = isinstance(version, int) and version > CHECKPOINT_FORMAT_VERSION
        raise ValueError(
            f"{path}: checkpoint format version {version!r}, this geognn reads versions "
            f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}"
            + (" (written by a newer geognn: upgrade geognn to read it)" if newer else "")
        )
    return upgrade_checkpoint(payload) if single else payload


def _model_from(entry: dict) -> Model:
    model = Model(**entry["config"])
    saved_dtype = next((t.dtype for t in entry["state_dict"].values() if t.is_floating_point()), None)
    if saved_dtype is not None:
        model.to(saved_dtype)  # load float64 weights without a float32 round trip
    model.load_state_dict(entry["state_dict"])
    return model.eval()


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Model | Ensemble:
    """Rebuild a ``Model`` (or an ``Ensemble``) from a checkpoint written by its ``save`` (eval mode).

    FileNotFoundError for a missing file (or a folder); ValueError naming the file when it is not a
    geognn checkpoint, has a format version this geognn does not read, or holds a config or
    weights this geognn's ``Model`` does not take (another version, or edited).
    """
    payload = load_checkpoint(path, map_location)
    try:
        if "ensemble" in payload:
            members = [
                _model_from(upgrade_checkpoint({"format_version": payload["format_version"], **m}))
                for m in payload["ensemble"]
            ]
            return Ensemble(members, payload.get("metadata")).eval()
        return _model_from(payload)
    except (TypeError, KeyError, AttributeError, RuntimeError, ValueError) as exc:  # config or weights it does not take
        first = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ValueError(
            f"{path}: checkpoint (format version {payload.get('format_version')!r}) does not fit "
            f"this geognn's Model, written by another geognn version or edited? ({first})"
        ) from None


def load_models(paths: Sequence[str | os.PathLike], map_location: str | torch.device = "cpu") -> Model | Ensemble:
    """One checkpoint: ``load_model``. Several: an ``Ensemble`` of all their models (ensembles
    among them contribute each member); ValueError naming the file whose targets or graph
    settings differ from the first's."""
    paths = list(paths)
    if len(paths) == 1:
        return load_model(paths[0], map_location)
    members: list[Model] = []
    for path in paths:
        loaded = load_model(path, map_location)
        new = list(loaded.members) if isinstance(loaded, Ensemble) else [loaded]
        if members:
            try:
                Ensemble([members[0], *new])
            except ValueError as exc:
                raise ValueError(f"{path}: cannot join an ensemble with {paths[0]}: {exc}") from None
        members.extend(new)
    meta = {**members[0].metadata, "ensemble": len(members), "checkpoints": [str(p) for p in paths]}
    return Ensemble(members, meta).eval()


def spread_kind(model) -> str:
    """Which spread ``--uncertainty frames`` gives for ``model``: "frames" (frame-averaged),
    "grid" (PΘNITA: rotations of its orientation grid); ValueError for any other model."""
    if isinstance(model, Model) and isinstance(model.backbone, FrameAveraging):
        return "frames"
    if isinstance(model, Model) and getattr(model.backbone, "grid", None) is not None:  # PONITA (PNITA has none)
        return "grid"
    name = (
        "an ensemble"
        if isinstance(model, Ensemble)
        else f"a {getattr(model, 'backbone_name', type(model).__name__)} model without frame averaging"
    )
    raise ValueError(
        f"--uncertainty frames needs a frame-averaged (frame_averaging=...) or ponita model; this is {name}"
    )


def frame_values(model: Model, batch) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Each target's structure-level value in every frame of a frame-averaged ``model``.

    Returns ``(values, weights, graph)``: ``values[name]`` [G] (target unit), ``weights`` [G] and
    ``graph`` [G] (the structure of each of the G (frame, structure) pairs). A structure's weights
    sum to 1 and ``sum_g weights * values`` over its frames is ``model(batch)[name]``. Degenerate
    structures have extra frames with their own weights. Frames are read from the wrapper's
    ``frame_node_index`` [M]: each frame of a structure is one ascending run of its atoms.
    """
    fa = model.backbone
    if not isinstance(fa, FrameAveraging):
        raise ValueError("frame_values needs a frame-averaged model (frame_averaging=...)")
    n_graphs, atom_graph = num_graphs(batch), graph_index(batch)
    out = fa(batch)
    feats, weights, index = out[FRAME_NODE_FEATURES], out[FRAME_WEIGHTS], out[FRAME_NODE_INDEX]  # [M, F], [M], [M]
    start = torch.ones_like(index, dtype=torch.bool)
    start[1:] = index[1:] != index[:-1] + 1  # a new run (frame pass or extra copy) begins
    key = (torch.cumsum(start.long(), 0) - 1) * n_graphs + atom_graph[index]  # one per (run, structure)
    _, row_group = torch.unique(key, return_inverse=True)  # [M] -> G groups
    n_groups = int(row_group.max()) + 1
    graph = torch.zeros(n_groups, dtype=torch.long, device=index.device).scatter_(0, row_group, atom_graph[index])
    group_w = torch.zeros(n_groups, dtype=weights.dtype, device=index.device).scatter_(0, row_group, weights)
    natoms = torch.bincount(row_group, minlength=n_groups).to(weights.dtype)
    values = {}
    for name, head in model.heads.items():
        node = head.node_values(head.mlp(feats).squeeze(-1), batch[K.Z][index])  # [M] per frame and atom
        total = scatter_sum(node, row_group, n_groups)  # [G]
        values[name] = total if head.target.readout == "sum" else total / natoms
    return values, group_w, graph


class FrameSpread(nn.Module):
    """A model's prediction with the spread over frames or orientation grids, at no extra training.

    ``kind="frames"`` (frame-averaged models): ``out[name]`` is the model's usual prediction, the
    frame-weighted mean ``ȳ = Σ_f w_f y_f``, and ``out[name + "_std"]`` [B] is the frame-weighted
    standard deviation ``sqrt(Σ_f w_f (y_f - ȳ)²)`` (the weights of a structure sum to 1; extra
    frames of degenerate structures count with their weights), in the target's unit.
    The frames are the model's eval frames: all of them unless ``eval_frames`` is an integer, in
    which case the spread is taken over a second random draw of that many frames.
    ``kind="grid"`` (PΘNITA): the structure is rotated by ``num_rotations`` uniformly random
    rotations (seeded by ``seed``), the same as rotating the orientation grid the other way;
    ``out[name]`` is the mean over them and ``out[name + "_std"]`` the standard deviation
    (``ddof=1``); forces and stress (if asked) come from the unrotated grid. ``kind=None``:
    ``spread_kind(model)``. Other outputs are the model's own.

    Args:
        model: a ``Model`` (frame-averaged for "frames", ponita for "grid").
        kind: "frames", "grid" or None (default: None, chosen from the model).
        num_rotations: rotated grids for "grid" (default: 8, at least 2).
        seed: seed of the rotations (default: 0).
    """

    def __init__(self, model: Model, kind: str | None = None, num_rotations: int = 8, seed: int = 0):
        super().__init__()
        found = spread_kind(model)
        if kind is not None and kind != found:
            raise ValueError(f"spread kind {kind!r} does not fit this model, which allows {found!r}")
        if int(num_rotations) < 2:
            raise ValueError(f"num_rotations must be at least 2, got {num_rotations}")
        self.model, self.kind, self.num_rotations, self.seed = model, found, int(num_rotations), int(seed)
        self.metadata = model.metadata

    targets = property(lambda self: self.model.targets)
    energy_target = property(lambda self: self.model.energy_target)
    target_names = property(lambda self: self.model.target_names)
    cutoff = property(lambda self: self.model.cutoff)
    max_neighbors = property(lambda self: self.model.max_neighbors)
    compute_forces = property(lambda self: self.model.compute_forces)
    compute_stress = property(lambda self: self.model.compute_stress)
    max_z = property(lambda self: self.model.max_z)
    species = property(lambda self: self.model.species)

    def unknown_elements(self, numbers) -> list[int]:
        return self.model.unknown_elements(numbers)

    def unknown_elements_message(self, unknown) -> str:
        return self.model.unknown_elements_message(unknown)

    def forward(self, batch, forces: bool | None = None, stress: bool | None = None) -> dict[str, torch.Tensor]:
        out = self.model(batch, forces=forces, stress=stress)
        with torch.no_grad():
            if self.kind == "frames":
                values, w, graph = frame_values(self.model, batch)
                n_graphs = num_graphs(batch)
                for name, y in values.items():
                    mean = scatter_sum(w * y, graph, n_graphs)  # [B]
                    var = scatter_sum(w * (y - mean[graph]) ** 2, graph, n_graphs)
                    out[name + "_std"] = var.clamp(min=0).sqrt()
            else:
                gen = torch.Generator().manual_seed(self.seed)
                pos, cell = batch[K.POS], batch[K.CELL]
                samples = {name: [] for name in self.target_names}
                for _ in range(self.num_rotations):
                    rot = random_rotation(dtype=pos.dtype, device=pos.device, generator=gen)  # [3, 3]
                    view = copy.copy(batch)
                    view[K.POS], view[K.CELL] = pos.detach() @ rot, cell.detach() @ rot
                    rotated = self.model(view, forces=False, stress=False)
                    for name in samples:
                        samples[name].append(rotated[name])
                for name, ys in samples.items():
                    ys = torch.stack(ys)  # [num_rotations, B]
                    out[name], out[name + "_std"] = ys.mean(0), ys.std(0, unbiased=True)
        if self.energy_target is not None:
            out[K.ENERGY] = out[self.energy_target.name]
            out[K.ENERGY + "_std"] = out[self.energy_target.name + "_std"]
        return out


def predict_with_spread(
    model: Model,
    batch,
    kind: str | None = None,
    num_rotations: int = 8,
    seed: int = 0,
    forces: bool | None = None,
    stress: bool | None = None,
) -> dict[str, torch.Tensor]:
    """``FrameSpread(model, kind, num_rotations, seed)(batch, forces, stress)``: each target's
    prediction ``out[name]`` [B] and its spread over frames or grids ``out[name + "_std"]`` [B]."""
    return FrameSpread(model, kind, num_rotations, seed)(batch, forces=forces, stress=stress)
