"""Scatter helpers: the pure-torch path (the default) against a plain loop, and against
torch-scatter when it is installed."""

import importlib

import pytest
import torch

from geognn.nn import scatter


def reference_sum(src, index, n):
    out = torch.zeros((n,) + src.shape[1:], dtype=src.dtype)
    for k in range(src.shape[0]):
        out[index[k]] += src[k]
    return out


@pytest.fixture
def pure_torch(monkeypatch):
    monkeypatch.setenv("GEOGNN_TORCH_SCATTER", "0")
    assert not scatter.torch_scatter_enabled()


def test_scatter_sum_and_mean_pure_torch(pure_torch):
    g = torch.Generator().manual_seed(0)
    src = torch.randn(50, 4, 3, generator=g, dtype=torch.float64)
    index = torch.randint(0, 7, (50,), generator=g)
    index[index == 5] = 6  # bucket 5 empty
    expected = reference_sum(src, index, 8)
    torch.testing.assert_close(scatter.scatter_sum(src, index, 8), expected)
    counts = torch.bincount(index, minlength=8).clamp(min=1).double().view(-1, 1, 1)
    torch.testing.assert_close(scatter.scatter_mean(src, index, 8), expected / counts)
    assert torch.all(scatter.scatter_mean(src, index, 8)[5] == 0)


def test_scatter_sum_is_twice_differentiable(pure_torch):
    """Force training differentiates through the scatter twice."""
    src = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 1, 1, 2, 0, 2])
    assert torch.autograd.gradcheck(lambda s: scatter.scatter_sum(s, index, 3), (src,))
    assert torch.autograd.gradgradcheck(lambda s: scatter.scatter_sum(s, index, 3).pow(2), (src,))


def test_torch_scatter_agrees_when_installed(monkeypatch):
    if importlib.util.find_spec("torch_scatter") is None:
        pytest.skip("torch-scatter not installed (optional); the pure-torch path is tested above")
    monkeypatch.setenv("GEOGNN_TORCH_SCATTER", "1")
    src, index = torch.randn(30, 5, dtype=torch.float64), torch.randint(0, 4, (30,))
    fast = scatter.scatter_sum(src, index, 4)
    monkeypatch.setenv("GEOGNN_TORCH_SCATTER", "0")
    torch.testing.assert_close(fast, scatter.scatter_sum(src, index, 4))
