"""EGNN: the forward pass against the docstring's equations, and the scale of its inputs.

The symmetry, batching, force and cutoff checks run for every backbone in test_model.py and
test_backbone_vectors.py. Here:

- one EGNN computed atom by atom with plain loops, *moving the coordinates* as the paper's Eq. 4
  does (x_i <- x_i + C sum_j (x_i - x_j)/(|x_i - x_j| + 1) phi_x(m_ij) f_c) and reading each
  layer's distances from the moved positions (neighbours and periodic images from ASE's
  neighbour list), reusing only the module's MLP weights, matches the backbone's forward, which
  never moves ``pos`` but updates relative vectors; on a molecule and on a periodic crystal,
  with and without coordinate updates;
- at initialisation the geometric inputs of phi_e's first Linear carry as much of its
  pre-activation as the node features do (before ``s`` they carried ~1/10: messages hardly
  depended on distances, and EGNN learned QM9 energies far more slowly than SchNet/PaiNN);
- the energies, forces and displacements of an untrained model stay on a sane scale;
- the property of the Gaussian basis that ``s`` relies on: ``sum_k e_k(d)^2 ~ sqrt(pi)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list
from conftest import load_mp20_crystals, load_qm9_molecules

import geognn
from geognn.backbones import EGNN

CUTOFF = 3.0


def reference_forward(model: EGNN, atoms: Atoms, avg_num_neighbors: float, update_coords: bool):
    """The paper's equations with explicit loops over ASE's (i, j, image) pairs, float64.

    Returns (h [N, H], displacement x^L - x^0 [N, 3]).
    """
    hidden = model.hparams["hidden_channels"]
    num_rbf = model.hparams["num_rbf"]
    s = math.sqrt(2.0 * hidden / math.sqrt(math.pi))
    centres = np.linspace(0.0, CUTOFF, num_rbf)
    gamma = 0.5 / (centres[1] - centres[0]) ** 2
    first, second, images = neighbor_list("ijS", atoms, CUTOFF)  # ASE: centre i, neighbour j, image S
    cell = np.asarray(atoms.cell)
    n = len(atoms)
    h = model.embedding.weight.detach()[torch.as_tensor(atoms.numbers)].clone()  # [N, H]
    x0 = atoms.positions.copy()
    x = x0.copy()  # the coordinates each layer reads (moved only with update_coords)
    total = np.zeros((n, 3))  # x^L - x^0 as the paper's update would make it
    for layer in model.layers:
        m_sum = torch.zeros(n, hidden, dtype=torch.float64)
        move = np.zeros((n, 3))
        for i, j, image in zip(first, second, images):
            d0 = float(np.linalg.norm(x0[j] + image @ cell - x0[i]))  # input distance: envelope, basis
            diff = x[i] - (x[j] + image @ cell)  # x_i - x_j at this layer (the image of the moved j)
            env = 0.5 * (math.cos(math.pi * d0 / CUTOFF) + 1.0)
            a = np.concatenate([[s * float(diff @ diff) / CUTOFF**2], s * np.exp(-gamma * (d0 - centres) ** 2)])
            m = env * layer.phi_e(torch.cat([h[i], h[j], torch.as_tensor(a)]))  # [H]
            m_sum[i] += m
            move[i] += diff / (np.linalg.norm(diff) + 1.0) * env * float(layer.phi_x(m))
        h = h + layer.phi_h(torch.cat([h, m_sum / avg_num_neighbors], dim=-1))
        total += move / avg_num_neighbors
        if update_coords:
            x = x0 + total
    return h, torch.as_tensor(total)


MOLECULE = Atoms(
    numbers=[6, 1, 8, 7, 1],
    positions=[[0.0, 0.0, 0.0], [1.1, 0.2, -0.1], [-0.4, 1.3, 0.5], [2.6, 1.9, 0.3], [0.2, -0.9, 2.4]],
)
#: a small triclinic crystal whose 3 Å neighbourhoods cross the cell: periodic images matter
CRYSTAL = Atoms(
    numbers=[14, 8, 8],
    positions=[[0.1, 0.0, 0.2], [1.3, 0.9, 0.4], [0.6, 1.9, 1.6]],
    cell=[[3.2, 0.0, 0.0], [0.7, 3.0, 0.0], [0.4, 0.5, 2.9]],
    pbc=True,
)


@pytest.mark.parametrize("update_coords", [True, False])
@pytest.mark.parametrize("atoms", [MOLECULE, CRYSTAL], ids=["molecule", "crystal"])
def test_forward_matches_equations_written_out(atoms, update_coords):
    torch.manual_seed(0)
    avg = 3.0
    model = EGNN(
        hidden_channels=8, num_layers=3, num_rbf=6, cutoff=CUTOFF, avg_num_neighbors=avg, update_coords=update_coords
    ).double()
    batch = geognn.collate([geognn.build_graph(atoms, CUTOFF, dtype=torch.float64)])
    if not atoms.pbc.any():
        assert batch["edge_index"].shape[1] < len(atoms) * (len(atoms) - 1), "every pair is within the cutoff"
    else:
        assert bool((batch["edge_shift"] != 0).any()), "no edge crosses the cell"
    with torch.no_grad():
        out = model(batch)
        h_ref, u_ref = reference_forward(model, atoms, avg, update_coords)
        _, u_other = reference_forward(model, atoms, avg, not update_coords)
    assert torch.abs(out["node_vectors"]).max() > 1e-3  # the vector check is not empty
    # the moving geometry matters: the two settings give different displacements (by > 1e-6 Å)
    assert float((u_ref - u_other).abs().max()) > 1e-6
    # 1e-7, not 1e-12: the module's basis centres are made in float32 before .double()
    torch.testing.assert_close(out["node_features"], h_ref, rtol=0, atol=1e-7)
    torch.testing.assert_close(out["node_vectors"][:, 0, :], u_ref, rtol=0, atol=1e-7)


def test_fixed_coordinates_give_a_distance_only_model():
    """update_coords=False: h depends on distances only, so the U and S 4-chains (equal distances
    along the bonds, different orientation of the ends) give the same pooled h; with updates they
    differ, because moved coordinates carry orientation to the next layer."""
    from geognn.expressivity.pairs import k_chain_pair

    pair = k_chain_pair(4)
    batch = geognn.collate([pair.g1, pair.g2])
    pooled = {}
    for update in (False, True):
        torch.manual_seed(0)
        # w / A = 15: visible displacements at random init (~0.3 Å per layer; with the defaults
        # they are ~1e-3 Å and the second-order gap ~1e-11)
        model = EGNN(
            hidden_channels=8, num_layers=3, cutoff=3.0, update_coords=update, avg_num_neighbors=2.0, coords_weight=30.0
        ).double()
        with torch.no_grad():
            h = model(batch)["node_features"]
        pooled[update] = torch.stack([h[:6].sum(0), h[6:].sum(0)])
    gap_fixed = float((pooled[False][0] - pooled[False][1]).norm())
    gap_moving = float((pooled[True][0] - pooled[True][1]).norm())
    assert gap_fixed < 1e-12  # float64 round-off only
    assert gap_moving > 1e-6, gap_moving


@pytest.mark.parametrize("update_coords", [True, False])
def test_untrained_energies_forces_and_displacements_are_on_a_sane_scale(update_coords):
    """Default EGNN (H = 128, 4 layers, 5 Å) in a ``geognn.Model`` at initialisation, seed 0.

    Measured (seeds 0 and 1, both settings): energy per atom spread 0.2-0.7 eV, force rms
    0.17-0.38 eV/Å (max < 1 eV/Å), largest displacement 0.05-0.10 Å. The bounds are a factor ~5
    around that: a coordinate update that blew up (no normalisation, no envelope) would move
    atoms by Å and give forces of many eV/Å.
    """
    torch.manual_seed(0)
    model = geognn.build_model("egnn", cutoff=5.0, update_coords=update_coords).double()
    for structures in (load_qm9_molecules(40)[-6:], load_mp20_crystals(4)):
        batch = geognn.collate([geognn.build_graph(a, 5.0, dtype=torch.float64) for a in structures])
        out = model(batch)
        per_atom = out["energy"].detach() / batch["natoms"]
        force_rms = float(out["forces"].detach().square().sum(-1).mean().sqrt())
        with torch.no_grad():
            moved = float(model.backbone(batch)["node_vectors"].norm(dim=-1).max())
        assert 0.03 < float(per_atom.std()) < 3.0, per_atom
        assert 0.05 < force_rms < 2.0, force_rms
        assert 1e-3 < moved < 0.5, moved


def test_gaussian_basis_squared_norm_is_sqrt_pi():
    """``s`` assumes sum_k e_k(d)^2 ~ sqrt(pi) inside the cutoff, for any number of functions."""
    for num_rbf in (16, 50):
        model = EGNN(num_rbf=num_rbf, cutoff=5.0).double()
        d = torch.linspace(0.5, 4.5, 41, dtype=torch.float64)
        sq = model.rbf(d).square().sum(-1)
        np.testing.assert_allclose(sq.numpy(), math.sqrt(math.pi), rtol=0.02)


def first_linear_parts(model: EGNN, atoms_list, layer: int = 0):
    """Std over edges and channels of phi_e's first pre-activation: (node part, geometric part).

    ``W [h_i, h_j, a_ij] = W_h [h_i, h_j] + W_a a_ij``, with the ``h`` that layer receives.
    """
    batch = geognn.collate([geognn.build_graph(a, model.cutoff) for a in atoms_list])
    captured = {}
    target = model.layers[layer].phi_e[0][0]  # phi_e's first nn.Linear

    def keep_input(module, inputs, output):
        captured["x"] = inputs[0]

    hook = target.register_forward_hook(keep_input)
    with torch.no_grad():
        model(batch)
    hook.remove()
    x = captured["x"]  # [E, 2H + 1 + G]
    width = 2 * model.hparams["hidden_channels"]
    w = target.weight.detach()
    node = x[:, :width] @ w[:, :width].T
    geometric = x[:, width:] @ w[:, width:].T
    return float(node.std()), float(geometric.std())


@pytest.mark.parametrize("seed", [0, 1])
def test_distances_weigh_as_much_as_node_features_at_init(seed):
    """Default EGNN on QM9 molecules: the geometric share of phi_e's first pre-activation.

    Unscaled (s = 1) the geometric part had 0.08-0.10 of the node part's std; with s the ratio
    is 1.0-1.2 (seeds 0 and 1).
    """
    torch.manual_seed(seed)
    model = EGNN(cutoff=5.0).eval()
    molecules = load_qm9_molecules(40)[-8:]
    node, geometric = first_linear_parts(model, molecules)
    assert 0.6 < geometric / node < 1.6, (node, geometric)
    # and the distances do change the messages: moving atoms changes node features noticeably
    stretched = [a.copy() for a in molecules]
    for a in stretched:
        a.positions *= 1.05
    batch = geognn.collate([geognn.build_graph(a, 5.0) for a in molecules])
    batch_s = geognn.collate([geognn.build_graph(a, 5.0) for a in stretched])
    with torch.no_grad():
        h0 = model.embedding(batch["z"])
        h, h_s = model(batch)["node_features"], model(batch_s)["node_features"]
    # relative to how far the layers moved h from the embedding: 0.027-0.029 here, 0.014-0.015
    # with s = 1 (seeds 0 and 1)
    assert float((h_s - h).norm() / (h - h0).norm()) > 0.02
