"""Evaluation metrics, accumulated as sums so that they add up exactly across batches and ranks.

Reported (``Metrics.result``), errors in natural units: each target's unit, with eV shown as
meV (QM9 energies are reported in meV in the literature):

    {target}_mae_{u}, {target}_rmse_{u}      error of each target (per structure)
    energy_ewt                               OC20 "energy within threshold": fraction |dE| < 0.02 eV
                                             (the extensive energy target, in eV)
    forces_mae_meV_A, forces_rmse_meV_A      over force components of atoms not fixed
    forces_cos                               mean cosine between predicted and true force (free atoms)
    efwt                                     OC20: fraction with |dE| < 0.02 eV and max |dF| < 0.03 eV/Å
    stress_mae_meV_A3                        over the 9 components of labelled structures

``mae`` is the first target's MAE; ``score`` (what validation minimises) is that MAE for one
target, and the mean of MAE_t / scale_t over targets for several (each target's error in units
of its own spread, so that no unit dominates).
"""

from __future__ import annotations

import math

import torch

from .. import conventions as K

EWT_THRESHOLD = 0.02  # eV (OC20)
FWT_THRESHOLD = 0.03  # eV/Å (OC20)

_TARGET_FIELDS = ("n", "abs", "sq")
_FIELDS = ("ewt", "f_n", "f_abs", "f_sq", "f_atoms", "f_cos", "efwt", "s_n", "s_abs")


def display(unit: str) -> tuple[str, float]:
    """(unit shown, factor from the natural unit): eV -> meV, anything else unchanged."""
    if unit == "eV":
        return "meV", K.MEV_PER_EV
    return (unit or "units").replace("/", "_").replace(" ", "").replace("^", ""), 1.0


class Metrics:
    """Running sums of errors over evaluated batches; ``all_reduce`` then ``result``.

    Args:
        targets: ``(name, unit)`` pairs (or ``Target`` s) of the outputs to score; a single name
            with ``unit`` is accepted for one target.
        unit: unit of a single target given by name.
        forces, stress: also score forces / stress.
        energy: name of the extensive energy target (``energy_ewt``, ``efwt``); default: the
            target named "energy", or the only target when it is in eV.
        scales: name -> scale for ``score`` (default 1).
    """

    def __init__(
        self,
        targets,
        unit: str = "eV",
        forces: bool = False,
        stress: bool = False,
        energy: str | None = None,
        scales: dict[str, float] | None = None,
    ):
        if isinstance(targets, str):
            targets = [(targets, unit)]
        self.targets = [(t.name, t.unit) if hasattr(t, "name") else (str(t[0]), str(t[1])) for t in targets]
        self.forces, self.stress = forces, stress
        names = [n for n, _ in self.targets]
        if energy is None:
            energy = (
                "energy"
                if "energy" in names
                else (names[0] if len(names) == 1 and self.targets[0][1] == "eV" else None)
            )
        self.energy = energy
        self.scales = {n: float((scales or {}).get(n, 1.0)) for n in names}
        self.target_sums = torch.zeros(len(self.targets), len(_TARGET_FIELDS), dtype=torch.float64)
        self.sums = torch.zeros(len(_FIELDS), dtype=torch.float64)

    def _add(self, name: str, value) -> None:
        self.sums[_FIELDS.index(name)] += float(value)

    @torch.no_grad()
    def update(self, out: dict, batch) -> None:
        e_err = None
        for k, (name, _) in enumerate(self.targets):
            err = (out[name].detach() - batch[name]).double().cpu()
            self.target_sums[k] += torch.tensor([err.numel(), err.abs().sum(), err.pow(2).sum()], dtype=torch.float64)
            if name == self.energy:
                e_err = err
        if e_err is not None:
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
            if e_err is not None:
                graph = batch[K.BATCH].cpu()[free]
                max_err = torch.zeros(e_err.numel(), dtype=torch.float64).scatter_reduce(
                    0, graph, err.abs().amax(-1), reduce="amax"
                )
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
            device = (
                torch.device("cuda", torch.cuda.current_device())
                if dist.get_backend() == "nccl"
                else torch.device("cpu")
            )
            flat = torch.cat([self.target_sums.flatten(), self.sums]).to(device)
            dist.all_reduce(flat)
            flat = flat.cpu()
            self.target_sums = flat[: self.target_sums.numel()].view_as(self.target_sums)
            self.sums = flat[self.target_sums.numel() :]

    def maes(self) -> dict[str, float]:
        """MAE of each target in its natural unit (eV for energies)."""
        return {name: float(s[1] / s[0]) if s[0] else math.nan for (name, _), s in zip(self.targets, self.target_sums)}

    @property
    def mae(self) -> float:
        """MAE of the first target in its natural unit (eV for energies)."""
        return next(iter(self.maes().values()))

    @property
    def score(self) -> float:
        """What validation minimises: the MAE for one target, mean MAE_t / scale_t for several."""
        maes = self.maes()
        if len(maes) == 1:
            return self.mae
        return sum(v / self.scales[k] for k, v in maes.items()) / len(maes)

    def result(self) -> dict[str, float]:
        s = dict(zip(_FIELDS, self.sums.tolist()))
        out = {}
        n_energy = 1
        for (name, unit), (n, a, sq) in zip(self.targets, self.target_sums.tolist()):
            u, factor = display(unit)
            n = max(n, 1)
            out[f"{name}_mae_{u}"] = a / n * factor
            out[f"{name}_rmse_{u}"] = math.sqrt(sq / n) * factor
            if name == self.energy:
                n_energy = n
        if self.energy is not None:
            out["energy_ewt"] = s["ewt"] / n_energy
        if self.forces:
            out["forces_mae_meV_A"] = s["f_abs"] / max(s["f_n"], 1) * K.MEV_PER_EV
            out["forces_rmse_meV_A"] = math.sqrt(s["f_sq"] / max(s["f_n"], 1)) * K.MEV_PER_EV
            out["forces_cos"] = s["f_cos"] / max(s["f_atoms"], 1)
            if self.energy is not None:
                out["efwt"] = s["efwt"] / n_energy
        if self.stress:
            out["stress_mae_meV_A3"] = s["s_abs"] / max(s["s_n"], 1) * K.MEV_PER_EV
        return out
