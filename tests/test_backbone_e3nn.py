"""The spherical-tensor backbones (NequIP, MACE) beyond the shared conformance suite.

Every option value builds and runs (NequIP max_ell 0..3, MACE correlation 1..3) with equivariant
outputs; bad options raise ValueError; ``node_vectors`` rotate as ``v @ R.T`` (e3nn's l = 1 basis
converted to Cartesian); and with ``parity=True`` NequIP tells a chiral molecule from its mirror
image through its pseudoscalar (0o) channels while its energy stays E(3)-invariant.
All in float64 with tiny models (C = 4..8, 2-3 layers).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from e3nn import o3

import geognn
from geognn.backbones import MACE, NequIP
from geognn.graph.build import build_graph, collate
from geognn.nn.e3nn_blocks import cartesian_from_1o
from geognn.testing import random_rotation, transformed

CUTOFF = 4.0


def _graph(atoms: Atoms):
    return collate([build_graph(atoms, CUTOFF, dtype=torch.float64)])


def _molecule() -> Atoms:
    """A small random non-symmetric molecule (6 atoms, all within the cutoff of each other)."""
    rng = np.random.default_rng(0)
    pos = rng.normal(scale=1.0, size=(6, 3))
    return Atoms("CHNOFC", positions=pos)


def _chiral_pair() -> tuple[Atoms, Atoms]:
    """Bromochlorofluoromethane CHFClBr (tetrahedral, C-X bond lengths in Å) and its mirror image."""
    directions = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float) / np.sqrt(3)
    bonds = np.array([1.09, 1.35, 1.77, 1.94])  # H, F, Cl, Br
    pos = np.vstack([np.zeros(3), directions * bonds[:, None]])
    left = Atoms("CHFClBr", positions=pos)
    right = left.copy()
    right.positions = pos * np.array([1.0, 1.0, -1.0])  # reflection through the xy plane
    return left, right


def _assert_equivariant(backbone, atoms: Atoms, *, proper: bool = True) -> dict:
    """Features invariant, vectors rotate as v @ M.T, pseudoscalars pick up det(M); returns outputs."""
    rng = np.random.default_rng(3)
    mat = random_rotation(rng) * (1.0 if proper else -1.0)
    out0, out1 = backbone(_graph(atoms)), backbone(_graph(transformed(atoms, mat)))
    m = torch.tensor(mat)
    torch.testing.assert_close(out1["node_features"], out0["node_features"], atol=1e-12, rtol=0)
    if "node_vectors" in out0:
        torch.testing.assert_close(out1["node_vectors"], out0["node_vectors"] @ m.T, atol=1e-12, rtol=0)
    if "node_pseudoscalars" in out0:
        det = float(np.linalg.det(mat))
        torch.testing.assert_close(out1["node_pseudoscalars"], det * out0["node_pseudoscalars"], atol=1e-12, rtol=0)
    return out0


def test_e3nn_l1_basis_converts_to_cartesian():
    """cartesian_from_1o(Y^1(v)) is sqrt(3) v / |v| whatever e3nn's l = 1 component order is."""
    v = torch.randn(5, 3, dtype=torch.float64)
    y1 = o3.spherical_harmonics(1, v, normalize=True, normalization="component")
    torch.testing.assert_close(cartesian_from_1o(y1), np.sqrt(3.0) * v / v.norm(dim=-1, keepdim=True))


def test_clebsch_gordan_constants_stay_exact_through_dtype_changes():
    """Built in float32 then ``.double()`` (as tests and users do), or loaded from a float32 state:
    e3nn's Wigner 3j buffers are recomputed in float64, so equivariance holds to round-off (~1e-15)
    instead of float32's ~1e-8 (the 1e-12 tolerances of this file rely on it)."""
    torch.manual_seed(0)
    model32 = NequIP(hidden_channels=2, num_layers=2, max_ell=2)
    model64 = NequIP(hidden_channels=2, num_layers=2, max_ell=2).double()
    model64.load_state_dict(model32.state_dict())  # float32 values copied into float64 buffers
    w3j = {n: b for n, b in model64.named_buffers() if "_w3j_" in n}
    assert w3j, "no Wigner 3j buffers found: has e3nn changed how it stores them?"
    for name, buf in w3j.items():
        l1, l2, l3 = (int(x) for x in name.rsplit("_w3j_", 1)[1].split("_"))
        assert buf.dtype == torch.float64
        torch.testing.assert_close(buf, o3.wigner_3j(l1, l2, l3, dtype=torch.float64), atol=1e-15, rtol=0)


@pytest.mark.parametrize("max_ell", [0, 1, 2, 3])
def test_nequip_every_max_ell_builds_and_is_equivariant(max_ell):
    torch.manual_seed(0)
    backbone = NequIP(hidden_channels=4, num_layers=2, max_ell=max_ell, cutoff=CUTOFF).double()
    out = _assert_equivariant(backbone, _molecule(), proper=False)
    assert out["node_features"].shape == (6, 4)
    assert ("node_vectors" in out) == (max_ell >= 1)
    if max_ell >= 1:
        assert out["node_vectors"].shape == (6, 4, 3) and out["node_vectors"].abs().max() > 1e-4
    assert out["node_pseudoscalars"].shape == (6, 4)


@pytest.mark.parametrize("correlation", [1, 2, 3])
def test_mace_every_correlation_builds_and_is_equivariant(correlation):
    torch.manual_seed(0)
    backbone = MACE(hidden_channels=4, num_layers=2, max_ell=2, correlation=correlation, cutoff=CUTOFF).double()
    out = _assert_equivariant(backbone, _molecule(), proper=True)
    _assert_equivariant(backbone, _molecule(), proper=False)
    assert out["node_features"].shape == (6, 2 * 4)  # 0e channels of both layers
    assert out["node_vectors"].shape == (6, 4, 3) and out["node_vectors"].abs().max() > 1e-4


def test_mace_higher_correlation_changes_the_output():
    """correlation adds terms: with the same seed, nu = 1 and nu = 3 give different features."""
    outs = []
    for correlation in (1, 3):
        torch.manual_seed(0)
        backbone = MACE(hidden_channels=4, num_layers=1, max_ell=2, correlation=correlation, cutoff=CUTOFF)
        outs.append(backbone.double()(_graph(_molecule()))["node_features"])
    assert (outs[0] - outs[1]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_ell=4), "max_ell must be an integer in 0..3"),
        (dict(max_ell=-1), "max_ell must be an integer in 0..3"),
        (dict(hidden_channels=0), "hidden_channels must be a positive integer"),
        (dict(avg_num_neighbors=0.0), "avg_num_neighbors must be > 0"),
    ],
)
def test_nequip_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NequIP(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(correlation=0), "correlation must be an integer in 1..3"),
        (dict(correlation=4), "correlation must be an integer in 1..3"),
        (dict(max_ell=0), "max_ell must be an integer in 1..3"),
        (dict(max_ell=2, hidden_max_ell=3), "hidden_max_ell must be an integer in 1..max_ell=2"),
    ],
)
def test_mace_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MACE(**kwargs)


def test_nequip_parity_tells_mirror_images_apart_with_invariant_energy():
    """CHFClBr and its mirror image: same energy, pseudoscalars (0o) of opposite sign.

    0o features need three layers: layer 1 makes polar 1o/2e features, layer 2 their cross
    products (1e), layer 3 contracts 1e with an edge direction (1o) to 0o, a triple product.
    """
    left, right = _chiral_pair()
    torch.manual_seed(0)
    model = (
        geognn.build_model("nequip", cutoff=CUTOFF, hidden_channels=4, num_layers=3, max_ell=1, parity=True)
        .double()
        .eval()
    )
    out_l, out_r = model(_graph(left), forces=True), model(_graph(right), forces=True)
    torch.testing.assert_close(out_r["energy"], out_l["energy"], atol=1e-12, rtol=0)
    mirror = torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(out_r["forces"], out_l["forces"] * mirror, atol=1e-12, rtol=0)
    ps_l, ps_r = out_l["node_pseudoscalars"], out_r["node_pseudoscalars"]  # [5, 4]
    assert ps_l.abs().max() > 1e-6, "no pseudoscalar signal: the chirality check would be vacuous"
    torch.testing.assert_close(ps_r, -ps_l, atol=1e-12, rtol=0)
    # so the two enantiomers differ in a per-atom feature, which no rotation can undo
    assert (ps_r - ps_l).abs().max() > 1e-6
    # a rotated copy of the left-handed molecule keeps the sign: the difference is chirality
    rot = random_rotation(np.random.default_rng(5))
    ps_rot = model(_graph(transformed(left, rot)), forces=False)["node_pseudoscalars"]
    torch.testing.assert_close(ps_rot, ps_l, atol=1e-12, rtol=0)


def test_nequip_without_parity_has_no_pseudoscalars_and_same_mirror_features():
    left, right = _chiral_pair()
    torch.manual_seed(0)
    backbone = NequIP(hidden_channels=4, num_layers=3, max_ell=1, parity=False, cutoff=CUTOFF).double()
    out_l, out_r = backbone(_graph(left)), backbone(_graph(right))
    assert "node_pseudoscalars" not in out_l
    assert [str(ir) for _, ir in backbone.irreps_hidden] == ["0e", "1o"]
    torch.testing.assert_close(out_r["node_features"], out_l["node_features"], atol=1e-12, rtol=0)


def test_repr_lists_hyperparameters():
    text = repr(NequIP(hidden_channels=4, num_layers=1, max_ell=1))
    assert "hidden_channels=4" in text and "max_ell=1" in text and "parity=True" in text
    text = repr(MACE(hidden_channels=4, num_layers=1, max_ell=1, correlation=2))
    assert "correlation=2" in text and "avg_num_neighbors=10.0" in text


def test_element_self_connection_equals_e3nn_tensor_product_with_one_hot():
    """The per-element matrices compute exactly e3nn's FCTP(h, onehot(z)) (NequIP's self-connection),
    including several input blocks of the same irrep feeding one output (fan-in normalisation)."""
    from geognn.nn.e3nn_blocks import ElementSelfConnection

    torch.manual_seed(0)
    irreps_in, irreps_out, num_elements = o3.Irreps("3x0e + 2x1o + 4x0e + 2x2e"), o3.Irreps("5x0e + 3x1o"), 10
    ours = ElementSelfConnection(irreps_in, num_elements, irreps_out).double()
    reference = o3.FullyConnectedTensorProduct(irreps_in, o3.Irreps(f"{num_elements}x0e"), irreps_out).double()
    assert len(reference.instructions) == len(ours.paths) == 3  # 0e->0e twice, 1o->1o; 2e goes nowhere
    with torch.no_grad():
        for ins, w in zip(reference.instructions, reference.weight_views(yield_instruction=False)):
            path = ours.paths.index((ins.i_in1, ins.i_out))
            w.copy_(ours.weights[path].permute(1, 0, 2))  # [C_in, Z, C_out]
    z = torch.tensor([1, 6, 6, 8, 1, 9, 6])
    h = torch.randn(len(z), irreps_in.dim, dtype=torch.float64)
    one_hot = torch.nn.functional.one_hot(z, num_elements).double() * num_elements**0.5
    torch.testing.assert_close(ours(h, z), reference(h, one_hot), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("nequip", dict(max_ell=2, parity=True)),
        ("nequip", dict(max_ell=1, parity=False)),
        ("mace", dict(max_ell=2, correlation=3)),
    ],
)
def test_channelwise_tensor_product_reproduces_e3nn_in_the_models(name, kwargs):
    """NequIP/MACE built with e3nn's TensorProduct (the implementation before
    ChannelwiseTensorProduct) and with ours: same state_dict keys, the old checkpoint loads
    strictly, and energies, forces and the parameter gradient of a force loss (double backward)
    agree to 1e-12 in float64."""
    import geognn.nn.e3nn_blocks as blocks

    models = {}
    for use_e3nn in (True, False):
        blocks._USE_E3NN_TENSOR_PRODUCT = use_e3nn
        try:
            torch.manual_seed(0)
            models[use_e3nn] = geognn.build_model(name, cutoff=CUTOFF, hidden_channels=4, num_layers=2, **kwargs)
        finally:
            blocks._USE_E3NN_TENSOR_PRODUCT = False
    old, new = models[True], models[False]
    assert any(isinstance(m, blocks._E3nnTensorProduct) for m in old.modules())
    assert not any(
        isinstance(m, o3.TensorProduct)
        for m in new.backbone.modules()
        if not isinstance(m, o3.ElementwiseTensorProduct)
    )  # the gate's product stays e3nn's
    assert list(old.state_dict()) == list(new.state_dict())
    torch.manual_seed(1)
    for p in new.parameters():  # scramble, then restore from the old model's checkpoint
        p.data.normal_()
    new.load_state_dict(old.state_dict())
    old, new = old.double().train(), new.double().train()
    batch = _graph(_molecule())
    results = []
    for model in (old, new):
        model.zero_grad()
        out = model(batch, forces=True)
        (out["energy"].square().sum() + out["forces"].square().sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((out["energy"], out["forces"], grads))
    assert results[0][1].abs().max() > 1e-3 and results[0][2].abs().max() > 1e-3
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
