"""The frame-averaging wrapper: any backbone made exactly O(3)/SO(3)-invariant by averaging it over
frames (Puny et al., ICLR 2022; FAENet's stochastic variant, Duval et al., ICML 2023).

The geometry (which frames, how degenerate spectra are handled, why forces and stress stay exact)
is in ``geognn.symmetry.frames``, whose docstring has the equations; this module runs the
backbone on the rotated copies and averages its outputs. It sits with the backbones because it
runs one (DESIGN.md's import ladder: symmetry/ is geometry only).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch

from .. import conventions as K
from ..graph.build import collate, edge_vectors, graph_index, num_graphs
from ..nn.scatter import scatter_sum
from ..symmetry.frames import DIMS, FRAME_MODES, GROUPS, DegenerateFrameWarning, FrameBuilder, FrameSet
from .base import Backbone

#: Output key: invariant features of every (frame, atom) pair [M, F] (geognn.Model averages energies with them).
FRAME_NODE_FEATURES = "frame_node_features"
#: Output key: weight of each (frame, atom) pair [M]; the weights of one atom sum to 1.
FRAME_WEIGHTS = "frame_weights"
#: Output key: the atom [M] (index into the batch) of each (frame, atom) pair.
FRAME_NODE_INDEX = "frame_node_index"


def _rotated(batch, atom_rot: torch.Tensor, rot: torch.Tensor):
    """Shallow copy of ``batch`` with pos' = pos R (per atom, ``atom_rot`` [N, 3, 3]) and cell' = cell R
    (``rot`` [B, 3, 3]); image shifts are unchanged, so every edge vector becomes r R."""
    view = copy.copy(batch)
    view[K.POS] = torch.einsum("nd,nde->ne", batch[K.POS], atom_rot)
    view[K.CELL] = torch.bmm(batch[K.CELL], rot)
    return view


class FrameAveraging(Backbone):
    """Wraps any backbone so that its outputs are averaged over frames (the equations and the
    frame definitions: ``geognn.symmetry.frames``).

    Args:
        backbone: a constructed backbone (any entry of ``geognn.BACKBONES``).
        frames: "all" (average over the full frame: 8 / 4 passes in 3D, 4 / 2 in 2D), "stochastic"
            (SFA: one uniformly drawn frame per structure and forward pass in training mode;
            ``eval_frames`` in eval mode) or "det" (one frame with signs fixed by third moments).
        dim: 3 (molecules, bulk) or 2 (slabs: the surface normal stays fixed).
        group: "O3" (rotations and reflections) or "SO3" (rotations only).
        eval_frames: for ``frames="stochastic"`` in eval mode: "all" (exact, default) or an integer
            number of frames drawn at random (cheaper, approximate, not deterministic).
        degenerate_tol: relative eigen-gap below which a spectrum counts as degenerate (default 1e-2).

    ``forward(batch)`` returns ``node_features`` [N, F] (frame-weighted mean), ``node_vectors``
    [N, F', 3] rotated back to the input's axes and averaged (if the backbone has them), and, for
    ``geognn.Model`` to average *energies* rather than features, ``frame_node_features`` [K, N, F]
    and ``frame_weights`` [K, N]. ``stats`` counts structures seen, degenerate spectra and
    ambiguous "det" signs.
    """

    name = "frame_averaging"

    def __init__(
        self,
        backbone: Backbone,
        frames: str = "all",
        dim: int = 3,
        group: str = "O3",
        eval_frames: str | int = "all",
        degenerate_tol: float = 1e-2,
    ):
        super().__init__(frames=frames, dim=dim, group=group, eval_frames=eval_frames, degenerate_tol=degenerate_tol)
        if not isinstance(backbone, Backbone):
            raise ValueError(f"FrameAveraging wraps a geognn Backbone, got {type(backbone).__name__}")
        if isinstance(backbone, FrameAveraging):
            raise ValueError("this backbone is already frame-averaged")
        if frames not in FRAME_MODES:
            raise ValueError(f"frames must be one of {', '.join(FRAME_MODES)}; got {frames!r}")
        if dim not in DIMS:
            raise ValueError(f"dim must be 2 (slabs) or 3; got {dim!r}")
        if group not in GROUPS:
            raise ValueError(f"group must be one of {', '.join(GROUPS)}; got {group!r}")
        if not (
            eval_frames == "all"
            or (isinstance(eval_frames, int) and not isinstance(eval_frames, bool) and eval_frames >= 1)
        ):
            raise ValueError(f"eval_frames must be 'all' or a positive integer; got {eval_frames!r}")
        if not 0 < degenerate_tol < 1:
            raise ValueError(f"degenerate_tol must be in (0, 1); got {degenerate_tol}")
        cutoff = backbone.hparams.get("cutoff", getattr(backbone, "cutoff", None))
        if cutoff is None:
            raise ValueError(f"{type(backbone).__name__} has no cutoff: frames weight edges by it")
        self.backbone = backbone
        self.frames, self.dim, self.group, self.eval_frames = frames, dim, group, eval_frames
        self.builder = FrameBuilder(dim, group, cutoff, degenerate_tol)
        self.max_z, self.species = backbone.max_z, backbone.species  # the wrapped backbone's elements
        self.reflection_invariant = group == "O3"
        exact = frames != "stochastic" or eval_frames == "all"
        # "exact" refers to all 3D rotations; 2D frames are invariant about the surface normal only
        self.rotation_symmetry = "exact" if (exact and dim == 3) else ("approximate" if dim == 3 else "none")
        self.stats = {"structures": 0, "degenerate": 0, "sign_ambiguous": 0}
        self._warned = False

    @property
    def out_channels(self) -> int:
        return self.backbone.out_channels

    def reset_parameters(self) -> None:
        self.backbone.reset_parameters()

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())

    def frame_set(self, batch) -> FrameSet:
        """The frames this module uses for ``batch`` now (depends on train/eval mode for SFA)."""
        vec = edge_vectors(batch)
        if self.frames == "stochastic" and (self.training or self.eval_frames != "all"):
            n = 1 if self.training else int(self.eval_frames)
            return self.builder(batch, vec, "sample", n)
        return self.builder(batch, vec, "det" if self.frames == "det" else "all")

    def forward(self, batch) -> dict[str, torch.Tensor]:
        self.backbone.check_atomic_numbers(batch[K.Z])
        fs = self.frame_set(batch)
        self._count(fs)
        atom_graph = graph_index(batch)
        n_atoms = batch[K.Z].shape[0]
        features, vectors, weights, index = [], [], [], []
        for rot, w in zip(fs.rotations, fs.weights):  # one pass over the whole batch per frame
            atom_rot = rot[atom_graph]  # [N, 3, 3]
            out = self.backbone(_rotated(batch, atom_rot, rot))
            features.append(out[K.NODE_FEATURES])
            if K.NODE_VECTORS in out:  # predicted in frame coordinates: rotate back, v = v' Rᵀ
                vectors.append(torch.einsum("nfe,nde->nfd", out[K.NODE_VECTORS], atom_rot))
            weights.append(w[atom_graph])
            index.append(torch.arange(n_atoms, device=atom_graph.device))
        if fs.extra:  # the further frames of degenerate structures, as one batch of rotated copies
            copies, atom_rots, copy_weights, copy_index = [], [], [], []
            starts = torch.cumsum(torch.bincount(atom_graph, minlength=num_graphs(batch)), 0).tolist()
            for b, rots in fs.extra.items():
                # differentiable slices of pos and cell (a lone Data is its own example)
                example = batch.get_example(b) if hasattr(batch, "get_example") else batch
                lo = starts[b] - example[K.Z].shape[0]
                for rot in rots:
                    atom_rot = rot.expand(example[K.Z].shape[0], 3, 3)
                    copies.append(_rotated(example, atom_rot, rot.unsqueeze(0)))
                    atom_rots.append(atom_rot)
                    copy_weights.append(
                        torch.full((example[K.Z].shape[0],), fs.extra_weight[b], dtype=rots.dtype, device=rots.device)
                    )
                    copy_index.append(torch.arange(lo, starts[b], device=atom_graph.device))
            out = self.backbone(collate(copies))
            features.append(out[K.NODE_FEATURES])
            if K.NODE_VECTORS in out:
                vectors.append(torch.einsum("nfe,nde->nfd", out[K.NODE_VECTORS], torch.cat(atom_rots)))
            weights.append(torch.cat(copy_weights))
            index.append(torch.cat(copy_index))
        features, weights, index = torch.cat(features), torch.cat(weights), torch.cat(index)  # [M, F], [M], [M]
        result = {
            K.NODE_FEATURES: scatter_sum(features * weights.unsqueeze(-1), index, n_atoms),
            FRAME_NODE_FEATURES: features,
            FRAME_WEIGHTS: weights,
            FRAME_NODE_INDEX: index,
        }
        if vectors:
            weighted = torch.cat(vectors) * weights[:, None, None]
            result[K.NODE_VECTORS] = scatter_sum(weighted.flatten(1), index, n_atoms).view(n_atoms, *weighted.shape[1:])
        return result

    def _count(self, fs: FrameSet) -> None:
        n_deg = int(fs.degenerate.sum())
        self.stats["structures"] += int(fs.degenerate.numel())
        self.stats["degenerate"] += n_deg
        self.stats["sign_ambiguous"] += int(fs.sign_ambiguous.sum())
        if n_deg and not self._warned:
            self._warned = True
            warnings.warn(
                f"{n_deg} structure(s) with (nearly) degenerate edge covariance (relative eigen-gap "
                f"< {self.builder.tol}); averaged over frames built from their shortest edges "
                "instead (exact, but more backbone passes). Counts: FrameAveraging.stats",
                DegenerateFrameWarning,
                stacklevel=2,
            )


def frame_averaging_options(spec: str | dict | None) -> dict[str, Any] | None:
    """Normalise ``Model(frame_averaging=...)``: None, a mode name or a dict of FrameAveraging keywords."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in FRAME_MODES:
            raise ValueError(
                f"frame_averaging must be None, one of {', '.join(FRAME_MODES)} or a dict of "
                f"FrameAveraging options; got {spec!r}"
            )
        return {"frames": spec}
    if isinstance(spec, dict):
        allowed = {"frames", "dim", "group", "eval_frames", "degenerate_tol"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ValueError(f"unknown frame_averaging option(s) {unknown}; valid: {sorted(allowed)}")
        return dict(spec)
    raise ValueError(
        f"frame_averaging must be None, a mode name ({', '.join(FRAME_MODES)}) or a dict; got {type(spec).__name__}"
    )
