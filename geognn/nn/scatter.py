"""Scatter (segment) reductions: pure torch by default, torch-scatter when it is installed.

``scatter_sum`` is what message passing and per-structure pooling use. The pure-torch path
(``index_add_``) is differentiable twice (forces in training) and needs nothing compiled.
Set ``GEOGNN_TORCH_SCATTER=0`` to force the pure-torch path even when torch-scatter is present.
"""

from __future__ import annotations

import os

import torch

try:  # optional compiled kernels
    import torch_scatter as _torch_scatter
except Exception:  # ImportError, or an ABI mismatch raising OSError/RuntimeError
    _torch_scatter = None


def torch_scatter_enabled() -> bool:
    """True when torch-scatter is importable and not disabled by GEOGNN_TORCH_SCATTER=0."""
    return _torch_scatter is not None and os.environ.get("GEOGNN_TORCH_SCATTER", "1") != "0"


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum rows of ``src`` [E, ...] into ``dim_size`` buckets given by ``index`` [E] -> [dim_size, ...]."""
    if torch_scatter_enabled():
        return _torch_scatter.scatter_add(src, index, dim=0, dim_size=dim_size)
    out = src.new_zeros((dim_size,) + tuple(src.shape[1:]))
    # scatter_add_ rather than index_add_: its backward (a gather) does not keep src alive
    expanded = index.view((-1,) + (1,) * (src.dim() - 1)).expand_as(src)
    return out.scatter_add_(0, expanded, src)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Mean of rows of ``src`` per bucket (empty buckets give 0) -> [dim_size, ...]."""
    total = scatter_sum(src, index, dim_size)
    count = torch.bincount(index, minlength=dim_size).clamp(min=1).to(src.dtype)
    return total / count.view((-1,) + (1,) * (src.dim() - 1))
