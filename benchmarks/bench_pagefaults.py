"""Minor page faults and wall time per call of every backbone, with and without allocator tuning.

What it measures
    One call = energies of a batch plus forces by autograd (``model(batch, forces=True)``, eval
    mode, float32, 1 torch thread), as in bench_backbones.py. For each backbone and dataset:
    minor page faults per call (``resource.getrusage(RUSAGE_SELF).ru_minflt`` before and after the
    call, in the process that runs it), median seconds per call, and the resident memory after it.

    Allocator variants, each in its own worker process (allocator settings are per process and
    cannot be undone, and GLIBC_TUNABLES is read only at process start):
      default      glibc as it comes (mmap for blocks above a dynamic threshold of at most 32 MiB,
                   heap trimmed when its free top exceeds twice that)
      tuned        ``geognn.runtime.tune_allocator(force=True)`` called first: mallopt with
                   ``geognn.runtime.SETTINGS`` (no per-block mmap, heap never trimmed below 2 GiB
                   free, 64 MiB top pad)
      thp          environment ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``: glibc asks for transparent
                   huge pages (madvise) on the memory it maps; the kernel's THP mode must be
                   "madvise" or "always" (recorded)
      tuned+thp    both
      threshold    mallopt keeping the heap (trim threshold 2 GiB, top pad 64 MiB) but leaving
                   per-block mmap on for blocks above 32 MiB (M_MMAP_THRESHOLD at glibc's maximum)
                   (not run unless named in --variants)
    The workers of one (backbone, dataset) run at the same time and their calls are interleaved
    (one call each per round, order reversed every other round), so background load hits all
    variants alike. Ratios are time(variant) / time(default), medians.

    Settings: each backbone's defaults (``geognn.build_model(name, cutoff=...)``), except where
    ``SMALL_ON`` lists the dataset: there ``geognn.backbones.SMALL_SETTINGS`` (the defaults take
    several seconds per call on one CPU thread; the table says which settings were used).

    Workloads: qm9 = the first 32 molecules of the shared QM9 subset (cutoff 5 Å); oc20 = the 8
    OC20 IS2RE systems (periodic, cutoff 6 Å), graphs by geognn.build_graph.

Run
    .venv/bin/python benchmarks/bench_pagefaults.py                   # all backbones, both datasets
    .venv/bin/python benchmarks/bench_pagefaults.py --backbones schnet --datasets qm9 --repeats 3

    Results: benchmarks/results/bench_pagefaults.json; a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _common import RESULTS, ReferenceWorker, device_info, oc20_graphs, qm9_graphs, write_results

DATASETS = {"qm9": 5.0, "oc20": 6.0}  # cutoff in Å
#: dataset -> backbones run with SMALL_SETTINGS there (their defaults take seconds per call on 1 thread)
SMALL_ON = {"oc20": {"dimenetpp", "nequip", "ponita"}}
VARIANTS = {
    "default": {"tune": False, "env": {}},
    "tuned": {"tune": True, "env": {}},
    "thp": {"tune": False, "env": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}},
    "tuned+thp": {"tune": True, "env": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}},
    # heap kept, but blocks above 32 MiB (glibc's largest threshold) still get their own mmap
    "threshold": {"tune": {"mmap_threshold": 32 << 20, "trim_threshold": 2**31 - 1, "top_pad": 64 << 20}, "env": {}},
}
#: variants run when --variants is not given
DEFAULT_VARIANTS = ["default", "tuned", "thp", "tuned+thp"]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------------------- worker side
def worker(variant: str, backbone: str, dataset: str, small: bool, threads: int) -> None:
    """Build the model and batch, then answer ``fstep`` (one timed call with its faults) over stdin."""
    import torch

    torch.set_num_threads(threads)
    from _common import serve_steps

    import geognn
    from geognn.runtime import allocator_state, tune_allocator

    tune = VARIANTS[variant]["tune"]
    tuned = tune_allocator(tune if isinstance(tune, dict) else None, force=True) if tune else False
    cutoff = DATASETS[dataset]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graphs = qm9_graphs(32, cutoff) if dataset == "qm9" else oc20_graphs(8, cutoff)
    batch = geognn.collate(graphs)
    from geognn.backbones import SMALL_SETTINGS

    settings = SMALL_SETTINGS[backbone] if small else {}
    torch.manual_seed(0)
    model = geognn.build_model(backbone, cutoff=cutoff, **settings).eval()

    def step():
        out = model(batch, forces=True)
        return out["energy"], out["forces"]

    def fstep() -> dict:
        import gc

        gc.collect()
        before = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        step()
        s = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "s": s,
            "minflt": after.ru_minflt - before.ru_minflt,
            "majflt": after.ru_majflt - before.ru_majflt,
            "rss": rss_bytes(),
        }

    e, f = step()
    ready = {
        "ready": True,
        "variant": variant,
        "tuned": tuned,
        "allocator": allocator_state(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "n_atoms": int(batch.num_nodes),
        "n_edges": int(batch.edge_index.shape[1]),
        "finite": bool(torch.isfinite(e).all() and torch.isfinite(f).all()),
        "energy_first": float(e[0]),
    }
    proto = sys.stdout
    sys.stdout = sys.stderr  # anything a library prints goes to stderr, the protocol stays clean
    print(json.dumps(ready), file=proto, flush=True)
    serve_steps(step, proto, {"fstep": fstep})


# --------------------------------------------------------------------------------------- parent side
class Worker(ReferenceWorker):
    """One variant's worker; calling it runs one call there and returns its seconds (faults kept)."""

    def __init__(self, variant, backbone, dataset, small, threads, workdir: Path):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, backbone, dataset]
        cmd += ["--small" if small else "--default", "--threads", str(threads)]
        self.records = []
        env_extra = VARIANTS[variant]["env"]
        old = {k: os.environ.get(k) for k in env_extra}
        os.environ.update(env_extra)  # ReferenceWorker copies os.environ for the child
        try:
            super().__init__(f"{backbone}_{dataset}_{variant}", cmd, workdir)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def __call__(self) -> float:
        r = self.ask("fstep")
        self.records.append(r)
        return r["s"]


def interleave(workers: dict, warmup: int, repeats: int) -> None:
    names = list(workers)
    for _ in range(warmup):
        for n in names:
            workers[n]()
    for w in workers.values():
        w.records.clear()
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            workers[n]()


def bench_one(backbone, dataset, variants, warmup, repeats, threads, workdir) -> dict:
    small = backbone in SMALL_ON.get(dataset, set())
    workers = {}
    try:
        for v in variants:
            workers[v] = Worker(v, backbone, dataset, small, threads, workdir)
        interleave(workers, warmup, repeats)
        rows = {}
        for v, w in workers.items():
            s = [r["s"] for r in w.records]
            flt = [r["minflt"] for r in w.records]
            rows[v] = {
                "median_s": float(np.median(s)),
                "all_s": s,
                "minflt_median": float(np.median(flt)),
                "minflt_all": flt,
                "majflt_total": int(sum(r["majflt"] for r in w.records)),
                "rss_MiB_last": w.records[-1]["rss"] / 2**20,
                "tuned": w.info["tuned"],
                "glibc_tunables": w.info["glibc_tunables"],
            }
        first = workers[variants[0]].info
        base = rows.get("default")
        for v, r in rows.items():
            if base:
                r["time_ratio_vs_default"] = r["median_s"] / base["median_s"]
                r["faults_ratio_vs_default"] = r["minflt_median"] / max(base["minflt_median"], 1.0)
        return {
            "backbone": backbone,
            "dataset": dataset,
            "settings": "SMALL_SETTINGS" if small else "defaults",
            "parameters": first["parameters"],
            "n_atoms": first["n_atoms"],
            "n_edges": first["n_edges"],
            "finite": all(w.info["finite"] for w in workers.values()),
            "same_energy": len({round(w.info["energy_first"], 4) for w in workers.values()}) == 1,
            "variants": rows,
        }
    finally:
        for w in workers.values():
            w.close()


def markdown(results: list[dict], variants: list[str]) -> str:
    head = "| backbone | data | settings | default: faults/call, ms/call, RSS MiB | " + " | ".join(
        f"{v}: faults, time ratio, RSS MiB" for v in variants if v != "default"
    )
    head += " |"
    lines = [head, "|" + "---|" * (3 + len(variants))]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['backbone']} | {r['dataset']} | error: {r['error']} |")
            continue
        d = r["variants"]["default"]
        cells = [
            f"{x['minflt_median']:,.0f}, {x['time_ratio_vs_default']:.2f}, {x['rss_MiB_last']:.0f}"
            for v, x in r["variants"].items()
            if v != "default"
        ]
        lines.append(
            f"| {r['backbone']} | {r['dataset']} | {r['settings']} | {d['minflt_median']:,.0f}, "
            f"{d['median_s'] * 1e3:.0f}, {d['rss_MiB_last']:.0f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def thp_mode() -> str | None:
    try:
        return Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        return None


def main(argv=None) -> dict:
    import torch

    import geognn
    from geognn.runtime import SETTINGS, glibc_version

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbones", default=None, help="comma-separated names (default: all of geognn.BACKBONES)")
    ap.add_argument("--datasets", default="qm9,oc20")
    ap.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, from {', '.join(VARIANTS)} (default: {', '.join(DEFAULT_VARIANTS)})",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_pagefaults.json")
    args = ap.parse_args(argv)
    names = list(geognn.BACKBONES) if not args.backbones else [n.strip() for n in args.backbones.split(",")]
    datasets = [d.strip() for d in args.datasets.split(",")]
    variants = [v.strip() for v in args.variants.split(",")]
    if "default" not in variants:
        variants.insert(0, "default")
    bad = [v for v in variants if v not in VARIANTS] + [d for d in datasets if d not in DATASETS]
    bad += [n for n in names if n not in geognn.BACKBONES]
    if bad:
        raise SystemExit(f"unknown variant, dataset or backbone: {bad}")
    torch.set_num_threads(args.threads)
    info = device_info(torch.device("cpu"))
    info.update(glibc=glibc_version(), transparent_hugepage=thp_mode())
    print(
        f"bench_pagefaults: {info['cpu']}, {info['cores_logical']} logical cores, torch {torch.__version__}, "
        f"{args.threads} thread(s) per worker, glibc {info['glibc']}, THP {info['transparent_hugepage']}, "
        f"load average {info['load_average_1_5_15'][0]:.2f}, {info['date']}"
    )
    print(
        f"   one call = energies + forces (autograd), eval, float32; median of {args.repeats} calls after "
        f"{args.warmup} warm-up; variants interleaved across worker processes"
    )
    results = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_pagefaults_") as tmp:
        for d in datasets:
            for n in names:
                try:
                    r = bench_one(n, d, variants, args.warmup, args.repeats, args.threads, Path(tmp))
                except Exception as exc:  # noqa: BLE001 - one failing backbone does not stop the run
                    r = {"backbone": n, "dataset": d, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                results.append(r)
                v = r.get("variants", {})
                print(
                    f"   {n:<10}{d:<6}"
                    + (
                        "  ".join(
                            f"{k}: {x['minflt_median']:>9,.0f} flt {x['median_s'] * 1e3:>8.1f} ms" for k, x in v.items()
                        )
                        if v
                        else r["error"]
                    ),
                    flush=True,
                )
    info["load_average_end"] = list(os.getloadavg())
    payload = {
        "benchmark": "bench_pagefaults",
        "machine": info,
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "variants": {v: VARIANTS[v] for v in variants},
        "tune_allocator_settings": SETTINGS,
        "small_settings_on": {k: sorted(v) for k, v in SMALL_ON.items()},
        "results": results,
        "wall_s": time.perf_counter() - t0,
    }
    print()
    print(markdown(results, variants))
    print(f"\nwall time {payload['wall_s']:.0f} s; wrote {write_results(payload, args.out)}")
    return payload


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        ap = argparse.ArgumentParser()
        ap.add_argument("--worker", nargs=3, metavar=("VARIANT", "BACKBONE", "DATASET"))
        ap.add_argument("--small", action="store_true")
        ap.add_argument("--default", action="store_true")
        ap.add_argument("--threads", type=int, default=1)
        a = ap.parse_args()
        worker(*a.worker, small=a.small, threads=a.threads)
    else:
        sys.exit(0 if main() else 1)
