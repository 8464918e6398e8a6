"""Training with targets: CGCNN folders of real MP-20 crystals, several labels, readouts chosen and
printed, reference fits that follow the readout, bad input, and ``--split FILE``."""

from __future__ import annotations

import csv
import io
import json
import warnings

import numpy as np
import pytest
import torch
from conftest import shared_data_dir

import geognn
from geognn.cli import main
from geognn.datasets import cif_table_to_folder, load_split_by_ids, open_dataset, write_split
from geognn.targets import Target
from geognn.train.config import TrainConfig
from geognn.train.data import StructureList, resolve_targets
from geognn.train.loop import fit_output, train

TINY = "backbone_kwargs={hidden_channels: 8, num_filters: 8, num_layers: 1, num_gaussians: 8}"
FAST = ["--epochs", "1", "--time-limit", "0", "--cutoff", "4", "--batch-size", "8", "--threads", "1", "--set", TINY]


@pytest.fixture(scope="module")
def mp20_folder(tmp_path_factory):
    """16 real MP-20 crystals as a CGCNN folder with a header: id,e_form,band_gap."""
    root = tmp_path_factory.mktemp("mp20") / "data"
    return cif_table_to_folder(
        shared_data_dir() / "cif" / "mp20_subset" / "train.csv",
        root,
        columns={"formation_energy_per_atom": "e_form", "band_gap": "band_gap"},
        limit=16,
    )


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- end to end
def test_cif_folder_mean_readout_end_to_end(mp20_folder, tmp_path, capsys):
    """geognn train on a CGCNN folder of MP-20 CIFs with --readout mean, then predict its CSV."""
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "cif-folder",
        "--data-root",
        mp20_folder,
        "--target",
        "e_form",
        "--unit",
        "eV/atom",
        "--readout",
        "mean",
        "--out",
        out,
        *FAST,
    )
    assert code == 0, err
    assert "targets: e_form (eV/atom, readout mean: intensive)" in stdout
    assert "test MAE of e_form" in stdout and "eV/atom" in stdout
    model = geognn.load_model(out / "model.pt")
    assert model.targets == (Target("e_form", "eV/atom", "mean"),) and model.energy_target is None
    assert model.metadata["periodic"] is True
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert np.isfinite(float(rows[0]["val_e_form_mae_eV_atom"]))
    result = json.loads((out / "result.json").read_text())
    assert result["targets"] == [{"name": "e_form", "unit": "eV/atom", "readout": "mean"}]
    # the baseline of a mean target is the fit on element fractions: its MAE is that of a by-hand lstsq
    split = json.loads((out / "split.json").read_text())
    ds = open_dataset("cif-folder", mp20_folder, target="e_form")
    elements = sorted({int(z) for i in range(len(ds)) for z in ds[i].numbers})
    frac = np.array([[np.mean(ds[i].numbers == e) for e in elements] for i in range(len(ds))])
    y = np.array([ds[i].info["e_form"] for i in range(len(ds))])
    coef = np.linalg.lstsq(frac[split["train"]], y[split["train"]], rcond=None)[0]
    by_hand = np.abs(frac[split["test"]] @ coef - y[split["test"]]).mean()
    assert result["baseline_test_mae"] == pytest.approx(by_hand, rel=1e-4)  # float32 model: ~1e-6 eV/atom
    # predict: one column named exactly after the target, no energy/forces/stress columns
    cif = mp20_folder / f"{ds.ids[0]}.cif"
    code, stdout, err = run_cli(capsys, "predict", "--checkpoint", out / "model.pt", "--format", "csv", cif)
    assert code == 0, err
    assert stdout.splitlines()[0] == "file,formula,natoms,e_form"


def test_header_columns_are_several_targets_with_their_own_units_and_readouts(mp20_folder, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "cif-folder",
        "--data-root",
        mp20_folder,
        "--unit",
        "eV/atom",
        "--unit",
        "eV",
        "--out",
        out,
        *FAST,
    )
    assert code == 0, err
    # defaults: per-atom unit -> mean; a band gap in eV is intensive too (its name says so)
    assert "e_form (eV/atom, readout mean: intensive), band_gap (eV, readout mean: intensive)" in stdout
    assert "test MAE of e_form" in stdout and "test MAE of band_gap" in stdout
    model = geognn.load_model(out / "model.pt")
    assert [t.name for t in model.targets] == ["e_form", "band_gap"]
    row = next(csv.DictReader((out / "metrics.csv").open()))
    assert {"val_e_form_mae_eV_atom", "val_band_gap_mae_meV"} <= set(row)
    result = json.loads((out / "result.json").read_text())
    assert set(result["per_target"]) == {"e_form", "band_gap"}
    # predict: both columns; units in the table header and in JSON
    cif = next(mp20_folder.glob("*.cif"))
    code, stdout, err = run_cli(capsys, "predict", "--checkpoint", out / "model.pt", cif)
    assert stdout.splitlines()[0].split() == ["file", "formula", "natoms", "e_form", "(eV/atom)", "band_gap", "(eV)"]
    code, stdout, err = run_cli(capsys, "predict", "--checkpoint", out / "model.pt", "--format", "json", cif)
    payload = json.loads(stdout)
    assert payload["units"] == {"e_form": "eV/atom", "band_gap": "eV"}
    assert set(payload["predictions"][0]) == {"file", "formula", "natoms", "e_form", "band_gap"}


def test_predict_columns_of_a_model_with_energy_and_an_intensive_target(tmp_path, capsys):
    from ase.build import bulk

    model = geognn.build_model(
        "schnet",
        cutoff=4.0,
        hidden_channels=8,
        num_filters=8,
        num_layers=1,
        num_gaussians=8,
        targets=[Target("energy", "eV", "sum"), Target("gap", "eV", "mean")],
    )
    model.save(tmp_path / "m.pt")
    bulk("Si", "diamond", a=5.43).write(tmp_path / "si.vasp", format="vasp")
    code, stdout, err = run_cli(
        capsys, "predict", "--checkpoint", tmp_path / "m.pt", "--format", "csv", tmp_path / "si.vasp"
    )
    assert code == 0, err
    header = stdout.splitlines()[0].split(",")
    assert header == [
        "file",
        "formula",
        "natoms",
        "energy",
        "gap",
        "energy_per_atom",
        "max_force",
        "stress_xx",
        "stress_yy",
        "stress_zz",
        "stress_yz",
        "stress_xz",
        "stress_xy",
    ]
    row = next(csv.DictReader(io.StringIO(stdout)))
    assert float(row["energy_per_atom"]) == pytest.approx(float(row["energy"]) / 2)


# --------------------------------------------------------------------------- readout choice, reference fit
def test_resolve_targets_default_readouts_and_per_atom_sum_warns():
    data = StructureList([], {"energy": "eV"})
    (t,) = resolve_targets(TrainConfig(dataset="extxyz"), data)
    assert t == Target("energy", "eV", "sum")  # a total energy: extensive
    data = StructureList([], {"e_form": "eV/atom", "tc": "K"})
    a, b = resolve_targets(TrainConfig(dataset="cif-folder", target=["e_form", "tc"]), data)
    assert (a.readout, b.readout) == ("mean", "mean")
    with pytest.warns(UserWarning, match="'e_form' is in eV/atom .* readout is 'sum'"):
        (t,) = resolve_targets(TrainConfig(dataset="cif-folder", target="e_form", readout="sum"), data)
    assert t.readout == "sum"
    with pytest.raises(ValueError, match="one readout for all targets or one per target"):
        TrainConfig(dataset="cif-folder", target=["a", "b", "c"], readout=["sum", "mean"]).validate()


def test_per_atom_unit_with_sum_readout_warns_on_the_command_line(mp20_folder, tmp_path, capsys):
    code, stdout, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "cif-folder",
        "--data-root",
        mp20_folder,
        "--target",
        "e_form",
        "--unit",
        "eV/atom",
        "--readout",
        "sum",
        "--out",
        tmp_path / "r",
        "--limit",
        "8",
        *FAST,
    )
    assert code == 0, err
    assert "warning: target 'e_form' is in eV/atom (a per-atom quantity) but its readout is 'sum'" in err
    assert "readout sum: extensive" in stdout


def test_fit_output_follows_the_readout():
    """Reference values by lstsq on fractions (mean) or counts (sum); scale/shift = std/mean of the
    residual per structure (mean) or per atom (sum)."""
    rng = np.random.default_rng(1)
    zs = [rng.choice([8, 12, 26], size=rng.integers(2, 9)) for _ in range(20)]
    counts = np.array([[np.sum(z == e) for e in (8, 12, 26)] for z in zs], dtype=float)
    natoms = counts.sum(1)
    frac = counts / natoms[:, None]
    y = np.stack(
        [frac @ [-1.0, 0.5, 2.0] + 0.1 * rng.normal(size=20), counts @ [-3.0, -1.5, -8.0] + 0.2 * rng.normal(size=20)],
        axis=1,
    )
    model = geognn.build_model(
        "schnet",
        hidden_channels=8,
        num_layers=1,
        targets=[Target("e_form", "eV/atom", "mean"), Target("energy", "eV", "sum")],
    ).double()
    fit_output(model, [torch.as_tensor(z) for z in zs], torch.as_tensor(y), TrainConfig())
    for k, (name, design, norm) in enumerate([("e_form", frac, np.ones(20)), ("energy", counts, natoms)]):
        coef = np.linalg.lstsq(design, y[:, k], rcond=None)[0]
        head = model.heads[name]
        np.testing.assert_allclose([float(head.reference.energies[e]) for e in (8, 12, 26)], coef, rtol=1e-8)
        residual = (y[:, k] - design @ coef) / norm
        assert float(head.scale) == pytest.approx(residual.std(ddof=1), rel=1e-8)
        assert float(head.shift) == pytest.approx(residual.mean(), abs=1e-10)


# --------------------------------------------------------------------------- bad input
def test_a_target_the_data_lacks_is_an_error_listing_its_labels(mp20_folder, tmp_path, capsys):
    code, stdout, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "cif-folder",
        "--data-root",
        mp20_folder,
        "--target",
        "bandgap",
        "--out",
        tmp_path / "r",
        *FAST,
    )
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "has no label 'bandgap'; its labels are e_form, band_gap" in err
    from ase.build import bulk
    from ase.io import write

    atoms = bulk("Cu")
    atoms.info.update(energy=-3.5, gap=0.0)
    write(tmp_path / "x.extxyz", [atoms, atoms])
    with pytest.raises(ValueError, match="has no label 'e_form'; its labels are energy, gap"):
        open_dataset("extxyz", tmp_path / "x.extxyz", target="e_form")
    no_header = tmp_path / "plain"
    no_header.mkdir()
    (no_header / "id_prop.csv").write_text("a,1.0\n")
    with pytest.raises(ValueError, match="has no header row, so it holds one label"):
        open_dataset("cif-folder", no_header, target=["e_form", "band_gap"])


def test_nan_or_missing_label_is_a_bad_item_named_by_id(mp20_folder, tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(mp20_folder, root)
    lines = (root / "id_prop.csv").read_text().splitlines()
    bad_nan, bad_empty = lines[3].split(",")[0], lines[6].split(",")[0]
    lines[3] = f"{bad_nan},nan,0.0"
    lines[6] = f"{bad_empty},-1.0,"
    (root / "id_prop.csv").write_text("\n".join(lines) + "\n")
    code, stdout, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "cif-folder",
        "--data-root",
        root,
        "--unit",
        "eV/atom",
        "--out",
        tmp_path / "r",
        *FAST,
    )
    assert code == 2 and bad_nan in err and "'e_form'" in err and "not a finite number" in err
    code, stdout, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "cif-folder",
        "--data-root",
        root,
        "--unit",
        "eV/atom",
        "--on-error",
        "skip",
        "--out",
        tmp_path / "s",
        *FAST,
    )
    assert code == 0, err
    skipped = list(csv.DictReader((tmp_path / "s" / "skipped.csv").open()))
    assert {r["id"] for r in skipped} == {bad_nan, bad_empty}
    assert any("column 'band_gap'" in r["reason"] and "missing label" in r["reason"] for r in skipped)


def test_nan_label_in_memory_data_is_reported_by_id(tmp_path):
    from test_train import emt_structures, tiny_config

    data = emt_structures(8)
    data.structures[5].info["energy"] = float("nan")
    with pytest.raises(geognn.StructureError, match="cu-5.*no finite 'energy' label"):
        train(tiny_config(tmp_path, epochs=1), progress=False, dataset=data)


# --------------------------------------------------------------------------- --split FILE
def test_split_file_by_ids(mp20_folder, tmp_path, capsys):
    first = tmp_path / "a"
    assert (
        run_cli(
            capsys,
            "train",
            "--dataset",
            "cif-folder",
            "--data-root",
            mp20_folder,
            "--target",
            "e_form",
            "--unit",
            "eV/atom",
            "--seed",
            "3",
            "--out",
            first,
            *FAST,
        )[0]
        == 0
    )
    ds = open_dataset("cif-folder", mp20_folder, target="e_form")
    a = load_split_by_ids(first / "split.json", ds.ids)
    # another seed, same split file: the same structures in each part
    second = tmp_path / "b"
    code, stdout, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "cif-folder",
        "--data-root",
        mp20_folder,
        "--target",
        "e_form",
        "--unit",
        "eV/atom",
        "--seed",
        "7",
        "--split",
        first / "split.json",
        "--out",
        second,
        *FAST,
    )
    assert code == 0, err
    assert load_split_by_ids(second / "split.json", ds.ids) == a
    assert json.loads((second / "config.json").read_text())["split_file"] == str(first / "split.json")
    # a split written with write_split for the ids in another order still selects by id
    reordered = list(reversed(ds.ids))
    own = {name: [reordered.index(ds.ids[i]) for i in a[name]] for name in ("train", "val", "test")}
    write_split(tmp_path / "own.json", own, ids=reordered)
    assert load_split_by_ids(tmp_path / "own.json", ds.ids) == a
    # ids that are not in the data are an error naming them
    payload = json.loads((first / "split.json").read_text())
    payload["ids"]["test"][0] = "mp-000000"
    (tmp_path / "bad.json").write_text(json.dumps(payload))
    code, stdout, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "cif-folder",
        "--data-root",
        mp20_folder,
        "--target",
        "e_form",
        "--split",
        tmp_path / "bad.json",
        "--out",
        tmp_path / "c",
        *FAST,
    )
    assert code == 2 and "1 id(s) of the split are not in the data: mp-000000" in err and err.count("\n") == 1


def test_old_plain_split_json_is_read_by_index(tmp_path):
    (tmp_path / "split.json").write_text(json.dumps({"train": [0, 1, 2], "val": [3], "test": [4]}))
    ids = [f"s{i}" for i in range(5)]
    assert load_split_by_ids(tmp_path / "split.json", ids) == {"train": [0, 1, 2], "val": [3], "test": [4]}
    with pytest.raises(ValueError, match="outside"):
        load_split_by_ids(tmp_path / "split.json", ids[:4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on the good path
        load_split_by_ids(tmp_path / "split.json", ids)


def test_fit_output_scale_when_composition_interpolates_the_labels():
    """As many elements as structures: the fit is exact and the residual is round-off; the scale
    falls back to the labels' spread instead of ~1e-16 (which would blow the loss up)."""
    zs = [torch.tensor([8, 12]), torch.tensor([8, 26, 26]), torch.tensor([12, 12, 26, 8])]
    y = torch.tensor([[-1.0], [0.5], [-2.0]], dtype=torch.float64)
    model = geognn.build_model(
        "schnet", hidden_channels=8, num_layers=1, targets=[Target("e_form", "eV/atom", "mean")]
    ).double()
    fit_output(model, zs, y, TrainConfig())
    assert float(model.heads["e_form"].scale) == pytest.approx(float(y.std()), rel=1e-10)
