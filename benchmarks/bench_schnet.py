"""SchNet energy + forces throughput and peak memory: geognn vs PyG's ``SchNet``.

What it measures
    One "step" = energy of every structure in a batch plus forces by autograd
    (forces = -d(sum E)/d pos; a forward and a backward pass, no parameter gradients,
    models in eval mode). Reported per model: median seconds per step, structures/s, atoms/s,
    peak memory of one step, and the throughput ratio geognn / PyG (target >= 1.0).

    Both models: hidden_channels=128, num_filters=128, 6 interaction blocks, 50 Gaussians,
    cosine cutoff; PyG's readout is its default 'add' (sum over atoms), like geognn's energy.
    The two SchNets have the same layers (embedding, 6 x [filter MLP, in-linear, message
    x_j * W, out-linear, ssp, linear], 2-layer readout), but their weights are independent random
    initialisations, so their energies differ: this is a speed benchmark, not an accuracy test.

    Workloads (all data real; parsing and graph building are outside the timed region):
      qm9   32 QM9 molecules (shared/data/qm9/qm9pack_subset_stride26.csv, first rows),
            no periodicity, cutoff 5 Å.
      oc20  the 8 OC20 IS2RE adsorbate+slab systems in shared/data/oc20/faenet_is2re_bs8.pt
            (587 atoms), graphs rebuilt by geognn.build_graph from pos, cell, atomic_numbers with
            pbc=True at cutoff 6 Å (both models use cutoff 6 here).

    Identical edges: PyG's SchNet normally builds a radius graph (torch-cluster, not installed).
    Here its ``interaction_graph`` is a callable returning geognn's precomputed edge_index and
    the distances |pos[j] - pos[i] + S @ cell| computed from ``pos`` on every call, so they are
    differentiable and forces flow through them. The Cartesian image offsets S @ cell are
    constants for forces and are computed once, before timing (PyG models do not take cell
    gradients; geognn recomputes them in every step because it supports stress). Before timing
    the script asserts these distances equal geognn's ``edge_vectors`` norms and that both
    models give finite energies and forces.

How
    3 warm-up steps, then 15 timed steps per model on CPU, 50 on GPU (--quick: 1 and 3;
    --repeats N), the two models interleaved (alternating which goes first) so that
    background load hits both alike; the median is reported (time.perf_counter, with
    torch.cuda.synchronize on GPU). On a machine shared with other jobs, multi-threaded CPU
    timings can be off by several times: run it when the machine is idle (the load average at
    the start is written to the JSON), or compare with --threads 1.
    Peak memory of one step is the highest amount of tensor memory allocated during the step
    above what was allocated when it began:
      * cuda: torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated() at the start,
        after torch.cuda.reset_peak_memory_stats();
      * cpu:  torch.profiler(profile_memory=True): every CPU tensor allocation and free in the
        step is recorded with the allocator's running total; the peak is the largest running
        total. (Process RSS deltas are not used: after warm-up, freed blocks stay in the
        malloc heap and are reused, so RSS barely moves and would under-report.)
    If geognn is slower than PyG on a workload (or with --profile) the script runs
    torch.profiler on one step of each model and prints the ops that take the time.

Run
    .venv/bin/python benchmarks/bench_schnet.py                 # full, CPU, torch's default threads
    .venv/bin/python benchmarks/bench_schnet.py --quick         # smoke test (< 30 s)
    .venv/bin/python benchmarks/bench_schnet.py --threads 1     # torch.set_num_threads(1)
    .venv/bin/python benchmarks/bench_schnet.py --device cuda   # on a GPU machine

    Results go to benchmarks/results/bench_schnet.json (bench_schnet_<device>.json for a
    non-CPU device; a _quick suffix with --quick). Data folder: ../shared/data next to the
    repository, or $GEOGNN_SHARED_DATA.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import (
    RESULTS,
    add_run_options,
    device_info,
    oc20_graphs,
    peak_memory_bytes,
    qm9_graphs,
    setup_run,
    sync,
    time_interleaved,
    write_results,
)

HPARAMS = dict(hidden_channels=128, num_filters=128, num_interactions=6, num_gaussians=50)
THROUGHPUT_TARGET = 1.0  # geognn structures/s divided by PyG structures/s
UNSTABLE_SPREAD = 2.0  # warn when the slowest timed step is this many times the fastest


# --------------------------------------------------------------------------------------- models
class FixedGraph(torch.nn.Module):
    """PyG SchNet ``interaction_graph``: geognn's edges, distances recomputed from ``pos``."""

    def __init__(self, batch):
        super().__init__()
        i = batch.edge_index[1]
        self.register_buffer("edge_index", batch.edge_index.clone())
        offsets = torch.einsum("ek,ekd->ed", batch.edge_shift.to(batch.pos.dtype), batch.cell[batch.batch[i]])
        self.periodic = bool(batch.edge_shift.abs().sum() > 0)
        self.register_buffer("offsets", offsets if self.periodic else offsets[:0])

    def forward(self, pos, batch):
        j, i = self.edge_index
        vec = pos[j] - pos[i]
        if self.periodic:
            vec = vec + self.offsets
        return self.edge_index, vec.norm(dim=-1)


def make_models(batch, cutoff: float, device: torch.device):
    from torch_geometric.nn.models import SchNet as PygSchNet

    import geognn

    torch.manual_seed(0)
    ours = geognn.build_model(
        "schnet",
        cutoff=cutoff,
        hidden_channels=HPARAMS["hidden_channels"],
        num_filters=HPARAMS["num_filters"],
        num_layers=HPARAMS["num_interactions"],
        num_gaussians=HPARAMS["num_gaussians"],
    )
    torch.manual_seed(0)
    pyg = PygSchNet(**HPARAMS, cutoff=cutoff, readout="add", interaction_graph=FixedGraph(batch))
    return ours.eval().to(device), pyg.eval().to(device)


def step_fns(ours, pyg, batch):
    """name -> zero-argument callable doing one energy + forces step; returns (energy [B], forces [N,3])."""

    def geognn_step():
        out = ours(batch, forces=True)
        return out["energy"], out["forces"]

    def pyg_step():
        pos = batch.pos.detach().requires_grad_(True)
        energy = pyg(batch.z, pos, batch.batch).view(-1)
        forces = -torch.autograd.grad(energy.sum(), pos)[0]
        return energy, forces

    return {"geognn": geognn_step, "pyg": pyg_step}


# --------------------------------------------------------------------------------------- measuring
def profile_ops(fns: dict, device, rows: int = 12) -> dict:
    """Self time per aten op for one step of each model: {model: [(op, ms, calls), ...]}."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    table = {}
    for name, fn in fns.items():
        fn()
        with profile(activities=acts) as prof:
            fn()
            sync(device)
        key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        ev = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
        total = sum(getattr(e, key) for e in ev)
        table[name] = {"total_ms": total / 1e3, "ops": [(e.key, getattr(e, key) / 1e3, e.count) for e in ev[:rows]]}
    return table


# --------------------------------------------------------------------------------------- main
def bench(
    name: str, description: str, graphs, cutoff: float, device, warmup: int, repeats: int, force_profile: bool
) -> dict:
    import geognn

    batch = geognn.collate(graphs).to(device)
    ours, pyg = make_models(batch, cutoff, device)
    fns = step_fns(ours, pyg, batch)
    n_graphs, n_atoms, n_edges = int(batch.num_graphs), int(batch.num_nodes), int(batch.edge_index.shape[1])

    # sanity, outside timing: identical edges and distances, finite outputs
    with torch.no_grad():
        d_ours = geognn.edge_vectors(batch).norm(dim=-1)
        ei, d_pyg = pyg.interaction_graph(batch.pos, batch.batch)
    assert torch.equal(ei, batch.edge_index)
    max_dd = float((d_ours - d_pyg).abs().max()) if n_edges else 0.0
    assert max_dd < 1e-4, f"{name}: PyG and geognn distances differ by {max_dd} Å"
    assert float(d_ours.max()) <= cutoff + 1e-4
    checks = {}
    for model, fn in fns.items():
        e, f = fn()
        assert e.shape == (n_graphs,) and f.shape == (n_atoms, 3), (model, e.shape, f.shape)
        assert torch.isfinite(e).all() and torch.isfinite(f).all(), f"{name}/{model}: non-finite output"
        checks[model] = {
            "energy_first": [round(float(x), 4) for x in e.detach()[:3]],
            "max_abs_force": float(f.detach().abs().max()),
        }
    params = {"geognn": sum(p.numel() for p in ours.parameters()), "pyg": sum(p.numel() for p in pyg.parameters())}

    times = time_interleaved(fns, device, warmup, repeats)
    memory = {m: peak_memory_bytes(fn, device) for m, fn in fns.items()}
    res = {}
    for m in fns:
        med = float(np.median(times[m]))
        res[m] = {
            "median_s": med,
            "all_s": times[m],
            "structures_per_s": n_graphs / med,
            "atoms_per_s": n_atoms / med,
            "peak_memory_MiB": memory[m] / 2**20,
            "parameters": params[m],
            "sanity": checks[m],
        }
    spread = max(max(t) / min(t) for t in times.values())
    ratio = res["pyg"]["median_s"] / res["geognn"]["median_s"]
    out = {
        "dataset": name,
        "description": description,
        "cutoff_A": cutoff,
        "n_structures": n_graphs,
        "n_atoms": n_atoms,
        "n_edges": n_edges,
        "max_distance_diff_A": max_dd,
        "warmup": warmup,
        "repeats": repeats,
        "timing_spread_max_over_min": spread,
        "models": res,
        "throughput_ratio_geognn_over_pyg": ratio,
        "target_met": ratio >= THROUGHPUT_TARGET,
    }
    if ratio < THROUGHPUT_TARGET or force_profile:
        out["profile"] = profile_ops(fns, device)
    return out


def print_result(r: dict, device) -> None:
    print(f"\n== {r['dataset']}: {r['description']}")
    print(
        f"   {r['n_structures']} structures, {r['n_atoms']} atoms, {r['n_edges']} edges (same edges for both "
        f"models; max |d_geognn - d_pyg| = {r['max_distance_diff_A']:.1e} Å), cutoff {r['cutoff_A']} Å, "
        f"median of {r['repeats']} steps after {r['warmup']} warm-up"
    )
    print(
        f"   {'model':<10}{'ms/step':>10}{'structures/s':>14}{'atoms/s':>11}{'peak mem':>12}{'params':>10}"
        f"   energies (first 3, eV; random weights)"
    )
    for m, v in r["models"].items():
        print(
            f"   {m:<10}{v['median_s'] * 1e3:>10.1f}{v['structures_per_s']:>14.1f}{v['atoms_per_s']:>11.0f}"
            f"{v['peak_memory_MiB']:>9.1f}MiB{v['parameters']:>10d}   {v['sanity']['energy_first']}"
        )
    ratio = r["throughput_ratio_geognn_over_pyg"]
    if r["timing_spread_max_over_min"] > UNSTABLE_SPREAD:
        print(
            f"   WARNING: unstable timings (slowest/fastest step = {r['timing_spread_max_over_min']:.1f}): the "
            f"machine is probably busy; rerun when idle or with --threads 1"
        )
    print(
        f"   throughput geognn / PyG = {ratio:.2f} (target >= {THROUGHPUT_TARGET}): "
        f"{'MET' if r['target_met'] else 'NOT MET'}"
    )
    if "profile" in r:
        unit = "device" if device.type == "cuda" else "CPU"
        print(f"   profile of one step (self {unit} time per op, torch.profiler):")
        cols = list(r["profile"])
        rows = max(len(r["profile"][c]["ops"]) for c in cols)
        print(
            "   " + "".join(f"{c + ' (total ' + format(r['profile'][c]['total_ms'], '.1f') + ' ms)':<52}" for c in cols)
        )
        for k in range(rows):
            cells = []
            for c in cols:
                ops = r["profile"][c]["ops"]
                cells.append(
                    f"{ops[k][0][:30]:<31}{ops[k][1]:>8.1f} ms x{ops[k][2]:<4d}     " if k < len(ops) else " " * 52
                )
            print("   " + "".join(cells))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_options(ap)
    ap.add_argument("--profile", action="store_true", help="profile even when geognn is not slower")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args(argv)

    device, n_qm9, n_oc20, warmup, repeats = setup_run(args)
    stem = "bench_schnet" + ("" if device.type == "cpu" else f"_{device.type}") + ("_quick" if args.quick else "")
    out = args.out or RESULTS / f"{stem}.json"

    info = device_info(device)
    print(
        f"bench_schnet{' (quick)' if args.quick else ''}: device {info['device']}"
        f"{' (' + info['gpu'] + ')' if 'gpu' in info else ''}; {info['cpu']}, {info['cores_logical']} logical "
        f"cores, torch {torch.__version__} with {info['torch_threads']} threads, PyG "
        f"{info['versions']['torch_geometric']}, {info['date']}, "
        f"load average {info['load_average_1_5_15'][0]:.2f}"
    )
    print(
        "   one step = energies + forces (autograd of sum E w.r.t. pos), eval mode, float32; "
        f"SchNet {HPARAMS}; PyG readout 'add'"
    )
    print(
        "   weights of the two models are independent random initialisations: energies differ by design "
        "(speed benchmark)"
    )
    mem = (
        "torch.cuda.max_memory_allocated above the step's starting allocation"
        if device.type == "cuda"
        else "largest running total of CPU tensor allocations during one step (torch.profiler, profile_memory=True)"
    )
    print(f"   peak memory = {mem}")

    t_start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qm9 = qm9_graphs(n_qm9, 5.0)
        oc20 = oc20_graphs(n_oc20, 6.0)
    results = [
        bench("qm9", f"{n_qm9} QM9 molecules, batch of {n_qm9}", qm9, 5.0, device, warmup, repeats, args.profile),
        bench(
            "oc20",
            f"{n_oc20} OC20 IS2RE systems (periodic), one batch",
            oc20,
            6.0,
            device,
            warmup,
            repeats,
            args.profile,
        ),
    ]
    for r in results:
        print_result(r, device)
    print(
        "\nsummary: "
        + "; ".join(
            f"{r['dataset']}: geognn/PyG = {r['throughput_ratio_geognn_over_pyg']:.2f} "
            f"({'MET' if r['target_met'] else 'NOT MET'})"
            for r in results
        )
    )
    payload = {
        "benchmark": "bench_schnet",
        "quick": args.quick,
        "machine": info,
        "hparams": HPARAMS,
        "throughput_target": THROUGHPUT_TARGET,
        "datasets": results,
        "wall_s": time.perf_counter() - t_start,
    }
    print(f"wrote {write_results(payload, out)}")
    return payload


if __name__ == "__main__":
    main()
