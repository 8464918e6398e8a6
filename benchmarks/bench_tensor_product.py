"""NequIP and MACE with geognn's ``ChannelwiseTensorProduct`` vs e3nn's ``o3.TensorProduct``.

What it measures
    The same backbone built twice with the same seed (so the same parameters): once with e3nn's
    ``o3.TensorProduct`` in ``EdgeConvolution`` and ``SymmetricContraction`` (the implementation
    before ``geognn.nn.tensor_product``; reachable through the private flag
    ``geognn.nn.e3nn_blocks._USE_E3NN_TENSOR_PRODUCT``), once with ``ChannelwiseTensorProduct``.
    Three kinds of step, each on one QM9 batch:
      forces   energy + forces by autograd, eval mode, no parameter gradients (bench_backbones'
               step);
      train    training step on energies: forward, loss = mean(E^2), backward to the parameters;
      trainF   training step on energies and forces: loss = mean(E^2) + mean(F^2), backward to
               the parameters through the force graph (double backward).
    Reported per model: median seconds per step (process CPU time, which on a shared machine is
    less disturbed by other jobs than wall time; the wall-time median is written too), the
    speed-up e3nn / ours, the peak tensor memory of one step (torch.profiler, as in
    bench_backbones), and the largest difference between the two models' energies and forces in
    float32 (a sanity check; the float64 equality to 1e-12 is in tests/test_tensor_product.py and
    tests/test_backbone_e3nn.py).

    Configurations (``geognn.build_model(name, cutoff=5.0, **kwargs)``): nequip (its defaults:
    max_ell=1, both parities, 32 channels, 4 layers), nequip with max_ell=2 (the default before
    commit 2e81b12), mace (its defaults: max_ell=3, correlation 3, hidden 32 x (0e + 1o), 2 layers).
    Workload: the first 32 molecules of shared/data/qm9/qm9pack_subset_stride26.csv, one batch,
    cutoff 5 Å (378 atoms, 4234 directed edges), float32.

How
    torch.set_num_threads(1) (--threads), 2 warm-up steps per model, then --repeats timed steps
    (default 10; --quick: 3) with the two models interleaved and the order alternating, medians
    reported. The configurations and step kinds are measured one after another in one process.

Run
    .venv/bin/python benchmarks/bench_tensor_product.py                  # all, ~10 min on 1 core
    .venv/bin/python benchmarks/bench_tensor_product.py --quick          # smoke test
    .venv/bin/python benchmarks/bench_tensor_product.py --configs nequip_lmax2 --steps train

    Results: benchmarks/results/bench_tensor_product.json (_quick suffix with --quick).
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
from _common import RESULTS, device_info, peak_memory_bytes, qm9_graphs, write_results

CONFIGS = {"nequip": ("nequip", {}), "nequip_lmax2": ("nequip", {"max_ell": 2}), "mace": ("mace", {})}
STEPS = ("forces", "train", "trainF")
CUTOFF = 5.0


def build_pair(name: str, kwargs: dict):
    """(e3nn's tensor products, ours), same seed and therefore the same parameters."""
    import geognn
    import geognn.nn.e3nn_blocks as blocks

    models = {}
    for use_e3nn in (True, False):
        blocks._USE_E3NN_TENSOR_PRODUCT = use_e3nn
        try:
            torch.manual_seed(0)
            models["e3nn" if use_e3nn else "ours"] = geognn.build_model(name, cutoff=CUTOFF, **kwargs)
        finally:
            blocks._USE_E3NN_TENSOR_PRODUCT = False
    return models


def make_step(model, batch, kind: str):
    def step():
        if kind == "forces":
            model.eval()
            out = model(batch, forces=True)
            return out["energy"], out["forces"]
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(batch, forces=kind == "trainF")
        loss = out["energy"].square().mean()
        if kind == "trainF":
            loss = loss + out["forces"].square().mean()
        loss.backward()
        return out["energy"], out.get("forces")

    return step


def time_pair(steps: dict, warmup: int, repeats: int) -> dict:
    """CPU and wall seconds of each step, interleaved, the order alternating every round."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    cpu, wall = {k: [] for k in steps}, {k: [] for k in steps}
    names = list(steps)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            gc.collect()
            c0, w0 = time.process_time(), time.perf_counter()
            steps[name]()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    return {"cpu": cpu, "wall": wall}


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {list(CONFIGS)}")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma list of {list(STEPS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--repeats", type=int, default=0, help="timed steps per model (default: 10; --quick: 3)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 warm-up, 3 timed steps, no memory")
    args = parser.parse_args()
    configs, kinds = args.configs.split(","), args.steps.split(",")
    unknown = [c for c in configs if c not in CONFIGS] + [s for s in kinds if s not in STEPS]
    if unknown:
        raise SystemExit(f"unknown configs/steps {unknown}; choose from {list(CONFIGS)} and {list(STEPS)}")
    torch.set_num_threads(args.threads)
    warmup, repeats = (1, args.repeats or 3) if args.quick else (2, args.repeats or 10)

    import geognn

    batch = geognn.collate(qm9_graphs(32, CUTOFF))
    workload = {
        "dataset": "qm9",
        "n_structures": 32,
        "n_atoms": int(batch.num_nodes),
        "n_edges": int(batch.edge_index.shape[1]),
        "cutoff_A": CUTOFF,
        "dtype": "float32",
    }
    print(
        f"QM9 batch: {workload['n_atoms']} atoms, {workload['n_edges']} edges; {args.threads} thread(s), "
        f"{repeats} timed steps"
    )
    results = []
    for config in configs:
        name, kwargs = CONFIGS[config]
        models = build_pair(name, kwargs)
        hparams = models["ours"].backbone.hparams
        for kind in kinds:
            steps = {k: make_step(m, batch, kind) for k, m in models.items()}
            (e_old, f_old), (e_new, f_new) = steps["e3nn"](), steps["ours"]()
            diff = {"max_abs_energy_diff": float((e_old - e_new).detach().abs().max())}
            if f_old is not None:
                diff["max_abs_force_diff"] = float((f_old - f_new).detach().abs().max())
                diff["max_abs_force"] = float(f_old.detach().abs().max())
            times = time_pair(steps, warmup, repeats)
            row = {
                "config": config,
                "backbone": name,
                "kwargs": kwargs,
                "hparams": hparams,
                "step": kind,
                "check_float32": diff,
            }
            for clock in ("cpu", "wall"):
                row[f"{clock}_median_s"] = {k: median(v) for k, v in times[clock].items()}
                row[f"{clock}_s"] = times[clock]
                row[f"speedup_{clock}"] = row[f"{clock}_median_s"]["e3nn"] / row[f"{clock}_median_s"]["ours"]
            if not args.quick:
                row["peak_memory_bytes"] = {k: peak_memory_bytes(fn, torch.device("cpu")) for k, fn in steps.items()}
            results.append(row)
            mem = row.get("peak_memory_bytes")
            print(
                f"{config:13s} {kind:7s} e3nn {row['cpu_median_s']['e3nn'] * 1e3:8.1f} ms  "
                f"ours {row['cpu_median_s']['ours'] * 1e3:8.1f} ms  speed-up {row['speedup_cpu']:.2f}x "
                f"(wall {row['speedup_wall']:.2f}x)"
                + (f"  peak memory {mem['e3nn'] / 2**20:.0f} -> {mem['ours'] / 2**20:.0f} MiB" if mem else "")
                + f"  |dE| {diff['max_abs_energy_diff']:.1e}"
                + (f" |dF| {diff['max_abs_force_diff']:.1e}" if "max_abs_force_diff" in diff else "")
            )
    out = RESULTS / ("bench_tensor_product_quick.json" if args.quick else "bench_tensor_product.json")
    payload = {
        "benchmark": "bench_tensor_product",
        "quick": args.quick,
        "machine": device_info(torch.device("cpu")),
        "workload": workload,
        "warmup": warmup,
        "repeats": repeats,
        "results": results,
    }
    print("wrote", write_results(payload, out))


if __name__ == "__main__":
    main()
