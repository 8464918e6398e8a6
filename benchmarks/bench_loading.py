"""Data-loading throughput (structures/s) of geognn.datasets vs SchNet's training throughput.

What it measures
    Loader, one process (a DataLoader with W workers scales it by up to W):
      qm9_cache     ``open_dataset("qm9", ...)`` on the shared 5,032-molecule qm9pack subset, opened
                    from its processed cache (processing and cache-open times are reported too);
                    ``ds[i]`` for every molecule -> structures/s ("atoms"), and ``ds[i]`` +
                    ``geognn.build_graph(atoms, 5 Å)`` + energy label + ``collate`` per batch of 32 ("graphs").
      oc20_lmdb     an OC20 IS2RE LMDB in fairchem's layout holding the 8 real OC20 systems of
                    shared/data/oc20/faenet_is2re_bs8.pt, each written 25 times (200 entries,
                    73 atoms on average), read lazily; "atoms" and "graphs" (cutoff 6 Å, batches of 8) as above.
    Model: SchNet (``geognn.build_model("schnet")``, default size) training steps on the same
    graphs: forward + backward of an energy MSE loss + Adam step, batches of 32 QM9 molecules
    (energy only) and 8 OC20 systems (energy + forces, the S2EF setting: forces by autograd with
    create_graph, force MSE added). Graphs are prebuilt, outside the timed region.
    "graphs_workers": the same graphs through a torch DataLoader with --workers processes (one
    torch thread each, collate in the workers), as a training run would load them. Batches reach
    the main process through torch.multiprocessing's "file_system" sharing strategy by default
    (--sharing-strategy): with torch's default "file_descriptor", passing every tensor's file
    descriptor capped 8 workers at about 5,000 structures/s on the H200 machine (16 cores).
    Reported: median over repeats of structures/s, and loader/model ratios (> 1: the loader is faster
    than training consumes, so it is not the bottleneck).

Run
    .venv/bin/python benchmarks/bench_loading.py            # ~1 min on 2 cores
    .venv/bin/python benchmarks/bench_loading.py --quick    # smoke test
    .venv/bin/python benchmarks/bench_loading.py --threads 1 --device cuda

    Results: benchmarks/results/bench_loading.json (_quick / _<device> suffixes as the other scripts).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from _common import DATA, RESULTS, device_info, write_results


def rate(fn, n_structures: int, repeats: int) -> dict:
    """Median structures/s of ``fn()`` (which handles ``n_structures``) over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "structures_per_s": n_structures / med,
        "median_s": med,
        "repeats": repeats,
        "spread_max_over_min": max(times) / min(times),
    }


def labelled_graph(atoms, cutoff: float):
    """geognn graph of a dataset item with its energy (and forces) as tensors."""
    import geognn
    from geognn import conventions as K

    g = geognn.build_graph(atoms, cutoff)
    g[K.ENERGY] = torch.tensor([atoms.info["energy"]], dtype=torch.get_default_dtype())
    if "forces" in atoms.arrays:
        g[K.FORCES] = torch.as_tensor(atoms.arrays["forces"], dtype=torch.get_default_dtype())
    return g


def graphs_with_labels(ds, indices, cutoff: float, batch_size: int):
    """ds[i] -> build_graph -> labels -> collate, per batch; returns the batches."""
    import geognn

    return [
        geognn.collate([labelled_graph(ds[i], cutoff) for i in indices[k : k + batch_size]])
        for k in range(0, len(indices), batch_size)
    ]


class GraphView(torch.utils.data.Dataset):
    """``dataset[i]`` as a labelled graph: what a DataLoader worker does per item."""

    def __init__(self, ds, cutoff: float):
        self.ds, self.cutoff = ds, cutoff

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return labelled_graph(self.ds[i], self.cutoff)


def _one_thread(_):
    torch.set_num_threads(1)


def workers_rate(ds, cutoff: float, batch_size: int, workers: int, repeats: int) -> dict:
    """structures/s of a torch DataLoader with ``workers`` processes: ds[i] + build_graph + collate."""
    import geognn

    loader = torch.utils.data.DataLoader(
        GraphView(ds, cutoff),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=geognn.collate,
        persistent_workers=True,
        worker_init_fn=_one_thread,
    )

    def epoch():
        return sum(int(b.num_graphs) for b in loader)

    epoch()  # start the workers
    out = rate(epoch, len(ds), repeats)
    out["workers"] = workers
    return out


def train_rate(batches, cutoff: float, forces: bool, device, repeats: int) -> dict:
    """SchNet training steps (forward + backward + Adam) over ``batches``: structures/s."""
    import geognn
    from geognn import conventions as K

    torch.manual_seed(0)
    model = geognn.build_model("schnet", cutoff=cutoff, forces=forces).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    batches = [b.to(device) for b in batches]
    n = sum(int(b.num_graphs) for b in batches)

    def epoch():
        for b in batches:
            opt.zero_grad()
            out = model(b, forces=forces)
            loss = (out[K.ENERGY] - b[K.ENERGY]).pow(2).mean()
            if forces:
                loss = loss + (out[K.FORCES] - b[K.FORCES]).pow(2).mean()
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    epoch()  # warm-up
    return rate(epoch, n, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: fewer structures and repeats")
    parser.add_argument("--device", default="cpu", help="device of the model steps (loading is on CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=0)
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, max(1, (os.cpu_count() or 2) - 1)),
        help="DataLoader worker processes for the 'graphs_workers' rate (default: cores - 1, at most 8)",
    )
    parser.add_argument(
        "--sharing-strategy",
        default="file_system",
        choices=("file_system", "file_descriptor"),
        help="torch.multiprocessing sharing strategy for the workers' batches (default file_system: "
        "the file_descriptor default capped 8 workers at ~5k structures/s on the H200 machine)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.multiprocessing.set_sharing_strategy(args.sharing_strategy)
    device = torch.device(args.device)
    repeats = args.repeats or (2 if args.quick else 5)
    n_qm9 = 256 if args.quick else 2048
    copies = 5 if args.quick else 25

    from geognn.datasets import open_dataset
    from geognn.datasets.oc20 import write_lmdb

    results: dict = {
        "machine": device_info(device),
        "repeats": repeats,
        "workers": args.workers,
        "sharing_strategy": args.sharing_strategy,
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # ---------------------------------------------------------------- QM9 cache
        source = DATA / "qm9" / "qm9pack_subset_stride26.csv"
        t0 = time.perf_counter()
        qm9 = open_dataset("qm9", source, cache_dir=tmp / "cache")
        processing = time.perf_counter() - t0
        t0 = time.perf_counter()
        qm9 = open_dataset("qm9", source, cache_dir=tmp / "cache")
        cache_open = time.perf_counter() - t0
        assert qm9.from_cache
        idx = list(range(min(n_qm9, len(qm9))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results["qm9_cache"] = {
                "molecules": len(qm9),
                "process_once_s": processing,
                "open_from_cache_s": cache_open,
                "atoms": rate(lambda: [qm9[i] for i in idx], len(idx), repeats),
                "graphs": rate(lambda: graphs_with_labels(qm9, idx, 5.0, 32), len(idx), repeats),
            }
            sub = torch.utils.data.Subset(qm9, idx)
            results["qm9_cache"]["graphs_workers"] = workers_rate(sub, 5.0, 32, args.workers, repeats)
            qm9_batches = graphs_with_labels(qm9, idx[: 32 * (2 if args.quick else 8)], 5.0, 32)
            results["qm9_cache"]["schnet_train"] = train_rate(qm9_batches, 5.0, False, device, repeats)

            # ------------------------------------------------------------ OC20 LMDB
            real = open_dataset("oc20-is2re", _real_oc20_lmdb(tmp))
            frames = [real[k % len(real)] for k in range(len(real) * copies)]
            write_lmdb(tmp / "bench.lmdb", frames, task="is2re", progress=False)
            oc20 = open_dataset("oc20-is2re", tmp / "bench.lmdb")
            idx = list(range(len(oc20)))
            results["oc20_lmdb"] = {
                "entries": len(oc20),
                "atoms_total": int(sum(len(a) for a in frames)),
                "lmdb_bytes": (tmp / "bench.lmdb").stat().st_size,
                "atoms": rate(lambda: [oc20[i] for i in idx], len(idx), repeats),
                "graphs": rate(lambda: graphs_with_labels(oc20, idx, 6.0, 8), len(idx), repeats),
            }
            results["oc20_lmdb"]["graphs_workers"] = workers_rate(oc20, 6.0, 8, args.workers, repeats)
            forces_ds = open_dataset("oc20-s2ef", _real_oc20_lmdb(tmp, s2ef=True))
            oc20_batches = graphs_with_labels(forces_ds, list(range(len(forces_ds))), 6.0, 8)
            results["oc20_lmdb"]["schnet_train_energy_forces"] = train_rate(oc20_batches, 6.0, True, device, repeats)

    for name, train_key in (("qm9_cache", "schnet_train"), ("oc20_lmdb", "schnet_train_energy_forces")):
        r = results[name]
        model = r[train_key]["structures_per_s"]
        r["ratio_loader_atoms_over_train"] = r["atoms"]["structures_per_s"] / model
        r["ratio_loader_graphs_over_train"] = r["graphs"]["structures_per_s"] / model
        r["ratio_loader_graphs_workers_over_train"] = r["graphs_workers"]["structures_per_s"] / model
        print(
            f"{name:10s} loader {r['atoms']['structures_per_s']:8.0f} structures/s (atoms) | "
            f"{r['graphs']['structures_per_s']:6.0f} (+ graphs, collate) | "
            f"{r['graphs_workers']['structures_per_s']:6.0f} (graphs, {args.workers} DataLoader workers) | "
            f"SchNet training {model:6.0f} | loader/training {r['ratio_loader_atoms_over_train']:.1f}x, "
            f"{r['ratio_loader_graphs_over_train']:.1f}x, {r['ratio_loader_graphs_workers_over_train']:.1f}x"
        )
    print(
        f"QM9: processing {results['qm9_cache']['molecules']} molecules once took "
        f"{results['qm9_cache']['process_once_s']:.1f} s; reopening from the cache "
        f"{results['qm9_cache']['open_from_cache_s']:.2f} s"
    )
    suffix = ("_quick" if args.quick else "") + ("" if device.type == "cpu" else f"_{device.type}")
    print("wrote", write_results(results, RESULTS / f"bench_loading{suffix}.json"))


def _real_oc20_lmdb(tmp: Path, s2ef: bool = False) -> Path:
    """The 8 real OC20 systems as a fairchem-layout LMDB (S2EF: y = y_init, force = stored forces)."""
    from geognn.datasets.oc20 import write_lmdb_data

    path = tmp / ("real_s2ef.lmdb" if s2ef else "real.lmdb")
    if not path.exists():
        graphs = torch.load(DATA / "oc20" / "faenet_is2re_bs8.pt", weights_only=False).to_data_list()
        if s2ef:
            for g in graphs:
                g.y = float(g.y_init)
        write_lmdb_data(path, graphs)
    return path


if __name__ == "__main__":
    main()
