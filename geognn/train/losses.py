"""The training loss: weighted energy, forces and stress terms.

Each term is a mean over its items of ``err**2`` (mse) or ``|err|`` (mae), where ``err`` is the
error in natural units divided by ``scale`` (eV, the spread of per-atom training energies, so the
loss is O(1) whatever the target's size):

    energy  err = (E_pred - E) / n_atoms / scale   (per_atom)  or  (E_pred - E) / scale   items: structures
    forces  err = (F_pred - F) / scale             items: force components of atoms not fixed
    stress  err = (S_pred - S) / scale             items: stress components of structures with a label

    loss = energy_weight * energy + forces_weight * forces + stress_weight * stress

``loss_sums`` gives the per-term sums and ``loss_counts`` the number of items, so that gradient
accumulation and data-parallel training divide by the count of the whole (global) batch and give
exactly the gradient of one big batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import conventions as K

TERMS = ("energy", "forces", "stress")


@dataclass(frozen=True)
class LossSpec:
    energy_weight: float = 1.0
    forces_weight: float = 0.0
    stress_weight: float = 0.0
    per_atom: bool = True
    kind: str = "mse"  # "mse" or "mae"
    scale: float = 1.0  # eV

    @classmethod
    def from_config(cls, config, scale: float) -> "LossSpec":
        return cls(config.energy_weight, config.forces_weight, config.stress_weight,
                   config.energy_normalisation == "per_atom", config.loss, float(scale))

    def weights(self) -> dict[str, float]:
        w = {"energy": self.energy_weight, "forces": self.forces_weight, "stress": self.stress_weight}
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
    if "energy" in weights:
        counts["energy"] = float(batch[K.ENERGY].numel())
    if "forces" in weights:
        counts["forces"] = float(free.sum()) * 3
    if "stress" in weights:
        counts["stress"] = float(stress_ok.sum()) * 9
    return counts


def loss_sums(out: dict, batch, spec: LossSpec) -> dict[str, torch.Tensor]:
    """Sum over items of each weighted term's penalty (unweighted, not yet divided by counts)."""
    weights = spec.weights()
    free, stress_ok = _masks(batch)
    sums = {}
    if "energy" in weights:
        err = out[K.ENERGY] - batch[K.ENERGY]
        if spec.per_atom:
            err = err / batch[K.NATOMS].to(err.dtype)
        sums["energy"] = _penalty(err / spec.scale, spec.kind).sum()
    if "forces" in weights:
        err = (out[K.FORCES] - batch[K.FORCES])[free]
        sums["forces"] = _penalty(err / spec.scale, spec.kind).sum()
    if "stress" in weights:
        err = (out[K.STRESS] - batch[K.STRESS])[stress_ok]
        sums["stress"] = _penalty(err / spec.scale, spec.kind).sum()
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
