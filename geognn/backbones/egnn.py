"""Placeholder: being written (issue 4)."""

from .base import Backbone


class EGNN(Backbone):
    name = "egnn"

    def __init__(self, **kwargs):
        raise NotImplementedError("egnn is not written yet")
