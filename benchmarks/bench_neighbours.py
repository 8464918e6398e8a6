"""Graph-building (neighbour list) speed: geognn vs ASE, matscipy, vesin and pymatgen.

What it measures
    Wall-clock time to find every pair (i, j, image shift S) within a cutoff, on three
    real or realistic workloads:

    (a) molecules  1,000 QM9 molecules (shared/data/qm9/qm9pack_subset_stride26.csv, first
                   rows), no periodicity, cutoff 5 Å; time = one pass over all molecules.
    (b) crystals   300 MP-20 crystals (shared/data/cif/mp20_subset/train.csv, first rows),
                   fully periodic, cutoff 6 Å; time = one pass over all crystals.
    (c) supercell  one rattled fcc Cu supercell, bulk("Cu", "fcc", a=3.61, cubic=True) *
                   (14, 14, 13) = 10,192 atoms, cutoff 6 Å.

    Contestants (all asked for "ijS", i.e. centre, neighbour, integer image shift):
        geognn.neighbour_list   geognn.graph.neighbours.neighbour_list (vesin, grouped by centre)
        geognn.build_graph      geognn.build_graph(atoms, cutoff): the full graph as a model
                                sees it (validation incl. overlap check, isolated-atom check, torch Data)
        ase                     ase.neighborlist.neighbor_list("ijS", atoms, cutoff)
        matscipy                matscipy.neighbours.neighbour_list("ijS", atoms, cutoff) (it needs
                                a non-singular cell: molecules get a box with 1 Å vacuum, set
                                before timing; a translation does not change i, j, S)
        vesin                   vesin.NeighborList(cutoff, full_list=True).compute(..., "ijS");
                                vesin's default n_threads=0 uses every core (as geognn does, it
                                calls vesin); "vesin[1 thread]" is the single-threaded run, like
                                ASE, matscipy and pymatgen
        pymatgen                Structure.get_neighbor_list(cutoff) (periodic sets only)

How
    All parsing (CSV, CIF -> pymatgen Structure -> ase.Atoms, numpy arrays for vesin/geognn)
    happens before timing. Each contestant gets one warm-up pass, then 7 timed passes (3 with
    --quick, or --repeats N; time.perf_counter, gc collected before and disabled during each
    pass); the median is reported. Before timing, the edge sets of every contestant are checked to be identical
    (same per-structure edge counts and same (i, j, S) triples), so all timings are for the
    same output. Everything runs in one process on the CPU; only vesin (and geognn, which calls
    it) may use several threads. On a shared machine, run it when nothing else is busy: the
    load average at the start is written to the JSON.

    Targets (from the issue), checked for geognn.build_graph and geognn.neighbour_list:
      * within 1.5x of the fastest *other* library, on every dataset;
      * >= 20x faster than ASE on crystals (datasets b and c).

Run
    .venv/bin/python benchmarks/bench_neighbours.py            # full (~1-2 min)
    .venv/bin/python benchmarks/bench_neighbours.py --quick    # smoke test (a few seconds)

    Results go to benchmarks/results/bench_neighbours.json (--quick: bench_neighbours_quick.json,
    so a smoke test never overwrites the full results). Data folder: ../shared/data next to the
    repository, or $GEOGNN_SHARED_DATA.
"""

from __future__ import annotations

import argparse
import gc
import time
import warnings
from pathlib import Path

import numpy as np
from _common import DATA, RESULTS, load_qm9, machine_info, write_results

SPEED_TARGET_VS_FASTEST = 1.5  # geognn time / fastest other library's time must be <= this
SPEED_TARGET_VS_ASE = 20.0  # ASE time / geognn time must be >= this on crystals
UNSTABLE_SPREAD = 2.0  # warn when a library's slowest timed pass is this many times its fastest


# --------------------------------------------------------------------------------------- data
def load_mp20(n: int):
    import pandas as pd
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    df = pd.read_csv(DATA / "cif" / "mp20_subset" / "train.csv", nrows=n, usecols=["cif"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen's CIF parser warns about rounding etc.
        structures = [Structure.from_str(cif, fmt="cif") for cif in df["cif"]]
    return [AseAtomsAdaptor.get_atoms(s) for s in structures], structures


def cu_supercell(reps):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * tuple(reps)
    atoms.rattle(stdev=0.05, seed=0)
    return atoms


# --------------------------------------------------------------------------------------- contestants
def make_contestants(cutoff: float, periodic: bool):
    """name -> (prepare(atoms, structure) -> input, run(input) -> (i, j, S))."""
    import ase.neighborlist
    import matscipy.neighbours
    import vesin

    import geognn
    from geognn.graph.neighbours import neighbour_list

    def arrays(atoms, _s):
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = np.ascontiguousarray(atoms.cell[:], dtype=np.float64) if pbc.any() else np.zeros((3, 3))
        return np.ascontiguousarray(atoms.positions, dtype=np.float64), cell, pbc

    vesin_nl = vesin.NeighborList(cutoff=cutoff, full_list=True)  # n_threads=0: all cores
    vesin_nl1 = vesin.NeighborList(cutoff=cutoff, full_list=True, n_threads=1)

    def run_vesin(x):
        pos, cell, pbc = x
        return vesin_nl.compute(pos, cell, pbc.tolist(), "ijS")

    def run_vesin1(x):
        pos, cell, pbc = x
        return vesin_nl1.compute(pos, cell, pbc.tolist(), "ijS")

    def run_build_graph(atoms):
        g = geognn.build_graph(atoms, cutoff)
        return g.edge_index[1].numpy(), g.edge_index[0].numpy(), g.edge_shift.numpy()

    def matscipy_input(atoms, _s):
        if periodic:
            return atoms
        # matscipy inverts the cell even without periodicity: give molecules a box around
        # them (a translation, so i, j and S are unchanged), outside the timed region
        boxed = atoms.copy()
        boxed.center(vacuum=1.0)
        return boxed

    c = {
        "geognn.neighbour_list": (arrays, lambda x: neighbour_list(*x, cutoff)),
        "geognn.build_graph": (lambda a, s: a, run_build_graph),
        "ase": (lambda a, s: a, lambda a: ase.neighborlist.neighbor_list("ijS", a, cutoff)),
        "matscipy": (matscipy_input, lambda a: matscipy.neighbours.neighbour_list("ijS", a, cutoff)),
        "vesin": (arrays, run_vesin),
        "vesin[1 thread]": (arrays, run_vesin1),
    }
    if periodic:

        def run_pymatgen(s):
            centre, neighbour, images, _ = s.get_neighbor_list(cutoff)
            return centre, neighbour, images

        c["pymatgen"] = (lambda a, s: s, run_pymatgen)
    return c


def canonical(i, j, S) -> np.ndarray:
    """[E, 5] int64 rows (i, j, S) sorted, to compare edge sets across libraries."""
    rows = np.column_stack(
        [
            np.asarray(i, np.int64),
            np.asarray(j, np.int64),
            np.rint(np.asarray(S, dtype=np.float64)).astype(np.int64).reshape(-1, 3),
        ]
    )
    return rows[np.lexsort(rows.T[::-1])]


def check_identical_edges(name: str, inputs: dict, contestants: dict) -> list[int]:
    """Assert every contestant returns the same edge set per structure; return edge counts."""
    reference = None
    for lib, (_, run) in contestants.items():
        sets = [canonical(*run(x)[:3]) for x in inputs[lib]]
        if reference is None:
            ref_lib, reference = lib, sets
            continue
        counts, ref_counts = [len(s) for s in sets], [len(s) for s in reference]
        assert counts == ref_counts, (
            f"{name}: edge counts differ between {ref_lib} ({sum(ref_counts)}) and {lib} ({sum(counts)})"
        )
        for k, (a, b) in enumerate(zip(reference, sets)):
            assert np.array_equal(a, b), f"{name}: structure {k}: {lib} and {ref_lib} find different edges"
    return [len(s) for s in reference]


def time_pass(run, xs, repeats: int) -> tuple[float, list[float]]:
    """Median seconds of one pass of ``run`` over ``xs`` (after one warm-up pass)."""
    for x in xs:  # warm-up
        run(x)
    times = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            for x in xs:
                run(x)
            times.append(time.perf_counter() - t0)
        finally:
            gc.enable()
    return float(np.median(times)), times


# --------------------------------------------------------------------------------------- main
def bench_dataset(
    name: str, description: str, atoms_list, structures, cutoff: float, periodic: bool, repeats: int
) -> dict:
    contestants = make_contestants(cutoff, periodic)
    if structures is None and periodic:
        from pymatgen.io.ase import AseAtomsAdaptor

        structures = [AseAtomsAdaptor.get_structure(a) for a in atoms_list]
    structures = structures or [None] * len(atoms_list)
    inputs = {lib: [prep(a, s) for a, s in zip(atoms_list, structures)] for lib, (prep, _) in contestants.items()}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. geognn's IsolatedAtomWarning: not what we time
        edge_counts = check_identical_edges(name, inputs, contestants)
        timings = {}
        for lib, (_, run) in contestants.items():
            med, all_t = time_pass(run, inputs[lib], repeats)
            timings[lib] = {"median_s": med, "all_s": all_t}

    n_atoms = sum(len(a) for a in atoms_list)
    others = {k: v["median_s"] for k, v in timings.items() if not k.startswith("geognn")}
    fastest_other = min(others, key=others.get)
    fastest_all = min(timings, key=lambda k: timings[k]["median_s"])
    t_ase = timings["ase"]["median_s"]
    for lib, t in timings.items():
        t["per_structure_us"] = t["median_s"] / len(atoms_list) * 1e6
        t["ratio_to_fastest"] = t["median_s"] / timings[fastest_all]["median_s"]
        t["ase_over_this"] = t_ase / t["median_s"]
    targets = {}
    for lib in ("geognn.neighbour_list", "geognn.build_graph"):
        t = timings[lib]["median_s"]
        ratio = t / others[fastest_other]
        targets[lib] = {
            "vs_fastest_other": {
                "ratio": ratio,
                "target": f"<= {SPEED_TARGET_VS_FASTEST}",
                "met": ratio <= SPEED_TARGET_VS_FASTEST,
            }
        }
        if periodic:
            speedup = t_ase / t
            targets[lib]["vs_ase"] = {
                "speedup": speedup,
                "target": f">= {SPEED_TARGET_VS_ASE}",
                "met": speedup >= SPEED_TARGET_VS_ASE,
            }
    spread = max(max(t["all_s"]) / min(t["all_s"]) for t in timings.values())
    return {
        "dataset": name,
        "description": description,
        "cutoff_A": cutoff,
        "periodic": periodic,
        "n_structures": len(atoms_list),
        "n_atoms": n_atoms,
        "n_edges": int(sum(edge_counts)),
        "repeats": repeats,
        "timing_spread_max_over_min": spread,
        "fastest": fastest_all,
        "fastest_other_library": fastest_other,
        "timings": timings,
        "targets": targets,
    }


def print_dataset(r: dict) -> None:
    print(f"\n== {r['dataset']}: {r['description']}")
    print(
        f"   {r['n_structures']} structures, {r['n_atoms']} atoms, {r['n_edges']} edges "
        f"(identical edge sets in all libraries), cutoff {r['cutoff_A']} Å, "
        f"median of {r['repeats']} passes"
    )
    print(f"   {'library':<24}{'time/pass':>12}{'per struct':>13}{'x fastest':>11}{'ASE/this':>10}")
    for lib, t in sorted(r["timings"].items(), key=lambda kv: kv[1]["median_s"]):
        print(
            f"   {lib:<24}{t['median_s'] * 1e3:>10.2f}ms{t['per_structure_us']:>11.1f}us"
            f"{t['ratio_to_fastest']:>10.2f}x{t['ase_over_this']:>9.1f}x"
        )
    if r["timing_spread_max_over_min"] > UNSTABLE_SPREAD:
        print(
            f"   WARNING: unstable timings (slowest/fastest pass of one library = "
            f"{r['timing_spread_max_over_min']:.1f}): the machine is probably busy; rerun when idle"
        )
    for lib, tg in r["targets"].items():
        v = tg["vs_fastest_other"]
        line = (
            f"   target {lib}: {v['ratio']:.2f}x the fastest other library "
            f"({r['fastest_other_library']}), target {v['target']}: {'MET' if v['met'] else 'NOT MET'}"
        )
        if "vs_ase" in tg:
            a = tg["vs_ase"]
            line += f"; {a['speedup']:.1f}x faster than ASE, target {a['target']}: {'MET' if a['met'] else 'NOT MET'}"
        print(line)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke test)")
    ap.add_argument("--repeats", type=int, default=None, help="timed passes per contestant")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args(argv)

    if args.quick:
        n_qm9, n_mp20, reps, repeats = 60, 30, (5, 5, 5), args.repeats or 3
    else:
        n_qm9, n_mp20, reps, repeats = 1000, 300, (14, 14, 13), args.repeats or 7
    out = args.out or RESULTS / ("bench_neighbours_quick.json" if args.quick else "bench_neighbours.json")

    info = machine_info(("numpy", "torch", "ase", "matscipy", "vesin", "pymatgen.core", "torch_geometric", "geognn"))
    print(
        f"bench_neighbours{' (quick)' if args.quick else ''}: {info['cpu']}, "
        f"{info['cores_logical']} logical cores, torch {info['versions']['torch']}, {info['date']}, "
        f"load average {info['load_average_1_5_15'][0]:.2f}"
    )
    print("   versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print("   times are one full pass over the dataset; parsing/conversion is outside the timed region")

    t_start = time.perf_counter()
    qm9 = load_qm9(n_qm9)
    mp20_atoms, mp20_structures = load_mp20(n_mp20)
    cu = cu_supercell(reps)

    results = [
        bench_dataset("molecules", f"{n_qm9} QM9 molecules (non-periodic)", qm9, None, 5.0, False, repeats),
        bench_dataset(
            "crystals", f"{n_mp20} MP-20 crystals (periodic)", mp20_atoms, mp20_structures, 6.0, True, repeats
        ),
        bench_dataset(
            "supercell",
            f"rattled fcc Cu supercell {'x'.join(map(str, reps))} ({len(cu)} atoms, periodic)",
            [cu],
            None,
            6.0,
            True,
            repeats,
        ),
    ]
    for r in results:
        print_dataset(r)

    libs = ("geognn.neighbour_list", "geognn.build_graph")
    met = {lib: [v["met"] for r in results for v in r["targets"][lib].values()] for lib in libs}
    all_met = {lib: all(m) for lib, m in met.items()}
    print("\nsummary: " + "; ".join(f"{lib}: {sum(m)} of {len(m)} targets met" for lib, m in met.items()))
    payload = {
        "benchmark": "bench_neighbours",
        "quick": args.quick,
        "machine": info,
        "targets": {
            "vs_fastest_other_max_ratio": SPEED_TARGET_VS_FASTEST,
            "vs_ase_min_speedup_crystals": SPEED_TARGET_VS_ASE,
        },
        "all_targets_met": all_met,
        "datasets": results,
        "wall_s": time.perf_counter() - t_start,
    }
    print(f"wrote {write_results(payload, out)}")
    return payload


if __name__ == "__main__":
    main()
