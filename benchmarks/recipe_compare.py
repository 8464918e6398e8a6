"""The training recipe before and after issue 13 item 7, same seed, split, budget and threads.

before: MSE loss, constant learning rate with reduce-on-plateau (x0.5 after 5 bad epochs), no warmup
        (the trainer's old defaults, given here as ``--set loss=mse --set scheduler=plateau --set warmup_steps=0``)
after:  the trainer's defaults now: L1 loss, linear warmup, cosine anneal to 0.01 x lr at the end of the budget

Jobs (each run with ``python -m geognn.cli train``, one after the other, before then after):
  qm9   the default job: ``geognn train`` (shipped QM9 subset, SchNet, 150 s): test MAE of U0
  qm9-epochs  the same job with an epoch budget instead (``--time-limit 0 --epochs E``): the same steps
        for both recipes whatever the machine's load (the cosine then anneals over the E epochs)
  mp20  formation energy per atom of the shared MP-20 crystals: a CGCNN folder made from train.csv
        (``cif_table_to_folder``), ``--target formation_energy_per_atom --unit eV/atom --readout mean
        --backbone schnet --time-limit 120``; scored on the crystals of val.csv, never seen in training,
        next to the composition fit alone and the training mean

Both recipes get the same wall-clock budget, so on a shared machine the number of epochs each reaches
depends on the load; it is recorded next to each result.

    python benchmarks/recipe_compare.py [--jobs qm9 mp20 qm9-epochs] [--threads 1] [--seed 0]

Writes benchmarks/results/recipe_compare.json (jobs run again replace their entry; the others are
kept, each job with the machine facts of its own run under ``machine_per_job``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import DATA, RESULTS, machine_info

RECIPES = {"before": {"loss": "mse", "scheduler": "plateau", "warmup_steps": 0}, "after": {}}
MP20 = DATA / "cif" / "mp20_subset"
TARGET = "formation_energy_per_atom"


def geognn_train(args: list[str], recipe: dict, threads: int, out: Path) -> dict:
    sets = [a for k, v in recipe.items() for a in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "geognn.cli", "train", *args, *sets, "--threads", str(threads), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    tic = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    result = json.loads((out / "result.json").read_text())
    result["wall_s"] = round(time.perf_counter() - tic, 1)
    result["command"] = " ".join(["geognn", "train", *args, *sets, "--threads", str(threads)])
    return result


def mp20_folders(root: Path) -> tuple[Path, Path]:
    from geognn.datasets.folders import cif_table_to_folder

    cols = {TARGET: TARGET}
    return (
        cif_table_to_folder(MP20 / "train.csv", root / "train", columns=cols),
        cif_table_to_folder(MP20 / "val.csv", root / "val", columns=cols),
    )


def score_held_out(model_path: Path, train_root: Path, val_root: Path) -> dict:
    """MAE (eV/atom) on the held-out crystals of the model, its composition fit alone and the training mean."""
    import torch

    import geognn
    from geognn.datasets import open_dataset
    from geognn.train.loop import baseline_outputs

    model = geognn.load_model(model_path)
    val = open_dataset("cif-folder", val_root, target=TARGET, energy_unit="eV/atom")
    train = open_dataset("cif-folder", train_root, target=TARGET, energy_unit="eV/atom")
    ys, preds, base = [], [], []
    for k in range(0, len(val), 32):
        atoms = [val[i] for i in range(k, min(k + 32, len(val)))]
        batch = geognn.collate([geognn.build_graph(a, model.cutoff) for a in atoms])
        with torch.no_grad():
            preds += model(batch)[TARGET].tolist()
            base += baseline_outputs(model, batch)[TARGET].tolist()
        ys += [a.info[TARGET] for a in atoms]
    ys, preds, base = map(np.array, (ys, preds, base))
    mean = np.mean([train[i].info[TARGET] for i in range(len(train))])
    return {
        "n_held_out": len(ys),
        "model_mae": float(np.abs(preds - ys).mean()),
        "composition_fit_mae": float(np.abs(base - ys).mean()),
        "training_mean_mae": float(np.abs(mean - ys).mean()),
        "unit": "eV/atom",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", nargs="+", default=["qm9", "mp20"], choices=["qm9", "mp20", "qm9-epochs"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--qm9-time", type=float, default=150.0)
    ap.add_argument("--mp20-time", type=float, default=120.0)
    ap.add_argument("--qm9-epochs", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "recipe_compare.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    out_path = Path(args.out)
    report = json.loads(out_path.read_text()) if out_path.exists() else {}
    report.update({"threads": args.threads, "seed": args.seed, "recipes": RECIPES})
    report.setdefault("jobs", {})
    report.setdefault("machine_per_job", {})
    for job in report["jobs"]:  # a file written with one machine entry for all its jobs
        report["machine_per_job"].setdefault(job, report.get("machine"))
    with tempfile.TemporaryDirectory(prefix="recipe_compare_") as tmp:
        tmp = Path(tmp)
        for job in args.jobs:
            rows, machine = {}, machine_info()
            for name, recipe in RECIPES.items():
                if job.startswith("qm9"):
                    budget = (
                        ["--time-limit", str(args.qm9_time)]
                        if job == "qm9"
                        else ["--time-limit", "0", "--epochs", str(args.qm9_epochs)]
                    )
                    r = geognn_train(["--seed", str(args.seed), *budget], recipe, args.threads, tmp / f"{job}_{name}")
                    rows[name] = {
                        "test_mae_meV": 1000 * r["test_mae_eV"],
                        "baseline_test_mae_meV": 1000 * r["baseline_test_mae_eV"],
                        "epochs": r["epochs"],
                        "steps": r["steps"],
                        "wall_s": r["wall_s"],
                        "command": r["command"],
                    }
                else:
                    train_root, val_root = mp20_folders(tmp / "mp20")
                    out = tmp / f"mp20_{name}"
                    r = geognn_train(
                        [
                            "--dataset",
                            "cif-folder",
                            "--data-root",
                            str(train_root),
                            "--target",
                            TARGET,
                            "--unit",
                            "eV/atom",
                            "--readout",
                            "mean",
                            "--backbone",
                            "schnet",
                            "--time-limit",
                            str(args.mp20_time),
                            "--seed",
                            str(args.seed),
                        ],
                        recipe,
                        args.threads,
                        out,
                    )
                    rows[name] = {
                        "internal_test_mae": r["test_mae"],
                        "epochs": r["epochs"],
                        "steps": r["steps"],
                        "wall_s": r["wall_s"],
                        "command": r["command"],
                        **score_held_out(out / "model.pt", train_root, val_root),
                    }
                print(job, name, json.dumps(rows[name]), flush=True)
            machine["load_average_after"] = list(os.getloadavg())
            report["jobs"][job], report["machine_per_job"][job] = rows, machine
    report.pop("machine", None)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
