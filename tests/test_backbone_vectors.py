"""``node_vectors`` of the equivariant backbones (EGNN, PaiNN) rotate and reflect with the structure.

test_model.py checks energies, forces and stress only; here the backbones are called directly on
a batch in float64: for an orthogonal M (a rotation, or a rotation times inversion) applied to
positions and cell, ``node_features`` are unchanged and ``node_vectors -> node_vectors @ M.T``
(polar vectors), on a periodic crystal and a molecule. Also: energies are continuous at the
cutoff, and training gradients (double backward through forces) are finite although the vector
features start at exactly zero.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from backbone_configs import SMALL
from conftest import load_jarvis, load_qm9_molecules

import geognn
from geognn import testing as T
from geognn.backbones import BACKBONES

pytestmark = pytest.mark.filterwarnings("ignore::geognn.graph.build.IsolatedAtomWarning")

CUTOFF = 4.0
EQUIVARIANT = ["egnn", "painn"]


def small_backbone(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return BACKBONES[name](cutoff=CUTOFF, **SMALL[name]).double().eval()


def run(backbone, atoms):
    batch = geognn.collate([geognn.build_graph(atoms, CUTOFF, dtype=torch.float64)])
    with torch.no_grad():
        out = backbone(batch)
    return out["node_features"].numpy(), out["node_vectors"].numpy()


@pytest.fixture(scope="module")
def structures():
    rng = np.random.default_rng(3)
    crystal = next(a for a in load_jarvis(50) if len(a) <= 12 and np.any(np.abs(a.cell.angles() - 90) > 1))
    crystal.positions += rng.normal(scale=0.05, size=crystal.positions.shape)
    return [pytest.param(crystal, id="crystal"), pytest.param(load_qm9_molecules(40)[-1], id="molecule")]


@pytest.mark.parametrize("name", EQUIVARIANT)
@pytest.mark.parametrize("parity", [1, -1], ids=["rotation", "reflection"])
def test_node_vectors_transform_as_polar_vectors(name, parity, structures):
    backbone = small_backbone(name)
    rng = np.random.default_rng(11)
    for param in structures:
        atoms = param.values[0]
        mat = parity * T.random_rotation(rng)
        feats, vecs = run(backbone, atoms)
        feats_t, vecs_t = run(backbone, T.transformed(atoms, mat))
        assert vecs.ndim == 3 and vecs.shape[0] == len(atoms) and vecs.shape[2] == 3
        assert np.abs(vecs).max() > 1e-6, "node_vectors are all zero: the check would be empty"
        scale = np.abs(vecs).max()  # relative: the check must not pass just because vectors are small
        np.testing.assert_allclose(feats_t, feats, rtol=0, atol=1e-10, err_msg=f"{param.id} M={mat.tolist()}")
        np.testing.assert_allclose(
            vecs_t / scale, vecs @ mat.T / scale, rtol=0, atol=1e-10, err_msg=f"{param.id} M={mat.tolist()}"
        )


@pytest.mark.parametrize("name", EQUIVARIANT)
def test_energy_continuous_across_cutoff(name):
    from ase import Atoms

    torch.manual_seed(0)
    model = geognn.build_model(name, cutoff=CUTOFF, **SMALL[name]).double().eval()
    eps = 1e-6
    energies = []
    for r in (CUTOFF - eps, CUTOFF + eps):
        (out,) = T.predict(model, [Atoms("CO", positions=[[0, 0, 0], [r, 0, 0]])], stress=False)
        energies.append(out["energy"])
        assert np.abs(out["forces"]).max() < 1e-6
    assert abs(energies[0] - energies[1]) < 1e-9


@pytest.mark.parametrize("name", EQUIVARIANT)
def test_training_gradients_are_finite(name, structures):
    """Loss on forces needs d(forces)/d(weights): finite although v starts at exactly 0."""
    torch.manual_seed(0)
    model = geognn.build_model(name, cutoff=CUTOFF, **SMALL[name]).double().train()
    batch = geognn.collate([geognn.build_graph(p.values[0], CUTOFF, dtype=torch.float64) for p in structures])
    out = model(batch, forces=True)
    loss = out["energy"].square().sum() + out["forces"].square().sum()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", EQUIVARIANT)
def test_repr_and_bad_arguments(name):
    text = repr(BACKBONES[name](hidden_channels=8, num_layers=1))
    assert "hidden_channels=8" in text and "num_layers=1" in text and "cutoff=5.0" in text
    with pytest.raises(ValueError, match="cutoff"):
        BACKBONES[name](cutoff=0.0)
