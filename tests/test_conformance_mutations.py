"""Mutation tests of the conformance suite (geognn.testing): planted 2 meV defects must be caught.

A small toy backbone is registered through the public contract (a ``Backbone`` subclass added to
``geognn.BACKBONES``, built with ``geognn.build_model``). It is smooth, invariant and conservative
unless one of its defect keywords is set:

==============  ==========================================================  ======================
keyword         defect                                                      check that must fail
==============  ==========================================================  ======================
``step``        the cosine envelope gets a step of height ``step`` inside   check_cutoff_smoothness
                the cutoff sphere (an atom crossing it changes E abruptly)
``rotation``    a term ``Σ_j f(d) (r_ij · ẑ)² / d²``: depends on orientation  check_rotation,
                                                                            check_reflection
``translation`` a term ``sin(k · x_i)`` of absolute positions                check_translation,
                                                                            check_wrapping
``detach``      the vector branch (``node_vectors`` v_i = Σ_j g(d) r_ij,     check_finite_difference_forces
                whose |v_i|² enters the energy) reads detached edge vectors:
                the energy is unchanged but autograd forces miss its gradient
==============  ==========================================================  ======================

Each defect's amplitude is calibrated (float64, on the structure it is checked on) so that the
defect is 2 meV: a 2 meV energy jump as the probe atom crosses the cutoff; a term contributing
2 meV to the total energy (rotation, translation); a 2 meV/Å largest error in a force (detach).
The calibration is measured directly, not by the check under test. Every defect must be flagged
in float64 and in float32 (the float32 model has the same weights); the correct toy must pass
every check in both. Real backbones pass the same suite in tests/test_model.py.

Measured (the deciding quantity; tolerances float64 / float32 in brackets):
  step         energy jump 2.0e-3 eV [1e-7 / 2e-4 eV]
  rotation     molecule: 4.3e-5 eV/atom [1e-9 / 2e-5], forces 5.9e-4 eV/Å [1.3e-8 / 1.3e-4];
               crystal: forces 1.1e-3 eV/Å, stress 3.2e-5 eV/Å³ [1e-9 / 1e-5]
  translation  molecule: 3.4e-4 eV/atom, forces 6.8e-4 eV/Å; crystal: 5.7e-4 eV/atom, 3.9e-3 eV/Å
  detach       finite-difference forces 1.1e-3 (molecule) and 2.0e-3 eV/Å (crystal) [1.2e-6 / 2.2e-4]
The checks before issue 16 (errors scaled by 1 + |E| with the reference energies, cutoff jump
bounded by 1e3 x eps) passed this step in both dtypes (scaled error 9.1e-4 against 1e-2; commit
1e0ae21), and had no meaningful finite-difference check in float32.
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import load_jarvis, load_qm9_molecules
from torch import nn

import geognn
from geognn import conventions as K
from geognn import testing as T
from geognn.backbones import BACKBONES, Backbone
from geognn.graph.build import edge_vectors
from geognn.graph.features import GaussianRBF, cosine_cutoff
from geognn.nn.scatter import scatter_sum

pytestmark = pytest.mark.filterwarnings("ignore::geognn.graph.build.IsolatedAtomWarning")

CUTOFF = 4.0
#: size of every planted defect: 2 meV (energy) or 2 meV/Å (force)
DEFECT = 2e-3
DTYPES = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]


class Toy(Backbone):
    """One interaction of invariant filters plus a vector branch, with optional planted defects.

    ``node_features`` [N, F] = SiLU(W [h_i + Σ_j W(d) f(d) ⊙ h_j ‖ vector_scale |v_i|²]) (+ defect
    terms in every channel); ``node_vectors`` [N, V, 3], v_i = Σ_j g(d) f(d) r_ij (Å). f is the cosine
    envelope (+ ``step`` inside the sphere). Defect keywords are 0 / False for the correct toy.
    """

    name = "toy"

    def __init__(
        self,
        hidden_channels: int = 8,
        num_layers: int = 1,
        cutoff: float = 5.0,
        num_vectors: int = 4,
        vector_scale: float = 1.0,
        step: float = 0.0,
        rotation: float = 0.0,
        translation: float = 0.0,
        detach: bool = False,
    ):
        super().__init__(
            hidden_channels=hidden_channels,
            num_layers=num_layers,
            cutoff=cutoff,
            num_vectors=num_vectors,
            vector_scale=vector_scale,
            step=step,
            rotation=rotation,
            translation=translation,
            detach=detach,
        )
        self.cutoff = float(cutoff)
        self.embedding = nn.Embedding(self.max_z + 1, hidden_channels)
        self.rbf = GaussianRBF(0.0, cutoff, 8)
        self.filter = nn.Linear(8, hidden_channels)
        self.vector_filter = nn.Linear(8, num_vectors)
        self.out = nn.Linear(hidden_channels + num_vectors, hidden_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in (self.embedding, self.filter, self.vector_filter, self.out):
            module.reset_parameters()

    def forward(self, batch) -> dict[str, torch.Tensor]:
        hp = self.hparams
        j, i = batch[K.EDGE_INDEX]
        n = batch[K.Z].shape[0]
        vec = edge_vectors(batch)  # [E, 3] Å
        d = vec.norm(dim=-1)  # [E]
        env = cosine_cutoff(d, self.cutoff) + hp["step"]  # [E]; every edge of the graph is inside the sphere
        rbf = self.rbf(d)  # [E, 8]
        h = self.embedding(batch[K.Z])  # [N, F]
        h = h + scatter_sum(h.index_select(0, j) * self.filter(rbf) * env.unsqueeze(-1), i, n)  # [N, F]
        edge_dir = vec.detach() if hp["detach"] else vec  # the planted non-conservative force
        weights = self.vector_filter(rbf) * env.unsqueeze(-1)  # [E, V]
        v = scatter_sum(weights.unsqueeze(-1) * edge_dir.unsqueeze(1), i, n)  # [N, V, 3]
        features = nn.functional.silu(self.out(torch.cat([h, hp["vector_scale"] * v.pow(2).sum(-1)], dim=-1)))
        extra = torch.zeros_like(features[:, 0])  # [N] defect terms, added to every channel
        if hp["rotation"]:
            extra = extra + hp["rotation"] * scatter_sum(env * (vec[:, 2] / d) ** 2, i, n)
        if hp["translation"]:
            k = torch.tensor([0.7, 0.3, 0.5], dtype=vec.dtype)
            extra = extra + hp["translation"] * torch.sin(batch[K.POS] @ k)
        features = features + extra.unsqueeze(-1)
        return {K.NODE_FEATURES: features, K.NODE_VECTORS: v}


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """The toy is a backbone like any other: in BACKBONES, built by name."""
    monkeypatch.setitem(BACKBONES, "toy", Toy)


def toy(dtype=torch.float64, **defect) -> geognn.Model:
    """The toy model (seed 0), eV-sized as tests/test_model.py's models, in ``dtype``."""
    torch.manual_seed(0)
    model = geognn.build_model("toy", cutoff=CUTOFF, **defect).double().eval()
    model.reference.energies[1:] = -torch.arange(1, model.reference.energies.numel(), dtype=torch.float64) * 0.3
    model.set_scale_shift(0.5, 0.1)
    return model if dtype == torch.float64 else copy.deepcopy(model).to(dtype)


@pytest.fixture(scope="module")
def molecule():
    return load_qm9_molecules(40)[-1]  # 19 atoms


@pytest.fixture(scope="module")
def crystal():
    atoms = [a for a in load_jarvis(50) if len(a) <= 12][0].copy()
    atoms.positions += np.random.default_rng(7).normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def energy(model, atoms) -> float:
    return T.predict(model, [atoms], stress=False)[0]["energy"]


def probe_on_sphere(atoms, distance, seed=3):
    """``atoms`` plus an H at ``distance`` Å along a random ray from the atom furthest along it."""
    u = np.random.default_rng(seed).normal(size=3)
    u /= np.linalg.norm(u)
    anchor = int(np.argmax(atoms.positions @ u))
    out = atoms.copy()
    out += Atoms("H", positions=[atoms.positions[anchor] + distance * u])
    return out


# --------------------------------------------------------------------------- calibration: what "2 meV" is
def step_jump(model, atoms) -> float:
    """Energy change (eV) as the probe crosses the sphere: just inside minus just outside (1e-7 Å)."""
    return energy(model, probe_on_sphere(atoms, CUTOFF - 1e-7)) - energy(model, probe_on_sphere(atoms, CUTOFF + 1e-7))


def term_size(key, amplitude, atoms) -> float:
    """|E(defect) - E(correct)| (eV): what the planted term adds to the total energy."""
    return abs(energy(toy(**{key: amplitude}), atoms) - energy(toy(), atoms))


def missing_force(vector_scale, atoms) -> float:
    """Largest |F_true - F_autograd| (eV/Å) of one atom when the vector branch is detached."""
    (good,) = T.predict(toy(vector_scale=vector_scale), [atoms], stress=False)
    (bad,) = T.predict(toy(vector_scale=vector_scale, detach=True), [atoms], stress=False)
    assert good["energy"] == pytest.approx(bad["energy"], abs=1e-12)  # same energy, different forces
    return float(np.linalg.norm(good["forces"] - bad["forces"], axis=-1).max())


def calibrated(kind: str, atoms) -> dict:
    """Defect keywords of size DEFECT on ``atoms``: a tiny trial amplitude, then two secant steps
    (the head is non-linear, so the size is ~7 % off linear at 2 meV)."""
    if kind == "detach":
        scale = 1.0
        for _ in range(3):
            scale *= DEFECT / missing_force(scale, atoms)
        return {"detach": True, "vector_scale": scale}
    if kind == "step":
        size = lambda a: abs(step_jump(toy(step=a), atoms))  # noqa: E731
    elif kind in ("rotation", "translation"):
        size = lambda a: term_size(kind, a, atoms)  # noqa: E731
    else:
        raise ValueError(kind)
    amplitude = 1e-6
    for _ in range(3):
        amplitude *= DEFECT / size(amplitude)
    return {kind: amplitude}


def test_calibrated_defects_are_2_meV(molecule, crystal):
    """The planted defects have the size they claim, measured without geognn.testing's checks."""
    step = calibrated("step", molecule)
    assert abs(step_jump(toy(**step), molecule)) == pytest.approx(DEFECT, rel=0.01)
    assert abs(step_jump(toy(), molecule)) < 1e-9  # the correct toy is continuous
    for kind in ("rotation", "translation"):
        for atoms in (molecule, crystal):
            amplitude = calibrated(kind, atoms)
            got = abs(energy(toy(**amplitude), atoms) - energy(toy(), atoms))
            assert got == pytest.approx(DEFECT, rel=0.01), (kind, got)
    detach = calibrated("detach", molecule)
    assert missing_force(detach["vector_scale"], molecule) == pytest.approx(DEFECT, rel=0.01)


# --------------------------------------------------------------------------- the correct toy passes
@pytest.mark.parametrize("dtype", DTYPES)
def test_correct_toy_passes_every_check(dtype, molecule, crystal):
    model = toy(dtype)
    rng = np.random.default_rng(0)
    results = [
        T.check_cutoff_smoothness(model, molecule, rng),
        T.check_finite_difference_forces(model, molecule, rng),
        T.check_finite_difference_forces(model, crystal, rng),
        T.check_finite_difference_stress(model, crystal),
        T.check_batching(model, [molecule, crystal]),
        T.check_determinism(model, [molecule, crystal]),
    ]
    for atoms in (molecule, crystal):
        for check in (T.check_rotation, T.check_reflection, T.check_translation, T.check_permutation):
            results.append(check(model, atoms, rng))
        results.append(T.check_vector_equivariance(model, atoms, rng))
    results += [T.check_wrapping(model, crystal, rng), T.check_cell_basis_change(model, crystal, rng)]
    if dtype == torch.float64:
        results.append(T.check_supercell(model, crystal, (2, 1, 1)))
    for result in results:
        T.assert_check(result)
    (out,) = T.predict(model, [molecule])
    assert np.linalg.norm(out["forces"], axis=-1).max() > 0.05  # non-trivial forces are compared


# --------------------------------------------------------------------------- each defect is caught
def flagged(result, quantity=None):
    """The check failed, by more than its tolerance, on the expected quantity."""
    assert not result.passed, f"planted defect not caught: {result}"
    if quantity is not None:
        assert not next(m for m in result.measured if m.quantity == quantity).passed, str(result)
    return result


@pytest.mark.parametrize("dtype", DTYPES)
def test_step_at_the_cutoff_is_caught(dtype, molecule):
    model = toy(dtype, **calibrated("step", molecule))
    result = flagged(T.check_cutoff_smoothness(model, molecule, np.random.default_rng(3)), "energy jump")
    # the check measures the jump itself, ~2 meV, in eV (the planted step is 2 meV whatever eps is)
    assert result.errors["energy jump"] == pytest.approx(DEFECT, rel=0.3), str(result)
    # a symmetric defect: the symmetry checks do not fire on it
    T.assert_check(T.check_rotation(model, molecule, np.random.default_rng(0)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_envelope_kink_is_caught(dtype, molecule, monkeypatch):
    """A kinked envelope (linear, f(r_c) = 0 but f'(r_c) != 0): continuous energy, jumping forces."""
    monkeypatch.setattr(sys.modules[__name__], "cosine_cutoff", lambda d, rc: (1.0 - d / rc) * (d < rc).to(d.dtype))
    result = flagged(T.check_cutoff_smoothness(toy(dtype), molecule, np.random.default_rng(3)), "force jump")
    assert result.errors["energy jump"] < 1e-3  # no step: the energy is continuous


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotation_dependent_term_is_caught(dtype, molecule, crystal):
    for atoms in (molecule, crystal):
        model = toy(dtype, **calibrated("rotation", atoms))
        for seed in range(2):
            flagged(T.check_rotation(model, atoms, np.random.default_rng(seed)))
            flagged(T.check_reflection(model, atoms, np.random.default_rng(seed)))
        T.assert_check(T.check_translation(model, atoms, np.random.default_rng(0)))  # still translation invariant
        T.assert_check(T.check_permutation(model, atoms, np.random.default_rng(0)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_translation_dependent_term_is_caught(dtype, molecule, crystal):
    for atoms in (molecule, crystal):
        model = toy(dtype, **calibrated("translation", atoms))
        for seed in range(2):
            flagged(T.check_translation(model, atoms, np.random.default_rng(seed)))
    flagged(T.check_wrapping(toy(dtype, **calibrated("translation", crystal)), crystal, np.random.default_rng(0)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_force_that_is_not_the_gradient_is_caught(dtype, molecule, crystal):
    """The vector branch detached from autograd: the energy is right, the forces are not -dE/dx."""
    for atoms in (molecule, crystal):
        model = toy(dtype, **calibrated("detach", atoms))
        result = flagged(T.check_finite_difference_forces(model, atoms, np.random.default_rng(2)))
        assert 2e-4 < result.error <= 1.01 * DEFECT, str(result)  # a component of the 2 meV/Å error
        # every symmetry holds: only the gradient check can see this defect
        for check in (T.check_rotation, T.check_translation, T.check_permutation):
            T.assert_check(check(model, atoms, np.random.default_rng(0)))
    flagged(T.check_finite_difference_stress(toy(dtype, **calibrated("detach", crystal)), crystal))


def test_results_are_in_physical_units(molecule, crystal):
    """Each quantity is reported in its unit; the deciding one is exposed as .error/.unit/.tolerance."""
    model = toy(**calibrated("rotation", crystal))
    result = T.check_rotation(model, crystal, np.random.default_rng(0))
    assert [m.unit for m in result.measured] == ["eV/atom", "eV/Å", "eV/Å³"]
    assert (
        result.unit in ("eV/atom", "eV/Å", "eV/Å³")
        and result.error == max(result.measured, key=lambda m: m.error / m.tolerance).error
    )
    assert "FAILED" in str(result) and "eV/Å" in str(result)
    # the reference energies do not enter: the same check with references 1000x larger gives the same errors
    model.reference.energies.mul_(1000.0)
    again = T.check_rotation(model, crystal, np.random.default_rng(0))
    assert again.errors == pytest.approx(result.errors, rel=1e-6, abs=1e-15)
    assert float(model.reference.energies[8]) == pytest.approx(-2400.0)  # restored after the check


def test_initial_scale_flags_absurd_scales(molecule, crystal):
    """check_initial_scale passes the toy as built (scale 1 eV) and fails it at 1000x (the kind of
    scale FAENet started at before issue 16: 1.8e3 eV/atom on a QM9 molecule)."""
    model = toy()
    model.set_scale_shift(1.0, 0.0)
    ok = T.assert_check(T.check_initial_scale(model, [molecule, crystal]))
    assert ok.unit in ("eV/atom", "eV/Å") and 1e-3 < ok.errors["energy"] < 10.0
    model.set_scale_shift(1e3, 0.0)
    bad = T.check_initial_scale(model, [molecule, crystal])
    assert not bad.passed and bad.errors["energy"] == pytest.approx(1e3 * ok.errors["energy"], rel=1e-9)
