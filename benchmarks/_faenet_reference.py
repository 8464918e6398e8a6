"""faenet (PyPI) side of bench_frames.py: runs in its own venv (.venv-faenet), driven over a pipe.

geognn's venv does not carry the reference package (it pulls mendeleev, pandas, ...), so
bench_frames.py starts this script with .venv-faenet/bin/python and talks to it line by line:

    python benchmarks/_faenet_reference.py INPUTS.npz CONFIG_JSON [--threads N]

INPUTS.npz (written by bench_frames.py from geognn's graphs, so both models use the same edges):
    positions [N,3] Å, atomic_numbers [N], tags [N], batch [N], cell [B,3,3] Å (zeros for molecules),
    edge_index [2,E] (faenet's get_pbc_distances uses pos[row] - pos[col] + offsets, row = geognn's
    neighbour j, col = centre i: the same vector r_ij as geognn), cell_offsets [E,3] integer images,
    neighbors [B] edges per structure.
CONFIG_JSON: keyword arguments of faenet.FAENet (sizes; regress_forces="from_energy").
torch-scatter (a faenet dependency) has no wheel for torch 2.13: see install_torch_scatter_shim.

After building the model it prints one JSON line {"ready": ...}; then per command line:
    step      -> {"s": seconds of one SFA step: model_forward on one stochastic 3D frame per structure
                  (frames from faenet.transforms.FrameAveraging, computed before the clock starts, as
                  a data loader would), energies + forces from autograd rotated back, eval mode, float32}
    transform -> {"s": seconds to draw new stochastic frames for the whole batch (per structure, in Python)}
    memory    -> {"peak_bytes": peak tensor memory of one step (same method as _common.py)}
    quit      -> exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import serve_steps  # noqa: E402  (stdlib-only at import time)


def install_torch_scatter_shim() -> bool:
    """faenet imports ``torch_scatter.scatter`` (one call: the sum of atom energies per structure,
    ``scatter(h, batch, dim=0, reduce="add")``). torch-scatter has no wheel for torch 2.13 and does
    not build here, so, only when it is missing, a pure-torch function with the same result for that
    call (``index_add``) is registered under its name. Returns True when the shim is used."""
    try:
        import torch_scatter  # noqa: F401

        return False
    except ImportError:
        import types

        def scatter(src, index, dim=0, dim_size=None, reduce="sum"):
            if dim != 0 or reduce not in ("sum", "add"):
                raise NotImplementedError(f"shim supports dim=0, reduce='sum'/'add' only; got {dim}, {reduce}")
            size = int(index.max()) + 1 if dim_size is None else dim_size
            return src.new_zeros((size,) + src.shape[1:]).index_add_(0, index, src)

        sys.modules["torch_scatter"] = types.SimpleNamespace(scatter=scatter)
        return True


def main() -> None:
    shim = install_torch_scatter_shim()
    from faenet import FAENet, FrameAveraging, model_forward
    from torch_geometric.data import Batch, Data

    ap = argparse.ArgumentParser()
    ap.add_argument("inputs")
    ap.add_argument("config")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    proto = sys.stdout
    sys.stdout = sys.stderr
    if args.threads:
        torch.set_num_threads(args.threads)
    inp = dict(np.load(args.inputs))
    config = json.loads(args.config)
    torch.manual_seed(0)
    model = FAENet(**config).eval()

    batch_of_atom = torch.from_numpy(inp["batch"].astype(np.int64))
    n_graphs = int(inp["cell"].shape[0])
    counts = torch.bincount(batch_of_atom, minlength=n_graphs)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    pos = torch.from_numpy(inp["positions"]).float()
    cell = torch.from_numpy(inp["cell"]).float()
    transform = FrameAveraging("3D", "stochastic")

    def new_frames():
        fa_pos, fa_cell, fa_rot = [], [], []
        for b in range(n_graphs):
            d = Data(pos=pos[starts[b] : starts[b + 1]], cell=cell[b : b + 1])
            d = transform(d)
            fa_pos.append(d.fa_pos[0])
            fa_cell.append(d.fa_cell[0])
            fa_rot.append(d.fa_rot[0])
        return torch.cat(fa_pos), torch.cat(fa_cell), torch.cat(fa_rot)

    base = dict(
        atomic_numbers=torch.from_numpy(inp["atomic_numbers"].astype(np.int64)),
        tags=torch.from_numpy(inp["tags"].astype(np.int64)),
        batch=batch_of_atom,
        edge_index=torch.from_numpy(inp["edge_index"].astype(np.int64)),
        cell_offsets=torch.from_numpy(inp["cell_offsets"]).float(),
        neighbors=torch.from_numpy(inp["neighbors"].astype(np.int64)),
        natoms=counts,
    )
    frames = [new_frames()]

    def step():
        fa_pos, fa_cell, fa_rot = frames[0]
        batch = Batch(
            pos=pos.clone(), cell=cell.clone(), fa_pos=[fa_pos.clone()], fa_cell=[fa_cell], fa_rot=[fa_rot], **base
        )
        preds = model_forward(batch, model, "3D", mode="inference", crystal_task=True)
        return preds["energy"], preds["forces"]

    e, f = step()
    n_atoms = pos.shape[0]
    assert e.reshape(-1).shape == (n_graphs,) and f.shape == (n_atoms, 3), (e.shape, f.shape)
    import faenet

    print(
        json.dumps(
            {
                "ready": True,
                "parameters": sum(p.numel() for p in model.parameters()),
                "versions": {"faenet": getattr(faenet, "__version__", "0.1.3"), "torch": torch.__version__},
                "torch_threads": torch.get_num_threads(),
                "torch_scatter_shim": shim,
                "sanity": {
                    "finite": bool(torch.isfinite(e).all() and torch.isfinite(f).all()),
                    "max_abs_force": float(f.detach().abs().max()),
                },
            }
        ),
        file=proto,
        flush=True,
    )

    def time_frames() -> dict:  # FAENet's frame computation (a data transform there), timed alone
        t0 = time.perf_counter()
        frames[0] = new_frames()
        return {"s": time.perf_counter() - t0}

    serve_steps(step, proto, {"transform": time_frames})


if __name__ == "__main__":
    main()
