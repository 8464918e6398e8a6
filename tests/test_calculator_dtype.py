"""GeoGNNCalculator's dtype option: float64 for MD (weights cast), float32 for speed, bad names refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_forces
from backbone_configs import SMALL

import geognn
from geognn import GeoGNNCalculator

BACKBONES = ("schnet", "painn", "mace")


def float32_model(name: str):
    torch.manual_seed(0)
    return geognn.build_model(name, cutoff=4.0, **SMALL[name]).eval()


def rattled_si():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)  # 8 atoms, periodic
    atoms.rattle(0.05, seed=0)
    return atoms


@pytest.mark.parametrize("name", BACKBONES)
def test_float64_equals_float32_to_float32_tolerance_and_leaves_the_model_alone(name):
    model = float32_model(name)
    atoms = rattled_si()
    c32 = GeoGNNCalculator(model, dtype="float32")
    c64 = GeoGNNCalculator(model, dtype="float64")
    assert next(c64.model.parameters()).dtype == torch.float64
    assert next(c32.model.parameters()).dtype == torch.float32
    assert next(model.parameters()).dtype == torch.float32  # the caller's model was copied, not cast
    e32, f32 = c32.get_potential_energy(atoms), c32.get_forces(atoms)
    e64, f64 = c64.get_potential_energy(atoms), c64.get_forces(atoms)
    assert np.abs(f64).max() > 1e-3  # non-trivial forces
    # measured on these 8 rattled Si atoms: |E32 - E64| <= 6.1e-7 eV (|E| up to 12 eV, float32
    # eps 1.2e-7 relative), max |F32 - F64| <= 7.8e-7 eV/Å; 1e-5 leaves room for other BLAS builds
    assert abs(e32 - e64) < 1e-5
    np.testing.assert_allclose(f32, f64, atol=1e-5)


@pytest.mark.parametrize("name", BACKBONES)
def test_float64_forces_match_finite_difference_of_float64_energies(name):
    atoms = rattled_si()
    atoms.calc = GeoGNNCalculator(float32_model(name), dtype="float64")
    atoms_checked = [0, 5]  # two atoms (12 energy pairs) keep the test fast; all 8 measured alike
    forces = atoms.get_forces()[atoms_checked]
    numeric = calculate_numerical_forces(atoms, eps=1e-5, iatoms=atoms_checked)  # central differences
    # measured max |F - F_fd| over all 8 atoms, eps = 1e-5 Å: schnet 2.4e-10, painn 2.7e-9, mace
    # 4.9e-11 eV/Å (the O(eps^2) truncation dominates: eps = 1e-4 gives 2.7e-7 for painn). The same
    # check of the float32 calculator is at best 3e-4 eV/Å (eps = 1e-3), so 1e-7 holds only in float64.
    assert np.abs(forces - numeric).max() < 1e-7


def test_dtype_accepts_torch_dtypes_and_checkpoints(tmp_path):
    model = float32_model("schnet")
    model.save(tmp_path / "m.pt")
    atoms = rattled_si()
    by_name = GeoGNNCalculator(str(tmp_path / "m.pt"), dtype="float64").get_potential_energy(atoms)
    by_dtype = GeoGNNCalculator(model, dtype=torch.float64).get_potential_energy(atoms)
    assert by_name == pytest.approx(by_dtype, abs=1e-12)
    assert GeoGNNCalculator(model).dtype == torch.float64  # the default


@pytest.mark.parametrize("bad", ["float16", "double", "fp64", torch.float16, torch.bfloat16, 64, None])
def test_bad_dtype_is_a_clear_value_error(bad):
    with pytest.raises(ValueError, match=r"dtype must be one of \['float32', 'float64'\].*got"):
        GeoGNNCalculator(float32_model("schnet"), dtype=bad)
