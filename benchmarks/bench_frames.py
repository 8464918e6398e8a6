"""Frame averaging cost and FAENet + SFA against the faenet reference package.

What it measures
    One "step" = energies of every structure in a batch plus forces by autograd (a forward and a
    backward pass, no parameter gradients, eval mode, float32), as in bench_backbones.py.

    1. FAENet + stochastic frame averaging, geognn vs the reference (PyPI ``faenet`` 0.1.3,
       ``faenet.FAENet`` + ``faenet.transforms.FrameAveraging("3D", "stochastic")`` +
       ``faenet.model_forward``), same size (hidden 128, filters 128, 4 interactions, 50
       Gaussians, period/group embeddings 32, tag embedding 32 on OC20 / 0 on QM9, cutoff 6 Å),
       same edges (geognn's graph handed to the reference with its image offsets). geognn's step
       computes its frames inside the step; the reference's frames come from its data transform,
       run outside the clock (as a data loader would) and reported separately ("ref transform").
       The reference keeps its defaults otherwise (graph norm, second-layer MLP, concat skip
       connections, physical embeddings): the architectures are similar, not identical (see
       geognn/backbones/faenet.py), so the ratio compares the packages a user would pick between.
       Ratio = geognn structures/s / reference structures/s (target >= 1.0).
    2. Cost of frame averaging for geognn backbones (faenet, schnet): plain vs SFA (1 frame) vs
       FA("all") (8 frames, more for degenerate structures), printed as time ratios to the plain
       backbone (expect ~1x and ~8x plus the frame computation).

    Workloads (graph building outside the timed region): qm9 = the first 32 molecules of
    shared/data/qm9/qm9pack_subset_stride26.csv; oc20 = the 8 OC20 IS2RE systems of
    shared/data/oc20/faenet_is2re_bs8.pt (587 atoms), both with a 6 Å cutoff.

How
    Interleaved timing and peak memory as in bench_backbones.py (helpers in _common.py): 3 warm-up
    steps, 15 timed steps per model on CPU (--quick: 1 and 3, 2 OC20 systems); medians. The
    reference runs in .venv-faenet (``python3 -m venv .venv-faenet && .venv-faenet/bin/pip install
    torch==2.13.0 faenet torch_geometric``) through benchmarks/_faenet_reference.py; without that
    venv it is skipped with a message. On a shared machine use --threads 1.

Run
    .venv/bin/python benchmarks/bench_frames.py --threads 1
    .venv/bin/python benchmarks/bench_frames.py --quick
    Results: benchmarks/results/bench_frames.json (_quick suffix with --quick).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    HERE,
    RESULTS,
    ReferenceWorker,
    add_run_options,
    device_info,
    oc20_graphs,
    peak_memory_bytes,
    qm9_graphs,
    setup_run,
    time_interleaved,
    write_results,
)

FAENET_VENV = HERE.parent / ".venv-faenet"
CUTOFF = 6.0
THROUGHPUT_TARGET = 1.0
SIZE = dict(hidden_channels=128, num_filters=128, num_layers=4, num_gaussians=50, pg_hidden_channels=32)


class FaenetReference(ReferenceWorker):
    """The faenet package in a subprocess of .venv-faenet; calling it returns the seconds of one step."""

    def __init__(self, python: Path, batch, config: dict, threads: int | None, workdir: Path):
        tags = batch.tags if "tags" in batch else torch.zeros_like(batch.z)
        neighbors = torch.bincount(batch.batch[batch.edge_index[1]], minlength=batch.cell.shape[0])
        inputs = workdir / "faenet_inputs.npz"
        np.savez(
            inputs,
            positions=batch.pos.double().numpy(),
            atomic_numbers=batch.z.numpy(),
            tags=tags.numpy(),
            batch=batch.batch.numpy(),
            cell=batch.cell.double().numpy(),
            edge_index=batch.edge_index.numpy(),
            cell_offsets=batch.edge_shift.double().numpy(),
            neighbors=neighbors.numpy(),
        )
        cmd = [str(python), str(HERE / "_faenet_reference.py"), str(inputs), json.dumps(config)]
        if threads:
            cmd += ["--threads", str(threads)]
        super().__init__("faenet", cmd, workdir)


def geognn_models(dataset: str) -> dict:
    import geognn

    tags = {"tag_hidden_channels": 32} if dataset == "oc20" else {}
    sfa = {"frames": "stochastic", "eval_frames": 1}  # one random frame per structure, also in eval mode
    specs = {
        "faenet": ("faenet", None, SIZE | tags),
        "faenet+SFA": ("faenet", sfa, SIZE | tags),
        "faenet+FA(all)": ("faenet", "all", SIZE | tags),
        "schnet": ("schnet", None, {}),
        "schnet+SFA": ("schnet", sfa, {}),
        "schnet+FA(all)": ("schnet", "all", {}),
    }
    models = {}
    for name, (backbone, fa, kwargs) in specs.items():
        torch.manual_seed(0)
        models[name] = geognn.build_model(backbone, cutoff=CUTOFF, frame_averaging=fa, **kwargs).float().eval()
    return models


def bench(
    dataset: str,
    graphs,
    device,
    warmup: int,
    repeats: int,
    reference_python: Path | None,
    threads: int | None,
    workdir: Path,
) -> dict:
    import geognn

    batch = geognn.collate(graphs).to(device)
    n_graphs, n_atoms = len(graphs), int(batch.z.shape[0])
    models = geognn_models(dataset)
    fns = {}
    for name, model in models.items():
        fns[name] = (lambda m: lambda: m(batch, forces=True))(model)
    result = {
        "dataset": dataset,
        "structures": n_graphs,
        "atoms": n_atoms,
        "edges": int(batch.edge_index.shape[1]),
        "models": {},
        "ratios": {},
    }
    ref = None
    if reference_python is not None:
        config = dict(
            cutoff=CUTOFF,
            hidden_channels=128,
            num_filters=128,
            num_interactions=4,
            num_gaussians=50,
            pg_hidden_channels=32,
            tag_hidden_channels=32 if dataset == "oc20" else 0,
            regress_forces="from_energy",
            preprocess="pbc_preprocess",
        )
        try:
            ref = FaenetReference(reference_python, batch, config, threads, workdir)
            fns["faenet_ref"] = ref
            result["reference"] = {"config": config, **ref.info}
        except Exception as exc:  # a missing or broken venv must not stop the geognn numbers
            result["reference"] = {"skipped": f"{type(exc).__name__}: {exc}"}
            print(f"   faenet reference skipped: {exc}")
    times = time_interleaved(fns, device, warmup, repeats)
    for name, ts in times.items():
        med = statistics.median(ts)
        entry = {"median_s": med, "structures_per_s": n_graphs / med, "atoms_per_s": n_atoms / med}
        if name in models:
            entry["peak_bytes"] = peak_memory_bytes(fns[name], device)
            entry["parameters"] = sum(p.numel() for p in models[name].parameters())
            fa = getattr(models[name].backbone, "stats", None)
            if fa is not None:
                entry["frame_stats"] = dict(fa)
        else:
            entry["peak_bytes"] = ref.memory()
            entry["parameters"] = ref.info.get("parameters")
            entry["transform_median_s"] = statistics.median(ref.ask("transform")["s"] for _ in range(5))
        result["models"][name] = entry
    if ref is not None:
        ref.close()
    m = result["models"]
    for backbone in ("faenet", "schnet"):
        base = m[backbone]["median_s"]
        result["ratios"][f"{backbone}: SFA / plain time"] = m[f"{backbone}+SFA"]["median_s"] / base
        result["ratios"][f"{backbone}: FA(all) / plain time"] = m[f"{backbone}+FA(all)"]["median_s"] / base
    if "faenet_ref" in m:
        result["ratios"]["faenet+SFA vs faenet ref: throughput ratio"] = (
            m["faenet+SFA"]["structures_per_s"] / m["faenet_ref"]["structures_per_s"]
        )
        result["ratios"]["faenet+SFA vs faenet ref: peak memory ratio"] = m["faenet+SFA"]["peak_bytes"] / max(
            m["faenet_ref"]["peak_bytes"], 1
        )
    return result


def print_result(r: dict) -> None:
    print(f"\n== {r['dataset']}: {r['structures']} structures, {r['atoms']} atoms, {r['edges']} edges")
    print(f"   {'model':<16} {'ms/step':>9} {'structures/s':>13} {'peak MiB':>9} {'params':>9}")
    for name, e in r["models"].items():
        extra = (
            f"  (ref transform, outside the step: {1e3 * e['transform_median_s']:.1f} ms)"
            if "transform_median_s" in e
            else ""
        )
        print(
            f"   {name:<16} {1e3 * e['median_s']:>9.1f} {e['structures_per_s']:>13.1f} "
            f"{e['peak_bytes'] / 2**20:>9.1f} {e['parameters'] or 0:>9d}{extra}"
        )
    for k, v in r["ratios"].items():
        target = f"  (target >= {THROUGHPUT_TARGET})" if "throughput" in k else ""
        print(f"   {k}: {v:.2f}x{target}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="qm9,oc20", help="comma-separated: qm9, oc20")
    add_run_options(ap, reference="the faenet reference (which runs on CPU only)")
    ap.add_argument("--no-reference", action="store_true", help="skip the faenet package")
    ap.add_argument("--faenet-venv", type=Path, default=FAENET_VENV, help=f"venv with faenet (default {FAENET_VENV})")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args(argv)
    device, n_qm9, n_oc20, warmup, repeats = setup_run(args)
    python = args.faenet_venv / "bin" / "python"
    reference = None
    if args.no_reference:
        print("   faenet reference skipped (--no-reference)")
    elif device.type != "cpu":
        print("   faenet reference skipped: it is run on CPU only; compare on --device cpu")
    elif not python.exists():
        print(f"   faenet reference skipped: no venv at {args.faenet_venv} (see the module docstring to create it)")
    else:
        reference = python
    info = device_info(device)
    print(
        f"bench_frames{' (quick)' if args.quick else ''}: {info['cpu']}, {info['cores_logical']} logical cores, "
        f"torch {torch.__version__} with {info['torch_threads']} threads, {info['date']}, "
        f"load average {info['load_average_1_5_15'][0]:.2f}"
    )
    print("   one step = energies + forces (autograd), eval mode, float32, random weights, cutoff 6 Å")
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_frames_") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for d in [x.strip() for x in args.datasets.split(",") if x.strip()]:
            if d not in ("qm9", "oc20"):
                raise SystemExit(f"--datasets: choose from qm9, oc20; got {d!r}")
            graphs = qm9_graphs(n_qm9, CUTOFF) if d == "qm9" else oc20_graphs(n_oc20, CUTOFF)
            r = bench(d, graphs, device, warmup, repeats, reference, args.threads, Path(tmp))
            print_result(r)
            results.append(r)
    stem = "bench_frames" + ("" if device.type == "cpu" else f"_{device.type}") + ("_quick" if args.quick else "")
    payload = {
        "benchmark": "bench_frames",
        "quick": args.quick,
        "machine": info,
        "datasets": results,
        "throughput_target": THROUGHPUT_TARGET,
        "wall_s": time.perf_counter() - t0,
    }
    written = write_results(payload, args.out or RESULTS / f"{stem}.json")
    print(f"\nwall time {payload['wall_s']:.0f} s; wrote {written}")
    return payload


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
