"""What the benchmark scripts share: where data and results live, machine facts, QM9 and OC20 input,
interleaved timing and peak memory of one step."""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("GEOGNN_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
RESULTS = HERE / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_state() -> dict:
    """Commit of the checkout and which geognn files differ from it (results depend on them)."""

    def git(*args):
        try:
            return subprocess.run(
                ["git", *args], cwd=HERE.parent, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except Exception:  # pragma: no cover - informational only
            return ""

    changed = git("status", "--porcelain", "--", "geognn").splitlines()
    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "geognn_changed_files": [line.split(None, 1)[1] for line in changed],
    }


def machine_info(modules=("numpy", "torch", "torch_geometric", "geognn")) -> dict:
    """CPU, cores, Python, versions of ``modules``, load average, git state and date."""
    versions = {}
    for mod in modules:
        try:
            versions[mod.split(".")[0]] = __import__(mod, fromlist=["__version__"]).__version__
        except Exception:  # pragma: no cover - informational only
            pass
    return {
        "cpu": cpu_name(),
        "cores_logical": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "load_average_1_5_15": list(os.getloadavg()),
        "git": git_state(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def load_qm9(n: int):
    """The first ``n`` molecules of the shared QM9 subset, read by geognn's own QM9 reader."""
    from geognn.datasets.qm9 import read_qm9pack_csv

    return read_qm9pack_csv(DATA / "qm9" / "qm9pack_subset_stride26.csv", limit=n)


# ----------------------------------------------------------------------------- shared by the speed benchmarks
# (torch and geognn are imported inside the functions: _mace_reference.py imports this module from a
# venv that has torch but not geognn)
def device_info(device) -> dict:
    """machine_info() plus torch's thread count, the device and the GPU name."""
    import torch

    info = machine_info()
    info.update(torch_threads=torch.get_num_threads(), device=str(device))
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def qm9_graphs(n: int, cutoff: float):
    """geognn graphs of the first ``n`` molecules of the shared QM9 subset."""
    import geognn

    return [geognn.build_graph(atoms, cutoff) for atoms in load_qm9(n)]


def oc20_graphs(n: int, cutoff: float):
    """geognn graphs (pbc=True) of the first ``n`` of the 8 OC20 IS2RE systems in faenet_is2re_bs8.pt."""
    import torch
    from ase import Atoms

    import geognn

    batch = torch.load(DATA / "oc20" / "faenet_is2re_bs8.pt", weights_only=False)
    graphs = []
    for g in batch.to_data_list()[:n]:
        atoms = Atoms(
            numbers=g.atomic_numbers.long().numpy(),
            positions=g.pos.double().numpy(),
            cell=g.cell[0].double().numpy(),
            pbc=True,
        )
        graphs.append(geognn.build_graph(atoms, cutoff))
    return graphs


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict, device, warmup: int, repeats: int) -> dict:
    """Seconds of each of ``repeats`` calls per function, the functions interleaved.

    Each round calls every function once, the order alternating (reversed every other round) so
    that background load hits all alike. A function with attribute ``self_timed = True`` (a model
    in another process) times itself and returns its seconds.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            fn = fns[name]
            if getattr(fn, "self_timed", False):
                times[name].append(float(fn()))
                continue
            gc.collect()
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def peak_memory_bytes(fn, device) -> int:
    """Peak tensor memory allocated during one call of ``fn`` above what was allocated before it."""
    import torch

    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    running = [0]

    def walk(nodes):
        for node in nodes:
            if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
                running.append(node.extra_fields.total_allocated)
            walk(node.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    return int(max(running))


def add_run_options(parser, reference: str | None = None) -> None:
    """The --quick/--device/--threads/--repeats options that ``setup_run`` reads.

    ``reference``: name of a reference model run in another process, which gets --threads too.
    """
    also = f", also for {reference}" if reference else " (default: torch's)"
    parser.add_argument("--quick", action="store_true", help="1 warm-up, 3 timed steps, 2 OC20 systems (smoke test)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:k]")
    parser.add_argument("--threads", type=int, default=None, help=f"torch.set_num_threads(N){also}")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per model")


def setup_run(args):
    """Device, torch threads and run sizes from the options of ``add_run_options``.

    Returns ``(device, n_qm9, n_oc20, warmup, repeats)``: a QM9 batch of 32 and 8 OC20 systems
    (2 with --quick), and the warm-up and timed steps per model.
    """
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        return device, 32, 2, 1, args.repeats or 3
    return device, 32, 8, 3, args.repeats or (15 if device.type == "cpu" else 50)


def nve_energy_drift(atoms, steps: int, timestep_fs: float) -> dict:
    """Run ``steps`` of ASE Velocity Verlet (``timestep_fs``) on ``atoms`` (calculator and velocities
    set) and return the total-energy drift statistics: final change and largest excursion
    (meV/atom), least-squares slope (meV/atom/ps), potential-energy std (meV/atom), final
    temperature (K) and wall time (s)."""
    import numpy as np
    from ase import units
    from ase.md.verlet import VelocityVerlet

    etot, epot = [atoms.get_total_energy()], [atoms.get_potential_energy()]
    dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)

    def record():
        etot.append(atoms.get_total_energy())
        epot.append(atoms.get_potential_energy())

    dyn.attach(record, interval=1)
    start = time.perf_counter()
    dyn.run(steps)
    seconds = time.perf_counter() - start
    de = 1e3 * (np.array(etot[1:]) - etot[0]) / len(atoms)  # meV/atom (record also runs at step 0)
    t_ps = np.arange(len(de)) * timestep_fs / 1e3
    return {
        "final_drift_meV_per_atom": float(de[-1]),
        "max_abs_deviation_meV_per_atom": float(np.abs(de).max()),
        "slope_meV_per_atom_per_ps": float(np.polyfit(t_ps, de, 1)[0]),
        "potential_energy_std_meV_per_atom": float(1e3 * np.std(epot) / len(atoms)),
        "final_temperature_K": float(atoms.get_temperature()),
        "seconds": seconds,
    }


def write_results(payload: dict, out: Path) -> str:
    """Write ``payload`` as JSON to ``out``; returns the path to print (relative to the repo when inside it)."""
    import json

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return str(out.relative_to(HERE.parent) if out.is_relative_to(HERE.parent) else out)


# --------------------------------------------------------------------------- reference packages
# A reference implementation that needs its own environment (mace-torch with e3nn 0.4.4, faenet)
# runs as a worker process of that environment's python. The protocol is one JSON line per answer
# on the worker's stdout: first {"ready": true, ...}, then one answer per command read from stdin
# ("step" -> {"s": seconds of one step}, "memory" -> {"peak_bytes": ...}, "quit").


def serve_steps(step, proto, commands: dict | None = None) -> None:
    """Worker side: answer ``step``/``memory``/``quit`` (and ``commands``: name -> fn() -> dict) from stdin."""
    import sys

    import torch

    commands = dict(commands or {})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "step":
            gc.collect()
            t0 = time.perf_counter()
            step()
            answer = {"s": time.perf_counter() - t0}
        elif cmd == "memory":
            answer = {"peak_bytes": peak_memory_bytes(step, torch.device("cpu"))}
        elif cmd in commands:
            answer = commands[cmd]()
        elif cmd in ("quit", ""):
            break
        else:
            answer = {"error": f"unknown command {cmd!r}"}
        print(json.dumps(answer), file=proto, flush=True)


class ReferenceWorker:
    """Parent side: a worker process (see ``serve_steps``); calling it returns the seconds of one step.

    ``self_timed``: the worker measures its own step, so ``time_interleaved`` uses the returned
    seconds rather than the round trip.
    """

    self_timed = True

    def __init__(self, label: str, cmd: list[str], workdir: Path):
        self.label = label
        self.stderr = open(workdir / f"{label}_stderr.txt", "w+")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
            env=dict(os.environ, PYTHONWARNINGS="ignore"),
        )
        self.info = self._read()
        if not self.info.get("ready"):
            raise RuntimeError(f"{label} worker not ready: {self.info}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        while line and not line.startswith("{"):  # a library printed to stdout: skip
            line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            self.stderr.seek(0)
            tail = self.stderr.read().strip().splitlines()[-5:]
            raise RuntimeError(f"{self.label} worker exited ({self.proc.returncode}): " + " | ".join(tail))
        return json.loads(line)

    def ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def __call__(self) -> float:
        return self.ask("step")["s"]

    def memory(self) -> int:
        return int(self.ask("memory")["peak_bytes"])

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except Exception:  # pragma: no cover
            self.proc.kill()
        self.stderr.close()
