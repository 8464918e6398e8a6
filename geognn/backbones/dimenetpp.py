"""Placeholder: being written (issue 4)."""

from .base import Backbone


class DimeNetPlusPlus(Backbone):
    name = "dimenetpp"

    def __init__(self, **kwargs):
        raise NotImplementedError("dimenetpp is not written yet")
