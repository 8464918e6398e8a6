"""Rotation error of TRAINED QM9 models: |E(R x) - E(x)| in meV on their own test molecules.

What it measures
    For each run folder given (written by ``geognn train`` or ``accuracy_qm9.py``: model.pt and
    split.json over the shipped QM9 subset), the model in eval mode predicts the energy of the
    first --molecules test molecules, and of the same molecules under --rotations uniformly random
    rotations each (``geognn.testing.random_rotation``, seed 0). Reported: median, 95th percentile and max of |E(R x) - E(x)|
    in meV, next to the run's test MAE (result.json) for scale. For exactly invariant backbones
    this is round-off; for PΘNITA it is the grid's discretisation error after training, which
    can differ a lot from the random-weight error of bench_ponita.py (training shapes how fast
    the kernels vary with orientation).

Run
    .venv/bin/python benchmarks/rotation_error_trained.py runs/accuracy_qm9/ponita runs/accuracy_qm9/pnita
    Results: printed, and benchmarks/results/rotation_error_trained.json (--out).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, machine_info, write_results


def energies(model, structures, cutoff: float) -> np.ndarray:
    """Energies [n] in eV of ``structures`` (one batch)."""
    import geognn

    batch = geognn.collate([geognn.build_graph(a, cutoff) for a in structures])
    with torch.no_grad():
        return model(batch, forces=False)["energy"].double().numpy()


def measure(run: Path, num_molecules: int, num_rotations: int, seed: int) -> dict:
    import geognn
    from geognn.datasets import open_dataset
    from geognn.testing import random_rotation, transformed
    from geognn.train.config import TrainConfig

    config = TrainConfig.from_file(run / "config.json")
    model = geognn.load_model(run / "model.pt").eval()
    dataset = open_dataset("qm9", config.data_path)
    test = json.loads((run / "split.json").read_text())["test"][:num_molecules]
    molecules = [dataset[i] for i in test]
    reference = energies(model, molecules, config.cutoff)
    rng = np.random.default_rng(seed)
    errors = []
    for _ in range(num_rotations):
        rotated = [transformed(atoms, random_rotation(rng)) for atoms in molecules]
        errors.append(np.abs(energies(model, rotated, config.cutoff) - reference) * 1e3)
    errors = np.concatenate(errors)
    result_file = run / "result.json"
    mae = json.loads(result_file.read_text()).get("test_mae_eV") if result_file.exists() else None
    return {
        "run": str(run),
        "backbone": config.backbone,
        "backbone_kwargs": config.resolved_backbone_kwargs(),
        "molecules": len(molecules),
        "rotations": num_rotations,
        "median_meV": float(np.median(errors)),
        "p95_meV": float(np.percentile(errors, 95)),
        "max_meV": float(errors.max()),
        "test_mae_meV": None if mae is None else 1e3 * float(mae),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (model.pt, split.json, config.json)")
    ap.add_argument("--molecules", type=int, default=64, help="test molecules per run (default 64)")
    ap.add_argument("--rotations", type=int, default=4, help="random rotations per molecule (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "rotation_error_trained.json")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", module="geognn")
    rows = [measure(run, args.molecules, args.rotations, args.seed) for run in args.runs]
    print("| run | backbone keywords | test MAE (meV) | rotation error median / 95% / max (meV) |")
    print("|---|---|---:|---|")
    for r in rows:
        mae = "?" if r["test_mae_meV"] is None else f"{r['test_mae_meV']:.1f}"
        print(
            f"| {Path(r['run']).name} | `{json.dumps(r['backbone_kwargs'])}` | {mae} | "
            f"{r['median_meV']:.1f} / {r['p95_meV']:.1f} / {r['max_meV']:.1f} |"
        )
    payload = {"benchmark": "rotation_error_trained", "machine": machine_info(), "rows": rows}
    print("wrote", write_results(payload, args.out))
    return payload


if __name__ == "__main__":
    main()
