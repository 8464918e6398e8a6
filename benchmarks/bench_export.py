"""Exported (TorchScript, ``geognn export``) vs eager ``Model``: energy + forces time per call.

What it measures
    One call = the energy of one structure and its forces by autograd (forces = -dE/dpos), model
    in eval mode, untrained weights at the backbone's default size (``--small``: 64 channels, 3
    layers). Eager: ``model(graph, forces=True)``. Exported: the file ``geognn.export`` writes,
    loaded with ``torch.jit.load`` and called on the same graph's tensors. Also checks that both
    give the same energy (eV) and forces (eV/Å) and prints the largest difference.

    Structure: diamond Si, conventional cell repeated 2x2x2 (64 atoms), rattled by 0.05 Å (seed 0),
    periodic, cutoff 5 Å (1,792 edges); graph building is outside the timed region.

How
    ``--warmup`` calls (default 3; TorchScript optimises during its first calls), then ``--repeats``
    timed calls (default 9) of each, eager and exported interleaved so that background load hits
    both alike; median times (time.perf_counter) and the ratio eager / exported (> 1: the file is
    faster). ``--threads`` (default 1) sets torch.set_num_threads. On a shared machine run it
    when idle, or read the ratio only.

Run
    .venv/bin/python benchmarks/bench_export.py                       # schnet, painn
    .venv/bin/python benchmarks/bench_export.py --backbones schnet,painn,egnn,ponita,pnita --small
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from ase.build import bulk

from geognn import build_graph, build_model
from geognn.export import export_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="schnet,painn", help="comma-separated (default: schnet,painn)")
    parser.add_argument("--small", action="store_true", help="64 channels, 3 layers instead of defaults")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default: 1)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default: 3)")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls of each (default: 9)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=0)
    graph = build_graph(atoms, 5.0)
    inputs = (graph.pos, graph.z, graph.cell[0], graph.edge_index, graph.edge_shift.round().long())
    print(f"{len(atoms)} atoms, {graph.edge_index.shape[1]} edges, {args.threads} thread(s)")
    print(
        f"{'backbone':10s} {'eager ms':>9s} {'exported ms':>12s} {'eager/exported':>15s} {'max |dE| eV':>12s} {'max |dF| eV/Å':>14s}"
    )
    sizes = dict(hidden_channels=64, num_layers=3) if args.small else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [b.strip() for b in args.backbones.split(",") if b.strip()]:
            model = build_model(name, cutoff=5.0, **sizes).eval()
            module = torch.jit.load(str(export_model(model, Path(tmp) / f"{name}.pt")))
            ref = model(graph, forces=True)
            energy, forces = module(*inputs)
            d_e = abs(float(energy) - float(ref["energy"].detach()))
            d_f = float((forces - ref["forces"].detach()).abs().max())
            calls = {"eager": lambda: model(graph, forces=True), "exported": lambda: module(*inputs)}
            for _ in range(args.warmup):
                for call in calls.values():
                    call()
            times = {key: [] for key in calls}
            for _ in range(args.repeats):
                for key, call in calls.items():
                    start = time.perf_counter()
                    call()
                    times[key].append(time.perf_counter() - start)
            eager, exported = (statistics.median(times[k]) for k in ("eager", "exported"))
            print(
                f"{name:10s} {eager * 1e3:9.1f} {exported * 1e3:12.1f} {eager / exported:15.2f} {d_e:12.2e} {d_f:14.2e}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
