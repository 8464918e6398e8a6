"""Scatter helpers: the pure-torch path (the default) against a plain loop; the torch-scatter
dispatch against a stand-in module (CI cannot build torch-scatter: it compiles from source for
minutes), and against the real torch-scatter when it is installed."""

import importlib
import importlib.abc
import sys
import types

import pytest
import torch

import geognn
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


# --------------------------------------------------------------------------- torch-scatter stand-in
def fake_torch_scatter() -> types.ModuleType:
    """A module with torch-scatter's ``scatter_add(src, index, dim=-1, out=None, dim_size=None)``
    as torch-scatter documents it (a 1-D index runs along ``dim`` and is broadcast over the other
    dimensions; ``dim_size`` None means ``index.max() + 1``; ``out`` is added to in place),
    computed with ``index_add`` (not the ``scatter_add_`` geognn's own path uses), recording the
    keyword arguments of every call."""
    module = types.ModuleType("torch_scatter")
    module.calls = []

    def scatter_add(src, index, dim=-1, out=None, dim_size=None):
        module.calls.append(dict(dim=dim, dim_size=dim_size, out=out, index_shape=tuple(index.shape)))
        dim = dim % src.dim()
        if index.dim() != 1 or index.shape[0] != src.shape[dim]:
            raise RuntimeError(f"index {tuple(index.shape)} does not run along dim {dim} of src {tuple(src.shape)}")
        if out is None:
            size = list(src.shape)
            size[dim] = dim_size if dim_size is not None else (int(index.max()) + 1 if index.numel() else 0)
            return src.new_zeros(size).index_add(dim, index, src)
        return out.index_add_(dim, index, src)

    module.scatter_add = scatter_add
    return module


@pytest.fixture
def stand_in(monkeypatch):
    """The stand-in, installed as ``torch_scatter`` and found by geognn's own import logic."""
    fake = fake_torch_scatter()
    monkeypatch.setitem(sys.modules, "torch_scatter", fake)
    monkeypatch.delenv("GEOGNN_TORCH_SCATTER", raising=False)
    found = scatter.find_torch_scatter()
    assert found is fake
    previous = scatter.use_torch_scatter(found)
    yield fake
    scatter.use_torch_scatter(previous)


class _BrokenBinaryFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``torch_scatter`` as a build for another torch would: OSError (undefined symbol)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "torch_scatter" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise OSError("torch_scatter/_scatter_cpu.so: undefined symbol: _ZN3c10...")


def test_path_selection(stand_in, monkeypatch):
    """Found and enabled -> the stand-in gets the call; GEOGNN_TORCH_SCATTER=0 (read per call)
    -> pure torch; not installed or failing to load -> None, pure torch."""
    src, index = torch.randn(5, 2), torch.tensor([0, 2, 2, 1, 0])
    assert scatter.torch_scatter_enabled()
    scatter.scatter_sum(src, index, 4)
    assert stand_in.calls == [dict(dim=0, dim_size=4, out=None, index_shape=(5,))]
    monkeypatch.setenv("GEOGNN_TORCH_SCATTER", "1")
    assert scatter.torch_scatter_enabled()
    monkeypatch.setenv("GEOGNN_TORCH_SCATTER", "0")
    assert not scatter.torch_scatter_enabled()
    scatter.scatter_sum(src, index, 4)
    scatter.scatter_mean(src, index, 4)
    assert len(stand_in.calls) == 1
    monkeypatch.setitem(sys.modules, "torch_scatter", None)  # python's marker for "not importable"
    assert scatter.find_torch_scatter() is None
    monkeypatch.delitem(sys.modules, "torch_scatter")
    monkeypatch.setattr(sys, "meta_path", [_BrokenBinaryFinder()] + sys.meta_path)
    assert scatter.find_torch_scatter() is None
    scatter.use_torch_scatter(None)
    monkeypatch.delenv("GEOGNN_TORCH_SCATTER")
    assert not scatter.torch_scatter_enabled()


def _both_paths(fn, monkeypatch):
    """fn() with the stand-in enabled, then with GEOGNN_TORCH_SCATTER=0 (pure torch)."""
    fast = fn()
    monkeypatch.setenv("GEOGNN_TORCH_SCATTER", "0")
    slow = fn()
    monkeypatch.delenv("GEOGNN_TORCH_SCATTER")
    return fast, slow


# float64 sums of <= 40 terms in another order: differences ~1e-15
EXACT = dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "shape, dim_size",
    [((40,), 9), ((40, 5), 9), ((40, 4, 3), 12), ((0, 3), 4), ((1, 2), 1)],
    ids=["1d", "2d", "3d-larger-dim_size", "no-rows", "one-row"],
)
def test_torch_scatter_path_equals_pure_torch(stand_in, monkeypatch, shape, dim_size):
    """Values, gradients and second derivatives, on random data with empty buckets and a
    dim_size larger than the largest index."""
    g = torch.Generator().manual_seed(1)
    src = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, max(dim_size - 3, 1), shape[:1], generator=g)
    if shape[0] > 4:
        index[index == 2] = 1  # an empty bucket inside the range as well
    weight = torch.randn((dim_size,) + shape[1:], generator=g, dtype=torch.float64)

    def run():
        out = scatter.scatter_sum(src, index, dim_size)
        mean = scatter.scatter_mean(src, index, dim_size)
        loss = (weight * out.pow(2)).sum() + (weight * mean).sum()
        (grad,) = torch.autograd.grad(loss, src, create_graph=True)  # like forces
        (grad2,) = torch.autograd.grad(grad.pow(2).sum(), src) if shape[0] else (torch.zeros_like(src),)
        return out.detach(), mean.detach(), grad.detach(), grad2

    calls_before = len(stand_in.calls)
    fast, slow = _both_paths(run, monkeypatch)
    assert len(stand_in.calls) == calls_before + 2  # sum and mean went through the stand-in
    for a, b, what in zip(fast, slow, ("sum", "mean", "gradient", "second derivative")):
        assert a.shape == b.shape, what
        torch.testing.assert_close(a, b, **EXACT, msg=lambda m: f"{what}: {m}")
    torch.testing.assert_close(fast[0], reference_sum(src.detach(), index, dim_size), **EXACT)
    assert torch.all(fast[0][int(index.max()) + 1 if index.numel() else 0 :] == 0)  # beyond the largest index


def test_model_energy_and_forces_equal_on_both_paths(stand_in, monkeypatch):
    """Every backbone and the energy readout go through scatter_sum: one model, both paths."""
    from ase.build import molecule

    torch.manual_seed(0)
    model = geognn.build_model("painn", cutoff=4.0, hidden_channels=8, num_layers=2).double().eval()
    graph = geognn.build_graph(molecule("CH3CH2OH"), 4.0, dtype=torch.float64)

    def run():
        out = model(geognn.collate([graph]))
        return out["energy"].detach(), out["forces"].detach()

    calls_before = len(stand_in.calls)
    (e_fast, f_fast), (e_slow, f_slow) = _both_paths(run, monkeypatch)
    assert len(stand_in.calls) > calls_before
    # eV and eV/Å: sums of ~100 float64 terms in another order
    torch.testing.assert_close(e_fast, e_slow, rtol=0, atol=1e-10)
    torch.testing.assert_close(f_fast, f_slow, rtol=0, atol=1e-10)


def test_torch_scatter_agrees_when_installed(monkeypatch):
    if importlib.util.find_spec("torch_scatter") is None:
        pytest.skip("torch-scatter not installed (optional); the dispatch is tested against a stand-in above")
    real = scatter.find_torch_scatter()
    if real is None:
        pytest.skip("torch-scatter is installed but does not load (ABI mismatch); pure torch is used")
    previous = scatter.use_torch_scatter(real)
    try:
        monkeypatch.setenv("GEOGNN_TORCH_SCATTER", "1")
        src, index = torch.randn(30, 5, dtype=torch.float64), torch.randint(0, 4, (30,))
        fast = scatter.scatter_sum(src, index, 6)
        monkeypatch.setenv("GEOGNN_TORCH_SCATTER", "0")
        torch.testing.assert_close(fast, scatter.scatter_sum(src, index, 6))
    finally:
        scatter.use_torch_scatter(previous)
