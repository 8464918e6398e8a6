"""The dojo's trained k-chain experiment (``geognn.expressivity.training``, ``geognn expressivity
--train``), kept tiny: 3 seeds, 25 epochs (the full run: benchmarks/expressivity_trained.py).

Measured at 25 epochs on the dojo's 4-chain (training settings of ``TRAIN_SETTINGS``): EGNN with
coordinate updates reaches 100 % with 3 layers for seeds 1 and 2 (seed 0: 50 %), stays at 50 %
with 2 layers (theory: floor(4/2)+1 = 3 layers needed); with fixed coordinates (distance-only) it
stays at 50 % (theory: never).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from geognn.cli import main
from geognn.expressivity import gwl_test
from geognn.expressivity.training import TRAIN_SETTINGS, dojo_k_chain_pair, train_to_separate

EPOCHS = 25


pytestmark = pytest.mark.usefixtures("one_thread")


def test_dojo_k_chain_pair_geometry():
    s, u = dojo_k_chain_pair(4)
    for g in (s, u):
        assert g.pos.dtype == torch.float32 and g.atoms.tolist() == [0] * 6
        j, i = g.edge_index
        bonds = (g.pos[j] - g.pos[i]).norm(dim=-1)
        torch.testing.assert_close(bonds, torch.full_like(bonds, 5.0), rtol=0, atol=1e-5)  # every bond 5 Å
        torch.testing.assert_close(g.pos.mean(0), torch.zeros(3), rtol=0, atol=1e-5)  # centred
    # end atoms on opposite sides of the line in S, the same side in U (x of first and last atom)
    assert float(s.pos[0, 0]) * float(s.pos[-1, 0]) < 0 < float(u.pos[0, 0]) * float(u.pos[-1, 0])
    assert gwl_test(s, u).iterations == 3 and gwl_test(s, u, invariant=True).iterations is None


def test_egnn_with_coordinate_updates_learns_the_4_chain_with_3_layers_not_2():
    s, u = dojo_k_chain_pair(4)
    settings = TRAIN_SETTINGS["egnn"]
    three = train_to_separate("egnn", s, u, 3, seeds=3, epochs=EPOCHS, **settings)
    assert max(three) == 100.0 and three.count(100.0) >= 2, three
    assert train_to_separate("egnn", s, u, 2, seeds=3, epochs=EPOCHS, **settings) == [50.0] * 3
    fixed = train_to_separate("egnn", s, u, 3, seeds=3, epochs=EPOCHS, update_coords=False, **settings)
    assert fixed == [50.0] * 3  # distance-only: the two chains look the same


def test_each_seed_starts_from_a_fresh_model_and_the_callers_rng_is_untouched():
    s, u = dojo_k_chain_pair(2)
    state = torch.random.get_rng_state()
    first = train_to_separate("egnn", s, u, 2, seeds=2, epochs=2, **TRAIN_SETTINGS["egnn"])
    assert torch.equal(state, torch.random.get_rng_state())
    assert first == train_to_separate("egnn", s, u, 2, seeds=2, epochs=2, **TRAIN_SETTINGS["egnn"])  # reproducible
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        train_to_separate("egnn", s, u, 2, epochs=0)


def test_cli_train_writes_the_table_and_json(tmp_path, capsys):
    assert (
        main(
            [
                "expressivity",
                "--train",
                "--backbones",
                "schnet",
                "--k",
                "2",
                "--seeds",
                "2",
                "--epochs",
                "2",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    payload = json.loads((tmp_path / "trained.json").read_text())
    accuracies = payload["results"]["schnet"]["accuracies"]
    assert sorted(accuracies) == ["1", "2", "3", "4"]  # floor(2/2) .. 2 + 2 layers
    assert all(len(a) == 2 and set(a) <= {0.0, 50.0, 100.0} for a in accuracies.values())
    mean, std = payload["results"]["schnet"]["mean_std"]["2"]
    assert mean == pytest.approx(np.mean(accuracies["2"])) and std == pytest.approx(np.std(accuracies["2"]))
    assert "| schnet |" in (tmp_path / "trained.md").read_text()
    assert main(["expressivity", "--train", "--backbones", "gcn", "--out", str(tmp_path)]) == 2
    assert "unknown backbone(s) gcn" in capsys.readouterr().err
