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
    "get_backbone_class",
]
