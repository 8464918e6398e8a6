"""``geognn export`` / ``geognn.export``: a TorchScript file that runs with torch alone.

The exported file is loaded in a fresh Python process that imports only torch (the test checks
that neither geognn nor torch_geometric got imported there), on a molecule and on a periodic
crystal of other sizes and elements than the structure the export traced; its energy and forces
must equal the Python model's.
"""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from ase.build import bulk, molecule

import geognn
from geognn import build_graph, build_model
from geognn.cli import main
from geognn.export import EXPORTABLE, NOT_EXPORTABLE, ExportError, export_model, openmm_module

CUTOFF = 4.0
# float32 throughout. Measured |exported - Python| on these structures (tests/test_export.py
# helpers, every exportable backbone): energy 0 eV (bitwise equal), forces at most 6.3e-7 eV/Å
# (nequip; the others at most 3.0e-7). The
# totals reach -3.4e4 eV, where one float32 step is 0.004 eV: the energy tolerance allows a
# different summation order (2.5 steps); a file traced for the wrong sizes is off by eV.
ENERGY_TOL = 1e-2  # eV
FORCES_TOL = 1e-5  # eV/Å


def _model(backbone: str):
    torch.manual_seed(0)
    model = build_model(backbone, cutoff=CUTOFF, hidden_channels=16, num_layers=2)
    # per-element reference energies and an output scale/shift: the file must carry them too
    model.reference.energies[1] = -13.6
    model.reference.energies[6] = -1029.5
    model.reference.energies[8] = -2041.0
    model.reference.energies[11] = -4418.0
    model.reference.energies[17] = -12498.0
    model.set_scale_shift(2.5, -0.3)
    return model.eval()


def _structures():
    ethanol = molecule("CH3CH2OH")
    nacl = bulk("NaCl", "rocksalt", a=5.64).repeat((2, 1, 1))  # periodic, two elements, 4 atoms
    nacl.rattle(0.05, seed=3)
    return {"molecule": build_graph(ethanol, CUTOFF), "crystal": build_graph(nacl, CUTOFF)}


def _inputs(graph) -> list[torch.Tensor]:
    return [graph.pos, graph.z, graph.cell[0], graph.edge_index, graph.edge_shift.round().long()]


LOADER = textwrap.dedent(
    """
    import json, sys
    import torch
    inputs = torch.load(sys.argv[1])
    out = {"imported": sorted(m for m in ("geognn", "torch_geometric", "ase") if m in sys.modules)}
    for path in sys.argv[2:]:
        module = torch.jit.load(path)
        out[path] = {"cutoff": module.cutoff, "backbone": module.backbone}
        for name, args in inputs.items():
            energy, forces = module(*args)
            out[path][name] = {"energy": float(energy), "forces": forces.tolist()}
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each exportable backbone: checkpoint -> ``geognn export`` -> file, and the Python model."""
    folder = tmp_path_factory.mktemp("export")
    models, files = {}, []
    for backbone in EXPORTABLE:
        model = _model(backbone)
        model.save(folder / f"{backbone}.pt")
        out = folder / f"{backbone}_exported.pt"
        assert main(["export", str(folder / f"{backbone}.pt"), str(out)]) == 0
        models[backbone], files = model, files + [str(out)]
    graphs = _structures()
    torch.save({name: _inputs(g) for name, g in graphs.items()}, folder / "inputs.pt")
    # a fresh interpreter in an empty folder, so that geognn cannot even be found from the cwd
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(folder / "inputs.pt"), *files],
        capture_output=True,
        text=True,
        cwd=tmp_path_factory.mktemp("elsewhere"),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return models, graphs, json.loads(result.stdout), folder


def test_loads_without_geognn(exported):
    _, _, out, _ = exported
    assert out["imported"] == [], f"the loader imported {out['imported']}"


@pytest.mark.parametrize("backbone", EXPORTABLE)
@pytest.mark.parametrize("structure", ["molecule", "crystal"])
def test_same_energy_and_forces_as_the_python_model(exported, backbone, structure):
    models, graphs, out, folder = exported
    got = out[str(folder / f"{backbone}_exported.pt")]
    assert got["backbone"] == backbone and got["cutoff"] == CUTOFF
    ref = models[backbone](graphs[structure], forces=True)
    energy = float(ref["energy"].detach())
    forces = torch.tensor(got[structure]["forces"])
    assert abs(got[structure]["energy"] - energy) < ENERGY_TOL, (got[structure]["energy"], energy)
    assert (forces - ref["forces"].detach()).abs().max() < FORCES_TOL
    # the reference energies are in the file: the total is dominated by them (thousands of eV)
    assert abs(energy) > 100.0


def test_python_api_and_model_left_unchanged(tmp_path):
    model = _model("schnet")
    model.train()
    graph = _structures()["crystal"]
    path = geognn.export(model, tmp_path / "a.pt")
    assert model.training  # the model's mode is restored, its weights still trainable
    assert all(p.requires_grad for p in model.parameters())
    module = torch.jit.load(str(path))
    energy, forces = module(*_inputs(graph))
    model.eval()
    ref = model(graph, forces=True)
    assert abs(float(energy) - float(ref["energy"].detach())) < ENERGY_TOL
    assert (forces - ref["forces"].detach()).abs().max() < FORCES_TOL
    # a checkpoint path works too (``geognn.export`` stays callable after ``import geognn.export``)
    model.save(tmp_path / "m.pt")
    geognn.export(tmp_path / "m.pt", tmp_path / "b.pt")
    assert torch.jit.load(str(tmp_path / "b.pt"))(*_inputs(graph))[0].item() == pytest.approx(float(energy), abs=1e-5)


def test_bad_input_to_the_exported_module_is_an_error(tmp_path):
    path = export_model(_model("schnet"), tmp_path / "a.pt")
    module = torch.jit.load(str(path))
    pos, z, cell, edge_index, shift = _inputs(_structures()["molecule"])
    with pytest.raises(Exception, match="max_z"):
        module(pos, torch.full_like(z, 150), cell, edge_index, shift)
    with pytest.raises(Exception, match="edge_index"):
        module(pos, z, cell, edge_index + 100, shift)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_cli_errors_are_one_line(tmp_path, capsys):
    not_geognn = tmp_path / "weights.pt"
    torch.save({"a": torch.zeros(2)}, not_geognn)
    assert main(["export", str(not_geognn), str(tmp_path / "out.pt")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "weights.pt" in line and "not a geognn checkpoint" in line

    dimenet = build_model("dimenetpp", cutoff=CUTOFF, hidden_channels=8, num_layers=1)
    dimenet.save(tmp_path / "dimenetpp.pt")
    assert main(["export", str(tmp_path / "dimenetpp.pt"), str(tmp_path / "out.pt")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "dimenetpp.pt" in line and "backbone 'dimenetpp' cannot be exported" in line
    assert not (tmp_path / "out.pt").exists()

    assert main(["export", str(tmp_path / "missing.pt"), str(tmp_path / "out.pt")]) == 2
    assert "missing.pt" in _one_error_line(capsys.readouterr().err)

    _model("schnet").save(tmp_path / "schnet.pt")
    blocked = tmp_path / "a_file" / "out.pt"  # its folder would have to replace a file
    (tmp_path / "a_file").write_text("")
    assert main(["export", str(tmp_path / "schnet.pt"), str(blocked)]) == 1
    assert str(blocked) in _one_error_line(capsys.readouterr().err)


def test_every_backbone_is_either_exportable_or_explained():
    assert set(EXPORTABLE) | set(NOT_EXPORTABLE) == set(geognn.BACKBONES)
    assert not set(EXPORTABLE) & set(NOT_EXPORTABLE)
    with pytest.raises(ExportError, match="frame-averaged"):
        export_model(build_model("schnet", hidden_channels=8, num_layers=1, frame_averaging="all"), "unused.pt")


def _openmm_reference(tmp_path):
    """The molecule, its OpenMM module (saved) and the Python model's energy [eV] and forces [eV/Å]."""
    model = _model("painn")
    graph = _structures()["molecule"]
    ref = model(graph, forces=True)
    module = openmm_module(export_model(model, tmp_path / "painn.pt"), graph.z)
    module.save(str(tmp_path / "openmm.pt"))
    return graph, float(ref["energy"].detach()), ref["forces"].detach().double()


def test_openmm_module_units_and_neighbour_list(tmp_path):
    """OpenMM-Torch's interface, run with torch alone: nm in, kJ/mol and kJ/mol/nm out."""
    graph, energy, forces = _openmm_reference(tmp_path)
    module = torch.jit.load(str(tmp_path / "openmm.pt"))
    positions_nm = graph.pos.double() / 10.0  # OpenMM's Reference platform passes float64 nm
    e_kj, f_kj = module(positions_nm)
    assert e_kj.dtype == torch.float64 and f_kj.shape == (len(graph.z), 3)
    # 1 eV = 96.485332 kJ/mol (CODATA 2018), 1 eV/Å = 964.85332 kJ/mol/nm; float32 model inside:
    # its own building of the all-pairs list must give geognn's graph, so the same numbers
    assert abs(float(e_kj) / 96.48533212 - energy) < ENERGY_TOL
    assert (f_kj / 964.8533212 - forces).abs().max() < FORCES_TOL
    with pytest.raises(ValueError, match="max_neighbors"):
        capped = build_model("schnet", cutoff=CUTOFF, max_neighbors=4, hidden_channels=8, num_layers=1)
        openmm_module(export_model(capped, tmp_path / "capped.pt"), graph.z)


def test_openmm_torchforce_gives_geognn_energy_and_forces(tmp_path):
    """Skipped unless openmmtorch imports (see /work/notes: the PyPI wheels do not load with torch 2.13 CPU)."""
    openmm = pytest.importorskip("openmm")
    openmmtorch = pytest.importorskip("openmmtorch")
    graph, energy, forces = _openmm_reference(tmp_path)
    system = openmm.System()
    for _ in range(len(graph.z)):
        system.addParticle(1.0)
    force = openmmtorch.TorchForce(str(tmp_path / "openmm.pt"))
    force.setOutputsForces(True)
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions([openmm.Vec3(*(p / 10.0).tolist()) for p in graph.pos.double()])
    state = context.getState(getEnergy=True, getForces=True)
    e_kj = state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
    f_kj = torch.tensor(
        state.getForces(asNumpy=True).value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.nanometer)
    )
    assert abs(e_kj / 96.48533212 - energy) < ENERGY_TOL
    assert (f_kj / 964.8533212 - forces).abs().max() < FORCES_TOL


def test_float64_model_exports_in_float64(tmp_path):
    model = _model("painn").double()
    graph = _structures()["crystal"]
    for key in ("pos", "cell", "edge_shift"):
        graph[key] = graph[key].double()
    module = torch.jit.load(str(export_model(model, tmp_path / "f64.pt")))
    energy, forces = module(*_inputs(graph))
    ref = model(graph, forces=True)
    # measured: 0 eV and 6e-17 eV/Å (float64 rounding)
    assert energy.dtype == torch.float64
    assert abs(float(energy - ref["energy"].detach())) < 1e-9
    assert (forces - ref["forces"].detach()).abs().max() < 1e-9


@pytest.mark.parametrize("backbone", ["dimenetpp", "mace"])
def test_export_time_check_catches_a_wrong_trace(backbone, tmp_path, monkeypatch):
    """Planted defects: a backbone whose trace bakes in the example's sizes (dimenetpp's triplet
    count), and mace tracing its per-element loop instead of the gathered weights (the trace then
    holds only for the example's elements); the check against the eager model on a structure of
    another size and elements must refuse to write either."""
    import geognn.export as export_module
    from geognn.nn.e3nn_blocks import ElementSelfConnection

    monkeypatch.setattr(export_module, "EXPORTABLE", (*EXPORTABLE, backbone))
    monkeypatch.setattr(ElementSelfConnection, "_gathered", ElementSelfConnection._grouped)
    model = build_model(backbone, cutoff=CUTOFF, hidden_channels=8, num_layers=1)
    with pytest.raises(RuntimeError, match="check structure"):
        export_model(model, tmp_path / "wrong.pt")
    assert not list(tmp_path.iterdir())
