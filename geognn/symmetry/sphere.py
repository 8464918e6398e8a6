"""Grids of orientations on the sphere S2, and random rotations of them.

Used by PΘNITA (``geognn.backbones.ponita``), which samples a signal over a set of
orientations ``o_1 .. o_n`` (unit vectors) at every atom and replaces integrals over S2 by
means over the grid. The grid quality bounds the network's rotation error, so grids here are
near-uniform and deterministic; a random rotation of the grid (``random_rotation``) gives an
unbiased estimate of the continuous integral instead (data augmentation in training).

Grids
-----
``fibonacci_grid(n)``: the Fibonacci lattice, ``z_k = 1 - (2k + 1) / n``,
``phi_k = k * pi * (3 - sqrt 5)`` (the golden angle), ``o_k = (sqrt(1 - z_k^2) cos phi_k,
sqrt(1 - z_k^2) sin phi_k, z_k)`` for k = 0 .. n-1: equal-area bands in z, so the mean of
``o_z`` is exactly 0 and every cap holds ~ its area fraction of the points.

``repulsion_grid(n)``: starts from the Fibonacci lattice and lowers the Thomson (Coulomb)
energy ``E = sum_{a<b} 1 / |o_a - o_b|`` by projected gradient descent (a fixed number of
steps, so the result is deterministic). For n = 4, 6, 12 it finds the tetrahedron,
octahedron and icosahedron, the known minimisers.
"""

from __future__ import annotations

import math

import torch

#: Grid construction methods accepted by ``orientation_grid``.
GRID_METHODS = ("fibonacci", "repulsion")


def _require_count(num_points: int) -> None:
    if int(num_points) != num_points or num_points < 1:
        raise ValueError(f"a grid on the sphere needs num_points >= 1 (an integer), got {num_points}")


def fibonacci_grid(num_points: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Fibonacci lattice on S2 -> [num_points, 3] unit vectors (see module docstring)."""
    _require_count(num_points)
    k = torch.arange(num_points, dtype=torch.float64)
    z = 1.0 - (2.0 * k + 1.0) / num_points
    rho = torch.sqrt((1.0 - z * z).clamp(min=0.0))
    phi = k * (math.pi * (3.0 - math.sqrt(5.0)))
    return torch.stack([rho * torch.cos(phi), rho * torch.sin(phi), z], dim=-1).to(dtype)


def thomson_energy(points: torch.Tensor) -> torch.Tensor:
    """Coulomb energy ``sum_{a<b} 1 / |o_a - o_b|`` of points [n, 3] on the sphere (scalar)."""
    diff = points.unsqueeze(0) - points.unsqueeze(1)  # [n, n, 3]
    n = points.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=points.device)
    dist = diff.pow(2).sum(-1)[off].sqrt()
    return 0.5 * (1.0 / dist).sum()


def repulsion_grid(num_points: int, steps: int = 500, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Fibonacci lattice relaxed by ``steps`` of projected gradient descent on ``thomson_energy``.

    Each step moves every point against the tangential part of its force, by at most 0.1 / sqrt(n)
    (a fraction of the typical spacing) scaled down as the largest force falls, then renormalises.
    Computed in float64 -> [num_points, 3] unit vectors in ``dtype``.
    """
    _require_count(num_points)
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps}")
    points = fibonacci_grid(num_points)
    if num_points == 1:
        return points.to(dtype)
    step_size = 0.1 / math.sqrt(num_points)
    with torch.enable_grad():
        for _ in range(int(steps)):
            p = points.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(thomson_energy(p), p)
            grad = grad - (grad * points).sum(-1, keepdim=True) * points  # tangential part
            largest = grad.norm(dim=-1).max()
            if largest < 1e-12:
                break
            points = points - step_size * grad / largest.clamp(min=1.0)
            points = points / points.norm(dim=-1, keepdim=True)
    return points.detach().to(dtype)


def orientation_grid(num_points: int, method: str = "fibonacci", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A deterministic near-uniform grid of ``num_points`` orientations [num_points, 3].

    ``method``: "fibonacci" (default; instant) or "repulsion" (Thomson-relaxed, more uniform).
    """
    if method == "fibonacci":
        return fibonacci_grid(num_points, dtype)
    if method == "repulsion":
        return repulsion_grid(num_points, dtype=dtype)
    raise ValueError(f"unknown grid method '{method}'; choose one of: {', '.join(GRID_METHODS)}")


def random_rotation(
    dtype: torch.dtype = torch.float64, device=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A rotation matrix [3, 3] (det +1) drawn uniformly (Haar) from SO(3) with torch's RNG.

    QR of a Gaussian matrix with the signs of R's diagonal moved into Q (Haar on O(3)), then a
    column flipped if det = -1.
    """
    g = torch.randn(3, 3, dtype=torch.float64, generator=generator)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype=dtype, device=device)


def covering_radius(points: torch.Tensor, num_probes: int = 20000) -> float:
    """Largest angle (rad) from a point of S2 to its nearest grid point, estimated on a dense
    Fibonacci probe set of ``num_probes`` points (a measure of grid quality: smaller is better)."""
    probes = fibonacci_grid(num_probes, dtype=points.dtype)
    cos = (probes @ points.T).max(dim=1).values.clamp(-1.0, 1.0)
    return float(torch.arccos(cos).max())


__all__ = [
    "GRID_METHODS",
    "covering_radius",
    "fibonacci_grid",
    "orientation_grid",
    "random_rotation",
    "repulsion_grid",
    "thomson_energy",
]
