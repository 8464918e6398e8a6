"""Targets as first-class model outputs: readouts on supercells, several heads, reference fits
by counts or fractions, checkpoint round trip and the upgrade of version-1 checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_mp20_crystals, load_qm9_molecules

import geognn
from geognn.model import CHECKPOINT_FORMAT_VERSION, Model, ReferenceEnergies, load_model
from geognn.targets import ENERGY_TARGET, Target, default_readout, energy_target

SHIPPED = geognn.model.Path(geognn.model.__file__).parent / "checkpoints" / "qm9_schnet_u0.pt"
TINY = {"hidden_channels": 16, "num_filters": 16, "num_layers": 2, "num_gaussians": 12}
CRYSTAL_TARGETS = [Target("e_form", "eV/atom", "mean"), Target("energy", "eV", "sum"), Target("band_gap", "eV", "mean")]


def randomised(model: Model, seed: int = 0) -> Model:
    """Random weights and non-trivial reference values, scale and shift for every head (float64)."""
    torch.manual_seed(seed)
    model.reset_parameters()
    g = torch.Generator().manual_seed(seed)
    for k, head in enumerate(model.heads.values()):
        head.reference.energies[1:] = torch.randn(head.reference.energies.numel() - 1, generator=g)
        head.scale.fill_(0.3 + k)
        head.shift.fill_(-0.2 * (k + 1))
    return model.double().eval()


def predict(model, structures, **kw):
    batch = geognn.collate([geognn.build_graph(a, model.cutoff, dtype=torch.float64) for a in structures])
    return model(batch, **kw)


# --------------------------------------------------------------------------- readouts
def test_mean_unchanged_and_sum_doubled_on_a_2x1x1_supercell():
    """Real MP-20 crystals, random weights: an intensive target is the same for the supercell,
    an extensive one doubles (float64; measured differences are ~1e-14 of the values)."""
    model = randomised(geognn.build_model("schnet", cutoff=4.0, targets=CRYSTAL_TARGETS, stress=True, **TINY))
    crystals = load_mp20_crystals(4)
    supercells = [a.repeat((2, 1, 1)) for a in crystals]
    small, big = predict(model, crystals), predict(model, supercells)
    for name in ("e_form", "band_gap"):
        np.testing.assert_allclose(big[name].detach(), small[name].detach(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(big["energy"].detach(), 2 * small["energy"].detach(), rtol=1e-10, atol=1e-10)
    # stress is intensive too, and the values are not trivially equal across structures
    np.testing.assert_allclose(big["stress"].detach(), small["stress"].detach(), atol=1e-9)
    assert small["e_form"].detach().std() > 1e-3 and small["energy"].detach().abs().min() > 1e-3
    # mean readout = sum readout of the same per-atom values divided by the atom count
    natoms = torch.tensor([len(a) for a in crystals], dtype=torch.float64)
    sums = torch.stack([v.sum() for v in small["node_e_form"].detach().split(natoms.long().tolist())])
    np.testing.assert_allclose(small["e_form"].detach(), sums / natoms, rtol=1e-12)


def test_each_target_by_name_and_forces_only_from_the_energy_target():
    crystals = load_mp20_crystals(2)
    model = randomised(geognn.build_model("schnet", cutoff=4.0, targets=CRYSTAL_TARGETS, **TINY))
    out = predict(model, crystals)
    assert {"e_form", "energy", "band_gap", "forces"} <= set(out) and out["e_form"].shape == (2,)
    assert model.energy_target.name == "energy"
    # the energy gradient only: forces equal -d(energy)/dpos computed by hand
    batch = geognn.collate([geognn.build_graph(a, 4.0, dtype=torch.float64) for a in crystals])
    batch.pos.requires_grad_(True)
    energy = model(batch, forces=False)["energy"].sum()
    (grad,) = torch.autograd.grad(energy, batch.pos)
    np.testing.assert_allclose(out["forces"].detach(), -grad, atol=1e-12)
    intensive = geognn.build_model("schnet", cutoff=4.0, targets=[Target("e_form", "eV/atom", "mean")], **TINY)
    assert intensive.energy_target is None and intensive.compute_forces is False
    assert "forces" not in predict(intensive.double(), crystals)
    with pytest.raises(ValueError, match="forces and stress need an extensive energy target"):
        predict(intensive.double(), crystals, forces=True)


def test_heads_are_independent_and_default_is_the_energy_model():
    default = geognn.build_model("schnet", **TINY)
    assert default.targets == (ENERGY_TARGET,) and list(default.heads) == ["energy"]
    assert default.config["targets"] == [{"name": "energy", "unit": "eV", "readout": "sum"}]
    model = geognn.build_model("schnet", targets=CRYSTAL_TARGETS, **TINY)
    a, b = model.heads["e_form"].mlp, model.heads["band_gap"].mlp
    assert not torch.equal(a[0].weight, b[0].weight)  # each head has its own weights
    model.set_scale_shift(2.0, 1.0, target="band_gap")
    assert float(model.heads["band_gap"].scale) == 2.0 and float(model.heads["e_form"].scale) == 1.0
    with pytest.raises(ValueError, match="no target 'nope'.*'e_form', 'energy', 'band_gap'"):
        model.head("nope")


@pytest.mark.parametrize(
    "targets, message",
    [
        ([Target("a"), Target("a")], "target names must be unique"),
        ([], "at least one target"),
        ([{"name": "x", "units": "eV"}], "expected keys name, unit, readout"),
    ],
)
def test_bad_targets_are_clear_errors(targets, message):
    with pytest.raises(ValueError, match=message):
        Model("schnet", targets=targets, backbone_kwargs=TINY)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="forces"), "reserved"),
        (dict(name="gap_std"), "reserved"),
        (dict(name="node_x"), "reserved"),
        (dict(name="band gap"), "identifier"),
        (dict(name="gap", readout="max"), r"readout 'max'; choose one of \['sum', 'mean'\]"),
    ],
)
def test_target_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Target(**kwargs)


def test_default_readout_rules():
    assert default_readout("eV") == "sum" and default_readout("Hartree") == "sum"
    assert default_readout("eV/atom") == "mean" and default_readout("meV/atom") == "mean"
    assert default_readout("K") == "mean" and default_readout("") == "mean"
    assert default_readout("eV", "band_gap") == "mean" and default_readout("eV", "homo") == "mean"
    assert energy_target([Target("gap", "eV", "mean"), Target("U0", "eV", "sum")]).name == "U0"
    assert energy_target([Target("e_form", "eV/atom", "mean")]) is None


# --------------------------------------------------------------------------- reference fits
def _composition_data(seed=0, n=25):
    rng = np.random.default_rng(seed)
    zs = [rng.choice([3, 8, 26, 15], size=rng.integers(2, 14)) for _ in range(n)]
    y = rng.normal(size=n)  # arbitrary labels: the fit is just least squares
    return zs, y


@pytest.mark.parametrize("readout", ["sum", "mean"])
def test_reference_fit_by_counts_or_fractions_matches_lstsq_by_hand(readout):
    zs, y = _composition_data()
    elements = [3, 8, 15, 26]
    counts = np.array([[np.sum(z == e) for e in elements] for z in zs], dtype=float)  # [B, 4]
    design = counts if readout == "sum" else counts / counts.sum(1, keepdims=True)
    expected = np.linalg.lstsq(design, y, rcond=None)[0]
    ref = ReferenceEnergies().double()
    ref.fit([torch.as_tensor(z) for z in zs], torch.as_tensor(y), readout=readout)
    np.testing.assert_allclose([float(ref.energies[e]) for e in elements], expected, rtol=1e-8, atol=1e-10)
    assert float(ref.energies[1]) == 0.0  # absent element
    other = ReferenceEnergies().double()
    other.fit([torch.as_tensor(z) for z in zs], torch.as_tensor(y), readout="mean" if readout == "sum" else "sum")
    assert not torch.allclose(other.energies, ref.energies)  # the two fits differ on this data


# --------------------------------------------------------------------------- checkpoints
def test_multi_target_save_load_round_trip(tmp_path):
    crystals = load_mp20_crystals(3)
    model = randomised(
        geognn.build_model(
            "schnet", cutoff=4.0, targets=CRYSTAL_TARGETS, stress=True, metadata={"trained_on": "test"}, **TINY
        ),
        seed=3,
    )
    path = tmp_path / "m.pt"
    model.save(path)
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == CHECKPOINT_FORMAT_VERSION == 2
    assert payload["config"]["targets"] == [t.to_dict() for t in CRYSTAL_TARGETS]
    loaded = load_model(path)
    assert loaded.targets == tuple(CRYSTAL_TARGETS) and loaded.compute_stress
    a, b = predict(model, crystals), predict(loaded, crystals)
    for key in ("e_form", "energy", "band_gap", "forces", "stress"):
        np.testing.assert_allclose(a[key].detach(), b[key].detach(), rtol=0, atol=1e-12, err_msg=key)
    for name in ("e_form", "band_gap"):
        assert torch.equal(model.heads[name].reference.energies, loaded.heads[name].reference.energies)


def test_version_1_checkpoint_loads_with_the_same_predictions(tmp_path):
    """The shipped QM9 checkpoint (version 1, one energy head) loads as the target 'energy';
    re-saved as version 2, it predicts exactly the same numbers as a hand-built version-1 model."""
    payload = torch.load(SHIPPED, weights_only=True)
    assert payload["format_version"] == 1 and "energy_head.0.weight" in payload["state_dict"]
    model = load_model(SHIPPED)
    assert model.targets == (ENERGY_TARGET,) and model.metadata["target"] == "U0"
    # the old forward by hand: head -> * scale + shift + reference -> sum
    sd = {k: v.double() for k, v in payload["state_dict"].items()}
    from ase.build import molecule

    model.double()  # float64 so that the comparison is not limited by float32 sums of -4217 eV
    mol = molecule("CH3CH2OH")
    batch = geognn.collate([geognn.build_graph(mol, model.cutoff, dtype=torch.float64)])
    feats = model.backbone(batch)["node_features"]
    h = torch.nn.functional.linear(feats, sd["energy_head.0.weight"], sd["energy_head.0.bias"])
    act = model.heads["energy"].mlp[1]  # the activation module (no parameters)
    h = torch.nn.functional.linear(act(h), sd["energy_head.2.weight"], sd["energy_head.2.bias"]).squeeze(-1)
    by_hand = (h * sd["scale"] + sd["shift"] + sd["reference.energies"][batch.z]).sum()
    out = model(batch)
    assert float(out["energy"]) == pytest.approx(float(by_hand), abs=1e-9)  # float64: same arithmetic
    model.save(tmp_path / "v2.pt")
    again = load_model(tmp_path / "v2.pt")
    assert float(again(batch)["energy"]) == float(out["energy"])


def test_version_1_egnn_checkpoint_keeps_fixed_coordinates(tmp_path):
    """Version-1 EGNN checkpoints were written when EGNN never moved its coordinates; they must
    load as update_coords=False (the default is now True) and predict what they predicted."""
    import geognn
    from geognn.model import load_model, upgrade_checkpoint

    torch.manual_seed(0)
    old = geognn.build_model("egnn", cutoff=4.0, hidden_channels=16, num_layers=2, update_coords=False)
    state = {
        (
            "energy_head." + k[len("heads.energy.mlp.") :]
            if k.startswith("heads.energy.mlp.")
            else k.replace("heads.energy.", "")
        ): v
        for k, v in old.state_dict().items()
    }
    config = {k: v for k, v in old.config.items() if k != "targets"}
    config["backbone_kwargs"] = {k: v for k, v in config["backbone_kwargs"].items() if k != "update_coords"}
    payload = {"format_version": 1, "config": config, "state_dict": state}
    assert upgrade_checkpoint(payload)["config"]["backbone_kwargs"]["update_coords"] is False
    torch.save(payload, tmp_path / "v1_egnn.pt")
    loaded = load_model(tmp_path / "v1_egnn.pt")
    batch = geognn.collate([geognn.build_graph(a, 4.0) for a in load_qm9_molecules(2)])
    assert torch.allclose(loaded(batch)["energy"], old.eval()(batch)["energy"], atol=1e-5)
