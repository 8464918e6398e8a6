"""PΘNITA: rotation error, throughput and peak memory against the number of orientations.

What it measures
    1. Rotation error (the price of the sphere grid). One PΘNITA model (float64, eval, random
       weights, seed 0, per-atom scale 0.5 eV and reference energies as in tests/test_model.py) is
       evaluated with num_ori in --num-ori (default 4, 8, 16, 20, 32, 64) on the Fibonacci lattice
       (``grid="fibonacci"``; benchmarks/grid_rotation_error.py compares grids) using the SAME weights:
       no weight depends on the grid, so the state_dict of one loads into the others, and the
       continuous model (num_ori -> infinity) is exactly rotation invariant. For each structure
       and each of --rotations random rotations R (numpy, seed 0), on the learned energy (the
       per-element reference energies removed, geognn.testing.predict(reference=False)):
           energy error  = |E(R x) - E(x)| / n_atoms                        meV/atom
           forces error  = max_i |F_i(R x) - F_i(x) R^T|                    meV/Å
       the table gives the median and the max over structures x rotations. Structures: 8 QM9
       molecules (cutoff 5 Å) and 4 crystals (3 JARVIS cells of <= 12 atoms and OC20 slab 2,
       cutoff 5 Å; stress is not included). PNITA (exactly invariant) is measured the same way
       as a control: its errors are round-off.
    2. Throughput and peak memory, as benchmarks/bench_backbones.py measures them (helpers in
       _common.py): one step = energies + forces by autograd of one batch (32 QM9 molecules,
       cutoff 5 Å; the 8 OC20 IS2RE systems, periodic, cutoff 6 Å), float32, eval mode, models
       interleaved in the same timing rounds. Models: ponita with num_ori in --num-ori on the
       Fibonacci lattice (other hyperparameters the defaults; with --antipodal also on
       grid="antipodal" for even num_ori, same weights: the default grid "auto" at even num_ori), pnita, and geognn's painn and mace with their defaults
       (parameter counts printed: ponita ~0.9 M, painn 0.59 M, mace 0.69 M). The ratio column
       is structures/s of the model divided by structures/s of painn (and of mace) in the same run.

Run
    .venv/bin/python benchmarks/bench_ponita.py                 # everything, CPU (~10 min on 2 cores)
    .venv/bin/python benchmarks/bench_ponita.py --quick         # smoke test
    .venv/bin/python benchmarks/bench_ponita.py --skip-speed    # rotation errors only
    .venv/bin/python benchmarks/bench_ponita.py --device cuda
    Results: benchmarks/results/bench_ponita_errors.json (part 1) and bench_ponita_speed[_<device>].json
    (part 2) (a _quick suffix with --quick), and markdown tables on stdout.
    On a shared machine timings are noisy: the load average is recorded with the results.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings

import numpy as np
import torch
from _common import (
    DATA,
    RESULTS,
    device_info,
    load_qm9,
    oc20_graphs,
    peak_memory_bytes,
    qm9_graphs,
    time_interleaved,
    write_results,
)

DEFAULT_NUM_ORI = (4, 8, 16, 20, 32, 64)
#: A small model for the error measurement: the error is a property of the grid, not of the width.
ERROR_MODEL = dict(hidden_channels=32, num_layers=3, basis_dim=32)
ERROR_CUTOFF = 5.0


def structures():
    """8 QM9 molecules and 4 crystals (3 JARVIS cells <= 12 atoms, OC20 slab 2) as ase.Atoms."""
    import ase.io
    from ase import Atoms

    molecules = load_qm9(8)
    files = sorted((DATA / "cif" / "jarvis_alignn_sample").glob("*.vasp"))
    crystals = [a for a in (ase.io.read(f, format="vasp") for f in files) if len(a) <= 12][:3]
    batch = torch.load(DATA / "oc20" / "faenet_is2re_bs8.pt", weights_only=False)
    g = batch.to_data_list()[2]
    crystals.append(
        Atoms(
            numbers=g.atomic_numbers.long().numpy(),
            positions=g.pos.double().numpy(),
            cell=g.cell[0].double().numpy(),
            pbc=True,
        )
    )
    return {"molecules": list(molecules), "crystals": crystals}


def error_model(name: str, **kwargs):
    """float64 eval model with eV-sized energies (as tests/test_model.py's small_model)."""
    import geognn

    torch.manual_seed(0)
    model = geognn.build_model(name, cutoff=ERROR_CUTOFF, **ERROR_MODEL, **kwargs).double().eval()
    model.reference.energies[1:] = -torch.arange(1, model.reference.energies.numel(), dtype=torch.float64) * 0.3
    model.set_scale_shift(0.5, 0.1)
    return model


def with_num_ori(model, num_ori: int):
    """The same weights evaluated on a grid of ``num_ori`` orientations."""
    import geognn

    other = geognn.build_model("ponita", cutoff=model.cutoff, **{**model.backbone_kwargs, "num_ori": num_ori})
    other = other.double().eval()
    other.load_state_dict(model.state_dict())
    return other


def rotation_errors(model, atoms_list, rotations) -> dict:
    """Energy (meV/atom) and force (meV/Å) errors under the given rotations (see module docstring)."""
    from geognn import testing as T

    energy, forces = [], []
    for atoms in atoms_list:
        rotated = [T.transformed(atoms, rot) for rot in rotations]
        outs = T.predict(model, [atoms] + rotated, stress=False, reference=False)
        ref = outs[0]
        for rot, got in zip(rotations, outs[1:]):
            energy.append(1e3 * abs(got["energy"] - ref["energy"]) / len(atoms))
            forces.append(1e3 * float(np.linalg.norm(got["forces"] - ref["forces"] @ rot.T, axis=-1).max()))
    return {
        "energy_meV_per_atom_median": statistics.median(energy),
        "energy_meV_per_atom_max": max(energy),
        "forces_meV_per_A_median": statistics.median(forces),
        "forces_meV_per_A_max": max(forces),
    }


def error_table(num_oris, n_rotations: int) -> dict:
    from geognn import testing as T

    rng = np.random.default_rng(0)
    rotations = [T.random_rotation(rng) for _ in range(n_rotations)]
    data = structures()
    base = error_model("ponita", num_ori=num_oris[0], grid="fibonacci")
    rows = {}
    for n in num_oris:
        model = with_num_ori(base, n)
        rows[f"ponita@{n}"] = {kind: rotation_errors(model, atoms, rotations) for kind, atoms in data.items()}
    pnita = error_model("pnita")
    rows["pnita"] = {kind: rotation_errors(pnita, atoms, rotations) for kind, atoms in data.items()}
    return {
        "model": ERROR_MODEL,
        "cutoff_A": ERROR_CUTOFF,
        "rotations": n_rotations,
        "n_molecules": len(data["molecules"]),
        "n_crystals": len(data["crystals"]),
        "rows": rows,
    }


def speed_table(num_oris, device, warmup: int, repeats: int, n_oc20: int, antipodal: bool = False) -> dict:
    import geognn

    out = {}
    for dataset, cutoff in (("qm9", 5.0), ("oc20", 6.0)):
        graphs = qm9_graphs(32, cutoff) if dataset == "qm9" else oc20_graphs(n_oc20, cutoff)
        batch = geognn.collate(graphs).to(device)
        models = {}
        for n in num_oris:
            torch.manual_seed(0)
            models[f"ponita@{n}"] = geognn.build_model("ponita", cutoff=cutoff, num_ori=n, grid="fibonacci")
            if antipodal and n % 2 == 0:  # the same weights on the antipodal grid (paired edges)
                models[f"ponita@{n} antipodal"] = geognn.build_model(
                    "ponita", cutoff=cutoff, num_ori=n, grid="antipodal"
                )
                models[f"ponita@{n} antipodal"].load_state_dict(models[f"ponita@{n}"].state_dict())
        unavailable = {}
        for name in ("pnita", "painn", "mace"):
            torch.manual_seed(0)
            try:
                models[name] = geognn.build_model(name, cutoff=cutoff)
            except Exception as exc:  # noqa: BLE001 - e.g. an e3nn version mace cannot use
                unavailable[name] = f"{type(exc).__name__}: {exc}"[:200]
        steps = {}
        for name, model in models.items():
            model.to(device).eval()

            def step(model=model):
                out = model(batch, forces=True)
                return out["forces"]

            steps[name] = step
        times = time_interleaved(steps, device, warmup, repeats)
        rows = {}
        for name, model in models.items():
            median = statistics.median(times[name])
            rows[name] = {
                "parameters": sum(p.numel() for p in model.parameters()),
                "median_s": median,
                "structures_per_s": len(graphs) / median,
                "peak_memory_MiB": peak_memory_bytes(steps[name], device) / 2**20,
            }
        for name in rows:
            for ref in ("painn", "mace"):
                if ref in rows:
                    rows[name][f"speed_vs_{ref}"] = rows[name]["structures_per_s"] / rows[ref]["structures_per_s"]
                    rows[name][f"memory_vs_{ref}"] = rows[name]["peak_memory_MiB"] / rows[ref]["peak_memory_MiB"]
        out[dataset] = {
            "cutoff_A": cutoff,
            "n_structures": len(graphs),
            "n_atoms": int(batch.z.numel()),
            "n_edges": int(batch.edge_index.shape[1]),
            "rows": rows,
            "unavailable": unavailable,
        }
    return out


def markdown(errors: dict | None, speed: dict | None) -> str:
    lines = []
    if errors:
        lines += [
            "| model | molecules: energy meV/atom (median / max) | molecules: forces meV/Å (median / max) "
            "| crystals: energy meV/atom (median / max) | crystals: forces meV/Å (median / max) |",
            "|---|---|---|---|---|",
        ]
        for name, row in errors["rows"].items():
            cells = []
            for kind in ("molecules", "crystals"):
                r = row[kind]
                cells += [
                    f"{r['energy_meV_per_atom_median']:.2g} / {r['energy_meV_per_atom_max']:.2g}",
                    f"{r['forces_meV_per_A_median']:.2g} / {r['forces_meV_per_A_max']:.2g}",
                ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if speed:
        for dataset, table in speed.items():
            lines += [
                "",
                f"{dataset}: {table['n_structures']} structures, {table['n_atoms']} atoms, "
                f"{table['n_edges']} edges, cutoff {table['cutoff_A']} Å",
                "| model | parameters | structures/s | vs painn | vs mace | peak MiB | mem vs painn |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            for name, r in table["rows"].items():
                ratio = {k: r.get(k, float("nan")) for k in ("speed_vs_painn", "speed_vs_mace", "memory_vs_painn")}
                lines.append(
                    f"| {name} | {r['parameters']:,} | {r['structures_per_s']:.1f} | "
                    f"{ratio['speed_vs_painn']:.2f} | {ratio['speed_vs_mace']:.2f} | "
                    f"{r['peak_memory_MiB']:.0f} | {ratio['memory_vs_painn']:.2f} |"
                )
            lines += [f"{name}: unavailable ({why})" for name, why in table["unavailable"].items()]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--num-ori",
        default=",".join(map(str, DEFAULT_NUM_ORI)),
        help="comma-separated grid sizes (default: %(default)s)",
    )
    parser.add_argument("--rotations", type=int, default=4, help="random rotations per structure (default: 4)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=0, help="timed steps per model (default: 10 CPU, 30 GPU)")
    parser.add_argument("--oc20-systems", type=int, default=8, help="OC20 systems in the batch (default: 8)")
    parser.add_argument("--quick", action="store_true", help="smoke test: num_ori 4,16; 2 rotations; 3 steps")
    parser.add_argument(
        "--antipodal", action="store_true", help="also time ponita on the antipodal grid (even num_ori)"
    )
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-errors", action="store_true")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*no neighbour.*")
    num_oris = [4, 16] if args.quick else [int(x) for x in args.num_ori.split(",")]
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    errors = None if args.skip_errors else error_table(num_oris, 2 if args.quick else args.rotations)
    warmup, repeats = (1, 3) if args.quick else (2, args.repeats or (10 if device.type == "cpu" else 30))
    n_oc20 = 2 if args.quick else args.oc20_systems
    speed = None if args.skip_speed else speed_table(num_oris, device, warmup, repeats, n_oc20, args.antipodal)
    payload = {
        "benchmark": "bench_ponita",
        "quick": args.quick,
        "argv": sys.argv[1:],
        "machine": device_info(device),
        "rotation_errors": errors,
        "speed": speed,
    }
    suffix = ("" if device.type == "cpu" else f"_{device.type}") + ("_quick" if args.quick else "")
    written = []
    if errors is not None:  # float64 on CPU whatever --device says: independent of the machine's load
        name = f"bench_ponita_errors{'_quick' if args.quick else ''}.json"
        written.append(write_results({**payload, "speed": None}, RESULTS / name))
    if speed is not None:
        name = f"bench_ponita_speed{suffix}.json"
        written.append(write_results({**payload, "rotation_errors": None}, RESULTS / name))
    sys.stdout.write(markdown(errors, speed) + f"\n\nresults: {', '.join(written)}\n")
    return payload


if __name__ == "__main__":
    main()
