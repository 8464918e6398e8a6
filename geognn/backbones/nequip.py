"""Placeholder: being written (issue 4)."""

from .base import Backbone


class NequIP(Backbone):
    name = "nequip"

    def __init__(self, **kwargs):
        raise NotImplementedError("nequip is not written yet")
