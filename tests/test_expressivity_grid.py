"""The continuum probe of grid backbones (PΘNITA): geognn/expressivity/models.py, GRID_LADDER.

A gap that a coarse grid shows may be a discretisation artefact; the probe refines the grid with
the same weights and believes only gaps that converge above the copy noise. Checked on the
2-chain (GWL separates it at 2 iterations, not at 1) and on a float32 isometric copy.
"""

from __future__ import annotations

import pytest
import torch

from geognn.expressivity import isometric_copy, load_pairs, separation
from geognn.expressivity import models as models_module
from geognn.expressivity.report import PROBE_SETTINGS

#: A shorter ladder than the report's (384, 1536, 3072) keeps this test to seconds; the 2-chain's
#: gap converges by 384 orientations (measured 0.222 at 96, 384 and 1536 at 2 layers).
LADDER = (96, 384, 1536)


@pytest.fixture
def short_ladder(monkeypatch):
    monkeypatch.setattr(models_module, "GRID_LADDER", LADDER)


def _chain():
    (pair,) = load_pairs(["2-chain"])
    return pair


def test_the_grid_backbone_separates_the_2_chain_at_2_layers_not_1(short_ladder):
    pair = _chain()
    at_two = separation("ponita", pair.g1, pair.g2, 2, seeds=1, **PROBE_SETTINGS["ponita"])
    at_one = separation("ponita", pair.g1, pair.g2, 1, seeds=1, **PROBE_SETTINGS["ponita"])
    assert at_two.distinguished and at_two.margin > 10
    assert not at_one.distinguished and at_one.margin < 0.5


def test_a_single_coarse_grid_could_not_tell(short_ladder, monkeypatch):
    """The reason for the ladder: on the report's coarse grid (6 orientations) the copy noise is
    as large as the 2-layer gap, so one grid cannot separate what the continuous model does."""
    pair = _chain()
    monkeypatch.setattr(models_module, "GRID_LADDER", (6,))
    coarse = separation("ponita", pair.g1, pair.g2, 2, seeds=1, **PROBE_SETTINGS["ponita"])
    assert not coarse.distinguished


def test_the_grid_backbone_never_separates_a_float32_rotated_copy(monkeypatch):
    monkeypatch.setattr(models_module, "GRID_LADDER", LADDER[:2])
    g = _chain().g1
    rotation = torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)
    copy = isometric_copy(g, rotation, torch.tensor([0.3, -1.2, 2.0]), torch.randperm(g.num_nodes))
    copy.pos = copy.pos.float()
    result = separation("ponita", g, copy, 2, seeds=1, **PROBE_SETTINGS["ponita"])
    assert not result.distinguished
