"""Symmetry, periodicity, batching and gradient checks for a ``geognn.Model``.

Every ``check_*`` returns a ``CheckResult`` with the largest error found across energy, forces
and stress (as applicable), scaled as ``max|a - b| / (1 + max|b|)`` so one tolerance serves
eV-sized and meV-sized quantities. Tolerances (``TOLERANCE``) per dtype:

- float64: 1e-9 for exact symmetries (round-off of a few hundred summed terms is ~1e-13),
  1e-6 for central finite differences (step 1e-4 Å: truncation error ~h² f''' ≈ 1e-8).
- float32: 1e-4 for exact symmetries (accumulated round-off ~1e-6 relative on 1e2-1e3 terms);
  finite differences are not meaningful in float32 and should be run in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from .. import conventions as K
from ..graph.build import build_graph, collate

TOLERANCE = {
    torch.float64: {"exact": 1e-9, "finite_difference": 1e-6},
    torch.float32: {"exact": 1e-4, "finite_difference": 1e-2},
}


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check: the scaled error ``max|a-b| / (1 + max|b|)`` and its tolerance."""

    name: str
    error: float
    max_abs: float
    tolerance: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.error) and self.error <= self.tolerance)

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (f"{self.name}: {verdict}, scaled error {self.error:.3e} (max abs {self.max_abs:.3e}) "
                f"vs tolerance {self.tolerance:.1e}" + (f" [{self.detail}]" if self.detail else ""))


def assert_check(result: CheckResult) -> CheckResult:
    """Raise AssertionError with the measured error when the check failed; return it otherwise."""
    __tracebackhide__ = True
    if not result.passed:
        raise AssertionError(str(result))
    return result


# --------------------------------------------------------------------------- running a model
def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def predict(model, structures: Sequence[Atoms], *, stress: bool | None = None, batched: bool = True):
    """Run ``model`` on structures; list of dicts of numpy float64 ``energy``, ``forces``, ``stress``.

    Graphs are built with the model's cutoff and dtype. ``stress`` defaults to True when every
    structure has a periodic direction.
    """
    dtype = _dtype(model)
    if stress is None:
        stress = all(a.pbc.any() for a in structures)
    graphs = [build_graph(a, model.cutoff, model.max_neighbors, dtype=dtype) for a in structures]
    chunks = [graphs] if batched else [[g] for g in graphs]
    results = []
    for chunk in chunks:
        out = model(collate(chunk), forces=True, stress=stress)
        sizes = [len(g[K.Z]) for g in chunk]
        forces = torch.split(out[K.FORCES].detach(), sizes)
        for b in range(len(chunk)):
            results.append({
                "energy": float(out[K.ENERGY][b].detach()),
                "forces": forces[b].double().numpy(),
                "stress": out[K.STRESS][b].detach().double().numpy() if stress else None,
            })
    return results


def _compare(name: str, model, pairs, detail: str = "", kind: str = "exact") -> CheckResult:
    """Largest scaled error over (got, expected) array pairs."""
    err = max_abs = 0.0
    for got, expected in pairs:
        got, expected = np.asarray(got, dtype=float), np.asarray(expected, dtype=float)
        diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
        if not np.isfinite(diff):
            diff = float("inf")
        max_abs = max(max_abs, diff)
        scale = 1.0 + (float(np.max(np.abs(expected))) if expected.size else 0.0)
        err = max(err, diff / scale)
    return CheckResult(name, err, max_abs, TOLERANCE[_dtype(model)][kind], detail)


def _stress_pairs(a, b, transform=lambda s: s):
    return [(a["stress"], transform(b["stress"]))] if a["stress"] is not None else []


# --------------------------------------------------------------------------- transforms
def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation matrix [3, 3] (det +1), float64."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def transformed(atoms: Atoms, matrix: np.ndarray) -> Atoms:
    """Copy (without calculator) with positions and cell rows mapped by ``x -> matrix @ x``."""
    out = atoms.copy()
    out.calc = None
    out.positions = atoms.positions @ matrix.T
    out.cell = atoms.cell[:] @ matrix.T
    return out


def check_rotation(model, atoms: Atoms, rng: np.random.Generator) -> CheckResult:
    """Energy invariant, forces rotate (F R^T), stress rotates (R S R^T) when atoms and cell rotate."""
    rot = random_rotation(rng)
    ref, got = predict(model, [atoms, transformed(atoms, rot)])
    pairs = [(got["energy"], ref["energy"]), (got["forces"], ref["forces"] @ rot.T)]
    pairs += _stress_pairs(got, ref, lambda s: rot @ s @ rot.T)
    return _compare("rotation", model, pairs, f"R={rot.round(17).tolist()}")


def check_reflection(model, atoms: Atoms, rng: np.random.Generator) -> CheckResult:
    """A rotation composed with inversion: energy invariant, forces transform as vectors."""
    mat = -random_rotation(rng)
    ref, got = predict(model, [atoms, transformed(atoms, mat)])
    pairs = [(got["energy"], ref["energy"]), (got["forces"], ref["forces"] @ mat.T)]
    pairs += _stress_pairs(got, ref, lambda s: mat @ s @ mat.T)
    return _compare("reflection", model, pairs, f"M={mat.round(17).tolist()}")


def check_translation(model, atoms: Atoms, rng: np.random.Generator) -> CheckResult:
    """Rigid translation by a random vector of a few Å: nothing changes."""
    t = rng.uniform(-5.0, 5.0, size=3)
    moved = atoms.copy()
    moved.calc = None
    moved.positions = atoms.positions + t
    ref, got = predict(model, [atoms, moved])
    pairs = [(got["energy"], ref["energy"]), (got["forces"], ref["forces"])] + _stress_pairs(got, ref)
    return _compare("translation", model, pairs, f"t={t.tolist()}")


def check_permutation(model, atoms: Atoms, rng: np.random.Generator) -> CheckResult:
    """Relabelling atoms: energy invariant, forces permuted with the atoms."""
    perm = rng.permutation(len(atoms))
    ref, got = predict(model, [atoms, atoms[perm]])
    pairs = [(got["energy"], ref["energy"]), (got["forces"], ref["forces"][perm])] + _stress_pairs(got, ref)
    return _compare("permutation", model, pairs, f"perm={perm.tolist()}")


def check_wrapping(model, atoms: Atoms, rng: np.random.Generator) -> CheckResult:
    """Moving atoms by whole lattice vectors (and wrapping into the cell) changes nothing."""
    if not atoms.pbc.any():
        raise ValueError("check_wrapping needs a periodic structure")
    shifts = rng.integers(-2, 3, size=(len(atoms), 3)) * atoms.pbc
    moved = atoms.copy()
    moved.calc = None
    moved.positions = atoms.positions + shifts @ atoms.cell[:]
    wrapped = atoms.copy()
    wrapped.calc = None
    wrapped.wrap()
    ref, got_moved, got_wrapped = predict(model, [atoms, moved, wrapped])
    pairs = []
    for got in (got_moved, got_wrapped):
        pairs += [(got["energy"], ref["energy"]), (got["forces"], ref["forces"])] + _stress_pairs(got, ref)
    return _compare("wrapping", model, pairs)


def check_supercell(model, atoms: Atoms, repeat=(2, 2, 2)) -> CheckResult:
    """An n-fold supercell has n times the energy, the same per-atom forces and the same stress."""
    if not atoms.pbc.all():
        raise ValueError("check_supercell needs a structure periodic in all directions")
    n = int(np.prod(repeat))
    ref, got = predict(model, [atoms, atoms.repeat(repeat)])
    pairs = [(got["energy"], n * ref["energy"]), (got["forces"], np.tile(ref["forces"], (n, 1)))]
    pairs += _stress_pairs(got, ref)
    return _compare("supercell", model, pairs, f"repeat={tuple(repeat)}")


def check_cell_basis_change(model, atoms: Atoms, rng: np.random.Generator) -> CheckResult:
    """Another basis of the same lattice (cell -> M cell, M integer with det ±1): same crystal."""
    if not atoms.pbc.all():
        raise ValueError("check_cell_basis_change needs a structure periodic in all directions")
    while True:
        m = np.eye(3, dtype=int)
        for _ in range(3):  # a product of elementary shears is unimodular
            a, b = rng.choice(3, size=2, replace=False)
            e = np.eye(3, dtype=int)
            e[a, b] = rng.choice([-1, 1])
            m = e @ m
        if not np.array_equal(m, np.eye(3, dtype=int)):
            break
    other = atoms.copy()
    other.calc = None
    other.cell = m @ atoms.cell[:]
    ref, got = predict(model, [atoms, other])
    pairs = [(got["energy"], ref["energy"]), (got["forces"], ref["forces"])] + _stress_pairs(got, ref)
    return _compare("cell basis change", model, pairs, f"M={m.tolist()}")


def check_batching(model, structures: Sequence[Atoms]) -> CheckResult:
    """Predicting a batch equals predicting each structure alone."""
    together = predict(model, structures, batched=True)
    alone = predict(model, structures, batched=False)
    pairs = []
    for a, b in zip(together, alone):
        pairs += [(a["energy"], b["energy"]), (a["forces"], b["forces"])] + _stress_pairs(a, b)
    return _compare("batching", model, pairs, f"{len(structures)} structures")


def _energy(model, atoms: Atoms) -> float:
    return predict(model, [atoms], stress=False)[0]["energy"]


def check_finite_difference_forces(model, atoms: Atoms, rng: np.random.Generator, *,
                                   step: float = 1e-4, n_components: int = 6) -> CheckResult:
    """Forces equal -dE/dx by central differences on random atom components (run in float64)."""
    forces = predict(model, [atoms], stress=False)[0]["forces"]
    picks = [(int(rng.integers(len(atoms))), int(rng.integers(3))) for _ in range(n_components)]
    pairs = []
    for a, c in picks:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[a, c] += step
        minus.positions[a, c] -= step
        fd = -(_energy(model, plus) - _energy(model, minus)) / (2 * step)
        pairs.append((forces[a, c], fd))
    return _compare("finite-difference forces", model, pairs, f"components={picks}", "finite_difference")


def check_finite_difference_stress(model, atoms: Atoms, *, step: float = 1e-5) -> CheckResult:
    """Stress equals (1/V) dE/d(strain) by central differences of a symmetric strain (float64)."""
    if not atoms.pbc.any():
        raise ValueError("check_finite_difference_stress needs a periodic structure")
    stress = predict(model, [atoms], stress=True)[0]["stress"]
    volume = abs(np.linalg.det(atoms.cell[:]))
    fd = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            energies = []
            for sign in (+1, -1):
                eps = np.zeros((3, 3))
                eps[a, b] = eps[b, a] = sign * step / (1 if a == b else 2)
                strained = atoms.copy()
                strained.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=False)
                strained.positions = atoms.positions @ (np.eye(3) + eps)
                energies.append(_energy(model, strained))
            # off-diagonal: eps_ab = eps_ba = step/2, so dE/d(step) = V (sigma_ab + sigma_ba) / 2 = V sigma_ab
            deriv = (energies[0] - energies[1]) / (2 * step)
            fd[a, b] = fd[b, a] = deriv / volume
    return _compare("finite-difference stress", model, [(stress, fd)], "", "finite_difference")


def check_determinism(model, structures: Sequence[Atoms]) -> CheckResult:
    """Two evaluations of the same input give bit-identical energies, forces and stress (eval mode)."""
    first = predict(model, structures)
    second = predict(model, structures)
    pairs = []
    for a, b in zip(first, second):
        pairs += [(a["energy"], b["energy"]), (a["forces"], b["forces"])] + _stress_pairs(a, b)
    result = _compare("determinism", model, pairs)
    return CheckResult(result.name, result.error, result.max_abs, 0.0, result.detail)


def check_cutoff_smoothness(model, atoms: Atoms, rng: np.random.Generator, *, eps: float = 1e-5) -> CheckResult:
    """Energy and forces are continuous when an atom crosses the cutoff sphere.

    A probe H atom is placed on a random ray from the atom furthest along it, at distances
    ``cutoff - eps`` and ``cutoff + eps`` Å (no other atom is closer than ``cutoff - eps``).
    The energy jump and the force change must vanish like eps (scaled error <= 1e3 eps, a
    derivative bound), and the force on the probe just inside the cutoff must be ~0 because
    envelopes have zero slope at the cutoff.
    """
    if atoms.pbc.any():
        raise ValueError("check_cutoff_smoothness needs a molecule (no periodic direction)")
    u = rng.normal(size=3)
    u /= np.linalg.norm(u)
    anchor = int(np.argmax(atoms.positions @ u))
    outputs = []
    for r in (model.cutoff - eps, model.cutoff + eps):
        probe = atoms.copy()
        probe.calc = None
        probe += Atoms("H", positions=[atoms.positions[anchor] + r * u])
        outputs.append(predict(model, [probe], stress=False)[0])
    inside, outside = outputs
    pairs = [(inside["energy"], outside["energy"]), (inside["forces"], outside["forces"]),
             (inside["forces"][-1], np.zeros(3))]
    result = _compare("cutoff smoothness", model, pairs, f"eps={eps} Å, ray={u.tolist()}")
    return CheckResult(result.name, result.error, result.max_abs, 1e3 * eps, result.detail)


def check_vector_equivariance(model, atoms: Atoms, rng: np.random.Generator, *, reflect: bool = False):
    """The backbone's ``node_vectors`` [N, F, 3] rotate (or reflect) with the structure.

    Returns None when the backbone has no ``node_vectors``.
    """
    mat = random_rotation(rng) * (-1.0 if reflect else 1.0)
    dtype = _dtype(model)
    outs = []
    for a in (atoms, transformed(atoms, mat)):
        graph = build_graph(a, model.cutoff, model.max_neighbors, dtype=dtype)
        with torch.no_grad():
            outs.append(model.backbone(collate([graph])))
    if K.NODE_VECTORS not in outs[0]:
        return None
    ref = outs[0][K.NODE_VECTORS].double().numpy()
    got = outs[1][K.NODE_VECTORS].double().numpy()
    name = "node_vectors reflection" if reflect else "node_vectors rotation"
    return _compare(name, model, [(got, ref @ mat.T)], f"M={mat.round(17).tolist()}")
