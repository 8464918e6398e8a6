"""GWL_(l<=L): GWL whose nodes hold tensors of order <= L (geognn/expressivity/tensor_gwl.py).

What is checked: the hand-derived facts the library's expectations rest on (spherical-harmonic
moments of the stars and of the fcc/hcp shells), that the test sits between the vector-sum class of
one layer and GWL and grows with L, that float32 isometric copies are never separated, that its
tolerance does not split a colour at a rounding boundary, and its argument errors. The expected
iterations of every pair are checked against the library in tests/test_expressivity_gwl.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from e3nn import o3
from scipy.spatial.transform import Rotation

from geognn.expressivity import gwl as gwl_module  # not imported by name: pytest would collect test_*
from geognn.expressivity import gwl_test, isometric_copy, load_pairs
from geognn.expressivity.first_layer import first_layer_separates
from geognn.expressivity.pairs import FCC_HCP_NEIGHBOUR_DISTANCE, two_body_degenerate_pair
from geognn.expressivity.tensor_gwl import tolerant_ranks

PAIRS = load_pairs()
SEPARATING = [p for p in PAIRS if not p.is_orientation_pair and p.expected["O3"]["GWL"] is not None]


def _moment(units: np.ndarray, l: int) -> np.ndarray:
    """sum over neighbours of Y_l(u) (e3nn, component normalisation)."""
    return o3.spherical_harmonics(l, torch.as_tensor(units), True, normalization="component").sum(0).numpy()


def _first_shell(atoms, d: float) -> np.ndarray:
    from ase.neighborlist import neighbor_list

    i, vectors = neighbor_list("iD", atoms, 1.2 * d)
    units = vectors[i == 0]
    return units / np.linalg.norm(units, axis=1, keepdims=True)


# --------------------------------------------------------------------------- the facts behind the library
def test_second_order_moments_of_the_square_and_tetrahedron():
    pair = two_body_degenerate_pair()
    for g, nonzero in ((pair.g1, True), (pair.g2, False)):
        units = (g.pos[1:] / g.pos[1:].norm(dim=1, keepdim=True)).numpy()
        assert np.allclose(_moment(units, 1), 0, atol=1e-12)  # no vector at the centre of either
        assert (np.abs(_moment(units, 2)).max() > 0.5) == nonzero  # the square's plane; none for Td


def test_fcc_and_ideal_hcp_shells_differ_first_at_order_3():
    d = FCC_HCP_NEIGHBOUR_DISTANCE
    fcc = _first_shell(bulk("Cu", "fcc", a=d * np.sqrt(2)), d)
    hcp = _first_shell(bulk("Cu", "hcp", a=d, c=d * np.sqrt(8 / 3)), d)
    assert len(fcc) == len(hcp) == 12
    for l in (1, 2):
        assert np.allclose(_moment(fcc, l), 0, atol=1e-9) and np.allclose(_moment(hcp, l), 0, atol=1e-9), l
    assert np.allclose(_moment(fcc, 3), 0, atol=1e-9)  # centrosymmetric site
    assert np.abs(_moment(hcp, 3)).max() > 0.1  # D_3h fixes an l = 3 tensor and the shell has it
    # a non-ideal c/a gives the hcp shell an l = 2 moment (so the ideal value is what makes it 0)
    squashed = _first_shell(bulk("Cu", "hcp", a=d, c=0.97 * d * np.sqrt(8 / 3)), d)
    assert np.abs(_moment(squashed, 2)).max() > 1e-3


# --------------------------------------------------------------------------- where the test sits
@pytest.mark.parametrize("pair", SEPARATING, ids=lambda p: p.name)
def test_between_one_layer_of_vector_sums_and_gwl_and_growing_with_order(pair):
    gwl = gwl_test(pair.g1, pair.g2).iterations
    orders = [gwl_test(pair.g1, pair.g2, max_order=L, max_iter=6).iterations for L in (1, 2, 3)]
    never = 10**9
    steps = [never if t is None else t for t in orders]
    assert all(s >= gwl for s in steps), (gwl, orders)  # bounded by GWL
    assert steps == sorted(steps, reverse=True), orders  # more order never separates later
    # its first iteration at L = 1 is exactly what one layer of vector sums sees
    assert first_layer_separates(pair.g1, pair.g2, "vector sums") == (orders[0] == 1)


@pytest.mark.parametrize("name", ["5-chain", "3-fold", "2-body", "3-body", "chiral", "fcc-hcp", "nacl-two-cells"])
def test_float32_isometric_copies_are_never_separated(name):
    (pair,) = load_pairs([name])
    rng = np.random.default_rng(0)
    for seed in range(4):
        for g in (pair.g1, pair.g2):
            rotation = Rotation.random(random_state=seed).as_matrix() * (-1 if seed % 2 else 1)
            copy = isometric_copy(g, rotation, rng.normal(size=3) * 3, rng.permutation(g.num_nodes))
            copy.pos = copy.pos.float()  # the dojo's precision: ~1e-7 Å of round-off
            for order in (1, 2):
                assert not gwl_test(g, copy, max_order=order, max_iter=4).distinguished, (name, seed, order)


def test_tolerance_never_splits_a_colour_at_a_rounding_boundary():
    tol = 1e-4
    # 1.5e-4 sits on the boundary of a grid of step 1e-4: rounding would split these two
    forms = [("a", [1.5e-4 - 1e-9, 2.0]), ("a", [1.5e-4 + 1e-9, 2.0]), ("a", [0.3, 2.0]), ("b", [0.0, 2.0])]
    colours = tolerant_ranks(forms, tol)
    assert colours[0] == colours[1] != colours[2] != colours[3]
    assert list(tolerant_ranks(forms[::-1], tol)[::-1]) == list(colours)  # does not depend on the order
    assert sorted(set(colours.tolist())) == [0, 1, 2]


def test_options_and_errors():
    for name in ("GWL", "GWL_(l<=3)", "IGWL", "IGWL_(4)"):
        options = {"invariant": False, "body_order": None, **gwl_module.test_options(name)}
        assert gwl_module.test_name(**options) == name
    pair = load_pairs(["2-body"])[0]
    with pytest.raises(ValueError, match="invariant=False"):
        gwl_test(pair.g1, pair.g2, invariant=True, max_order=1)
    with pytest.raises(ValueError, match="max_order"):
        gwl_test(pair.g1, pair.g2, max_order=0)
    with pytest.raises(ValueError, match="unknown test"):
        gwl_module.test_options("GWL_(3)")
