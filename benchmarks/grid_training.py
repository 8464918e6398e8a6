"""Does PΘNITA's grid change what it learns? The same training on each grid, same steps.

What it measures
    For each grid in --grids and each seed in 0 .. --seeds - 1, geognn's trainer
    (``geognn.train.loop.train``) trains ``ponita`` on U0 of the QM9 subset shipped with the
    package, the same way except for ``grid``: 64 channels, --num-ori orientations, basis 64 (the
    README's CPU-sized setting), the trainer's defaults otherwise (AdamW, lr 1e-3, batch 32,
    L1 loss, cosine schedule, cutoff 5 Å, random 80/10/10 split from the seed), for --epochs
    epochs with no time limit, so every grid gets the same optimiser steps on the same batches.
    Reported per run: test MAE of U0 (meV, the model best on validation), the best validation
    MAE, and the training time (s, validation included; runs in parallel with --jobs share the
    machine, so times compare only within one invocation). Then per grid the mean test MAE over
    seeds, and the seed-to-seed spread, which is what a difference between grids must exceed.

    With ``grid="auto"`` (PΘNITA's default) the antipodal grid shares each edge's kernels with its
    reverse edge (the same function of that grid, fewer operations). This script checks that the
    grid itself does not cost accuracy; ``grid_rotation_error.py`` measures its rotation error.

Run
    .venv/bin/python benchmarks/grid_training.py                       # 2 grids x 2 seeds, ~8 min on 2 cores
    .venv/bin/python benchmarks/grid_training.py --quick               # smoke test
    Results: benchmarks/results/grid_training.json and a markdown table on stdout; training runs
    (checkpoints, metrics.csv) under runs/grid_training/<grid>_<seed>/.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _common import HERE, RESULTS, machine_info, write_results

#: The README's CPU-sized PΘNITA (accuracy table), with the grid left to the command line.
MODEL = dict(hidden_channels=64, basis_dim=64)


def train_one(grid: str, seed: int, num_ori: int, epochs: int, limit: int | None, runs: str) -> dict:
    """One training run (in a worker process): test and best validation MAE (meV) and seconds."""
    from geognn.train.config import TrainConfig
    from geognn.train.loop import train

    config = TrainConfig(
        backbone="ponita",
        backbone_kwargs={**MODEL, "num_ori": num_ori, "grid": grid},
        epochs=epochs,
        time_limit=0,
        limit=limit,
        seed=seed,
        threads=1,
        out=str(Path(runs) / f"{grid}_{seed}"),
    )
    start = time.perf_counter()
    result = train(config, progress=False)
    return {
        "grid": grid,
        "seed": seed,
        "test_mae_meV": 1e3 * result.test_mae,
        "best_val_mae_meV": 1e3 * result.val_mae,
        "epochs": result.epochs,
        "seconds": time.perf_counter() - start,
    }


def summary(runs: list[dict], grids: list[str]) -> dict:
    out = {}
    for grid in grids:
        maes = [r["test_mae_meV"] for r in runs if r["grid"] == grid]
        out[grid] = {
            "test_mae_meV_mean": statistics.mean(maes),
            "test_mae_meV_spread": max(maes) - min(maes),
            "seconds_mean": statistics.mean(r["seconds"] for r in runs if r["grid"] == grid),
        }
    return out


def markdown(payload: dict) -> str:
    lines = [
        "| grid | seed | test MAE (meV) | best val MAE (meV) | epochs | time (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in payload["runs"]:
        lines.append(
            f"| {r['grid']} | {r['seed']} | {r['test_mae_meV']:.1f} | {r['best_val_mae_meV']:.1f} | "
            f"{r['epochs']} | {r['seconds']:.0f} |"
        )
    for grid, s in payload["summary"].items():
        lines.append(
            f"| {grid} | mean | {s['test_mae_meV_mean']:.1f} (spread {s['test_mae_meV_spread']:.1f}) | | | "
            f"{s['seconds_mean']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grids", default="fibonacci,antipodal", help="(default: %(default)s)")
    parser.add_argument("--num-ori", type=int, default=16, help="orientations, even (default: 16)")
    parser.add_argument("--seeds", type=int, default=2, help="runs per grid, seeds 0.. (default: 2)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default: 3)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N molecules (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, 1 thread each (default: 2)")
    parser.add_argument("--runs", default=str(HERE.parent / "runs" / "grid_training"), help="run folders")
    parser.add_argument("--quick", action="store_true", help="smoke test: 200 molecules, 1 epoch, 1 seed")
    parser.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/grid_training.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit, args.epochs, args.seeds = 200, 1, 1
    grids = [g.strip() for g in args.grids.split(",") if g.strip()]
    jobs = [(g, seed) for seed in range(args.seeds) for g in grids]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [
            pool.submit(train_one, g, seed, args.num_ori, args.epochs, args.limit, args.runs) for g, seed in jobs
        ]
        runs = [f.result() for f in futures]
    payload = {
        "benchmark": "grid_training",
        "quick": args.quick,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "machine": machine_info(),
        "model": {**MODEL, "num_ori": args.num_ori},
        "epochs": args.epochs,
        "limit": args.limit,
        "jobs": args.jobs,
        "runs": runs,
        "summary": summary(runs, grids),
    }
    print(markdown(payload))
    out = Path(args.out) if args.out else RESULTS / ("grid_training_quick.json" if args.quick else "grid_training.json")
    print("results:", write_results(payload, out))
    return payload


if __name__ == "__main__":
    main()
