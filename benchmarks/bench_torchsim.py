"""Batched MD through TorchSim (``geognn.integrations.torchsim.GeoGNNModel``) against one-by-one ASE.

What it measures
    Atom-steps per second (total atoms x MD steps / wall seconds) of NVE Velocity Verlet (1 fs,
    300 K Maxwell-Boltzmann start, seeded) on ``--structures`` rattled diamond Si cells
    (``ase.build.bulk("Si", "diamond", a=5.43, cubic=True)`` repeated ``--repeat`` times per axis,
    periodic, rattled 0.05 Å with a different seed each), with the same untrained geognn model:

    - ``torchsim``: all structures in one TorchSim state, ``ts.integrate(..., integrator=ts.nve)``:
      one graph per structure from geognn's neighbour list, one model call for the whole batch per step;
    - ``ase``: one structure after the other, ASE's ``VelocityVerlet`` through ``GeoGNNCalculator``.

    Both compute energy, forces and stress at each step (GeoGNNModel's default compute_stress=True,
    and the calculator on a periodic cell) and make steps + 1 force calls per structure (the start
    included). The model is untrained, at its constructor defaults with cutoff 5 Å (schnet by default:
    128 channels x 6 interactions), or with ``--small`` at ``geognn.backbones.SMALL_SETTINGS`` (schnet:
    16 channels x 2 interactions), where per-call overhead rather than arithmetic dominates; timing
    does not depend on the weights. The two ways alternate over
    ``--passes`` passes (order reversed every other pass), and the median pass is reported.

    On one CPU thread, batching saves Python and per-call overhead only; the gain a GPU gets from
    filling the device with many small structures is not measured here.

Usage
    .venv/bin/python benchmarks/bench_torchsim.py --threads 1                    # 8 x 64 atoms, 10 steps
    .venv/bin/python benchmarks/bench_torchsim.py --threads 1 --small --out benchmarks/results/bench_torchsim_small.json
    .venv/bin/python benchmarks/bench_torchsim.py --structures 4 --repeat 1 --steps 5 --passes 1   # smoke

Writes ``benchmarks/results/bench_torchsim.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from _common import RESULTS, machine_info, write_results


def structures(n: int, repeat: int):
    from ase.build import bulk

    out = []
    for k in range(n):
        atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeat)
        atoms.rattle(0.05, seed=k)
        out.append(atoms)
    return out


def run_torchsim(ts_model, atoms_list, steps: int) -> float:
    import torch_sim as ts

    state = ts.io.atoms_to_state(atoms_list, ts_model.device, ts_model.dtype)
    start = time.perf_counter()  # timestep in ps (TorchSim's metal units): 1 fs
    ts.integrate(state, ts_model, integrator=ts.nve, n_steps=steps, temperature=300.0, timestep=0.001, seed=0)
    return time.perf_counter() - start


def run_ase(calc, atoms_list, steps: int) -> float:
    import numpy as np
    from ase import units
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    copies = []
    for k, atoms in enumerate(atoms_list):
        atoms = atoms.copy()
        thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(k))  # Maxwell-Boltzmann
        atoms.calc = calc
        copies.append(atoms)
    start = time.perf_counter()
    for atoms in copies:
        VelocityVerlet(atoms, timestep=1.0 * units.fs).run(steps)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="schnet")
    parser.add_argument(
        "--small", action="store_true", help="the backbone at geognn.backbones.SMALL_SETTINGS (overhead-bound)"
    )
    parser.add_argument("--structures", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2, help="cubic 8-atom Si cell repeated this often per axis")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_torchsim.json")
    args = parser.parse_args(argv)

    import torch

    from geognn import GeoGNNCalculator, build_model
    from geognn.backbones import SMALL_SETTINGS
    from geognn.integrations.torchsim import GeoGNNModel

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    kwargs = SMALL_SETTINGS[args.backbone] if args.small else {}
    model = build_model(args.backbone, cutoff=5.0, stress=True, **kwargs).to(dtype).eval()
    ts_model = GeoGNNModel(model, device="cpu", dtype=dtype)
    calc = GeoGNNCalculator(model, dtype=dtype)
    atoms_list = structures(args.structures, args.repeat)
    n_atoms = sum(len(a) for a in atoms_list)

    run_torchsim(ts_model, atoms_list, 1)  # warm-up
    run_ase(calc, atoms_list[:1], 1)
    times = {"torchsim": [], "ase": []}
    for p in range(args.passes):
        order = ["torchsim", "ase"] if p % 2 == 0 else ["ase", "torchsim"]
        for name in order:
            fn = run_torchsim if name == "torchsim" else run_ase
            times[name].append(fn(ts_model if name == "torchsim" else calc, atoms_list, args.steps))
    rows = {}
    for name, ts_ in times.items():
        med = statistics.median(ts_)
        rows[name] = {"seconds_per_pass": ts_, "median_s": med, "atom_steps_per_s": n_atoms * args.steps / med}
    ratio = rows["torchsim"]["atom_steps_per_s"] / rows["ase"]["atom_steps_per_s"]
    payload = {
        "benchmark": "bench_torchsim",
        "settings": vars(args) | {"out": str(args.out)},
        "n_atoms_total": n_atoms,
        "atoms_per_structure": len(atoms_list[0]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "results": rows,
        "torchsim_over_ase": ratio,
        "machine": machine_info(("numpy", "torch", "torch_sim", "ase", "geognn")),
    }
    path = write_results(payload, args.out)
    print(
        f"{args.backbone}{' (small)' if args.small else ''} {args.dtype}, {args.structures} x {len(atoms_list[0])} atoms, {args.steps} steps: "
        f"torchsim {rows['torchsim']['atom_steps_per_s']:.0f} atom-steps/s, "
        f"ase {rows['ase']['atom_steps_per_s']:.0f} atom-steps/s, ratio {ratio:.2f} -> {path}"
    )


if __name__ == "__main__":
    main()
