"""MD throughput through ASE: NVE Velocity Verlet via GeoGNNCalculator, and mace-torch's MACECalculator.

What it measures
    Atom-steps per second (atoms x MD steps / wall seconds) of ASE's ``VelocityVerlet`` (1 fs) on
    rattled diamond Si (``ase.build.bulk("Si", "diamond", a=5.43, cubic=True)`` repeated to 64, 512
    and 4,096 atoms, periodic, rattled 0.05 Å, 300 K Maxwell-Boltzmann velocities, all seeded),
    driven by ``GeoGNNCalculator`` for geognn's schnet, painn and mace, and by mace-torch's
    ``MACECalculator`` around a ``ScaleShiftMACE`` of the size of geognn's ``mace`` (the same size
    mapping as bench_backbones.py). A step is everything ASE does: the calculator builds the graph
    (neighbour list with shifts), runs energy + forces + stress (both calculators compute the
    stress on a periodic cell), and the integrator updates positions and momenta.

    The models are untrained, at their constructors' defaults with cutoff 5 Å (hyperparameters and
    parameter counts go into the JSON): schnet 128 channels x 6 interactions, 50 Gaussians; painn
    128 channels x 3 layers, 20 radial functions; mace 32x0e + 32x1o hidden, max_ell 3,
    correlation 3, 2 interactions, 8 Bessel functions, radial MLP [64, 64], avg_num_neighbors 10.
    mace-torch gets the same sizes; its parameter count is smaller (67,728 against 691,753) because
    geognn's per-element tables are sized for Z <= 100 and mace-torch's for the one element present.
    Timing does not depend on the weights.

    Each (model, size) runs in its own worker process (this script with ``--worker``; the
    mace-torch one under the python of a separate venv, since mace-torch pins e3nn 0.4.4), started
    from the same saved state. After 2 warm-up steps, each pass runs ``--steps`` steps; the passes
    of all models of one size are interleaved (order reversed every other pass) so that background
    load hits them alike, and the median pass gives the atom-steps/s. Peak memory is the worker's
    peak resident set size (VmHWM in /proc/self/status: the kernel's peak RSS of the whole process,
    python + torch included; ``rss_after_import_mb`` is the RSS before the model and structure were
    built, for scale).

    Drift (``--drift-steps``, default 1,000): the 64-atom cell run in this process for that many
    1 fs NVE steps through GeoGNNCalculator with the same untrained model (``--drift-model``,
    default mace) in float32 and in float64 (weights cast), starting from the same state; the
    total energy per atom relative to step 0 is reported in meV/atom (final, largest excursion,
    and a linear-fit slope per ps). An untrained surface is not Si: it only has to stay smooth and
    keep atoms apart. Untrained mace does (closest pair ~1.3 Å after 500 steps, 220 K); untrained
    schnet pulls atoms together until two overlap within 1,000 steps (geognn then refuses the
    structure), and untrained painn heats the cell to ~1,000 K within 50 steps, pairs at 1.07 Å.

Usage
    .venv/bin/python benchmarks/bench_md.py --threads 1                      # full
    .venv/bin/python benchmarks/bench_md.py --quick                          # smoke test
    .venv/bin/python benchmarks/bench_md.py --sizes 64 --models mace --no-drift
    .venv/bin/python benchmarks/bench_md.py --mace-venv /tmp/mace_venv       # where mace-torch lives

The mace-torch venv (no geognn in it):
    python3 -m venv /tmp/mace_venv && /tmp/mace_venv/bin/pip install torch==2.13.0 mace-torch ase
Without it the reference is skipped with a message.

Writes benchmarks/results/bench_md.json (``--quick``: bench_md_quick.json) with machine info.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ReferenceWorker, machine_info, nve_energy_drift, serve_steps, write_results  # noqa: E402  (stdlib-only at import)

CUTOFF = 5.0  # Å, every model
TIMESTEP_FS = 1.0
TEMPERATURE_K = 300.0
SIZES = {64: 2, 512: 4, 4096: 8}  # atoms -> repeats of the 8-atom cubic diamond Si cell
#: MD steps per timed pass at each size (4,096 atoms: 1 step a pass keeps a run short on 2 cores)
DEFAULT_STEPS = {64: 10, 512: 3, 4096: 1}
GEOGNN_MODELS = ("schnet", "painn", "mace")
MACE_VENV = Path(os.environ.get("GEOGNN_MACE_VENV", "/tmp/mace_venv"))


# ----------------------------------------------------------------------------------- structures
def make_state(n_atoms: int, path: Path) -> None:
    """Rattled diamond Si of ``n_atoms`` atoms with seeded 300 K momenta, saved as npz."""
    from ase.build import bulk
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(SIZES[n_atoms])
    atoms.rattle(0.05, seed=0)
    thermalize_momenta(atoms, temperature_K=TEMPERATURE_K, rng=np.random.default_rng(0))  # Maxwell-Boltzmann
    Stationary(atoms)
    np.savez(path, numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell[:], momenta=atoms.get_momenta())


def load_state(path):
    from ase import Atoms

    d = np.load(path)
    atoms = Atoms(numbers=d["numbers"], positions=d["positions"], cell=d["cell"], pbc=True)
    atoms.set_momenta(d["momenta"])
    return atoms


def memory_mb() -> dict:
    """Current and peak RSS of this process (MB), from /proc/self/status."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[{"VmRSS": "rss_mb", "VmHWM": "peak_rss_mb"}[key]] = int(value.split()[0]) / 1024
    return out


# ----------------------------------------------------------------------------------- models
def geognn_model(name: str):
    import torch

    import geognn

    torch.manual_seed(0)
    return geognn.build_model(name, cutoff=CUTOFF).eval()


def mace_torch_model(numbers, config: dict):
    """ScaleShiftMACE of the size in ``config`` (keywords as bench_backbones.mace_config writes),
    built by _mace_reference.scaleshift_mace (the same model bench_backbones.py times)."""
    from _mace_reference import scaleshift_mace

    return scaleshift_mace(sorted({int(x) for x in numbers}), config)


def mace_torch_config() -> tuple[dict, dict]:
    """mace-torch size keywords matching geognn's mace defaults (bench_backbones' mapping)."""
    from bench_backbones import mace_config, resolved_hparams

    backbone = geognn_model("mace").backbone
    return mace_config(resolved_hparams(backbone), CUTOFF, avg_num_neighbors=10.0)


# ----------------------------------------------------------------------------------- worker side
def worker(args) -> None:
    """One model on one saved state: build, warm up, then answer ``step`` (a pass) and ``rss``."""
    proto = sys.stdout  # answers go here; anything libraries print goes to stderr
    sys.stdout = sys.stderr
    import warnings

    warnings.simplefilter("ignore")
    import torch
    from ase import units
    from ase.md.verlet import VelocityVerlet

    if args.threads:
        torch.set_num_threads(args.threads)
    before = memory_mb()["rss_mb"]
    atoms = load_state(args.state)
    if args.worker == "mace_torch":
        import e3nn
        import mace
        from mace.calculators import MACECalculator

        torch.set_default_dtype(getattr(torch, args.dtype))
        model = mace_torch_model(atoms.numbers, json.loads(args.config)).to(getattr(torch, args.dtype))
        atoms.calc = MACECalculator(models=model, device="cpu", default_dtype=args.dtype)
        versions = {"mace": mace.__version__, "e3nn": e3nn.__version__, "torch": torch.__version__}
    else:
        import e3nn

        import geognn
        from geognn import GeoGNNCalculator

        model = geognn_model(args.worker)
        atoms.calc = GeoGNNCalculator(model, dtype=args.dtype)
        versions = {"geognn": geognn.__version__, "e3nn": e3nn.__version__, "torch": torch.__version__}
    dyn = VelocityVerlet(atoms, timestep=TIMESTEP_FS * units.fs)
    dyn.run(2)  # warm-up: first calls allocate, e3nn code generation
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    info = {
        "ready": True,
        "parameters": sum(p.numel() for p in model.parameters()),
        "versions": versions,
        "torch_threads": torch.get_num_threads(),
        "rss_after_import_mb": before,
        "sanity": {"finite": bool(np.isfinite(e) and np.isfinite(f).all()), "max_abs_force": float(abs(f).max())},
    }
    print(json.dumps(info), file=proto, flush=True)
    serve_steps(lambda: dyn.run(args.steps), proto, {"rss": memory_mb})


# ----------------------------------------------------------------------------------- parent side
class MDWorker(ReferenceWorker):
    def __init__(self, label, python, state, steps, args, workdir, config=None):
        cmd = [str(python), str(Path(__file__).resolve()), "--worker", label, "--state", str(state)]
        cmd += ["--steps", str(steps), "--dtype", args.dtype, "--config", json.dumps(config or {})]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        super().__init__(label, cmd, workdir)


def run_size(n_atoms, models, args, workdir, mace_cfg, unavailable) -> dict:
    state = workdir / f"si_{n_atoms}.npz"
    make_state(n_atoms, state)
    steps = args.steps.get(n_atoms, DEFAULT_STEPS[n_atoms])
    workers = {}
    try:
        for name in models:
            workers[name] = MDWorker(name, sys.executable, state, steps, args, workdir)
        if mace_cfg is not None:
            try:
                workers["mace_torch"] = MDWorker("mace_torch", args.mace_python, state, steps, args, workdir, mace_cfg)
            except Exception as exc:  # reference missing or broken: say so, keep geognn's numbers
                unavailable["mace_torch"] = f"{type(exc).__name__}: {exc}"[:300]
        names = list(workers)
        times = {k: [] for k in names}
        for p in range(args.passes):
            for name in names if p % 2 == 0 else names[::-1]:
                times[name].append(workers[name]())
        rows = {}
        for name in names:
            med = statistics.median(times[name])
            w = workers[name]
            rows[name] = {
                "atom_steps_per_s": n_atoms * steps / med,
                "ms_per_step": 1e3 * med / steps,
                "pass_seconds": times[name],
                "steps_per_pass": steps,
                **w.ask("rss"),
                **{k: w.info[k] for k in ("parameters", "versions", "torch_threads", "rss_after_import_mb", "sanity")},
            }
            print(
                f"  {n_atoms:5d} atoms  {name:10s} {rows[name]['atom_steps_per_s']:9.0f} atom-steps/s  "
                f"peak RSS {rows[name]['peak_rss_mb']:7.0f} MB  ({w.info['parameters']:,} parameters)",
                flush=True,
            )
        if "mace_torch" in rows and "mace" in rows:
            rows["mace"]["ratio_vs_mace_torch"] = (
                rows["mace"]["atom_steps_per_s"] / rows["mace_torch"]["atom_steps_per_s"]
            )
            print(f"  {n_atoms:5d} atoms  mace / mace_torch = {rows['mace']['ratio_vs_mace_torch']:.2f}", flush=True)
        return rows
    finally:
        for w in workers.values():
            w.close()


def drift(n_steps: int, threads: int | None, name: str = "mace") -> dict:
    """Total-energy drift of 64-atom Si NVE through GeoGNNCalculator, float32 vs float64 (meV/atom)."""
    import torch

    from geognn import GeoGNNCalculator

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        make_state(64, Path(tmp) / "s.npz")
        start = Path(tmp) / "s.npz"
        model = geognn_model(name)
        out = {"structure": "64-atom diamond Si, rattled 0.05 Å, 300 K", "model": f"untrained {name} (defaults)"}
        out.update(steps=n_steps, timestep_fs=TIMESTEP_FS)
        for dtype in ("float32", "float64"):
            atoms = load_state(start)
            atoms.calc = GeoGNNCalculator(model, dtype=dtype)
            out[dtype] = nve_energy_drift(atoms, n_steps, TIMESTEP_FS)
            out[dtype]["final_min_distance_A"] = float(min_distance(atoms))
            row = out[dtype]
            print(
                f"  drift {dtype}: final {row['final_drift_meV_per_atom']:+.4f} meV/atom, max |dE| "
                f"{row['max_abs_deviation_meV_per_atom']:.4f} meV/atom over {n_steps} steps "
                f"(E_pot std {row['potential_energy_std_meV_per_atom']:.2f} meV/atom)",
                flush=True,
            )
    return out


def min_distance(atoms) -> float:
    d = atoms.get_all_distances(mic=True)
    np.fill_diagonal(d, np.inf)
    return float(d.min())


def parse_steps(text: str | None) -> dict:
    if not text:
        return {}
    try:
        return {int(k): int(v) for k, v in (item.split(":") for item in text.split(","))}
    except ValueError:
        raise SystemExit(f"--steps: expected SIZE:STEPS[,SIZE:STEPS], e.g. 64:10,512:3; got {text!r}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="64,512,4096", help=f"atoms per cell, from {sorted(SIZES)}")
    ap.add_argument("--models", default=",".join(GEOGNN_MODELS), help="geognn backbones")
    ap.add_argument("--steps", default=None, help=f"MD steps per pass as SIZE:STEPS,... (default {DEFAULT_STEPS})")
    ap.add_argument("--passes", type=int, default=3, help="timed passes per model (median reported; default 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) in every worker")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="model dtype (default float32)")
    ap.add_argument("--mace-venv", type=Path, default=MACE_VENV, help=f"venv with mace-torch (default {MACE_VENV})")
    ap.add_argument("--no-reference", action="store_true", help="skip mace-torch")
    ap.add_argument("--drift-steps", type=int, default=1000, help="NVE steps of the drift run (default 1000)")
    ap.add_argument("--no-drift", action="store_true", help="skip the float32/float64 drift run")
    ap.add_argument(
        "--drift-model",
        default="mace",
        choices=GEOGNN_MODELS,
        help="untrained backbone of the drift run (default mace)",
    )
    ap.add_argument("--quick", action="store_true", help="64 atoms, 1 step a pass, 2 passes, 20 drift steps")
    ap.add_argument("--out", type=Path, default=None)
    # worker mode (internal)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--state", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--config", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.steps = int(args.steps)
        worker(args)
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        raise SystemExit(f"--sizes: {bad} not among {sorted(SIZES)}")
    models = [m for m in args.models.split(",") if m]
    args.steps = parse_steps(args.steps)
    if args.quick:
        sizes, args.passes, args.drift_steps = [64], 2, 20
        args.steps = {64: 1}
    args.mace_python = args.mace_venv / "bin" / "python"

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    info.update(torch_threads=args.threads or torch.get_num_threads(), dtype=args.dtype)
    unavailable, mace_cfg, mace_source = {}, None, None
    if not args.no_reference:
        if args.mace_python.exists():
            mace_cfg, mace_source = mace_torch_config()
        else:
            unavailable["mace_torch"] = f"no mace-torch venv at {args.mace_venv} (see this script's docstring)"
    from bench_backbones import resolved_hparams

    hparams = {name: resolved_hparams(geognn_model(name).backbone) for name in models}
    results = {
        "script": "benchmarks/bench_md.py",
        "machine": info,
        "settings": {
            "structure": "diamond Si (a = 5.43 Å) repeated, rattled 0.05 Å, 300 K, periodic",
            "integrator": f"ase VelocityVerlet, {TIMESTEP_FS} fs, NVE",
            "cutoff_A": CUTOFF,
            "passes": args.passes,
            "memory": "peak RSS of each worker process (VmHWM, /proc/self/status), MB",
            "models": "untrained, constructor defaults, cutoff 5 Å",
            "geognn_hparams": hparams,
            "mace_torch_config": mace_cfg,
            "mace_torch_config_source": mace_source,
        },
        "sizes": {},
        "unavailable": unavailable,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            print(f"{n} atoms:", flush=True)
            results["sizes"][str(n)] = run_size(n, models, args, Path(tmp), mace_cfg, unavailable)
    out = args.out or RESULTS / ("bench_md_quick.json" if args.quick else "bench_md.json")
    write_results(results, out)  # throughput kept even if the drift run fails
    if not args.no_drift:
        try:
            results["drift"] = drift(args.drift_steps, args.threads, args.drift_model)
        except Exception as exc:  # e.g. an untrained surface that lets atoms overlap
            results["drift"] = {"model": args.drift_model, "error": f"{type(exc).__name__}: {exc}"[:300]}
            print("drift run failed:", results["drift"]["error"])
    for k, v in unavailable.items():
        print(f"unavailable: {k}: {v}")
    print("wrote", write_results(results, out))


if __name__ == "__main__":
    main()
