"""Backbones: one file each, registered by name in the plain dict ``BACKBONES``.

Add a backbone by writing its file (a ``Backbone`` subclass following the contract in
``base.py``) and adding it to ``BACKBONES`` below. Nothing registers itself on import.
"""

from __future__ import annotations

from .base import Backbone
from .dimenetpp import DimeNetPlusPlus
from .egnn import EGNN
from .faenet import FAENet
from .mace import MACE
from .nequip import NequIP
from .painn import PaiNN
from .ponita import PNITA, PONITA
from .schnet import SchNet

BACKBONES: dict[str, type[Backbone]] = {
    "schnet": SchNet,
    "dimenetpp": DimeNetPlusPlus,
    "egnn": EGNN,
    "painn": PaiNN,
    "nequip": NequIP,
    "mace": MACE,
    "faenet": FAENet,
    "ponita": PONITA,
    "pnita": PNITA,
}


#: Small settings for each backbone: fast on a CPU core, yet every code path of the backbone runs
#: (all tensor orders, the product basis, the orientation grid). Used by ``geognn doctor`` and,
#: with a few additions, by the test suite (tests/backbone_configs.py).
SMALL_SETTINGS: dict[str, dict] = {
    "schnet": dict(hidden_channels=16, num_filters=16, num_layers=2, num_gaussians=12),
    "dimenetpp": dict(
        hidden_channels=16,
        num_layers=2,
        out_emb_channels=16,
        int_emb_size=8,
        basis_emb_size=4,
        num_spherical=3,
        num_radial=4,
        num_output_layers=2,
    ),
    "egnn": dict(hidden_channels=16, num_layers=2),
    "painn": dict(hidden_channels=16, num_layers=2),
    "nequip": dict(hidden_channels=8, num_layers=2, max_ell=2),
    "mace": dict(hidden_channels=8, num_layers=2, max_ell=2, correlation=3),
    "faenet": dict(hidden_channels=16, num_filters=16, num_layers=2, num_gaussians=12, pg_hidden_channels=4),
    "ponita": dict(
        hidden_channels=8,
        num_layers=2,
        num_ori=6,
        basis_dim=8,
        degree=2,
        widening_factor=2,
        layer_scale=0.5,
        grid="repulsion",
    ),
    "pnita": dict(hidden_channels=8, num_layers=2, basis_dim=8, degree=2, widening_factor=2, layer_scale=0.5),
}


def get_backbone_class(name: str) -> type[Backbone]:
    """The backbone class called ``name``; ValueError listing the valid names otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone '{name}'; choose one of: {', '.join(sorted(BACKBONES))}") from None


__all__ = [
    "BACKBONES",
    "Backbone",
    "DimeNetPlusPlus",
    "EGNN",
    "FAENet",
    "MACE",
    "NequIP",
    "PaiNN",
    "PNITA",
    "PONITA",
    "SchNet",
    "SMALL_SETTINGS",
    "get_backbone_class",
]
