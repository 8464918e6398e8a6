"""PΘNITA's rotation error on each grid construction, at equal numbers of orientations.

What it measures
    For each grid in --grids (fibonacci, antipodal, repulsion) and each count in --num-ori, the
    rotation error of random-weight PΘNITA models (float64, eval, 3 layers, 16 channels, basis 16,
    degree 3, widening 2, cutoff 4 Å; per-atom scale 0.5 eV and reference energies as in
    tests/test_model.py), one model per seed in 0 .. --seeds - 1, each checked with
    ``geognn.testing.check_rotation`` (one random rotation per structure, numpy seed = model seed)
    on 6 molecules (``ase.build.molecule``: CH4, C6H6, CH3CH2OH, H2O, CH3COOH, C2H4) and 3 cells
    rattled by 0.05 Å (diamond Si, rock-salt NaCl, fcc Cu, conventional cells): the learned
    energy's error |E(Rx) - E(x)| / n_atoms (meV/atom) and the largest force error
    max_i |F_i(Rx) - F_i(x) R^T| (meV/Å). Reported: median and 90th percentile over
    seeds x structures. The structures are built here, not read from the shared data.

    The antipodal grid (every orientation's opposite on the grid) lets an edge and its reverse
    share one kernel computation (geognn.backbones.ponita); this script measures what that grid
    costs in rotation error against the Fibonacci lattice and the Thomson-relaxed grid.

Run
    .venv/bin/python benchmarks/grid_rotation_error.py              # ~8 min on one core
    .venv/bin/python benchmarks/grid_rotation_error.py --quick      # smoke test
    Results: benchmarks/results/grid_rotation_error.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from _common import RESULTS, device_info, write_results
from ase.build import bulk, molecule

import geognn
from geognn import testing as T

CUTOFF = 4.0
MODEL = dict(hidden_channels=16, num_layers=3, basis_dim=16, degree=3, widening_factor=2)
MOLECULES = ("CH4", "C6H6", "CH3CH2OH", "H2O", "CH3COOH", "C2H4")


def structures():
    rng = np.random.default_rng(0)
    cells = [
        bulk("Si", "diamond", 5.43, cubic=True),
        bulk("NaCl", "rocksalt", 5.64, cubic=True),
        bulk("Cu", "fcc", 3.6, cubic=True),
    ]
    for cell in cells:
        cell.positions += rng.normal(scale=0.05, size=cell.positions.shape)
    return [molecule(name) for name in MOLECULES] + cells


def model_with(seed: int, **kwargs) -> geognn.Model:
    torch.manual_seed(seed)
    model = geognn.build_model("ponita", cutoff=CUTOFF, **MODEL, **kwargs).double().eval()
    model.reference.energies[1:] = -torch.arange(1, model.reference.energies.numel(), dtype=torch.float64) * 0.3
    model.set_scale_shift(0.5, 0.1)
    return model


def measure(grids, num_oris, seeds: int) -> dict:
    atoms_list = structures()
    rows = {}
    for n in num_oris:
        for grid in grids:
            energy, forces = [], []
            for seed in range(seeds):
                model = model_with(seed, num_ori=n, grid=grid)
                rng = np.random.default_rng(seed)
                for atoms in atoms_list:
                    result = T.check_rotation(model, atoms, rng)
                    energy.append(1e3 * result.errors["energy"])
                    forces.append(1e3 * result.errors["forces"])
            rows[f"{grid}@{n}"] = {
                "grid": grid,
                "num_ori": n,
                "energy_meV_per_atom_median": float(np.median(energy)),
                "energy_meV_per_atom_p90": float(np.percentile(energy, 90)),
                "forces_meV_per_A_median": float(np.median(forces)),
                "forces_meV_per_A_p90": float(np.percentile(forces, 90)),
                "samples": len(energy),
            }
            print(f"{grid}@{n}: {rows[f'{grid}@{n}']}", file=sys.stderr, flush=True)
    return rows


def markdown(rows: dict) -> str:
    lines = [
        "| num_ori | grid | energy meV/atom (median / p90) | forces meV/Å (median / p90) |",
        "|---:|---|---|---|",
    ]
    for r in rows.values():
        lines.append(
            f"| {r['num_ori']} | {r['grid']} | {r['energy_meV_per_atom_median']:.1f} / "
            f"{r['energy_meV_per_atom_p90']:.1f} | {r['forces_meV_per_A_median']:.0f} / {r['forces_meV_per_A_p90']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grids", default="fibonacci,antipodal,repulsion", help="(default: %(default)s)")
    parser.add_argument("--num-ori", default="16,20,32", help="even counts (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=16, help="random models per cell (default: 16)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 16 orientations, 1 seed")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    grids = [g.strip() for g in args.grids.split(",") if g.strip()]
    num_oris = [16] if args.quick else [int(x) for x in args.num_ori.split(",")]
    rows = measure(grids, num_oris, 1 if args.quick else args.seeds)
    payload = {
        "benchmark": "grid_rotation_error",
        "quick": args.quick,
        "argv": sys.argv[1:],
        "machine": device_info(torch.device("cpu")),
        "model": MODEL,
        "cutoff_A": CUTOFF,
        "rows": rows,
    }
    name = "grid_rotation_error" + ("_quick" if args.quick else "") + ".json"
    written = write_results(payload, RESULTS / name)
    sys.stdout.write(markdown(rows) + f"\n\nresults: {written}\n")
    return payload


if __name__ == "__main__":
    main()
