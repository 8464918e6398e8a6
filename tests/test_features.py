"""Radial features: the factored polynomial envelope equals the published expanded form and
stays accurate in float32 next to the cutoff (where the expanded form cancelled terms of ~p^2);
the Gaussian basis has no subnormal floats (which slow CPU matrix products many times)."""

import math

import pytest
import torch

from geognn.graph.features import GaussianRBF, polynomial_envelope


def expanded_envelope(x: torch.Tensor, p: int) -> torch.Tensor:
    """DimeNet's Eq. (8), written out term by term (the reference)."""
    u = 1.0 - 0.5 * (p + 1) * (p + 2) * x.pow(p) + p * (p + 2) * x.pow(p + 1) - 0.5 * p * (p + 1) * x.pow(p + 2)
    return u * (x < 1.0).to(x.dtype)


@pytest.mark.parametrize("p", [3, 5, 6, 8])
def test_envelope_equals_the_expanded_polynomial_in_float64(p):
    x = torch.linspace(0.0, 1.3, 2001, dtype=torch.float64)
    assert torch.allclose(polynomial_envelope(x * 4.0, 4.0, p), expanded_envelope(x, p), atol=1e-13, rtol=0)


@pytest.mark.parametrize("p", [5, 6])
def test_envelope_value_and_derivatives_vanish_at_the_cutoff(p):
    h = 1e-4
    x = torch.tensor([1.0 - h], dtype=torch.float64, requires_grad=True)
    u = polynomial_envelope(x, 1.0, p)
    (du,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    (d2u,) = torch.autograd.grad(du.sum(), x)
    # a triple root at 1 with u = (1-x)^3 q(x), q(1) = sum_{k<p} C(k+2,2) = C(p+2,3), so to leading
    # order in h: u = q(1) h^3, u' = -3 q(1) h^2, u'' = 6 q(1) h (hand-derived)
    q1 = math.comb(p + 2, 3)
    assert float(u) == pytest.approx(q1 * h**3, rel=1e-2)
    assert float(du) == pytest.approx(-3 * q1 * h**2, rel=1e-2)
    assert float(d2u) == pytest.approx(6 * q1 * h, rel=1e-2)
    assert float(polynomial_envelope(torch.tensor([1.0], dtype=torch.float64), 1.0, p)) == 0.0


def test_envelope_is_accurate_in_float32_next_to_the_cutoff():
    # measured: the expanded form gave errors up to 1.9e-6 (some values negative) in [0.99, 1);
    # the factored form is within 1e-11 of float64 there and never negative
    x = torch.linspace(0.99, 1.0, 1001)
    u32 = polynomial_envelope(x, 1.0, 6)
    u64 = polynomial_envelope(x.double(), 1.0, 6)
    assert (u32 >= 0).all()
    assert (u32.double() - u64).abs().max() < 1e-9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_basis_flushes_subnormals_and_keeps_every_normal_value(dtype):
    rbf = GaussianRBF(0.0, 5.0, 50).to(dtype)
    d = torch.linspace(0.0, 6.0, 20001, dtype=dtype)
    got = rbf(d)
    plain = torch.exp(-rbf.gamma * (d.unsqueeze(-1) - rbf.centres) ** 2)  # the formula, unflushed
    tiny = torch.finfo(dtype).tiny
    assert not ((got > 0) & (got < tiny)).any()  # no subnormals
    if dtype == torch.float32:  # the window exists: ~1.35-1.47 Å from a centre, exp(-gamma x^2) < 1.2e-38
        assert ((plain > 0) & (plain < tiny)).any()
    normal = plain >= tiny
    assert torch.equal(got[normal], plain[normal]) and (got[~normal] == 0).all()  # only subnormals change
    d.requires_grad_(True)
    (grad,) = torch.autograd.grad(rbf(d).sum(), d)
    assert torch.isfinite(grad).all()
