"""``ChannelwiseTensorProduct`` against e3nn's ``o3.TensorProduct`` (the oracle), in float64.

Same irreps and instructions for both; outputs, gradients w.r.t. both inputs and the weights, and
a second-order gradient (the double backward of training on forces) must agree to 1e-12. Cases
cover l = 0..3, both parities, multiplicities 1 and > 1, "uvu" (also with a second input of
multiplicity > 1) and "uuu", several instructions into one output (e3nn's "element" path
normalisation), paths without weights, instructions out of block order and unreached outputs.
Also: the same module interface as e3nn (``weight_numel``, ``output_mask``, ``state_dict`` keys),
the per-bucket sum (``index``), and Clebsch-Gordan constants kept exact through dtype changes.
"""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from geognn.nn.e3nn_blocks import refresh_wigner_3j
from geognn.nn.scatter import scatter_sum
from geognn.nn.tensor_product import ChannelwiseTensorProduct

TOL = dict(rtol=1e-12, atol=1e-12)


def _all_paths(irreps1, irreps2, irreps_out, mode, has_weight=True):
    """Every allowed instruction (i1, i2, o) of ``mode`` between the three irreps, block-major."""
    irreps1, irreps2, irreps_out = o3.Irreps(irreps1), o3.Irreps(irreps2), o3.Irreps(irreps_out)
    return [
        (i1, i2, o, mode, has_weight)
        for i1, (m1, ir1) in enumerate(irreps1)
        for i2, (m2, ir2) in enumerate(irreps2)
        for o, (mo, ir) in enumerate(irreps_out)
        if ir in ir1 * ir2 and mo == m1 and (mode == "uvu" or m1 == m2)
    ]


def _one_path_per_output(irreps1, irreps2, mode):
    """NequIP's edge-convolution layout: one output block per instruction, in instruction order."""
    irreps1, irreps2 = o3.Irreps(irreps1), o3.Irreps(irreps2)
    out, instructions = [], []
    for i1, (mul, ir1) in enumerate(irreps1):
        for i2, (_, ir2) in enumerate(irreps2):
            for ir in ir1 * ir2:
                instructions.append((i1, i2, len(out), mode, True))
                out.append((mul, ir))
    return irreps1, irreps2, o3.Irreps(out), instructions


def _cases():
    sh3 = o3.Irreps.spherical_harmonics(3)
    both2 = "4x0e + 4x0o + 4x1o + 4x1e + 4x2e + 4x2o"
    cases = {
        "uvu_nequip_lmax2_both_parities": (
            both2,
            "0e + 1o + 2e",
            both2,
            _all_paths(both2, "0e + 1o + 2e", both2, "uvu"),
        ),
        "uvu_one_output_per_path_lmax3": _one_path_per_output("3x0e + 2x1o + 2x2e + 3x3o", sh3, "uvu"),
        "uvu_multiplicity_1_lmax3": (
            "0e + 1o + 2e + 3o",
            sh3,
            "0e + 0o + 1o + 1e + 2e + 2o + 3o + 3e",
            _all_paths("0e + 1o + 2e + 3o", sh3, "0e + 0o + 1o + 1e + 2e + 2o + 3o + 3e", "uvu"),
        ),
        "uvu_second_input_multiplicity_3": (
            "3x0e + 2x1o + 3x1e",
            "2x0e + 3x1o + 2x2e",
            "3x0e + 2x1e + 2x1o + 3x2o",
            _all_paths("3x0e + 2x1o + 3x1e", "2x0e + 3x1o + 2x2e", "3x0e + 2x1e + 2x1o + 3x2o", "uvu"),
        ),
        "uvu_scalars_only": (
            "5x0e + 5x0o",
            "0e + 0o",
            "5x0o + 5x0e",
            _all_paths("5x0e + 5x0o", "0e + 0o", "5x0o + 5x0e", "uvu"),
        ),
        # paths without weights, instructions out of block order, an unused input block, an output
        # block nobody writes (zeros), several instructions into one output
        "uvu_mixed_weights_unordered": (
            "2x0e + 2x1o + 2x2e + 2x3o",
            "0e + 1o + 2e",
            "2x1o + 2x1e + 2x2e + 2x0o",
            [
                (2, 1, 0, "uvu", True),
                (0, 1, 0, "uvu", False),
                (1, 0, 0, "uvu", True),
                (1, 1, 1, "uvu", False),
                (2, 2, 2, "uvu", True),
                (1, 2, 0, "uvu", True),
                (2, 0, 2, "uvu", False),
                (1, 1, 2, "uvu", True),
            ],
        ),
        "uuu_mace_lmax3": (
            "3x0e + 3x1o + 3x2e + 3x3o",
            "3x0e + 3x1o + 3x2e + 3x3o",
            "3x0e + 3x1o + 3x1e + 3x2e + 3x2o + 3x3o + 3x3e",
            _all_paths(
                "3x0e + 3x1o + 3x2e + 3x3o",
                "3x0e + 3x1o + 3x2e + 3x3o",
                "3x0e + 3x1o + 3x1e + 3x2e + 3x2o + 3x3o + 3x3e",
                "uuu",
            ),
        ),
        "uuu_multiplicity_1_cross_product": ("1o", "1o", "0e + 1e + 2e", _all_paths("1o", "1o", "0e + 1e + 2e", "uuu")),
        "uuu_mixed_multiplicities_and_weights": (
            "3x0e + 2x1o + 2x1e",
            "2x1o + 3x0o + 2x2e",
            "3x0o + 2x1e + 2x1o + 2x0e",
            [
                (0, 1, 0, "uuu", True),
                (1, 0, 3, "uuu", False),
                (2, 0, 2, "uuu", True),
                (1, 0, 1, "uuu", True),
                (1, 2, 2, "uuu", False),
                (2, 2, 1, "uuu", True),
            ],
        ),
    }
    return cases


CASES = _cases()


def _pair(irreps1, irreps2, irreps_out, instructions):
    """(ours, e3nn's) in float64 with exact Clebsch-Gordan constants."""
    ours = ChannelwiseTensorProduct(irreps1, irreps2, irreps_out, instructions).double()
    ref = o3.TensorProduct(
        irreps1, irreps2, irreps_out, instructions, shared_weights=False, internal_weights=False
    ).double()
    refresh_wigner_3j(ours)
    refresh_wigner_3j(ref)
    return ours, ref


def _inputs(tp, n=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, tp.irreps_in1.dim, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(n, tp.irreps_in2.dim, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(n, tp.weight_numel, generator=gen, dtype=torch.float64, requires_grad=True)
    return x, y, w


def _first_and_second_order(tp, x, y, w, seed=1):
    """Output, gradients of <out, v> w.r.t. (x, y, w), and the gradient of <those, u> again."""
    out = tp(x, y, w)
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    first = torch.autograd.grad((out * v).sum(), (x, y, w), create_graph=True, allow_unused=True)
    first = [torch.zeros_like(t) if g is None else g for t, g in zip((x, y, w), first)]
    us = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (x, y, w)]
    total = sum((g * u).sum() for g, u in zip(first, us) if g.requires_grad)
    second = torch.autograd.grad(total, (x, y, w), allow_unused=True)
    second = [torch.zeros_like(t) if g is None else g for t, g in zip((x, y, w), second)]
    return out, first, second


@pytest.mark.parametrize("name", list(CASES))
def test_equals_e3nn_outputs_gradients_and_second_order(name):
    ours, ref = _pair(*CASES[name])
    assert ours.weight_numel == ref.weight_numel
    x, y, w = _inputs(ref)
    out_ref, first_ref, second_ref = _first_and_second_order(ref, x, y, w)
    out, first, second = _first_and_second_order(ours, x, y, w)
    assert out_ref.abs().max() > 0.1  # not a vacuous comparison
    torch.testing.assert_close(out, out_ref, **TOL)
    for label, a, b in zip("xyw", first, first_ref):
        assert b.abs().max() > 0.1, label
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"d/d{label}: {m}")
    for label, a, b in zip("xyw", second, second_ref):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"second order, d/d{label}: {m}")
    assert max(s.abs().max() for s in second_ref) > 0.1


@pytest.mark.parametrize("name", list(CASES))
def test_same_interface_as_e3nn(name):
    """weight_numel, output_mask and the state_dict (names, order, shapes), so checkpoints of
    models built with e3nn's TensorProduct load into ours and back."""
    ours, ref = _pair(*CASES[name])
    assert ours.weight_numel == ref.weight_numel
    torch.testing.assert_close(ours.output_mask, ref.output_mask, rtol=0, atol=0)
    ours_state, ref_state = ours.state_dict(), ref.state_dict()
    assert list(ours_state) == list(ref_state)
    for key, value in ref_state.items():
        assert ours_state[key].shape == value.shape, key
    ours.load_state_dict(ref_state)
    ref.load_state_dict(ours_state)


def test_leading_dimensions_are_kept():
    ours, ref = _pair(*CASES["uuu_mace_lmax3"])
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, ref.irreps_in1.dim, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 3, ref.irreps_in2.dim, generator=gen, dtype=torch.float64)
    w = torch.randn(2, 3, ref.weight_numel, generator=gen, dtype=torch.float64)
    out = ours(x, y, w)
    assert out.shape == (2, 3, ref.irreps_out.dim)
    torch.testing.assert_close(out, ref(x, y, w), **TOL)


@pytest.mark.parametrize(
    "name",
    ["uvu_nequip_lmax2_both_parities", "uvu_second_input_multiplicity_3", "uuu_mixed_multiplicities_and_weights"],
)
def test_index_sums_the_products_per_bucket(name):
    """tp(x, y, w, index, dim_size) = scatter_sum(e3nn's tp(x, y, w), index), with an empty bucket,
    and the same gradients."""
    ours, ref = _pair(*CASES[name])
    x, y, w = _inputs(ref, n=9, seed=3)
    index = torch.tensor([4, 0, 1, 0, 4, 4, 2, 1, 0])  # bucket 3 gets nothing
    out = ours(x, y, w, index=index, dim_size=5)
    expected = scatter_sum(ref(x, y, w), index, 5)
    assert out.shape == (5, ref.irreps_out.dim)
    torch.testing.assert_close(out, expected, **TOL)
    assert out[3].abs().max() == 0
    grads = torch.autograd.grad(out.square().sum(), (x, y, w))
    grads_ref = torch.autograd.grad(expected.square().sum(), (x, y, w))
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, **TOL)


def test_couplings_follow_dtype_changes_and_refresh():
    """Used in float32 first (its stacked Clebsch-Gordan matrices are then built and cached), then
    converted to float64 and refreshed as ExactCouplingsMixin does: the cached matrices must be
    rebuilt from the exact float64 symbols, or the result would be off by float32 rounding."""
    irreps1, irreps2, irreps_out, instructions = CASES["uvu_one_output_per_path_lmax3"]
    ours = ChannelwiseTensorProduct(irreps1, irreps2, irreps_out, instructions)  # float32
    ours(*(t.float().detach() for t in _inputs(ours)))
    ours.double()
    buffers = {name: buf for name, buf in ours.named_buffers() if "_w3j_" in name}
    assert buffers and all(buf.dtype == torch.float64 for buf in buffers.values())
    refresh_wigner_3j(ours)
    for name, buf in ours.named_buffers():
        if "_w3j_" in name:
            l1, l2, l3 = (int(v) for v in name.rsplit("_w3j_", 1)[1].split("_"))
            torch.testing.assert_close(buf, o3.wigner_3j(l1, l2, l3, dtype=torch.float64), rtol=0, atol=1e-15)
    _, ref = _pair(*CASES["uvu_one_output_per_path_lmax3"])
    x, y, w = _inputs(ref)
    torch.testing.assert_close(ours(x, y, w), ref(x, y, w), **TOL)


@pytest.mark.parametrize(
    "instructions, match",
    [
        ([(0, 0, 0, "uvw", True)], "one mode"),
        ([(0, 0, 0, "uvu", True), (0, 0, 0, "uuu", True)], "one mode"),
        ([(0, 0, 0, "uvu")], "tuples"),
        ([(0, 1, 0, "uvu", True)], "cannot give"),  # 0e x 1o -> 0e breaks the selection rule
    ],
)
def test_rejects_bad_instructions(instructions, match):
    with pytest.raises(ValueError, match=match):
        ChannelwiseTensorProduct("2x0e", "0e + 1o", "2x0e", instructions)


def test_rejects_mismatched_inputs():
    ours = ChannelwiseTensorProduct("2x0e", "0e", "2x0e", [(0, 0, 0, "uvu", True)])
    with pytest.raises(ValueError, match="weight must have 2 columns"):
        ours(torch.randn(3, 2), torch.randn(3, 1), torch.randn(3, 5))
    with pytest.raises(ValueError, match="leading dimensions differ"):
        ours(torch.randn(3, 2), torch.randn(4, 1), torch.randn(3, 2))
