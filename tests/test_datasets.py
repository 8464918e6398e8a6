"""geognn.datasets: QM9 (xyz, tarball, qm9pack CSV, ASE db, cache), user folders (CIF + id_prop.csv,
extxyz, ASE db), open_dataset's errors and the splits, on the real files of ../shared/data."""

from __future__ import annotations

import os
import shutil
import tarfile

import ase.db
import ase.io
import ase.units
import numpy as np
import pandas as pd
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import shared_data_dir

from geognn.conventions import HARTREE_TO_EV, KCAL_PER_MOL_TO_EV
from geognn.datasets import (
    DATASETS,
    QM9_TARGETS,
    open_dataset,
    qm9_standard_split,
    random_split,
    read_split,
    write_split,
)
from geognn.datasets.qm9 import QM9_ATOMREF_HARTREE, load_qm9
from geognn.io import StructureError

HARTREE_2018 = ase.units.create_units("2018")["Hartree"]


def qm9_dir():
    return shared_data_dir() / "qm9"


def copy_xyz(tmp_path, ids=None):
    """The 20 real QM9 xyz files (or those of ``ids``) copied into tmp_path/xyz."""
    out = tmp_path / "xyz"
    out.mkdir()
    for f in sorted((qm9_dir() / "raw_xyz_crescendo").glob("dsgdb9nsd_*.xyz")):
        if ids is None or int(f.stem.split("_")[1]) in ids:
            shutil.copy(f, out / f.name)
    return out


def write_uncharacterized(path, ids):
    """A stand-in for QM9's uncharacterized.txt (the real list is not in shared data):
    header lines, then one line per molecule starting with its index."""
    lines = [" Molecules which failed the geometry consistency check", "", "   Index    SMILES"]
    lines += [f"  {i}   C  C  0.1" for i in ids]
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- QM9
def test_hartree_constant_is_codata_2018():
    # CODATA 2014 (ase.units' default) differs from 2018 by 8e-9 relative: compare tighter than that
    assert HARTREE_TO_EV == pytest.approx(HARTREE_2018, rel=1e-11)
    assert HARTREE_TO_EV != pytest.approx(ase.units.create_units("2014")["Hartree"], rel=1e-9)
    assert KCAL_PER_MOL_TO_EV == pytest.approx(ase.units.kcal / ase.units.mol, rel=1e-6)


def test_qm9_xyz_values_read_by_hand(tmp_path):
    ds = open_dataset("qm9", qm9_dir() / "raw_xyz_crescendo", keep_uncharacterized=True, cache_dir=tmp_path)
    assert len(ds) == 20 and ds.ids[:3] == ["1", "2", "3"] and "5003" in ds.ids
    m = ds[ds.ids.index("5005")]
    assert m.info["id"] == "5005" and m.get_chemical_formula() == "C4H5N3O"
    # line 2 of dsgdb9nsd_005005.xyz: A B C mu alpha homo lumo gap r2 zpve U0 U H G Cv
    assert m.info["A"] == 3.48829 and m.info["mu"] == 0.9873 and m.info["alpha"] == 65.2
    assert m.info["r2"] == 805.6183 and m.info["Cv"] == 24.892
    assert m.info["U0"] == pytest.approx(-394.852834 * HARTREE_2018, rel=1e-11)
    assert m.info["gap"] == pytest.approx(0.1766 * HARTREE_2018, rel=1e-11)
    assert m.info["energy"] == m.info["U0"]  # default target
    # atom 7 (O) has the Mathematica exponent '7.9254*^-6'
    assert m.positions[7].tolist() == [2.3311980497, -0.0609497085, 7.9254e-6]
    assert m.numbers[7] == 8 and not m.pbc.any()
    # U0_atom = U0 - atom references of 4 C, 5 H, 3 N, 1 O
    refs = QM9_ATOMREF_HARTREE["U0"]
    expected = (-394.852834 - 4 * refs[6] - 5 * refs[1] - 3 * refs[7] - refs[8]) * HARTREE_2018
    assert m.info["U0_atom"] == pytest.approx(expected, rel=1e-10)
    assert set(QM9_TARGETS) <= set(m.info) and len(QM9_TARGETS) == 19


def test_qm9_atom_references_match_schnetpack_db_metadata():
    meta = ase.db.connect(qm9_dir() / "schnetpack_test_qm9.db").metadata["atomrefs"]
    names = {"U0": "energy_U0", "U": "energy_U", "H": "enthalpy_H", "G": "free_energy"}
    for ours, theirs in names.items():
        for z, value in QM9_ATOMREF_HARTREE[ours].items():
            assert value == pytest.approx(meta[theirs][z], abs=1e-9)


def test_qm9_three_layouts_agree(tmp_path):
    """ASE db (schnetpack, ids 1-20), xyz files (ids 1-10) and qm9pack CSV (id 1) give the same molecules."""
    db = open_dataset("qm9", qm9_dir() / "schnetpack_test_qm9.db", cache_dir=tmp_path, target="U0_atom")
    xyz = open_dataset("qm9", qm9_dir() / "raw_xyz_crescendo", keep_uncharacterized=True, cache_dir=tmp_path)
    csv = open_dataset("qm9", qm9_dir() / "qm9pack_subset_stride26.csv", cache_dir=tmp_path, limit=3)
    assert db.ids == [str(i) for i in range(1, 21)] and csv.ids == ["1", "27", "53"]
    assert db.targets["energy"] == "eV" and db[0].info["energy"] == db[0].info["U0_atom"]
    for k in range(10):
        a, b = db[k], xyz[k]
        assert a.info["qm9_id"] == b.info["qm9_id"]
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-8)
        assert (a.numbers == b.numbers).all()
        for name in QM9_TARGETS:
            assert a.info[name] == pytest.approx(b.info[name], rel=1e-7, abs=1e-6), name
    c = csv[0]
    for name in QM9_TARGETS:
        assert c.info[name] == pytest.approx(xyz[0].info[name], rel=1e-12), name
    # the CSV row of id 27 against the file read by pandas, independently
    row = pd.read_csv(qm9_dir() / "qm9pack_subset_stride26.csv", nrows=2).iloc[1]
    assert csv[1].info["homo"] == pytest.approx(row["HOMO_au"] * HARTREE_2018, rel=1e-8)
    assert csv[1].get_chemical_symbols() == ["O", "C", "C", "N", "H"]


def test_qm9_energy_unit_and_bad_target(tmp_path):
    ds = open_dataset(
        "qm9", qm9_dir() / "schnetpack_test_qm9.db", cache_dir=tmp_path, energy_unit="Hartree", target="gap"
    )
    assert ds.targets["U0"] == "Hartree" and ds.targets["mu"] == "D" and ds.targets["energy"] == "Hartree"
    assert ds[0].info["U0"] == pytest.approx(-40.47893, rel=1e-12)
    assert ds[0].info["energy"] == pytest.approx(0.5048, rel=1e-12)
    with pytest.raises(ValueError, match="U0_atom"):
        open_dataset("qm9", qm9_dir() / "schnetpack_test_qm9.db", target="energy_U0")
    with pytest.raises(ValueError, match="Hartree"):
        open_dataset("qm9", qm9_dir() / "schnetpack_test_qm9.db", energy_unit="Rydberg", cache_dir=tmp_path)


def test_qm9_uncharacterised_excluded_by_default(tmp_path):
    folder = copy_xyz(tmp_path)
    with pytest.raises(StructureError, match="keep_uncharacterized=True"):
        open_dataset("qm9", folder, cache_dir=tmp_path)
    write_uncharacterized(folder / "uncharacterized.txt", [5003])  # found next to the files
    ds = open_dataset("qm9", folder, cache_dir=tmp_path)
    assert len(ds) == 19 and "5003" not in ds.ids and ds.excluded == 1
    kept = open_dataset("qm9", folder, cache_dir=tmp_path, keep_uncharacterized=True)
    assert len(kept) == 20 and "5003" in kept.ids
    other = write_uncharacterized(tmp_path / "list.txt", [1, 2])  # an explicit list wins
    assert open_dataset("qm9", folder, cache_dir=tmp_path, uncharacterized=other).ids[:2] == ["3", "4"]


def test_qm9_tarball(tmp_path):
    tar_path = tmp_path / "dsgdb9nsd.xyz.tar.bz2"
    with tarfile.open(tar_path, "w:bz2") as tar:
        for f in sorted((qm9_dir() / "raw_xyz_crescendo").glob("*.xyz")):
            tar.add(f, arcname=f.name)
    write_uncharacterized(tmp_path / "uncharacterized.txt", [5003])
    ds = open_dataset("qm9", tar_path, cache_dir=tmp_path / "cache")
    folder = open_dataset("qm9", qm9_dir() / "raw_xyz_crescendo", keep_uncharacterized=True, cache_dir=tmp_path)
    assert len(ds) == 19
    m = ds[ds.ids.index("5005")]
    ref = folder[folder.ids.index("5005")]
    assert m.positions.tolist() == ref.positions.tolist() and m.info["U0"] == ref.info["U0"]


def test_qm9_folder_of_qm9pack_parts(tmp_path):
    lines = (qm9_dir() / "qm9pack_subset_stride26.csv").read_text().splitlines(keepends=True)[:11]
    parts = tmp_path / "qm9pack"
    parts.mkdir()
    (parts / "qm9_part1.csv").write_text("".join(lines[:6]))
    (parts / "qm9_part2.csv").write_text(lines[0] + "".join(lines[6:]))
    ds = open_dataset("qm9", parts, cache_dir=tmp_path, limit=8)
    whole = open_dataset("qm9", qm9_dir() / "qm9pack_subset_stride26.csv", cache_dir=tmp_path, limit=8)
    assert ds.ids == whole.ids and ds.ids[:3] == ["1", "27", "53"]
    assert ds[7].info == {**whole[7].info} and ds[7].positions.tolist() == whole[7].positions.tolist()


def test_qm9_bad_file_in_the_middle_raise_or_skip(tmp_path):
    folder = copy_xyz(tmp_path)
    good = (folder / "dsgdb9nsd_000006.xyz").read_text()
    (folder / "dsgdb9nsd_000006.xyz").write_text("\n".join(good.splitlines()[:4]))  # truncated: 3 of 6 atoms
    with pytest.raises(StructureError, match=r"QM9 id 6\).*dsgdb9nsd_000006.xyz.*4 atoms announced, 2 found"):
        open_dataset("qm9", folder, cache_dir=tmp_path, keep_uncharacterized=True)
    with pytest.warns(UserWarning, match="skipped 1 bad"):
        ds = open_dataset("qm9", folder, cache_dir=tmp_path, keep_uncharacterized=True, on_error="skip")
    assert len(ds) == 19 and "6" not in ds.ids and ds.skipped[0][0] == "6"


def test_qm9_cache_hit_and_reprocess_on_change(tmp_path):
    folder = copy_xyz(tmp_path, ids={1, 2, 3})
    cache_dir = tmp_path / "cache"
    first = open_dataset("qm9", folder, cache_dir=cache_dir, keep_uncharacterized=True)
    assert not first.from_cache and first.cache_path.is_file()
    payload = torch.load(first.cache_path, weights_only=True)  # plain tensors, no code
    assert payload["z"].tolist()[:5] == [6, 1, 1, 1, 1]
    second = open_dataset("qm9", folder, cache_dir=cache_dir, keep_uncharacterized=True)
    assert second.from_cache and second.cache_path == first.cache_path
    assert second[2].positions.tolist() == first[2].positions.tolist()
    assert second[2].info == first[2].info
    # change a source file: new fingerprint, reprocessed, the new value is read
    f = folder / "dsgdb9nsd_000002.xyz"
    f.write_text(f.read_text().replace("-56.525887", "-56.525888"))
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    third = open_dataset("qm9", folder, cache_dir=cache_dir, keep_uncharacterized=True)
    assert not third.from_cache and third.cache_path != first.cache_path
    assert third[1].info["U0"] == pytest.approx(-56.525888 * HARTREE_2018, rel=1e-10)
    # a corrupt cache file is ignored and rewritten
    third.cache_path.write_bytes(b"not a torch file")
    assert not open_dataset("qm9", folder, cache_dir=cache_dir, keep_uncharacterized=True).from_cache


def test_load_qm9_kept_for_old_callers():
    mols = load_qm9(qm9_dir() / "qm9pack_subset_stride26.csv", 2)
    assert [m.info["qm9_id"] for m in mols] == [1, 27]


# --------------------------------------------------------------------------- open_dataset
def test_open_dataset_errors(tmp_path):
    db = qm9_dir() / "schnetpack_test_qm9.db"
    with pytest.raises(ValueError, match="oc20-is2re"):
        open_dataset("qm10", db)
    with pytest.raises(ValueError, match="skip"):
        open_dataset("qm9", db, on_error="ignore")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_dataset("qm9", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="energy_unit"):
        open_dataset("extxyz", db, energy_units="eV")
    with pytest.raises(ValueError, match="limit"):
        open_dataset("qm9", db, limit=-1)
    assert set(DATASETS) == {"qm9", "oc20-is2re", "oc20-s2ef", "cif-folder", "extxyz", "ase-db"}


# --------------------------------------------------------------------------- cif-folder
def test_cif_folder_real_cgcnn_layout():
    from pymatgen.core import Structure

    root = shared_data_dir() / "cif" / "cgcnn_sample_cod"
    ds = open_dataset("cif-folder", root)
    table = pd.read_csv(root / "id_prop.csv", header=None)
    assert ds.ids == [str(i) for i in table[0]] and len(ds) == 10
    assert [ds[i].info["energy"] for i in range(10)] == table[1].tolist()
    for i in (0, 5):
        ref = Structure.from_file(root / f"{ds.ids[i]}.cif")  # symmetry expanded by pymatgen
        assert len(ds[i]) == len(ref) and ds[i].pbc.all()
        assert ds[i].cell.volume == pytest.approx(ref.volume, rel=1e-8)


def test_cif_folder_poscar_names_and_units():
    root = shared_data_dir() / "cif" / "jarvis_alignn_sample"
    ds = open_dataset("cif-folder", root, target="optb88vdw_bandgap", limit=5)
    table = pd.read_csv(root / "id_prop.csv", header=None, nrows=5)
    assert ds.ids == table[0].tolist() and ds.targets == {"energy": "eV", "optb88vdw_bandgap": "eV"}
    ref = ase.io.read(root / ds.ids[3], format="vasp")
    assert ds[3].positions.tolist() == ref.positions.tolist()
    assert ds[3].info["optb88vdw_bandgap"] == table[1][3] == 0.472  # a non-zero label: units matter
    mev = open_dataset("cif-folder", root, energy_unit="meV", limit=5)
    assert mev[3].info["energy"] == pytest.approx(table[1][3] * 1e-3)
    hartree = open_dataset("cif-folder", root, energy_unit="hartree", limit=5)  # case-insensitive
    assert hartree.targets["energy"] == "eV"
    assert hartree[3].info["energy"] == pytest.approx(table[1][3] * HARTREE_2018, rel=1e-10)
    per_atom = open_dataset("cif-folder", root, target="e_form", energy_unit="eV/atom", limit=5)
    assert per_atom.targets["e_form"] == "eV/atom" and per_atom[3].info["e_form"] == table[1][3]


def test_cif_folder_broken_file_and_missing_label(tmp_path):
    src = shared_data_dir() / "cif" / "cgcnn_sample_cod"
    for f in src.glob("*.cif"):
        shutil.copy(f, tmp_path / f.name)
    ids = [line.split(",")[0] for line in (src / "id_prop.csv").read_text().split()]
    text = (tmp_path / f"{ids[3]}.cif").read_text()
    (tmp_path / f"{ids[3]}.cif").write_text(text[: len(text) // 3])  # truncated CIF, 4th of 10
    rows = [f"{i},{k}.5" for k, i in enumerate(ids)]
    rows[6] = f"{ids[6]},"  # missing label, 7th of 10
    (tmp_path / "id_prop.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(StructureError) as err:
        open_dataset("cif-folder", tmp_path)
    assert err.value.source == ids[3] and f"{ids[3]}.cif" in str(err.value)
    with pytest.warns(UserWarning, match="skipped 2 bad"):
        ds = open_dataset("cif-folder", tmp_path, on_error="skip")
    assert len(ds) == 8 and [s[0] for s in ds.skipped] == [ids[3], ids[6]]
    assert "missing label" in ds.skipped[1][1]
    assert ds.ids == [i for k, i in enumerate(ids) if k not in (3, 6)]
    assert ds[ds.ids.index(ids[7])].info["energy"] == 7.5
    # a structure file without a row is reported, not silently ignored
    (tmp_path / "id_prop.csv").write_text("\n".join(r for k, r in enumerate(rows) if k not in (3, 6, 9)) + "\n")
    with pytest.warns(UserWarning, match=rf"3 structure file\(s\) have no row.*{ids[9]}"):
        open_dataset("cif-folder", tmp_path)


def test_cif_folder_header_several_labels_units_and_write_round_trip(tmp_path):
    """write_cif_folder -> open_cif_folder: ids, positions and every label back; per-label units
    (meV/atom -> eV/atom, Hartree -> eV, K kept); a header with unknown names is an error."""
    from geognn.datasets import write_cif_folder
    from geognn.datasets.folders import cif_folder_labels

    src = shared_data_dir() / "cif" / "cgcnn_sample_cod"
    ref = open_dataset("cif-folder", src, limit=4)
    structures = [ref[i] for i in range(4)]
    labels = {"e_form": [-120.0, 15.5, 0.0, -3.25], "etot": [-1.0, -2.0, -3.5, -0.25], "tc": [4.2, 0.0, 92.0, 1.5]}
    write_cif_folder(tmp_path, structures, labels, ids=[f"s{k}" for k in range(4)])
    assert cif_folder_labels(tmp_path) == ["e_form", "etot", "tc"]
    ds = open_dataset("cif-folder", tmp_path, energy_unit={"e_form": "meV/atom", "etot": "Hartree", "tc": "K"})
    assert ds.ids == ["s0", "s1", "s2", "s3"] and ds.labels == ["e_form", "etot", "tc"]
    assert ds.targets == {"e_form": "eV/atom", "etot": "eV", "tc": "K"}
    for k in range(4):
        assert ds[k].info["e_form"] == pytest.approx(labels["e_form"][k] * 1e-3, rel=1e-12)
        assert ds[k].info["etot"] == pytest.approx(labels["etot"][k] * HARTREE_2018, rel=1e-8)  # CODATA 2018, rounded
        assert ds[k].info["tc"] == labels["tc"][k]
        np.testing.assert_allclose(
            ds[k].get_scaled_positions() % 1.0, structures[k].get_scaled_positions() % 1.0, atol=1e-6
        )  # CIF writes 6+ decimals
    one = open_dataset("cif-folder", tmp_path, target="tc", energy_unit="K")
    assert one.targets == {"energy": "K", "tc": "K"} and one[2].info["energy"] == 92.0  # single label: also energy
    with pytest.raises(ValueError, match=r"has no label 'gap'; its labels are e_form, etot, tc"):
        open_dataset("cif-folder", tmp_path, target=["tc", "gap"])
    with pytest.raises(ValueError, match=r"units given for \['gap'\]"):
        open_dataset("cif-folder", tmp_path, energy_unit={"gap": "eV"})


# --------------------------------------------------------------------------- extxyz, ase-db
def test_extxyz_md17_ethanol_kcal_per_mol():
    path = shared_data_dir() / "md" / "schnetpack_md17_ethanol_2000.xyz"
    ds = open_dataset("extxyz", path, energy_unit="kcal/mol")
    ref = ase.io.read(path, index=":")
    assert len(ds) == 2000 and ds.ids[1] == "schnetpack_md17_ethanol_2000.xyz@1"
    assert ds.targets == {"energy": "eV", "forces": "eV/Å"}
    for k in (0, 1234, 1999):
        kcal = ase.units.kcal / ase.units.mol
        assert ds[k].info["energy"] == pytest.approx(ref[k].get_potential_energy() * kcal, rel=1e-6)
        np.testing.assert_allclose(ds[k].arrays["forces"], ref[k].get_forces() * kcal, rtol=1e-6)
        assert ds[k].get_chemical_formula() == "C2H6O"
    assert -4215.0 < ds[0].info["energy"] < -4214.0  # -97195 kcal/mol


def test_extxyz_stress_units_and_missing_label(tmp_path):
    frames = []
    for k in range(3):
        a = Atoms("Si2", positions=[[0, 0, 0], [1.4, 1.4, 1.4]], cell=np.eye(3) * 5.43, pbc=True)
        a.calc = SinglePointCalculator(
            a,
            energy=-10.0 - k,
            forces=np.full((2, 3), 0.1 * k),
            stress=np.array([1.0, 2.0, 3.0, 0.4, 0.5, 0.6]) * (k + 1),
        )
        frames.append(a)
    path = tmp_path / "si.extxyz"
    ase.io.write(path, frames)
    ds = open_dataset("extxyz", path, stress_unit="GPa")
    assert ds.targets == {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å^3"}
    s = ds[1].info["stress"]
    assert (
        s.shape == (3, 3)
        and s[0, 0] == pytest.approx(2.0 * ase.units.GPa)
        and s[0, 1] == pytest.approx(1.2 * ase.units.GPa)
    )
    # a frame without its energy in the middle of a file
    lines = path.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("Lattice") and i > 3)
    lines[header] = " ".join(w for w in lines[header].split(" ") if not w.startswith("energy="))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(StructureError, match=r"si.extxyz@1.*missing label.*energy"):
        open_dataset("extxyz", path)
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = open_dataset("extxyz", path, on_error="skip")
    assert ds.ids == ["si.extxyz@0", "si.extxyz@2"]


def test_extxyz_several_info_labels_with_their_units(tmp_path):
    frames = []
    for k in range(3):
        a = Atoms("Si2", positions=[[0, 0, 0], [1.4, 1.4, 1.4]], cell=np.eye(3) * 5.43, pbc=True)
        a.info.update(e_form=-100.0 * k, gap=0.5 + k)
        a.calc = SinglePointCalculator(a, energy=-10.0 - k)
        frames.append(a)
    frames[1].info["gap"] = float("nan")
    path = tmp_path / "x.extxyz"
    ase.io.write(path, frames)
    with pytest.warns(UserWarning, match="skipped 1 bad"):
        ds = open_dataset(
            "extxyz",
            path,
            target=["energy", "e_form", "gap"],
            on_error="skip",
            units={"energy": "eV", "e_form": "meV/atom", "gap": "eV"},
        )
    assert ds.labels == ["energy", "e_form", "gap"] and ds.ids == ["x.extxyz@0", "x.extxyz@2"]
    assert ds.targets == {"energy": "eV", "e_form": "eV/atom", "gap": "eV"}
    assert ds.skipped[0][0] == "x.extxyz@1" and "non-finite gap" in ds.skipped[0][1]
    assert (ds[1].info["energy"], ds[1].info["e_form"], ds[1].info["gap"]) == pytest.approx((-12.0, -0.2, 2.5))


def test_ase_db_oc20_frame_and_oxides():
    frame = open_dataset("ase-db", shared_data_dir() / "oc20" / "fairchem_s2ef_atoms.json")[0]
    ref = ase.io.read(shared_data_dir() / "oc20" / "fairchem_s2ef_atoms.json")
    assert frame.info["energy"] == -135.66393572 and frame.info["id"] == "1"
    np.testing.assert_array_equal(frame.arrays["forces"], ref.get_forces(apply_constraint=False))
    assert (frame.get_tags() == ref.get_tags()).all() and len(frame.constraints[0].index) == 24
    db_path = shared_data_dir() / "other" / "fairchem_oxides_pbe_eos.db"
    ds = open_dataset("ase-db", db_path, limit=10)
    rows = list(ase.db.connect(db_path).select(limit=10))
    assert [ds[k].info["energy"] for k in range(10)] == [r.energy for r in rows]


def test_items_follow_the_interface(tmp_path):
    kinds = [
        ("qm9", qm9_dir() / "schnetpack_test_qm9.db", {"cache_dir": tmp_path}),
        ("cif-folder", shared_data_dir() / "cif" / "cgcnn_sample_cod", {}),
        ("ase-db", shared_data_dir() / "other" / "fairchem_oxides_pbe_eos.db", {"limit": 3}),
    ]
    for kind, root, opts in kinds:
        ds = open_dataset(kind, root, **opts)
        a = ds[-1]
        assert isinstance(a, Atoms) and a.info["id"] == ds.ids[-1] and isinstance(a.info["energy"], float)
        a.positions += 1.0  # items are copies
        assert not np.allclose(ds[-1].positions, a.positions)
        with pytest.raises(IndexError):
            ds[len(ds)]


# --------------------------------------------------------------------------- splits
def test_random_split_deterministic_disjoint_complete():
    a, b = random_split(1000, (0.8, 0.1, 0.1), seed=3), random_split(1000, (0.8, 0.1, 0.1), seed=3)
    assert a == b and a != random_split(1000, seed=4)
    assert [len(a[k]) for k in ("train", "val", "test")] == [800, 100, 100]
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(1000))
    with pytest.raises(ValueError, match="sum"):
        random_split(10, (0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="too few"):
        random_split(3, (0.8, 0.1, 0.1))


def test_qm9_standard_split_sizes():
    full = qm9_standard_split(130_831, seed=0)
    assert [len(full[k]) for k in ("train", "val", "test")] == [110_000, 10_000, 10_831]
    assert len(set(full["train"]) | set(full["val"]) | set(full["test"])) == 130_831
    with pytest.warns(UserWarning, match="scaled"):
        small = qm9_standard_split(5032, seed=0)
    assert [len(small[k]) for k in ("train", "val", "test")] == [4231, 385, 416]


def test_split_file_round_trip_and_dataset_check(tmp_path):
    ids = [f"m{i}" for i in range(50)]
    split = random_split(50, seed=1)
    path = write_split(tmp_path / "split.json", split, ids=ids, seed=1)
    assert read_split(path) == split and read_split(path, ids=ids) == split
    with pytest.raises(ValueError, match="dataset changed"):
        read_split(path, ids=ids[::-1])
    bad = {"train": [0, 1], "val": [1], "test": []}
    with pytest.raises(ValueError, match="overlaps"):
        write_split(tmp_path / "bad.json", bad)
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(ValueError, match="junk.json"):
        read_split(tmp_path / "junk.json")


def test_data_loading_never_imports_the_models():
    """DESIGN: data loading never imports models (checked in a fresh interpreter)."""
    import subprocess
    import sys

    code = (
        "import sys, geognn, geognn.datasets, geognn.io, geognn.graph.build; "
        "print(sorted(m for m in sys.modules if m.startswith(('geognn.model', 'geognn.backbones', "
        "'geognn.symmetry', 'geognn.train'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
