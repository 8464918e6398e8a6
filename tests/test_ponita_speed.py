"""PΘNITA's speed-only code paths compute the same function as the plain one, and its basis MLP shape.

- ``EdgeMessages`` (the blocked sum ``sum_{j->i} k_ij(o) * h_j(o)`` with a hand-written backward)
  against ``scatter_sum(h[j] * k, i)``, and its first and second derivatives against finite
  differences (``gradcheck`` / ``gradgradcheck``: training on forces differentiates twice).
- A whole model evaluated with one edge per block and with all edges in one block (and under
  ``torch.jit.trace``, which takes the plain path): the same energies, forces and force-loss
  parameter gradients to float64 round-off.
- ``basis_hidden``: the paper's features -> hidden -> basis MLP (default, hidden = C) and geognn's
  earlier features -> basis -> basis (``basis_hidden=basis_dim``); parameter counts against
  hand-computed numbers; the rotation error of both shapes falls with num_ori (the continuous
  model is invariant whatever the MLP's width); an old-shape state dict names the fix.

benchmarks/bench_ponita_reference.py measures the speed against the authors' code.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import load_qm9_molecules

import geognn
from geognn import testing as T
from geognn.backbones import PNITA, PONITA
from geognn.backbones import ponita as P
from geognn.nn.scatter import scatter_sum

pytestmark = pytest.mark.filterwarnings("ignore::geognn.graph.build.IsolatedAtomWarning")

CUTOFF = 4.0
SMALL = dict(hidden_channels=8, num_layers=2, basis_dim=12, degree=2, widening_factor=2)


def messages_inputs(num_ori_h: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n, num_ori, channels, num_edges = 4, 3, 2, 7
    h = torch.randn(n, num_ori_h, channels, dtype=torch.float64, generator=gen, requires_grad=True)
    edge_index = torch.tensor([[1, 2, 0, 3, 3, 1, 0], [0, 0, 1, 1, 2, 3, 3]])
    k = torch.randn(num_edges, num_ori, channels, dtype=torch.float64, generator=gen, requires_grad=True)
    return h, edge_index, k, num_ori


@pytest.mark.parametrize("num_ori_h", [3, 1], ids=["features on the grid", "lifted (broadcast)"])
def test_edge_messages_equal_the_plain_scatter(num_ori_h):
    h, edge_index, k, num_ori = messages_inputs(num_ori_h)
    j, i = edge_index
    expected = scatter_sum(h.index_select(0, j) * k, i, dim_size=h.shape[0])
    blocks = (edge_index[:, :3], edge_index[:, 3:5], edge_index[:, 5:])
    got = P.EdgeMessages.apply(h, num_ori, blocks, (False,) * 3, None, k[:3], k[3:5], k[5:])
    assert got.shape == (4, num_ori, 2)
    np.testing.assert_allclose(got.detach(), expected.detach(), atol=1e-14)
    # atom 2 receives from atom 3 only (edge 4): one entry by hand
    np.testing.assert_allclose(got[2].detach(), (h[3] * k[4]).detach(), atol=1e-14)


@pytest.mark.parametrize("num_ori_h", [3, 1], ids=["features on the grid", "lifted (broadcast)"])
def test_edge_messages_first_and_second_derivatives(num_ori_h):
    h, edge_index, k, num_ori = messages_inputs(num_ori_h, seed=1)
    blocks = (edge_index[:, :4], edge_index[:, 4:])

    def fn(h, k):
        return P.EdgeMessages.apply(h, num_ori, blocks, (False, False), None, k[:4], k[4:])

    assert torch.autograd.gradcheck(fn, (h, k))
    assert torch.autograd.gradgradcheck(fn, (h, k))


# ------------------------------------------------- an edge and its reverse on an antipodal grid
#: 4 orientations in opposite pairs: o_2 = -o_0, o_3 = -o_1.
ANTIPODE = torch.tensor([2, 3, 0, 1])


@pytest.mark.parametrize("num_ori_h", [4, 1], ids=["features on the grid", "lifted (broadcast)"])
def test_paired_edge_messages_equal_both_directions_written_out(num_ori_h):
    """A paired block sums each edge j -> i with k(o) and its reverse i -> j with k(-o): the plain
    scatter over the edges and their reverses, with the reverses' kernels read at ANTIPODE."""
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(5, num_ori_h, 3, dtype=torch.float64, generator=gen)
    pairs = torch.tensor([[1, 2, 4], [0, 0, 3]])  # kept edges (row 0 j, row 1 i); their reverses implied
    single = torch.tensor([[3], [2]])  # an edge without a reverse
    k = torch.randn(4, 4, 3, dtype=torch.float64, generator=gen)  # 3 paired + 1 single kernel
    got = P.EdgeMessages.apply(h, 4, (pairs, single), (True, False), ANTIPODE, k[:3], k[3:])
    j = torch.cat([pairs[0], pairs[1], single[0]])
    i = torch.cat([pairs[1], pairs[0], single[1]])
    kernels = torch.cat([k[:3], k[:3][:, ANTIPODE], k[3:]])
    expected = scatter_sum(h.index_select(0, j) * kernels, i, dim_size=5)
    np.testing.assert_allclose(got, expected, atol=1e-14)
    # atom 4 receives only the reverse of 4 -> 3: k(-o) * h_3(o), by hand
    np.testing.assert_allclose(got[4], k[2][ANTIPODE] * h[3], atol=1e-14)


@pytest.mark.parametrize("num_ori_h", [4, 1], ids=["features on the grid", "lifted (broadcast)"])
def test_paired_edge_messages_first_and_second_derivatives(num_ori_h):
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(4, num_ori_h, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    k = torch.randn(4, 4, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    blocks = (torch.tensor([[1, 2], [0, 0]]), torch.tensor([[3, 3], [1, 2]]))

    def fn(h, k):
        return P.EdgeMessages.apply(h, 4, blocks, (True, False), ANTIPODE, k[:2], k[2:])

    assert torch.autograd.gradcheck(fn, (h, k))
    assert torch.autograd.gradgradcheck(fn, (h, k))


def test_paired_edge_messages_under_vmap():
    """The expressivity probe takes batched vector-Jacobian products (``is_grads_batched``): the
    backward's in-place accumulators must be batched too."""
    gen = torch.Generator().manual_seed(4)
    h = torch.randn(4, 4, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    k = torch.randn(3, 4, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    blocks = (torch.tensor([[1, 2], [0, 0]]), torch.tensor([[3], [1]]))
    out = P.EdgeMessages.apply(h, 4, blocks, (True, False), ANTIPODE, k[:2], k[2:])
    cotangents = torch.randn(3, *out.shape, dtype=torch.float64, generator=gen)
    batched = torch.autograd.grad(out, (h, k), cotangents, is_grads_batched=True, retain_graph=True)
    for n in range(3):
        one = torch.autograd.grad(out, (h, k), cotangents[n], retain_graph=True)
        for a, b in zip(batched, one):
            np.testing.assert_allclose(a[n], b, atol=1e-13)


def test_reverse_edges_against_a_search_by_hand():
    """``reverse_edges`` finds (i -> j, -s) for each (j -> i, s), in a periodic cell where an atom
    meets its own images, and reports a removed reverse and duplicate edges as missing."""
    from ase.build import bulk

    graph = geognn.build_graph(bulk("Cu", "fcc", 3.6), 4.0)  # one atom: every edge is a self-image
    edge_index, shift = graph.edge_index, graph.edge_shift
    reverse = geognn.graph.build.reverse_edges(edge_index, shift)
    for e in range(edge_index.shape[1]):
        j, i = edge_index[:, e].tolist()
        hits = [
            f
            for f in range(edge_index.shape[1])
            if edge_index[:, f].tolist() == [i, j] and torch.equal(shift[f], -shift[e])
        ]
        assert hits == [int(reverse[e])]
    np.testing.assert_allclose(
        geognn.edge_vectors(graph)[reverse], -geognn.edge_vectors(graph), atol=1e-12
    )  # the reverse's vector is the edge's, negated
    keep = torch.arange(edge_index.shape[1]) != 0  # drop edge 0: its reverse loses its partner
    partial = geognn.graph.build.reverse_edges(edge_index[:, keep], shift[keep])
    assert int((partial == -1).sum()) == 1
    doubled = geognn.graph.build.reverse_edges(
        torch.cat([edge_index, edge_index[:, :1]], 1), torch.cat([shift, shift[:1]])
    )
    assert bool((doubled == -1).all())


def test_antipodal_grid_pairs_edges_without_changing_the_model(monkeypatch):
    """With grid="antipodal" each edge and its reverse share one kernel computation: energies,
    forces, stress and force-loss gradients equal the unpaired computation to float64 round-off,
    in molecules and in periodic cells (self-images included), in blocks and in inference."""
    from ase.build import bulk

    monkeypatch.setattr(P, "EDGE_BLOCK_FLOATS", 200)  # several blocks of each kind
    cells = [bulk("Si", "diamond", 5.43, cubic=True), bulk("Cu", "fcc", 3.6)]
    for batch in (qm9_batch(), geognn.collate([geognn.build_graph(a, CUTOFF, dtype=torch.float64) for a in cells])):
        model = model64(num_ori=6, grid="antipodal", stress=True)
        assert model.backbone.grid_antipode is not None

        def run():
            model.zero_grad()
            out = model(batch, forces=True)
            (out["energy"].square().sum() + out["forces"].square().sum()).backward()
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            with torch.no_grad():
                inference = model(batch, forces=False, stress=False)["energy"]  # the no-grad path
            return [out["energy"].detach(), out["forces"].detach(), out["stress"].detach(), grads, inference]

        paired = run()
        model.backbone.grid_antipode = None  # every edge computed on its own
        unpaired = run()
        for a, b in zip(paired, unpaired):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


def qm9_batch(n=3, dtype=torch.float64):
    return geognn.collate([geognn.build_graph(a, CUTOFF, dtype=dtype) for a in load_qm9_molecules(n)])


def model64(name="ponita", **kwargs):
    torch.manual_seed(0)
    return geognn.build_model(name, cutoff=CUTOFF, **SMALL, **kwargs).double()


@pytest.mark.parametrize("name, kwargs", [("ponita", dict(num_ori=6)), ("pnita", {})])
def test_blocks_of_edges_do_not_change_energies_forces_or_training_gradients(name, kwargs, monkeypatch):
    model = model64(name, **kwargs)
    batch = qm9_batch()

    def run(block_floats):
        monkeypatch.setattr(P, "EDGE_BLOCK_FLOATS", block_floats)
        model.zero_grad()
        out = model(batch, forces=True)
        # a force loss as in training: differentiates the forces w.r.t. the parameters
        loss = out["energy"].square().sum() + out["forces"].square().sum()
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return out["energy"].detach(), out["forces"].detach(), grads

    one_edge = run(1)  # one edge per block: many blocks
    one_block = run(10**9)  # every edge in one block
    num_edges = int(batch.edge_index.shape[1])
    assert P.edge_block_size(1 * 10**9) == 1 and num_edges > 20  # the first run really was blocked
    for a, b in zip(one_edge, one_block):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


def test_traced_model_takes_the_plain_path_and_agrees(monkeypatch):
    """torch.jit.trace (geognn export) records one block of plain operations (a trace must not
    depend on the number of edges; tests/test_export.py runs exported ponita on other sizes): it
    agrees with the eager, blocked model."""
    model = model64(num_ori=6).eval()
    monkeypatch.setattr(P, "EDGE_BLOCK_FLOATS", 64)  # eager: several blocks
    large = qm9_batch(3)

    class Energy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = model.backbone

        def forward(self, pos):
            view = large.clone()
            view.pos = pos
            return self.backbone(view)["node_features"].sum()

    energy = Energy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(energy, (large.pos,), check_trace=False)
    assert "EdgeMessages" not in str(traced.graph) and "index_add" not in str(traced.graph)
    np.testing.assert_allclose(traced(large.pos).item(), energy(large.pos).item(), rtol=1e-12)


# --------------------------------------------------------------------------- basis MLP shape
def hand_parameters(*, hidden, num_layers, basis, degree, widening, num_elements, sphere=True):
    """PΘNITA/PNITA backbone parameters written out by hand (features -> hidden -> basis MLPs)."""
    spatial_features = {1: degree, 2: (degree + 1) * (degree + 2) // 2 - 1}[2 if sphere else 1]
    mlp = lambda m: (m * hidden + hidden) + (hidden * basis + basis)  # noqa: E731  lin1 + lin2
    total = mlp(spatial_features) + (mlp(degree) if sphere else 0)
    per_layer = basis * hidden + (basis * hidden if sphere else 0) + hidden  # W_s, W_f, bias
    per_layer += 2 * hidden  # LayerNorm
    per_layer += (hidden * widening * hidden + widening * hidden) + (widening * hidden * hidden + hidden)
    total += num_layers * per_layer
    total += num_elements * hidden  # embedding
    total += hidden * hidden + hidden  # readout Linear
    return total


def test_parameter_counts_of_both_basis_shapes_against_hand_counts():
    # the paper's QM9 size (main_qm9.py defaults with 16 orientations): 9 Legendre products of the
    # two attributes, 3 of o.o'; basis MLPs 9 -> 128 -> 256 and 3 -> 128 -> 256
    paper = dict(hidden_channels=128, num_layers=5, num_ori=16, basis_dim=256, degree=3, widening_factor=4)
    model = PONITA(**paper)
    n_elements = model.embedding.num_embeddings
    expected = hand_parameters(hidden=128, num_layers=5, basis=256, degree=3, widening=4, num_elements=n_elements)
    assert sum(p.numel() for p in model.parameters()) == expected
    # the basis MLPs alone: (9*128+128 + 128*256+256) + (3*128+128 + 128*256+256) = 67,840
    basis_params = sum(p.numel() for m in (model.spatial_basis, model.sphere_basis) for p in m.parameters())
    assert basis_params == 67_840
    # geognn's earlier shape, 9 -> 256 -> 256 and 3 -> 256 -> 256: (2560 + 65792) + (1024 + 65792)
    old = PONITA(**paper, basis_hidden=256)
    assert sum(p.numel() for m in (old.spatial_basis, old.sphere_basis) for p in m.parameters()) == 135_168
    assert old.spatial_basis.lin1.weight.shape == (256, 9) and model.spatial_basis.lin1.weight.shape == (128, 9)
    # PNITA: distance features (degree 3) -> 128 -> 128
    pnita = PNITA(hidden_channels=128, num_layers=5, basis_dim=128, degree=3, widening_factor=4)
    assert sum(p.numel() for p in pnita.parameters()) == hand_parameters(
        hidden=128, num_layers=5, basis=128, degree=3, widening=4,
        num_elements=pnita.embedding.num_embeddings, sphere=False,
    )  # fmt: skip
    # where hidden_channels == basis_dim (geognn's CPU default) both shapes are the same module
    assert PONITA(basis_hidden=128).spatial_basis.lin1.weight.shape == PONITA().spatial_basis.lin1.weight.shape


def test_basis_hidden_is_checked_and_an_old_state_dict_names_the_fix():
    with pytest.raises(ValueError, match="basis_hidden"):
        PONITA(basis_hidden=0)
    old = PONITA(hidden_channels=16, basis_dim=24, num_layers=1, basis_hidden=24)
    new = PONITA(hidden_channels=16, basis_dim=24, num_layers=1)
    with pytest.raises(RuntimeError, match="basis_hidden=24"):
        new.load_state_dict(old.state_dict())
    PONITA(hidden_channels=16, basis_dim=24, num_layers=1, basis_hidden=24).load_state_dict(old.state_dict())


@pytest.mark.parametrize("basis_hidden", [None, 24], ids=["paper shape", "earlier shape"])
def test_rotation_error_falls_with_num_ori_for_both_basis_shapes(basis_hidden):
    """Both MLP shapes make kernels of the invariants only: the continuous model is invariant, so
    the grid's error must fall as the grid is refined (same weights on every grid)."""
    molecules = load_qm9_molecules(40)[-2:]
    kwargs = dict(hidden_channels=16, num_layers=2, basis_dim=24, degree=3, widening_factor=2)
    torch.manual_seed(0)
    base = geognn.build_model("ponita", cutoff=CUTOFF, num_ori=4, basis_hidden=basis_hidden, **kwargs).double().eval()
    base.set_scale_shift(0.5, 0.0)
    rng = np.random.default_rng(2)
    rotations = [T.random_rotation(rng) for _ in range(2)]
    errors = {}
    for n in (4, 64):
        model = geognn.build_model("ponita", cutoff=CUTOFF, num_ori=n, basis_hidden=basis_hidden, **kwargs)
        model = model.double().eval()
        model.load_state_dict(base.state_dict())
        forces = []
        for atoms in molecules:
            for rot in rotations:
                ref, got = T.predict(model, [atoms, T.transformed(atoms, rot)], stress=False, reference=False)
                forces.append(np.linalg.norm(got["forces"] - ref["forces"] @ rot.T, axis=-1).max())
        errors[n] = float(np.median(forces))
    # measured (medians, eV/Å): paper shape 0.98 -> 0.084, earlier shape 1.06 -> 0.053 (12-20x)
    assert errors[4] > 1e-2, errors  # the measurement is not empty
    assert errors[64] < errors[4] / 4, errors


def test_sphere_convolution_equals_the_sum_and_differentiates_twice():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    k = torch.randn(4, 4, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    expected = torch.einsum("nqc,pqc->npc", x, k)
    np.testing.assert_allclose(P.SphereConv.apply(x, k).detach(), expected.detach(), atol=1e-14)
    assert torch.autograd.gradcheck(P.SphereConv.apply, (x, k))
    assert torch.autograd.gradgradcheck(P.SphereConv.apply, (x, k))


def test_paired_model_does_not_depend_on_which_edge_of_a_pair_is_kept():
    """Exact opposites make the kept edge's kernel at -o bitwise the reverse's at o, so reordering
    the edges (which changes the kept member of every pair) changes energies and forces only by
    float64 round-off of the sums. A grid that is antipodal only to a relaxation's precision (the
    Thomson octahedron) is not paired: pairing it made translated copies differ by 1e-6 eV/Å."""
    from geognn.symmetry.sphere import antipodes, repulsion_grid

    assert antipodes(repulsion_grid(6)) is None
    model = model64(num_ori=6, grid="antipodal").eval()
    batch = qm9_batch()
    flipped = batch.clone()
    order = torch.arange(batch.edge_index.shape[1] - 1, -1, -1)
    flipped.edge_index, flipped.edge_shift = batch.edge_index[:, order], batch.edge_shift[order]
    a, b = model(batch, forces=True), model(flipped, forces=True)
    np.testing.assert_allclose(a["energy"].detach(), b["energy"].detach(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(a["forces"], b["forces"], rtol=1e-12, atol=1e-13)


def test_randomly_rotated_antipodal_grid_keeps_exact_opposites():
    model = model64(num_ori=8, grid="antipodal", random_grid_rotation=True).train()
    from geognn.symmetry.sphere import antipodes

    for _ in range(3):
        grid = model.backbone.orientations(torch.float32)
        assert torch.equal(antipodes(grid), model.backbone.grid_antipode)


def test_graph_with_missing_reverses_mixes_paired_and_unpaired_edges(monkeypatch):
    """A graph without some reverses (a user's directed graph; build_graph keeps both directions,
    even with a cap): those edges are computed alone, the rest in pairs, and the model is still
    the unpaired computation; an atom with no edges at all works."""
    from ase import Atoms

    monkeypatch.setattr(P, "EDGE_BLOCK_FLOATS", 200)
    graph = geognn.build_graph(load_qm9_molecules(2)[1], CUTOFF, dtype=torch.float64)
    keep = torch.ones(graph.edge_index.shape[1], dtype=torch.bool)
    keep[[0, 5, 9]] = False  # three edges dropped: their reverses lose their partners
    graph.edge_index, graph.edge_shift = graph.edge_index[:, keep], graph.edge_shift[keep]
    reverse = geognn.graph.build.reverse_edges(graph.edge_index, graph.edge_shift)
    assert 0 < int((reverse < 0).sum()) < graph.edge_index.shape[1]  # both kinds present
    lone = geognn.build_graph(Atoms("H2", positions=[[0, 0, 0], [0, 0, 9.0]]), CUTOFF, dtype=torch.float64)
    batch = geognn.collate([graph, lone])
    model = model64(num_ori=6, grid="antipodal")
    paired = model(batch, forces=True)
    model.backbone.grid_antipode = None
    unpaired = model(batch, forces=True)
    np.testing.assert_allclose(paired["energy"].detach(), unpaired["energy"].detach(), rtol=1e-12)
    np.testing.assert_allclose(paired["forces"].detach(), unpaired["forces"].detach(), rtol=1e-11, atol=1e-12)
