"""The training loop: energy regression with a composition baseline, resumable, with progress.

A run folder holds ``config.json`` (resolved config), ``split.json`` (indices of train/val/test),
``metrics.csv`` (one row per epoch), ``state.pt`` (everything needed to resume, written
atomically every epoch) and ``model.pt`` (best-validation model, loadable by
``geognn.load_model`` / ``geognn predict``). A killed run continues with ``resume=True``.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import conventions as K
from ..graph.build import build_graph, collate
from ..model import Model, ReferenceEnergies, atomic_torch_save, build_model, load_model
from .config import TrainConfig


DATASET_LABELS = {"qm9": "QM9 molecules"}


@dataclass
class TrainResult:
    """Test-set errors of the trained model and of the composition-only baseline (eV)."""

    test_mae: float
    baseline_test_mae: float
    val_mae: float
    epochs: int
    model_path: Path

    def summary(self, target: str) -> str:
        ratio = self.baseline_test_mae / self.test_mae if self.test_mae > 0 else math.inf
        return (f"test MAE of {target}: model {self.test_mae * K.MEV_PER_EV:.1f} meV | "
                f"per-element reference energies only (linear fit on composition) "
                f"{self.baseline_test_mae * K.MEV_PER_EV:.1f} meV | model is {ratio:.1f}x better")


# --------------------------------------------------------------------------- data
def load_dataset(config: TrainConfig):
    """Structures with ``info[config.target]`` set, for the configured dataset."""
    if config.dataset == "qm9":
        from ..datasets.qm9 import QM9_PROPERTIES, load_qm9

        if config.target not in QM9_PROPERTIES:
            raise ValueError(f"unknown QM9 target '{config.target}'; choose one of {sorted(QM9_PROPERTIES)}")
        if not Path(config.data_root).exists():
            raise FileNotFoundError(f"{config.data_root}: QM9 data not found (pass --data-root)")
        return load_qm9(config.data_root, config.limit)
    raise ValueError(f"unknown dataset '{config.dataset}'; choose one of: qm9")


def make_graphs(structures, config: TrainConfig):
    graphs = []
    for atoms in tqdm(structures, desc="building graphs", unit="mol", leave=False):
        g = build_graph(atoms, config.cutoff)
        g[K.ENERGY] = torch.tensor([float(atoms.info[config.target])])
        graphs.append(g)
    return graphs


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """Seeded random split into train/val/test index lists."""
    perm = np.random.default_rng(seed).permutation(n).tolist()
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    if n - n_val - n_test < 1:
        raise ValueError(f"{n} structures are too few for val/test fractions {val_fraction}/{test_fraction}")
    return {"val": perm[:n_val], "test": perm[n_val:n_val + n_test], "train": perm[n_val + n_test:]}


def batches(graphs, batch_size: int, shuffle: bool, generator: torch.Generator | None = None):
    order = torch.randperm(len(graphs), generator=generator).tolist() if shuffle else range(len(graphs))
    order = list(order)
    for k in range(0, len(order), batch_size):
        yield collate([graphs[i] for i in order[k:k + batch_size]])


@torch.no_grad()
def mean_absolute_error(model: Model, graphs, batch_size: int = 128) -> float:
    """MAE of the energy (eV) over ``graphs``."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches(graphs, batch_size, shuffle=False):
        pred = model(batch, forces=False, stress=False)[K.ENERGY]
        total += float((pred - batch[K.ENERGY]).abs().sum())
        count += pred.numel()
    return total / max(count, 1)


def baseline_mae(reference: ReferenceEnergies, graphs) -> float:
    errors = [float((reference(g[K.Z]).sum() - g[K.ENERGY]).abs()) for g in graphs]
    return float(np.mean(errors))


# --------------------------------------------------------------------------- the run
def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train (or resume) a run as configured; returns test errors of model and baseline."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path, model_path = out / "state.pt", out / "model.pt"
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    config.to_json(out / "config.json")

    structures = load_dataset(config)
    graphs = make_graphs(structures, config)
    split = split_indices(len(graphs), config.val_fraction, config.test_fraction, config.seed)
    (out / "split.json").write_text(json.dumps(split))
    train_g, val_g, test_g = ([graphs[i] for i in split[k]] for k in ("train", "val", "test"))

    elements = sorted({int(z) for g in train_g for z in g[K.Z]})
    model = build_model(config.backbone, cutoff=config.cutoff, forces=True, metadata={
        "trained_on": f"{DATASET_LABELS.get(config.dataset, config.dataset)} "
                      f"({Path(config.data_root).name}), target {config.target}, "
                      f"{len(train_g)} training structures",
        "periodic": any(bool(g[K.PBC].any()) for g in train_g),
        "elements": elements, "target": config.target, "units": "eV"}, **config.resolved_backbone_kwargs())
    # composition baseline = the model's reference energies; the network learns the residual
    model.reference.fit([g[K.Z] for g in train_g], torch.cat([g[K.ENERGY] for g in train_g]))
    residual = torch.cat([(g[K.ENERGY] - model.reference(g[K.Z]).sum()) / len(g[K.Z]) for g in train_g])
    model.set_scale_shift(float(residual.std()), float(residual.mean()))

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=config.patience)
    generator = torch.Generator().manual_seed(config.seed)
    start_epoch, best_val, elapsed = 0, math.inf, 0.0
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start_epoch, best_val, elapsed = state["epoch"], state["best_val"], state["elapsed"]
        print(f"resuming {out} at epoch {start_epoch} (best val MAE {best_val * 1000:.1f} meV)")

    metrics_path = out / "metrics.csv"
    if not (resume and metrics_path.exists()):
        metrics_path.write_text("epoch,train_loss,val_mae_eV,lr,elapsed_s\n")
    scale = float(model.scale)
    epoch = start_epoch
    for epoch in range(start_epoch + 1, config.epochs + 1):
        if config.time_limit and elapsed >= config.time_limit:
            break
        tic = time.perf_counter()
        model.train()
        n_batches = math.ceil(len(train_g) / config.batch_size)
        bar = tqdm(batches(train_g, config.batch_size, True, generator), total=n_batches,
                   desc=f"epoch {epoch}", unit="batch", disable=not progress, leave=False,
                   mininterval=1.0)
        losses = []
        for batch in bar:
            if config.time_limit and elapsed + time.perf_counter() - tic >= config.time_limit:
                break  # the budget ends mid-epoch: validate what was learned so far
            pred = model(batch, forces=False, stress=False)[K.ENERGY]
            # per-atom energy error in units of the per-atom residual spread
            loss = (((pred - batch[K.ENERGY]) / batch[K.NATOMS]) / scale).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3g}", refresh=False)
        if not losses:
            break
        val_mae = mean_absolute_error(model, val_g)
        scheduler.step(val_mae)
        elapsed += time.perf_counter() - tic
        if val_mae < best_val:
            best_val = val_mae
            model.save(model_path)
        with metrics_path.open("a", newline="") as f:
            csv.writer(f).writerow([epoch, f"{np.mean(losses):.6g}", f"{val_mae:.6g}",
                                    f"{optimizer.param_groups[0]['lr']:.3g}", f"{elapsed:.1f}"])
        if progress:
            tqdm.write(f"epoch {epoch:3d}  train loss {np.mean(losses):.4f}  val MAE "
                       f"{val_mae * 1000:7.1f} meV  ({elapsed:.0f}/{config.time_limit:.0f} s)")
        atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                           "epoch": epoch, "best_val": best_val, "elapsed": elapsed}, state_path)


    best = load_model(model_path) if model_path.exists() else model
    result = TrainResult(test_mae=mean_absolute_error(best, test_g),
                         baseline_test_mae=baseline_mae(best.reference, test_g),
                         val_mae=best_val, epochs=epoch, model_path=model_path)
    (out / "result.json").write_text(json.dumps({
        "target": config.target, "test_mae_eV": result.test_mae,
        "baseline_test_mae_eV": result.baseline_test_mae, "val_mae_eV": result.val_mae,
        "epochs": result.epochs}, indent=2) + "\n")
    return result
