"""EGNN: the forward pass against the docstring's equations, and the scale of its inputs.

The symmetry, batching, force and cutoff checks run for every backbone in test_model.py and
test_backbone_vectors.py. Here:

- one EGNN computed atom by atom with plain loops over pairs (distances from the positions,
  the envelope, the Gaussian basis and the scale ``s = sqrt(2H / sqrt(pi))`` written out
  independently), reusing only the module's MLP weights, matches the backbone's forward;
- at initialisation the geometric inputs of phi_e's first Linear carry as much of its
  pre-activation as the node features do (before ``s`` they carried ~1/10: messages hardly
  depended on distances, and EGNN learned QM9 energies far more slowly than SchNet/PaiNN);
- the property of the Gaussian basis that ``s`` relies on: ``sum_k e_k(d)^2 ~ sqrt(pi)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import load_qm9_molecules

import geognn
from geognn.backbones import EGNN

CUTOFF = 3.0


def reference_forward(model: EGNN, z: np.ndarray, pos: np.ndarray, avg_num_neighbors: float):
    """The docstring's equations with explicit loops (molecule, no periodic images), float64."""
    hidden = model.hparams["hidden_channels"]
    num_rbf = model.hparams["num_rbf"]
    s = math.sqrt(2.0 * hidden / math.sqrt(math.pi))
    centres = np.linspace(0.0, CUTOFF, num_rbf)
    gamma = 0.5 / (centres[1] - centres[0]) ** 2
    n = len(z)
    h = model.embedding.weight.detach()[torch.as_tensor(z)].clone()  # [N, H]
    v = torch.zeros(n, 3, dtype=torch.float64)
    for layer in model.layers:
        m_sum = torch.zeros(n, hidden, dtype=torch.float64)
        dv = torch.zeros(n, 3, dtype=torch.float64)
        for i in range(n):
            for j in range(n):
                r = pos[j] - pos[i]  # r_ij, centre -> neighbour
                d = float(np.linalg.norm(r))
                if i == j or d >= CUTOFF:
                    continue
                env = 0.5 * (math.cos(math.pi * d / CUTOFF) + 1.0)
                a = s * np.concatenate([[d * d / CUTOFF ** 2], np.exp(-gamma * (d - centres) ** 2)])
                x = torch.cat([h[i], h[j], torch.as_tensor(a)])
                m = env * layer.phi_e(x)  # [H]
                m_sum[i] += m
                dv[i] += torch.as_tensor(r) * env * layer.phi_x(m)
        h = h + layer.phi_h(torch.cat([h, m_sum / avg_num_neighbors], dim=-1))
        v = v + dv / avg_num_neighbors
    return h, v


def test_forward_matches_equations_written_out():
    torch.manual_seed(0)
    avg = 3.0
    model = EGNN(hidden_channels=8, num_layers=2, num_rbf=6, cutoff=CUTOFF, avg_num_neighbors=avg).double()
    # 5 atoms: some pairs beyond the 3 Å cutoff, so the neighbour selection is exercised too
    pos = np.array([[0.0, 0.0, 0.0], [1.1, 0.2, -0.1], [-0.4, 1.3, 0.5], [2.6, 1.9, 0.3], [0.2, -0.9, 2.4]])
    z = np.array([6, 1, 8, 7, 1])
    batch = geognn.collate([geognn.build_graph(Atoms(numbers=z, positions=pos), CUTOFF, dtype=torch.float64)])
    assert batch["edge_index"].shape[1] < len(z) * (len(z) - 1), "every pair is within the cutoff"
    with torch.no_grad():
        out = model(batch)
        h_ref, v_ref = reference_forward(model, z, pos, avg)
    assert torch.abs(out["node_vectors"]).max() > 1e-3  # the vector check is not empty
    # 1e-7, not 1e-12: the module's basis centres are made in float32 before .double()
    torch.testing.assert_close(out["node_features"], h_ref, rtol=0, atol=1e-7)
    torch.testing.assert_close(out["node_vectors"][:, 0, :], v_ref, rtol=0, atol=1e-7)


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
