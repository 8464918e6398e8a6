"""Scale of untrained models: learned energy per atom and force magnitudes at initialisation.

What it does
    Builds each backbone at its default size (cutoff 6 Å, seeds 0 and 1, float32, no reference
    energies: a fresh model has none) and reports, per set of structures, the largest |E| per atom
    (eV/atom), the mean and largest |F| (eV/Å) and the mean number of neighbours per atom. Sets:
    8 QM9 molecules, the first 10 JARVIS crystals and 10 MP-20 crystals, and the 8 OC20 IS2RE
    slabs. An untrained model should give values of order 1 (geognn.testing.check_initial_scale
    allows up to 10); FAENet gave up to 1e4 eV/atom on molecules and 1e11 on crystals before its
    messages were normalised by the neighbour count (run this script at commit 1e0ae21 to see).

Run
    .venv/bin/python benchmarks/init_scale.py                       # faenet, schnet, painn
    .venv/bin/python benchmarks/init_scale.py --backbones faenet --frame-averaging all
    Results: benchmarks/results/init_scale.json
"""

from __future__ import annotations

import argparse
import io
import warnings

import pandas as pd
import torch
from _common import DATA, RESULTS, load_qm9, machine_info, write_results
from ase import Atoms
from ase.io import read


def structure_sets() -> dict[str, list[Atoms]]:
    jarvis = [read(f, format="vasp") for f in sorted((DATA / "cif" / "jarvis_alignn_sample").glob("*.vasp"))[:10]]
    mp20 = [
        read(io.StringIO(c), format="cif") for c in pd.read_csv(DATA / "cif" / "mp20_subset" / "train.csv").cif[:10]
    ]
    slabs = []
    for g in torch.load(DATA / "oc20" / "faenet_is2re_bs8.pt", weights_only=False).to_data_list():
        slabs.append(
            Atoms(
                numbers=g.atomic_numbers.long().numpy(),
                positions=g.pos.double().numpy(),
                cell=g.cell[0].double().numpy(),
                pbc=True,
            )
        )
    return {
        "QM9 molecules (8)": load_qm9(8),
        "JARVIS crystals (10)": jarvis,
        "MP-20 crystals (10)": mp20,
        "OC20 slabs (8)": slabs,
    }


def measure(backbone: str, frame_averaging: str | None, sets: dict, seeds=(0, 1), cutoff: float = 6.0) -> dict:
    import geognn

    rows = {}
    for seed in seeds:
        torch.manual_seed(seed)
        model = geognn.build_model(backbone, cutoff=cutoff, frame_averaging=frame_averaging).eval()
        for name, structures in sets.items():
            energies, forces, neighbours = [], [], []
            for atoms in structures:
                graph = geognn.build_graph(atoms, cutoff)
                out = model(geognn.collate([graph]))
                energies.append(abs(float(out["energy"])) / len(atoms))
                forces.append(out["forces"].detach().norm(dim=-1))
                neighbours.append(graph.edge_index.shape[1] / len(atoms))
            f = torch.cat(forces)
            rows.setdefault(name, []).append(
                {
                    "seed": seed,
                    "max_abs_energy_per_atom_eV": max(energies),
                    "mean_force_eV_A": float(f.mean()),
                    "max_force_eV_A": float(f.max()),
                    "neighbours_per_atom": sum(neighbours) / len(neighbours),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="faenet,schnet,painn")
    parser.add_argument("--frame-averaging", default=None, help="all, stochastic, det (default: none)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    sets = structure_sets()
    results = {}
    for backbone in args.backbones.split(","):
        results[backbone] = measure(backbone, args.frame_averaging, sets)
        for name, runs in results[backbone].items():
            print(
                f"{backbone:8s} {name:22s} "
                + " | ".join(
                    f"seed {r['seed']}: max|E|/atom {r['max_abs_energy_per_atom_eV']:.3g} eV, "
                    f"mean|F| {r['mean_force_eV_A']:.3g} eV/Å"
                    for r in runs
                ),
                flush=True,
            )
    payload = {
        "benchmark": "init_scale",
        "cutoff_A": 6.0,
        "frame_averaging": args.frame_averaging,
        "results": results,
        "machine": machine_info(),
    }
    print("results:", write_results(payload, RESULTS / "init_scale.json"))


if __name__ == "__main__":
    main()
