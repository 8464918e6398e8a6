"""The training loop: ``train(config)`` trains (or resumes) one run and returns its test errors.

A run folder holds ``config.json`` (resolved config), ``split.json`` (train/val/test indices and
their ids; ``--split FILE`` takes it back, by ids),
``metrics.csv`` (one row per epoch; also TensorBoard events in ``tensorboard/`` when installed),
``state.pt`` (everything needed to resume, written atomically every ``checkpoint_every`` steps,
every epoch, and when SIGINT/SIGTERM stops the run after its current step, see checkpoint.py),
``model.pt`` (best-validation model, EMA weights if EMA is on; loadable by ``geognn.load_model`` /
``geognn predict``), ``result.json``, ``test_predictions.csv`` (truth and prediction of each test
structure, see predictions.py) and, when structures were left out, ``skipped.csv``. With
``ensemble`` = N > 1 the folder holds one run folder per member (``member_0`` ... with seeds
seed, seed+1, ..., all on member 0's split) and ``model.pt`` is the ensemble of their best
models (``geognn.model.Ensemble``).

One optimizer step = ``accumulate`` batches of ``batch_size`` structures on each process;
the loss of a step is normalised by the item counts of the whole step (all batches, all
ranks), so its gradient equals that of one batch of ``accumulate * world * batch_size``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import conventions as K
from ..graph.build import graph_index
from ..io import StructureError
from ..model import Ensemble, Model, build_model, load_checkpoint, load_model, upgrade_state_dict
from . import distributed
from .checkpoint import load_state, rng_states, save_state, set_rng_states
from .config import TrainConfig
from .data import EpochBatches, GraphDataset, Skipped, make_loader, open_structures, resolve_targets, target_value
from .logging import RunLog, log_skipped
from .losses import LossSpec, combine, loss_counts, loss_sums
from .metrics import Metrics
from .optim import EMA, LRSchedule, auto_warmup

DATASET_LABELS = {
    "qm9": "QM9 molecules",
    "oc20-is2re": "OC20 IS2RE",
    "oc20-s2ef": "OC20 S2EF",
    "cif-folder": "CIF folder",
    "extxyz": "extxyz file",
    "ase-db": "ASE database",
}
#: Structures sampled from the training set to fit reference energies and the output scale.
STATS_SAMPLE = 20_000


@dataclass
class TrainResult:
    """Test-set errors of the trained model and of the composition-only baseline.

    ``test_mae``/``baseline_test_mae``/``unit``: the first target's (its unit, eV for energies);
    ``per_target``: name -> {"unit", "test_mae", "baseline_test_mae"} for every target.
    """

    test_mae: float
    baseline_test_mae: float
    val_mae: float
    epochs: int
    model_path: Path
    test_metrics: dict | None = None
    unit: str = "eV"
    per_target: dict | None = None
    #: what the baseline is: the reference energies fitted on composition, or (``fit_reference``
    #: off, as in the OC20 IS2RE recipe) references fixed at zero, i.e. predicting 0
    baseline: str = "per-element reference values only (linear fit on composition)"

    def summary(self, target: str | None = None) -> str:
        """One line per target: model MAE, composition baseline MAE and their ratio."""
        rows = self.per_target or {
            target or "target": {
                "unit": self.unit,
                "test_mae": self.test_mae,
                "baseline_test_mae": self.baseline_test_mae,
            }
        }
        lines = []
        for name, r in rows.items():
            mae, base = r["test_mae"], r["baseline_test_mae"]
            ratio = base / mae if mae > 0 else math.inf
            u, f = shown(r["unit"])
            lines.append(
                f"test MAE of {name}: model {mae * f:.4g} {u} | {self.baseline} {base * f:.4g} {u} | "
                f"model is {ratio:.2f}x better"
            )
        return "\n".join(lines)


def shown(unit: str) -> tuple[str, float]:
    """(unit as printed, factor): eV errors in meV, anything else as it is."""
    return ("meV", K.MEV_PER_EV) if unit == "eV" else (unit or "(no unit)", 1.0)


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """Seeded random split into train/val/test index lists."""
    perm = np.random.default_rng(seed).permutation(n).tolist()
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    if n - n_val - n_test < 1 or n_val < 1:
        raise ValueError(f"{n} structures are too few for val/test fractions {val_fraction}/{test_fraction}")
    return {"val": perm[:n_val], "test": perm[n_val : n_val + n_test], "train": perm[n_val + n_test :]}


def _ids(structures) -> list[str]:
    ids = getattr(structures, "ids", None)
    return [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(structures))]


def write_run_split(path: Path, split: dict, structures, seed: int) -> None:
    """``split.json`` of a run: ``{"train": [indices], "val": ..., "test": ..., "ids": {"train": [ids], ...},
    "seed": seed}``; ``--split`` reads it back by ids (``geognn.datasets.load_split_by_ids``)."""
    ids = _ids(structures)
    payload = {name: [int(i) for i in split.get(name, [])] for name in ("train", "val", "test")}
    payload["ids"] = {name: [ids[i] for i in idx] for name, idx in payload.items()}
    payload["seed"] = seed
    Path(path).write_text(json.dumps(payload) + "\n")


def read_run_split(path: str | Path, structures) -> dict[str, list[int]]:
    """A split file as indices into ``structures``, matched by id (``--split FILE``)."""
    from ..datasets.splits import load_split_by_ids

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such split file")
    return load_split_by_ids(path, _ids(structures))


def _resume_split(path: Path, structures) -> dict[str, list[int]]:
    """The split of the run being resumed, by index; its ids (when stored) must still match."""
    payload = json.loads(path.read_text())
    split = {name: list(payload.get(name, [])) for name in ("train", "val", "test")}
    ids = _ids(structures)
    for name, stored in (payload.get("ids") or {}).items():
        for i, sid in zip(split[name], stored):
            if i >= len(ids) or ids[i] != sid:
                raise ValueError(
                    f"{path}: split {name!r} index {i} was structure {sid!r}; the data changed since the run started"
                )
    return split


# --------------------------------------------------------------------------- statistics
def training_statistics(
    structures, graphs: GraphDataset, train_idx, config: TrainConfig, seed: int, targets: list[str] | None = None
):
    """(atomic numbers, labels [B, T]) of up to STATS_SAMPLE training structures, for reference values."""
    targets = list(targets or graphs.targets)
    idx = list(train_idx)
    if len(idx) > STATS_SAMPLE:
        idx = np.random.default_rng(seed).choice(idx, STATS_SAMPLE, replace=False).tolist()
    zs, ys = [], []
    for i in idx:
        if graphs.graphs is not None:  # cached: read the graph
            g = graphs.graphs[i]
            if not isinstance(g, Skipped):
                zs.append(g[K.Z])
                ys.append([float(g[name]) for name in targets])
            continue
        try:  # lazy: only composition and labels are needed, no graph
            atoms = structures[i]
            y = [target_value(atoms, name) for name in targets]
            y = [float(v) for v in y] if all(v is not None for v in y) else None
        except (StructureError, TypeError, ValueError):
            continue  # reported when training reaches it
        if y is not None and all(math.isfinite(v) for v in y):
            zs.append(torch.as_tensor(atoms.numbers, dtype=torch.long))
            ys.append(y)
    if not zs:
        raise ValueError("no usable training structures")
    return zs, torch.tensor(ys, dtype=torch.float64).reshape(len(zs), len(targets))


class UnseenElementWarning(UserWarning):
    """Validation or test structures hold elements that no training structure has."""


def _elements(graphs: GraphDataset, i: int) -> set[int]:
    """Atomic numbers of cached graph ``i`` (none for a skipped structure)."""
    g = graphs.graphs[i]
    return set() if isinstance(g, Skipped) else {int(z) for z in g[K.Z].unique()}


def data_species(graphs: GraphDataset, split: dict) -> list[int] | None:
    """The elements ``geognn train`` builds a model for (its ``species``): every element of the
    training, validation and test structures, sorted; None (one row per Z up to ``max_z``, the
    layout before species) for lazily read data, e.g. OC20 LMDBs, where finding them would read
    the whole set.

    Validation and test elements are included so that the run can evaluate those structures;
    elements that only they hold get rows that training never updates, which
    ``UnseenElementWarning`` already reports (``unseen_elements``). A model is then an error, not
    a guess, only for elements absent from all of the run's data."""
    if graphs.graphs is None:
        return None
    found = set().union(*(_elements(graphs, i) for part in ("train", "val", "test") for i in split.get(part, [])))
    return sorted(found) or None


def unseen_elements(graphs: GraphDataset, split: dict) -> dict[str, dict[int, int]]:
    """{"val": {Z: structures}, "test": {...}}: for each element absent from every training
    structure, how many validation/test structures contain it. Needs the cached graphs (an empty
    dict for lazily read data, e.g. OC20 LMDBs, where the check would read the whole set)."""
    if graphs.graphs is None:
        return {}

    seen = set().union(*(_elements(graphs, i) for i in split["train"])) if split["train"] else set()
    out = {}
    for part in ("val", "test"):
        counts: dict[int, int] = {}
        for i in split.get(part, []):
            for z in _elements(graphs, i) - seen:
                counts[z] = counts.get(z, 0) + 1
        if counts:
            out[part] = dict(sorted(counts.items()))
    return out


def warn_unseen_elements(unseen: dict[str, dict[int, int]]) -> None:
    """One warning naming the elements that only validation/test structures hold."""
    if not unseen:
        return
    from ase.data import chemical_symbols

    parts = "; ".join(
        f"{part}: " + ", ".join(f"{chemical_symbols[z]} in {n} structure{'s' if n > 1 else ''}" for z, n in c.items())
        for part, c in unseen.items()
    )
    warnings.warn(
        f"elements never seen in training ({parts}): the model has no reference energy or "
        "embedding trained for them, so their errors will be large; use more data (--limit) or a "
        "split whose training set covers every element (--split)",
        UnseenElementWarning,
        stacklevel=2,
    )


def fit_output(model: Model, zs, ys, config: TrainConfig) -> None:
    """Per target: reference values (linear fit on composition: element counts for ``sum``,
    fractions for ``mean``) and scale/shift of the residual (per atom for ``sum``, per structure
    for ``mean``). ``ys``: [B, T] labels in the order of ``model.targets`` ([B] for one target)."""
    ys = ys.reshape(len(zs), -1)
    natoms = torch.tensor([len(z) for z in zs], dtype=torch.float64)
    for k, target in enumerate(model.targets):
        head, y = model.heads[target.name], ys[:, k]
        if config.fit_reference:
            head.reference.fit(zs, y, readout=target.readout)
        ref = torch.stack([head.reference(z).double().sum() for z in zs])
        per_structure = y / natoms if target.readout == "sum" else y  # what the head's output is compared with
        residual = (y - ref) / natoms if target.readout == "sum" else y - ref / natoms
        scale = float(residual.std()) if len(residual) > 1 else 1.0
        # a composition fit that interpolates the training labels (as many elements as structures)
        # leaves a residual at round-off level (~1e-15 of the labels): fall back to the labels' own
        # spread. A good fit is far above the threshold (QM9 U0: residual/spread ~ 1e-3).
        spread = float(per_structure.std()) if len(y) > 1 else 0.0
        if not scale > 1e-9 * spread:
            scale = spread
        model.set_scale_shift(scale if scale > 0 else 1.0, float(residual.mean()), target=target.name)


# --------------------------------------------------------------------------- evaluation
def run_metrics(model, config: TrainConfig, baseline: bool = False) -> Metrics:
    """Empty ``Metrics`` for ``model``'s targets (forces/stress as the config trains them)."""
    forces, stress = config.forces_weight > 0, config.stress_weight > 0
    energy = model.energy_target.name if model.energy_target is not None else None
    members = model.members if isinstance(model, Ensemble) else [model]
    scales = {name: float(members[0].heads[name].scale) for name in model.target_names}
    return Metrics(
        model.targets, forces=forces and not baseline, stress=stress and not baseline, energy=energy, scales=scales
    )


def baseline_outputs(model: Model, batch) -> dict[str, torch.Tensor]:
    """Each target predicted by its per-element reference values alone (the composition baseline)."""
    atom_graph, n = graph_index(batch), int(batch[K.CELL].shape[0])
    return {name: head.readout(head.reference(batch[K.Z]), atom_graph, n) for name, head in model.heads.items()}


@torch.no_grad()
def evaluate(
    model: Model | Ensemble,
    graphs: GraphDataset,
    indices,
    config: TrainConfig,
    d: distributed.Dist,
    unit: str | None = None,
    baseline: bool = False,
) -> Metrics:
    """Metrics of ``model`` (or of its reference values alone) on ``indices``, summed over ranks.

    The targets and their units come from ``model``; ``unit`` is accepted for older callers and unused.
    """
    model.eval()
    forces, stress = config.forces_weight > 0, config.stress_weight > 0
    metrics = run_metrics(model, config, baseline)
    sampler = EpochBatches(indices, config.batch_size, config.seed, shuffle=False, rank=d.rank, world=d.world)
    for loaded in make_loader(graphs, sampler, config.num_workers):
        if loaded.batch is None:
            continue
        batch = loaded.batch.to(d.device)
        if baseline:
            out = baseline_outputs(model.members[0] if isinstance(model, Ensemble) else model, batch)
        else:
            with autocast(config, d.device):
                out = model(batch, forces=forces, stress=stress)
        metrics.update(out, batch)
    metrics.all_reduce()
    return metrics


def autocast(config: TrainConfig, device: torch.device):
    if config.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- the run
def train(config: TrainConfig, resume: bool = False, progress: bool = True, dataset=None) -> TrainResult:
    """Train (or resume) a run as configured; returns test errors of model and baseline.

    ``dataset``: structures to use instead of opening ``config.dataset`` (any indexable of
    ``ase.Atoms`` with labels in ``info``/``arrays``, e.g. ``geognn.train.data.StructureList``).
    Under torchrun every process calls this; rank 0 writes the files.
    """
    config.validate()
    d = distributed.setup(config.device)
    try:
        if config.ensemble > 1:
            return _train_ensemble(config, d, resume, progress and d.main, dataset)
        return _Run(config, d, resume, progress and d.main, dataset).run()
    finally:
        distributed.cleanup(d)


def _train_ensemble(config: TrainConfig, d: distributed.Dist, resume: bool, progress: bool, dataset) -> TrainResult:
    """``config.ensemble`` members in ``<out>/member_k`` (seed + k, member 0's split), then one
    ensemble checkpoint ``<out>/model.pt`` and its test errors, spread and calibration."""
    import dataclasses

    out = Path(config.out)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        config.to_json(out / "config.json")
    structures = dataset if dataset is not None else open_structures(config)
    split, run, member_results = None, None, []
    for k in range(config.ensemble):
        member = dataclasses.replace(config, seed=config.seed + k, out=str(out / f"member_{k}"), ensemble=1)
        if progress:
            print(f"ensemble member {k + 1}/{config.ensemble} (seed {member.seed}) -> {member.out}")
        run = _Run(member, d, resume, progress, structures, split=split)
        result = run.run()
        split = split or run.split
        member_results.append({"seed": member.seed, "test_mae": result.test_mae, "epochs": result.epochs})
    members = [load_model(out / f"member_{k}" / "model.pt") for k in range(config.ensemble)]
    meta = {**members[0].metadata, "ensemble": config.ensemble, "seeds": [r["seed"] for r in member_results]}
    ensemble = Ensemble(members, meta).to(d.device).eval()
    model_path = out / "model.pt"
    if d.main:
        ensemble.save(model_path)
        write_run_split(out / "split.json", split, structures, config.seed)
    test = split["test"] or split["val"]
    val = evaluate(ensemble, run.graphs, split["val"], config, d).score
    calibration = ensemble_calibration(ensemble, run.graphs, test, config, d)
    result = finish_run(
        ensemble,
        run.graphs,
        test,
        config,
        d,
        out,
        model_path,
        val=val,
        epochs=max(r["epochs"] for r in member_results),
        steps=0,
        extra={"ensemble": config.ensemble, "members": member_results, "calibration": calibration},
    )
    if progress:
        for name, c in calibration.items():
            print(
                f"ensemble {name}: {100 * c['within_1sigma']:.0f}% of test errors within 1 sigma, "
                f"{100 * c['within_2sigma']:.0f}% within 2 sigma, rank correlation |error| vs sigma "
                f"{c['spearman_abs_error_sigma']:.2f}"
            )
    return result


@torch.no_grad()
def ensemble_calibration(
    ensemble: Ensemble, graphs: GraphDataset, indices, config: TrainConfig, d: distributed.Dist
) -> dict[str, dict[str, float]]:
    """Per target on ``indices``: the fraction of |error| within 1 and 2 sigma, the Spearman rank
    correlation of |error| with sigma, and the mean sigma (target unit). This rank's share only."""
    errors = {n: [] for n in ensemble.target_names}
    sigmas = {n: [] for n in ensemble.target_names}
    sampler = EpochBatches(indices, config.batch_size, config.seed, shuffle=False, rank=d.rank, world=d.world)
    for loaded in make_loader(graphs, sampler, config.num_workers):
        if loaded.batch is None:
            continue
        batch = loaded.batch.to(d.device)
        out = ensemble(batch, forces=False, stress=False)
        for n in errors:
            errors[n].append((out[n] - batch[n]).abs().double().cpu())
            sigmas[n].append(out[n + "_std"].double().cpu())
    result = {}
    for n in errors:
        if not errors[n]:
            continue
        err, sig = torch.cat(errors[n]), torch.cat(sigmas[n])
        result[n] = {
            "n": int(err.numel()),
            "within_1sigma": float((err <= sig).double().mean()),
            "within_2sigma": float((err <= 2 * sig).double().mean()),
            "spearman_abs_error_sigma": spearman(err, sig),
            "mean_sigma": float(sig.mean()),
        }
    return result


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (ties get their average rank; scipy comes with pymatgen)."""
    from scipy.stats import spearmanr

    if a.numel() < 2 or float(a.std()) == 0 or float(b.std()) == 0:
        return math.nan
    return float(spearmanr(a.numpy(), b.numpy()).statistic)


class TrainingInterrupted(Exception):
    """Training stopped by SIGINT (Ctrl-C) or SIGTERM at a step boundary, after writing ``state``
    (``state.pt``); ``geognn train --resume`` continues from ``step``. ``signum``: the signal."""

    def __init__(self, signum: int, state: Path, epoch: int, step: int):
        super().__init__(
            f"{signal.Signals(signum).name}: stopped at epoch {epoch + 1}, step {step}; state saved to {state}"
        )
        self.signum, self.state, self.epoch, self.step = signum, state, epoch, step


@contextlib.contextmanager
def stop_on_signals(say: bool = True):
    """While active, the first SIGINT/SIGTERM only asks to stop: the yielded list gets its number,
    and the loop saves the state at the next step boundary. A second one raises KeyboardInterrupt
    at once. DataLoader workers forked meanwhile ignore both. Outside the main thread (no signal
    handlers there) nothing changes."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != pid:  # a DataLoader worker forked meanwhile: the main process decides
            return
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        if say:
            print(
                f"\n{signal.Signals(signum).name}: stopping after this step and saving state.pt "
                "(again to stop at once, without saving)",
                file=sys.stderr,
                flush=True,
            )

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class _Run:
    def __init__(
        self, config: TrainConfig, d: distributed.Dist, resume: bool, progress: bool, dataset, split: dict | None = None
    ):
        self.config, self.d, self.progress = config, d, progress
        self.out = Path(config.out)
        self.state_path, self.model_path = self.out / "state.pt", self.out / "model.pt"
        self.resume = resume and self.state_path.exists()
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        random.seed(config.seed)
        if d.main:
            self.out.mkdir(parents=True, exist_ok=True)
            config.to_json(self.out / "config.json")
        if config.amp and d.device.type != "cuda" and d.main:
            print("note: amp is only used on CUDA devices; training in full precision")

        self.structures = dataset if dataset is not None else open_structures(config)
        if d.main and not self.resume:
            log_skipped(self.out, getattr(self.structures, "skipped", []), "open")
        self.targets = resolve_targets(config, self.structures)
        self.unit = self.targets[0].unit
        if progress and not self.resume:
            kinds = {"sum": "extensive", "mean": "intensive"}
            print(
                "targets: "
                + ", ".join(
                    f"{t.name} ({t.unit or 'no unit'}, readout {t.readout}: {kinds[t.readout]})" for t in self.targets
                )
            )
        if config.forces_weight + config.stress_weight > 0 and not any(t.is_energy for t in self.targets):
            raise ValueError(
                "forces_weight/stress_weight > 0 need an extensive energy target (eV, readout sum); "
                f"the targets are {[t.to_dict() for t in self.targets]}"
            )
        split_path = self.out / "split.json"
        if self.resume and split_path.exists():
            self.split = _resume_split(split_path, self.structures)
        else:
            if split is not None:  # an ensemble member: the first member's split
                self.split = {k: list(v) for k, v in split.items()}
            elif config.split_file:
                self.split = read_run_split(config.split_file, self.structures)
            elif getattr(self.structures, "split", None) is not None:  # val_data_root: fixed split
                self.split = self.structures.split
            elif config.split == "qm9-standard":
                from ..datasets.splits import qm9_standard_split

                self.split = qm9_standard_split(len(self.structures), config.seed)
            else:
                self.split = split_indices(len(self.structures), config.val_fraction, config.test_fraction, config.seed)
            if d.main:
                write_run_split(split_path, self.split, self.structures, config.seed)
        self.graphs = GraphDataset(
            self.structures, config, config.cache_graphs, progress, targets=[t.name for t in self.targets]
        )
        if self.graphs.graphs is not None:
            bad = [g for g in self.graphs.graphs if isinstance(g, Skipped)]
            if bad and config.on_error == "raise":
                raise StructureError(bad[0].id, bad[0].reason + " (on_error='skip' leaves such structures out)")
            if d.main and not self.resume:
                log_skipped(self.out, bad, "graph")
            drop = {i for i, g in enumerate(self.graphs.graphs) if isinstance(g, Skipped)}
            self.split = {k: [i for i in v if i not in drop] for k, v in self.split.items()}

        self.model = self._build_model()
        self.loss_spec = LossSpec.from_config(config, self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.sampler = EpochBatches(self.split["train"], config.batch_size, config.seed, rank=d.rank, world=d.world)
        self.steps_per_epoch = math.ceil(len(self.sampler) / config.accumulate)
        total_steps = config.epochs * self.steps_per_epoch
        self.schedule = LRSchedule(
            config.lr,
            config.scheduler,
            auto_warmup(config.warmup_steps, total_steps),
            total_steps,
            config.min_lr_ratio,
            config.patience,
            config.plateau_factor,
            time_budget=config.time_limit,
        )
        self._tic = time.perf_counter()  # start of the current timed stretch (self.elapsed counts the ones before)
        if progress and not self.resume:
            print(f"recipe: {'L1' if config.loss == 'mae' else 'MSE'} loss, {self.schedule.describe()}")
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.ddp = None
        if d.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[d.device.index] if d.device.type == "cuda" else None
            )
        # position and bookkeeping (all saved in state.pt)
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0  # epoch = epochs completed
        self.best_val, self.since_best, self.elapsed = math.inf, 0, 0.0
        self.epoch_loss = [0.0, 0]  # sum of step losses (this rank's share), steps
        if self.resume:
            self._load()

    # ------------------------------------------------------------------ set-up
    def _build_model(self) -> Model:
        c, train_idx = self.config, self.split["train"]
        extra = {"frame_averaging": c.frame_averaging} if c.frame_averaging is not None else {}
        names = [t.name for t in self.targets]
        zs, ys = training_statistics(self.structures, self.graphs, train_idx, c, c.seed, names)
        if self.d.main:
            warn_unseen_elements(unseen_elements(self.graphs, self.split))
        source = Path(c.data_root).name if c.data_root else ("shipped subset" if c.dataset == "qm9" else "in memory")
        metadata = {
            "trained_on": f"{DATASET_LABELS.get(c.dataset, c.dataset)} ({source}), target"
            f"{'s' if len(names) > 1 else ''} {', '.join(names)}, {len(train_idx)} "
            "training structures",
            "periodic": self._periodic(train_idx),
            "elements": sorted({int(z) for zz in zs for z in zz}),
            "target": names[0],
            "units": self.unit,
            "seed": c.seed,
        }
        backbone_kwargs = c.resolved_backbone_kwargs()
        if "species" not in backbone_kwargs:  # the config may name them (null: every Z up to max_z)
            backbone_kwargs["species"] = self._species()
        model = build_model(
            c.backbone,
            cutoff=c.cutoff,
            forces=c.forces_weight > 0,
            stress=c.stress_weight > 0,
            max_neighbors=c.max_neighbors,
            metadata=metadata,
            targets=self.targets,
            compile=c.compile,
            **extra,
            **backbone_kwargs,
        )
        fit_output(model, zs, ys, c)
        return model.to(self.d.device)

    def _species(self) -> list[int] | None:
        """``species`` when the config names none: those of the run's ``model.pt`` when resuming
        (None for a run started before species existed: the layout it was started with), else the
        data's (``data_species``)."""
        if self.resume and self.model_path.exists():
            return (load_checkpoint(self.model_path)["config"].get("backbone_kwargs") or {}).get("species")
        return data_species(self.graphs, self.split)

    def _periodic(self, idx) -> bool:
        for i in idx[:100]:
            g = self.graphs.graphs[i] if self.graphs.graphs is not None else None
            if g is not None and not isinstance(g, Skipped):
                return bool(g[K.PBC].any())
            if g is None:
                try:
                    return bool(self.structures[i].pbc.any())
                except StructureError:
                    continue
        return False

    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema else None,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "best_val": self.best_val,
            "since_best": self.since_best,
            "elapsed": self.elapsed,
            "epoch_loss": list(self.epoch_loss),
            "rng": rng_states(),
            "world": self.d.world,
        }

    def _save(self) -> None:
        if self.d.main:
            save_state(self.state_path, **self._state())

    def _load(self) -> None:
        s = load_state(self.state_path, map_location=self.d.device)
        if s["world"] != self.d.world:
            raise ValueError(
                f"{self.state_path}: written by {s['world']} process(es), resumed with "
                f"{self.d.world}: the sampler position would not match"
            )
        try:
            self.model.load_state_dict(upgrade_state_dict(s["model"]))
            self.optimizer.load_state_dict(s["optimizer"])
            self.schedule.load_state_dict(s["schedule"])
            if self.ema is not None and s["ema"] is not None:
                self.ema.model.load_state_dict(upgrade_state_dict(s["ema"]))
        except (RuntimeError, KeyError, ValueError) as exc:  # config.json edited since, or another version
            first = " ".join(str(exc).split())[:300]
            raise ValueError(
                f"{self.state_path}: does not fit the model of {self.out / 'config.json'} "
                f"(was config.json edited since the run started?): {first}"
            ) from None
        self.epoch, self.batch_in_epoch, self.step = s["epoch"], s["batch_in_epoch"], s["step"]
        self.best_val, self.since_best, self.elapsed = s["best_val"], s["since_best"], s["elapsed"]
        self.epoch_loss = list(s["epoch_loss"])
        self.loss_spec = LossSpec.from_config(self.config, self.model)
        set_rng_states({k: v.cpu() for k, v in s["rng"].items()})
        if self.progress:
            print(
                f"resuming {self.out} at epoch {self.epoch + 1}, batch {self.batch_in_epoch} "
                f"(step {self.step}, best val MAE {self._show(self.best_val)})"
            )

    def _show(self, value: float) -> str:
        """The validation score as printed: the MAE in its unit, or the normalised score (several targets)."""
        if len(self.targets) > 1:
            return f"{value:.4f} (mean MAE/scale)"
        u, factor = shown(self.unit)
        return f"{value * factor:.4g} {u}"

    # ------------------------------------------------------------------ training
    def run(self) -> TrainResult:
        c, d = self.config, self.d
        self.forces, self.stress = c.forces_weight > 0, c.stress_weight > 0
        val_cols = list(run_metrics(self.model, c).result())
        self.log = RunLog(
            self.out,
            ["epoch", "step", "train_loss", "lr", "elapsed_s"] + [f"val_{k}" for k in val_cols],
            self.epoch if self.resume else None,
            d.main,
        )
        try:
            with stop_on_signals(say=self.progress) as self._signals:
                self._epochs()
        finally:
            self.log.close()
        return self._finish()

    def _stop_asked(self) -> bool:
        """A SIGINT/SIGTERM arrived (on any rank: all ranks stop at the same step)."""
        return distributed.any_rank(bool(getattr(self, "_signals", None)), self.d)

    def _interrupted(self, tic: float | None) -> TrainingInterrupted:
        """Save the state (time since ``tic`` counted; None: already saved) and say how to resume."""
        if tic is not None:
            self.elapsed += time.perf_counter() - tic
            self._save()
        return TrainingInterrupted(
            self._signals[0] if self._signals else signal.SIGINT, self.state_path, self.epoch, self.step
        )

    def _batches(self, loader):
        """The loader's batches; when a stop was asked and the loader fails (its workers got the
        same Ctrl-C), it ends instead: the state of the last step is whole and gets saved."""
        it = iter(loader)
        while True:
            try:
                loaded = next(it)
            except StopIteration:
                return
            except Exception:
                if not getattr(self, "_signals", None):
                    raise
                return
            yield loaded

    def _time_up(self, tic: float) -> bool:
        limit = self.config.time_limit
        return distributed.any_rank(bool(limit) and self.elapsed + time.perf_counter() - tic >= limit, self.d)

    def _epochs(self) -> None:
        c = self.config
        loader = make_loader(self.graphs, self.sampler, c.num_workers)
        while self.epoch < c.epochs:
            tic = self._tic = time.perf_counter()
            if self._time_up(tic):
                break
            self.sampler.set_epoch(self.epoch + 1, self.batch_in_epoch)
            n_batches = len(self.sampler)
            bar = tqdm(
                total=self.steps_per_epoch,
                initial=self.batch_in_epoch // c.accumulate,
                desc=f"epoch {self.epoch + 1}",
                unit="step",
                disable=not self.progress,
                leave=False,
                mininterval=1.0,
            )
            group, stopped, interrupted = [], False, False
            for loaded in self._batches(loader):
                group.append(loaded)
                last = self.batch_in_epoch + len(group) == n_batches
                if len(group) < c.accumulate and not last:
                    continue
                if self._time_up(tic):
                    stopped = True
                    break  # the budget ends mid-epoch: validate what was learned so far
                try:
                    loss = self._step(group)
                except StructureError as exc:
                    self.elapsed += time.perf_counter() - tic
                    self._save()
                    raise StructureError(
                        exc.source,
                        f"{exc.problem} (state.pt holds the last good step; "
                        "on_error='skip' leaves such structures out)",
                    ) from None
                self.batch_in_epoch += len(group)
                group = []
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3g}", lr=f"{self.optimizer.param_groups[0]['lr']:.2g}", refresh=False)
                if c.checkpoint_every and self.step % c.checkpoint_every == 0 and self.batch_in_epoch < n_batches:
                    self.elapsed += time.perf_counter() - tic
                    tic = self._tic = time.perf_counter()
                    self._save()
                if self._stop_asked():
                    interrupted = True
                    break
            bar.close()
            if interrupted or self._stop_asked():  # Ctrl-C / SIGTERM: save this step, then stop
                raise self._interrupted(tic)
            if self.epoch_loss[1] == 0 and stopped:
                break
            done = self._end_epoch(tic)
            if done or stopped:
                break
            if self._stop_asked():  # arrived during validation; _end_epoch saved the state
                raise self._interrupted(None)

    def _step(self, group) -> float:
        """One optimizer step over the batches in ``group``; returns this rank's share of the loss."""
        c, d = self.config, self.d
        model = self.ddp or self.model
        model.train()
        skipped = [s for g in group for s in g.skipped]
        if skipped:
            if c.on_error == "raise":
                raise StructureError(skipped[0].id, skipped[0].reason)
            log_skipped(self.out, skipped, f"epoch {self.epoch + 1}")
        batches = [g.batch.to(d.device) for g in group if g.batch is not None]
        counts = {}
        for b in batches:
            for k, v in loss_counts(b, self.loss_spec).items():
                counts[k] = counts.get(k, 0.0) + v
        names = list(self.loss_spec.weights())
        if d.world > 1:  # global counts; DDP averages gradients over ranks, hence the factor world
            total = distributed.all_reduce_sum(torch.tensor([counts.get(k, 0.0) for k in names]), d)
            counts = {k: float(v) / d.world for k, v in zip(names, total.tolist())}
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = 0.0
        for k, batch in enumerate(batches):
            sync = k == len(batches) - 1 or self.ddp is None
            with contextlib.nullcontext() if sync else self.ddp.no_sync(), autocast(c, d.device):
                out = model(batch, forces=self.forces, stress=self.stress)
                loss = combine(loss_sums(out, batch, self.loss_spec), counts, self.loss_spec)
            loss.backward()
            loss_value += loss.item() / d.world
        if c.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.schedule.apply(self.optimizer, self.step, self._elapsed_now())
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        self.epoch_loss[0] += loss_value
        self.epoch_loss[1] += 1
        return loss_value

    def _elapsed_now(self) -> float | None:
        """Training seconds so far (the time limit's clock, the same on every rank), for a time-budget
        schedule; None for an epoch budget (no clock read: the LR depends on the step alone)."""
        if not (self.schedule.kind == "cosine" and self.schedule.time_budget > 0):
            return None
        elapsed = self.elapsed + time.perf_counter() - self._tic
        if self.d.world > 1:
            elapsed = float(distributed.all_reduce_sum(torch.tensor([elapsed]), self.d)[0]) / self.d.world
        return elapsed

    def _end_epoch(self, tic: float) -> bool:
        """Validate, log, keep the best model, checkpoint; True when the run should stop early."""
        c = self.config
        self.epoch += 1
        self.batch_in_epoch = 0
        eval_model = self.ema.model if self.ema is not None else self.model
        metrics = evaluate(eval_model, self.graphs, self.split["val"], c, self.d)
        val = metrics.score
        self.schedule.epoch_end(val)
        if val < self.best_val:
            self.best_val, self.since_best = val, 0
            if self.d.main:
                eval_model.save(self.model_path)
        else:
            self.since_best += 1
        loss_sum = distributed.all_reduce_sum(torch.tensor([self.epoch_loss[0]]), self.d)[0]
        train_loss = float(loss_sum) / max(self.epoch_loss[1], 1)
        self.epoch_loss = [0.0, 0]
        self.elapsed += time.perf_counter() - tic
        row = {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": train_loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "elapsed_s": round(self.elapsed, 1),
        }
        row.update({f"val_{k}": v for k, v in metrics.result().items()})
        self.log.write(row)
        if self.progress:
            limit = f"/{c.time_limit:.0f}" if c.time_limit else ""
            tqdm.write(
                f"epoch {self.epoch:3d}  train loss {train_loss:.4f}  val MAE {self._show(val):>12}  "
                f"({self.elapsed:.0f}{limit} s)"
            )
        self._save()
        if c.early_stopping and self.since_best >= c.early_stopping:
            if self.progress:
                print(f"early stopping: no validation improvement in {c.early_stopping} epochs")
            return True
        return False

    def _finish(self) -> TrainResult:
        best = load_model(self.model_path).to(self.d.device) if self.model_path.exists() else self.model
        test = self.split["test"] or self.split["val"]
        if not self.split["test"] and self.progress:
            print("note: no test set (val_data_root gives validation data only): test errors are validation errors")
        return finish_run(
            best,
            self.graphs,
            test,
            self.config,
            self.d,
            self.out,
            self.model_path,
            val=self.best_val,
            epochs=self.epoch,
            steps=self.step,
        )


def finish_run(
    best,
    graphs: GraphDataset,
    test,
    c: TrainConfig,
    d: distributed.Dist,
    out: Path,
    model_path: Path,
    val: float,
    epochs: int,
    steps: int,
    extra: dict | None = None,
) -> TrainResult:
    """Test errors of ``best`` (a model or an ensemble) and of the composition baseline; writes result.json
    and ``test_predictions.csv`` (truth, prediction and, for an ensemble, spread of each test structure;
    columns and units in geognn/train/predictions.py)."""
    from .predictions import FILE_NAME, collect_predictions, prediction_columns, write_predictions

    metrics = evaluate(best, graphs, test, c, d)
    baseline = evaluate(best, graphs, test, c, d, baseline=True)
    maes, base = metrics.maes(), baseline.maes()
    units = {t.name: t.unit for t in best.targets}
    per_target = {n: {"unit": units[n], "test_mae": maes[n], "baseline_test_mae": base[n]} for n in maes}
    unit = best.targets[0].unit
    result = TrainResult(
        test_mae=metrics.mae,
        baseline_test_mae=baseline.mae,
        val_mae=val,
        epochs=epochs,
        model_path=model_path,
        test_metrics=metrics.result(),
        unit=unit,
        per_target=per_target,
        baseline=TrainResult.baseline if c.fit_reference else "no reference energies (predicting 0)",
    )
    rows = collect_predictions(best, graphs, test, c, d, _ids(graphs.structures))
    if d.main:
        write_predictions(out / FILE_NAME, rows, prediction_columns(best))
        ev = unit == "eV"
        payload = {
            "target": best.targets[0].name,
            "unit": unit,
            "test_mae_eV" if ev else "test_mae": result.test_mae,
            "baseline_test_mae_eV" if ev else "baseline_test_mae": result.baseline_test_mae,
            "val_mae_eV" if ev else "val_mae": val,
            "targets": [t.to_dict() for t in best.targets],
            "per_target": per_target,
            "epochs": epochs,
            "steps": steps,
            "test": result.test_metrics,
            "test_predictions": {"file": FILE_NAME, "n": len(rows), "units": units},
        }
        payload.update(extra or {})
        (out / "result.json").write_text(json.dumps(payload, indent=2) + "\n")
    return result
