"""Can a backbone, at random initialisation, tell the two graphs of a hard pair apart?

Setup (one "probe"): for each seed a *new* backbone is built under that seed (so every seed
really re-initialises the weights), cast to float64, and run on one batch holding g1, g2 and
isometric copies of both. The graph-level embedding is

- ``readout="invariant"``: per graph, the sum over atoms (the mean for periodic structures,
  whose cell is arbitrary) of ``node_features`` [N, F] concatenated with the norms of
  ``node_vectors`` [N, F', 3] over their last axis. Only per-atom invariants are pooled: the norm
  of a *pooled* vector would couple distant atoms and beat message passing (and GWL) unfairly.
- ``readout="equivariant"``: the sum over atoms of the backbone's highest-order equivariant
  features: for e3nn backbones (whose ``layers[-1]`` has ``irreps_out``) the full output of the
  last layer, read with a forward hook; otherwise ``node_vectors`` (order 1), else
  ``node_features`` (order 0). Used for rotationally symmetric pairs, whose two graphs are
  isometric: an invariant readout of a rotated copy is equal by construction, and the question
  is whether the model can represent the orientation (Joshi et al., Sec. 5.2).

Noise threshold: the gap ``|e(g1) - e(g2)|`` counts as a separation when it exceeds
``NOISE_FACTOR`` times the largest ``|e(g) - e(copy of g)|`` over the isometric copies (random
rotation, also reflection if the backbone is reflection-invariant; translation; permutation of
atoms; the equivariant readout uses translation and permutation only), plus ``RELATIVE_FLOOR``
times the embedding norm. Exact backbones have float64 noise ~1e-15; approximately equivariant
ones (``rotation_symmetry`` "approximate"/"none") get a threshold from their measured noise.

A pair is reported as distinguished if any seed separates it: the question is whether the
architecture *can* separate the pair; an impossible separation fails for every seed by
construction, a possible one succeeds for generic weights.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch_geometric.data import Data

from .. import conventions as K
from ..backbones import Backbone, get_backbone_class
from ..graph.build import collate, graph_index, num_graphs
from ..nn.scatter import scatter_sum
from .gwl import isometric_copy

#: A gap must exceed this many times the isometric-copy noise to count as a separation.
NOISE_FACTOR = 100.0
#: ... plus this fraction of the embedding norm (float64 round-off of different summation orders).
RELATIVE_FLOOR = 1e-9
#: Default backbone cutoff: this many times the pair's longest edge (the envelope must not cut edges).
CUTOFF_MARGIN = 1.5
#: Isometric copies of each graph used to measure the noise.
NUM_COPIES = 2
READOUTS = ("invariant", "equivariant")


@dataclass(frozen=True)
class Separation:
    """Per-seed outcome of a probe: gaps |e(g1) - e(g2)| and the thresholds they were compared to."""

    gaps: tuple[float, ...]
    thresholds: tuple[float, ...]

    @property
    def separated(self) -> tuple[bool, ...]:
        return tuple(g > t for g, t in zip(self.gaps, self.thresholds))

    @property
    def distinguished(self) -> bool:
        return any(self.separated)


def build_backbone(backbone, num_layers: int, cutoff: float, seed: int, backbone_kwargs: dict) -> Backbone:
    """A freshly initialised float64 backbone (name or class), built under ``seed``, in eval mode.

    Backbones without rotation symmetry of their own (``rotation_symmetry == "none"``, e.g. FAENet)
    are wrapped in ``geognn.symmetry.frames.FrameAveraging(frames="all")``, as ``geognn.Model``
    runs them; otherwise their isometric-copy noise would hide every difference. The global torch
    RNG is left as it was. Unknown keywords give a ValueError listing the valid ones.
    """
    cls = get_backbone_class(backbone) if isinstance(backbone, str) else backbone
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        raise ValueError(f"backbone must be a name in geognn.BACKBONES or a Backbone subclass, got {backbone!r}")
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(backbone_kwargs) - set(valid))
    if unknown:
        raise ValueError(f"{cls.__name__} has no option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        model = cls(num_layers=int(num_layers), cutoff=float(cutoff), **backbone_kwargs)
    if getattr(model, "rotation_symmetry", "exact") == "none":
        from ..symmetry.frames import FrameAveraging

        model = FrameAveraging(model, frames="all")  # as geognn.Model uses it; not message passing
    return model.double().eval()


def uses_global_frame(model: Backbone) -> bool:
    """True for frame-averaged models: their frame is computed from the whole structure, so they
    are not local message passing and the GWL bound does not apply to them."""
    from ..symmetry.frames import FrameAveraging

    return isinstance(model, FrameAveraging)


def readout_order(model: Backbone) -> int:
    """Largest tensor order l in the equivariant readout of ``model`` (see module docstring).

    e3nn backbones: the largest l of their last layer's irreps; otherwise 1 if the backbone
    returns ``node_vectors`` (checked on a small triangle molecule), else 0.
    """
    irreps = _last_irreps(model)
    if irreps is not None:
        return max(ir.l for _, ir in irreps)
    from .gwl import graph_from_bonds

    triangle = graph_from_bonds([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0], [0.3, 1.1, 0.2]], [6, 6, 1],
                                [(0, 1), (1, 2), (0, 2)])
    with torch.no_grad():
        out = model(collate([triangle]))
    return 1 if K.NODE_VECTORS in out else 0


def _last_irreps(model: Backbone):
    layers = getattr(model, "layers", None)
    if isinstance(layers, torch.nn.ModuleList) and len(layers) and hasattr(layers[-1], "irreps_out"):
        return layers[-1].irreps_out
    return None


def graph_embeddings(model: Backbone, batch, readout: str = "invariant") -> torch.Tensor:
    """[B, D] graph-level embeddings of a batch (see module docstring for the two readouts)."""
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
    captured = {}
    hook = None
    if readout == "equivariant" and _last_irreps(model) is not None:
        hook = model.layers[-1].register_forward_hook(lambda _m, _i, out: captured.setdefault("h", out))
    try:
        out = model(batch)
    finally:
        if hook is not None:
            hook.remove()
    if readout == "invariant":
        parts = [out[K.NODE_FEATURES]]
        if K.NODE_VECTORS in out:
            parts.append(out[K.NODE_VECTORS].norm(dim=-1))  # [N, F'] per-atom invariants
        node = torch.cat(parts, dim=-1)
    elif "h" in captured:
        node = captured["h"]  # [N, irreps_out.dim], all orders up to max l
    elif K.NODE_VECTORS in out:
        node = torch.cat([out[K.NODE_FEATURES], out[K.NODE_VECTORS].flatten(1)], dim=-1)
    else:
        node = out[K.NODE_FEATURES]
    graphs = graph_index(batch)
    pooled = scatter_sum(node, graphs, dim_size=num_graphs(batch))  # [B, D]
    periodic = batch[K.PBC].any(dim=-1).to(pooled.dtype).unsqueeze(-1)  # [B, 1]
    natoms = batch[K.NATOMS].to(pooled.dtype).unsqueeze(-1)
    return pooled * (1 - periodic) + pooled / natoms * periodic


def _as_float64(data: Data) -> Data:
    data = data.clone()
    for key in (K.POS, K.CELL, K.EDGE_SHIFT):
        if key in data:
            data[key] = data[key].double()
    return data


def _copies(data: Data, rng: np.random.Generator, rotate: bool, reflect: bool) -> tuple[list[Data], list[np.ndarray]]:
    """Isometric copies for the noise measurement: rotated (and reflected), translated, permuted;
    returned with the [3, 3] matrix each copy was rotated by."""
    copies, rotations = [], []
    n = data[K.POS].shape[0]
    for k in range(NUM_COPIES):
        rotation = Rotation.random(random_state=rng.integers(2**31)).as_matrix() if rotate else np.eye(3)
        if rotate and reflect and k % 2 == 0:
            rotation = -rotation
        copies.append(isometric_copy(data, rotation, rng.normal(size=3), rng.permutation(n)))
        rotations.append(rotation)
    return copies, rotations


def _rotated_back(embedding: torch.Tensor, num_features: int, rotation: np.ndarray) -> torch.Tensor:
    """A Cartesian equivariant embedding [F + F' * 3] of a copy rotated by ``rotation``, rotated back."""
    vectors = embedding[num_features:].reshape(-1, 3)  # [F', 3], rows rotated as v -> rotation @ v
    back = vectors @ torch.as_tensor(rotation, dtype=vectors.dtype)  # rotation^T applied to each row
    return torch.cat([embedding[:num_features], back.reshape(-1)])


def separation(backbone, g1: Data, g2: Data, num_layers: int, seeds: int = 5, readout: str = "invariant",
               **backbone_kwargs) -> Separation:
    """Per-seed gaps and noise thresholds of a probe (module docstring); keywords go to the backbone.

    ``cutoff`` defaults to CUTOFF_MARGIN x the longest edge of the two graphs; a given cutoff must
    exceed that edge (the backbone's envelope would silently remove the edges beyond it).
    """
    if int(seeds) != seeds or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds}")
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
    g1, g2 = _as_float64(g1), _as_float64(g2)
    from ..graph.build import edge_vectors

    longest = max(float(edge_vectors(g).norm(dim=-1).max()) if g[K.EDGE_INDEX].numel() else 0.0 for g in (g1, g2))
    cutoff = backbone_kwargs.pop("cutoff", None)
    if cutoff is None:
        cutoff = CUTOFF_MARGIN * longest if longest > 0 else 5.0
    elif not cutoff > longest:
        raise ValueError(f"cutoff {cutoff} Å must exceed the longest edge of the pair ({longest:.3f} Å): "
                         "the backbone's envelope would remove edges")
    gaps, thresholds = [], []
    for seed in range(int(seeds)):
        model = build_backbone(backbone, num_layers, cutoff, seed, backbone_kwargs)
        rng = np.random.default_rng(1000 + seed)
        # Equivariant readouts are compared unrotated (the pair's two graphs are rotated copies of
        # each other), except Cartesian ones of approximately equivariant backbones (PONITA's grid):
        # their copies are rotated and the readout rotated back, so the noise includes the
        # discretisation error a rotation causes, which must not count as seeing the orientation.
        rotate_back = (readout == "equivariant" and _last_irreps(model) is None
                       and getattr(model, "rotation_symmetry", "exact") == "approximate")
        rotate = readout == "invariant" or rotate_back
        reflect = bool(getattr(model, "reflection_invariant", True))
        copies1, rotations1 = _copies(g1, rng, rotate, reflect)
        copies2, rotations2 = _copies(g2, rng, rotate, reflect)
        with torch.no_grad():
            emb = graph_embeddings(model, collate([g1, g2] + copies1 + copies2), readout)  # [2 + 2 * NUM_COPIES, D]
        if rotate_back:
            num_features = model.out_channels
            emb = torch.stack(list(emb[:2]) + [_rotated_back(e, num_features, r)
                                               for e, r in zip(emb[2:], rotations1 + rotations2)])
        e1, e2 = emb[0], emb[1]
        noise = max([float((emb[2 + k] - e1).norm()) for k in range(NUM_COPIES)]
                    + [float((emb[2 + NUM_COPIES + k] - e2).norm()) for k in range(NUM_COPIES)])
        scale = max(float(e1.norm()), float(e2.norm()))
        gaps.append(float((e1 - e2).norm()))
        thresholds.append(NOISE_FACTOR * noise + RELATIVE_FLOOR * scale)
    return Separation(tuple(gaps), tuple(thresholds))


def distinguishes(backbone, g1: Data, g2: Data, num_layers: int, seeds: int = 5, **backbone_kwargs) -> bool:
    """Whether a randomly initialised ``backbone`` with ``num_layers`` layers separates g1 from g2.

    Builds the backbone (a name in ``geognn.BACKBONES`` or a class) for seeds 0..seeds-1, each a
    fresh initialisation, and reports whether the invariant graph-level embeddings differ beyond
    the noise threshold measured on isometric copies, for at least one seed (module docstring).
    ``backbone_kwargs`` go to the backbone's constructor (e.g. hidden_channels, max_ell, cutoff).
    """
    return separation(backbone, g1, g2, num_layers, seeds, "invariant", **backbone_kwargs).distinguished


def identifies_orientation(backbone, g1: Data, g2: Data, num_layers: int = 1, seeds: int = 5,
                           **backbone_kwargs) -> bool:
    """Whether the *equivariant* readout of ``backbone`` differs between g1 and its rotated copy g2.

    For the rotationally symmetric pairs: theory says yes iff the readout has tensor order >= L.
    For approximately equivariant backbones with a Cartesian readout (PONITA's fixed grid) the
    noise reference includes rotated copies whose readout is rotated back, so the grid's
    discretisation error of a rotated input does not count as "identified".
    """
    return separation(backbone, g1, g2, num_layers, seeds, "equivariant", **backbone_kwargs).distinguished


def layers_needed(backbone, pair, max_layers: int = 8, seeds: int = 5, **backbone_kwargs) -> int | None:
    """Smallest number of layers (1..max_layers) with which ``backbone`` tells ``pair`` apart, or None.

    ``pair`` is a ``HardPair``; for rotationally symmetric pairs (``pair.is_orientation_pair``) the
    equivariant readout is used (orientation identified), otherwise ``distinguishes``.
    """
    if int(max_layers) != max_layers or max_layers < 1:
        raise ValueError(f"max_layers must be a positive integer, got {max_layers}")
    readout = "equivariant" if pair.is_orientation_pair else "invariant"
    for num_layers in range(1, int(max_layers) + 1):
        if separation(backbone, pair.g1, pair.g2, num_layers, seeds, readout, **backbone_kwargs).distinguished:
            return num_layers
    return None
