"""Placeholder: being written (issue 4)."""

from .base import Backbone


class MACE(Backbone):
    name = "mace"

    def __init__(self, **kwargs):
        raise NotImplementedError("mace is not written yet")
