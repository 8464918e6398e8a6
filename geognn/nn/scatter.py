"""Scatter (segment) reductions: pure torch by default, torch-scatter when it is installed.

``scatter_sum`` is what message passing and per-structure pooling use. The pure-torch path
(``scatter_add_``) is differentiable twice (forces in training) and needs nothing compiled.
torch-scatter is looked up once, when this module is imported (:func:`find_torch_scatter`);
set ``GEOGNN_TORCH_SCATTER=0`` to force the pure-torch path even when it is present (read on
every call, so it can be switched at run time). :func:`use_torch_scatter` replaces the module
found at import (tests use it to run the dispatch against a stand-in, since CI cannot build
torch-scatter).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch


def find_torch_scatter() -> ModuleType | None:
    """The ``torch_scatter`` module if it imports, else None (not installed, or an ABI mismatch
    raising OSError/RuntimeError at import: then the pure-torch path is used)."""
    try:
        return importlib.import_module("torch_scatter")
    except Exception:
        return None


_torch_scatter: ModuleType | None = find_torch_scatter()


def use_torch_scatter(module: ModuleType | None) -> ModuleType | None:
    """Make ``module`` (anything with torch-scatter's ``scatter_add(src, index, dim, out,
    dim_size)``; None = none) the one the dispatch uses; returns the previous one."""
    global _torch_scatter
    previous, _torch_scatter = _torch_scatter, module
    return previous


def torch_scatter_enabled() -> bool:
    """True when torch-scatter is importable and not disabled by GEOGNN_TORCH_SCATTER=0."""
    return _torch_scatter is not None and os.environ.get("GEOGNN_TORCH_SCATTER", "1") != "0"


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum rows of ``src`` [E, ...] into ``dim_size`` buckets given by ``index`` [E] (long, each in
    [0, dim_size)) -> [dim_size, ...]; empty buckets are 0."""
    if torch_scatter_enabled():
        # torch-scatter broadcasts a 1-D index over src's trailing dimensions
        return _torch_scatter.scatter_add(src, index, dim=0, dim_size=dim_size)
    out = src.new_zeros((dim_size,) + tuple(src.shape[1:]))
    # scatter_add_ rather than index_add_: its backward (a gather) does not keep src alive
    expanded = index.view((-1,) + (1,) * (src.dim() - 1)).expand_as(src)
    return out.scatter_add_(0, expanded, src)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Mean of rows of ``src`` [E, ...] per bucket (empty buckets give 0) -> [dim_size, ...]."""
    total = scatter_sum(src, index, dim_size)
    count = torch.bincount(index, minlength=dim_size).clamp(min=1).to(src.dtype)
    return total / count.view((-1,) + (1,) * (src.dim() - 1))
