"""``geognn predict``: formats, folders, mixed good and broken files, domain notes."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.io import write
from conftest import shared_data_dir

import geognn
from geognn.cli import CRYSTAL_CHECKPOINT, DEFAULT_CHECKPOINT, main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = geognn.build_model(
        "schnet",
        cutoff=4.0,
        hidden_channels=16,
        num_filters=16,
        num_layers=2,
        num_gaussians=12,
        metadata={"trained_on": "test molecules", "periodic": False, "elements": [1, 6, 8]},
    )
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    model.save(path)
    return path


@pytest.fixture
def mixed_folder(tmp_path):
    """Good files of every supported kind plus broken ones, in nested folders."""
    root = tmp_path / "inputs"
    (root / "nested" / "deeper").mkdir(parents=True)
    shutil.copy(shared_data_dir() / "cif" / "cgcnn_sample_cod" / "1000041.cif", root / "NaCl.cif")
    shutil.copy(shared_data_dir() / "cif" / "jarvis_alignn_sample" / "POSCAR-JVASP-1372.vasp", root / "nested")
    write(root / "nested" / "water.xyz", molecule("H2O"))
    write(root / "nested" / "deeper" / "frames.extxyz", [molecule("CH4"), molecule("C2H6")])
    write(root / "nested" / "deeper" / "si.traj", bulk("Si", "diamond", a=5.43))
    (root / "broken.cif").write_text("data_broken\n_cell_length_a 5\nthis is not a cif\n")
    overlapping = molecule("H2O")
    overlapping.positions[1] = overlapping.positions[0] + [0.01, 0, 0]
    write(root / "nested" / "overlap.xyz", overlapping)
    (root / "empty.xyz").write_text("")
    return root


def run(capsys, *args):
    code = main(["predict", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_mixed_folder_predicts_good_files_and_reports_broken_ones(checkpoint, mixed_folder, capsys):
    code, out, err = run(capsys, "--checkpoint", checkpoint, "--format", "csv", mixed_folder)
    assert code == 1  # some inputs failed
    rows = list(csv.DictReader(io.StringIO(out)))
    files = sorted(r["file"].split("inputs/")[1] for r in rows)
    assert files == [
        "NaCl.cif",
        "nested/POSCAR-JVASP-1372.vasp",
        "nested/deeper/frames.extxyz@0",
        "nested/deeper/frames.extxyz@1",
        "nested/deeper/si.traj",
        "nested/water.xyz",
    ]
    nacl = next(r for r in rows if r["file"].endswith("NaCl.cif"))
    assert nacl["formula"] == "Cl4Na4" and nacl["natoms"] == "8"  # symmetry-expanded conventional cell
    assert nacl["stress_xx"] != ""
    water = next(r for r in rows if r["file"].endswith("water.xyz"))
    assert water["stress_xx"] == ""  # no stress for molecules
    assert float(water["energy_per_atom"]) == pytest.approx(float(water["energy"]) / 3)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 3
    assert any("broken.cif" in e and "CIF" in e for e in errors)
    assert any("overlap.xyz" in e and "overlapping atoms" in e for e in errors)
    assert any("empty.xyz" in e and "empty" in e for e in errors)
    assert "Traceback" not in err
    assert "3 input(s) failed, 6 structure(s) predicted" in err
    # trained on molecules, given crystals: predictions run but the user is told
    assert "trained on molecules" in err and "periodic structures" in err
    assert "never seen in training" in err and "Na" in err


def test_values_match_the_python_api(checkpoint, tmp_path, capsys):
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=0)
    write(tmp_path / "si.vasp", atoms, format="vasp")
    code, out, err = run(capsys, "--checkpoint", checkpoint, "--format", "json", tmp_path / "si.vasp")
    assert code == 0
    payload = json.loads(out)
    (row,) = payload["predictions"]
    assert payload["units"] == {"energy": "eV", "energy_per_atom": "eV/atom", "max_force": "eV/Å", "stress": "GPa"}
    model = geognn.load_model(checkpoint)
    batch = geognn.collate([geognn.build_graph(geognn.read_structures(tmp_path / "si.vasp")[0], 4.0)])
    expected = model(batch, stress=True)
    assert row["energy"] == pytest.approx(float(expected["energy"][0].detach()), rel=1e-6)
    assert row["max_force"] == pytest.approx(float(expected["forces"].norm(dim=1).max()), rel=1e-5)
    s = expected["stress"][0].detach().numpy() * 160.2176634
    np.testing.assert_allclose(
        row["stress"], [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]], rtol=1e-5, atol=1e-6
    )


def test_table_and_output_file(checkpoint, tmp_path, capsys):
    write(tmp_path / "w.xyz", molecule("H2O"))
    code, out, err = run(capsys, "--checkpoint", checkpoint, tmp_path / "w.xyz")
    assert code == 0 and out.splitlines()[0].startswith("file") and "H2O" in out
    code, out, err = run(
        capsys, "--checkpoint", checkpoint, "--output", tmp_path / "p.csv", "--format", "csv", tmp_path / "w.xyz"
    )
    assert code == 0 and out == "" and "wrote 1 prediction(s)" in err
    assert (
        (tmp_path / "p.csv")
        .read_text()
        .startswith(
            "file,formula,natoms,energy,energy_per_atom,max_force,"
            "stress_xx,stress_yy,stress_zz,stress_yz,stress_xz,stress_xy\n"
        )
    )


def test_missing_inputs_and_bad_checkpoint(checkpoint, tmp_path, capsys):
    code, out, err = run(capsys, "--checkpoint", checkpoint, tmp_path / "nope.cif")
    assert code == 1 and "nope.cif: no such file or folder" in err
    (tmp_path / "bad.pt").write_text("junk")
    code, out, err = run(capsys, "--checkpoint", tmp_path / "bad.pt", tmp_path)
    assert code == 2 and err.startswith("error: ") and "bad.pt" in err and "Traceback" not in err


def test_shipped_default_checkpoints_pick_by_input(tmp_path, capsys):
    """No --checkpoint: crystals are answered by the shipped MP-20 crystal model (which names
    itself and its test MAE), molecules by the QM9 model; a mix is an error asking for two calls."""
    assert DEFAULT_CHECKPOINT.is_file() and CRYSTAL_CHECKPOINT.is_file()
    cif = shared_data_dir() / "cif" / "mp_computed_examples" / "BaTiO3_mp-2998_computed.cif"
    code, out, err = run(capsys, cif)
    assert code == 0 and "shipped crystal model" in err and "MP-20" in err and "test MAE" in err
    assert "formation_energy_per_atom" in out and "BaO3Ti" in out and "trained on molecules" not in err
    write(tmp_path / "w.xyz", molecule("H2O"))
    code, out, err = run(capsys, tmp_path / "w.xyz")
    assert code == 0 and "shipped molecule model" in err and "QM9" in err and "energy (eV)" in out
    code, out, err = run(capsys, cif, tmp_path / "w.xyz")
    assert code == 2 and "mix molecules and periodic structures" in err


def test_predict_without_checkpoint_reads_each_file_once(tmp_path, capsys, monkeypatch):
    """Choosing the shipped model and predicting share one read of the inputs (a folder of many
    files is parsed once); a file that cannot be read is reported once too."""
    from geognn import io as geognn_io

    write(tmp_path / "w.xyz", molecule("H2O"))
    write(tmp_path / "m.xyz", molecule("CH4"))
    (tmp_path / "bad.xyz").write_text("not an xyz file\n")
    reads = []
    real_read_file = geognn_io.read_file

    def counting_read_file(path, *args, **kwargs):
        reads.append(Path(path).name)
        return real_read_file(path, *args, **kwargs)

    monkeypatch.setattr(geognn_io, "read_file", counting_read_file)
    code, out, err = run(capsys, "--format", "csv", tmp_path)
    assert sorted(reads) == ["bad.xyz", "m.xyz", "w.xyz"]
    assert code == 1 and "shipped molecule model" in err and "H2O" in out and "CH4" in out
    assert err.count("bad.xyz") == 1 and "1 input(s) failed, 2 structure(s) predicted" in err


def test_element_beyond_the_embedding_is_reported_not_raised(checkpoint, tmp_path, capsys):
    from ase import Atoms

    write(tmp_path / "rf.xyz", Atoms("RfH", positions=[[0, 0, 0], [0, 0, 1.6]]))
    write(tmp_path / "w.xyz", molecule("H2O"))
    code, out, err = run(capsys, "--checkpoint", checkpoint, tmp_path)
    assert code == 1 and "H2O" in out
    assert "rf.xyz: element Z=104 is beyond what this model can embed (max_z=100)" in err
    assert "Traceback" not in err


def test_partial_occupancy_is_rejected_unless_allowed(checkpoint, capsys):
    from conftest import TEST_DATA

    cif = TEST_DATA / "partial_occupancy.cif"
    code, out, err = run(capsys, "--checkpoint", checkpoint, cif)
    assert code == 1 and "partial occupancies on 2 site(s)" in err and "--allow-partial-occupancy" in err
    code, out, err = run(capsys, "--checkpoint", checkpoint, "--allow-partial-occupancy", "--format", "csv", cif)
    assert code == 0 and "Cl4Na4" in out
    assert "warning:" in err and "replaced by their majority species" in err
