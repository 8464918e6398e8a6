"""Energy drift of NVE dynamics with a *trained* model, float32 against float64.

What it measures
    ``bench_md.py`` measures the drift of untrained models, whose surfaces are smooth. A trained
    surface is rougher, which is where float32's ~1e-4 eV/Å force noise could add up. Here:
    1. Train PaiNN (32 channels, 2 layers, cutoff 5 Å) on the first --frames frames of the shared
       MD17 ethanol file (energies and forces, kcal/mol, force weight 100), the recipe of
       notebooks/05_md_and_relaxation_ase.ipynb, for --epochs epochs on one thread.
    2. Start from the file's last frame (not trained on), Maxwell-Boltzmann velocities at 300 K
       (numpy seeds 0 .. --seeds - 1: one run per seed and precision), and run --steps steps of ASE Velocity Verlet (--timestep fs) through
       ``GeoGNNCalculator(checkpoint, dtype=...)`` once in float32 and once in float64 from the
       same state.
    Reported for each precision: total-energy change at the end and its largest excursion
    (meV/atom), a least-squares slope (meV/atom/ps), the potential-energy fluctuation, the final
    temperature and wall time, per seed and as medians over seeds; and how far the two
    trajectories of a seed end apart (largest atomic displacement between them, Å). The test force
    MAE of the model says how rough a surface it is.

Run
    .venv/bin/python benchmarks/md_drift_trained.py               # ~3 min on one core
    .venv/bin/python benchmarks/md_drift_trained.py --quick       # smoke test
    Results: benchmarks/results/md_drift_trained.json (``_quick`` with --quick).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import DATA, RESULTS, machine_info, nve_energy_drift, write_results

MD17 = DATA / "md" / "schnetpack_md17_ethanol_2000.xyz"


def train_model(out: Path, frames: int, epochs: int):
    from geognn.train.config import TrainConfig
    from geognn.train.loop import train

    config = TrainConfig(
        dataset="extxyz",
        data_root=str(MD17),
        unit="kcal/mol",
        forces_weight=100.0,
        limit=frames,
        backbone="painn",
        backbone_kwargs={"hidden_channels": 32, "num_layers": 2},
        cutoff=5.0,
        batch_size=8,
        lr=0.002,
        epochs=epochs,
        time_limit=0,
        threads=1,
        out=str(out),
    )
    return train(config, progress=False)


def run_nve(checkpoint: Path, dtype: str, steps: int, timestep_fs: float, seed: int):
    from ase.io import read
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    from geognn import GeoGNNCalculator

    atoms = read(MD17, index=-1)
    atoms.calc = GeoGNNCalculator(str(checkpoint), dtype=dtype)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(seed))
    Stationary(atoms)
    row = nve_energy_drift(atoms, steps, timestep_fs)
    return row, atoms.get_positions()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=400, help="training frames (default: 400)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (default: 4)")
    parser.add_argument("--steps", type=int, default=1000, help="NVE steps (default: 1000)")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs (default: 0.5)")
    parser.add_argument("--seeds", type=int, default=5, help="initial velocities, one run each (default: 5)")
    parser.add_argument("--quick", action="store_true", help="80 frames, 1 epoch, 20 steps, 2 seeds")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.epochs, args.steps, args.seeds = 80, 1, 20, 2
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = train_model(Path(tmp) / "run", args.frames, args.epochs)
        checkpoint = Path(tmp) / "run" / "model.pt"
        payload = {
            "benchmark": "md_drift_trained",
            "quick": args.quick,
            "argv": sys.argv[1:],
            "machine": machine_info(),
            "model": "painn 32 channels, 2 layers, cutoff 5 Å, trained on MD17 ethanol",
            "training": {"frames": args.frames, "epochs": args.epochs, "test_metrics": result.test_metrics},
            "md": {"steps": args.steps, "timestep_fs": args.timestep, "start": "last frame of the file, 300 K"},
        }
        apart = []
        for seed in range(args.seeds):
            positions = {}
            for dtype in ("float32", "float64"):
                row, positions[dtype] = run_nve(checkpoint, dtype, args.steps, args.timestep, seed)
                payload.setdefault(dtype, {"runs": []})["runs"].append(row)
                print(f"seed {seed} {dtype}: {row}", flush=True)
            apart.append(float(np.linalg.norm(positions["float32"] - positions["float64"], axis=1).max()))
    for dtype in ("float32", "float64"):
        runs = payload[dtype]["runs"]
        payload[dtype]["median"] = {key: float(np.median([r[key] for r in runs])) for key in runs[0]}
        payload[dtype]["median_abs_final_drift_meV_per_atom"] = float(
            np.median([abs(r["final_drift_meV_per_atom"]) for r in runs])
        )
    payload["trajectories_apart_A"] = apart
    name = "md_drift_trained" + ("_quick" if args.quick else "") + ".json"
    written = write_results(payload, RESULTS / name)
    for dtype in ("float32", "float64"):
        print(dtype, "medians over seeds:", payload[dtype]["median"])
    print(f"test metrics {result.test_metrics}; trajectories end {apart} Å apart\nresults: {written}")
    return payload


if __name__ == "__main__":
    main()
