"""``geognn doctor``: what this machine runs, in a few lines to paste into a bug report.

Reports, in this order:

1. versions of python, geognn, torch, torch-geometric, e3nn, ase, pymatgen, vesin, numpy (and of
   the optional torch-scatter, matplotlib, tensorboard), "not installed" for those missing;
2. the path each feature takes: scatter (torch-scatter or pure torch, ``geognn.nn.scatter``),
   the device training picks (CUDA, MPS, CPU), TensorBoard logging or ``metrics.csv`` only, and the
   neighbour list (dense numpy search for molecules up to ``DENSE_MAX_ATOMS`` atoms, vesin for
   periodic or larger systems; ``geognn.graph.neighbours``), checked against ASE's on the test crystal;
3. one check per backbone of ``geognn.backbones.BACKBONES`` (small settings,
   ``geognn.backbones.SMALL_SETTINGS``; defaults for a backbone not listed there): a model on a batch of one
   rattled ethanol molecule and one rattled rock-salt NaCl cell (cutoff ``CUTOFF`` Å), energy,
   forces and stress by autograd in training mode, then ``backward()`` of a loss on energies and
   forces (the double backward training does). It passes when every output and every parameter
   gradient is finite, some gradient is non-zero, and the molecule's forces sum to zero
   (translation invariance) within ``FORCE_SUM_TOL``. The time is that of the whole check
   (build, forward, backward) in seconds.

``run_doctor`` returns the report as a dict, ``format_report`` turns it into text, and
``geognn doctor [--json]`` prints either; the exit status is 0 only if the neighbour-list check
and every backbone pass.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys
import time
import traceback

#: Distributions reported (name shown, distribution name); the last three are optional.
PACKAGES = (
    ("torch", "torch"),
    ("torch-geometric", "torch_geometric"),
    ("e3nn", "e3nn"),
    ("ase", "ase"),
    ("pymatgen", "pymatgen"),
    ("vesin", "vesin"),
    ("numpy", "numpy"),
    ("torch-scatter", "torch_scatter"),
    ("matplotlib", "matplotlib"),
    ("tensorboard", "tensorboard"),
)

#: Graph cutoff of the checks, Å.
CUTOFF = 4.0

#: |sum of the molecule's forces| allowed, eV/Å, per eV/Å of the largest force component: the
#: float32 round-off of a sum of 9 force vectors, measured ≤ 2.3e-7 for every backbone (CPU,
#: float32, geognn.backbones.SMALL_SETTINGS); an energy that depends on absolute positions gives O(1).
FORCE_SUM_TOL = 1e-4


def versions() -> dict[str, str]:
    """Version of python, geognn and each of ``PACKAGES`` ("not installed" when missing)."""
    out = {"python": platform.python_version()}
    try:
        from . import __version__

        out["geognn"] = __version__
    except Exception:  # noqa: BLE001 - a broken install is what the doctor is for
        out["geognn"] = "unknown"
    for shown, dist in PACKAGES:
        try:
            out[shown] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[shown] = "not installed"
    return out


def features() -> dict[str, str]:
    """The path each feature takes on this machine (one short line each)."""
    import torch

    out = {}
    try:
        from .nn import scatter

        if scatter.torch_scatter_enabled():
            out["scatter"] = "torch-scatter"
        elif scatter.find_torch_scatter() is not None:
            out["scatter"] = "pure torch (torch-scatter installed but GEOGNN_TORCH_SCATTER=0)"
        else:
            out["scatter"] = "pure torch (torch-scatter not installed)"
    except Exception as exc:  # noqa: BLE001
        out["scatter"] = f"ERROR {_one_line(exc)}"
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if cuda:
        n = torch.cuda.device_count()
        out["cuda"] = f"yes: {n} x {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    else:
        out["cuda"] = f"no (torch built {'with CUDA ' + torch.version.cuda if torch.version.cuda else 'for CPU'})"
    out["mps"] = "yes" if mps else "no"
    out["training device"] = "cuda" if cuda else "cpu"  # --device auto (mps only when asked for)
    out["threads"] = str(torch.get_num_threads())
    try:
        importlib.import_module("torch.utils.tensorboard")
        out["tensorboard"] = "yes: metrics.csv and tensorboard/ events"
    except Exception:  # noqa: BLE001 - ImportError, or a broken tensorboard install
        out["tensorboard"] = "no: metrics.csv only"
    try:
        from .graph.neighbours import DENSE_MAX_ATOMS

        out["neighbour list"] = (
            f"dense numpy for molecules <= {DENSE_MAX_ATOMS} atoms, vesin for periodic or larger systems"
        )
    except Exception as exc:  # noqa: BLE001
        out["neighbour list"] = f"ERROR {_one_line(exc)}"
    return out


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def doctor_structures():
    """(molecule, crystal): ethanol and a 2-atom NaCl rock-salt cell (a = 5.64 Å), both rattled
    (seeded) so that no force vanishes by symmetry."""
    from ase.build import bulk, molecule

    mol = molecule("CH3CH2OH")
    mol.rattle(0.05, seed=1)
    crystal = bulk("NaCl", "rocksalt", a=5.64)
    crystal.rattle(0.05, seed=2)
    return mol, crystal


def check_neighbours(crystal=None, cutoff: float = CUTOFF) -> dict:
    """geognn's neighbour pairs (vesin path) of the crystal vs ASE's ``neighbor_list``, as sets of (i, j, S)."""
    import numpy as np
    from ase.neighborlist import neighbor_list

    from .graph.neighbours import neighbour_list

    crystal = crystal if crystal is not None else doctor_structures()[1]
    try:
        i, j, S = neighbour_list(crystal.positions, crystal.cell[:], crystal.pbc, cutoff)
        ours = {(int(a), int(b), *map(int, s)) for a, b, s in zip(i, j, np.asarray(S))}
        ai, aj, aS = neighbor_list("ijS", crystal, cutoff)
        ref = {(int(a), int(b), *map(int, s)) for a, b, s in zip(ai, aj, aS)}
        ok = ours == ref
        detail = f"{len(ours)} pairs, as ASE" if ok else f"{len(ours)} pairs, ASE {len(ref)}: {len(ours ^ ref)} differ"
        return {"ok": ok, "detail": detail}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "detail": _one_line(exc)}


def check_backbone(name: str, device: str = "cpu", graphs=None) -> dict:
    """Forward + backward of a small ``name`` model on the molecule and the crystal (see the module
    docstring); returns {"name", "ok", "seconds", "detail"} and never raises."""
    import torch

    from .backbones import SMALL_SETTINGS
    from .graph.build import build_graph, collate
    from .model import build_model

    tic = time.perf_counter()
    try:
        if graphs is None:
            graphs = [build_graph(a, CUTOFF) for a in doctor_structures()]
        batch = collate(graphs).to(device)
        torch.manual_seed(0)
        model = build_model(name, cutoff=CUTOFF, forces=True, stress=True, **SMALL_SETTINGS.get(name, {}))
        model = model.to(device).train()
        out = model(batch, forces=True, stress=True)
        energy, forces, stress = out["energy"], out["forces"], out["stress"]
        problems = []
        if not bool(torch.isfinite(energy).all()):
            problems.append("energy not finite")
        if not bool(torch.isfinite(forces).all()):
            problems.append("forces not finite")
        if not bool(torch.isfinite(stress[1]).all()):  # the crystal (the molecule's stress is NaN by design)
            problems.append("stress not finite")
        n_mol = int(graphs[0].num_nodes)
        f_mol = forces[:n_mol].detach().double()
        drift = float(f_mol.sum(0).norm())
        scale = max(float(f_mol.abs().max()), 1e-12)
        if not drift <= FORCE_SUM_TOL * scale:
            problems.append(f"molecule forces sum to {drift:.2e} eV/Å (max force {scale:.2e})")
        loss = energy.pow(2).sum() + forces.pow(2).sum()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads or not any(bool(g.abs().sum() > 0) for g in grads):
            problems.append("no parameter gradient")
        elif not all(bool(torch.isfinite(g).all()) for g in grads):
            problems.append("parameter gradients not finite")
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.synchronize()
        ok, detail = not problems, "; ".join(problems)
    except Exception as exc:  # noqa: BLE001 - reported, the other backbones still run
        ok, detail = False, _one_line(exc)
        where = traceback.extract_tb(exc.__traceback__)
        if where:
            detail += f" ({where[-1].filename.rsplit('/', 1)[-1]}:{where[-1].lineno})"
    return {"name": name, "ok": ok, "seconds": time.perf_counter() - tic, "detail": detail}


def run_doctor(device: str = "auto", backbones=None) -> dict:
    """The whole report: {"versions", "features", "neighbours", "backbones": [check_backbone(...)], "ok"}.

    ``device``: "auto" (CUDA if available, else CPU, as training), "cpu", "cuda", "mps".
    ``backbones``: names to check (default: all of ``BACKBONES``).
    """
    report = {"versions": versions(), "features": features(), "device": None, "backbones": []}
    try:
        import torch

        report["device"] = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        from .backbones import BACKBONES
        from .graph.build import build_graph

        names = list(BACKBONES) if backbones is None else list(backbones)
        report["neighbours"] = check_neighbours()
        graphs = [build_graph(a, CUTOFF) for a in doctor_structures()]
        report["backbones"] = [check_backbone(n, report["device"], graphs) for n in names]
    except Exception as exc:  # noqa: BLE001 - e.g. a package that does not import
        report.setdefault("neighbours", {"ok": False, "detail": "not run"})
        report["error"] = _one_line(exc)
    report["ok"] = "error" not in report and report["neighbours"]["ok"] and all(b["ok"] for b in report["backbones"])
    return report


def format_report(report: dict) -> str:
    """The report as ~30 short lines of text."""
    lines = ["geognn doctor"]
    v = report["versions"]
    lines.append("versions:")
    lines += [f"  {k:<16}{val}" for k, val in v.items()]
    lines.append("paths:")
    lines += [f"  {k:<16}{val}" for k, val in report["features"].items()]
    nb = report.get("neighbours") or {"ok": False, "detail": "not run"}
    lines.append(f"  {'vesin vs ASE':<16}{'ok' if nb['ok'] else 'FAIL'} ({nb['detail']}, NaCl, cutoff {CUTOFF:g} Å)")
    if report.get("error"):
        lines.append(f"error: {report['error']}")
    if report["backbones"]:
        lines.append(f"backbones (forward + forces/stress + backward, ethanol + NaCl, on {report['device']}):")
        for b in report["backbones"]:
            status = "ok  " if b["ok"] else "FAIL"
            detail = f"  {b['detail']}" if b["detail"] else ""
            lines.append(f"  {b['name']:<10} {status} {b['seconds']:6.2f} s{detail}")
    failed = [b["name"] for b in report["backbones"] if not b["ok"]]
    if report["ok"]:
        lines.append(f"all {len(report['backbones'])} backbones pass")
    else:
        what = [f"backbones {', '.join(failed)}"] if failed else []
        what += ["neighbour list"] if not nb["ok"] else []
        what += ["set-up"] if report.get("error") else []
        lines.append("FAILED: " + "; ".join(what))
    return "\n".join(lines)


def main(device: str = "auto", as_json: bool = False, backbones=None, stream=None) -> int:
    """Run the doctor, print the report (text or JSON) to ``stream`` (stdout); 0 if all pass, else 1."""
    import json

    stream = stream or sys.stdout
    report = run_doctor(device, backbones)
    if as_json:
        print(json.dumps(report, indent=1, default=str), file=stream)
    else:
        print(format_report(report), file=stream)
    return 0 if report["ok"] else 1
