"""read_structures on the real shared data, and the errors for bad input.

Every error is a ``geognn.StructureError`` (a ValueError) whose message names the file and the
problem. The broken files are hand-made, in tests/data/ (see its README.md).
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.neighborlist import neighbor_list
from conftest import TEST_DATA, exit_code_in_child, load_mp20_crystals, load_qm9_molecules

from geognn import StructureError, build_graph, read_structures
from geognn.graph.build import IsolatedAtomWarning

#: COD id -> (reduced formula, atoms in the conventional cell after applying the symmetry operations)
COD_EXPECTED = {
    "1000041": ("NaCl", 8),  # rock salt, Fm-3m
    "1000050": ("KCl", 2),  # Pm-3m
    "1101051": ("ZnS", 4),  # wurtzite, P6_3mc
    "1507756": ("BaTiO3", 5),  # P4mm
    "7206075": ("TiO2", 12),  # anatase, I4_1/amd
    "9000046": ("C", 8),  # Fmmm
    "9009743": ("CsCl", 2),  # Pm-3m
    "9011050": ("Ge", 8),  # diamond, Fd-3m
    "9011998": ("Si", 8),
    "9012304": ("C", 8),  # diamond
}


def expect_error(paths, match, **kwargs) -> StructureError:
    """read_structures(paths) raises StructureError matching ``match`` and naming the file."""
    with pytest.raises(StructureError, match=match) as info:
        read_structures(paths, **kwargs)
    err = info.value
    name = Path(paths if not isinstance(paths, list) else paths[-1]).name
    assert isinstance(err, ValueError)
    assert name in str(err), f"file name {name!r} missing from the message: {err}"
    return err


def sorted_distances(atoms, cutoff=4.0):
    return np.sort(neighbor_list("d", atoms, cutoff))


def edge_set(g) -> set[tuple]:
    j, i = g.edge_index.tolist()
    return {(a, b, *s) for a, b, s in zip(i, j, g.edge_shift.round().long().tolist())}


# --------------------------------------------------------------------------- reading real files
@pytest.mark.parametrize("cod_id", sorted(COD_EXPECTED))
def test_cod_cif_symmetry_expanded(shared_data, cod_id):
    from pymatgen.io.cif import CifParser

    path = shared_data / "cif" / "cgcnn_sample_cod" / f"{cod_id}.cif"
    formula, count = COD_EXPECTED[cod_id]
    (atoms,) = read_structures(path)
    assert atoms.info["source"] == str(path)
    assert atoms.pbc.all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = CifParser(path).parse_structures(primitive=False)[0]
        ase_atoms = ase.io.read(path, format="cif")  # ASE's own symmetry expansion
    assert len(atoms) == len(reference) == len(ase_atoms) == count
    assert reference.composition.reduced_formula == formula
    assert atoms.get_chemical_formula(empirical=True) == ase_atoms.get_chemical_formula(empirical=True)
    # the same crystal as ASE's reader builds (orientation and atom order may differ). pymatgen
    # snaps coordinates like 0.3333 to 1/3 and ASE does not: 2e-4 Å apart in ZnS, so 1e-3 here.
    ours, theirs = sorted_distances(atoms), sorted_distances(ase_atoms)
    assert ours.shape == theirs.shape and np.allclose(ours, theirs, atol=1e-3)


def test_read_folder(shared_data):
    folder = shared_data / "cif" / "cgcnn_sample_cod"
    structures = read_structures(folder)  # id_prop*.csv are not structure files
    assert sorted(Path(a.info["source"]).stem for a in structures) == sorted(COD_EXPECTED)
    assert [len(a) for a in structures] == [COD_EXPECTED[Path(a.info["source"]).stem][1] for a in structures]


def test_read_folder_recursively(shared_data, tmp_path):
    cod = shared_data / "cif" / "cgcnn_sample_cod"
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.copy(cod / "1000041.cif", tmp_path / "a" / "NaCl.cif")
    shutil.copy(cod / "9011998.cif", tmp_path / "a" / "b" / "Si.CIF")  # suffixes are case-insensitive
    shutil.copy(shared_data / "cif" / "jarvis_alignn_sample" / "POSCAR-JVASP-10.vasp", tmp_path / "a" / "b" / "POSCAR")
    ase.io.write(tmp_path / "two.xyz", load_qm9_molecules(2), format="extxyz")
    (tmp_path / "a" / "notes.txt").write_text("not a structure")
    (tmp_path / "a" / "b" / "id_prop.csv").write_text("NaCl,1.0\n")

    structures = read_structures(tmp_path)
    sources = [a.info["source"] for a in structures]
    assert sorted(sources) == sorted(
        [
            str(tmp_path / "a" / "NaCl.cif"),
            str(tmp_path / "a" / "b" / "Si.CIF"),
            str(tmp_path / "a" / "b" / "POSCAR"),
            f"{tmp_path / 'two.xyz'}@0",
            f"{tmp_path / 'two.xyz'}@1",
        ]
    )
    assert sources == [a.info["source"] for a in read_structures(str(tmp_path))]  # reproducible order
    counts = {Path(s.split("@")[0]).name: len(a) for s, a in zip(sources, structures)}
    assert counts["NaCl.cif"] == 8 and counts["Si.CIF"] == 8 and counts["POSCAR"] == 3


def test_read_list_of_paths(shared_data):
    paths = [
        shared_data / "cif" / "cgcnn_sample_cod" / "1000041.cif",
        str(shared_data / "cif" / "jarvis_alignn_sample" / "POSCAR-JVASP-10.vasp"),
        shared_data / "qm9" / "schnetpack_test_qm9.db",
    ]
    structures = read_structures(paths)
    assert len(structures) == 1 + 1 + 20
    assert [a.info["source"] for a in structures[:3]] == [str(paths[0]), paths[1], f"{paths[2]}@0"]


def test_read_jarvis_poscars(shared_data):
    folder = shared_data / "cif" / "jarvis_alignn_sample"
    structures = read_structures(folder)
    listed = [line.split(",")[0] for line in (folder / "id_prop.csv").read_text().split()]
    assert sorted(Path(a.info["source"]).name for a in structures) == sorted(listed)
    for a in structures:
        ref = ase.io.read(a.info["source"], format="vasp")
        assert a.pbc.all() and np.array_equal(a.numbers, ref.numbers)
        assert np.allclose(a.positions, ref.positions, atol=1e-12) and np.allclose(a.cell, ref.cell)


def test_read_extxyz_with_energy_and_forces(shared_data, tmp_path):
    frames = ase.io.read(shared_data / "md" / "schnetpack_md17_ethanol_2000.xyz", index=":3")
    path = tmp_path / "ethanol3.xyz"
    ase.io.write(path, frames, format="extxyz")
    structures = read_structures(path)
    assert [a.info["source"] for a in structures] == [f"{path}@{k}" for k in range(3)]
    for a, ref in zip(structures, frames):
        assert a.get_chemical_formula() == "C2H6O" and not a.pbc.any()
        assert np.allclose(a.positions, ref.positions)
        assert a.get_potential_energy() == pytest.approx(ref.get_potential_energy(), rel=1e-12)
        assert np.allclose(a.get_forces(), ref.get_forces())
    g = build_graph(structures[1], 5.0, dtype=torch.float64)
    assert g.energy.item() == pytest.approx(frames[1].get_potential_energy(), rel=1e-12)
    assert torch.allclose(g.forces, torch.from_numpy(frames[1].get_forces()))


def test_read_ase_db(shared_data):
    path = shared_data / "qm9" / "schnetpack_test_qm9.db"
    structures = read_structures(path)
    assert len(structures) == 20
    assert [a.info["source"] for a in structures] == [f"{path}@{k}" for k in range(20)]
    with ase.db.connect(path) as db:
        rows = [row.toatoms() for row in db.select()]
    for a, ref in zip(structures, rows):
        assert np.array_equal(a.numbers, ref.numbers) and np.allclose(a.positions, ref.positions)
        assert not a.pbc.any()


def test_read_traj(tmp_path):
    frames = []
    for k, a in enumerate(load_mp20_crystals(2)):
        a.calc = SinglePointCalculator(
            a, energy=-1.5 * (k + 1), forces=np.full((len(a), 3), 0.1 * k), stress=np.arange(6.0) * 0.01
        )
        frames.append(a)
    path = tmp_path / "two.traj"
    ase.io.write(path, frames)
    structures = read_structures(path)
    assert [a.info["source"] for a in structures] == [f"{path}@0", f"{path}@1"]
    for a, ref in zip(structures, frames):
        assert np.allclose(a.positions, ref.positions) and np.allclose(a.cell, ref.cell)
        assert a.get_potential_energy() == ref.get_potential_energy()
    g = build_graph(structures[1], 4.0)
    assert g.stress.shape == (1, 3, 3) and g.energy.item() == pytest.approx(-3.0)
    ase.io.write(tmp_path / "one.traj", frames[0])
    (one,) = read_structures(tmp_path / "one.traj")
    assert one.info["source"] == str(tmp_path / "one.traj")  # no "@k" for a single frame


def test_read_oc20_json(shared_data):
    path = shared_data / "oc20" / "fairchem_s2ef_atoms.json"
    (atoms,) = read_structures(path)
    assert atoms.info["source"] == str(path)
    assert len(atoms) == 34 and atoms.pbc.all()
    assert atoms.get_potential_energy() == pytest.approx(-135.66393572, abs=1e-8)
    assert atoms.get_forces().shape == (34, 3)
    assert atoms.get_tags().tolist().count(1) == 2  # the CO adsorbate
    g = build_graph(atoms, 6.0)
    assert torch.equal(g.tags, torch.as_tensor(atoms.get_tags()))


# --------------------------------------------------------------------------- bad input
def test_structure_error_is_value_error():
    assert issubclass(StructureError, ValueError)
    err = StructureError("x.cif", "broken")
    assert str(err) == "x.cif: broken" and err.source == "x.cif" and err.problem == "broken"


@pytest.mark.parametrize(
    "name, match",
    [
        ("garbage.cif", r"malformed or truncated CIF"),
        ("truncated_symops.cif", r"malformed or truncated CIF"),
        ("unknown_element.xyz", r"unknown element 'Xx'"),
        ("unknown_element.cif", r"unknown element 'Xx'"),
        ("POSCAR_unknown_element", r"unknown element 'Xx'"),
        ("dummy_element.xyz", r"unknown element \(atomic number 0\) at atom 1"),
        ("nan_coordinates.xyz", r"non-finite \(NaN or inf\) coordinates at atom 1"),
        ("nan_cell.xyz", r"non-finite \(NaN or inf\) lattice vectors"),
        ("overlapping.xyz", r"overlapping atoms: atoms 0 and 1 are 0\.05 Å apart"),
        (
            "overlapping_image.xyz",
            r"overlapping atoms: atom 0 and the periodic image \[0, 0, -1\] of atom 1 are 0\.07 Å apart",
        ),
        ("zero_atoms.xyz", r"empty structure \(no atoms\)"),
        ("empty.xyz", r"file is empty"),
        ("singular_cell.xyz", r"singular cell"),
        ("zero_lattice_vector.xyz", r"periodic along lattice vector 1 but that vector is zero"),
        ("structure.pdb", r"unknown file type '\.pdb'"),
        ("partial_occupancy.cif", r"partial occupancies on 2 site\(s\).*allow_partial_occupancy=True"),
    ],
)
def test_bad_file(name, match):
    err = expect_error(TEST_DATA / name, match)
    assert err.source == str(TEST_DATA / name)


@pytest.mark.parametrize("name", ["truncated_atom_row.cif", "truncated_atom_header.cif"])
def test_truncated_cif_in_atom_loop(name):
    err = expect_error(TEST_DATA / name, r"cif")
    # the problem itself (not the file name, which says "truncated") must say what is wrong
    assert re.search(r"(?i)malformed CIF|truncated|incomplete", err.problem), err.problem


def test_cif_cut_between_atom_rows_is_caught_by_its_formula():
    """A CIF that lost whole rows parses, but its atoms contradict _chemical_formula_sum."""
    expect_error(
        TEST_DATA / "truncated_between_rows.cif",
        r"atoms do not match the CIF's own formula \(Missing elements Cl.*truncated",
    )


def test_truncated_cif_in_atom_loop_is_still_a_structure_error():
    for name in ["truncated_atom_row.cif", "truncated_atom_header.cif"]:
        expect_error(TEST_DATA / name, r"cif")


def _read_in_child(path):
    try:
        read_structures(path)
    except StructureError:
        pass  # a clear refusal is fine


def test_far_atom_does_not_crash_the_reader():
    code = exit_code_in_child(_read_in_child, TEST_DATA / "far_atom_wire.xyz", timeout=30)
    assert code == 0, f"read_structures died with exit code {code} (negative: killed by signal {-code})"


def test_partial_occupancy_allowed_with_warning():
    path = TEST_DATA / "partial_occupancy.cif"
    with pytest.warns(UserWarning, match=r"2 partially occupied site\(s\) replaced by their majority species"):
        (atoms,) = read_structures(path, allow_partial_occupancy=True)
    assert atoms.get_chemical_formula() == "Cl4Na4" and atoms.info["source"] == str(path)


def test_hand_made_p1bar_cif_is_expanded():
    """The valid CIF the truncated ones were cut from: 3 sites, P-1 -> 6 atoms."""
    (atoms,) = read_structures(TEST_DATA / "p1bar.cif")
    assert atoms.get_chemical_formula() == "O4Si2"
    assert np.allclose(atoms.cell.cellpar(), [4.10, 4.60, 5.20, 80.0, 95.0, 101.0])


def test_missing_path(tmp_path):
    expect_error(tmp_path / "nope.cif", r"no such file or folder")
    expect_error([TEST_DATA / "p1bar.cif", tmp_path / "nope.xyz"], r"no such file or folder")


def test_folder_without_structure_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.txt").write_text("nothing here")
    shutil.copy(TEST_DATA / "structure.pdb", tmp_path / "sub")  # unknown suffixes are skipped in folders
    err = expect_error(tmp_path, r"folder contains no structure files")
    assert err.source == str(tmp_path)


# --------------------------------------------------------------------------- in-memory structures
def test_bad_cells_in_memory():
    with pytest.raises(StructureError, match=r"singular cell"):
        build_graph(
            Atoms("H2", positions=[[0, 0, 0], [1, 1, 1]], cell=[[3, 0, 0], [0, 3, 0], [3, 3, 0]], pbc=True), 3.0
        )
    with pytest.raises(StructureError, match=r"singular cell"):  # slab with parallel in-plane vectors
        build_graph(
            Atoms(
                "H2", positions=[[0, 0, 0], [1, 1, 1]], cell=[[3, 0, 0], [6, 0, 0], [0, 0, 9]], pbc=(True, True, False)
            ),
            3.0,
        )
    with pytest.raises(StructureError, match=r"periodic along lattice vector 2 but that vector is zero"):
        build_graph(Atoms("H", cell=[[3, 0, 0], [0, 3, 0], [0, 0, 0]], pbc=True), 3.0)
    with pytest.raises(StructureError, match=r"overlapping atoms"):  # an atom on its own image
        build_graph(Atoms("H", cell=[0.05, 3, 3], pbc=True), 3.0)


@pytest.fixture
def ethanol(shared_data):
    """First MD17 ethanol frame, with its source set as read_structures would."""
    path = shared_data / "md" / "schnetpack_md17_ethanol_2000.xyz"
    atoms = ase.io.read(path, index=0)
    atoms.info["source"] = f"{path}@0"
    return atoms


@pytest.mark.parametrize("cutoff", [0, 0.0, -2.5, float("nan"), float("inf")])
def test_bad_cutoff(ethanol, cutoff):
    with pytest.raises(StructureError, match=r"cutoff must be a positive number of Å") as info:
        build_graph(ethanol, cutoff)
    assert "schnetpack_md17_ethanol_2000.xyz@0" in str(info.value)


def test_cutoff_below_every_bond(ethanol):
    with pytest.warns(IsolatedAtomWarning, match=r"smaller than every bond") as record:
        g = build_graph(ethanol, 0.5)
    message = str(record[0].message)
    assert "schnetpack_md17_ethanol_2000.xyz@0" in message and "shortest interatomic distance 0.9" in message
    assert g.edge_index.shape == (2, 0)


def test_one_isolated_atom(ethanol):
    atoms = ethanol + Atoms("He", positions=[[40.0, 0.0, 0.0]])
    with pytest.warns(IsolatedAtomWarning, match=r"1 atom\(s\) have no neighbour within 5\.0 Å \(indices 9\)"):
        build_graph(atoms, 5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IsolatedAtomWarning)
        build_graph(ethanol, 5.0)  # nothing isolated: no warning


def test_lone_atom_warning_names_the_atom():
    with pytest.warns(IsolatedAtomWarning) as record:
        build_graph(Atoms("Ar"), 5.0)
    message = str(record[0].message)
    assert "smaller than every bond" not in message and re.search(r"\b(indices|atom) 0\b", message), message


# --------------------------------------------------------------------------- pymatgen inputs
def test_pymatgen_structure_and_molecule():
    from pymatgen.core import IStructure, Molecule, Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    errors = []
    for atoms in load_mp20_crystals(6):
        structure = AseAtomsAdaptor.get_structure(atoms)
        assert isinstance(structure, Structure)
        ref = build_graph(atoms, 5.0, dtype=torch.float64)
        for s in (structure, IStructure.from_sites(structure)):
            g = build_graph(s, 5.0, dtype=torch.float64)
            if edge_set(g) != edge_set(ref) or not torch.allclose(g.pos, ref.pos, atol=1e-10):
                errors.append(f"{atoms.info['source']} as {type(s).__name__}")
            assert g.pbc.all() and torch.allclose(g.cell, ref.cell)
    for atoms in load_qm9_molecules(6):
        molecule = Molecule(atoms.get_chemical_symbols(), atoms.positions)
        ref = build_graph(atoms, 4.0)
        g = build_graph(molecule, 4.0)
        if edge_set(g) != edge_set(ref):
            errors.append(f"{atoms.info['source']} as Molecule")
        assert not g.pbc.any() and torch.equal(g.z, ref.z)
    assert not errors, errors


def test_pymatgen_partial_occupancy_rejected():
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(StructureError, match=r"partial occupancies"):
        build_graph(s, 4.0)


def test_to_pymatgen_round_trip_keeps_the_structure():
    """geognn.io.to_pymatgen / to_atoms: a crystal and a molecule survive the round trip exactly."""
    from ase.build import bulk, molecule
    from pymatgen.core import Molecule, Structure

    from geognn.io import to_atoms, to_pymatgen

    crystal = bulk("NaCl", "rocksalt", a=5.64) * (1, 1, 2)
    structure = to_pymatgen(crystal)
    assert isinstance(structure, Structure) and len(structure) == 4
    back = to_atoms(structure)
    np.testing.assert_allclose(back.cell[:], crystal.cell[:], atol=1e-12)
    np.testing.assert_allclose(back.positions, crystal.positions, atol=1e-10)
    water = molecule("H2O")
    mol = to_pymatgen(water)
    assert isinstance(mol, Molecule) and not to_atoms(mol).pbc.any()
    slab = crystal.copy()
    slab.pbc = (True, True, False)
    with pytest.raises(StructureError, match="mixed periodicity"):
        to_pymatgen(slab)
