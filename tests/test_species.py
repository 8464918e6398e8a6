"""Per-element tables sized to the species a model is built for (``species=[...]``).

A backbone built with ``species=[1, 6, 7, 8, 9]`` has 5 rows in each per-element table where the
default (``species=None``) has one per Z in 0..100. Checked here: the parameter count drops by
exactly the removed rows times the per-element width derived by hand from each backbone's maths;
a species model whose rows are copied from a full-table model gives the same energies and forces
for every backbone; an element outside the species is a ValueError naming it and the species;
``geognn train`` fills species from the data, the checkpoint keeps them and ``geognn predict`` and
``geognn.export`` rebuild the same shapes; the shipped checkpoints (no species) still load.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.data import atomic_numbers, chemical_symbols
from ase.io import write
from conftest import SHARED_DATA, load_qm9_molecules

import geognn
from geognn import build_graph, build_model
from geognn.backbones import SMALL_SETTINGS
from geognn.calculator import GeoGNNCalculator
from geognn.cli import CRYSTAL_CHECKPOINT, DEFAULT_CHECKPOINT, main
from geognn.graph.build import collate
from geognn.model import Ensemble, Model, load_checkpoint, load_model
from geognn.nn.species import SpeciesIndex, normalise_species
from geognn.train.loop import data_species

pytestmark = pytest.mark.usefixtures("one_thread")

QM9_SPECIES = [1, 6, 7, 8, 9]  # H, C, N, O, F
FULL_ROWS = 101  # species=None, max_z=100 (the default): one row per Z in 0..100
CUTOFF = 4.0

#: Weights per element (the width of one row, summed over every per-element table) at
#: SMALL_SETTINGS, derived by hand from each backbone's definition, not read off the modules.
ROW_WIDTH = {
    # one atom embedding of width hidden_channels (16 or 8) and nothing else per element
    "schnet": 16,
    "dimenetpp": 16,
    "egnn": 16,
    "painn": 16,
    "ponita": 8,
    "pnita": 8,
    # FAENet: the element embedding has hidden - 2 * pg_hidden - tag_hidden = 16 - 8 - 0 channels;
    # its period (8 rows) and group (19 rows) embeddings are not per element
    "faenet": 16 - 2 * 4 - 0,
    # NequIP (C = 8, l <= 2, both parities, 2 layers): embedding C; the gate's input is
    # 8x0e + 8x0o (scalars) + 32x0e (one gate per gated irrep: 4 irreps x 8) + 8x(1o, 1e, 2e, 2o).
    # The element self-connection has a C_in x C_out matrix per element and path with equal irreps:
    # layer 1 (8x0e in): 0e -> 8x0e and 0e -> 32x0e = 64 + 256 = 320; layer 2 (all six irreps in):
    # the same 320 for 0e plus 64 for each of 0o, 1o, 1e, 2e, 2o = 640.
    "nequip": 8 + 320 + 640,
    # MACE (C = 8, A up to l = 2, hidden 0e + 1o, correlation 3, 2 layers): embedding C; per layer
    # the product basis has w^(1): C per hidden irrep = 16, and one weight per channel and path of
    # each channel-wise product: nu = 2 (A x A into l <= 2, both parities): 15 paths
    # (0e0e, 0e1o, 0e2e, 1o0e, 1o1o->0e/1e/2e, 1o2e->1o/2o, 2e0e, 2e1o->1o/2o, 2e2e->0e/1e/2e) = 120;
    # nu = 3 (into 0e + 1o): 9 paths (0e0e, 0e1o, 1o0e, 1o1o->0e, 1o2e->1o, 1e1o->1o, 2e1o->1o,
    # 2e2e->0e, 2o2e->1o) = 72; the self-connection: layer 1 (8x0e in) 0e->0e = 64, layer 2
    # (8x0e + 8x1o in) 64 + 64 = 128.
    "mace": 8 + (16 + 120 + 72 + 64) + (16 + 120 + 72 + 128),
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _qm9_batch(dtype=torch.float64):
    """Three molecules holding all five QM9 elements (H, C, N, O, F), as one batch."""
    return collate([build_graph(molecule(name), CUTOFF, dtype=dtype) for name in ("CH3CH2OH", "CH3NO2", "CF4")])


def _copy_rows(full: Model, small: Model, species: list[int]) -> int:
    """Load ``full``'s weights into ``small``: per-element tables keep the rows of ``species``
    (row Z of the full table -> row k of the species table, species ascending). Returns how many
    tensors were per-element tables."""
    full_state, state, tables = full.state_dict(), {}, 0
    for key, value in small.state_dict().items():
        ref = full_state[key]
        if ref.shape != value.shape:
            assert ref.shape[0] == FULL_ROWS and value.shape == (len(species), *ref.shape[1:]), key
            ref, tables = ref[species], tables + 1
        state[key] = ref
    small.load_state_dict(state)
    return tables


def test_species_index_maps_atomic_numbers_to_rows_and_names_unknown_elements():
    index = SpeciesIndex([8, "H", 6])
    assert index.species == (1, 6, 8) and index.num_elements == 3 and index.max_z == 8
    assert index(torch.tensor([8, 1, 6, 6])).tolist() == [2, 0, 1, 1]  # ascending Z
    with pytest.raises(ValueError, match=r"^elements Cl \(Z=17\), Z=150 have no weights in this model, "):
        index(torch.tensor([1, 17, 150, 17]))
    with pytest.raises(ValueError, match=r"built for the species H, C, O \(species=\[1, 6, 8\]\)"):
        index(torch.tensor([7]))
    with pytest.raises(ValueError, match="Z=-1"):  # never an IndexError
        index(torch.tensor([-1]))
    legacy = SpeciesIndex(None, max_z=100)  # the layout before species: row = Z
    assert legacy.num_elements == FULL_ROWS and legacy(torch.tensor([1, 100])).tolist() == [1, 100]
    with pytest.raises(ValueError, match=r"element Z=104 is beyond what this model can embed \(max_z=100\)"):
        legacy(torch.tensor([1, 104]))
    assert normalise_species(["F", 1, 6, 6]) == [1, 6, 9] and normalise_species(None) is None
    for bad, message in (([], "empty"), ([0], "0 is not an atomic number"), (["Xx"], "'Xx' is not an element"),
                         ([1.5], "1.5 is not"), ([119], "119 is not"), ("H", "a list")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            normalise_species(bad)


@pytest.mark.parametrize("name", sorted(SMALL_SETTINGS))
def test_parameter_count_drops_by_the_removed_rows(name):
    full = build_model(name, cutoff=CUTOFF, **SMALL_SETTINGS[name])
    for species in ([6], QM9_SPECIES):
        small = build_model(name, cutoff=CUTOFF, species=species, **SMALL_SETTINGS[name])
        assert _count(full) - _count(small) == (FULL_ROWS - len(species)) * ROW_WIDTH[name]
        assert small.species == tuple(species) and small.config["backbone_kwargs"]["species"] == species


@pytest.mark.parametrize("name", sorted(SMALL_SETTINGS))
def test_species_model_equals_the_full_model_with_its_rows(name):
    torch.manual_seed(0)
    full = build_model(name, cutoff=CUTOFF, **SMALL_SETTINGS[name]).double().eval()
    small = build_model(name, cutoff=CUTOFF, species=QM9_SPECIES, **SMALL_SETTINGS[name]).double().eval()
    assert _copy_rows(full, small, QM9_SPECIES) >= 1
    batch = _qm9_batch()
    ref, out = full(batch), small(batch)
    # the same operations on the same numbers: measured 0 difference (bitwise) for every backbone;
    # 1e-9 eV / eV/Å only allows for a change of summation order. With the species rows planted in
    # reverse order the energies differed by 0.3 eV (faenet) to 17 eV (schnet), forces by >= 0.15 eV/Å.
    assert (out["energy"] - ref["energy"]).abs().max() < 1e-9
    assert (out["forces"] - ref["forces"]).abs().max() < 1e-9
    chloro = collate([build_graph(molecule("CH3Cl"), CUTOFF, dtype=torch.float64)])
    with pytest.raises(ValueError, match=r"Cl \(Z=17\) has no weights in this \w+, which was built for the species "):
        small(chloro)


def test_frame_averaging_calculator_and_ensemble_carry_the_species():
    torch.manual_seed(0)
    fa = build_model("faenet", cutoff=CUTOFF, frame_averaging="all", species=[1, 6, 8], **SMALL_SETTINGS["faenet"])
    assert fa.species == (1, 6, 8)
    chloro = molecule("CH3Cl")
    with pytest.raises(ValueError, match=r"Cl \(Z=17\) has no weights in this FAENet"):
        fa(collate([build_graph(chloro, CUTOFF)]))
    chloro.calc = GeoGNNCalculator(fa)
    with pytest.raises(ValueError, match=r"Cl \(Z=17\)"):
        chloro.get_potential_energy()
    other = build_model("faenet", cutoff=CUTOFF, frame_averaging="all", species=[1, 6, 7], **SMALL_SETTINGS["faenet"])
    ensemble = Ensemble([fa, other])
    assert ensemble.species == (1, 6) and ensemble.unknown_elements([1, 7, 8, 17]) == [7, 8, 17]


def test_export_keeps_the_species(tmp_path):
    torch.manual_seed(0)
    model = build_model("schnet", cutoff=CUTOFF, species=QM9_SPECIES, **SMALL_SETTINGS["schnet"]).eval()
    module = torch.jit.load(str(geognn.export(model, tmp_path / "m.pt")))
    assert list(module.species) == QM9_SPECIES and module.max_z == 9 and module.backbone == "schnet"
    ethanol = build_graph(molecule("CH3CH2OH"), CUTOFF)
    inputs = [ethanol.pos, ethanol.z, ethanol.cell[0], ethanol.edge_index, ethanol.edge_shift.round().long()]
    energy, _ = module(*inputs)
    # float32; the export check bounds |exported - eager| by 1e-3 eV; measured 0 eV on this model
    assert float(energy) == pytest.approx(float(model(ethanol)["energy"].detach()), abs=1e-3)
    inputs[1] = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 3])  # a lithium where an H was: not among the species
    with pytest.raises(Exception, match="species"):
        module(*inputs)


def test_data_species_takes_every_split_and_none_for_lazy_data():
    graphs = SimpleNamespace(graphs=[{"z": torch.tensor(z)} for z in ([6, 1, 1], [8, 1, 1], [9, 6, 1], [9, 9])])
    assert data_species(graphs, {"train": [0, 1], "val": [2], "test": [3]}) == [1, 6, 8, 9]
    assert data_species(graphs, {"train": [0], "val": [1], "test": []}) == [1, 6, 8]
    assert data_species(SimpleNamespace(graphs=None), {"train": [0], "val": [1], "test": []}) is None


def _qm9_elements(ids: list[str]) -> list[int]:
    """Atomic numbers of the QM9 molecules with these ids, read from the CSV with pandas (not geognn)."""
    import ast

    import pandas as pd

    df = pd.read_csv(SHARED_DATA / "qm9" / "qm9pack_subset_stride26.csv", usecols=["Index", "Elements"])
    wanted = set(ids)
    found = {e for idx, el in zip(df["Index"], df["Elements"]) if str(idx) in wanted for e in ast.literal_eval(el)}
    return sorted(atomic_numbers[e] for e in found)


def test_train_fills_species_and_predict_and_load_keep_them(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--limit", "40", "--epochs", "1", "--time-limit", "0", "--threads", "1", "--out", str(out)]
    assert main([*args, "--set", "backbone_kwargs={hidden_channels: 8, num_filters: 8, num_layers: 1}"]) == 0
    split = json.loads((out / "split.json").read_text())
    expected = _qm9_elements([i for part in ("train", "val", "test") for i in split["ids"][part]])
    assert set(expected) <= set(QM9_SPECIES) and len(expected) >= 3
    config = load_checkpoint(out / "model.pt")["config"]
    assert config["backbone_kwargs"]["species"] == expected
    model = load_model(out / "model.pt")
    assert model.species == tuple(expected) and model.backbone.embedding.weight.shape == (len(expected), 8)

    (tmp_path / "in").mkdir()
    write(tmp_path / "in" / "water.xyz", molecule("H2O"))
    write(tmp_path / "in" / "lih.xyz", Atoms("LiH", positions=[[0, 0, 0], [0, 0, 1.6]]))
    capsys.readouterr()
    code = main(["predict", "--checkpoint", str(out / "model.pt"), str(tmp_path / "in")])
    stdout, err = capsys.readouterr()
    assert code == 1 and "H2O" in stdout  # the water is predicted, the LiH reported
    symbols = ", ".join(chemical_symbols[z] for z in expected)
    assert f"lih.xyz: element Li (Z=3) has no weights in this model, which was built for the species {symbols}" in err
    assert "Traceback" not in err

    # null in the config: every Z up to max_z, as before species
    every_z = "backbone_kwargs={hidden_channels: 8, num_filters: 8, num_layers: 1, species: null}"
    assert main([*args, "--out", str(tmp_path / "all"), "--set", every_z]) == 0
    assert load_model(tmp_path / "all" / "model.pt").backbone.embedding.weight.shape[0] == FULL_ROWS


def test_shipped_checkpoints_without_species_load_and_shrink_exactly():
    old = load_model(DEFAULT_CHECKPOINT)
    assert old.species is None and old.max_z == 100 and old.backbone.embedding.weight.shape[0] == FULL_ROWS
    ensemble = load_model(CRYSTAL_CHECKPOINT)
    assert ensemble.species is None and all(m.species is None for m in ensemble.members)
    # the shipped QM9 weights in a QM9-species model: the same energies on real QM9 molecules
    payload = load_checkpoint(DEFAULT_CHECKPOINT)
    config = {**payload["config"], "backbone_kwargs": {**payload["config"]["backbone_kwargs"], "species": QM9_SPECIES}}
    small = Model(**config).eval()
    assert _copy_rows(old, small, QM9_SPECIES) == 1
    assert _count(old) - _count(small) == (FULL_ROWS - 5) * payload["config"]["backbone_kwargs"]["hidden_channels"]
    batch = collate([build_graph(a, old.cutoff) for a in load_qm9_molecules(8)])
    # float32, same operations on the same numbers: measured bitwise equal; 1e-4 eV is 0.1 meV
    assert (small(batch)["energy"] - old(batch)["energy"]).abs().max() < 1e-4


def test_a_run_started_before_species_resumes_with_its_layout(tmp_path):
    """A run folder from before species: no species in config.json or model.pt, 101-row tables."""
    out = tmp_path / "run"
    every_z = "backbone_kwargs={hidden_channels: 8, num_filters: 8, num_layers: 1, species: null}"
    args = ["--limit", "30", "--time-limit", "0", "--threads", "1", "--out", str(out)]
    assert main(["train", *args, "--epochs", "1", "--set", every_z]) == 0
    config = json.loads((out / "config.json").read_text())
    del config["backbone_kwargs"]["species"]
    (out / "config.json").write_text(json.dumps(config))
    payload = torch.load(out / "model.pt", weights_only=True)
    del payload["config"]["backbone_kwargs"]["species"]
    torch.save(payload, out / "model.pt")
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    resumed = load_checkpoint(out / "model.pt")["config"]["backbone_kwargs"]
    assert resumed.get("species") is None
    assert load_model(out / "model.pt").backbone.embedding.weight.shape[0] == FULL_ROWS
