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
``NOISE_FACTOR`` (``APPROXIMATE_NOISE_FACTOR`` for backbones whose rotation symmetry is only
approximate) times the largest ``|e(g) - e(copy of g)|`` over the isometric copies (random
rotation, also reflection if the backbone is reflection-invariant; translation; permutation of
atoms; the equivariant readout uses translation and permutation only), plus ``RELATIVE_FLOOR``
times the embedding norm. The copies carry the input's precision: they are made from the
input's coordinates in float64 and then *rounded to the input's dtype*, as a user's own rotated
copy of a float32 graph would be. So a float32 graph gets a float32 noise floor (~1e-7 relative
round-off of the coordinates, amplified by the model), a float64 one a float64 floor; without
the rounding a float32 graph was "separated" from its own rotated copy by most backbones. The
models themselves always run in float64. Approximately equivariant backbones
(``rotation_symmetry`` "approximate") get a threshold from their measured noise as well.

Inputs less precise than float64 (a float32 graph): the round-off of the coordinates moves the
embedding to first order, by far more than the gaps of deep models on long chains (painn, nequip,
mace on the 6- to 8-chains: 1e-12 to 1e-8 against ~1e-6), so the raw gap cannot be compared
with it. For backbones with exact symmetry the invariant readout is then made smooth (squared
vector norms) and widened by a fixed random per-atom MLP (``READOUT_FEATURES``, the kind of
head a model puts on its atoms), and every difference, pair or copy, is projected off the span of
both graphs' Jacobians with respect to positions and cell (:func:`projected_gaps`): what a small
move of the atoms explains is not counted. For an isometric copy what remains is second order in
the round-off plus float64 arithmetic (measured 1e-14 to 1e-12); a real separation keeps its
component outside the span, generically nonzero because the readout is wider than the span's
rank. The threshold is then ``NOISE_FACTOR`` times the largest projected copy difference plus
``PROJECTED_RELATIVE_FLOOR`` times the norm. Float64 inputs keep the raw gaps (their round-off
is 1e-16).

The probe's own settings keep deep gaps above the floors:

- the backbone's cutoff is ``CUTOFF_MARGIN`` = 3 times the pair's longest edge, since the edges
  are given, the cutoff only sets the envelope, and at 2/3 of the cutoff the polynomial envelope
  is ~0.5 and SchNet's cosine 0.25 per hop (measured: the 8-chain's gap grew ~1e3 from margin 1.5
  to 3 for nequip and mace);
- backbones that divide messages by ``avg_num_neighbors`` get the pair's own mean degree
  (:func:`mean_degree`), as MACE and NequIP set it from their training data; the default 10
  on a chain of degree 2 shrank every hop 5-fold.

Why two factors: for exact backbones the noise is round-off, random in size from copy to copy;
float32 copies of a chain gave gaps of 0.1 to 0.9 times the measured noise (so 10 leaves a
factor > 10 of headroom) while real separations of float32 dojo-layout pairs (PaiNN at ⌊k/2⌋+1
layers on the 4-chain) were only ~35 times the noise, which 100 would have hidden. For an
approximate symmetry (PΘNITA's grid) the noise is a systematic discretisation error that a few
rotations under-sample, so the factor stays 100 where a single grid is probed.

Backbones on an orientation grid (``rotation_symmetry`` "approximate" and a ``num_ori`` option,
PΘNITA), invariant readout: the question is what the *continuous* model (integrals over the
sphere, exactly equivariant) separates, since the grid only approximates it. Their weights do not
depend on the grid, so one set of weights is evaluated on the grids of ``GRID_LADDER``, coarse to
fine, with the same copies. The ladder's grids are Fibonacci lattices (``LADDER_GRID``) whatever
grid the model itself uses: every grid approaches the same continuous model, and the lattice is
built instantly at thousands of points. A gap that is a discretisation artefact falls with the
copy noise as the grid is refined; a real one converges. Separated when, on some grid after the
first, the gap exceeds both ``CONTINUUM_NOISE_FACTOR`` times that grid's copy noise and
1/``CONVERGENCE`` times its change from the previous grid (so it is converged to within 50 %). The refinement stops early
once separated, or once the gap has fallen 4-fold from the previous grid and lies under the noise
bound (it follows the discretisation error). Measured on the 4-chain at 3 layers (seed 0): gap
3.8e-3, 5.4e-4, 2.8e-4, 2.7e-4 at 96, 384, 1536, 3000 orientations, with copy noise 6.5e-3,
9.3e-4, 8.7e-5, 3.4e-5; at 2 layers, which theory says cannot separate, the gap falls with the
noise (1.2e-1, 9.1e-3, 1.1e-3 at 24, 96, 384).

The *margin* of a verdict is gap / threshold: above 1 the pair is separated (the best seed's
margin is reported), below 1 it is not (the largest margin over seeds). A margin near 1 is a
close call; the report prints every margin.

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
from .inputs import as_graph

#: A gap must exceed this many times the isometric-copy noise to count as a separation.
NOISE_FACTOR = 10.0
#: ... for backbones with ``rotation_symmetry == "approximate"`` (see module docstring).
APPROXIMATE_NOISE_FACTOR = 100.0
#: ... plus this fraction of the embedding norm (float64 round-off of different summation orders).
#: Used for raw gaps (approximate symmetries, equivariant readouts).
RELATIVE_FLOOR = 1e-9
#: ... the same for projected gaps (exact backbones, invariant readout), which carry no input
#: round-off, only float64 arithmetic (measured: 1e-16 to 1e-15 of the norm on the k-chains).
PROJECTED_RELATIVE_FLOOR = 1e-13
#: Random per-atom features of the invariant readout (module docstring): their number, and the
#: relative singular value below which a Jacobian direction counts as zero.
READOUT_FEATURES = 32
RANK_TOLERANCE = 1e-10
#: Default backbone cutoff: this many times the pair's longest edge (the envelope must not cut edges).
CUTOFF_MARGIN = 3.0
#: Isometric copies of each graph used to measure the noise.
NUM_COPIES = 2
#: Orientation grids (``num_ori``) of the continuum probe of backbones on a grid (module
#: docstring), coarse to fine. Their weights do not depend on the grid, so one set of weights is
#: evaluated on each; the cost grows as num_ori^2.
GRID_LADDER = (384, 1536, 3072)
#: Grid construction of the ladder's rungs (``geognn.symmetry.sphere.GRID_METHODS``).
LADDER_GRID = "fibonacci"
#: A continuum gap must exceed this many times the finest grid's copy noise ...
CONTINUUM_NOISE_FACTOR = 3.0
#: ... and change by less than this fraction of itself between the last two grids (converged).
CONVERGENCE = 0.5
READOUTS = ("invariant", "equivariant")


@dataclass(frozen=True)
class Separation:
    """Per-seed outcome of a probe: gaps |e(g1) - e(g2)| and the thresholds they were compared to
    (same units as the embeddings; module docstring)."""

    gaps: tuple[float, ...]
    thresholds: tuple[float, ...]

    @property
    def separated(self) -> tuple[bool, ...]:
        return tuple(g > t for g, t in zip(self.gaps, self.thresholds))

    @property
    def distinguished(self) -> bool:
        return any(self.separated)

    @property
    def margins(self) -> tuple[float, ...]:
        """gap / threshold per seed (> 1: separated by that seed)."""
        return tuple(g / t if t > 0 else float("inf") for g, t in zip(self.gaps, self.thresholds))

    @property
    def margin(self) -> float:
        """The verdict's margin: the largest gap / threshold over seeds (> 1 iff distinguished)."""
        return max(self.margins)


def build_backbone(backbone, num_layers: int, cutoff: float, seed: int, backbone_kwargs: dict) -> Backbone:
    """A freshly initialised float64 backbone (name or class), built under ``seed``, in eval mode.

    Backbones without rotation symmetry of their own (``rotation_symmetry == "none"``, e.g. FAENet)
    are wrapped in ``geognn.FrameAveraging(frames="all")``, as ``geognn.Model``
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
        from ..backbones.frame_averaging import FrameAveraging

        model = FrameAveraging(model, frames="all")  # as geognn.Model uses it; not message passing
    return model.double().eval()


def uses_global_frame(model: Backbone) -> bool:
    """True for frame-averaged models: their frame is computed from the whole structure, so they
    are not local message passing and the GWL bound does not apply to them."""
    from ..backbones.frame_averaging import FrameAveraging

    return isinstance(model, FrameAveraging)


def readout_order(model: Backbone) -> int:
    """Largest tensor order l in the equivariant readout of ``model`` (see module docstring), as
    *measured* from what it returns; the report uses the declared ``Backbone.tensor_order``, and
    the tests check that the two agree.

    e3nn backbones: the largest l of their last layer's irreps; otherwise 1 if the backbone
    returns ``node_vectors`` (checked on a small triangle molecule), else 0.
    """
    irreps = _last_irreps(model)
    if irreps is not None:
        return max(ir.l for _, ir in irreps)
    from .gwl import graph_from_bonds

    triangle = graph_from_bonds(
        [[0.0, 0.0, 0.0], [1.2, 0.0, 0.0], [0.3, 1.1, 0.2]], [6, 6, 1], [(0, 1), (1, 2), (0, 2)]
    )
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
    return pool_atoms(node, batch)


def pool_atoms(node: torch.Tensor, batch) -> torch.Tensor:
    """[N, D] per-atom values -> [B, D]: the sum over each graph's atoms, the mean for periodic
    graphs (their cell is arbitrary, so only per-atom values compare between cells)."""
    pooled = scatter_sum(node, graph_index(batch), dim_size=num_graphs(batch))  # [B, D]
    periodic = batch[K.PBC].any(dim=-1).to(pooled.dtype).unsqueeze(-1)  # [B, 1]
    natoms = batch[K.NATOMS].to(pooled.dtype).unsqueeze(-1)
    return pooled * (1 - periodic) + pooled / natoms * periodic


def _as_float64(data: Data) -> Data:
    data = data.clone()
    for key in (K.POS, K.CELL, K.EDGE_SHIFT):
        data[key] = data[key].double()
    return data


def _rounded_to(data: Data, dtype: torch.dtype) -> Data:
    """``data`` (float64) with positions and cell rounded to ``dtype`` and back: the input's precision."""
    data = data.clone()
    for key in (K.POS, K.CELL):
        data[key] = data[key].to(dtype).double()
    return data


def _copies(
    data: Data, dtype: torch.dtype, rng: np.random.Generator, rotate: bool, reflect: bool
) -> tuple[list[Data], list[np.ndarray]]:
    """Isometric copies for the noise measurement: rotated (and reflected), translated, permuted,
    made in float64 from ``data`` and rounded to ``dtype`` (the input's); returned with the
    [3, 3] matrix each copy was rotated by."""
    copies, rotations = [], []
    n = data[K.POS].shape[0]
    extent = float(data[K.POS].abs().max()) if n else 1.0
    for k in range(NUM_COPIES):
        rotation = Rotation.random(random_state=rng.integers(2**31)).as_matrix() if rotate else np.eye(3)
        if rotate and reflect and k % 2 == 0:
            rotation = -rotation
        translation = rng.normal(size=3) * max(1.0, extent)  # as far as the structure is large
        copies.append(_rounded_to(isometric_copy(data, rotation, translation, rng.permutation(n)), dtype))
        rotations.append(rotation)
    return copies, rotations


def invariant_node_features(out: dict) -> torch.Tensor:
    """[N, F + F'] per-atom invariants of a backbone's output: ``node_features`` and the *squared*
    norms of ``node_vectors`` (smooth in the coordinates, unlike the norm at a zero vector, so the
    first-order analysis of :func:`projected_gaps` holds)."""
    parts = [out[K.NODE_FEATURES]]
    if K.NODE_VECTORS in out:
        parts.append(out[K.NODE_VECTORS].pow(2).sum(dim=-1))
    return torch.cat(parts, dim=-1)


def mean_degree(*graphs: Data) -> float:
    """Mean number of neighbours per atom over ``graphs`` (edges / atoms), at least 1."""
    edges = sum(int(g[K.EDGE_INDEX].shape[1]) for g in graphs)
    atoms = sum(int(g[K.POS].shape[0]) for g in graphs)
    return max(1.0, edges / max(atoms, 1))


def _coordinate_jacobians(model: Backbone, graphs: list[Data], seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Random-feature invariant embeddings of ``graphs`` and their Jacobians.

    Returns ``(emb, jacobians)``: emb [B, D] (D = F + READOUT_FEATURES), the sum over atoms (mean
    for periodic graphs) of ``[u, tanh(u W + b)]``, where u are the per-atom invariants
    (:func:`invariant_node_features`) standardised with the first graph's statistics and W, b are
    drawn from ``seed``: one fixed per-atom MLP for every graph, as a model's readout head is;
    jacobians[b] [D, 3 N_b + 9]: d emb[b] / d (positions, cell rows), Å^-1.
    """
    batch = collate(graphs)
    pos = batch[K.POS].clone().requires_grad_(True)
    cell = batch[K.CELL].clone().requires_grad_(True)
    batch[K.POS], batch[K.CELL] = pos, cell
    h = invariant_node_features(model(batch))  # [N, F]
    first = graphs[0][K.POS].shape[0]
    mean = h[:first].detach().mean(dim=0)
    std = h[:first].detach().std().clamp_min(1e-12) if first > 1 else torch.ones((), dtype=h.dtype)
    generator = torch.Generator().manual_seed(int(seed))
    weight = torch.randn(h.shape[1], READOUT_FEATURES, generator=generator, dtype=torch.float64).to(h.dtype)
    bias = torch.randn(READOUT_FEATURES, generator=generator, dtype=torch.float64).to(h.dtype)
    u = (h - mean) / std
    node = torch.cat([u, torch.tanh(u @ weight / h.shape[1] ** 0.5 + bias)], dim=-1)  # [N, D]
    emb = pool_atoms(node, batch)  # [B, D]
    dim = emb.shape[1]
    # row d of every graph's Jacobian at once: graphs are independent, so d (sum_b emb[b, d]) / d pos
    # splits into the graphs' own rows
    eye = torch.eye(dim, dtype=emb.dtype).unsqueeze(1).expand(dim, len(graphs), dim)
    try:
        d_pos, d_cell = torch.autograd.grad(
            emb, (pos, cell), grad_outputs=eye, is_grads_batched=True, allow_unused=True, retain_graph=True
        )
    except RuntimeError:  # an operation without a batching rule: one backward pass per row
        rows = [
            torch.autograd.grad(emb[:, d].sum(), (pos, cell), retain_graph=True, allow_unused=True) for d in range(dim)
        ]
        d_pos = torch.stack([torch.zeros_like(pos) if r[0] is None else r[0] for r in rows])
        d_cell = torch.stack([torch.zeros_like(cell) if r[1] is None else r[1] for r in rows])
    d_pos = torch.zeros(dim, *pos.shape, dtype=emb.dtype) if d_pos is None else d_pos  # [D, N, 3]
    d_cell = torch.zeros(dim, *cell.shape, dtype=emb.dtype) if d_cell is None else d_cell  # [D, B, 3, 3]
    jacobians, start = [], 0
    for b, g in enumerate(graphs):
        n = g[K.POS].shape[0]
        jacobians.append(torch.cat([d_pos[:, start : start + n].reshape(dim, -1), d_cell[:, b].reshape(dim, 9)], dim=1))
        start += n
    return emb.detach(), [j.detach() for j in jacobians]


def _unexplained(diff: torch.Tensor, jacobian_a: torch.Tensor, jacobian_b: torch.Tensor) -> float:
    """Norm of the part of ``diff`` [D] outside the span of both Jacobians' columns: what no small
    change of either graph's coordinates explains at first order."""
    span = torch.cat([jacobian_a, jacobian_b], dim=1)
    if span.abs().max() == 0:
        return float(diff.norm())
    u, sv, _ = torch.linalg.svd(span, full_matrices=False)
    u = u[:, sv > sv[0] * RANK_TOLERANCE]
    return float((diff - u @ (u.T @ diff)).norm())


def projected_gaps(
    model: Backbone, g1: Data, g2: Data, copies1: list[Data], copies2: list[Data], seed: int
) -> tuple[float, list[float], float]:
    """(gap, copy gaps, scale) with the first-order effect of coordinate round-off removed.

    Each difference of embeddings is projected off the span of the two graphs' Jacobians
    (:func:`_coordinate_jacobians`): a gap that a small move of the atoms (or cell) could cause,
    such as the round-off of float32 coordinates, is not counted. What remains of an isometric
    copy's difference is second order in the round-off plus float64 arithmetic; what remains of a
    real separation is its component outside that span, generic when D exceeds the span's rank
    (D = F + READOUT_FEATURES; the span has rank <= 3 N1 + 3 N2 + 18 - 12).
    """
    graphs = [g1, g2] + copies1 + copies2
    emb, jac = _coordinate_jacobians(model, graphs, seed)
    gap = _unexplained(emb[0] - emb[1], jac[0], jac[1])
    noise = [_unexplained(emb[0] - emb[2 + k], jac[0], jac[2 + k]) for k in range(len(copies1))]
    offset = 2 + len(copies1)
    noise += [_unexplained(emb[1] - emb[offset + k], jac[1], jac[offset + k]) for k in range(len(copies2))]
    return gap, noise, max(float(emb[0].norm()), float(emb[1].norm()))


def as_pair(g1, g2, graph_cutoff: float | None = None) -> tuple[Data, Data]:
    """Both graphs of a pair through the one input path (``inputs.as_graph``)."""
    return as_graph(g1, "g1", graph_cutoff), as_graph(g2, "g2", graph_cutoff)


def _rotated_back(embedding: torch.Tensor, num_features: int, rotation: np.ndarray) -> torch.Tensor:
    """A Cartesian equivariant embedding [F + F' * 3] of a copy rotated by ``rotation``, rotated back."""
    vectors = embedding[num_features:].reshape(-1, 3)  # [F', 3], rows rotated as v -> rotation @ v
    back = vectors @ torch.as_tensor(rotation, dtype=vectors.dtype)  # rotation^T applied to each row
    return torch.cat([embedding[:num_features], back.reshape(-1)])


def separation(
    backbone,
    g1,
    g2,
    num_layers: int,
    seeds: int = 5,
    readout: str = "invariant",
    graph_cutoff: float | None = None,
    **backbone_kwargs,
) -> Separation:
    """Per-seed gaps and noise thresholds of a probe (module docstring); keywords go to the backbone.

    ``g1``, ``g2``: anything ``geognn.expressivity.inputs.as_graph`` accepts (geognn or dojo-layout
    ``Data``, float32 or float64; ``ase.Atoms`` with ``graph_cutoff`` in Å).
    ``cutoff`` (the backbone's) defaults to CUTOFF_MARGIN x the longest edge of the two graphs; a
    given cutoff must exceed that edge (the backbone's envelope would silently remove the edges
    beyond it).
    """
    if int(seeds) != seeds or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds}")
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
    g1, g2 = as_pair(g1, g2, graph_cutoff)
    dtypes = g1[K.POS].dtype, g2[K.POS].dtype  # the inputs' precision: the copies are rounded to it
    g1, g2 = _as_float64(g1), _as_float64(g2)
    from ..graph.build import edge_vectors

    longest = max(float(edge_vectors(g).norm(dim=-1).max()) if g[K.EDGE_INDEX].numel() else 0.0 for g in (g1, g2))
    cutoff = backbone_kwargs.pop("cutoff", None)
    if cutoff is None:
        cutoff = CUTOFF_MARGIN * longest if longest > 0 else 5.0
    elif not cutoff > longest:
        raise ValueError(
            f"cutoff {cutoff} Å must exceed the longest edge of the pair ({longest:.3f} Å): "
            "the backbone's envelope would remove edges"
        )
    cls = get_backbone_class(backbone) if isinstance(backbone, str) else backbone
    if (
        "avg_num_neighbors" not in backbone_kwargs
        and isinstance(cls, type)
        and "avg_num_neighbors" in inspect.signature(cls.__init__).parameters
    ):
        backbone_kwargs["avg_num_neighbors"] = mean_degree(g1, g2)  # as MACE/NequIP set it from their data
    # an input less precise than float64: the round-off of its coordinates is removed at first
    # order (projected_gaps) instead of swamping deep models' small gaps
    rounded = max(torch.finfo(dt).eps for dt in dtypes) > torch.finfo(torch.float64).eps
    gaps, thresholds = [], []
    for seed in range(int(seeds)):
        model = build_backbone(backbone, num_layers, cutoff, seed, backbone_kwargs)
        rng = np.random.default_rng(1000 + seed)
        # Equivariant readouts are compared unrotated (the pair's two graphs are rotated copies of
        # each other), except Cartesian ones of approximately equivariant backbones (PONITA's grid):
        # their copies are rotated and the readout rotated back, so the noise includes the
        # discretisation error a rotation causes, which must not count as seeing the orientation.
        symmetry = getattr(model, "rotation_symmetry", "exact")
        rotate_back = readout == "equivariant" and _last_irreps(model) is None and symmetry == "approximate"
        rotate = readout == "invariant" or rotate_back
        reflect = bool(getattr(model, "reflection_invariant", True))
        copies1, rotations1 = _copies(g1, dtypes[0], rng, rotate, reflect)
        copies2, rotations2 = _copies(g2, dtypes[1], rng, rotate, reflect)
        if readout == "invariant" and symmetry == "exact" and rounded:
            gap, noise, scale = projected_gaps(model, g1, g2, copies1, copies2, seed)
            gaps.append(gap)
            thresholds.append(NOISE_FACTOR * max(noise) + PROJECTED_RELATIVE_FLOOR * scale)
            continue
        if readout == "invariant" and symmetry == "approximate" and _has_grid(model):
            gap, threshold = _continuum_gap(
                backbone, num_layers, cutoff, seed, backbone_kwargs, model, g1, g2, copies1, copies2
            )
            gaps.append(gap)
            thresholds.append(threshold)
            continue
        rotations = (rotations1 + rotations2) if rotate_back else None
        gap, noise, scale = _raw_gap(model, g1, g2, copies1, copies2, readout, rotations)
        gaps.append(gap)
        factor = APPROXIMATE_NOISE_FACTOR if symmetry == "approximate" else NOISE_FACTOR
        thresholds.append(factor * noise + RELATIVE_FLOOR * scale)
    return Separation(tuple(gaps), tuple(thresholds))


def _raw_gap(model, g1, g2, copies1, copies2, readout: str, rotations=None) -> tuple[float, float, float]:
    """(|e(g1) - e(g2)|, largest |e(g) - e(copy of g)|, largest |e|) of the graph embeddings;
    with ``rotations`` (one per copy) the copies' Cartesian readouts are rotated back first."""
    with torch.no_grad():
        emb = graph_embeddings(model, collate([g1, g2] + copies1 + copies2), readout)  # [2 + 2 * NUM_COPIES, D]
    if rotations is not None:
        num_features = model.out_channels
        emb = torch.stack(list(emb[:2]) + [_rotated_back(e, num_features, r) for e, r in zip(emb[2:], rotations)])
    e1, e2 = emb[0], emb[1]
    noise = max(
        [float((emb[2 + k] - e1).norm()) for k in range(NUM_COPIES)]
        + [float((emb[2 + NUM_COPIES + k] - e2).norm()) for k in range(NUM_COPIES)]
    )
    return float((e1 - e2).norm()), noise, max(float(e1.norm()), float(e2.norm()))


def _has_grid(model) -> bool:
    """True for backbones whose orientation grid can be refined with the same weights (``num_ori``)."""
    return "num_ori" in getattr(model, "hparams", {})


def _continuum_gap(backbone, num_layers, cutoff, seed, backbone_kwargs, model, g1, g2, copies1, copies2):
    """(gap, threshold) of the continuous model behind a grid backbone (module docstring): the
    weights of ``model`` evaluated on the grids of ``GRID_LADDER``."""
    weights = model.state_dict()
    previous = None
    for num_ori in GRID_LADDER:
        fine = build_backbone(
            backbone, num_layers, cutoff, seed, {**backbone_kwargs, "num_ori": num_ori, "grid": LADDER_GRID}
        )
        fine.load_state_dict(weights)
        gap, noise, scale = _raw_gap(fine, g1, g2, copies1, copies2, "invariant")
        threshold = CONTINUUM_NOISE_FACTOR * noise + RELATIVE_FLOOR * scale
        if previous is not None:
            threshold = max(threshold, abs(gap - previous) / CONVERGENCE)
            if gap > threshold or (gap < 0.25 * previous and gap < CONTINUUM_NOISE_FACTOR * noise):
                break
        previous = gap
    return gap, threshold


def distinguishes(
    backbone, g1, g2, num_layers: int, seeds: int = 5, graph_cutoff: float | None = None, **backbone_kwargs
) -> bool:
    """Whether a randomly initialised ``backbone`` with ``num_layers`` layers separates g1 from g2.

    Builds the backbone (a name in ``geognn.BACKBONES`` or a class) for seeds 0..seeds-1, each a
    fresh initialisation, and reports whether the invariant graph-level embeddings differ beyond
    the noise threshold measured on isometric copies, for at least one seed (module docstring).
    g1, g2 as in :func:`separation` (``graph_cutoff``: Å, for ``ase.Atoms`` inputs).
    ``backbone_kwargs`` go to the backbone's constructor (e.g. hidden_channels, max_ell, cutoff).
    Use :func:`separation` for the gaps, thresholds and margins behind the verdict.
    """
    return separation(backbone, g1, g2, num_layers, seeds, "invariant", graph_cutoff, **backbone_kwargs).distinguished


def identifies_orientation(
    backbone, g1, g2, num_layers: int = 1, seeds: int = 5, graph_cutoff: float | None = None, **backbone_kwargs
) -> bool:
    """Whether the *equivariant* readout of ``backbone`` differs between g1 and its rotated copy g2.

    For the rotationally symmetric pairs: theory says yes iff the readout has tensor order >= L.
    For approximately equivariant backbones with a Cartesian readout (PONITA's fixed grid) the
    noise reference includes rotated copies whose readout is rotated back, so the grid's
    discretisation error of a rotated input does not count as "identified".
    """
    return separation(backbone, g1, g2, num_layers, seeds, "equivariant", graph_cutoff, **backbone_kwargs).distinguished


def layers_needed(
    backbone, pair, max_layers: int = 8, seeds: int = 5, graph_cutoff: float | None = None, **backbone_kwargs
) -> int | None:
    """Smallest number of layers (1..max_layers) with which ``backbone`` tells ``pair`` apart, or None.

    ``pair`` is a ``HardPair`` or a tuple (g1, g2) of inputs as in :func:`separation`; for
    rotationally symmetric pairs (``pair.is_orientation_pair``) the equivariant readout is used
    (orientation identified), otherwise ``distinguishes``. :func:`layers_scan` also returns the
    margin of every layer count tried.
    """
    return layers_scan(backbone, pair, max_layers, seeds, graph_cutoff, **backbone_kwargs)[0]


def layers_scan(
    backbone, pair, max_layers: int = 8, seeds: int = 5, graph_cutoff: float | None = None, **backbone_kwargs
) -> tuple[int | None, dict[int, float]]:
    """(:func:`layers_needed`, {num_layers: margin}) for the layer counts tried (stops at the first
    that separates)."""
    if int(max_layers) != max_layers or max_layers < 1:
        raise ValueError(f"max_layers must be a positive integer, got {max_layers}")
    if isinstance(pair, (tuple, list)):
        if len(pair) != 2:
            raise ValueError(f"pair must be a HardPair or a tuple (g1, g2), got a {type(pair).__name__} of {len(pair)}")
        g1, g2, orientation = pair[0], pair[1], False
    elif hasattr(pair, "g1") and hasattr(pair, "g2"):
        g1, g2, orientation = pair.g1, pair.g2, bool(getattr(pair, "is_orientation_pair", False))
    else:
        raise ValueError(f"pair must be a HardPair or a tuple (g1, g2), got {type(pair).__name__}")
    g1, g2 = as_pair(g1, g2, graph_cutoff)
    readout = "equivariant" if orientation else "invariant"
    margins = {}
    for num_layers in range(1, int(max_layers) + 1):
        result = separation(backbone, g1, g2, num_layers, seeds, readout, **backbone_kwargs)
        margins[num_layers] = result.margin
        if result.distinguished:
            return num_layers, margins
    return None, margins
