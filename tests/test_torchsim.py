"""geognn as a TorchSim model (``geognn.integrations.torchsim.GeoGNNModel``).

References: the ASE path (``GeoGNNCalculator``, one structure at a time) for energies, forces and
stress of a batch; ASE's EMT for the equilibrium volume a batched FIRE relaxation (with cell) reaches
with a model fitted to EMT; ASE's own cell relaxation under pressure for TorchSim's stress sign and
units (TorchSim 0.3.0's Lennard-Jones model cannot serve: its stress is twice ASE's numerical stress).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

ts = pytest.importorskip("torch_sim")

from ase import Atoms  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402
from ase.filters import FrechetCellFilter  # noqa: E402
from ase.optimize import FIRE  # noqa: E402

import geognn  # noqa: E402
from geognn import GeoGNNCalculator, build_graph, build_model, collate  # noqa: E402
from geognn.backbones import SMALL_SETTINGS  # noqa: E402
from geognn.integrations.torchsim import GeoGNNModel  # noqa: E402

#: tiny graphs: one intra-op thread (two contend on a loaded 2-core machine, measured 25x slower)
pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


def crystals() -> list[Atoms]:
    """Three different rattled periodic crystals: Si (diamond, 8 atoms), Cu (fcc, 8), NaCl (rocksalt, 2)."""
    out = [
        bulk("Si", "diamond", a=5.43, cubic=True),
        bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1)),
        bulk("NaCl", "rocksalt", a=5.64),
    ]
    for k, atoms in enumerate(out):
        atoms.rattle(0.05, seed=k)
    return out


def small_model(backbone: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(backbone, cutoff=4.0, stress=True, **SMALL_SETTINGS[backbone]).double().eval()


@pytest.mark.parametrize("backbone", ["schnet", "painn"])
def test_batch_equals_ase_calculator_per_structure(backbone):
    model = small_model(backbone)
    structures = crystals()
    ts_model = GeoGNNModel(model, device=CPU, dtype=torch.float64)
    state = ts.io.atoms_to_state(structures, CPU, torch.float64)
    out = ts_model(state)
    assert out["energy"].shape == (3,) and out["forces"].shape == (18, 3) and out["stress"].shape == (3, 3, 3)
    calc = GeoGNNCalculator(model, dtype=torch.float64)
    start = 0
    for k, atoms in enumerate(structures):
        atoms.calc = calc
        n = len(atoms)
        forces = atoms.get_forces()
        assert np.abs(forces).max() > 1e-3  # rattled: the comparison is not between zeros
        # measured (float64, schnet and painn): max errors 2e-16 eV, 3e-17 eV/Å, 3e-18 eV/Å³
        np.testing.assert_allclose(out["energy"][k].item(), atoms.get_potential_energy(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["forces"][start : start + n].numpy(), forces, rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["stress"][k].numpy(), atoms.get_stress(voigt=False), rtol=0, atol=1e-12)
        start += n


def test_float32_batch_close_to_float64():
    """float32 weights and state: within float32 round-off of the float64 batch."""
    model = small_model("schnet")
    structures = crystals()
    ref = GeoGNNModel(model, device=CPU, dtype=torch.float64)(ts.io.atoms_to_state(structures, CPU, torch.float64))
    low = GeoGNNModel(model, device=CPU, dtype=torch.float32)
    assert next(model.parameters()).dtype == torch.float64  # the caller's model is not cast in place
    out = low(ts.io.atoms_to_state(structures, CPU, torch.float32))
    assert out["energy"].dtype == torch.float32
    # measured max |float32 - float64|: 1.0e-6 eV, 1.4e-6 eV/Å, 2e-8 eV/Å³
    torch.testing.assert_close(out["energy"].double(), ref["energy"], rtol=0, atol=1e-4)
    torch.testing.assert_close(out["forces"].double(), ref["forces"], rtol=0, atol=1e-4)
    torch.testing.assert_close(out["stress"].double(), ref["stress"], rtol=0, atol=1e-5)


def test_passes_torchsim_interface_validation():
    """TorchSim's own contract check: shapes, batch vs single system, the state left unmodified."""
    from torch_sim.models.interface import validate_model_outputs

    validate_model_outputs(GeoGNNModel(small_model("schnet"), device=CPU, dtype=torch.float64), CPU, torch.float64)


def test_molecules_without_stress_and_clear_errors():
    model = small_model("schnet")
    mols = [molecule("H2O"), molecule("CH4")]
    for k, m in enumerate(mols):
        m.rattle(0.02, seed=k)
    state = ts.io.atoms_to_state(mols, CPU, torch.float64)
    with pytest.raises(ValueError, match="non-periodic.*compute_stress=False"):
        GeoGNNModel(model, device=CPU, dtype=torch.float64)(state)
    out = GeoGNNModel(model, device=CPU, dtype=torch.float64, compute_stress=False)(state)
    assert "stress" not in out
    batch = collate([build_graph(m, 4.0, dtype=torch.float64) for m in mols])
    ref = model(batch, forces=True, stress=False)
    torch.testing.assert_close(out["energy"], ref["energy"].detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(out["forces"], ref["forces"].detach(), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="float32 or torch.float64"):
        GeoGNNModel(model, device=CPU, dtype=torch.float16)
    intensive = build_model("schnet", targets=[geognn.Target("gap", "eV", "mean")], **SMALL_SETTINGS["schnet"])
    with pytest.raises(ValueError, match="extensive energy target"):
        GeoGNNModel(intensive, device=CPU)


def test_geognn_imports_without_torchsim_and_the_integration_says_what_to_install():
    code = (
        "import sys; sys.modules['torch_sim'] = None\n"
        "import geognn; geognn.build_model; geognn.GeoGNNCalculator\n"
        "try:\n    import geognn.integrations.torchsim\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "ERR geognn.integrations.torchsim needs TorchSim: pip install torch-sim-atomistic" in res.stdout


# --------------------------------------------------------------------------- batched relaxation
@pytest.fixture(scope="module")
def emt_cu_model():
    """A small SchNet fitted (300 Adam steps, ~4 s) to EMT energies, forces and stress of strained Cu."""
    threads = torch.get_num_threads()  # module scope runs before the one_thread fixture: same setting here
    torch.set_num_threads(1)
    torch.manual_seed(0)
    structures = []
    for k in range(16):
        atoms = bulk("Cu", "fcc", a=3.6 * (0.94 + 0.12 * k / 15), cubic=True)
        atoms.rattle(0.08, seed=k)
        atoms.calc = EMT()
        structures.append(atoms)
    model = build_model("schnet", cutoff=4.0, stress=True, **SMALL_SETTINGS["schnet"]).double()
    batch = collate([build_graph(a, 4.0, dtype=torch.float64) for a in structures])
    energy = torch.tensor([a.get_potential_energy() for a in structures])
    forces = torch.tensor(np.concatenate([a.get_forces() for a in structures]))
    stress = torch.tensor(np.stack([a.get_stress(voigt=False) for a in structures]))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):
        opt.zero_grad()
        out = model(batch, forces=True, stress=True)
        loss = (
            ((out["energy"] - energy) ** 2).mean() / 16
            + ((out["forces"] - forces) ** 2).mean()
            + 100 * ((out["stress"] - stress) ** 2).mean()
        )
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return model.eval()


def test_batched_fire_relaxation_with_cell_converges(emt_cu_model):
    """Three differently shaped, strained and rattled Cu cells relaxed together (FIRE, Frechet cell filter)."""
    structures = [
        bulk("Cu", "fcc", a=3.5, cubic=True),  # compressed, 4 atoms
        bulk("Cu", "fcc", a=3.7).repeat((2, 2, 1)),  # stretched primitive cell, 4 atoms
        bulk("Cu", "fcc", a=3.62, orthorhombic=True).repeat((1, 1, 2)),  # 4 atoms
    ]
    for k, atoms in enumerate(structures):
        atoms.rattle(0.05, seed=10 + k)
    ts_model = GeoGNNModel(emt_cu_model, device=CPU, dtype=torch.float64)
    state = ts.io.atoms_to_state(structures, CPU, torch.float64)
    start = ts_model(state)
    assert start["forces"].abs().max() > 0.1 and start["stress"].abs().max() > 0.01  # far from relaxed
    fmax = 0.02  # eV/Å, on atoms and on the cell (TorchSim's criterion)
    relaxed = ts.optimize(
        state,
        ts_model,
        optimizer=ts.frechet_cell_fire,
        convergence_fn=ts.generate_force_convergence_fn(fmax),
        max_steps=500,
    )
    # checked through the ASE path, one structure at a time
    calc = GeoGNNCalculator(emt_cu_model, dtype=torch.float64)
    for atoms in relaxed.to_atoms():
        atoms.calc = calc
        assert np.abs(atoms.get_forces()).max() < fmax
        # measured after relaxing: max |force| 0.012 eV/Å (< fmax), max |stress| 7e-4 eV/Å³
        assert np.abs(atoms.get_stress()).max() < 2e-3
        # the minimum the fitted model reaches is EMT's: 11.567 Å³/atom (ASE's EMT at a = 3.59 Å, where
        # its stress is 1e-4 eV/Å³); measured 11.572-11.576 Å³/atom (0.08 %)
        emt_volume = bulk("Cu", "fcc", a=3.59, cubic=True).get_volume() / 4
        assert atoms.get_volume() / len(atoms) == pytest.approx(emt_volume, rel=0.01)


def test_relaxation_under_pressure_matches_ase(emt_cu_model):
    """Stress sign and units as TorchSim reads them: same volume as ASE's cell relaxation at p = 3.2 GPa.

    TorchSim's cell optimisers push the cell with ``-V (stress + p)``, ``p`` in the stress's units
    (eV/Å³, whatever the docstring says); ASE's ``FrechetCellFilter`` takes ``scalar_pressure`` in eV/Å³.
    A flipped sign would expand the cell instead, and a wrong unit factor would move the volume.
    """
    p = 0.02  # eV/Å³ = 3.2 GPa
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.03, seed=7)
    ts_model = GeoGNNModel(emt_cu_model, device=CPU, dtype=torch.float64)
    fmax = 5e-3
    relaxed = ts.optimize(
        ts.io.atoms_to_state([atoms], CPU, torch.float64),
        ts_model,
        optimizer=ts.frechet_cell_fire,
        convergence_fn=ts.generate_force_convergence_fn(fmax),
        max_steps=1000,
        scalar_pressure=p,
    ).to_atoms()[0]
    ref = atoms.copy()
    ref.calc = GeoGNNCalculator(emt_cu_model, dtype=torch.float64)
    FIRE(FrechetCellFilter(ref, scalar_pressure=p), logfile=None).run(fmax=fmax, steps=1000)
    v0 = bulk("Cu", "fcc", a=3.59, cubic=True).get_volume()  # EMT's zero-pressure volume, for scale
    assert ref.get_volume() < 0.985 * v0  # the pressure compresses the cell (measured by 2 %)
    # measured: volumes agree to 8e-5 relative; diagonal stress + p <= 3e-4 eV/Å³ (both relaxations)
    assert relaxed.get_volume() == pytest.approx(ref.get_volume(), rel=1e-3)
    relaxed.calc = ref.calc
    np.testing.assert_allclose(relaxed.get_stress()[:3], -p, rtol=0, atol=1.5e-3)


def test_checkpoint_path_gives_the_same_batch(tmp_path):
    model = small_model("schnet")
    model.save(tmp_path / "model.pt")
    state = ts.io.atoms_to_state(crystals(), CPU, torch.float64)
    direct = GeoGNNModel(model, device=CPU, dtype=torch.float64)(state)
    loaded = GeoGNNModel(tmp_path / "model.pt", device="cpu", dtype=torch.float64)(state)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(loaded[key], direct[key], rtol=0, atol=1e-12)
