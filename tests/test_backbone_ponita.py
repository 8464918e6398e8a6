"""PΘNITA / PNITA: sphere grids, invariant attributes, the separable convolution against the
paper's sums written out by hand, the measured rotation and reflection error against num_ori, and
training on molecules and on periodic crystals.

test_model.py runs the conformance suite (translations, permutations, periodic wrapping, cell
changes, supercells, batching, finite differences, cutoff smoothness) on both; PNITA's rotation
and reflection checks run there to float precision. PΘNITA is equivariant only up to its grid on
the sphere, so its rotation error is measured here, in meV/atom (energies) and meV/Å (forces): it
must fall as num_ori grows, and stay below ROTATION_TOLERANCE_* at the default num_ori.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from backbone_configs import SMALL
from conftest import load_jarvis, load_oc20_slabs, load_qm9_molecules

import geognn
from geognn import testing as T
from geognn.backbones import BACKBONES, PNITA, PONITA
from geognn.backbones.ponita import (
    PERP_EPS,
    PolynomialFeatures,
    SeparableConv,
    invariant_attributes,
    sample_kernels,
    unit_attributes,
)
from geognn.symmetry.sphere import (
    antipodal_grid,
    antipodes,
    covering_radius,
    fibonacci_grid,
    orientation_grid,
    random_rotation,
    repulsion_grid,
    thomson_energy,
)

pytestmark = pytest.mark.filterwarnings("ignore::geognn.graph.build.IsolatedAtomWarning")

CUTOFF = 4.0
#: Largest rotation/reflection error accepted at the default num_ori = 20, for the random-weight
#: ERROR_MODEL below (per-atom scale 0.5 eV), from geognn.testing.check_rotation/check_reflection on
#: the learned energy: energy |E(Rx) - E(x)| / n_atoms in meV/atom, forces max_i |F_i(Rx) - F_i(x)Rᵀ|
#: in meV/Å. Measured over the 3 molecules and 3 crystals below (seed 4): energy 0.07-25 meV/atom
#: (rotation 0.5-25, reflection 0.07-11), forces 58-300 meV/Å, against learned energies of
#: 0.05-0.3 eV/atom and largest forces of 0.3-0.7 eV/Å: at num_ori = 20 a random-weight PΘNITA's
#: force error is a large fraction (up to ~40 %) of its forces. That is the price of the grid, not
#: a tolerance that makes it acceptable: it falls as num_ori grows (test below; at 64: 0.3-6 meV/atom,
#: 28-79 meV/Å), and benchmarks/bench_ponita.py gives the table per num_ori (eval_num_ori evaluates
#: a trained model on a finer grid). The bounds are 2x the largest measured value, so that a
#: regression of the grid or of the kernels (e.g. an error growing 2x) fails.
ROTATION_TOLERANCE_MEV_PER_ATOM = 50.0
ROTATION_TOLERANCE_MEV_PER_A = 600.0
DEFAULT_NUM_ORI = 20
#: Model for the error measurements: small, but 3 layers so the sphere convolution compounds.
ERROR_MODEL = dict(hidden_channels=16, num_layers=3, basis_dim=16, degree=3, widening_factor=2)


def model_with(name="ponita", seed=0, dtype=torch.float64, **kwargs):
    """Model with eV-sized energies, as tests/test_model.py builds them."""
    torch.manual_seed(seed)
    model = geognn.build_model(name, cutoff=CUTOFF, **kwargs).to(dtype).eval()
    model.reference.energies[1:] = -torch.arange(1, model.reference.energies.numel(), dtype=dtype) * 0.3
    model.set_scale_shift(0.5, 0.1)
    return model


def same_weights(model, num_ori):
    """``model``'s weights on another grid: no weight depends on the grid, so the state_dict loads."""
    other = geognn.build_model(
        "ponita", cutoff=CUTOFF, **{**model.backbone_kwargs, "num_ori": num_ori, "eval_num_ori": None}
    )
    other = other.double().eval()
    other.load_state_dict(model.state_dict())
    return other


@pytest.fixture(scope="module")
def molecules():
    return load_qm9_molecules(40)[-3:]


@pytest.fixture(scope="module")
def crystals():
    rng = np.random.default_rng(7)
    out = [a for a in load_jarvis(50) if len(a) <= 12][:2] + [load_oc20_slabs()[2]]
    for a in out:
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
    return out


# --------------------------------------------------------------------------- grids on the sphere
def test_fibonacci_grid_is_unit_and_near_uniform():
    grid = fibonacci_grid(400)
    assert grid.shape == (400, 3)
    np.testing.assert_allclose(grid.norm(dim=-1), 1.0, atol=1e-14)
    assert abs(float(grid[:, 2].sum())) < 1e-12  # equal-area bands in z: exactly balanced
    # every cap of half-angle 60° (area fraction (1 - cos 60°) / 2 = 1/4) holds ~ a quarter of the points
    gen = torch.Generator().manual_seed(0)
    axes = torch.nn.functional.normalize(torch.randn(20, 3, dtype=torch.float64, generator=gen), dim=-1)
    fractions = ((grid @ axes.T) > 0.5).double().mean(0)
    assert torch.all((fractions - 0.25).abs() < 0.02), fractions
    assert torch.equal(fibonacci_grid(400), grid)  # deterministic


@pytest.mark.parametrize(
    "n, energy, dots",
    [
        (4, 3.674234614, [-1 / 3]),  # regular tetrahedron
        (6, 9.985281374, [0.0, -1.0]),  # octahedron
        (12, 49.165253058, [1 / math.sqrt(5), -1 / math.sqrt(5), -1.0]),  # icosahedron
    ],
)
def test_repulsion_grid_finds_the_known_thomson_minimisers(n, energy, dots):
    """Known solutions of the Thomson problem (energy sum 1/r of unit charges on the unit sphere)."""
    grid = repulsion_grid(n)
    assert float(thomson_energy(grid)) == pytest.approx(energy, abs=1e-6)
    gram = (grid @ grid.T)[~torch.eye(n, dtype=torch.bool)]
    distance_to_expected = (gram.unsqueeze(-1) - torch.tensor(dots, dtype=gram.dtype)).abs().min(-1).values
    assert float(distance_to_expected.max()) < 1e-4
    assert covering_radius(grid) < covering_radius(fibonacci_grid(n))  # more uniform than its start


def test_random_rotation_is_proper_and_uniform():
    gen = torch.Generator().manual_seed(1)
    mats = torch.stack([random_rotation(generator=gen) for _ in range(1000)])
    eye = torch.eye(3, dtype=torch.float64).expand(1000, 3, 3)
    np.testing.assert_allclose(mats @ mats.transpose(1, 2), eye, atol=1e-12)
    np.testing.assert_allclose(torch.linalg.det(mats), 1.0, atol=1e-12)
    # Haar measure: a rotated axis is uniform on the sphere, mean 0 and E[(R e_z) (R e_z)^T] = I / 3
    v = mats[:, :, 2]
    assert float(v.mean(0).abs().max()) < 0.08  # 4 standard errors (sqrt(1/3 / 1000) = 0.018)
    np.testing.assert_allclose(v.T @ v / 1000, torch.eye(3, dtype=torch.float64) / 3, atol=0.05)


def test_grid_arguments_are_checked():
    with pytest.raises(ValueError, match="num_points >= 1"):
        fibonacci_grid(0)
    with pytest.raises(
        ValueError, match="unknown grid method 'cube'; choose one of: auto, fibonacci, antipodal, repulsion"
    ):
        orientation_grid(8, "cube")
    with pytest.raises(ValueError, match="num_points must be even, got 7"):
        orientation_grid(7, "antipodal")


def test_antipodal_grid_pairs_opposites_and_is_as_uniform_as_the_others():
    """Every row k + n/2 is -row k; the pairs-relaxed grid covers the sphere at least about as
    well as the Fibonacci lattice (covering radius, measured for n = 6..64: within 7 % at n = 16,
    where relaxation stops in a local minimum, 8-17 % smaller elsewhere)."""
    for n in (2, 6, 16, 20, 64, 384):
        grid = antipodal_grid(n)
        np.testing.assert_allclose(grid.norm(dim=-1), 1.0, atol=1e-14)
        np.testing.assert_allclose(grid[n // 2 :], -grid[: n // 2], atol=0)
        assert torch.equal(antipodes(grid), (torch.arange(n) + n // 2) % n)
        assert covering_radius(grid) < 1.07 * covering_radius(fibonacci_grid(n))
    # the octahedron is both antipodal and the Thomson minimiser for 6 points
    assert float(thomson_energy(antipodal_grid(6))) == pytest.approx(9.985281374, abs=1e-6)
    assert antipodes(fibonacci_grid(20)) is None and antipodes(repulsion_grid(5)) is None
    rotated = antipodal_grid(20) @ random_rotation(generator=torch.Generator().manual_seed(2)).T
    assert torch.equal(antipodes(rotated), antipodes(antipodal_grid(20)))  # a rotation keeps the pairs


def test_antipodal_grid_needs_even_counts_and_finds_its_pairs():
    model = PONITA(num_ori=8, eval_num_ori=12, grid="antipodal", hidden_channels=4, num_layers=1, basis_dim=4)
    np.testing.assert_allclose(model.grid, antipodal_grid(8, dtype=model.grid.dtype))
    assert torch.equal(model.grid_antipode, (torch.arange(8) + 4) % 8)
    assert torch.equal(model.eval_antipode, (torch.arange(12) + 6) % 12)
    assert PONITA(num_ori=8, grid="fibonacci", hidden_channels=4, num_layers=1, basis_dim=4).grid_antipode is None
    with pytest.raises(
        ValueError, match="grid='antipodal' pairs every orientation with its opposite, so num_ori must be even"
    ):
        PONITA(num_ori=7, grid="antipodal")
    with pytest.raises(ValueError, match="so eval_num_ori must be even, got 9"):
        PONITA(num_ori=8, eval_num_ori=9, grid="antipodal")


def test_the_default_grid_is_antipodal_for_even_counts_and_fibonacci_for_odd_ones():
    small = dict(hidden_channels=4, num_layers=1, basis_dim=4)
    even = PONITA(num_ori=8, eval_num_ori=13, **small)  # grid="auto"
    assert even.hparams["grid"] == "auto"
    assert torch.equal(even.grid, antipodal_grid(8, dtype=even.grid.dtype))
    assert torch.equal(even.grid_antipode, (torch.arange(8) + 4) % 8)
    assert torch.equal(even.eval_grid, fibonacci_grid(13, dtype=even.grid.dtype)) and even.eval_antipode is None
    odd = PONITA(num_ori=7, eval_num_ori=12, **small)  # odd: no error, the Fibonacci lattice
    assert torch.equal(odd.grid, fibonacci_grid(7, dtype=odd.grid.dtype)) and odd.grid_antipode is None
    assert torch.equal(odd.eval_antipode, (torch.arange(12) + 6) % 12)
    assert torch.equal(orientation_grid(10, "auto"), antipodal_grid(10))
    assert torch.equal(orientation_grid(11, "auto"), fibonacci_grid(11))


# --------------------------------------------------------------------------- attributes and convolution
def test_invariant_attributes_hand_values():
    r = torch.tensor([[1.0, 2.0, 2.0]], dtype=torch.float64)
    grid = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]], dtype=torch.float64)
    a = invariant_attributes(r, grid)
    assert a.shape == (1, 3, 2)
    np.testing.assert_allclose(a[0, :, 0], [2.0, 1.0, -2.0], atol=1e-15)
    np.testing.assert_allclose(a[0, :, 1], np.sqrt(np.array([5.0, 8.0, 5.0]) + PERP_EPS), atol=1e-15)
    assert invariant_attributes(r, None).flatten().tolist() == [3.0]  # PNITA: the distance


def test_attributes_are_invariant_under_rotations_and_reflections_of_both():
    rng = np.random.default_rng(0)
    r = torch.as_tensor(rng.normal(size=(7, 3)))
    grid = fibonacci_grid(10)
    for parity in (1, -1):
        m = torch.as_tensor(parity * T.random_rotation(rng))
        np.testing.assert_allclose(invariant_attributes(r @ m.T, grid @ m.T), invariant_attributes(r, grid), atol=1e-13)


def legendre_scaled(n, t):
    """sqrt(2n + 1) P_n(t) from the closed forms (independent of the recurrence in the code)."""
    closed = {0: 1.0, 1: t, 2: (3 * t * t - 1) / 2, 3: (5 * t**3 - 3 * t) / 2}
    return math.sqrt(2 * n + 1) * closed[n]


def test_polynomial_features_are_orthonormal_legendre_products_spanning_the_monomials():
    poly = PolynomialFeatures(num_attributes=2, degree=3)
    x, y = 0.5, -0.3
    got = sorted(poly(torch.tensor([x, y], dtype=torch.float64)).tolist())
    expected = sorted(
        legendre_scaled(m, x) * legendre_scaled(n, y) for m in range(4) for n in range(4) if 1 <= m + n <= 3
    )
    np.testing.assert_allclose(got, expected, atol=1e-14)
    # orthonormal on [-1, 1]^2 (uniform measure): Gauss-Legendre quadrature, exact for these degrees
    nodes, weights = np.polynomial.legendre.leggauss(4)
    tx, ty = np.meshgrid(nodes, nodes, indexing="ij")
    w = torch.as_tensor(np.outer(weights, weights).ravel() / 4)
    f = poly(torch.as_tensor(np.stack([tx.ravel(), ty.ravel()], -1)))  # [16, 9]
    np.testing.assert_allclose((f.T * w) @ f, np.eye(9), atol=1e-12)
    # with a constant they span the monomials of degree <= 3 (the paper's features): exact fit
    t = torch.rand(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    design = torch.cat([torch.ones(50, 1, dtype=torch.float64), poly(t)], dim=1)
    monomials = torch.stack([t[:, 0] ** a * t[:, 1] ** b for a in range(4) for b in range(4) if 1 <= a + b <= 3], dim=1)
    residual = design @ torch.linalg.lstsq(design, monomials).solution - monomials
    assert float(residual.abs().max()) < 1e-10
    # smooth at 0 to second order (autograd forces in training differentiate twice)
    a = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(poly(a).sum(), a, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), a)
    assert torch.isfinite(gg).all()


def test_distance_features_are_well_conditioned_over_the_cutoff():
    """The regression behind slow learning: features of the distance over [0, r_c] must not be
    nearly collinear (monomials of d / r_c in [0, 1] have a Gram condition number ~3e3 at degree 3,
    and learning on QM9 stalled; see the module docstring)."""
    d = torch.linspace(0.0, CUTOFF, 201, dtype=torch.float64).view(-1, 1, 1)  # [E, 1, 1] Å
    f = PolynomialFeatures(num_attributes=1, degree=3)(unit_attributes(d, CUTOFF)).squeeze(1)  # [201, 3]
    gram = f.T @ f / len(f)
    assert float(torch.linalg.cond(gram)) < 2.0
    np.testing.assert_allclose(torch.diagonal(gram), 1.0, rtol=0.05)  # unit mean square


def test_unit_attributes_map_the_range_onto_minus_one_one():
    r = torch.tensor([[0.0, 0.0, CUTOFF], [0.0, 0.0, 0.0]], dtype=torch.float64)  # at the cutoff; at 0
    grid = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    t = unit_attributes(invariant_attributes(r, grid), CUTOFF)
    np.testing.assert_allclose(t[0], [[1.0, -1.0], [0.0, 1.0]], atol=1e-3)  # perp carries sqrt(PERP_EPS)
    np.testing.assert_allclose(t[1, :, 0], 0.0, atol=0)
    np.testing.assert_allclose(unit_attributes(invariant_attributes(r, None), CUTOFF).flatten(), [1.0, -1.0])


def test_sample_kernels_equals_one_linear_per_layer():
    """The speed-only rewrite: one product with the stacked weights gives each layer's kernel."""
    torch.manual_seed(0)
    maps = [torch.nn.Linear(5, c, bias=False).double() for c in (3, 4, 3)]
    basis = torch.randn(7, 6, 5, dtype=torch.float64)
    got = sample_kernels(basis, maps)
    assert [k.shape for k in got] == [(7, 6, 3), (7, 6, 4), (7, 6, 3)]
    for k, m in zip(got, maps):
        np.testing.assert_allclose(k.detach(), m(basis).detach(), atol=1e-13)


def test_separable_convolution_matches_the_sums_written_out():
    """conv(h)_i(o_p) = (1/O) sum_q k_f(o_p . o_q) * sum_{j->i} k_s(a_ij(o_q)) * h_j(o_q) + b."""
    torch.manual_seed(0)
    n, num_ori, channels, basis = 3, 4, 2, 5
    conv = SeparableConv(channels, basis, sphere=True).double()
    conv.reset_parameters()
    torch.nn.init.normal_(conv.bias)
    edge_index = torch.tensor([[1, 2, 0, 2], [0, 0, 1, 1]])  # (j, i): 1->0, 2->0, 0->1, 2->1
    h = torch.randn(n, num_ori, channels, dtype=torch.float64)
    spatial = torch.randn(4, num_ori, basis, dtype=torch.float64)
    sphere = torch.randn(num_ori, num_ori, basis, dtype=torch.float64)
    (k_sphere,) = sample_kernels(sphere, [conv.sphere_kernel])
    got = conv(h, edge_index, spatial, k_sphere)
    # the same sum over blocks of edges (the speed-only path of the network): blocks of 1, 3 edges
    blocks = conv(h, list(edge_index.split([1, 3], dim=1)), list(spatial.split([1, 3])), k_sphere)
    np.testing.assert_allclose(blocks.detach(), got.detach(), atol=1e-14)
    ws, wf, b = conv.spatial_kernel.weight.detach(), conv.sphere_kernel.weight.detach(), conv.bias.detach()
    expected = torch.zeros(n, num_ori, channels, dtype=torch.float64)
    for i in range(n):
        for p in range(num_ori):
            for c in range(channels):
                total = 0.0
                for q in range(num_ori):
                    inner = sum(
                        float(ws[c] @ spatial[e, q]) * float(h[edge_index[0, e], q, c])
                        for e in range(4)
                        if edge_index[1, e] == i
                    )
                    total += float(wf[c] @ sphere[p, q]) * inner
                expected[i, p, c] = total / num_ori + b[c]
    np.testing.assert_allclose(got.detach(), expected, atol=1e-12)
    assert torch.equal(got[2], b.expand(num_ori, channels))  # atom 2 receives nothing: bias only


def test_node_vectors_are_the_sphere_sum_of_orientations():
    """With a grid of one orientation o, node_vectors = g * o: they lie along o (hand-derived)."""
    model = model_with(num_ori=1, **ERROR_MODEL)
    batch = geognn.collate([geognn.build_graph(load_qm9_molecules(3)[-1], CUTOFF, dtype=torch.float64)])
    with torch.no_grad():
        out = model.backbone(batch)
    o = model.backbone.grid.double()[0]
    v, f = out["node_vectors"], out["node_features"]
    np.testing.assert_allclose(v, f.unsqueeze(-1) * o, atol=1e-12)


# --------------------------------------------------------------------------- measured symmetry error
def rotation_error(model, structures, rotations) -> dict:
    """Medians over structures x rotations of the learned-energy error (meV/atom) and of the largest
    force error (meV/Å), as geognn.testing.check_rotation measures them."""
    energy, forces = [], []
    for atoms in structures:
        for rot in rotations:
            ref, got = T.predict(model, [atoms, T.transformed(atoms, rot)], stress=False, reference=False)
            energy.append(1e3 * abs(got["energy"] - ref["energy"]) / len(atoms))
            forces.append(1e3 * float(np.linalg.norm(got["forces"] - ref["forces"] @ rot.T, axis=-1).max()))
    return {"meV/atom": float(np.median(energy)), "meV/Å": float(np.median(forces))}


@pytest.mark.parametrize("kind", ["molecules", "crystals"])
@pytest.mark.parametrize("parity", [1, -1], ids=["rotation", "reflection"])
def test_symmetry_error_shrinks_as_num_ori_grows(kind, parity, molecules, crystals, request):
    structures = molecules if kind == "molecules" else crystals[:2]
    rng = np.random.default_rng(3)
    mats = [parity * T.random_rotation(rng) for _ in range(2)]
    base = model_with(num_ori=4, **ERROR_MODEL)
    errors = {n: rotation_error(same_weights(base, n), structures, mats) for n in (4, 16, 64)}
    e, f = ({n: errors[n][unit] for n in errors} for unit in ("meV/atom", "meV/Å"))
    assert e[4] > 1.0 and f[4] > 100.0, f"errors at num_ori=4 {errors[4]}: the measurement would be empty"
    # forces fall monotonically (measured 5-12x from 4 to 64); energies, medians of only 4 numbers,
    # overall (measured 3.5x on the crystals, where 16 was above 4)
    assert f[64] < f[16] < f[4] and f[64] < f[4] / 5, errors
    assert e[64] < e[4] / 2, errors


@pytest.mark.parametrize("parity", [1, -1], ids=["rotation", "reflection"])
def test_rotation_error_at_default_num_ori_is_below_tolerance(parity, molecules, crystals):
    assert PONITA().hparams["num_ori"] == DEFAULT_NUM_ORI
    model = model_with(num_ori=DEFAULT_NUM_ORI, **ERROR_MODEL)
    rng = np.random.default_rng(4)
    check = T.check_rotation if parity == 1 else T.check_reflection
    for atoms in molecules + crystals:
        result = check(model, atoms, rng)
        assert 1e3 * result.errors["energy"] < ROTATION_TOLERANCE_MEV_PER_ATOM, str(result)
        assert 1e3 * result.errors["forces"] < ROTATION_TOLERANCE_MEV_PER_A, str(result)
    (out,) = T.predict(model, [crystals[0]])
    assert np.abs(out["forces"]).max() > 1e-3  # errors are compared with non-trivial forces


def test_node_vector_error_shrinks_as_num_ori_grows(molecules):
    rng = np.random.default_rng(5)
    base = model_with(num_ori=4, **ERROR_MODEL)
    errors = {}
    for n in (4, 16, 64):
        model = same_weights(base, n)
        errors[n] = max(
            T.check_vector_equivariance(model, atoms, np.random.default_rng(5)).error for atoms in molecules[:2]
        )
    assert errors[64] < errors[16] < errors[4], errors
    del rng


# --------------------------------------------------------------------------- grid rotation, arguments
def test_random_grid_rotation_only_in_training(molecules):
    batch = geognn.collate([geognn.build_graph(molecules[0], CUTOFF, dtype=torch.float64)])
    backbone = model_with(num_ori=8, random_grid_rotation=True, **ERROR_MODEL).backbone
    backbone.train()
    a, b = backbone(batch)["node_features"], backbone(batch)["node_features"]
    assert (a - b).abs().max() > 1e-6  # a fresh grid orientation each forward pass
    grid = backbone.orientations(torch.float64)
    np.testing.assert_allclose(grid.norm(dim=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(grid @ grid.T, backbone.grid.double() @ backbone.grid.double().T, atol=1e-7)
    backbone.eval()
    assert torch.equal(backbone(batch)["node_features"], backbone(batch)["node_features"])
    fixed = model_with(num_ori=8, **ERROR_MODEL).backbone.train()
    assert torch.equal(fixed(batch)["node_features"], fixed(batch)["node_features"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_ori=0), "num_ori must be a positive integer, got 0"),
        (dict(grid="cube"), "unknown grid 'cube'; choose one of: auto, fibonacci, antipodal, repulsion"),
        (dict(layer_scale=0.0), "layer_scale must be > 0, got 0.0"),
        (dict(hidden_channels=0), "hidden_channels must be a positive integer, got 0"),
        (dict(degree=1.5), "degree must be a positive integer, got 1.5"),
        (dict(cutoff=-1.0), "cutoff must be > 0, got -1.0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PONITA(**kwargs)


def test_registry_and_pnita_signature():
    assert BACKBONES["ponita"] is PONITA and BACKBONES["pnita"] is PNITA
    assert PONITA.rotation_symmetry == "approximate" and PNITA.rotation_symmetry == "exact"
    pnita = PNITA(**SMALL["pnita"])
    assert "num_ori" not in pnita.hparams and pnita.grid is None
    with pytest.raises(TypeError):
        PNITA(num_ori=8)  # no sphere in PNITA: the keyword does not exist


def test_checkpoint_round_trip_rebuilds_the_grid(tmp_path, crystals):
    model = model_with(**SMALL["ponita"])
    assert not any("grid" in k for k in model.state_dict())  # derived from the hyperparameters
    model.save(tmp_path / "p.pt")
    loaded = geognn.load_model(tmp_path / "p.pt")
    a, b = T.predict(model, crystals[:1])[0], T.predict(loaded, crystals[:1])[0]
    assert a["energy"] == pytest.approx(b["energy"], abs=1e-12)
    np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-12)


# --------------------------------------------------------------------------- training
def emt_copper(n, seed=0):
    """Rattled Cu cells (periodic) with EMT energies and forces: an independent reference potential."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=bool(k % 2))
        atoms.rattle(0.1, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        out.append((atoms, atoms.get_potential_energy(), atoms.get_forces()))
    return out


@pytest.mark.parametrize("name", ["ponita", "pnita"])
def test_learns_energies_and_forces_of_periodic_copper(name):
    """Training mode (double backward through forces, random grid rotation) on crystals.

    The loss has energies and forces (so the optimiser differentiates through the forces); asserted
    is that energies are learned and every gradient stays finite. Forces are learned more slowly
    than by PaiNN on this data (not diagnosed further). On 32 QM9 molecules the rms force at
    initialisation (defaults, 3 seeds) is now 0.2-0.5 eV/Å for ponita, 0.8-1.3 for pnita and
    0.8-1.2 for PaiNN; with the old monomial basis it was 0.03-0.14 for ponita.
    """
    data = emt_copper(6)
    kwargs = dict(hidden_channels=16, num_layers=2, basis_dim=16, degree=3)
    if name == "ponita":
        kwargs.update(num_ori=4, random_grid_rotation=True)
    torch.manual_seed(0)
    model = geognn.build_model(name, cutoff=CUTOFF, **kwargs).double().train()
    model.reference.energies[29] = float(np.mean([e / len(a) for a, e, _ in data]))
    batch = geognn.collate([geognn.build_graph(a, CUTOFF, dtype=torch.float64) for a, _, _ in data])
    energy = torch.tensor([e for _, e, _ in data], dtype=torch.float64)
    forces = torch.tensor(np.concatenate([f for _, _, f in data]))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    energy_loss, forces_loss = [], []
    for _ in range(25):
        out = model(batch, forces=True)
        e_loss, f_loss = (out["energy"] - energy).pow(2).mean(), (out["forces"] - forces).pow(2).mean()
        optimiser.zero_grad()
        (e_loss + f_loss).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimiser.step()
        energy_loss.append(float(e_loss.detach()))
        forces_loss.append(float(f_loss.detach()))
    assert min(energy_loss[-5:]) < energy_loss[0] / 5, energy_loss[::5]
    assert np.isfinite(forces_loss).all()


@pytest.mark.parametrize("name", ["ponita", "pnita"])
def test_learns_qm9_energies_in_80_steps(name):
    """Regression for the badly conditioned polynomial basis (module docstring): 96 QM9 molecules,
    full batch, Adam lr 3e-3, 80 steps; loss = mean((E - E_ref) / n_atoms / scale)^2 after the
    composition fit, so 1 means no better than composition. Measured (seed 0): ponita 0.19, pnita
    0.16; with the old monomial features of |x| / r_c: 0.85 and 0.54 (seeds 1 and 2 alike)."""
    from geognn.datasets.qm9 import read_qm9pack_csv
    from geognn.train.config import DEFAULT_QM9, TrainConfig
    from geognn.train.loop import fit_output

    atoms = read_qm9pack_csv(DEFAULT_QM9, limit=400)[::4][:96]
    batch = geognn.collate([geognn.build_graph(a, CUTOFF, dtype=torch.float64) for a in atoms])
    energy = torch.tensor([a.info["U0"] for a in atoms], dtype=torch.float64)
    natoms = torch.tensor([len(a) for a in atoms], dtype=torch.float64)
    kwargs = dict(hidden_channels=16, num_layers=2, basis_dim=16, degree=3)
    if name == "ponita":
        kwargs["num_ori"] = 6
    torch.manual_seed(0)
    model = geognn.build_model(name, cutoff=CUTOFF, **kwargs).double().train()
    fit_output(model, [torch.as_tensor(a.numbers) for a in atoms], energy, TrainConfig())  # reference, scale
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        out = model(batch, forces=False)
        loss = ((out["energy"] - energy) / natoms / model.scale).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss))
    assert min(losses[-5:]) < 0.35, losses[::10]


def test_trains_on_qm9_with_the_trainer(tmp_path):
    from geognn.train.config import TrainConfig
    from geognn.train.loop import train

    config = TrainConfig(
        backbone="ponita",
        backbone_kwargs=dict(SMALL["ponita"]),
        limit=200,
        epochs=2,
        time_limit=0,
        batch_size=32,
        out=str(tmp_path / "run"),
        threads=2,
    )
    result = train(config, progress=False)
    assert np.isfinite(result.test_mae) and result.test_mae < 10 * result.baseline_test_mae
    model = geognn.load_model(result.model_path)
    assert model.backbone_name == "ponita" and model.backbone.grid.shape == (6, 3)


# --------------------------------------------------------------------------- evaluation on a finer grid
def test_eval_num_ori_evaluates_the_same_weights_on_the_finer_grid(molecules):
    """Train mode uses the num_ori grid, eval mode the eval_num_ori grid, with the same weights;
    and the finer evaluation grid lowers the rotation error."""
    model = model_with(num_ori=4, eval_num_ori=32, **ERROR_MODEL)
    coarse, fine = same_weights(model, 4), same_weights(model, 32)
    batch = geognn.collate([geognn.build_graph(a, CUTOFF, dtype=torch.float64) for a in molecules])
    with torch.no_grad():
        torch.testing.assert_close(
            model(batch, forces=False)["energy"], fine(batch, forces=False)["energy"], rtol=0, atol=1e-12
        )
        model.train()
        coarse.train()
        torch.testing.assert_close(
            model(batch, forces=False)["energy"], coarse(batch, forces=False)["energy"], rtol=0, atol=1e-12
        )
    model.eval()
    assert model.backbone.hparams["eval_num_ori"] == 32
    rng = np.random.default_rng(3)
    rotations = [T.random_rotation(rng) for _ in range(2)]
    errors = {n: rotation_error(m, molecules, rotations) for n, m in (("eval32", model), ("train4", coarse.eval()))}
    for unit in ("meV/atom", "meV/Å"):
        assert errors["eval32"][unit] < errors["train4"][unit] / 3, errors


def test_eval_num_ori_must_be_positive():
    with pytest.raises(ValueError, match="eval_num_ori"):
        PONITA(num_ori=4, eval_num_ori=0)
