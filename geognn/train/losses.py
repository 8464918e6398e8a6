"""The training loss: one term per target, plus forces and stress of the energy target.

Each term is a mean over its items of ``err**2`` (mse) or ``|err|`` (mae), where ``err`` is the
error in natural units divided by the target's ``scale`` (the spread of its training labels
per atom for ``sum`` targets, per structure for ``mean`` targets; see ``fit_output``), so every
term is O(1) whatever the target's size:

    target t, readout sum   err = (y_pred - y) / n_atoms / scale_t   (per_atom)  or  (y_pred - y) / scale_t
    target t, readout mean  err = (y_pred - y) / scale_t                          items: structures
    forces                  err = (F_pred - F) / scale_E      items: force components of atoms not fixed
    stress                  err = (S_pred - S) / scale_E      items: stress components of labelled structures

    loss = energy_weight * sum_t term_t + forces_weight * forces + stress_weight * stress

``scale_E`` is the energy target's scale. ``loss_sums`` gives the per-term sums and
``loss_counts`` the number of items, so that gradient accumulation and data-parallel training
divide by the count of the whole (global) batch and give exactly the gradient of one big batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import conventions as K


@dataclass(frozen=True)
class TargetTerm:
    """The loss term of one target: its name (output and label key), readout and scale."""

    name: str
    readout: str = "sum"
    scale: float = 1.0  # target unit


@dataclass(frozen=True)
class LossSpec:
    """Weights and normalisation of the loss. ``targets`` empty: the single target ``energy``
    (readout sum, scale ``scale``); ``scale`` also normalises forces and stress (eV)."""

    energy_weight: float = 1.0  # weight of each target's term
    forces_weight: float = 0.0
    stress_weight: float = 0.0
    per_atom: bool = True  # divide the error of sum targets by the number of atoms
    kind: str = "mse"  # "mse" or "mae"
    scale: float = 1.0  # eV, scale of the energy target (forces, stress)
    targets: tuple[TargetTerm, ...] = ()

    @classmethod
    def from_config(cls, config, model) -> "LossSpec":
        """The loss of a run: weights from ``config``, one term per head of ``model`` with its scale."""
        terms = tuple(TargetTerm(name, head.target.readout, float(head.scale)) for name, head in model.heads.items())
        energy = model.energy_target
        scale = float(model.heads[energy.name].scale) if energy is not None else 1.0
        return cls(
            config.energy_weight,
            config.forces_weight,
            config.stress_weight,
            config.energy_normalisation == "per_atom",
            config.loss,
            scale,
            terms,
        )

    @property
    def terms(self) -> tuple[TargetTerm, ...]:
        return self.targets or (TargetTerm(K.ENERGY, "sum", self.scale),)

    def weights(self) -> dict[str, float]:
        w = {t.name: self.energy_weight for t in self.terms}
        w.update({K.FORCES: self.forces_weight, K.STRESS: self.stress_weight})
        return {k: v for k, v in w.items() if v > 0}


def _penalty(err: torch.Tensor, kind: str) -> torch.Tensor:
    return err.pow(2) if kind == "mse" else err.abs()


def _masks(batch):
    free = ~batch[K.FIXED] if K.FIXED in batch else torch.ones_like(batch[K.Z], dtype=torch.bool)
    stress_ok = torch.isfinite(batch[K.STRESS]).all(-1).all(-1) if K.STRESS in batch else None
    return free, stress_ok


def loss_counts(batch, spec: LossSpec) -> dict[str, float]:
    """Number of items each term averages over in ``batch``."""
    weights = spec.weights()
    free, stress_ok = _masks(batch)
    counts = {}
    for t in spec.terms:
        if t.name in weights:
            counts[t.name] = float(batch[t.name].numel())
    if K.FORCES in weights:
        counts[K.FORCES] = float(free.sum()) * 3
    if K.STRESS in weights:
        counts[K.STRESS] = float(stress_ok.sum()) * 9
    return counts


def loss_sums(out: dict, batch, spec: LossSpec) -> dict[str, torch.Tensor]:
    """Sum over items of each weighted term's penalty (unweighted, not yet divided by counts)."""
    weights = spec.weights()
    free, stress_ok = _masks(batch)
    sums = {}
    for t in spec.terms:
        if t.name not in weights:
            continue
        err = out[t.name] - batch[t.name]
        if spec.per_atom and t.readout == "sum":
            err = err / batch[K.NATOMS].to(err.dtype)
        sums[t.name] = _penalty(err / t.scale, spec.kind).sum()
    if K.FORCES in weights:
        err = (out[K.FORCES] - batch[K.FORCES])[free]
        sums[K.FORCES] = _penalty(err / spec.scale, spec.kind).sum()
    if K.STRESS in weights:
        err = (out[K.STRESS] - batch[K.STRESS])[stress_ok]
        sums[K.STRESS] = _penalty(err / spec.scale, spec.kind).sum()
    return sums


def combine(sums: dict[str, torch.Tensor], counts: dict[str, float], spec: LossSpec) -> torch.Tensor:
    """sum_k weight_k * sums_k / counts_k (a term with no items contributes 0)."""
    total = None
    for name, weight in spec.weights().items():
        term = sums[name] * (weight / max(counts[name], 1.0))
        total = term if total is None else total + term
    return total


def compute_loss(out: dict, batch, spec: LossSpec) -> torch.Tensor:
    """The loss of one batch (the mean of each term over this batch's items)."""
    return combine(loss_sums(out, batch, spec), loss_counts(batch, spec), spec)
