"""Formation energy per atom of MP-20 crystals at a fixed CPU budget: geognn backbones vs PyG SchNet
vs composition-only baselines, on crystals never seen in training.

What it does
    1. Data: the shared MP-20 subset (``$GEOGNN_SHARED_DATA/cif/mp20_subset``, default
       ``../shared/data``; Materials Project data CC-BY 4.0 via CDVAE's MIT-licensed split files).
       ``train.csv`` (847 crystals) and ``val.csv`` (123) are written as one CGCNN folder (one
       ``<material_id>.cif`` per row, verbatim, and ``id_prop.csv`` with the column ``e_form``)
       under ``--runs``. A split file by material id (``geognn.datasets.write_split``): training
       and validation are a seeded (``--seed``) 90/10 split of ``train.csv``; the **test set is
       all of val.csv**, never seen in training. Every model gets exactly this split
       (``TrainConfig.split_file``, what ``geognn train --split FILE`` reads).
    2. geognn: ``geognn.train.loop.train`` with target ``e_form`` (eV/atom, readout ``mean``)
       for each of ``--backbones`` (default schnet, painn, mace, faenet): SchNet at the trainer's
       demo size (hidden 64, filters 64, 3 interactions, 32 Gaussians, the same as the PyG model
       below), the others at their constructor defaults; faenet with stochastic frame averaging
       (SFA: one random frame per structure in training, all frames at evaluation), as in its
       paper. Everything else is the trainer's default (cutoff ``--cutoff`` Å, AdamW, lr, batch,
       loss, LR schedule, gradient clipping), the same seed, and ``--time-limit`` seconds of
       training (checked before every batch; validation time counts).
    3. PyG: ``torch_geometric.nn.models.SchNet`` with ``readout="mean"``, the same
       hyperparameters, given the same edges (geognn's graphs: its ``interaction_graph`` returns
       our ``edge_index`` and the periodic distance ``|pos[j] + edge_shift @ cell - pos[i]|``),
       the same output parametrisation (per-element reference values fitted on element
       fractions as PyG's ``atomref``, frozen; residual spread/mean as ``std``/``mean``), the
       same split, batches in the same order, optimizer, schedule, loss, clipping and budget.
    4. Baselines fitted on the same training structures and tested on val.csv, computed here
       with numpy (independently of geognn's reference fit): (a) the training mean, (b) a
       least-squares linear fit of e_form on element fractions.
    Reported per model: test MAE (eV/atom), best validation MAE, epochs, training time,
    parameters; each model's test MAE is also recomputed from its saved checkpoint.

    Runs go one after the other on the same machine; a time budget makes the result depend
    on throughput, so on a busy machine the numbers are noisy (the load average is recorded).

Run
    .venv/bin/python benchmarks/accuracy_mp20.py                               # 120 s per model, 1 thread
    .venv/bin/python benchmarks/accuracy_mp20.py --time-limit 10 --backbones schnet --no-pyg   # smoke test
    Results: benchmarks/results/accuracy_mp20.json (--out); runs under runs/accuracy_mp20/.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import os
import sys
import time
import traceback
from pathlib import Path

if "--progress" not in sys.argv:
    os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch
from _common import DATA, HERE, RESULTS, machine_info, write_results

MP20 = DATA / "cif" / "mp20_subset"
TARGET, UNIT = "e_form", "eV/atom"
#: Backbones without rotation symmetry of their own run as their paper does (stochastic frame averaging).
FRAME_AVERAGING = {"faenet": "stochastic"}


# --------------------------------------------------------------------------- data
def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise SystemExit(f"{path}: not found (set GEOGNN_SHARED_DATA to the folder holding cif/mp20_subset)")
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def prepare(runs: Path, seed: int) -> tuple[Path, Path, dict, list[dict], list[dict]]:
    """CGCNN folder of train.csv + val.csv and the split file by ids; returns
    (folder, split_path, split by ids, training-split rows, test rows)."""
    from geognn.datasets import write_split

    train_csv, test_rows = read_rows(MP20 / "train.csv"), read_rows(MP20 / "val.csv")
    rows = train_csv + test_rows
    ids = [r["material_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise SystemExit("train.csv and val.csv share material ids: val.csv would not be held out")
    folder = runs / "mp20_cgcnn"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "id_prop.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", TARGET])
        for r in rows:
            (folder / f"{r['material_id']}.cif").write_text(r["cif"])
            writer.writerow([r["material_id"], r["formation_energy_per_atom"]])
    perm = np.random.default_rng(seed).permutation(len(train_csv)).tolist()
    n_val = int(round(0.1 * len(train_csv)))
    split = {"train": sorted(perm[n_val:]), "val": sorted(perm[:n_val]), "test": list(range(len(train_csv), len(rows)))}
    split_path = write_split(
        runs / "split_mp20.json",
        split,
        ids=ids,
        seed=seed,
        note="train/val: seeded 90/10 split of MP-20 train.csv; test: all of val.csv",
    )
    fit_rows = [train_csv[i] for i in split["train"]]
    return folder, split_path, {k: [ids[i] for i in v] for k, v in split.items()}, fit_rows, test_rows


def baselines(fit_rows: list[dict], test_rows: list[dict]) -> dict:
    """Test MAE (eV/atom) of (a) the training mean and (b) least squares on element fractions
    (numpy lstsq; elements absent from training contribute 0)."""
    from pymatgen.core import Composition

    def fractions(rows, index):
        a = np.zeros((len(rows), len(index)))
        for k, r in enumerate(rows):
            for el, x in Composition(r["pretty_formula"]).fractional_composition.get_el_amt_dict().items():
                if el in index:
                    a[k, index[el]] = x
        return a

    index = {
        el: k
        for k, el in enumerate(
            sorted({el for r in fit_rows for el in Composition(r["pretty_formula"]).get_el_amt_dict()})
        )
    }
    y = np.array([float(r["formation_energy_per_atom"]) for r in fit_rows])
    y_test = np.array([float(r["formation_energy_per_atom"]) for r in test_rows])
    coef = np.linalg.lstsq(fractions(fit_rows, index), y, rcond=None)[0]
    return {
        "mean": float(np.abs(y_test - y.mean()).mean()),
        "composition_linear_fit": float(np.abs(y_test - fractions(test_rows, index) @ coef).mean()),
        "n_train": len(fit_rows),
        "n_test": len(test_rows),
        "n_elements": len(index),
    }


def base_config(args, folder: Path, split_path: Path, out: Path, backbone: str, kwargs: dict | None):
    from geognn.train.config import TrainConfig

    return TrainConfig(
        dataset="cif-folder",
        data_root=str(folder),
        target=TARGET,
        unit=UNIT,
        readout="mean",
        backbone=backbone,
        backbone_kwargs=kwargs,
        cutoff=args.cutoff,
        frame_averaging=FRAME_AVERAGING.get(backbone),
        time_limit=args.time_limit,
        epochs=args.epochs,
        seed=args.seed,
        threads=args.threads,
        split_file=str(split_path),
        out=str(out),
    )


@torch.no_grad()
def checkpoint_mae(model_path: Path, graphs, indices, batch_size: int = 32) -> float:
    """Test MAE (eV/atom) of a saved geognn checkpoint on ``indices`` of ``graphs`` (a plain loop)."""
    from geognn import load_model
    from geognn.graph.build import collate

    model = load_model(model_path).eval()
    err = []
    for k in range(0, len(indices), batch_size):
        batch = collate([graphs[i] for i in indices[k : k + batch_size]])
        err.append((model(batch, forces=False, stress=False)[TARGET] - batch[TARGET]).abs().double())
    return float(torch.cat(err).mean())


def run_geognn(name: str, args, folder: Path, split_path: Path, runs: Path) -> dict:
    from geognn.train.config import DEMO_BACKBONE_KWARGS
    from geognn.train.data import GraphDataset, open_structures
    from geognn.train.loop import read_run_split, train

    kwargs = dict(DEMO_BACKBONE_KWARGS) if name == "schnet" else {}
    config = base_config(args, folder, split_path, runs / name, name, kwargs)
    tic = time.perf_counter()
    try:
        result = train(config, progress=args.progress)
    except Exception as exc:  # noqa: BLE001 - one failing backbone must not stop the table
        traceback.print_exc(limit=5)
        return {"model": f"geognn {name}", "status": f"failed: {type(exc).__name__}: {exc}"[:300]}
    wall = time.perf_counter() - tic
    rows = list(csv.DictReader((runs / name / "metrics.csv").open()))
    structures = open_structures(config)
    split = read_run_split(split_path, structures)
    graphs = GraphDataset(structures, config, cache=True, targets=[TARGET])
    recomputed = checkpoint_mae(result.model_path, graphs, split["test"])
    params = sum(p.numel() for p in __import__("geognn").load_model(result.model_path).parameters())
    return {
        "model": f"geognn {name}" + (" + SFA" if name in FRAME_AVERAGING else ""),
        "status": "ok",
        "test_mae": result.test_mae,
        "test_mae_recomputed": recomputed,
        "best_val_mae": result.val_mae,
        "trainer_composition_baseline_test_mae": result.baseline_test_mae,
        "epochs": len(rows),
        "train_time_s": float(rows[-1]["elapsed_s"]) if rows else 0.0,
        "wall_s": wall,
        "parameters": params,
        "backbone_kwargs": kwargs,
        "frame_averaging": FRAME_AVERAGING.get(name),
        "run_dir": str(runs / name),
    }


# --------------------------------------------------------------------------- PyG SchNet
class PeriodicEdges(torch.nn.Module):
    """PyG SchNet ``interaction_graph``: the current batch's geognn edges with their image shifts.

    Returns ``edge_index`` [2, E] (row 0 = neighbour j, row 1 = centre i: PyG's j -> i flow) and
    the distance [E] Å ``|pos[j] + edge_shift @ cell[graph of j] - pos[i]|``.
    """

    def __init__(self):
        super().__init__()
        self.edge_index = self.edge_shift = self.cell = None

    def forward(self, pos, batch):
        j, i = self.edge_index
        shift = torch.einsum("ek,ekd->ed", self.edge_shift.to(pos.dtype), self.cell[batch[j]])  # [E, 3] Å
        return self.edge_index, (pos[j] + shift - pos[i]).norm(dim=-1)


def pyg_predict(model, batch):
    from geognn.graph.build import graph_index

    model.interaction_graph.edge_index = batch.edge_index
    model.interaction_graph.edge_shift = batch.edge_shift
    model.interaction_graph.cell = batch.cell
    return model(batch.z, batch.pos, graph_index(batch)).view(-1)


@torch.no_grad()
def pyg_mae(model, graphs, indices, batch_size: int) -> float:
    from geognn.graph.build import collate

    model.eval()
    err = []
    for k in range(0, len(indices), batch_size):
        batch = collate([graphs[i] for i in indices[k : k + batch_size]])
        err.append((pyg_predict(model, batch) - batch[TARGET]).abs().double())
    return float(torch.cat(err).mean())


def run_pyg(args, folder: Path, split_path: Path, runs: Path) -> dict:
    """PyG SchNet trained the way geognn's trainer trains (see the module docstring)."""
    import math as _math

    from torch_geometric.nn.models import SchNet

    from geognn.graph.build import collate
    from geognn.model import build_model
    from geognn.train.config import DEMO_BACKBONE_KWARGS
    from geognn.train.data import EpochBatches, GraphDataset, open_structures
    from geognn.train.loop import fit_output, read_run_split, training_statistics
    from geognn.train.optim import LRSchedule

    kw = dict(DEMO_BACKBONE_KWARGS)
    config = base_config(args, folder, split_path, runs / "pyg_schnet", "schnet", kw)
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    structures = open_structures(config)
    split = read_run_split(split_path, structures)
    graphs = GraphDataset(structures, config, cache=True, targets=[TARGET])
    zs, ys = training_statistics(structures, graphs, split["train"], config, config.seed, [TARGET])
    helper = build_model(
        "schnet", cutoff=config.cutoff, targets=[{"name": TARGET, "unit": UNIT, "readout": "mean"}], **kw
    )
    fit_output(helper, zs, ys, config)  # the same reference fit (fractions), scale and shift as geognn
    head = helper.heads[TARGET]
    scale, shift = float(head.scale), float(head.shift)
    model = SchNet(
        hidden_channels=kw["hidden_channels"],
        num_filters=kw["num_filters"],
        num_interactions=kw["num_layers"],
        num_gaussians=kw["num_gaussians"],
        cutoff=config.cutoff,
        interaction_graph=PeriodicEdges(),
        readout="mean",
        mean=shift,
        std=scale,
        atomref=head.reference.energies[:100].view(-1, 1),
    )
    model.atomref.weight.requires_grad_(False)  # geognn's reference values are fixed too
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sampler = EpochBatches(split["train"], config.batch_size, config.seed)
    total_steps = config.epochs * _math.ceil(len(sampler) / config.accumulate)
    # the trainer's schedule: warmup and, for cosine, an anneal over the time budget
    schedule = LRSchedule(
        config.lr,
        config.scheduler,
        config.warmup_steps,
        total_steps,
        config.min_lr_ratio,
        config.patience,
        config.plateau_factor,
        time_budget=config.time_limit,
    )
    timed = config.scheduler == "cosine" and config.time_limit > 0
    best, best_state, elapsed, epoch, step = math.inf, None, 0.0, 0, 0
    while epoch < config.epochs and not (config.time_limit and elapsed >= config.time_limit):
        sampler.set_epoch(epoch + 1)
        tic = time.perf_counter()
        model.train()
        steps = 0
        for idx in sampler:
            if config.time_limit and elapsed + time.perf_counter() - tic >= config.time_limit:
                break
            batch = collate([graphs[i] for i in idx])
            err = (pyg_predict(model, batch) - batch[TARGET]) / scale  # readout mean: per structure
            loss = err.pow(2).mean() if config.loss == "mse" else err.abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            if timed:  # training seconds so far: the clock of the time limit, as the trainer reads it
                schedule.apply(optimizer, step, elapsed + time.perf_counter() - tic)
            else:
                schedule.apply(optimizer, step)
            optimizer.step()
            steps += 1
            step += 1
        if not steps:
            break
        epoch += 1
        val = pyg_mae(model, graphs, split["val"], config.batch_size)
        schedule.epoch_end(val)
        elapsed += time.perf_counter() - tic
        if val < best:
            best, best_state = val, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return {
        "model": "PyG SchNet (readout mean)",
        "status": "ok",
        "test_mae": pyg_mae(model, graphs, split["test"], config.batch_size),
        "best_val_mae": best,
        "epochs": epoch,
        "train_time_s": elapsed,
        "parameters": sum(p.numel() for p in params),
        "backbone_kwargs": kw,
    }


# --------------------------------------------------------------------------- table
def table(payload: dict) -> str:
    b = payload["baselines"]
    lines = [
        "| model | test MAE (eV/atom) | best val MAE (eV/atom) | epochs | train time (s) | parameters |",
        "|---|---:|---:|---:|---:|---:|",
        f"| (a) training mean | {b['mean']:.3f} | | | | |",
        f"| (b) composition-only linear fit (element fractions) | {b['composition_linear_fit']:.3f} | | | | |",
    ]
    for r in payload["results"]:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['status']} | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['test_mae']:.3f} | {r['best_val_mae']:.3f} | {r['epochs']} | "
            f"{r['train_time_s']:.0f} | {r['parameters']:,} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds of training per model (default 120)")
    parser.add_argument("--epochs", type=int, default=1000, help="upper bound on epochs (default 1000)")
    parser.add_argument("--backbones", default="schnet,painn,mace,faenet", help="geognn backbones (comma-separated)")
    parser.add_argument("--no-pyg", action="store_true", help="skip PyG's SchNet")
    parser.add_argument("--cutoff", type=float, default=5.0, help="graph cutoff in Å for every model (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="split, initialisation and batch seed (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--runs", type=Path, default=HERE.parent / "runs" / "accuracy_mp20")
    parser.add_argument("--out", default="accuracy_mp20.json", help="results file name in benchmarks/results")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import geognn

    names = [n.strip() for n in args.backbones.split(",") if n.strip()]
    bad = [n for n in names if n not in geognn.BACKBONES]
    if bad:
        raise SystemExit(f"unknown backbone(s) {bad}; choose from {', '.join(geognn.BACKBONES)}")
    args.runs.mkdir(parents=True, exist_ok=True)
    folder, split_path, split_ids, fit_rows, test_rows = prepare(args.runs, args.seed)
    base = baselines(fit_rows, test_rows)
    print(
        f"MP-20: {len(split_ids['train'])} train / {len(split_ids['val'])} val (from train.csv), "
        f"{len(split_ids['test'])} test (val.csv); test MAE of the mean {base['mean']:.3f}, "
        f"composition fit {base['composition_linear_fit']:.3f} eV/atom",
        flush=True,
    )
    results = []
    for name in names:
        row = run_geognn(name, args, folder, split_path, args.runs)
        results.append(row)
        print(
            f"{row['model']}: "
            + (
                f"test MAE {row['test_mae']:.4f} eV/atom ({row['epochs']} epochs, {row['train_time_s']:.0f} s)"
                if row["status"] == "ok"
                else row["status"]
            ),
            flush=True,
        )
    if not args.no_pyg:
        row = run_pyg(args, folder, split_path, args.runs)
        results.append(row)
        print(
            f"{row['model']}: test MAE {row['test_mae']:.4f} eV/atom ({row['epochs']} epochs, "
            f"{row['train_time_s']:.0f} s)",
            flush=True,
        )
    from geognn.train.config import TrainConfig

    defaults = TrainConfig()
    payload = {
        "benchmark": "accuracy_mp20",
        "target": f"formation energy per atom ({UNIT}), readout mean",
        "data": {
            "source": "shared MP-20 subset cif/mp20_subset (train.csv 847, val.csv 123 crystals); "
            "Materials Project data CC-BY 4.0, CDVAE split files MIT",
            "split": {k: len(v) for k, v in split_ids.items()},
            "split_how": "train/val: seeded 90/10 split of train.csv; test: all of val.csv",
            "split_file": str(split_path),
        },
        "time_limit_s": args.time_limit,
        "epochs_max": args.epochs,
        "seed": args.seed,
        "threads": args.threads,
        "cutoff_A": args.cutoff,
        "trainer_defaults": {
            k: getattr(defaults, k, None)
            for k in (
                "lr",
                "batch_size",
                "loss",
                "scheduler",
                "warmup_steps",
                "min_lr_ratio",
                "grad_clip",
                "weight_decay",
                "patience",
            )
        },
        "baselines": base,
        "results": results,
        "machine": machine_info(),
    }
    payload["table_markdown"] = table(payload)
    print(payload["table_markdown"])
    print(f"results: {write_results(payload, RESULTS / args.out)}")


if __name__ == "__main__":
    main()
