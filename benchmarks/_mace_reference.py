"""mace-torch side of bench_backbones.py: runs in its own venv (.venv-mace), driven over a pipe.

mace-torch pins e3nn 0.4.4, which cannot live in geognn's venv (e3nn 0.6), so bench_backbones.py
starts this script with .venv-mace/bin/python and talks to it one line at a time:

    python benchmarks/_mace_reference.py INPUTS.npz CONFIG_JSON [--threads N]

INPUTS.npz (written by bench_backbones.py from geognn's graph, so both models use the same edges):
    positions [N,3] Å, atomic_numbers [N], batch [N], cell [B,3,3] Å,
    edge_index [2,E] in mace's convention (row 0 = sender = geognn's centre i, row 1 = receiver =
    geognn's neighbour j, so mace's vector pos[receiver] - pos[sender] + shift equals geognn's
    r_ij), shifts [E,3] Å (Cartesian image offsets), unit_shifts [E,3] (integer images).
CONFIG_JSON: keyword arguments of mace.modules.ScaleShiftMACE that set its size (r_max,
    num_bessel, num_polynomial_cutoff, max_ell, num_interactions, hidden_irreps, correlation,
    MLP_irreps, radial_MLP, avg_num_neighbors).

After building the model it prints one JSON line {"ready": ..., "parameters": ..., "sanity": ...};
then for each command line on stdin it prints one JSON line:
    step    -> {"s": seconds of one energy + forces step, timed here (gc.collect before)}
    memory  -> {"peak_bytes": peak tensor memory of one step (same method as _common.py)}
    quit    -> exits.
One step = model(data, compute_force=True) in eval mode (energies + autograd forces), float32.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

torch.serialization.add_safe_globals([slice])  # e3nn 0.4.4 under torch >= 2.6 (see REFERENCE_SETUP.md)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import serve_steps  # noqa: E402  (stdlib-only module, shared with geognn's side)


def scaleshift_mace(elements: list[int], config: dict):
    """mace-torch's ScaleShiftMACE for ``elements`` at the size in ``config`` (keywords of
    ScaleShiftMACE, see the module docstring), zero atomic energies, seed 0. Also used by
    bench_md.py's mace-torch worker."""
    from e3nn import o3
    from mace import modules

    torch.manual_seed(0)
    return modules.ScaleShiftMACE(
        r_max=float(config["r_max"]),
        num_bessel=int(config["num_bessel"]),
        num_polynomial_cutoff=int(config["num_polynomial_cutoff"]),
        max_ell=int(config["max_ell"]),
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=int(config["num_interactions"]),
        num_elements=len(elements),
        hidden_irreps=o3.Irreps(config["hidden_irreps"]),
        MLP_irreps=o3.Irreps(config["MLP_irreps"]),
        atomic_energies=np.zeros(len(elements)),
        avg_num_neighbors=float(config["avg_num_neighbors"]),
        atomic_numbers=elements,
        correlation=int(config["correlation"]),
        gate=torch.nn.functional.silu,
        radial_MLP=list(config["radial_MLP"]),
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )


def build(inputs: dict, config: dict):

    z = inputs["atomic_numbers"].astype(np.int64)
    elements = sorted({int(x) for x in z})
    index = {e: k for k, e in enumerate(elements)}
    model = scaleshift_mace(elements, config).eval()
    n_graphs = int(inputs["cell"].shape[0])
    batch = torch.from_numpy(inputs["batch"].astype(np.int64))
    counts = torch.bincount(batch, minlength=n_graphs)
    one_hot = torch.zeros(len(z), len(elements))
    one_hot[torch.arange(len(z)), torch.tensor([index[int(x)] for x in z])] = 1.0
    data = {
        "positions": torch.from_numpy(inputs["positions"]).float(),
        "node_attrs": one_hot,
        "edge_index": torch.from_numpy(inputs["edge_index"].astype(np.int64)),
        "shifts": torch.from_numpy(inputs["shifts"]).float(),
        "unit_shifts": torch.from_numpy(inputs["unit_shifts"]).float(),
        "cell": torch.from_numpy(inputs["cell"]).float().reshape(-1, 3),
        "batch": batch,
        "ptr": torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
        "head": torch.zeros(n_graphs, dtype=torch.long),
    }
    return model, data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("inputs")
    ap.add_argument("config")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    proto = sys.stdout  # answers go here; anything the libraries print goes to stderr
    sys.stdout = sys.stderr
    if args.threads:
        torch.set_num_threads(args.threads)
    inputs = dict(np.load(args.inputs))
    config = json.loads(args.config)
    model, data = build(inputs, config)

    def step():
        d = dict(data)
        d["positions"] = data["positions"].detach().clone()  # mace sets requires_grad on it
        out = model(d, training=False, compute_force=True)
        return out["energy"], out["forces"]

    e, f = step()
    n_atoms, n_graphs = data["positions"].shape[0], int(data["ptr"].numel() - 1)
    assert e.shape == (n_graphs,) and f.shape == (n_atoms, 3), (e.shape, f.shape)
    ok = bool(torch.isfinite(e).all() and torch.isfinite(f).all())
    import e3nn
    import mace

    print(
        json.dumps(
            {
                "ready": True,
                "parameters": sum(p.numel() for p in model.parameters()),
                "versions": {
                    "mace": getattr(mace, "__version__", "?"),
                    "e3nn": e3nn.__version__,
                    "torch": torch.__version__,
                },
                "torch_threads": torch.get_num_threads(),
                "sanity": {
                    "finite": ok,
                    "energy_first": [round(float(x), 4) for x in e.detach()[:3]],
                    "max_abs_force": float(f.detach().abs().max()),
                },
            }
        ),
        file=proto,
        flush=True,
    )
    serve_steps(step, proto)


if __name__ == "__main__":
    main()
