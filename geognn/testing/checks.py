"""Symmetry, periodicity, batching, gradient, smoothness and scale checks for a ``geognn.Model``.

Errors are measured in physical units, on the learned part of the model
-----------------------------------------------------------------------
Every check runs the model with its per-element reference energies set to zero (restored
afterwards, see ``reference_energies_removed``): they are constants per element, so they
cannot break a symmetry, but in float32 they would add their own round-off (an OC20 slab's
references sum to ~170 eV, whose float32 round-off is ~1e-5 eV) and, in a scale relative to
the total, they would hide errors of electron-volts. Each quantity is then compared as

=========  ====================================================  =========
quantity   error                                                 unit
=========  ====================================================  =========
energy     ``|E_a - E_b| / n_atoms`` (learned energies)          eV/atom
forces     ``max_i |F_a,i - F_b,i|`` (norm of each atom's error)  eV/Å
stress     ``max_kl |σ_a,kl - σ_b,kl|``                           eV/Å³
=========  ====================================================  =========

and passes when ``error <= atol + rtol * scale``, where ``scale`` is the size of the reference
value (``max |E_b| / n_atoms``, ``max_i |F_b,i|``, ``max |σ_b|``). ``TOLERANCE[dtype][name]``
holds ``(atol, rtol, unit)`` per dtype; ``CheckResult`` keeps every quantity's measured error
and reports, as ``.error`` / ``.unit`` / ``.tolerance``, the one nearest to (or furthest past)
its tolerance.

Tolerances (``TOLERANCE``), and why
-----------------------------------
Set from the largest errors measured on every backbone of ``geognn.BACKBONES`` (small random-weight
models as in tests/test_model.py, on its 3 QM9 molecules, 3 rattled JARVIS crystals and rattled
OC20 slab, running the checks of that file), given in brackets, and kept below a
2 meV defect: 2 meV in the total energy of a ~20-atom molecule is 1e-4 eV/atom, in a force
2e-3 eV/Å. tests/test_conformance_mutations.py plants such defects and shows they are caught in
both dtypes.

float64 (round-off ~1e-16 relative):
  energy 1e-9 eV/atom + 1e-9 × |E|/atom [≤ 2.8e-15]; forces 1e-8 eV/Å + 1e-8 × max|F| [≤ 1.5e-13];
  stress 1e-9 eV/Å³ + 1e-8 × max|σ| [≤ 2.2e-16]; finite-difference forces 1e-6 eV/Å + 1e-6 × max|F|
  [≤ 2.2e-9], stress 1e-7 eV/Å³ + 1e-6 × max|σ| [≤ 1.4e-10]; cutoff crossing (eps 1e-4 Å): energy
  jump 1e-7 eV [≤ 2.1e-10], force jump 1e-5 eV/Å [≤ 8.9e-7, PNITA: the O(eps²) error of the linear
  extrapolation of forces, whose second derivative jumps at r_c with its polynomial envelope's third].
float32 (round-off ~6e-8 relative, accumulated over layers and a few hundred summed terms):
  energy 2e-5 eV/atom + 2e-6 × |E|/atom [≤ 7.9e-7]; forces 1e-4 eV/Å + 1e-4 × max|F| [≤ 4.3e-5];
  stress 1e-5 eV/Å³ + 1e-4 × max|σ| [≤ 2.1e-7]; finite-difference forces (float32 autograd
  forces against differences of a float64 copy) 2e-4 eV/Å + 1e-4 × max|F| [≤ 7.6e-6], stress
  1e-5 eV/Å³ + 1e-4 × max|σ| [≤ 7.9e-8]; cutoff crossing (eps 1e-3 Å): energy jump 2e-4 eV
  [≤ 3.3e-5, PNITA, from float32 cancellation in the expanded polynomial envelope near r_c; with
  the factored envelope (commit b79c39f) PNITA's jump re-measured at ≤ 1.6e-7 eV on 3 QM9
  molecules, the tolerance kept], force jump 1e-3 eV/Å [≤ 2.1e-4, PNITA; ≤ 8.5e-5 re-measured].

Units for reference: 1 meV/atom = 1e-3 eV/atom; 1 eV/Å³ = 160.2 GPa, so 1e-5 eV/Å³ = 1.6 MPa.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from .. import conventions as K
from ..graph.build import build_graph, collate


@dataclass(frozen=True)
class Tolerance:
    """``error <= atol + rtol * scale`` in ``unit`` (``scale``: size of the reference value)."""

    atol: float
    rtol: float
    unit: str

    def bound(self, scale: float) -> float:
        return self.atol + self.rtol * scale


def _tolerances(energy, forces, stress, fd_forces, fd_stress, cutoff_energy, cutoff_forces, vectors):
    return {
        "energy": Tolerance(*energy, "eV/atom"),
        "forces": Tolerance(*forces, "eV/Å"),
        "stress": Tolerance(*stress, "eV/Å³"),
        "fd_forces": Tolerance(*fd_forces, "eV/Å"),
        "fd_stress": Tolerance(*fd_stress, "eV/Å³"),
        "cutoff_energy": Tolerance(*cutoff_energy, "eV"),
        "cutoff_forces": Tolerance(*cutoff_forces, "eV/Å"),
        "vectors": Tolerance(*vectors, "(units of node_vectors)"),
    }


#: Tolerances per dtype and quantity (atol, rtol, unit); see the module docstring for the measured errors.
TOLERANCE: dict[torch.dtype, dict[str, Tolerance]] = {
    torch.float64: _tolerances(
        energy=(1e-9, 1e-9),
        forces=(1e-8, 1e-8),
        stress=(1e-9, 1e-8),
        fd_forces=(1e-6, 1e-6),
        fd_stress=(1e-7, 1e-6),
        cutoff_energy=(1e-7, 0.0),
        cutoff_forces=(1e-5, 0.0),
        vectors=(1e-9, 1e-8),
    ),
    torch.float32: _tolerances(
        energy=(2e-5, 2e-6),
        forces=(1e-4, 1e-4),
        stress=(1e-5, 1e-4),
        fd_forces=(2e-4, 1e-4),
        fd_stress=(1e-5, 1e-4),
        cutoff_energy=(2e-4, 0.0),
        cutoff_forces=(1e-3, 0.0),
        vectors=(1e-4, 1e-4),
    ),
}
#: Finite-difference steps: positions (Å) for forces and strain for stress, always evaluated in
#: float64 (a float32 model's forces are compared with differences of a float64 copy of it: in
#: float32 the round-off of the energy, ~1e-6 eV, over a step small enough for the truncation
#: error, 1e-3 Å, would already be 1e-3 eV/Å); and the distance (Å) either side of the cutoff
#: sphere per dtype.
STEPS = {"forces": 1e-4, "stress": 1e-4, "cutoff": {torch.float64: 1e-4, torch.float32: 1e-3}}
#: Scale at initialisation (check_initial_scale): an untrained model at its defaults should give
#: learned energies and forces of order 1 eV/atom and 1 eV/Å: up to 10x that is allowed (the limits
#: below); nothing is asked below (a zero-initialised last layer is legitimate).
INITIAL_SCALE = {"energy": Tolerance(10.0, 0.0, "eV/atom"), "forces": Tolerance(10.0, 0.0, "eV/Å")}


@dataclass(frozen=True)
class Measured:
    """One quantity's measured error, in ``unit``, and the tolerance it was held to."""

    quantity: str
    error: float
    tolerance: float
    unit: str
    scale: float = 0.0  # size of the reference value (the rtol part of the tolerance is relative to it)

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.error) and self.error <= self.tolerance)

    @property
    def ratio(self) -> float:
        """error / tolerance (inf for a non-finite error or a non-zero error against tolerance 0)."""
        if not np.isfinite(self.error):
            return float("inf")
        if self.tolerance > 0:
            return self.error / self.tolerance
        return 0.0 if self.error == 0 else float("inf")

    def __str__(self) -> str:
        return f"{self.quantity} {self.error:.2e} {self.unit} (tolerance {self.tolerance:.1e})"


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check: each quantity's error in its physical unit and its tolerance.

    ``error``, ``unit``, ``tolerance`` and ``quantity`` are those of the deciding quantity: the one
    with the largest error / tolerance. ``errors`` maps every quantity to its error; ``passed``
    is True when every quantity is within its tolerance.
    """

    name: str
    measured: tuple[Measured, ...]
    detail: str = ""

    @property
    def worst(self) -> Measured:
        if not self.measured:
            return Measured("nothing", 0.0, 0.0, "")
        return max(self.measured, key=lambda m: m.ratio)

    @property
    def error(self) -> float:
        return self.worst.error

    @property
    def tolerance(self) -> float:
        return self.worst.tolerance

    @property
    def unit(self) -> str:
        return self.worst.unit

    @property
    def quantity(self) -> str:
        return self.worst.quantity

    @property
    def max_abs(self) -> float:
        """Same as ``error`` (kept for callers of the earlier scaled-error results)."""
        return self.error

    @property
    def errors(self) -> dict[str, float]:
        return {m.quantity: m.error for m in self.measured}

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.measured)

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        parts = ", ".join(("" if m.passed else "FAILED ") + str(m) for m in self.measured)
        return f"{self.name}: {verdict}; {parts}" + (f" [{self.detail}]" if self.detail else "")


def assert_check(result: CheckResult) -> CheckResult:
    """Raise AssertionError with the measured errors when the check failed; return it otherwise."""
    __tracebackhide__ = True
    if not result.passed:
        raise AssertionError(str(result))
    return result


# --------------------------------------------------------------------------- running a model
def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def _float64(model):
    """``model`` itself in float64, else a float64 copy of it (same weights; deep copy)."""
    if _dtype(model) == torch.float64:
        return model
    return copy.deepcopy(model).double()


def _tolerance(model, name: str) -> Tolerance:
    dtype = _dtype(model)
    if dtype not in TOLERANCE:
        raise ValueError(f"geognn.testing has tolerances for float64 and float32 models, not {dtype}")
    return TOLERANCE[dtype][name]


@contextlib.contextmanager
def reference_energies_removed(model):
    """Within the block, the model's per-element reference energies are zero (restored after).

    Finds every buffer of ``model`` whose name contains ``reference`` (``Model.reference.energies``).
    """
    buffers = [b for n, b in model.named_buffers() if "reference" in n and b.is_floating_point()]
    saved = [b.detach().clone() for b in buffers]
    try:
        with torch.no_grad():
            for b in buffers:
                b.zero_()
        yield model
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)


def predict(
    model, structures: Sequence[Atoms], *, stress: bool | None = None, batched: bool = True, reference: bool = True
):
    """Run ``model`` on structures; list of dicts of numpy float64 ``energy`` (eV), ``forces``
    [N, 3] (eV/Å), ``stress`` [3, 3] (eV/Å³ or None) and ``natoms``.

    Graphs are built with the model's cutoff, neighbour cap and dtype. ``stress`` defaults to True
    when every structure has a periodic direction. ``reference=False`` gives the learned energy
    (per-element reference energies removed, see ``reference_energies_removed``).
    """
    if not reference:
        with reference_energies_removed(model):
            return predict(model, structures, stress=stress, batched=batched)
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
            results.append(
                {
                    "energy": float(out[K.ENERGY][b].detach()),
                    "forces": forces[b].double().numpy(),
                    "stress": out[K.STRESS][b].detach().double().numpy() if stress else None,
                    "natoms": sizes[b],
                }
            )
    return results


def _learned(model, structures, **kwargs):
    return predict(model, structures, reference=False, **kwargs)


class _Errors:
    """Accumulates the largest error per quantity over (got, expected) pairs."""

    def __init__(self, model, names=("energy", "forces", "stress")):
        self.model = model
        self.names = {"energy": names[0], "forces": names[1], "stress": names[2]}
        self.err: dict[str, float] = {}
        self.scale: dict[str, float] = {}

    def _add(self, key, err, scale):
        err = float(err) if np.isfinite(err) else float("inf")
        self.err[key] = max(self.err.get(key, 0.0), err)
        self.scale[key] = max(self.scale.get(key, 0.0), float(scale) if np.isfinite(scale) else 0.0)

    def energy(self, got: float, expected: float, natoms: int):
        self._add("energy", abs(got - expected) / natoms, abs(expected) / natoms)

    def forces(self, got, expected):
        got, expected = np.asarray(got, float), np.asarray(expected, float)
        if got.size:
            self._add("forces", np.linalg.norm(got - expected, axis=-1).max(), np.linalg.norm(expected, axis=-1).max())

    def stress(self, got, expected):
        if got is not None:
            got, expected = np.asarray(got, float), np.asarray(expected, float)
            self._add("stress", np.abs(got - expected).max(), np.abs(expected).max())

    def outputs(self, got: dict, expected: dict, vector=lambda f: f, tensor=lambda s: s):
        """Energy, forces and stress of two ``predict`` results; ``vector``/``tensor`` transform
        the expected forces/stress (e.g. rotate them)."""
        self.energy(got["energy"], expected["energy"], expected["natoms"])
        self.forces(got["forces"], vector(expected["forces"]))
        if got["stress"] is not None and expected["stress"] is not None:
            self.stress(got["stress"], tensor(expected["stress"]))

    def result(self, name: str, detail: str = "", zero_tolerance: bool = False) -> CheckResult:
        measured = []
        for key in ("energy", "forces", "stress"):
            if key in self.err:
                tol = _tolerance(self.model, self.names[key])
                bound = 0.0 if zero_tolerance else tol.bound(self.scale[key])
                measured.append(Measured(key, self.err[key], bound, tol.unit, self.scale[key]))
        return CheckResult(name, tuple(measured), detail)


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


def _orthogonal_check(name, model, atoms, mat, detail) -> CheckResult:
    ref, got = _learned(model, [atoms, transformed(atoms, mat)])
    errors = _Errors(model)
    errors.outputs(got, ref, vector=lambda f: f @ mat.T, tensor=lambda s: mat @ s @ mat.T)
    return errors.result(name, detail)


def check_rotation(model, atoms: Atoms, rng: np.random.Generator) -> CheckResult:
    """Energy invariant, forces rotate (F R^T), stress rotates (R S R^T) when atoms and cell rotate."""
    rot = random_rotation(rng)
    return _orthogonal_check("rotation", model, atoms, rot, f"R={rot.round(17).tolist()}")


def check_reflection(model, atoms: Atoms, rng: np.random.Generator) -> CheckResult:
    """A rotation composed with inversion: energy invariant, forces transform as vectors."""
    mat = -random_rotation(rng)
    return _orthogonal_check("reflection", model, atoms, mat, f"M={mat.round(17).tolist()}")


def check_translation(model, atoms: Atoms, rng: np.random.Generator) -> CheckResult:
    """Rigid translation by a random vector of a few Å: nothing changes."""
    t = rng.uniform(-5.0, 5.0, size=3)
    moved = atoms.copy()
    moved.calc = None
    moved.positions = atoms.positions + t
    ref, got = _learned(model, [atoms, moved])
    errors = _Errors(model)
    errors.outputs(got, ref)
    return errors.result("translation", f"t={t.tolist()}")


def check_permutation(model, atoms: Atoms, rng: np.random.Generator) -> CheckResult:
    """Relabelling atoms: energy invariant, forces permuted with the atoms."""
    perm = rng.permutation(len(atoms))
    ref, got = _learned(model, [atoms, atoms[perm]])
    errors = _Errors(model)
    errors.outputs(got, ref, vector=lambda f: f[perm])
    return errors.result("permutation", f"perm={perm.tolist()}")


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
    ref, got_moved, got_wrapped = _learned(model, [atoms, moved, wrapped])
    errors = _Errors(model)
    for got in (got_moved, got_wrapped):
        errors.outputs(got, ref)
    return errors.result("wrapping")


def check_supercell(model, atoms: Atoms, repeat=(2, 2, 2)) -> CheckResult:
    """An n-fold supercell has n times the energy (the same energy per atom), the same per-atom
    forces and the same stress."""
    if not atoms.pbc.all():
        raise ValueError("check_supercell needs a structure periodic in all directions")
    n = int(np.prod(repeat))
    ref, got = _learned(model, [atoms, atoms.repeat(repeat)])
    errors = _Errors(model)
    errors.energy(got["energy"], n * ref["energy"], got["natoms"])
    errors.forces(got["forces"], np.tile(ref["forces"], (n, 1)))
    errors.stress(got["stress"], ref["stress"])
    return errors.result("supercell", f"repeat={tuple(repeat)}")


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
    ref, got = _learned(model, [atoms, other])
    errors = _Errors(model)
    errors.outputs(got, ref)
    return errors.result("cell basis change", f"M={m.tolist()}")


def check_batching(model, structures: Sequence[Atoms]) -> CheckResult:
    """Predicting a batch equals predicting each structure alone (energies, forces, stress)."""
    together = _learned(model, structures, batched=True)
    alone = _learned(model, structures, batched=False)
    errors = _Errors(model)
    for a, b in zip(together, alone):
        errors.outputs(a, b)
    return errors.result("batching", f"{len(structures)} structures")


def check_determinism(model, structures: Sequence[Atoms]) -> CheckResult:
    """Two evaluations of the same input give bit-identical energies, forces and stress (eval mode)."""
    first = predict(model, structures)
    second = predict(model, structures)
    errors = _Errors(model)
    for a, b in zip(first, second):
        errors.outputs(a, b)
    return errors.result("determinism", zero_tolerance=True)


# --------------------------------------------------------------------------- gradients
#: 4-point central stencil: f'(0) ≈ [8 (f(h) - f(-h)) - (f(2h) - f(-2h))] / (12 h), error O(h⁴ f⁽⁵⁾)
_STENCIL = ((1.0, 8.0), (-1.0, -8.0), (2.0, -1.0), (-2.0, 1.0))


def check_finite_difference_forces(
    model,
    atoms: Atoms,
    rng: np.random.Generator,
    *,
    step: float | None = None,
    n_components: int = 6,
    n_directions: int = 2,
) -> CheckResult:
    """Forces are -dE/dx: autograd forces against central differences of the learned energy.

    Checks ``n_components`` random Cartesian components (one atom, one axis) and ``n_directions``
    random unit directions in which every atom moves (both catch a force that is not the gradient
    of the energy, e.g. a term whose geometry was detached from autograd). 4-point stencil with
    ``step`` Å (default ``STEPS["forces"]`` = 1e-4 Å), energies of the displaced structures in
    one batch, always in float64: a float32 model's autograd forces are compared with the
    differences of a float64 copy of the same weights. Error: max |F·d - (-dE/dt)| in eV/Å, held
    to ``TOLERANCE[dtype]["fd_forces"]`` (relative part against max |F|).
    """
    step = STEPS["forces"] if step is None else float(step)
    (base,) = _learned(model, [atoms], stress=False)
    forces = base["forces"]
    directions, labels = [], []
    for _ in range(n_components):
        a, c = int(rng.integers(len(atoms))), int(rng.integers(3))
        d = np.zeros((len(atoms), 3))
        d[a, c] = 1.0
        directions.append(d)
        labels.append((a, c))
    for _ in range(n_directions):
        d = rng.normal(size=(len(atoms), 3))
        directions.append(d / np.linalg.norm(d))
        labels.append("random")
    displaced = []
    for d in directions:
        for k, _w in _STENCIL:
            moved = atoms.copy()
            moved.calc = None
            moved.positions = atoms.positions + k * step * d
            displaced.append(moved)
    energies = [r["energy"] for r in _learned(_float64(model), displaced, stress=False)]
    err = 0.0
    for p, d in enumerate(directions):
        e = energies[len(_STENCIL) * p : len(_STENCIL) * (p + 1)]
        derivative = sum(w * ei for (_k, w), ei in zip(_STENCIL, e)) / (12 * step)
        err = max(err, abs(float(np.sum(forces * d)) + derivative))
    if not np.isfinite(err):
        err = float("inf")
    tol = _tolerance(model, "fd_forces")
    scale = float(np.linalg.norm(forces, axis=-1).max()) if len(forces) else 0.0
    measured = (Measured("forces", err, tol.bound(scale), tol.unit, scale),)
    return CheckResult("finite-difference forces", measured, f"step={step} Å, components={labels}")


def check_finite_difference_stress(model, atoms: Atoms, *, step: float | None = None) -> CheckResult:
    """Stress equals (1/V) dE/d(strain) by central differences of a symmetric strain.

    4-point stencil with strain ``step`` (default ``STEPS["stress"]`` = 1e-4) on the learned energy,
    in float64 as for forces; error max |σ - σ_fd| in eV/Å³, held to ``TOLERANCE[dtype]["fd_stress"]``.
    """
    if not atoms.pbc.any():
        raise ValueError("check_finite_difference_stress needs a periodic structure")
    step = STEPS["stress"] if step is None else float(step)
    (base,) = _learned(model, [atoms], stress=True)
    stress = base["stress"]
    volume = abs(np.linalg.det(atoms.cell[:]))
    pairs, strained = [], []
    for a in range(3):
        for b in range(a, 3):
            pairs.append((a, b))
            for k, _w in _STENCIL:
                eps = np.zeros((3, 3))
                eps[a, b] = eps[b, a] = k * step / (1 if a == b else 2)
                s = atoms.copy()
                s.calc = None
                s.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=False)
                s.positions = atoms.positions @ (np.eye(3) + eps)
                strained.append(s)
    energies = [r["energy"] for r in _learned(_float64(model), strained, stress=False)]
    fd = np.zeros((3, 3))
    for p, (a, b) in enumerate(pairs):
        e = energies[len(_STENCIL) * p : len(_STENCIL) * (p + 1)]
        # off-diagonal: eps_ab = eps_ba = step/2, so dE/d(step) = V (sigma_ab + sigma_ba) / 2 = V sigma_ab
        deriv = sum(w * ei for (_k, w), ei in zip(_STENCIL, e)) / (12 * step)
        fd[a, b] = fd[b, a] = deriv / volume
    errors = _Errors(model, names=("energy", "forces", "fd_stress"))
    errors.stress(stress, fd)
    result = errors.result("finite-difference stress", f"strain step={step}")
    return result


# --------------------------------------------------------------------------- cutoff
def check_cutoff_smoothness(model, atoms: Atoms, rng: np.random.Generator, *, eps: float | None = None) -> CheckResult:
    """Energy and forces are continuous when an atom crosses the cutoff sphere: the jump in eV.

    A probe H atom is placed on a random ray u from the atom furthest along it (so no other atom
    is closer to the probe than that one) at distances ``r_c ± eps`` and ``r_c ± 2 eps`` (eps
    default ``STEPS["cutoff"][dtype]``: 1e-4 Å in float64, 1e-3 Å in float32). The energy at the
    sphere is extrapolated from each side with the gradient (dE/dr = -F_probe·u):

        E_in  = E(r_c - eps) - eps F_probe(r_c - eps)·u,   E_out = E(r_c + eps) + eps F_probe(r_c + eps)·u

    and the jump ``|E_out - E_in|`` (eV; error O(eps² E'')) is held to
    ``TOLERANCE[dtype]["cutoff_energy"]``: a step of 2 meV in an envelope shows as a 2 meV jump
    whatever eps is. Forces are extrapolated linearly from each side (F(r_c) ≈ 2 F(r_c ∓ eps) -
    F(r_c ∓ 2 eps)) and the largest jump of any atom's force (eV/Å; a kink in the energy) is
    held to ``TOLERANCE[dtype]["cutoff_forces"]``.
    """
    if atoms.pbc.any():
        raise ValueError("check_cutoff_smoothness needs a molecule (no periodic direction)")
    eps = STEPS["cutoff"][_dtype(model)] if eps is None else float(eps)
    u = rng.normal(size=3)
    u /= np.linalg.norm(u)
    anchor = int(np.argmax(atoms.positions @ u))
    probes = []
    for r in (model.cutoff - 2 * eps, model.cutoff - eps, model.cutoff + eps, model.cutoff + 2 * eps):
        probe = atoms.copy()
        probe.calc = None
        probe += Atoms("H", positions=[atoms.positions[anchor] + r * u])
        probes.append(probe)
    in2, in1, out1, out2 = _learned(model, probes, stress=False)
    e_in = in1["energy"] - eps * float(in1["forces"][-1] @ u)
    e_out = out1["energy"] + eps * float(out1["forces"][-1] @ u)
    f_in = 2 * in1["forces"] - in2["forces"]
    f_out = 2 * out1["forces"] - out2["forces"]
    jump = abs(e_out - e_in)
    force_jump = float(np.linalg.norm(f_out - f_in, axis=-1).max())
    t_e, t_f = _tolerance(model, "cutoff_energy"), _tolerance(model, "cutoff_forces")
    measured = (
        Measured("energy jump", jump if np.isfinite(jump) else float("inf"), t_e.bound(0.0), t_e.unit),
        Measured("force jump", force_jump if np.isfinite(force_jump) else float("inf"), t_f.bound(0.0), t_f.unit),
    )
    return CheckResult("cutoff smoothness", measured, f"eps={eps} Å, ray={u.tolist()}, anchor atom {anchor}")


# --------------------------------------------------------------------------- vectors
def check_vector_equivariance(model, atoms: Atoms, rng: np.random.Generator, *, reflect: bool = False):
    """The backbone's ``node_vectors`` [N, F, 3] rotate (or reflect) with the structure.

    Error: max over atoms and channels of |v(R x) - v(x) Rᵀ| (the vectors' own units), held to
    ``TOLERANCE[dtype]["vectors"]`` relative to max |v|. Returns None when the backbone has no
    ``node_vectors``.
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
    expected = ref @ mat.T
    err = float(np.linalg.norm(got - expected, axis=-1).max()) if got.size else 0.0
    scale = float(np.linalg.norm(expected, axis=-1).max()) if got.size else 0.0
    tol = _tolerance(model, "vectors")
    name = "node_vectors reflection" if reflect else "node_vectors rotation"
    measured = (Measured("node_vectors", err if np.isfinite(err) else float("inf"), tol.bound(scale), tol.unit, scale),)
    return CheckResult(name, measured, f"M={mat.round(17).tolist()}")


# --------------------------------------------------------------------------- scale
def check_initial_scale(model, structures: Sequence[Atoms]) -> CheckResult:
    """Learned energies and forces are of order 1 eV/atom and 1 eV/Å (for an untrained model at its
    defaults): the largest |E_learned| / n_atoms over structures and the root-mean-square force
    over all atoms must stay below ``INITIAL_SCALE`` (10 eV/atom, 10 eV/Å).

    A network whose features grow with the number of neighbours fails this on dense structures
    (OC20 slabs, bulk metals) long before training can fix it.
    """
    results = _learned(model, structures, stress=False)
    energy = max(abs(r["energy"]) / r["natoms"] for r in results)
    forces = np.concatenate([r["forces"] for r in results])
    rms = float(np.sqrt(np.mean(np.sum(forces**2, axis=-1))))
    measured = tuple(
        Measured(q, v if np.isfinite(v) else float("inf"), INITIAL_SCALE[q].atol, INITIAL_SCALE[q].unit)
        for q, v in (("energy", energy), ("forces", rms))
    )
    return CheckResult("initial scale", measured, f"{len(structures)} structures; max |E|/atom, rms |F|")
