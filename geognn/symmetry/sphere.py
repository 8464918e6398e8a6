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

``antipodal_grid(n)`` (n even): the first n / 2 points of the n-point Fibonacci lattice (the
upper hemisphere, ``z_k > 0``) followed by their opposites ``-o_k``, then relaxed like
``repulsion_grid`` with every pair kept opposite: every orientation's opposite is on the grid
(``antipodes``). PΘNITA uses this to compute
the kernels of an edge and its reverse once (``geognn.backbones.ponita``); its default grid,
"auto", is this one for an even count and the Fibonacci lattice for an odd one.

``repulsion_grid(n)``: starts from the Fibonacci lattice and lowers the Thomson (Coulomb)
energy ``E = sum_{a<b} 1 / |o_a - o_b|`` by projected gradient descent (a fixed number of
steps, so the result is deterministic). For n = 4, 6, 12 it finds the tetrahedron,
octahedron and icosahedron, the known minimisers.
"""

from __future__ import annotations

import functools
import math

import torch

#: Grid construction methods accepted by ``orientation_grid``; "auto" is "antipodal" for an even
#: number of points and "fibonacci" for an odd one (``concrete_method``).
GRID_METHODS = ("auto", "fibonacci", "antipodal", "repulsion")
#: Largest antipodal grid relaxed by default (``antipodal_grid``).
MAX_RELAXED = 128


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


def antipodal_grid(num_points: int, steps: int | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Half a Fibonacci lattice and its opposites, Thomson-relaxed in pairs -> [num_points, 3] unit
    vectors (see module docstring); row ``k + num_points / 2`` is ``-row k``. ``num_points`` must
    be even. ``steps`` of ``_relax``; None: 2,000 up to ``MAX_RELAXED`` points (at 500 the grids of
    16 and 20 points were still moving: covering radius 0.72 and 0.59 rad, 0.67 and 0.54 at 2,000,
    no change after), else 0 (the half lattice as it is: relaxing costs O(n^2) per step, and at
    n = 384 the unrelaxed grid's covering radius is within 3 % of the Fibonacci lattice's)."""
    if steps is None:
        steps = 2000 if num_points <= MAX_RELAXED else 0
    _require_count(num_points)
    if num_points % 2:
        raise ValueError(
            f"an antipodal grid pairs every orientation with its opposite, so num_points must be even, "
            f"got {num_points} (grid='fibonacci' takes any count)"
        )
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps}")
    upper = fibonacci_grid(num_points)[: num_points // 2]
    return _relax(torch.cat([upper, -upper]), steps, antipodal=True).to(dtype)


def antipodes(points: torch.Tensor) -> torch.Tensor | None:
    """Index [n] of each point's opposite on the grid, ``points[antipodes[p]] == -points[p]``
    exactly (bitwise: negation is exact in floating point, so the attributes of an edge at ``-o``
    and of its reverse at ``o`` are then bitwise equal), or None where some point's exact opposite
    is not on the grid (a grid that is antipodal only to the precision of a relaxation, like the
    Thomson octahedron, gives None). [n, 3]."""
    n = points.shape[0]
    if n < 2:
        return None
    opposite = (points.unsqueeze(0) == -points.unsqueeze(1)).all(-1)  # [n, n]: [p, q] = (o_q == -o_p)
    if not bool(opposite.any(1).all()):
        return None
    index = opposite.to(torch.uint8).argmax(1)
    if not torch.equal(index[index], torch.arange(n, device=points.device)):
        return None
    return index


def thomson_energy(points: torch.Tensor) -> torch.Tensor:
    """Coulomb energy ``sum_{a<b} 1 / |o_a - o_b|`` of points [n, 3] on the sphere (scalar)."""
    diff = points.unsqueeze(0) - points.unsqueeze(1)  # [n, n, 3]
    n = points.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=points.device)
    dist = diff.pow(2).sum(-1)[off].sqrt()
    return 0.5 * (1.0 / dist).sum()


def _relax(points: torch.Tensor, steps: int, antipodal: bool) -> torch.Tensor:
    """``steps`` of projected gradient descent on ``thomson_energy`` from ``points`` [n, 3] (float64).

    Each step moves every point against the tangential part of its force, by at most 0.1 / sqrt(n)
    (a fraction of the typical spacing) scaled down as the largest force falls, then renormalises.
    ``antipodal``: the points are ``[upper, -upper]`` and stay so (only ``upper`` moves, under the
    energy of all n points).
    """
    n = points.shape[0]
    half = n // 2 if antipodal else n
    free = points[:half]
    step_size = 0.1 / math.sqrt(n)
    for _ in range(int(steps)):
        full = torch.cat([free, -free]) if antipodal else free  # [n, 3]
        diff = free.unsqueeze(1) - full.unsqueeze(0)  # [half, n, 3]: o_a - o_b
        dist2 = diff.pow(2).sum(-1)  # [half, n]
        dist2[torch.arange(half), torch.arange(half)] = float("inf")  # no self-interaction
        # dE/do_a of sum_{a<b} 1/|o_a - o_b| is -sum_b (o_a - o_b) / |o_a - o_b|^3; for the antipodal
        # grid the opposite point -o_a moves with o_a, which doubles the energy's gradient and the
        # term of the pair (o_a, -o_a) is constant: the direction of descent is the same
        grad = -(diff * dist2.pow(-1.5).unsqueeze(-1)).sum(1)  # [half, 3]
        grad = grad - (grad * free).sum(-1, keepdim=True) * free  # tangential part
        largest = grad.norm(dim=-1).max()
        if largest < 1e-12:
            break
        free = free - step_size * grad / largest.clamp(min=1.0)
        free = free / free.norm(dim=-1, keepdim=True)
    return torch.cat([free, -free]) if antipodal else free


def repulsion_grid(num_points: int, steps: int = 500, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Fibonacci lattice relaxed by ``steps`` of projected gradient descent on ``thomson_energy``
    (``_relax``). Computed in float64 -> [num_points, 3] unit vectors in ``dtype``."""
    _require_count(num_points)
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps}")
    points = fibonacci_grid(num_points)
    if num_points == 1:
        return points.to(dtype)
    return _relax(points, steps, antipodal=False).to(dtype)


def orientation_grid(num_points: int, method: str = "fibonacci", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A deterministic near-uniform grid of ``num_points`` orientations [num_points, 3].

    ``method``: "fibonacci" (default; instant), "antipodal" (half a Fibonacci lattice and its
    opposites, relaxed; ``num_points`` even), "repulsion" (Thomson-relaxed, more uniform) or
    "auto" (antipodal for an even ``num_points``, Fibonacci for an odd one).
    The relaxed grids are computed once per (count, method) in a process and copied after.
    """
    method = concrete_method(method, num_points)
    return _cached_grid(int(num_points), method).to(dtype, copy=True)


def concrete_method(method: str, num_points: int) -> str:
    """The construction ``method`` stands for at ``num_points``: "auto" is "antipodal" for an even
    count and "fibonacci" for an odd one; the others stand for themselves."""
    if method not in GRID_METHODS:
        raise ValueError(f"unknown grid method '{method}'; choose one of: {', '.join(GRID_METHODS)}")
    _require_count(num_points)
    if method == "auto":
        return "antipodal" if int(num_points) % 2 == 0 else "fibonacci"
    return method


@functools.lru_cache(maxsize=64)
def _cached_grid(num_points: int, method: str) -> torch.Tensor:
    builder = {"fibonacci": fibonacci_grid, "antipodal": antipodal_grid, "repulsion": repulsion_grid}[method]
    return builder(num_points)


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
    "antipodal_grid",
    "antipodes",
    "concrete_method",
    "covering_radius",
    "fibonacci_grid",
    "orientation_grid",
    "random_rotation",
    "repulsion_grid",
    "thomson_energy",
]
