"""DimeNet++ specifics: the triplet builder against a brute-force oracle on molecules and periodic
cells (images included), its bases against scipy/numpy, and smoothness at the cutoff.

The shared conformance checks (symmetries, supercells, finite-difference forces and stress,
batching) run in test_model.py for every backbone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from conftest import load_jarvis, load_qm9_molecules, oblique_angles

import geognn
from geognn import testing as T
from geognn.backbones.dimenetpp import (
    DimeNetPlusPlus,
    SphericalBasis,
    legendre,
    spherical_jn,
    spherical_jn_zeros,
    triplet_angles,
    triplet_cosines,
    triplets,
)
from geognn.graph.build import edge_vectors

CUTOFF = 5.0


# --------------------------------------------------------------------------- structures
def qm9_molecule() -> Atoms:
    atoms = load_qm9_molecules(12)[-1]  # C5H10O, 16 atoms
    assert len(atoms) >= 12
    return atoms


def silicon_primitive() -> Atoms:
    """Diamond Si, 2-atom fcc primitive cell: at 5 Å each atom sees many images of both atoms."""
    return bulk("Si", "diamond", a=5.43)


def triclinic_cell() -> Atoms:
    """A real triclinic-shaped cell (no right angle) from the JARVIS sample, lightly rattled."""
    chosen = [
        a
        for a in load_jarvis(50)
        if oblique_angles(a) == 3 and 3 <= len(a) <= 6 and not np.allclose(a.cell.angles(), a.cell.angles()[0])
    ]
    assert chosen, "need a triclinic JARVIS cell"
    atoms = chosen[0]
    atoms.positions += np.random.default_rng(3).normal(scale=0.03, size=atoms.positions.shape)
    return atoms


STRUCTURES = {"qm9": qm9_molecule, "si_primitive": silicon_primitive, "triclinic": triclinic_cell}


def graph_of(atoms: Atoms):
    return geognn.build_graph(atoms, CUTOFF, dtype=torch.float64)


def brute_force_triplets(graph) -> set[tuple[int, int]]:
    """Every (e_kj, e_ji) with target(e_kj) == source(e_ji), minus k == i in the same image."""
    src, dst = graph.edge_index.tolist()
    shift = [tuple(int(round(v)) for v in s) for s in graph.edge_shift.tolist()]
    out = set()
    for ji in range(len(src)):
        for kj in range(len(src)):
            if dst[kj] != src[ji]:
                continue
            back = src[kj] == dst[ji] and all(a + b == 0 for a, b in zip(shift[kj], shift[ji]))
            if not back:
                out.add((kj, ji))
    return out


def as_set(idx_kj, idx_ji) -> set[tuple[int, int]]:
    return set(zip(idx_kj.tolist(), idx_ji.tolist()))


# --------------------------------------------------------------------------- triplets
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_triplets_match_brute_force(name):
    graph = graph_of(STRUCTURES[name]())
    idx_kj, idx_ji = triplets(graph.edge_index, graph.edge_shift, graph.num_nodes)
    expected = brute_force_triplets(graph)
    assert idx_kj.numel() == len(expected), "duplicates or missing triplets"
    assert as_set(idx_kj, idx_ji) == expected
    assert len(expected) > 100
    # ordered by idx_ji, then idx_kj
    key = idx_ji * graph.edge_index.shape[1] + idx_kj
    assert torch.all(key[1:] > key[:-1])


def test_molecule_triplet_count_is_sum_of_degree_pairs():
    graph = graph_of(qm9_molecule())
    idx_kj, _ = triplets(graph.edge_index, graph.edge_shift, graph.num_nodes)
    degree = torch.bincount(graph.edge_index[1], minlength=graph.num_nodes)
    assert idx_kj.numel() == int((degree * (degree - 1)).sum())
    # a molecule has no images: the shift is not needed
    kj2, ji2 = triplets(graph.edge_index, None, graph.num_nodes)
    assert torch.equal(kj2, idx_kj) and torch.equal(ji2, _)


def test_periodic_images_of_the_same_atom_are_kept():
    """Si primitive cell: k == i in another image is a genuine triplet; only the same image is not."""
    graph = graph_of(silicon_primitive())
    idx_kj, idx_ji = triplets(graph.edge_index, graph.edge_shift, graph.num_nodes)
    src, dst, shift = graph.edge_index[0], graph.edge_index[1], graph.edge_shift
    k, i = src[idx_kj], dst[idx_ji]
    image = shift[idx_kj] + shift[idx_ji]  # image of k relative to i
    same_atom = k == i
    other_image = image.abs().sum(-1) > 0
    assert torch.all(other_image[same_atom]), "a back-edge (same atom, same image) was kept"
    assert int(same_atom.sum()) > 50, "k == i in other images must be kept"
    # an edge from an atom to its own image pairs with itself (j -> j+S -> j+2S)
    assert bool(((idx_kj == idx_ji) & (src[idx_ji] == dst[idx_ji])).any())
    # the number removed is exactly one back-edge per edge
    degree = torch.bincount(dst, minlength=graph.num_nodes)
    assert idx_kj.numel() == int(degree[src].sum()) - src.numel()


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_triplet_angles_match_positions_and_images(name):
    """theta_kji from the model's edge vectors equals the angle at j computed from atom positions
    with each atom placed in its image: i at pos[i], j at pos[j] + S_ji, k at pos[k] + S_ji + S_kj."""
    atoms = STRUCTURES[name]()
    graph = graph_of(atoms)
    idx_kj, idx_ji = triplets(graph.edge_index, graph.edge_shift, graph.num_nodes)
    vec = edge_vectors(geognn.collate([graph]))
    angles = triplet_angles(vec, idx_kj, idx_ji).numpy()
    cosines = triplet_cosines(vec, idx_kj, idx_ji).numpy()

    pos, cell = atoms.positions, np.asarray(atoms.cell[:])
    src, dst = graph.edge_index.numpy()
    shift = graph.edge_shift.numpy()
    k, j, i = src[idx_kj], src[idx_ji], dst[idx_ji]
    p_i = pos[i]
    p_j = pos[j] + shift[idx_ji] @ cell
    p_k = pos[k] + (shift[idx_ji] + shift[idx_kj]) @ cell
    a, b = p_i - p_j, p_k - p_j
    assert np.linalg.norm(b, axis=1).min() > 0.5, "k coincides with i: a back-edge slipped through"
    expected = np.arctan2(np.linalg.norm(np.cross(a, b), axis=1), np.einsum("td,td->t", a, b))
    np.testing.assert_allclose(angles, expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(cosines, np.cos(expected), rtol=0, atol=1e-12)
    # and the lengths: |j -> i| is edge e_ji's, |j -> k| is edge e_kj's
    dist = vec.norm(dim=-1).numpy()
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), dist[idx_ji], atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), dist[idx_kj], atol=1e-10)


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_triplets_invariant_under_edge_permutation(name):
    graph = graph_of(STRUCTURES[name]())
    reference = as_set(*triplets(graph.edge_index, graph.edge_shift, graph.num_nodes))
    perm = torch.from_numpy(np.random.default_rng(0).permutation(graph.edge_index.shape[1]))
    kj, ji = triplets(graph.edge_index[:, perm], graph.edge_shift[perm], graph.num_nodes)
    assert kj.numel() == len(reference)
    assert as_set(perm[kj], perm[ji]) == reference  # back to the original edge numbers


def test_triplets_of_a_batch_stay_inside_each_graph():
    graphs = [graph_of(f()) for f in STRUCTURES.values()]
    batch = geognn.collate(graphs)
    idx_kj, idx_ji = triplets(batch.edge_index, batch.edge_shift, batch.num_nodes)
    counts = [triplets(g.edge_index, g.edge_shift, g.num_nodes)[0].numel() for g in graphs]
    assert idx_kj.numel() == sum(counts)
    edge_graph = batch.batch[batch.edge_index[1]]
    assert torch.equal(edge_graph[idx_kj], edge_graph[idx_ji])


def test_triplets_of_an_empty_graph():
    kj, ji = triplets(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3), 3)
    assert kj.numel() == 0 and ji.numel() == 0


# --------------------------------------------------------------------------- bases
def test_spherical_bessel_matches_scipy():
    special = pytest.importorskip("scipy.special")
    x = torch.logspace(-3, np.log10(30.0), 2000, dtype=torch.float64)
    for l in range(9):
        ref = special.spherical_jn(l, x.numpy())
        got = spherical_jn(x, l).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-13 * np.abs(ref).max())
        # float32 in, float32 out, still accurate (computed in float64 inside)
        got32 = spherical_jn(x.float(), l)
        assert got32.dtype == torch.float32
        np.testing.assert_allclose(
            got32.numpy(), special.spherical_jn(l, x.float().double().numpy()), rtol=1e-5, atol=1e-7
        )


@pytest.mark.parametrize("l", [0, 1, 3, 6])
def test_spherical_bessel_gradients(l):
    x = (torch.rand(6, dtype=torch.float64) * 12 + 0.05).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: spherical_jn(t, l), (x,))
    assert torch.autograd.gradgradcheck(lambda t: spherical_jn(t, l), (x,))


def test_spherical_bessel_zeros():
    zeros = spherical_jn_zeros(7, 6)
    assert zeros.shape == (7, 6)
    np.testing.assert_allclose(zeros[0], np.pi * np.arange(1, 7), rtol=1e-14)
    np.testing.assert_allclose(zeros[1:3, 0], [4.493409457909064, 5.763459196894550], rtol=1e-13)
    for l in range(7):
        assert torch.all(spherical_jn(zeros[l], l).abs() < 1e-12)
        assert torch.all(zeros[l, 1:] > zeros[l, :-1])
    assert torch.all(zeros[1:] > zeros[:-1])  # z_(l+1),n > z_l,n (interlacing)


def test_legendre_matches_numpy():
    x = torch.linspace(-1, 1, 101, dtype=torch.float64)
    got = legendre(x, 7)
    for l in range(7):
        coeffs = np.zeros(l + 1)
        coeffs[l] = 1.0
        np.testing.assert_allclose(got[:, l], np.polynomial.legendre.legval(x.numpy(), coeffs), atol=1e-14)


def test_spherical_basis_radial_part_is_orthonormal():
    """sqrt(2)/|j_(l+1)(z_ln)| j_l(z_ln x) are orthonormal on [0, 1] with weight x^2 (DimeNet's basis)."""
    basis = SphericalBasis(num_spherical=4, num_radial=5, cutoff=1.0, envelope_exponent=5).double()
    x = torch.linspace(0, 1, 20001, dtype=torch.float64)[1:]
    radial = torch.stack(
        [basis.norm[l] * spherical_jn(basis.zeros[l] * x[:, None], l) for l in range(4)], dim=1
    )  # [X, L, N]
    gram = torch.trapezoid(
        x[:, None, None, None] ** 2 * radial[:, :, :, None] * radial[:, :, None, :], x, dim=0
    )  # [L, N, N]
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(5), (4, 5, 5)), atol=1e-6)


# --------------------------------------------------------------------------- the backbone
def small_model(dtype=torch.float64, **overrides) -> geognn.Model:
    torch.manual_seed(0)
    kwargs = dict(
        hidden_channels=16,
        num_layers=2,
        out_emb_channels=16,
        int_emb_size=8,
        basis_emb_size=4,
        num_spherical=3,
        num_radial=4,
        num_output_layers=2,
    )
    kwargs.update(overrides)
    model = geognn.build_model("dimenetpp", cutoff=CUTOFF, **kwargs).to(dtype).eval()
    model.set_scale_shift(0.5, 0.1)
    return model


@pytest.mark.filterwarnings("ignore::geognn.graph.build.IsolatedAtomWarning")
def test_energy_and_forces_continuous_across_the_cutoff():
    """An atom k leaving j's cutoff sphere (and already outside i's): energy and forces continuous,
    through the edge k -> j and every triplet that uses it."""
    model = small_model()
    eps = 1e-6

    def trimer(r):  # i, j 1.3 Å apart; k on the far side of j at distance r from j
        return Atoms("CNO", positions=[[0, 0, 0], [1.3, 0, 0], [1.3 + r * 0.8, r * 0.6, 0]])

    (near,), (far,) = (
        T.predict(model, [trimer(CUTOFF - eps)], stress=False),
        T.predict(model, [trimer(CUTOFF + eps)], stress=False),
    )
    assert abs(near["energy"] - far["energy"]) < 1e-9
    assert np.abs(near["forces"] - far["forces"]).max() < 1e-6
    (inside,) = T.predict(model, [trimer(CUTOFF - 0.8)], stress=False)
    assert np.abs(inside["forces"][2]).max() > 1e-4, "k must feel a force well inside the cutoff"


def test_node_features_shape_and_out_channels():
    graph = geognn.collate([graph_of(qm9_molecule())])
    default = DimeNetPlusPlus(
        hidden_channels=16,
        num_layers=1,
        out_emb_channels=8,
        int_emb_size=4,
        basis_emb_size=2,
        num_spherical=2,
        num_radial=3,
    ).double()
    assert default.out_channels == 16
    assert default(graph)["node_features"].shape == (graph.num_nodes, 16)
    narrow = DimeNetPlusPlus(hidden_channels=16, num_layers=1, out_channels=5).double()
    features = narrow(graph)["node_features"]
    assert features.shape == (graph.num_nodes, 5) and features.abs().max() > 0


def test_repr_and_defaults():
    backbone = DimeNetPlusPlus(num_layers=1)
    text = repr(backbone)
    for item in (
        "hidden_channels=128",
        "out_emb_channels=256",
        "int_emb_size=64",
        "basis_emb_size=8",
        "num_spherical=7",
        "num_radial=6",
        "cutoff=5.0",
        "envelope_exponent=5",
        "num_before_skip=1",
        "num_after_skip=2",
        "num_output_layers=3",
    ):
        assert item in text


@pytest.mark.parametrize(
    "bad",
    [dict(cutoff=0.0), dict(num_spherical=0), dict(hidden_channels=2.5), dict(num_after_skip=-1), dict(out_channels=0)],
)
def test_bad_arguments_raise_value_error(bad):
    with pytest.raises(ValueError):
        DimeNetPlusPlus(**bad)


def test_rejects_atomic_numbers_beyond_max_z():
    backbone = DimeNetPlusPlus(hidden_channels=8, num_layers=1, max_z=5).double()
    with pytest.raises(ValueError, match="max_z=5"):
        backbone(geognn.collate([graph_of(qm9_molecule())]))


# --------------------------------------------------------------------------- against PyG
def test_matches_pyg_dimenetpp_on_molecules(monkeypatch):
    """Same weights, same energies as PyG's DimeNetPlusPlus (the reference implementation) on
    QM9 molecules, with out_channels=1 so that summing node_features gives PyG's output.

    PyG builds its graph with radius_graph (needs pyg-lib) and its triplets with torch-sparse;
    both are replaced by geognn's graph and :func:`triplets` (identical for a molecule, where the
    back-edge is simply k == i). Known constant differences are mapped onto the weights: our
    radial basis is sqrt(2/c)/c times PyG's, and PyG's angle is pi - theta (odd l flip sign).
    """
    pytest.importorskip("sympy")
    import torch_geometric.nn.models.dimenet as pyg_dimenet

    settings = dict(
        hidden_channels=16,
        num_layers=2,
        out_emb_channels=24,
        int_emb_size=8,
        basis_emb_size=4,
        num_spherical=4,
        num_radial=5,
        envelope_exponent=5,
        num_before_skip=1,
        num_after_skip=2,
        num_output_layers=2,
    )
    torch.manual_seed(0)
    ours = DimeNetPlusPlus(cutoff=CUTOFF, out_channels=1, **settings).double()
    theirs = pyg_dimenet.DimeNetPlusPlus(
        hidden_channels=16,
        out_channels=1,
        num_blocks=2,
        int_emb_size=8,
        basis_emb_size=4,
        out_emb_channels=24,
        num_spherical=4,
        num_radial=5,
        cutoff=CUTOFF,
        envelope_exponent=5,
        num_before_skip=1,
        num_after_skip=2,
        num_output_layers=2,
    ).double()

    radial_scale = (2.0 / CUTOFF) ** 0.5 / CUTOFF  # ours / PyG's, for the Bessel RBF
    parity = torch.tensor([(-1.0) ** l for l in range(4) for _ in range(5)], dtype=torch.float64)
    with torch.no_grad():
        theirs.rbf.freq.copy_(ours.rbf.freqs * CUTOFF)
        theirs.emb.emb.weight.copy_(ours.embedding.embedding.weight[:95])
        theirs.emb.lin_rbf.weight.copy_(ours.embedding.lin_rbf.weight * radial_scale)
        theirs.emb.lin_rbf.bias.copy_(ours.embedding.lin_rbf.bias)
        theirs.emb.lin.load_state_dict(ours.embedding.lin.state_dict())
        for mine, ref in zip(ours.interactions, theirs.interaction_blocks):
            for name in ("lin_rbf2", "lin_sbf2", "lin_kj", "lin_ji", "lin_down", "lin_up", "lin"):
                getattr(ref, name).load_state_dict(getattr(mine, name).state_dict())
            ref.lin_rbf1.weight.copy_(mine.lin_rbf1.weight * radial_scale)
            ref.lin_sbf1.weight.copy_(mine.lin_sbf1.weight * parity)
            for a, b in zip((*mine.before_skip, *mine.after_skip), (*ref.layers_before_skip, *ref.layers_after_skip)):
                b.load_state_dict(a.state_dict())
        for mine, ref in zip(ours.outputs, theirs.output_blocks):
            ref.lin_rbf.weight.copy_(mine.lin_rbf.weight * radial_scale)
            ref.lin_up.load_state_dict(mine.lin_up.state_dict())
            ref.lins.load_state_dict(mine.lins.state_dict())
            ref.lin.load_state_dict(mine.lin.state_dict())

    batch = geognn.collate([graph_of(a) for a in load_qm9_molecules(12)[-4:]])

    def pyg_triplets(edge_index, num_nodes):
        row, col = edge_index  # j -> i
        kj, ji = triplets(edge_index, None, num_nodes)
        return col, row, col[ji], row[ji], row[kj], kj, ji

    monkeypatch.setattr(pyg_dimenet, "radius_graph", lambda *args, **kwargs: batch.edge_index)
    monkeypatch.setattr(pyg_dimenet, "triplets", pyg_triplets)
    expected = theirs(batch.z, batch.pos, batch.batch).squeeze(-1)  # [B]
    got = geognn.nn.scatter.scatter_sum(ours(batch)["node_features"].squeeze(-1), batch.batch, 4)
    assert expected.abs().min() > 1e-2
    # not 1e-12: PyG's zeros z_ln of j_l (scipy brentq on its own Bessel functions) are off by
    # up to 1e-6 (|j_l(z)| ~ 3e-8 there, < 1e-15 for ours), which moves the energies by ~1e-8
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-8)
