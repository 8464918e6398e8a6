"""The training loop: ``train(config)`` trains (or resumes) one run and returns its test errors.

A run folder holds ``config.json`` (resolved config), ``split.json`` (indices of train/val/test),
``metrics.csv`` (one row per epoch; also TensorBoard events in ``tensorboard/`` when installed),
``state.pt`` (everything needed to resume, written atomically every ``checkpoint_every`` steps
and every epoch, see checkpoint.py), ``model.pt`` (best-validation model, EMA weights if EMA
is on; loadable by ``geognn.load_model`` / ``geognn predict``), ``result.json`` and, when
structures were left out, ``skipped.csv``.

One optimizer step = ``accumulate`` batches of ``batch_size`` structures on each process;
the loss of a step is normalised by the item counts of the whole step (all batches, all
ranks), so its gradient equals that of one batch of ``accumulate * world * batch_size``.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import conventions as K
from ..graph.build import graph_index
from ..io import StructureError
from ..model import Model, build_model, load_model
from ..nn.scatter import scatter_sum
from . import distributed
from .checkpoint import load_state, rng_states, save_state, set_rng_states
from .config import TrainConfig
from .data import EpochBatches, GraphDataset, Skipped, make_loader, open_structures, target_unit, target_value
from .logging import RunLog, log_skipped
from .losses import LossSpec, combine, loss_counts, loss_sums
from .metrics import Metrics, display
from .optim import EMA, LRSchedule

DATASET_LABELS = {"qm9": "QM9 molecules", "oc20-is2re": "OC20 IS2RE", "oc20-s2ef": "OC20 S2EF",
                  "cif-folder": "CIF folder", "extxyz": "extxyz file", "ase-db": "ASE database"}
#: Structures sampled from the training set to fit reference energies and the output scale.
STATS_SAMPLE = 20_000


@dataclass
class TrainResult:
    """Test-set errors of the trained model and of the composition-only baseline (target unit, eV for energies)."""

    test_mae: float
    baseline_test_mae: float
    val_mae: float
    epochs: int
    model_path: Path
    test_metrics: dict | None = None
    unit: str = "eV"

    def summary(self, target: str) -> str:
        ratio = self.baseline_test_mae / self.test_mae if self.test_mae > 0 else math.inf
        u, f = display(self.unit)
        return (f"test MAE of {target}: model {self.test_mae * f:.1f} {u} | "
                f"per-element reference energies only (linear fit on composition) "
                f"{self.baseline_test_mae * f:.1f} {u} | model is {ratio:.1f}x better")


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """Seeded random split into train/val/test index lists."""
    perm = np.random.default_rng(seed).permutation(n).tolist()
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    if n - n_val - n_test < 1 or n_val < 1:
        raise ValueError(f"{n} structures are too few for val/test fractions {val_fraction}/{test_fraction}")
    return {"val": perm[:n_val], "test": perm[n_val:n_val + n_test], "train": perm[n_val + n_test:]}


# --------------------------------------------------------------------------- statistics
def training_statistics(structures, graphs: GraphDataset, train_idx, config: TrainConfig, seed: int):
    """(atomic numbers, targets) of up to STATS_SAMPLE training structures, for reference energies."""
    idx = list(train_idx)
    if len(idx) > STATS_SAMPLE:
        idx = np.random.default_rng(seed).choice(idx, STATS_SAMPLE, replace=False).tolist()
    zs, ys = [], []
    for i in idx:
        if graphs.graphs is not None:  # cached: read the graph
            g = graphs.graphs[i]
            if not isinstance(g, Skipped):
                zs.append(g[K.Z])
                ys.append(float(g[K.ENERGY]))
            continue
        try:  # lazy: only composition and label are needed, no graph
            atoms = structures[i]
            y = target_value(atoms, config.target_name)
        except StructureError:
            continue  # reported when training reaches it
        if y is not None and math.isfinite(float(y)):
            zs.append(torch.as_tensor(atoms.numbers, dtype=torch.long))
            ys.append(float(y))
    if not zs:
        raise ValueError("no usable training structures")
    return zs, torch.tensor(ys, dtype=torch.float64)


def fit_output(model: Model, zs, ys, config: TrainConfig) -> None:
    """Reference energies (linear fit on composition) and per-atom scale/shift of the residual."""
    if config.fit_reference:
        model.reference.fit(zs, ys)
    natoms = torch.tensor([len(z) for z in zs], dtype=torch.float64)
    ref = torch.stack([model.reference(z).double().sum() for z in zs])
    residual = (ys - ref) / natoms
    scale = float(residual.std()) if len(residual) > 1 else 1.0
    model.set_scale_shift(scale if scale > 0 else 1.0, float(residual.mean()))


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: Model, graphs: GraphDataset, indices, config: TrainConfig, d: distributed.Dist,
             unit: str, baseline: bool = False) -> Metrics:
    """Metrics of ``model`` (or of its reference energies alone) on ``indices``, summed over ranks."""
    model.eval()
    forces, stress = config.forces_weight > 0, config.stress_weight > 0
    metrics = Metrics(config.target_name, unit, forces=forces and not baseline, stress=stress and not baseline)
    sampler = EpochBatches(indices, config.batch_size, config.seed, shuffle=False, rank=d.rank, world=d.world)
    for loaded in make_loader(graphs, sampler, config.num_workers):
        if loaded.batch is None:
            continue
        batch = loaded.batch.to(d.device)
        if baseline:
            energy = scatter_sum(model.reference(batch[K.Z]), graph_index(batch), int(batch[K.CELL].shape[0]))
            out = {K.ENERGY: energy}
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
        return _Run(config, d, resume, progress and d.main, dataset).run()
    finally:
        distributed.cleanup(d)


class _Run:
    def __init__(self, config: TrainConfig, d: distributed.Dist, resume: bool, progress: bool, dataset):
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
        self.unit = target_unit(self.structures, config.target_name) or "eV"
        split_path = self.out / "split.json"
        if self.resume and split_path.exists():
            self.split = json.loads(split_path.read_text())
        else:
            if getattr(self.structures, "split", None) is not None:  # val_data_root: fixed split
                self.split = self.structures.split
            elif config.split == "qm9-standard":
                from ..datasets.splits import qm9_standard_split

                self.split = qm9_standard_split(len(self.structures), config.seed)
            else:
                self.split = split_indices(len(self.structures), config.val_fraction, config.test_fraction,
                                           config.seed)
            if d.main:
                split_path.write_text(json.dumps(self.split))
        self.graphs = GraphDataset(self.structures, config, config.cache_graphs, progress)
        if self.graphs.graphs is not None:
            bad = [g for g in self.graphs.graphs if isinstance(g, Skipped)]
            if bad and config.on_error == "raise":
                raise StructureError(bad[0].id, bad[0].reason + " (on_error='skip' leaves such structures out)")
            if d.main and not self.resume:
                log_skipped(self.out, bad, "graph")
            drop = {i for i, g in enumerate(self.graphs.graphs) if isinstance(g, Skipped)}
            self.split = {k: [i for i in v if i not in drop] for k, v in self.split.items()}

        self.model = self._build_model()
        self.loss_spec = LossSpec.from_config(config, float(self.model.scale))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.sampler = EpochBatches(self.split["train"], config.batch_size, config.seed, rank=d.rank, world=d.world)
        self.steps_per_epoch = math.ceil(len(self.sampler) / config.accumulate)
        self.schedule = LRSchedule(config.lr, config.scheduler, config.warmup_steps,
                                   config.epochs * self.steps_per_epoch, config.min_lr_ratio,
                                   config.patience, config.plateau_factor)
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.ddp = None
        if d.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
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
        zs, ys = training_statistics(self.structures, self.graphs, train_idx, c, c.seed)
        source = Path(c.data_root).name if c.data_root else ("shipped subset" if c.dataset == "qm9" else "in memory")
        metadata = {"trained_on": f"{DATASET_LABELS.get(c.dataset, c.dataset)} ({source}), target "
                                  f"{c.target_name}, {len(train_idx)} training structures",
                    "periodic": self._periodic(train_idx), "elements": sorted({int(z) for zz in zs for z in zz}),
                    "target": c.target_name, "units": self.unit}
        model = build_model(c.backbone, cutoff=c.cutoff, forces=c.forces_weight > 0, stress=c.stress_weight > 0,
                            max_neighbors=c.max_neighbors, metadata=metadata, **extra, **c.resolved_backbone_kwargs())
        fit_output(model, zs, ys, c)
        return model.to(self.d.device)

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
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "ema": self.ema.model.state_dict() if self.ema else None,
                "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
                "best_val": self.best_val, "since_best": self.since_best, "elapsed": self.elapsed,
                "epoch_loss": list(self.epoch_loss), "rng": rng_states(), "world": self.d.world}

    def _save(self) -> None:
        if self.d.main:
            save_state(self.state_path, **self._state())

    def _load(self) -> None:
        s = load_state(self.state_path, map_location=self.d.device)
        if s["world"] != self.d.world:
            raise ValueError(f"{self.state_path}: written by {s['world']} process(es), resumed with "
                             f"{self.d.world}: the sampler position would not match")
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.schedule.load_state_dict(s["schedule"])
        if self.ema is not None and s["ema"] is not None:
            self.ema.model.load_state_dict(s["ema"])
        self.epoch, self.batch_in_epoch, self.step = s["epoch"], s["batch_in_epoch"], s["step"]
        self.best_val, self.since_best, self.elapsed = s["best_val"], s["since_best"], s["elapsed"]
        self.epoch_loss = list(s["epoch_loss"])
        self.loss_spec = LossSpec.from_config(self.config, float(self.model.scale))
        set_rng_states({k: v.cpu() for k, v in s["rng"].items()})
        if self.progress:
            print(f"resuming {self.out} at epoch {self.epoch + 1}, batch {self.batch_in_epoch} "
                  f"(step {self.step}, best val MAE {self._show(self.best_val)})")

    def _show(self, value: float) -> str:
        u, factor = display(self.unit)
        return f"{value * factor:.1f} {u}"

    # ------------------------------------------------------------------ training
    def run(self) -> TrainResult:
        c, d = self.config, self.d
        self.forces, self.stress = c.forces_weight > 0, c.stress_weight > 0
        val_cols = list(Metrics(c.target_name, self.unit, self.forces, self.stress).result())
        self.log = RunLog(self.out, ["epoch", "step", "train_loss", "lr", "elapsed_s"]
                          + [f"val_{k}" for k in val_cols], self.epoch if self.resume else None, d.main)
        try:
            self._epochs()
        finally:
            self.log.close()
        return self._finish()

    def _time_up(self, tic: float) -> bool:
        limit = self.config.time_limit
        return distributed.any_rank(bool(limit) and self.elapsed + time.perf_counter() - tic >= limit, self.d)

    def _epochs(self) -> None:
        c = self.config
        loader = make_loader(self.graphs, self.sampler, c.num_workers)
        while self.epoch < c.epochs:
            tic = time.perf_counter()
            if self._time_up(tic):
                break
            self.sampler.set_epoch(self.epoch + 1, self.batch_in_epoch)
            n_batches = len(self.sampler)
            bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch // c.accumulate,
                       desc=f"epoch {self.epoch + 1}", unit="step", disable=not self.progress, leave=False,
                       mininterval=1.0)
            group, stopped = [], False
            for loaded in loader:
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
                    raise StructureError(exc.source, f"{exc.problem} (state.pt holds the last good step; "
                                                     "on_error='skip' leaves such structures out)") from None
                self.batch_in_epoch += len(group)
                group = []
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3g}", lr=f"{self.optimizer.param_groups[0]['lr']:.2g}", refresh=False)
                if c.checkpoint_every and self.step % c.checkpoint_every == 0 and self.batch_in_epoch < n_batches:
                    self.elapsed += time.perf_counter() - tic
                    tic = time.perf_counter()
                    self._save()
            bar.close()
            if self.epoch_loss[1] == 0 and stopped:
                break
            done = self._end_epoch(tic)
            if done or stopped:
                break

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
            with (contextlib.nullcontext() if sync else self.ddp.no_sync()), autocast(c, d.device):
                out = model(batch, forces=self.forces, stress=self.stress)
                loss = combine(loss_sums(out, batch, self.loss_spec), counts, self.loss_spec)
            loss.backward()
            loss_value += loss.item() / d.world
        if c.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.schedule.apply(self.optimizer, self.step)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        self.epoch_loss[0] += loss_value
        self.epoch_loss[1] += 1
        return loss_value

    def _end_epoch(self, tic: float) -> bool:
        """Validate, log, keep the best model, checkpoint; True when the run should stop early."""
        c = self.config
        self.epoch += 1
        self.batch_in_epoch = 0
        eval_model = self.ema.model if self.ema is not None else self.model
        metrics = evaluate(eval_model, self.graphs, self.split["val"], c, self.d, self.unit)
        val = metrics.mae
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
        row = {"epoch": self.epoch, "step": self.step, "train_loss": train_loss,
               "lr": self.optimizer.param_groups[0]["lr"], "elapsed_s": round(self.elapsed, 1)}
        row.update({f"val_{k}": v for k, v in metrics.result().items()})
        self.log.write(row)
        if self.progress:
            limit = f"/{c.time_limit:.0f}" if c.time_limit else ""
            tqdm.write(f"epoch {self.epoch:3d}  train loss {train_loss:.4f}  val MAE {self._show(val):>12}  "
                       f"({self.elapsed:.0f}{limit} s)")
        self._save()
        if c.early_stopping and self.since_best >= c.early_stopping:
            if self.progress:
                print(f"early stopping: no validation improvement in {c.early_stopping} epochs")
            return True
        return False

    def _finish(self) -> TrainResult:
        c = self.config
        best = load_model(self.model_path).to(self.d.device) if self.model_path.exists() else self.model
        test = self.split["test"] or self.split["val"]
        if not self.split["test"] and self.progress:
            print("note: no test set (val_data_root gives validation data only): test errors are validation errors")
        metrics = evaluate(best, self.graphs, test, c, self.d, self.unit)
        baseline = evaluate(best, self.graphs, test, c, self.d, self.unit, baseline=True)
        result = TrainResult(test_mae=metrics.mae, baseline_test_mae=baseline.mae, val_mae=self.best_val,
                             epochs=self.epoch, model_path=self.model_path, test_metrics=metrics.result(),
                             unit=self.unit)
        if self.d.main:
            (self.out / "result.json").write_text(json.dumps({
                "target": c.target_name, "unit": self.unit, "test_mae_eV" if self.unit == "eV" else "test_mae":
                result.test_mae, "baseline_test_mae_eV" if self.unit == "eV" else "baseline_test_mae":
                result.baseline_test_mae, "val_mae_eV" if self.unit == "eV" else "val_mae": result.val_mae,
                "epochs": result.epochs, "steps": self.step, "test": result.test_metrics}, indent=2) + "\n")
        return result
