"""Training on the shipped QM9 subset: learns, beats the composition baseline, resumes."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import geognn
from geognn.cli import main
from geognn.train.config import DEFAULT_QM9, TrainConfig
from geognn.train.loop import split_indices, train


def test_shipped_subset_is_present_and_attributed():
    assert DEFAULT_QM9.is_file()
    readme = (DEFAULT_QM9.parent / "README.md").read_text()
    assert "Ramakrishnan" in readme and "qm9pack" in readme


def test_training_beats_composition_baseline(tmp_path):
    """A short run (1,500 molecules, ~40 s) already beats the linear-on-composition baseline 2x."""
    config = TrainConfig(limit=1500, time_limit=40, out=str(tmp_path / "run"), threads=2)
    result = train(config, progress=False)
    assert result.test_mae < 0.5 * result.baseline_test_mae, result.summary("U0")
    assert 0.2 < result.baseline_test_mae < 2.0  # eV: the known scale of this baseline on QM9 U0
    model = geognn.load_model(result.model_path)
    assert model.metadata["periodic"] is False and 6 in model.metadata["elements"]


def test_run_folder_and_resume(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--limit", "120", "--epochs", "2", "--time-limit", "0", "--out", str(out)]) == 0
    for name in ("config.json", "split.json", "metrics.csv", "state.pt", "model.pt", "result.json"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["epoch"] == 2
    # resume continues at epoch 3 with the same split and config
    assert main(["train", "--resume", str(out), "--epochs", "4"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert json.loads((out / "config.json").read_text())["epochs"] == 4
    assert torch.load(out / "state.pt", weights_only=True)["epoch"] == 4


def test_split_is_seeded_and_disjoint():
    a = split_indices(100, 0.1, 0.2, seed=3)
    assert a == split_indices(100, 0.1, 0.2, seed=3)
    assert a != split_indices(100, 0.1, 0.2, seed=4)
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(100))
    assert (len(a["val"]), len(a["test"])) == (10, 20)


def test_train_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--target", "nope", "--out", str(tmp_path / "x"), "--limit", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown QM9 target 'nope'") and err.count("\n") == 1
    assert main(["train", "--resume", str(tmp_path / "missing")]) == 2
    assert "not a geognn run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "imagenet"])
