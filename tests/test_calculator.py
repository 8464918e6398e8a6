"""The ASE calculator: consistent with the model, gradients right, usable for MD and BFGS."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.test import gradient_test
from ase.filters import FrechetCellFilter
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

import geognn
from geognn import GeoGNNCalculator


def random_model():
    """A small randomly initialised SchNet in float64: any smooth energy surface will do for
    checking gradients, energy conservation in MD and that BFGS converges on it."""
    torch.manual_seed(3)
    return (
        geognn.build_model("schnet", cutoff=4.0, hidden_channels=16, num_filters=16, num_layers=2, num_gaussians=12)
        .double()
        .eval()
    )


def test_forces_are_minus_gradient_of_energy():
    atoms = molecule("CH3CH2OH")
    atoms.calc = GeoGNNCalculator(random_model())
    f_analytic, f_numeric = gradient_test(atoms)
    assert np.abs(f_analytic - f_numeric).max() < 1e-6


def test_stress_matches_numerical_stress_and_is_undefined_for_molecules():
    atoms = bulk("Si", "diamond", a=5.43) * (1, 1, 2)
    atoms.rattle(0.05, seed=0)
    atoms.calc = GeoGNNCalculator(random_model())
    stress = atoms.get_stress()
    numeric = atoms.calc.calculate_numerical_stress(atoms, d=1e-5)
    assert np.abs(stress - numeric).max() < 1e-7
    assert np.abs(stress).max() > 1e-4  # non-trivial
    mol = molecule("H2O")
    mol.calc = GeoGNNCalculator(random_model())
    with pytest.raises(PropertyNotImplementedError, match="no periodic direction"):
        mol.get_stress()


def test_calculator_agrees_with_model_and_accepts_checkpoint(tmp_path):
    model = random_model()
    model.save(tmp_path / "m.pt")
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.02, seed=1)
    batch = geognn.collate([geognn.build_graph(atoms, model.cutoff, dtype=torch.float64)])
    expected = model(batch)
    atoms.calc = GeoGNNCalculator(str(tmp_path / "m.pt"))
    assert atoms.get_potential_energy() == pytest.approx(float(expected["energy"][0].detach()), abs=1e-10)
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()
    np.testing.assert_allclose(atoms.get_forces(), expected["forces"].detach().numpy(), atol=1e-10)


def test_short_md_conserves_energy():
    atoms = molecule("CH3CH2OH")
    atoms.calc = GeoGNNCalculator(random_model())
    rng = np.random.default_rng(0)
    atoms.set_momenta(rng.normal(scale=0.05, size=(len(atoms), 3)) * atoms.get_masses()[:, None] ** 0.5)
    e0 = atoms.get_total_energy()
    VelocityVerlet(atoms, timestep=0.2 * units.fs).run(50)
    assert abs(atoms.get_total_energy() - e0) < 1e-3


def test_bfgs_relaxation_with_cell_filter_lowers_energy():
    atoms = bulk("Si", "diamond", a=5.43) * (1, 1, 2)
    atoms.rattle(0.1, seed=2)
    atoms.calc = GeoGNNCalculator(random_model())
    e0 = atoms.get_potential_energy()
    opt = BFGS(FrechetCellFilter(atoms), logfile=None)
    converged = opt.run(fmax=0.01, steps=300)
    assert converged, f"BFGS did not converge in {opt.nsteps} steps"
    assert atoms.get_potential_energy() < e0
    assert np.linalg.norm(atoms.get_forces(), axis=1).max() < 0.01
