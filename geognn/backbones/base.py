"""The backbone contract.

A backbone maps a batch of geometric graphs to per-atom features. It is an ``nn.Module``
constructed from keyword arguments only (each with a documented default; at least
``hidden_channels``, ``num_layers``, ``cutoff``), with ``reset_parameters()``, and

    forward(batch) -> {"node_features": [N, F], optionally "node_vectors": [N, F', 3]}

``node_features`` must be invariant under rotations, reflections (unless the backbone says
it is SE(3)-only), translations and the choice of periodic cell; ``node_vectors`` rotate with
the structure. Backbones read geometry only through ``geognn.graph.edge_vectors(batch)``
(positions, cell, shifts) and never rebuild the graph, so that autograd forces and stress and
frame averaging work the same way for all of them. Heads (energy, forces, ...) live in
``geognn.model``, not here.

Per-element weights (embeddings, element-dependent weights) have one row per element of the
``species`` the backbone is built for (``species=[1, 6, 7, 8, 9]``: 5 rows), or, with
``species=None``, one row per atomic number 0..``max_z`` (the layout before species, which old
checkpoints hold). Every backbone takes both keywords, sets its tables up with
``init_elements(species, max_z)`` and reads rows with ``element_rows(z)`` (``geognn.nn.species``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..nn.species import SpeciesIndex, unknown_elements_message

#: The values of ``Backbone.geometry`` (see its comment for what each means and which test bounds it).
GEOMETRIES = ("distances", "angles", "vectors", "spherical tensors", "orientation grid", "frame")


class Backbone(nn.Module):
    """Base class: records the constructor keywords so a checkpoint can rebuild the backbone."""

    #: short name used in geognn.BACKBONES and checkpoints
    name: str = ""
    #: False for backbones that are only SE(3)-invariant (they may tell mirror images apart)
    reflection_invariant: bool = True
    #: How rotations are respected: "exact" (to float precision, by construction), "approximate"
    #: (up to a discretisation, e.g. PΘNITA's grid on the sphere; measured, not assumed) or "none"
    #: (no rotation symmetry of its own, e.g. FAENet, which relies on frame averaging)
    rotation_symmetry: str = "exact"
    #: largest atomic number the backbone can embed (instances set it: ``max_z``, or the largest of ``species``)
    max_z: int = 118
    #: atomic numbers the per-element tables have rows for (ascending), or None: every Z up to ``max_z``
    species: tuple[int, ...] | None = None
    #: What geometry the backbone's features are built from. It places the backbone in the
    #: hierarchy of Joshi et al. ("On the Expressive Power of Geometric GNNs", ICML 2023), i.e.
    #: which test bounds what it can tell apart, and the expressivity report compares it with
    #: that test. One of ``GEOMETRIES``:
    #:
    #: - "distances": invariant features from interatomic distances only (2-body): IGWL_(2).
    #: - "angles": invariant features from distances and angles between the edges at an atom
    #:   (3-body scalars): IGWL_(3), the paper's class for DimeNet.
    #: - "vectors": equivariant Cartesian vectors (tensor order 1) passed between atoms:
    #:   GWL_(l<=1), GWL with tensors of order <= 1 (``feature_order``).
    #: - "spherical tensors": equivariant spherical tensors up to order ``feature_order`` passed
    #:   between atoms (e3nn): GWL_(l<=feature_order).
    #: - "orientation grid": features on a grid of directions (PΘNITA), read out as vectors: GWL.
    #: - "frame": coordinates in a frame the structure defines; invariant only inside frame
    #:   averaging, whose frame is global (not message passing), so no GWL bound applies.
    #:
    #: Instances may set their own when a hyperparameter changes it (EGNN with fixed coordinates
    #: sees distances only).
    geometry: str = ""
    #: What the invariant output of a *one-layer* model sees, when that is less than ``geometry``
    #: promises; "" when it is not. "vector sums": distances and the inner products of per-atom
    #: sums over neighbours of f(z_j, r_ij) r_hat_ij (PaiNN, EGNN, NequIP, whose neighbours hold
    #: no orientation before the first layer); such a model cannot separate what
    #: ``geognn.expressivity.first_layer`` cannot, and the report expects it one layer later.
    first_layer_geometry: str = ""

    def __init__(self, **hparams: Any):
        super().__init__()
        self.hparams = dict(hparams)

    @property
    def out_channels(self) -> int:
        """F, the width of ``node_features``: the ``hidden_channels`` keyword unless a backbone
        overrides it (every backbone takes ``hidden_channels``)."""
        return self.hparams["hidden_channels"]

    @property
    def tensor_order(self) -> int:
        """Largest tensor order l of the equivariant features the backbone passes on and reads out:
        0 for invariant backbones ("distances", "angles") and for "frame"; 1 for "vectors" and
        "orientation grid" (vector readout); for "spherical tensors", the largest l of the last
        layer's e3nn ``irreps_out``. ValueError for a backbone that declares no valid ``geometry``."""
        if self.geometry not in GEOMETRIES:
            raise ValueError(
                f"{type(self).__name__} declares geometry {self.geometry!r}; expected one of "
                f"{', '.join(GEOMETRIES)} (see geognn.backbones.base.Backbone.geometry)"
            )
        if self.geometry in ("vectors", "orientation grid"):
            return 1
        if self.geometry == "spherical tensors":
            return max(ir.l for _, ir in self.layers[-1].irreps_out)
        return 0

    @property
    def feature_order(self) -> int | None:
        """L of the test GWL_(l<=L) that bounds the backbone (``geognn.expressivity.tensor_gwl``):
        the largest order l of any equivariant quantity it forms (edge spherical harmonics, tensor
        products, angular basis). None where no such bound applies (distances only, orientation
        grids, frames). Default: ``tensor_order`` for "vectors" and "spherical tensors"; backbones
        whose inner features go higher (e.g. MACE's edge harmonics) override it."""
        if self.geometry in ("vectors", "spherical tensors"):
            return self.tensor_order
        return None

    def reset_parameters(self) -> None:  # pragma: no cover - every backbone overrides
        raise NotImplementedError

    def forward(self, batch) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def init_elements(self, species, max_z: int) -> int:
        """Set up the map from atomic numbers to rows of the per-element tables (``element_index``,
        a ``geognn.nn.species.SpeciesIndex``) and ``species`` / ``max_z``; returns the number of
        rows every per-element table needs: ``len(species)``, or ``max_z + 1`` when species is None."""
        self.element_index = SpeciesIndex(species, max_z, owner=f"this {type(self).__name__}")
        self.species = self.element_index.species
        self.max_z = self.element_index.max_z
        return self.element_index.num_elements

    def element_rows(self, z: torch.Tensor) -> torch.Tensor:
        """[N] atomic numbers -> [N] rows of the per-element tables; ValueError naming the elements
        this backbone has no weights for (and the species it was built for)."""
        return self.element_index(z)

    def check_atomic_numbers(self, z: torch.Tensor) -> None:
        """ValueError if an atomic number has no row in the per-element tables (not among
        ``species``, or beyond ``max_z``)."""
        index = getattr(self, "element_index", None)  # None: a backbone (e.g. a test's) without init_elements
        if index is not None:
            index(z)
        elif z.numel() and int(z.max()) > self.max_z:
            raise ValueError(unknown_elements_message([int(z.max())], None, self.max_z, f"this {type(self).__name__}"))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.hparams.items())


def require_positive_integers(**values) -> None:
    """ValueError naming the first argument that is not an integer >= 1."""
    for key, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value}")


def require_positive(**values) -> None:
    """ValueError naming the first argument that is not > 0 (cutoff in Å, normalisation constants)."""
    for key, value in values.items():
        if not value > 0:
            raise ValueError(f"{key} must be > 0, got {value}")
