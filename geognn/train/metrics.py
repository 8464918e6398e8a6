"""Evaluation metrics, accumulated as sums so that they add up exactly across batches and ranks.

Reported (``Metrics.result``), errors in natural units: the target's unit, with eV shown as meV
(QM9 energies are reported in meV in the literature):

    {target}_mae_{u}, {target}_rmse_{u}      error of the learned scalar (per structure)
    energy_ewt                               OC20 "energy within threshold": fraction |dE| < 0.02 eV
    forces_mae_meV_A, forces_rmse_meV_A      over force components of atoms not fixed
    forces_cos                               mean cosine between predicted and true force (free atoms)
    efwt                                     OC20: fraction with |dE| < 0.02 eV and max |dF| < 0.03 eV/Å
    stress_mae_meV_A3                        over the 9 components of labelled structures
"""

from __future__ import annotations

import math

import torch

from .. import conventions as K

EWT_THRESHOLD = 0.02  # eV (OC20)
FWT_THRESHOLD = 0.03  # eV/Å (OC20)

_FIELDS = ("n", "abs", "sq", "ewt", "f_n", "f_abs", "f_sq", "f_atoms", "f_cos", "efwt", "s_n", "s_abs")


def display(unit: str) -> tuple[str, float]:
    """(unit shown, factor from the natural unit): eV -> meV, anything else unchanged."""
    if unit == "eV":
        return "meV", K.MEV_PER_EV
    return (unit or "units").replace("/", "_").replace(" ", "").replace("^", ""), 1.0


class Metrics:
    """Running sums of errors over evaluated batches; ``all_reduce`` then ``result``."""

    def __init__(self, target: str, unit: str, forces: bool = False, stress: bool = False):
        self.target, self.unit, self.forces, self.stress = target, unit, forces, stress
        self.sums = torch.zeros(len(_FIELDS), dtype=torch.float64)

    def _add(self, name: str, value) -> None:
        self.sums[_FIELDS.index(name)] += float(value)

    @torch.no_grad()
    def update(self, out: dict, batch) -> None:
        e_err = (out[K.ENERGY].detach() - batch[K.ENERGY]).double().cpu()
        self._add("n", e_err.numel())
        self._add("abs", e_err.abs().sum())
        self._add("sq", e_err.pow(2).sum())
        self._add("ewt", (e_err.abs() < EWT_THRESHOLD).sum())
        if self.forces:
            free = ~batch[K.FIXED].cpu()
            pred, true = out[K.FORCES].detach().double().cpu(), batch[K.FORCES].double().cpu()
            err = (pred - true)[free]
            self._add("f_n", err.numel())
            self._add("f_abs", err.abs().sum())
            self._add("f_sq", err.pow(2).sum())
            self._add("f_atoms", free.sum())
            self._add("f_cos", torch.nn.functional.cosine_similarity(pred[free], true[free], dim=-1).sum())
            graph = batch[K.BATCH].cpu()[free]
            max_err = torch.zeros(e_err.numel(), dtype=torch.float64).scatter_reduce(
                0, graph, err.abs().amax(-1), reduce="amax")
            self._add("efwt", ((e_err.abs() < EWT_THRESHOLD) & (max_err < FWT_THRESHOLD)).sum())
        if self.stress:
            true = batch[K.STRESS].double().cpu()
            ok = torch.isfinite(true).all(-1).all(-1)
            err = (out[K.STRESS].detach().double().cpu() - true)[ok]
            self._add("s_n", err.numel())
            self._add("s_abs", err.abs().sum())

    def all_reduce(self) -> None:
        """Sum the counts of every rank (no-op without torch.distributed)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = torch.device("cuda", torch.cuda.current_device()) \
                if dist.get_backend() == "nccl" else torch.device("cpu")
            sums = self.sums.to(device)
            dist.all_reduce(sums)
            self.sums = sums.cpu()

    @property
    def mae(self) -> float:
        """MAE of the target in its natural unit (eV for energies)."""
        s = dict(zip(_FIELDS, self.sums.tolist()))
        return s["abs"] / s["n"] if s["n"] else math.nan

    def result(self) -> dict[str, float]:
        s = dict(zip(_FIELDS, self.sums.tolist()))
        u, factor = display(self.unit)
        n = max(s["n"], 1)
        out = {f"{self.target}_mae_{u}": s["abs"] / n * factor,
               f"{self.target}_rmse_{u}": math.sqrt(s["sq"] / n) * factor}
        if self.unit == "eV":
            out["energy_ewt"] = s["ewt"] / n
        if self.forces:
            out["forces_mae_meV_A"] = s["f_abs"] / max(s["f_n"], 1) * K.MEV_PER_EV
            out["forces_rmse_meV_A"] = math.sqrt(s["f_sq"] / max(s["f_n"], 1)) * K.MEV_PER_EV
            out["forces_cos"] = s["f_cos"] / max(s["f_atoms"], 1)
            out["efwt"] = s["efwt"] / n
        if self.stress:
            out["stress_mae_meV_A3"] = s["s_abs"] / max(s["s_n"], 1) * K.MEV_PER_EV
        return out
