"""GWL / IGWL / IGWL_(k) on the hard-pair library: every expected outcome, the pairs' geometric
facts, invariance of the test under isometries and node order, and input validation."""

from __future__ import annotations

from itertools import combinations, permutations

import numpy as np
import pytest
import torch
from ase.build import bulk
from scipy.spatial.transform import Rotation

from geognn.expressivity import gwl_test, isometric_copy, load_pairs
from geognn.expressivity.gwl import graph_from_atoms, graph_from_bonds
from geognn.expressivity.pairs import (
    CHAIN_LENGTHS,
    FCC_HCP_NEIGHBOUR_DISTANCE,
    FOLDS,
    HOMOMETRIC_OCTAGON_SUBSETS,
    TESTS,
    chiral_pair,
    fcc_hcp_pair,
    k_chain_pair,
    rotational_symmetry_pair,
    same_crystal_two_cells_pair,
    three_body_degenerate_pair,
    two_body_degenerate_pair,
)
from geognn.graph.build import edge_vectors

OPTIONS = {
    "GWL": dict(invariant=False),
    "GWL_(l<=1)": dict(max_order=1),
    "GWL_(l<=2)": dict(max_order=2),
    "IGWL": dict(invariant=True),
    "IGWL_(2)": dict(invariant=True, body_order=2),
    "IGWL_(3)": dict(invariant=True, body_order=3),
    "IGWL_(4)": dict(invariant=True, body_order=4),
}
PAIRS = load_pairs()


# --------------------------------------------------------------------------- expected outcomes
@pytest.mark.parametrize("group", ["O3", "SO3"])
@pytest.mark.parametrize("pair", PAIRS, ids=[p.name for p in PAIRS])
def test_every_expected_outcome_of_the_library(pair, group):
    for test in TESTS:
        result = gwl_test(pair.g1, pair.g2, group=group, **OPTIONS[test])
        assert result.iterations == pair.expected[group][test], (pair.name, group, test)
        assert result.distinguished == (pair.expected[group][test] is not None)
        assert result.test == test and result.group == group


@pytest.mark.parametrize("k", CHAIN_LENGTHS)
def test_k_chains_need_floor_k_over_2_plus_1_gwl_iterations(k):
    pair = k_chain_pair(k)
    assert pair.expected["O3"]["GWL"] == k // 2 + 1  # the theory, written in the library as data
    result = gwl_test(pair.g1, pair.g2)
    assert result.iterations == k // 2 + 1
    # one iteration fewer is not enough: the histograms agree at every earlier iteration
    assert all(h1 == h2 for h1, h2 in result.histograms[:-1])
    assert not gwl_test(pair.g1, pair.g2, invariant=True, max_iter=2 * k).distinguished


def test_histograms_are_recorded_per_iteration():
    pair = k_chain_pair(4)
    result = gwl_test(pair.g1, pair.g2)
    assert len(result.histograms) == result.iterations + 1
    n = pair.g1.num_nodes
    assert all(sum(h1.values()) == n and sum(h2.values()) == n for h1, h2 in result.histograms)
    # iteration 0: one label (carbon) on all six atoms; iteration 1: ends, chain ends, inner atoms
    assert result.histograms[0] == ({0: 6}, {0: 6})
    assert sorted(result.histograms[1][0].values()) == [2, 2, 2]


# --------------------------------------------------------------------------- invariance
def _random_isometry(data, seed, reflect):
    rng = np.random.default_rng(seed)
    rotation = Rotation.random(random_state=seed).as_matrix() * (-1 if reflect else 1)
    return isometric_copy(data, rotation, rng.normal(size=3) * 3, rng.permutation(data.num_nodes))


@pytest.mark.parametrize(
    "pair",
    [k_chain_pair(5), rotational_symmetry_pair(5), chiral_pair(), fcc_hcp_pair(), three_body_degenerate_pair()],
    ids=lambda p: p.name,
)
def test_graph_and_moved_permuted_copy_are_never_distinguished(pair):
    for g in (pair.g1, pair.g2):
        for test in TESTS:
            for seed, reflect in ((0, True), (1, False)):
                copy = _random_isometry(g, seed, reflect)
                assert not gwl_test(g, copy, group="O3", max_iter=4, **OPTIONS[test]).distinguished, test
            proper = _random_isometry(g, 2, reflect=False)
            assert not gwl_test(g, proper, group="SO3", max_iter=4, **OPTIONS[test]).distinguished, test


def test_so3_tells_a_chiral_structure_from_its_reflected_copy_but_o3_does_not():
    g = chiral_pair().g1
    mirrored = _random_isometry(g, 3, reflect=True)
    assert gwl_test(g, mirrored, group="SO3").iterations == 1
    assert not gwl_test(g, mirrored, group="O3").distinguished


def test_result_does_not_depend_on_node_order():
    pair = k_chain_pair(6)
    reference = gwl_test(pair.g1, pair.g2)
    perm = np.random.default_rng(0).permutation(pair.g2.num_nodes)
    permuted = gwl_test(pair.g1, isometric_copy(pair.g2, permutation=perm))
    assert permuted.iterations == reference.iterations
    assert permuted.histograms == reference.histograms


def test_a_supercell_is_the_same_crystal():
    atoms = bulk("Cu", "fcc", a=3.6)
    g1, g2 = graph_from_atoms(atoms, 3.0), graph_from_atoms(atoms.repeat((2, 1, 3)), 3.0)
    assert g2.num_nodes == 6 * g1.num_nodes
    for test in TESTS:
        assert not gwl_test(g1, g2, max_iter=3, **OPTIONS[test]).distinguished


def test_molecules_with_different_labels_differ_at_iteration_zero():
    g1 = graph_from_bonds([[0, 0, 0], [1.1, 0, 0]], [6, 8], [(0, 1)])
    g2 = graph_from_bonds([[0, 0, 0], [1.1, 0, 0]], [6, 7], [(0, 1)])
    assert gwl_test(g1, g2).iterations == 0


def test_tolerance_decides_what_counts_as_equal():
    g1 = graph_from_bonds([[0, 0, 0], [1.0, 0, 0]], [6, 6], [(0, 1)])
    g2 = graph_from_bonds([[0, 0, 0], [1.0 + 1e-7, 0, 0]], [6, 6], [(0, 1)])
    assert not gwl_test(g1, g2).distinguished  # 1e-7 Å is below the default tol of 1e-4
    assert gwl_test(g1, g2, tol=1e-9).iterations == 1


# --------------------------------------------------------------------------- geometric facts of the pairs
def _pos(g):
    return g.pos.double().numpy()


def _sorted_distances(g):
    p = _pos(g)
    return np.sort(np.linalg.norm(p[:, None] - p[None], axis=-1)[np.triu_indices(len(p), 1)])


def _bond_lengths(g):
    return np.sort(edge_vectors(g).norm(dim=-1).double().numpy())


def _angles_at_each_node(g):
    """Sorted list (over nodes) of the sorted angles (degrees) between the node's edges."""
    vec = edge_vectors(g).double().numpy()
    centre = g.edge_index[1].numpy()
    per_node = []
    for i in range(g.num_nodes):
        v = vec[centre == i]
        u = v / np.linalg.norm(v, axis=1, keepdims=True)
        per_node.append(
            tuple(
                np.round(np.degrees(np.arccos(np.clip(u[a] @ u[b], -1, 1))), 6)
                for a, b in combinations(range(len(u)), 2)
            )
        )
    return sorted(tuple(sorted(a)) for a in per_node)


@pytest.mark.parametrize("k", CHAIN_LENGTHS)
def test_k_chain_facts_same_local_geometry_different_shape(k):
    pair = k_chain_pair(k)
    np.testing.assert_allclose(_bond_lengths(pair.g1), _bond_lengths(pair.g2))
    assert np.allclose(_bond_lengths(pair.g1), _bond_lengths(pair.g1)[0])  # all bonds equal
    assert _angles_at_each_node(pair.g1) == _angles_at_each_node(pair.g2)
    p1, p2 = _pos(pair.g1), _pos(pair.g2)
    assert np.linalg.norm(p1[0] - p1[-1]) < np.linalg.norm(p2[0] - p2[-1]) - 0.1  # ends closer in the U than the S
    assert not np.allclose(_sorted_distances(pair.g1), _sorted_distances(pair.g2))  # not isometric
    assert pair.g1.edge_index.shape[1] == 2 * (k + 1)


@pytest.mark.parametrize("fold", FOLDS)
def test_rotational_pair_facts_rotated_copy_and_l_fold_symmetry(fold):
    pair = rotational_symmetry_pair(fold)

    def rotate(points, angle):
        c, s = np.cos(angle), np.sin(angle)
        return points @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T

    def same_set(a, b):
        return np.allclose(np.sort(np.round(a, 9), axis=0), np.sort(np.round(b, 9), axis=0))

    p1, p2 = _pos(pair.g1), _pos(pair.g2)
    assert same_set(rotate(p1, np.pi / fold), p2)  # g2 is g1 rotated by pi/L about z
    assert same_set(rotate(p1, 2 * np.pi / fold), p1)  # g1 has L-fold symmetry
    assert same_set(rotate(p2, 2 * np.pi / fold), p2)  # ... and so does g2
    assert not same_set(p1, p2)  # ... and the copy is a different orientation
    np.testing.assert_allclose(_sorted_distances(pair.g1), _sorted_distances(pair.g2), atol=1e-12)
    assert pair.orientation_order == fold


def test_two_body_pair_facts_equal_distances_different_angles():
    pair = two_body_degenerate_pair()
    np.testing.assert_allclose(_bond_lengths(pair.g1), _bond_lengths(pair.g2))
    square, tetra = (_angles_at_each_node(g)[-1] for g in (pair.g1, pair.g2))  # the centre's angles
    assert square == (90.0,) * 4 + (180.0,) * 2
    assert np.allclose(tetra, np.degrees(np.arccos(-1 / 3)))


def _three_body(g, centre=0):
    """Multiset over ordered neighbour pairs of (|x_a|, |x_b|, x_a . x_b) at the centre, rounded."""
    v = edge_vectors(g).double().numpy()[g.edge_index[1].numpy() == centre]
    return sorted(
        (round(float(np.linalg.norm(v[a])), 9), round(float(np.linalg.norm(v[b])), 9), round(float(v[a] @ v[b]), 9))
        for a, b in permutations(range(len(v)), 2)
    )


def _four_body(g, centre=0, signed=False):
    """Multiset over neighbour triples of their (sorted) Gram entries, and signed volume if asked."""
    v = edge_vectors(g).double().numpy()[g.edge_index[1].numpy() == centre]
    out = []
    for a, b, c in permutations(range(len(v)), 3):
        gram = tuple(round(float(v[x] @ v[y]), 9) for x, y in ((a, a), (b, b), (c, c), (a, b), (a, c), (b, c)))
        out.append(gram + ((round(float(np.linalg.det(v[[a, b, c]])), 9),) if signed else ()))
    return sorted(out)


def test_three_body_pair_facts_homometric_octagon_subsets():
    s1, s2 = HOMOMETRIC_OCTAGON_SUBSETS

    def cyclic_differences(subset):
        return sorted(min((a - b) % 8, (b - a) % 8) for a, b in combinations(subset, 2))

    assert cyclic_differences(s1) == cyclic_differences(s2) == [1, 1, 2, 3, 3, 4]
    # not congruent: no rotation or reflection of the octagon maps one subset onto the other
    images = {tuple(sorted((sign * x + shift) % 8 for x in s1)) for shift in range(8) for sign in (1, -1)}
    assert tuple(sorted(s2)) not in images
    pair = three_body_degenerate_pair()
    assert _three_body(pair.g1) == _three_body(pair.g2)
    np.testing.assert_allclose(_sorted_distances(pair.g1), _sorted_distances(pair.g2), atol=1e-9)
    assert _four_body(pair.g1) != _four_body(pair.g2)


def test_chiral_pair_facts_mirror_images_not_superimposable():
    pair = chiral_pair()
    p1, p2 = _pos(pair.g1), _pos(pair.g2)
    np.testing.assert_allclose(p2, p1 * [-1, 1, 1])
    assert len(set(np.round(np.linalg.norm(p1[1:], axis=1), 9))) == 3  # three different bond lengths
    assert _four_body(pair.g1) == _four_body(pair.g2)  # every O(3) invariant up to 4-body agrees
    vol1, vol2 = np.linalg.det(p1[1:]), np.linalg.det(p2[1:])
    assert abs(vol1) > 0.1 and np.isclose(vol1, -vol2)  # the pseudoscalar flips
    # distinct bond lengths fix the correspondence; the best proper rotation still misses
    rotation, rmsd = Rotation.align_vectors(p2[1:], p1[1:])
    assert rmsd > 0.1


def _neighbour_shells(g):
    """Per atom: sorted neighbour distances (rounded) within the graph's cutoff."""
    d = edge_vectors(g).norm(dim=-1).double().numpy()
    centre = g.edge_index[1].numpy()
    return [tuple(np.round(np.sort(d[centre == i]), 6)) for i in range(g.num_nodes)]


def test_fcc_hcp_pair_facts_same_first_shell_different_angles():
    pair = fcc_hcp_pair()
    d = FCC_HCP_NEIGHBOUR_DISTANCE
    for g in (pair.g1, pair.g2):
        assert all(shell == (round(d, 6),) * 12 for shell in _neighbour_shells(g))
    # the cutoff stops below the second shell, which is at sqrt(2) d in both crystals
    crystals = (bulk("Cu", "fcc", a=d * np.sqrt(2)), bulk("Cu", "hcp", a=d, c=d * np.sqrt(8 / 3)))
    for g, atoms in zip((pair.g1, pair.g2), crystals):
        second = graph_from_atoms(atoms, 1.5 * d)
        assert np.isclose(np.sort(np.unique(np.round(edge_vectors(second).norm(dim=-1).numpy(), 6)))[1], np.sqrt(2) * d)
        assert float(edge_vectors(g).norm(dim=-1).max()) < np.sqrt(2) * d
    fcc_angles, hcp_angles = set(_angles_at_each_node(pair.g1)[0]), set(_angles_at_each_node(pair.g2)[0])
    assert round(float(np.degrees(np.arccos(-5 / 6))), 6) in hcp_angles - fcc_angles


def test_two_cells_pair_facts_same_crystal():
    pair = same_crystal_two_cells_pair()
    g1, g2 = pair.g1, pair.g2
    assert (g1.num_nodes, g2.num_nodes) == (2, 8)
    volume = [abs(float(torch.det(g.cell[0]))) for g in (g1, g2)]
    assert np.isclose(volume[1] / volume[0], 4.0)  # same density: 4x the atoms in 4x the volume
    for z in (11, 17):  # every Na (Cl) has the same environment in both cells, far beyond the cutoff
        shells = []
        for g in (g1, g2):
            wide = graph_from_atoms(_atoms_of(g), 8.0)
            shells.append({s for s, zz in zip(_neighbour_shells(wide), wide.z.tolist()) if zz == z})
        assert len(shells[0]) == 1 and shells[0] == shells[1]
        assert int((g1.z == z).sum()) * 4 == int((g2.z == z).sum())


def _atoms_of(g):
    from ase import Atoms

    return Atoms(g.z.numpy(), positions=_pos(g), cell=g.cell[0].double().numpy(), pbc=True)


# --------------------------------------------------------------------------- validation
def test_bad_options_raise_clear_value_errors():
    pair = k_chain_pair(2)
    with pytest.raises(ValueError, match="group must be one of O3, SO3"):
        gwl_test(pair.g1, pair.g2, group="E3")
    with pytest.raises(ValueError, match="invariant=True"):
        gwl_test(pair.g1, pair.g2, body_order=3)
    with pytest.raises(ValueError, match=r"body_order must be None or one of \(2, 3, 4\)"):
        gwl_test(pair.g1, pair.g2, invariant=True, body_order=5)
    with pytest.raises(ValueError, match="max_iter"):
        gwl_test(pair.g1, pair.g2, max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        gwl_test(pair.g1, pair.g2, tol=0)


def test_bad_graphs_raise_clear_value_errors():
    good = graph_from_bonds([[0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]], [6, 6, 6], [(0, 1), (0, 2)])
    one_way = good.clone()
    one_way.edge_index = good.edge_index[:, :2]
    one_way.edge_shift = good.edge_shift[:2]
    with pytest.raises(ValueError, match="both directions"):
        gwl_test(good, one_way)
    looped = good.clone()
    looped.edge_index = torch.cat([good.edge_index, torch.tensor([[1], [1]])], 1)
    looped.edge_shift = torch.zeros(looped.edge_index.shape[1], 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="self-loop"):
        gwl_test(good, looped)
    no_pos = good.clone()
    del no_pos.pos
    with pytest.raises(ValueError, match="g2: no pos"):
        gwl_test(good, no_pos)
    with pytest.raises(ValueError, match="bonds must join two different nodes"):
        graph_from_bonds([[0, 0, 0], [1.0, 0, 0]], [6, 6], [(0, 2)])
    with pytest.raises(ValueError, match="unknown pair"):
        load_pairs(["5-chain", "7-gon"])
