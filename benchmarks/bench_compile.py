"""Speed-up from ``torch.compile`` per backbone: eager vs ``Model.compile()`` on the same batch.

What it measures
    One call = energies of a batch plus forces by autograd (``model(batch, forces=True)``, eval
    mode, float32), as in bench_backbones.py. For every backbone (or those given with
    --backbones), built with its defaults (``--small``: ``geognn.backbones.SMALL_SETTINGS``):
      compile_s     wall time of the first call of the compiled model (Dynamo tracing, AOTAutograd
                    and Inductor code generation for forward and backward), reported apart; then
                    the second batch size (``--datasets`` second entry or a 16-molecule QM9 batch)
                    to show whether ``dynamic=True`` avoids a recompile (``recompile_s``)
      max |ΔE|, |ΔF|  compiled minus eager on the same weights (eV, eV/Å)
      eager_s, compiled_s  median seconds per call, the two models interleaved (one call each per
                    round, order reversed every other round) after warm-up
      speedup       eager_s / compiled_s (> 1: compiled is faster)
    A backbone whose compilation fails falls back to eager with a RuntimeWarning
    (``Model.compile``); it is reported as "fell back: <reason>".

    Workloads: qm9 = the first 32 molecules of the shared QM9 subset (cutoff 5 Å); oc20 = the 8
    OC20 IS2RE systems (periodic, cutoff 6 Å).

Run
    .venv/bin/python benchmarks/bench_compile.py --threads 1                # all backbones, QM9
    .venv/bin/python benchmarks/bench_compile.py --backbones schnet,painn --small --repeats 3

    .venv/bin/python benchmarks/bench_compile.py --threads 1 --backbones mace --merge  # replace one row

    Results: benchmarks/results/bench_compile.json (a _small suffix with --small); markdown on stdout.
    The file is rewritten, unless ``--merge``: then the rows of the backbones measured now replace
    theirs in the existing file (same settings, warm-up and repeats required) and the others are
    kept; each merged row carries its own run's machine state under ``"run"`` (date, load, git).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, device_info, oc20_graphs, qm9_graphs, time_interleaved, write_results

DATASETS = {"qm9": 5.0, "oc20": 6.0}  # cutoff in Å


def max_diff(a: dict, b: dict, key: str) -> float:
    return float((a[key].detach() - b[key].detach()).abs().max())


def bench_backbone(name, batches, cutoff, small, device, warmup, repeats) -> dict:
    import geognn
    from geognn.backbones import SMALL_SETTINGS

    settings = SMALL_SETTINGS[name] if small else {}
    torch.manual_seed(0)
    eager = geognn.build_model(name, cutoff=cutoff, **settings).eval().to(device)
    compiled = copy.deepcopy(eager).compile()
    big, other = batches
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        out_c = compiled(big, forces=True)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out_c2 = compiled(other, forces=True)
        recompile_s = time.perf_counter() - t0
    fallback = compiled.compiled.failure
    out_e, out_e2 = eager(big, forces=True), eager(other, forces=True)
    row = {
        "parameters": sum(p.numel() for p in eager.parameters()),
        "settings": "SMALL_SETTINGS" if small else "defaults",
        "compile_s": compile_s,
        "recompile_s": recompile_s,
        "fell_back": fallback,
        "warnings": sorted({str(w.message).splitlines()[0][:200] for w in caught}),
        "max_abs_dE_eV": max(max_diff(out_c, out_e, "energy"), max_diff(out_c2, out_e2, "energy")),
        "max_abs_dF_eV_per_A": max(max_diff(out_c, out_e, "forces"), max_diff(out_c2, out_e2, "forces")),
        "max_abs_E_eV": float(out_e["energy"].detach().abs().max()),
        "max_abs_F_eV_per_A": float(out_e["forces"].detach().abs().max()),
    }

    def step(model):
        def run():
            out = model(big, forces=True)
            return out["energy"], out["forces"]

        return run

    times = time_interleaved({"eager": step(eager), "compiled": step(compiled)}, device, warmup, repeats)
    row["eager_s"] = float(np.median(times["eager"]))
    row["compiled_s"] = float(np.median(times["compiled"]))
    row["all_s"] = times
    row["speedup"] = row["eager_s"] / row["compiled_s"]
    return row


def markdown(dataset: str, rows: dict) -> str:
    lines = [
        f"**{dataset}** (forward + forces; speed-up = eager time / compiled time, medians)",
        "",
        "| backbone | settings | eager ms | compiled ms | speed-up | compile s | 2nd size s | max abs ΔE (eV) | max abs ΔF (eV/Å) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error']} |||||||")
            continue
        note = f" (fell back: {r['fell_back'][:60]})" if r["fell_back"] else ""
        lines.append(
            f"| {name}{note} | {r['settings']} | {r['eager_s'] * 1e3:.1f} | {r['compiled_s'] * 1e3:.1f} | "
            f"{r['speedup']:.2f} | {r['compile_s']:.0f} | {r['recompile_s']:.1f} | {r['max_abs_dE_eV']:.1e} | "
            f"{r['max_abs_dF_eV_per_A']:.1e} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    import geognn

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbones", default=None, help="comma-separated names (default: all of geognn.BACKBONES)")
    ap.add_argument("--datasets", default="qm9", help="comma-separated: qm9, oc20 (default: qm9)")
    ap.add_argument("--small", action="store_true", help="geognn.backbones.SMALL_SETTINGS instead of defaults")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the other backbones' rows of the existing output file; replace only those measured now",
    )
    args = ap.parse_args(argv)
    names = list(geognn.BACKBONES) if not args.backbones else [n.strip() for n in args.backbones.split(",")]
    bad = [n for n in names if n not in geognn.BACKBONES]
    datasets = [d.strip() for d in args.datasets.split(",")]
    bad += [d for d in datasets if d not in DATASETS]
    if bad:
        raise SystemExit(f"unknown backbone or dataset: {bad}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = device_info(device)
    print(
        f"bench_compile: {info['cpu']}, {info['cores_logical']} logical cores, torch {torch.__version__} with "
        f"{info['torch_threads']} threads, load average {info['load_average_1_5_15'][0]:.2f}, {info['date']}"
    )
    t_start = time.perf_counter()
    results = {}
    out = args.out or RESULTS / ("bench_compile" + ("_small" if args.small else "") + ".json")
    previous = json.loads(out.read_text()) if args.merge and out.exists() else None
    if previous is not None:
        theirs = (previous.get("settings"), previous.get("warmup"), previous.get("repeats"))
        ours = ("SMALL_SETTINGS" if args.small else "defaults", args.warmup, args.repeats)
        if theirs != ours:
            raise SystemExit(
                f"{out}: cannot merge: its (settings, warmup, repeats) are {theirs}, this run's {ours}; "
                "rerun with the same ones or without --merge"
            )

    def payload() -> dict:
        if previous is not None:
            return merged(previous)
        return {
            "benchmark": "bench_compile",
            "machine": dict(info, load_average_now=list(os.getloadavg())),
            "settings": "SMALL_SETTINGS" if args.small else "defaults",
            "compile": "Model.compile(): torch.compile(backend='inductor', dynamic=True) of the backbone",
            "warmup": args.warmup,
            "repeats": args.repeats,
            "results": results,
            "wall_s": time.perf_counter() - t_start,
        }

    def merged(old: dict) -> dict:
        """``old`` with this run's rows in place of its rows for the same backbones."""
        run = dict(info, load_average_now=list(os.getloadavg()), wall_s=time.perf_counter() - t_start)
        data = copy.deepcopy(old)
        for d, r in results.items():
            entry = data["results"].setdefault(d, {k: v for k, v in r.items() if k != "rows"})
            if (entry["n_structures"], entry["n_atoms"]) != (r["n_structures"], r["n_atoms"]):
                raise SystemExit(f"{out}: cannot merge: its {d} batch differs from this run's")
            entry.setdefault("rows", {}).update({name: dict(row, run=run) for name, row in r["rows"].items()})
        data.setdefault("merged_runs", [])
        data["merged_runs"] = [m for m in data["merged_runs"] if m.get("date") != info["date"]]
        data["merged_runs"].append(dict(run, backbones=names, datasets=list(results)))
        return data

    for d in datasets:
        cutoff = DATASETS[d]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if d == "qm9":
                graphs = qm9_graphs(32, cutoff)
                batches = (geognn.collate(graphs).to(device), geognn.collate(graphs[:16]).to(device))
            else:
                graphs = oc20_graphs(8, cutoff)
                batches = (geognn.collate(graphs).to(device), geognn.collate(graphs[:4]).to(device))
        rows = {}
        results[d] = {"n_structures": int(batches[0].num_graphs), "n_atoms": int(batches[0].num_nodes), "rows": rows}
        for name in names:
            torch._dynamo.reset()  # each backbone compiles from a clean Dynamo state
            try:
                rows[name] = bench_backbone(name, batches, cutoff, args.small, device, args.warmup, args.repeats)
                r = rows[name]
                print(
                    f"   {d:<5}{name:<10} eager {r['eager_s'] * 1e3:8.1f} ms  compiled {r['compiled_s'] * 1e3:8.1f} ms  "
                    f"speed-up {r['speedup']:.2f}  compile {r['compile_s']:.0f} s  |dE| {r['max_abs_dE_eV']:.1e}  "
                    f"|dF| {r['max_abs_dF_eV_per_A']:.1e}"
                    + (f"  FELL BACK: {r['fell_back']}" if r["fell_back"] else ""),
                    flush=True,
                )
            except Exception as exc:  # noqa: BLE001 - one failing backbone does not stop the run
                rows[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
                print(f"   {d:<5}{name:<10} error: {rows[name]['error']}", flush=True)
            write_results(payload(), out)  # after every backbone: a stopped run keeps what it measured
    final = payload()
    print()
    for d, r in results.items():
        print(markdown(d, r["rows"]))
        print()
    print(f"wall time {time.perf_counter() - t_start:.0f} s; wrote {write_results(final, out)}")
    return final


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
