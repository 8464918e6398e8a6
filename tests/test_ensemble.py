"""Ensembles: mean and spread over members, one checkpoint, ``--checkpoint a.pt b.pt``, and
``geognn train --ensemble N``."""

from __future__ import annotations

import copy
import csv
import io
import json

import numpy as np
import pytest
import torch
from conftest import load_mp20_crystals

import geognn
from geognn.cli import main
from geognn.model import Ensemble, load_model, load_models
from geognn.targets import Target

TINY = {"hidden_channels": 8, "num_filters": 8, "num_layers": 1, "num_gaussians": 8}
TARGETS = [Target("energy", "eV", "sum"), Target("e_form", "eV/atom", "mean")]


def member(seed: int, targets=TARGETS) -> geognn.Model:
    torch.manual_seed(seed)
    return geognn.build_model("schnet", cutoff=4.0, targets=targets, stress=True, **TINY).double().eval()


def batch_of(crystals):
    return geognn.collate([geognn.build_graph(a, 4.0, dtype=torch.float64) for a in crystals])


def test_sigma_is_zero_for_identical_members_and_positive_otherwise():
    batch = batch_of(load_mp20_crystals(3))
    m = member(0)
    same = Ensemble([m, copy.deepcopy(m), copy.deepcopy(m)])
    out = same(batch)
    single = m(batch)
    for name in ("energy", "e_form"):
        assert torch.equal(out[name + "_std"], torch.zeros(3, dtype=torch.float64))
        torch.testing.assert_close(out[name], single[name], rtol=0, atol=1e-12)
    torch.testing.assert_close(out["forces"], single["forces"], rtol=0, atol=1e-12)

    members = [member(s) for s in (0, 1, 2)]
    out = Ensemble(members)(batch)
    for name in ("energy", "e_form"):
        values = torch.stack([mm(batch)[name] for mm in members]).detach().numpy()  # [3 members, 3 crystals]
        np.testing.assert_allclose(out[name].detach(), values.mean(0), rtol=1e-12)
        np.testing.assert_allclose(out[name + "_std"].detach(), values.std(0, ddof=1), rtol=1e-10)
        assert (out[name + "_std"] > 0).all()
    assert "energy_std" in out and out["energy_std"].shape == (3,)
    assert out["stress"].shape == (3, 3, 3)


def test_ensemble_checkpoint_round_trip_and_joining_checkpoints(tmp_path):
    batch = batch_of(load_mp20_crystals(2))
    ens = Ensemble([member(0), member(1)])
    ens.save(tmp_path / "ens.pt")
    payload = torch.load(tmp_path / "ens.pt", weights_only=True)
    assert len(payload["ensemble"]) == 2 and payload["metadata"]["ensemble"] == 2
    loaded = load_model(tmp_path / "ens.pt")
    assert isinstance(loaded, Ensemble) and loaded.targets == tuple(TARGETS)
    a, b = ens(batch), loaded(batch)
    for key in ("energy", "energy_std", "e_form", "e_form_std", "forces"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-12)
    # several checkpoints: one ensemble of all their members
    member(2).save(tmp_path / "c.pt")
    joined = load_models([tmp_path / "ens.pt", tmp_path / "c.pt"])
    assert isinstance(joined, Ensemble) and len(joined.members) == 3
    member(3, targets=[Target("e_form", "eV/atom", "mean")]).save(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: cannot join an ensemble with .*ens.pt.*same targets"):
        load_models([tmp_path / "ens.pt", tmp_path / "other.pt"])
    with pytest.raises(ValueError, match="at least 2 members"):
        Ensemble([member(0)])


def test_predict_with_several_checkpoints_gives_std_columns(tmp_path, capsys):
    from ase.build import bulk

    member(0).float().save(tmp_path / "a.pt")
    member(1).float().save(tmp_path / "b.pt")
    bulk("Cu", "fcc", a=3.6).write(tmp_path / "cu.vasp", format="vasp")

    def predict(*checkpoints):
        code = main(["predict", "--checkpoint", *map(str, checkpoints), str(tmp_path / "cu.vasp"), "--format", "csv"])
        out, err = capsys.readouterr()
        assert code == 0, err
        return list(csv.DictReader(io.StringIO(out)))[0], out.splitlines()[0]

    row, header = predict(tmp_path / "a.pt", tmp_path / "a.pt")
    assert header.startswith("file,formula,natoms,energy,energy_std,e_form,e_form_std,energy_per_atom,max_force")
    assert float(row["energy_std"]) == 0.0 and float(row["e_form_std"]) == 0.0
    row, _ = predict(tmp_path / "a.pt", tmp_path / "b.pt")
    assert float(row["energy_std"]) > 0 and float(row["e_form_std"]) > 0
    ea = float(predict(tmp_path / "a.pt")[0]["energy"])
    eb = float(predict(tmp_path / "b.pt")[0]["energy"])
    assert float(row["energy"]) == pytest.approx((ea + eb) / 2, rel=1e-6)
    assert float(row["energy_std"]) == pytest.approx(abs(ea - eb) / np.sqrt(2), rel=1e-5)  # ddof=1 of two values


def test_train_ensemble_into_one_checkpoint(tmp_path, capsys):
    from test_train import emt_structures, tiny_config

    from geognn.train.loop import train

    data = emt_structures(10)
    result = train(tiny_config(tmp_path, epochs=1, ensemble=2, seed=5), progress=False, dataset=data)
    out = tmp_path / "run"
    model = load_model(out / "model.pt")
    assert isinstance(model, Ensemble) and len(model.members) == 2 and model.metadata["seeds"] == [5, 6]
    assert (
        json.loads((out / "member_0" / "split.json").read_text())["ids"]
        == json.loads((out / "member_1" / "split.json").read_text())["ids"]
    )  # one split for all members
    for k in (0, 1):
        assert (out / f"member_{k}" / "model.pt").is_file()
    a, b = (member_.state_dict() for member_ in model.members)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # different seeds, different weights
    report = json.loads((out / "result.json").read_text())
    assert report["ensemble"] == 2 and set(report["calibration"]["energy"]) >= {
        "within_1sigma",
        "within_2sigma",
        "spearman_abs_error_sigma",
    }
    assert 0 <= report["calibration"]["energy"]["within_2sigma"] <= 1
    assert result.model_path == out / "model.pt" and np.isfinite(result.test_mae)


def test_train_ensemble_from_the_command_line(tmp_path, capsys):
    from test_train import _write_dataset

    root = _write_dataset("extxyz", tmp_path)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--dataset",
            "extxyz",
            "--data-root",
            str(root),
            "--ensemble",
            "2",
            "--epochs",
            "1",
            "--time-limit",
            "0",
            "--cutoff",
            "3",
            "--batch-size",
            "4",
            "--out",
            str(out),
            "--set",
            "backbone_kwargs={hidden_channels: 8, num_filters: 8, num_layers: 1, num_gaussians: 8}",
        ]
    )
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "ensemble member 2/2 (seed 1)" in stdout and "within 1 sigma" in stdout and "test MAE of energy" in stdout
    assert isinstance(load_model(out / "model.pt"), Ensemble)
    assert json.loads((out / "config.json").read_text())["ensemble"] == 2


def test_calculator_runs_an_ensemble_and_refuses_a_model_without_energy():
    from ase.build import bulk

    members = [member(0), member(1)]
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.02, seed=0)
    atoms.calc = geognn.GeoGNNCalculator(Ensemble(members))
    energies = []
    for m in members:
        a = atoms.copy()
        a.calc = geognn.GeoGNNCalculator(m)
        energies.append(a.get_potential_energy())
    assert atoms.get_potential_energy() == pytest.approx(np.mean(energies), abs=1e-10)
    with pytest.raises(ValueError, match="needs a model with an extensive energy target"):
        geognn.GeoGNNCalculator(member(0, targets=[Target("e_form", "eV/atom", "mean")]))
