"""Energy + forces throughput and peak memory of every geognn backbone, with reference comparisons.

What it measures
    One "step" = energy of every structure in a batch plus forces by autograd (forces =
    -d(sum E)/d pos; a forward and a backward pass, no parameter gradients, models in eval mode,
    float32), as in bench_schnet.py. For every backbone in geognn.BACKBONES (or those given with
    --backbones) built with its DEFAULT hyperparameters, ``geognn.build_model(name, cutoff=...)``
    with no backbone keywords: median seconds per step, structures/s, atoms/s, peak memory of one
    step, parameter count. A backbone that cannot be built or run (placeholder raising
    NotImplementedError, error, non-finite output) is reported as "unavailable: <reason>" and skipped.

    References, on the same edges and in the same interleaved timing rounds:
      pyg_dimenetpp  torch_geometric.nn.models.DimeNetPlusPlus, hidden 128, out_emb 256,
                     int_emb 64, basis_emb 8, 4 blocks, num_spherical 7, num_radial 6, cutoff 5,
                     envelope exponent 5, output_initializer="glorot_orthogonal" (its default
                     'zeros' gives forces exactly 0). QM9 only: its forward() has no periodic shifts.
                     PyG builds its graph with torch-cluster's radius_graph and its triplets with
                     torch-sparse, neither installed here: the module-level ``radius_graph`` is
                     replaced by one returning geognn's edge_index, and ``triplets`` by a pure-torch
                     version (``torch_triplets`` below) that the script checks against a brute-force
                     enumeration before timing. Compared with geognn ``dimenetpp``; if geognn's
                     defaults differ from these values, a second geognn model with the reference's
                     values ("dimenetpp@ref") is built for the ratio (shown in the output).
      mace_torch     mace.modules.ScaleShiftMACE (mace-torch, e3nn 0.4.4) of the size of geognn's
                     ``mace`` defaults (hidden irreps, max_ell, correlation, interactions, radial
                     basis, polynomial envelope, radial MLP, cutoff = the dataset's), residual
                     interactions, 16x0e readout MLP: the model ``mace_run_train --model MACE`` builds.
                     mace-torch pins e3nn 0.4.4, so it runs in its own venv (.venv-mace, see
                     --mace-venv) in a subprocess (benchmarks/_mace_reference.py) that gets the
                     positions, cell, atomic numbers and geognn's edges and image shifts in an .npz,
                     times each step itself, and is driven step by step over a pipe, so its steps are
                     interleaved with the others. Without the venv it is skipped with a message.
                     Both datasets (mace takes periodic shifts).
    The ratio printed for dimenetpp and mace is geognn structures/s / reference structures/s
    (target >= 1.0). Weights are independent random initialisations: energies differ by design.

    Workloads (parsing and graph building outside the timed region):
      qm9   the first 32 molecules of shared/data/qm9/qm9pack_subset_stride26.csv, one batch,
            cutoff 5 Å, no periodicity.
      oc20  the 8 OC20 IS2RE systems of shared/data/oc20/faenet_is2re_bs8.pt (587 atoms), one
            batch, periodic, cutoff 6 Å (graphs by geognn.build_graph).

How
    Timing and memory as in bench_schnet.py (helpers in _common.py): 3 warm-up steps, then 15
    timed steps per model on CPU, 50 on GPU (--quick: 1 and 3, 2 OC20 systems; --repeats N), all
    models of a dataset interleaved in each round (order reversed every other round); median
    reported. Peak memory: torch.profiler(profile_memory=True) running total of CPU tensor
    allocations in one step (cuda: max_memory_allocated above the start). On a shared machine
    multi-threaded timings can be off by several times: run it idle or with --threads 1.

Run
    .venv/bin/python benchmarks/bench_backbones.py                       # full, CPU
    .venv/bin/python benchmarks/bench_backbones.py --quick               # smoke test
    .venv/bin/python benchmarks/bench_backbones.py --backbones schnet,mace --datasets qm9
    .venv/bin/python benchmarks/bench_backbones.py --threads 1 --no-reference

    Results: benchmarks/results/bench_backbones.json (bench_backbones_<device>.json off CPU; a
    _quick suffix with --quick).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import (
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

THROUGHPUT_TARGET = 1.0  # geognn structures/s divided by reference structures/s
UNSTABLE_SPREAD = 2.0  # warn when the slowest timed step of a model is this many times its fastest
DATASETS = {"qm9": 5.0, "oc20": 6.0}  # cutoff in Å
MACE_VENV = HERE.parent / ".venv-mace"

#: PyG DimeNet++ size for the comparison (the DimeNet++ paper's).
PYG_DIMENETPP = dict(
    hidden_channels=128,
    out_emb_channels=256,
    int_emb_size=64,
    basis_emb_size=8,
    num_blocks=4,
    num_spherical=7,
    num_radial=6,
    envelope_exponent=5,
)
#: PyG keyword -> names geognn's dimenetpp may use for it (first found wins).
DIMENETPP_ALIASES = {
    "hidden_channels": ["hidden_channels"],
    "out_emb_channels": ["out_emb_channels", "out_emb_size", "out_emb"],
    "int_emb_size": ["int_emb_size", "int_emb_channels", "int_emb"],
    "basis_emb_size": ["basis_emb_size", "basis_emb_channels", "basis_emb"],
    "num_blocks": ["num_layers", "num_blocks"],
    "num_spherical": ["num_spherical", "num_sbf"],
    "num_radial": ["num_radial", "num_rbf"],
    "envelope_exponent": ["envelope_exponent", "envelope_p", "p"],
}
#: mace-torch keyword -> (names geognn's mace may use, value if none is found: mace-torch's default)
MACE_ALIASES = {
    "num_bessel": (["num_bessel", "num_radial", "num_radial_basis", "num_basis", "num_rbf"], 8),
    "num_polynomial_cutoff": (["num_polynomial_cutoff", "envelope_exponent", "polynomial_p", "envelope_p", "p"], 5),
    "max_ell": (["max_ell", "lmax", "l_max"], 3),
    "correlation": (["correlation"], 3),
    "num_interactions": (["num_layers", "num_interactions"], 2),
    "radial_MLP": (["radial_MLP", "radial_mlp", "radial_hidden", "radial_hidden_channels"], [64, 64, 64]),
}


# --------------------------------------------------------------------------------------- helpers
def resolved_hparams(module) -> dict:
    """Constructor defaults of ``type(module)`` overridden by the keywords it recorded."""
    values = {}
    try:
        for name, p in inspect.signature(type(module).__init__).parameters.items():
            if p.default is not inspect.Parameter.empty:
                values[name] = p.default
    except (TypeError, ValueError):
        pass
    values.update(getattr(module, "hparams", {}) or {})
    return values


def short_reason(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}"[:200]


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def check_output(name, e, f, n_graphs, n_atoms) -> dict:
    if tuple(e.shape) != (n_graphs,) or tuple(f.shape) != (n_atoms, 3):
        raise RuntimeError(f"{name}: output shapes {tuple(e.shape)}, {tuple(f.shape)}")
    if not (torch.isfinite(e).all() and torch.isfinite(f).all()):
        raise RuntimeError(f"{name}: non-finite energy or forces")
    return {
        "energy_first": [round(float(x), 4) for x in e.detach()[:3]],
        "max_abs_force": float(f.detach().abs().max()),
    }


def geognn_step(model, batch):
    def step():
        out = model(batch, forces=True)
        return out["energy"], out["forces"]

    return step


# --------------------------------------------------------------------------------------- PyG DimeNet++
def torch_triplets(edge_index: torch.Tensor, num_nodes: int):
    """Pure-torch replacement of torch_geometric.nn.models.dimenet.triplets (same outputs, same
    order within each edge j->i as PyG's SparseTensor version: neighbours k sorted).

    edge_index[0] = j (source), [1] = i (target). For every edge j->i and every edge k->j with
    k != i: idx_kj, idx_ji (edge ids) and idx_i, idx_j, idx_k (node ids). Returns
    (col, row, idx_i, idx_j, idx_k, idx_kj, idx_ji) like PyG.
    """
    row, col = edge_index  # j -> i
    n_edges = row.numel()
    # edges grouped by target, sorted by (target, source): the CSR order of SparseTensor(row=col, col=row)
    order = torch.argsort(col * num_nodes + row, stable=True)
    counts = torch.bincount(col, minlength=num_nodes)
    ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    num = counts[row]  # edges k->j for each edge j->i
    idx_ji = torch.arange(n_edges, device=row.device).repeat_interleave(num)
    starts = (num.cumsum(0) - num).repeat_interleave(num)
    pos_in_group = torch.arange(idx_ji.numel(), device=row.device) - starts
    idx_kj = order[ptr[row].repeat_interleave(num) + pos_in_group]
    idx_i, idx_j, idx_k = col[idx_ji], row[idx_ji], row[idx_kj]
    mask = idx_i != idx_k
    return col, row, idx_i[mask], idx_j[mask], idx_k[mask], idx_kj[mask], idx_ji[mask]


def check_triplets(edge_index: torch.Tensor, num_nodes: int, node_graph: torch.Tensor) -> int:
    """Compare torch_triplets with a brute-force enumeration (per graph); returns the triplet count."""
    _, _, idx_i, idx_j, idx_k, idx_kj, idx_ji = torch_triplets(edge_index, num_nodes)
    row, col = edge_index
    assert torch.equal(idx_i, col[idx_ji]) and torch.equal(idx_j, row[idx_ji]) and torch.equal(idx_k, row[idx_kj])
    assert torch.equal(col[idx_kj], row[idx_ji]), "k->j edge does not end at j"
    expected = []
    edge_graph = node_graph[col]
    for g in torch.unique(edge_graph):
        e = torch.nonzero(edge_graph == g).flatten()
        kj, ji = torch.meshgrid(e, e, indexing="ij")
        ok = (col[kj] == row[ji]) & (row[kj] != col[ji])
        expected.append(torch.stack([kj[ok], ji[ok]], 1))
    expected = torch.cat(expected) if expected else torch.zeros(0, 2, dtype=torch.long)
    got = torch.stack([idx_kj, idx_ji], 1)
    key = lambda t: torch.sort(t[:, 0] * (row.numel() + 1) + t[:, 1]).values  # noqa: E731
    assert got.shape == expected.shape and torch.equal(key(got), key(expected)), (
        f"triplets differ from brute force: {got.shape[0]} vs {expected.shape[0]}"
    )
    return int(got.shape[0])


def make_pyg_dimenetpp(batch, cutoff: float, device):
    import torch_geometric.nn.models.dimenet as dimenet_module

    edge_index = batch.edge_index
    n_triplets = check_triplets(edge_index.cpu(), int(batch.num_nodes), batch.batch.cpu())

    def fixed_radius_graph(pos, r=None, batch=None, max_num_neighbors=None, **kwargs):
        return edge_index

    dimenet_module.radius_graph = fixed_radius_graph
    dimenet_module.triplets = torch_triplets
    torch.manual_seed(0)
    model = (
        dimenet_module.DimeNetPlusPlus(
            out_channels=1, cutoff=cutoff, output_initializer="glorot_orthogonal", **PYG_DIMENETPP
        )
        .eval()
        .to(device)
    )

    def step():
        pos = batch.pos.detach().requires_grad_(True)
        energy = model(batch.z, pos, batch.batch).view(-1)
        forces = -torch.autograd.grad(energy.sum(), pos)[0]
        return energy, forces

    return model, step, n_triplets


def dimenetpp_matching(geognn_hparams: dict) -> tuple[dict, dict, list]:
    """(geognn keywords giving PyG's values where defaults differ, {pyg_key: (geognn_key, value)}, unknown)."""
    overrides, mapping, unknown = {}, {}, []
    for pyg_key, names in DIMENETPP_ALIASES.items():
        name = next((n for n in names if n in geognn_hparams), None)
        if name is None:
            unknown.append(pyg_key)
            continue
        mapping[pyg_key] = (name, geognn_hparams[name])
        if geognn_hparams[name] != PYG_DIMENETPP[pyg_key]:
            overrides[name] = PYG_DIMENETPP[pyg_key]
    return overrides, mapping, unknown


# --------------------------------------------------------------------------------------- mace-torch
def mace_config(geognn_hparams: dict | None, cutoff: float, avg_num_neighbors: float) -> tuple[dict, dict]:
    """ScaleShiftMACE size keywords from geognn's mace defaults; and where each value came from."""
    hp = dict(geognn_hparams or {})
    cfg, source = {"r_max": cutoff, "MLP_irreps": "16x0e", "avg_num_neighbors": avg_num_neighbors}, {}
    for key, (names, default) in MACE_ALIASES.items():
        name = next((n for n in names if n in hp and hp[n] is not None), None)
        cfg[key], source[key] = (hp[name], f"geognn {name}") if name else (default, "mace-torch default")
    if isinstance(cfg["radial_MLP"], int):
        cfg["radial_MLP"] = [cfg["radial_MLP"]] * 3
    cfg["radial_MLP"] = [int(x) for x in cfg["radial_MLP"]]
    if isinstance(hp.get("hidden_irreps"), str):
        cfg["hidden_irreps"], source["hidden_irreps"] = hp["hidden_irreps"], "geognn hidden_irreps"
    else:
        h_name = "hidden_channels" if "hidden_channels" in hp else None
        l_name = next(
            (
                n
                for n in ("max_L", "hidden_max_ell", "hidden_lmax", "max_l_hidden", "hidden_l", "L_max")
                if n in hp and hp[n] is not None
            ),
            None,
        )
        h = int(hp[h_name]) if h_name else 128
        lmax = int(hp[l_name]) if l_name else 1
        cfg["hidden_irreps"] = " + ".join(f"{h}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))
        source["hidden_irreps"] = (
            f"{'geognn hidden_channels' if h_name else 'default 128 channels'}, "
            f"{'geognn ' + l_name if l_name else 'L = 1 (mace default max_L)'}"
        )
    if isinstance(hp.get("avg_num_neighbors"), (int, float)):
        cfg["avg_num_neighbors"], source["avg_num_neighbors"] = (
            float(hp["avg_num_neighbors"]),
            "geognn avg_num_neighbors",
        )
    source["r_max"] = "dataset cutoff"
    return cfg, source


class MaceReference(ReferenceWorker):
    """mace-torch in a subprocess of .venv-mace; calling it returns the seconds one step took there."""

    def __init__(self, python: Path, batch, config: dict, threads: int | None, workdir: Path):
        i = batch.edge_index[1]
        shifts = torch.einsum("ek,ekd->ed", batch.edge_shift.double(), batch.cell.double()[batch.batch[i]])
        edge_index = batch.edge_index.flip(0)  # mace: [sender, receiver] = [geognn centre i, neighbour j]
        pos = batch.pos.double()
        vec_mace = pos[edge_index[1]] - pos[edge_index[0]] + shifts
        import geognn

        vec_ours = geognn.edge_vectors(batch).double()
        self.max_vector_diff = float((vec_mace - vec_ours).abs().max()) if vec_ours.numel() else 0.0
        assert self.max_vector_diff < 1e-4, f"mace edge vectors differ from geognn's by {self.max_vector_diff}"
        inputs = workdir / "mace_inputs.npz"
        np.savez(
            inputs,
            positions=batch.pos.double().cpu().numpy(),
            atomic_numbers=batch.z.cpu().numpy(),
            batch=batch.batch.cpu().numpy(),
            cell=batch.cell.double().cpu().numpy(),
            edge_index=edge_index.cpu().numpy(),
            shifts=shifts.cpu().numpy(),
            unit_shifts=batch.edge_shift.double().cpu().numpy(),
        )
        cmd = [str(python), str(HERE / "_mace_reference.py"), str(inputs), json.dumps(config)]
        if threads:
            cmd += ["--threads", str(threads)]
        super().__init__("mace", cmd, workdir)


# --------------------------------------------------------------------------------------- one dataset
def bench(
    dataset: str,
    graphs,
    cutoff: float,
    names: list[str],
    device,
    warmup: int,
    repeats: int,
    reference: bool,
    mace_python: Path,
    threads: int | None,
    workdir: Path,
) -> dict:
    import geognn

    batch = geognn.collate(graphs).to(device)
    n_graphs, n_atoms, n_edges = int(batch.num_graphs), int(batch.num_nodes), int(batch.edge_index.shape[1])
    fns, info, unavailable, hparams = {}, {}, {}, {}
    models = {}
    for name in names:
        try:
            torch.manual_seed(0)
            model = geognn.build_model(name, cutoff=cutoff).eval().to(device)
            step = geognn_step(model, batch)
            sanity = check_output(name, *step(), n_graphs, n_atoms)
        except Exception as exc:  # noqa: BLE001 - any failure makes the backbone unavailable, not the run
            unavailable[name] = short_reason(exc)
            if not isinstance(exc, NotImplementedError):
                traceback.print_exc(limit=3)
            continue
        models[name] = model
        hparams[name] = resolved_hparams(model.backbone)
        fns[name] = step
        info[name] = {
            "kind": "geognn",
            "parameters": n_params(model),
            "sanity": sanity,
            "hparams": {
                k: v for k, v in hparams[name].items() if isinstance(v, (int, float, str, bool, list, type(None)))
            },
        }

    refs, notes = {}, []
    mace_ref = None
    if reference and "dimenetpp" in names:
        if batch.pbc.any():
            notes.append("pyg_dimenetpp: not run on this dataset (PyG's forward() takes no periodic shifts)")
        else:
            try:
                pyg, step, n_trip = make_pyg_dimenetpp(batch, cutoff, device)
                sanity = check_output("pyg_dimenetpp", *step(), n_graphs, n_atoms)
                fns["pyg_dimenetpp"] = step
                info["pyg_dimenetpp"] = {
                    "kind": "reference",
                    "parameters": n_params(pyg),
                    "sanity": sanity,
                    "hparams": dict(PYG_DIMENETPP, cutoff=cutoff, output_initializer="glorot_orthogonal"),
                }
                notes.append(
                    f"pyg_dimenetpp: geognn edges via patched radius_graph; pure-torch triplets checked "
                    f"against brute force ({n_trip} triplets, identical)"
                )
                target = "dimenetpp"
                if "dimenetpp" in hparams:
                    overrides, mapping, unknown = dimenetpp_matching(hparams["dimenetpp"])
                    if overrides:
                        torch.manual_seed(0)
                        matched = geognn.build_model("dimenetpp", cutoff=cutoff, **overrides).eval().to(device)
                        step_m = geognn_step(matched, batch)
                        fns["dimenetpp@ref"] = step_m
                        info["dimenetpp@ref"] = {
                            "kind": "geognn",
                            "parameters": n_params(matched),
                            "sanity": check_output("dimenetpp@ref", *step_m(), n_graphs, n_atoms),
                            "hparams": overrides,
                        }
                        target = "dimenetpp@ref"
                        notes.append(
                            f"dimenetpp defaults differ from the PyG reference's size: ratio uses "
                            f"dimenetpp@ref = dimenetpp with {overrides}"
                        )
                    if unknown:
                        notes.append(f"dimenetpp: no geognn argument found for PyG's {unknown}: assumed equal")
                    refs["dimenetpp"] = {
                        "reference": "pyg_dimenetpp",
                        "geognn": target,
                        "hparam_mapping": {k: list(v) for k, v in mapping.items()},
                    }
                else:
                    refs["dimenetpp"] = {"reference": "pyg_dimenetpp", "geognn": None}
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc(limit=4)
                unavailable["pyg_dimenetpp"] = short_reason(exc)
    if reference and "mace" in names:
        if not mace_python.exists():
            unavailable["mace_torch"] = (
                f"no mace-torch venv ({mace_python} missing; create it as described in "
                f"/work/shared/REFERENCE_SETUP.md, or pass --mace-venv)"
            )
        elif device.type != "cpu":
            unavailable["mace_torch"] = "mace-torch reference runs on CPU only in this script"
        else:
            try:
                cfg, source = mace_config(hparams.get("mace"), cutoff, n_edges / max(n_atoms, 1))
                mace_ref = MaceReference(mace_python, batch, cfg, threads, workdir)
                fns["mace_torch"] = mace_ref
                info["mace_torch"] = {
                    "kind": "reference",
                    "parameters": mace_ref.info["parameters"],
                    "sanity": mace_ref.info["sanity"],
                    "hparams": cfg,
                    "hparam_source": source,
                    "versions": mace_ref.info["versions"],
                    "torch_threads": mace_ref.info["torch_threads"],
                }
                if not mace_ref.info["sanity"]["finite"]:
                    raise RuntimeError("mace-torch gave non-finite energies or forces")
                notes.append(
                    f"mace_torch: ScaleShiftMACE {cfg['hidden_irreps']}, max_ell {cfg['max_ell']}, "
                    f"correlation {cfg['correlation']}, {cfg['num_interactions']} interactions, "
                    f"{cfg['num_bessel']} Bessel, p={cfg['num_polynomial_cutoff']}, radial MLP "
                    f"{cfg['radial_MLP']}, r_max {cutoff}; same edges and shifts (max |dr| "
                    f"{mace_ref.max_vector_diff:.1e} Å); sizes from: "
                    + ", ".join(f"{k} <- {v}" for k, v in source.items() if k != "r_max")
                )
                n_el = len(torch.unique(batch.z))
                notes.append(
                    f"mace_torch: parameter counts differ at equal size mainly because mace-torch sizes its "
                    f"per-element weights (product basis, self-connection) for the {n_el} elements present, "
                    f"geognn's mace for max_z + 1 = {hparams.get('mace', {}).get('max_z', '?')} + 1"
                )
                refs["mace"] = {"reference": "mace_torch", "geognn": "mace" if "mace" in fns else None}
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc(limit=4)
                unavailable["mace_torch"] = short_reason(exc)
                fns.pop("mace_torch", None)
                info.pop("mace_torch", None)
                if mace_ref is not None:
                    mace_ref.close()
                    mace_ref = None

    try:
        times = time_interleaved(fns, device, warmup, repeats) if fns else {}
        memory = {}
        for m, fn in fns.items():
            memory[m] = fn.memory() if isinstance(fn, MaceReference) else peak_memory_bytes(fn, device)
    finally:
        if mace_ref is not None:
            mace_ref.close()
    res = {}
    for m in fns:
        med = float(np.median(times[m]))
        res[m] = dict(
            info[m],
            median_s=med,
            all_s=times[m],
            structures_per_s=n_graphs / med,
            atoms_per_s=n_atoms / med,
            peak_memory_MiB=memory[m] / 2**20,
            spread_max_over_min=max(times[m]) / min(times[m]),
        )
    ratios = {}
    for name, r in refs.items():
        g, ref = r["geognn"], r["reference"]
        ratio = res[ref]["median_s"] / res[g]["median_s"] if g in res and ref in res else None
        ratios[name] = dict(
            r, ratio_geognn_over_reference=ratio, target_met=None if ratio is None else ratio >= THROUGHPUT_TARGET
        )
    return {
        "dataset": dataset,
        "cutoff_A": cutoff,
        "n_structures": n_graphs,
        "n_atoms": n_atoms,
        "n_edges": n_edges,
        "warmup": warmup,
        "repeats": repeats,
        "models": res,
        "unavailable": unavailable,
        "reference_comparisons": ratios,
        "notes": notes,
    }


def print_result(r: dict) -> None:
    print(
        f"\n== {r['dataset']}: {r['n_structures']} structures, {r['n_atoms']} atoms, {r['n_edges']} edges, "
        f"cutoff {r['cutoff_A']} Å; median of {r['repeats']} steps after {r['warmup']} warm-up, all models "
        f"interleaved"
    )
    ratio_of = {}
    for name, c in r["reference_comparisons"].items():
        if c["geognn"]:
            ratio_of[c["geognn"]] = c["ratio_geognn_over_reference"]
    print(
        f"   {'backbone':<15}{'ms/step':>10}{'structures/s':>14}{'atoms/s':>11}{'peak mem':>12}{'params':>11}"
        f"{'vs ref':>9}"
    )
    for m, v in r["models"].items():
        ratio = ratio_of.get(m)
        cell = f"{ratio:>8.2f}x" if ratio is not None else ("     ref " if v["kind"] == "reference" else "")
        flag = "  (unstable timings)" if v["spread_max_over_min"] > UNSTABLE_SPREAD else ""
        print(
            f"   {m:<15}{v['median_s'] * 1e3:>10.1f}{v['structures_per_s']:>14.1f}{v['atoms_per_s']:>11.0f}"
            f"{v['peak_memory_MiB']:>9.1f}MiB{v['parameters']:>11d}{cell}{flag}"
        )
    for m, why in r["unavailable"].items():
        print(f"   {m:<15}unavailable: {why}")
    for name, c in r["reference_comparisons"].items():
        ratio = c["ratio_geognn_over_reference"]
        if ratio is None:
            print(f"   {name}: no ratio ({c['geognn'] or name} unavailable)")
        else:
            print(
                f"   {name}: geognn {c['geognn']} / {c['reference']} throughput = {ratio:.2f} "
                f"(target >= {THROUGHPUT_TARGET}): {'MET' if c['target_met'] else 'NOT MET'}"
            )
    for note in r["notes"]:
        print(f"   note: {note}")


def main(argv=None) -> dict:
    import geognn

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbones", default=None, help="comma-separated names (default: all of geognn.BACKBONES)")
    ap.add_argument("--datasets", default="qm9,oc20", help="comma-separated: qm9, oc20")
    add_run_options(ap, reference="mace-torch")
    ap.add_argument("--no-reference", action="store_true", help="skip PyG DimeNet++ and mace-torch")
    ap.add_argument("--mace-venv", type=Path, default=MACE_VENV, help=f"venv with mace-torch (default {MACE_VENV})")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args(argv)

    names = (
        list(geognn.BACKBONES) if not args.backbones else [n.strip() for n in args.backbones.split(",") if n.strip()]
    )
    bad = [n for n in names if n not in geognn.BACKBONES]
    if bad:
        raise SystemExit(f"unknown backbone(s) {bad}; choose from {', '.join(geognn.BACKBONES)}")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if any(d not in DATASETS for d in datasets):
        raise SystemExit(f"--datasets: choose from {', '.join(DATASETS)}")
    device, n_qm9, n_oc20, warmup, repeats = setup_run(args)
    mace_python = args.mace_venv / "bin" / "python"
    stem = "bench_backbones" + ("" if device.type == "cpu" else f"_{device.type}") + ("_quick" if args.quick else "")
    out = args.out or RESULTS / f"{stem}.json"

    info = device_info(device)
    print(
        f"bench_backbones{' (quick)' if args.quick else ''}: device {info['device']}; {info['cpu']}, "
        f"{info['cores_logical']} logical cores, torch {torch.__version__} with {info['torch_threads']} threads, "
        f"{info['date']}, load average {info['load_average_1_5_15'][0]:.2f}"
    )
    print(
        f"   backbones: {', '.join(names)} (default hyperparameters); one step = energies + forces (autograd), "
        f"eval mode, float32; random weights"
    )
    print(
        "   peak memory = "
        + (
            "torch.cuda.max_memory_allocated above the step's start"
            if device.type == "cuda"
            else "largest running total of CPU tensor allocations in one step (torch.profiler)"
        )
    )
    if not args.no_reference and "mace" in names and not mace_python.exists():
        print(f"   mace-torch reference skipped: no venv at {args.mace_venv}")

    t_start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_backbones_") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for d in datasets:
            cutoff = DATASETS[d]
            graphs = qm9_graphs(n_qm9, cutoff) if d == "qm9" else oc20_graphs(n_oc20, cutoff)
            r = bench(
                d,
                graphs,
                cutoff,
                names,
                device,
                warmup,
                repeats,
                not args.no_reference,
                mace_python,
                args.threads,
                Path(tmp),
            )
            print_result(r)
            results.append(r)
    payload = {
        "benchmark": "bench_backbones",
        "quick": args.quick,
        "machine": info,
        "backbones": names,
        "throughput_target": THROUGHPUT_TARGET,
        "datasets": results,
        "wall_s": time.perf_counter() - t_start,
    }
    print(f"\nwall time {payload['wall_s']:.0f} s; wrote {write_results(payload, out)}")
    return payload


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
