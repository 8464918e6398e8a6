"""Placeholder: being written (issue 4)."""

from .base import Backbone


class PaiNN(Backbone):
    name = "painn"

    def __init__(self, **kwargs):
        raise NotImplementedError("painn is not written yet")
