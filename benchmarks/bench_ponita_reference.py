"""PΘNITA side by side with the authors' code (github.com/ebekkers/ponita, commit a584aa2).

What it measures
    The authors' ``Ponita(...)`` built as their QM9 script builds it (``main_qm9.py`` ->
    ``lightning_wrappers/qm9.py``: ``Ponita(11, hidden_dim, 1, layers, radius=..., num_ori=...,
    basis_dim=..., degree=..., widening_factor=..., layer_scale=None, task_level="graph",
    multiple_readouts=False, lift_graph=True)``, i.e. ``PonitaFiberBundle``) and geognn's
    ``build_model("ponita", ...)`` (backbone + energy head), both float32, eval mode, in one
    process with 1 torch thread (``--threads``), fed the same batch: the first 32 molecules of the
    shared QM9 subset with geognn's edges at a cutoff of 5 Å (no self-loops, see below). Two calls
    per model: ``forward`` (energies under ``torch.no_grad``) and ``forward + forces`` (energies,
    then forces by autograd w.r.t. the positions). The four calls of one setting are interleaved in
    the same timing rounds (``_common.time_interleaved``: order reversed every other round,
    ``gc.collect`` before each call); medians are reported, and the ratio ``reference time /
    geognn time`` (above 1: geognn is faster) comes from the same run. Also recorded per call:
    minor page faults (``resource.getrusage(RUSAGE_SELF).ru_minflt`` before and after, median
    over the timed calls) and peak tensor memory (``_common.peak_memory_bytes``, torch's profiler).

    Settings (``--settings``):
        paper: the defaults of the authors' ``main_qm9.py`` (hidden_dim 128, layers 5, basis_dim
            256, degree 3, widening_factor 4, layer_scale 0 -> None, multiple_readouts False) with
            ``num_ori=16``, the fiber-bundle setting of their README's QM9 table (``main_qm9.py``'s
            own default, ``num_ori=-1``, is the edge-lifted point-cloud mode, which geognn does
            not implement). geognn gets hidden_channels 128, num_layers 5, basis_dim 256, degree
            3, widening_factor 4, num_ori 16.
        cpu: geognn's constructor defaults (128 channels, 5 layers, 20 orientations, basis 128,
            degree 3, widening 4); the reference gets the same numbers.
    The envelope radius is the cutoff (5 Å) in both (the authors' QM9 runs use radius=1000, a
    nearly constant window over fully connected graphs; the window's cost is the same).

    What the two compute, and why the parameter counts differ (printed side by side):
        - Both: a polynomial embedding of the invariants [x.o, |x - (x.o)o|] and o.o' followed
          by a 2-layer GELU MLP (the kernel basis), per-layer linear maps of the basis to
          depthwise spatial and sphere kernels, ConvNeXt blocks, a mean over the sphere.
        - Polynomial features: the reference uses all ordered products of the attributes up to
          degree 3 (2 + 4 + 8 = 14 features for 2 attributes, with repeats), geognn the 9
          distinct scaled-Legendre products (``PolynomialFeatures``).
          So geognn's first basis layer has 5 x hidden fewer weights (640 at hidden 128).
        - Basis MLP: the reference maps features -> hidden_dim -> basis_dim; geognn by default
          the same (``basis_hidden=None`` means hidden_channels); ``basis_hidden=basis_dim``
          selects geognn's earlier features -> basis_dim -> basis_dim (before this change geognn
          had 135,168 basis-MLP parameters at the paper setting, the reference 68,480).
        - Conv kernels, biases and the ConvNeXt MLPs and norms: the same counts.
        - Input: the reference embeds an 11-wide one-hot with a bias-free Linear (1,408); geognn
          has an embedding row per element (101 rows for Z <= 100, or one per ``species``).
          Output: the reference has one Linear(hidden, 1); geognn a Linear(hidden, hidden)
          readout and a 2-layer energy head (``Model``).
    Stand-ins used to run the reference here (nothing of its maths is changed):
        - ``torch_scatter`` is not installed: a module with a pure-torch ``scatter_mean`` is put
          in ``sys.modules`` (only the point-cloud mode calls it; the fiber bundle never does).
          PyG's ``MessagePassing`` aggregates with torch's own scatter.
        - PyG >= 2.4 declares ``BaseTransform.forward`` abstract; the reference's transforms
          define ``__call__``, so ``forward`` is aliased to it.
        - The reference's ``PositionOrientationGraph.__call__`` adds a self-loop to every atom
          (``coalesce(add_self_loops(...))``); geognn's graphs have none. So that both see the
          same edges, the reference's lift runs as its own ``to_po_fiber_bundle`` followed by
          ``SEnInvariantAttributes(separable=True)``, without that step (``--reference-self-loops``
          keeps it: the reference then does N more edges of work).
        - The reference grid ``uniform_grid_s2`` is a random repulsion grid: seeded (torch seed 0).
    Both models run in the same process, so they get the same allocator environment: if
    GLIBC_TUNABLES or MALLOC_* variables are set, they apply to both and are recorded in the JSON.
    By default glibc's allocator keeps its defaults (the script builds models with
    ``build_model``, which does not tune it); ``--tune-allocator`` first applies
    ``geognn.runtime.tune_allocator()`` (what ``geognn train/predict`` and ``GeoGNNCalculator``
    do), again to both, and records whether it took effect.

Getting the reference
    The script needs the reference's source tree (the ``ponita/`` package). ``--reference-dir
    PATH`` takes a clone (work tree) or a bare git directory; without it, ``$PONITA_REFERENCE``
    and then /work/.mirror/ebekkers+ponita/repo are tried. A git directory is exported with
    ``git archive a584aa2`` into benchmarks/.cache/ponita-a584aa2 (ignored by git). To get it:
        git clone https://github.com/ebekkers/ponita /tmp/ponita && git -C /tmp/ponita checkout a584aa2
        .venv/bin/python benchmarks/bench_ponita_reference.py --reference-dir /tmp/ponita
    It imports torch_geometric (installed with geognn) and tqdm.

Run
    .venv/bin/python benchmarks/bench_ponita_reference.py --threads 1            # both settings
    .venv/bin/python benchmarks/bench_ponita_reference.py --threads 1 --settings paper --repeats 5
    .venv/bin/python benchmarks/bench_ponita_reference.py --quick                 # smoke test
    Results: benchmarks/results/bench_ponita_reference.json (``_tuned`` with --tune-allocator,
    ``_quick`` with --quick) and a
    markdown table on stdout. On a shared machine timings are noisy: the load average is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import shutil
import statistics
import subprocess
import sys
import types
import warnings
from pathlib import Path

import torch
from _common import HERE, RESULTS, device_info, peak_memory_bytes, qm9_graphs, time_interleaved, write_results

#: The authors' commit these numbers refer to.
REFERENCE_COMMIT = "a584aa2"
DEFAULT_MIRRORS = ("/work/.mirror/ebekkers+ponita/repo",)
CUTOFF = 5.0
N_MOLECULES = 32
#: One-hot width of the reference's QM9 input (main_qm9: in_channels_scalar = 11).
REFERENCE_INPUT_DIM = 11
#: Elements of the one-hot (H, C, N, O, F); the remaining 6 columns stay 0.
ONE_HOT_Z = (1, 6, 7, 8, 9)
SETTINGS = {
    "paper": dict(hidden=128, layers=5, num_ori=16, basis=256, degree=3, widening=4),
    "cpu": dict(hidden=128, layers=5, num_ori=20, basis=128, degree=3, widening=4),
}


# ----------------------------------------------------------------------------- the reference
def reference_source(path: str | None) -> Path:
    """Directory holding the reference's ``ponita`` package (see module docstring)."""
    candidates = [path] if path else [os.environ.get("PONITA_REFERENCE"), *DEFAULT_MIRRORS]
    for cand in filter(None, candidates):
        p = Path(cand)
        if (p / "ponita" / "models" / "ponita.py").is_file():
            return p
        if (p / "HEAD").is_file() or (p / ".git").exists():  # a git directory: export the pinned commit
            out = HERE / ".cache" / f"ponita-{REFERENCE_COMMIT}"
            if not (out / "ponita" / "models" / "ponita.py").is_file():
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                git_dir = p / ".git" if (p / ".git").exists() else p
                archive = subprocess.run(
                    ["git", f"--git-dir={git_dir}", "archive", REFERENCE_COMMIT, "ponita"],
                    capture_output=True,
                    check=True,
                )
                subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
            return out
        if path:
            raise SystemExit(f"--reference-dir {path}: neither a ponita source tree nor a git directory")
    raise SystemExit(
        "the authors' PONITA code was not found. Get it with\n"
        "  git clone https://github.com/ebekkers/ponita /tmp/ponita && "
        f"git -C /tmp/ponita checkout {REFERENCE_COMMIT}\n"
        "and run this script with --reference-dir /tmp/ponita (or set PONITA_REFERENCE)."
    )


def _scatter_mean(src, index, dim=0, dim_size=None):
    """Pure-torch stand-in for ``torch_scatter.scatter_mean`` (mean of ``src`` rows per index)."""
    size = int(index.max()) + 1 if dim_size is None else dim_size
    shape = list(src.shape)
    shape[dim] = size
    total = torch.zeros(shape, dtype=src.dtype, device=src.device).index_add_(dim, index, src)
    count = torch.zeros(size, dtype=src.dtype, device=src.device).index_add_(
        0, index, torch.ones_like(index, dtype=src.dtype)
    )
    view = [1] * src.dim()
    view[dim] = size
    return total / count.clamp(min=1).view(view)


def import_reference(source: Path):
    """The reference's ``Ponita`` and transforms, with the stand-ins of the module docstring."""
    import torch_geometric  # noqa: F401  (both look torch_scatter up at import: before the stand-in)

    import geognn.nn.scatter  # noqa: F401

    if "torch_scatter" not in sys.modules:
        try:
            import torch_scatter  # noqa: F401
        except ImportError:
            stub = types.ModuleType("torch_scatter")
            stub.scatter_mean = _scatter_mean
            sys.modules["torch_scatter"] = stub
    sys.path.insert(0, str(source))
    from ponita.models.ponita import Ponita
    from ponita.transforms.invariants import SEnInvariantAttributes
    from ponita.transforms.position_orientation_graph import PositionOrientationGraph

    for cls in (PositionOrientationGraph, SEnInvariantAttributes):
        if "forward" in getattr(cls, "__abstractmethods__", ()):
            cls.forward = cls.__call__
            cls.__abstractmethods__ = frozenset()
    return Ponita, PositionOrientationGraph, SEnInvariantAttributes


def reference_model(ref, setting: dict, self_loops: bool):
    """The authors' model at ``setting``, seeded, lazy layers materialised, eval, float32."""
    Ponita, PositionOrientationGraph, SEnInvariantAttributes = ref
    torch.manual_seed(0)
    with contextlib.redirect_stderr(io.StringIO()):  # the grid's repulsion prints a progress bar
        model = _ponita(Ponita, setting)
    model.lift = model.transform.transforms[0]  # kept for its grid (_reference_lift)
    if not self_loops:
        lift = model.lift
        invariants = SEnInvariantAttributes(separable=True)
        model.transform = lambda graph: invariants(lift.to_po_fiber_bundle(graph))
    return model.float().eval()


def _reference_lift(model):
    """The reference's ``PositionOrientationGraph`` transform (it holds the grid ``ori_grid_s2``)."""
    return model.lift


def _ponita(Ponita, setting: dict):
    return Ponita(
        REFERENCE_INPUT_DIM,
        setting["hidden"],
        1,
        setting["layers"],
        output_dim_vec=0,
        radius=CUTOFF,
        num_ori=setting["num_ori"],
        basis_dim=setting["basis"],
        degree=setting["degree"],
        widening_factor=setting["widening"],
        layer_scale=None,
        task_level="graph",
        multiple_readouts=False,
        lift_graph=True,
    )


def reference_inputs(batch):
    """(x one-hot [N, 11], edge_index [2, E], batch [N]) for the reference from geognn's batch."""
    x = torch.zeros(batch.z.numel(), REFERENCE_INPUT_DIM)
    for col, z in enumerate(ONE_HOT_Z):
        x[batch.z == z, col] = 1.0
    return x, batch.edge_index.clone(), batch.batch.clone()


def reference_calls(model, batch, self_loops: bool):
    """forward() and forward_forces() of the reference on the batch; materialises lazy layers."""
    from torch_geometric.data import Data

    x, edge_index, graph_of = reference_inputs(batch)
    pos0 = batch.pos.detach().float()

    def energy(pos):
        graph = Data(pos=pos, x=x, edge_index=edge_index, batch=graph_of)  # their lift mutates graph.x
        scalar, _ = model(graph)
        return scalar.squeeze(-1)  # [B]

    def forward():
        with torch.no_grad():
            return energy(pos0)

    def forward_forces():
        pos = pos0.clone().requires_grad_(True)
        e = energy(pos)
        (grad,) = torch.autograd.grad(e.sum(), pos)
        return e.detach(), -grad

    forward()  # LazyLinear -> Linear
    return forward, forward_forces


# ----------------------------------------------------------------------------- geognn
def geognn_model(setting: dict, **extra):
    import geognn

    torch.manual_seed(0)
    model = geognn.build_model(
        "ponita",
        cutoff=CUTOFF,
        hidden_channels=setting["hidden"],
        num_layers=setting["layers"],
        num_ori=setting["num_ori"],
        basis_dim=setting["basis"],
        degree=setting["degree"],
        widening_factor=setting["widening"],
        **extra,
    )
    return model.float().eval()


#: geognn's grids timed beside the reference (``--geognn-grids``): first the antipodal grid, what
#: the default ``grid="auto"`` builds at both settings' (even) num_ori, then the Fibonacci lattice.
GRIDS = ("antipodal", "fibonacci")


def geognn_label(grid: str) -> str:
    return f"geognn {grid}"


def geognn_calls(model, batch):
    def forward():
        with torch.no_grad():
            return model(batch, forces=False)["energy"]

    def forward_forces():
        out = model(batch, forces=True)
        return out["energy"].detach(), out["forces"]

    return forward, forward_forces


# ----------------------------------------------------------------------------- parameters
def reference_parameters(model) -> dict:
    parts = {
        "basis MLPs (spatial + sphere)": [model.basis_fn, model.fiber_basis_fn],
        "conv kernels + biases": [layer.conv for layer in model.interaction_layers],
        "ConvNeXt MLPs + norms": [
            m for layer in model.interaction_layers for m in (layer.linear_1, layer.linear_2, layer.norm)
        ],
        "input embedding": [model.x_embedder],
        "readout / heads": [m for m in model.read_out_layers if m is not None],
    }
    return _count(model, parts)


def geognn_parameters(model) -> dict:
    bb = model.backbone
    parts = {
        "basis MLPs (spatial + sphere)": [bb.spatial_basis, bb.sphere_basis],
        "conv kernels + biases": [b.conv for b in bb.blocks],
        "ConvNeXt MLPs + norms": [m for b in bb.blocks for m in (b.widen, b.narrow, b.norm)],
        "input embedding": [bb.embedding],
        "readout / heads": [bb.readout, model.heads],
    }
    return _count(model, parts)


def _count(model, parts: dict) -> dict:
    out = {name: sum(p.numel() for m in mods for p in m.parameters()) for name, mods in parts.items()}
    out["total"] = sum(p.numel() for p in model.parameters())
    out["other"] = out["total"] - sum(v for k, v in out.items() if k != "total")
    return out


# ----------------------------------------------------------------------------- measurement
def with_faults(fn, record: list):
    """``fn`` that appends the minor page faults of each call to ``record``."""

    def call():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        record.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    return call


def run_setting(name: str, ref, batch, warmup: int, repeats: int, self_loops: bool, grids=GRIDS) -> dict:
    """Reference and geognn (one model per grid of ``grids``, same seed) timed in the same rounds."""
    from geognn.symmetry.sphere import covering_radius

    setting = SETTINGS[name]
    device = torch.device("cpu")
    ref_model = reference_model(ref, setting, self_loops)
    ref_fwd, ref_ff = reference_calls(ref_model, batch, self_loops)
    calls = {("reference", "forward"): ref_fwd, ("reference", "forward+forces"): ref_ff}
    geo_models = {}
    for grid in grids:
        who = geognn_label(grid)
        geo_models[who] = geognn_model(setting, grid=grid)
        calls[(who, "forward")], calls[(who, "forward+forces")] = geognn_calls(geo_models[who], batch)
    sanity = {}
    for who, fn in ((k[0], v) for k, v in calls.items() if k[1] == "forward+forces"):
        energy, forces = fn()
        sanity[who] = {"finite": bool(torch.isfinite(energy).all() and torch.isfinite(forces).all())}
    faults = {k: [] for k in calls}
    fns = {f"{who} {mode}": with_faults(fn, faults[(who, mode)]) for (who, mode), fn in calls.items()}
    times = time_interleaved(fns, device, warmup, repeats)
    rows = {}
    for (who, mode), fn in calls.items():
        median = statistics.median(times[f"{who} {mode}"])
        rows[f"{who} {mode}"] = {
            "median_s": median,
            "times_s": times[f"{who} {mode}"],
            "molecules_per_s": N_MOLECULES / median,
            "minor_faults_per_call": statistics.median(faults[(who, mode)][warmup:] or faults[(who, mode)]),
            "peak_memory_MiB": peak_memory_bytes(fn, device) / 2**20,
        }
    ratios = {
        who: {
            mode: rows[f"reference {mode}"]["median_s"] / rows[f"{who} {mode}"]["median_s"]
            for mode in ("forward", "forward+forces")
        }
        for who in geo_models
    }
    reference_grid = _reference_lift(ref_model).ori_grid_s2  # [O, 3], their seeded repulsion grid
    return {
        "setting": setting,
        "geognn_backbone_kwargs": {who: m.backbone_kwargs for who, m in geo_models.items()},
        "parameters": {  # the grid changes no parameter
            "reference": reference_parameters(ref_model),
            "geognn": geognn_parameters(next(iter(geo_models.values()))),
        },
        "covering_radius_rad": {
            "reference": None if reference_grid is None else covering_radius(reference_grid.double()),
            **{who: covering_radius(m.backbone.grid.double()) for who, m in geo_models.items()},
        },
        "sanity": sanity,
        "rows": rows,
        "ratio_reference_over_geognn": ratios,
    }


def markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = [
        f"{payload['n_molecules']} QM9 molecules, {payload['n_atoms']} atoms, {payload['n_edges']} edges "
        f"(cutoff {CUTOFF} Å); {m['cpu']}, {m.get('torch_threads')} torch thread(s), load average "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_1_5_15'])} at the start, "
        f"{', '.join(f'{x:.2f}' for x in payload['load_average_end'])} at the end; allocator "
        f"{'tuned (geognn.runtime.tune_allocator)' if payload['allocator_tuned'] else 'glibc defaults'} for both",
        "",
        "| setting | call | geognn grid | reference ms | geognn ms | reference / geognn | ref. faults/call "
        "| geognn faults/call | ref. peak MiB | geognn peak MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in payload["settings"].items():
        for mode in ("forward", "forward+forces"):
            r = res["rows"][f"reference {mode}"]
            for who, ratios in res["ratio_reference_over_geognn"].items():
                g = res["rows"][f"{who} {mode}"]
                lines.append(
                    f"| {name} | {mode} | {who.removeprefix('geognn ')} | {1e3 * r['median_s']:.0f} | "
                    f"{1e3 * g['median_s']:.0f} | **{ratios[mode]:.2f}** | {r['minor_faults_per_call']:,.0f} | "
                    f"{g['minor_faults_per_call']:,.0f} | {r['peak_memory_MiB']:.0f} | {g['peak_memory_MiB']:.0f} |"
                )
    lines += ["", "| setting | grid | covering radius (rad) |", "|---|---|---:|"]
    for name, res in payload["settings"].items():
        for who, radius in res["covering_radius_rad"].items():
            lines.append(f"| {name} | {who} | {radius:.3f} |")
    lines += ["", "| setting | part | reference params | geognn params |", "|---|---|---:|---:|"]
    for name, res in payload["settings"].items():
        ref, geo = res["parameters"]["reference"], res["parameters"]["geognn"]
        for part in ref:
            lines.append(f"| {name} | {part} | {ref[part]:,} | {geo[part]:,} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-dir", default=None, help="clone or git directory of ebekkers/ponita")
    parser.add_argument("--settings", default="paper,cpu", help="comma-separated: paper, cpu (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default: 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default: 2)")
    parser.add_argument("--reference-self-loops", action="store_true", help="keep the reference's added self-loops")
    parser.add_argument(
        "--tune-allocator",
        action="store_true",
        help="apply geognn.runtime.tune_allocator() to the process (both models)",
    )
    parser.add_argument(
        "--geognn-grids",
        default=",".join(GRIDS),
        help="comma-separated grids of geognn's models, each timed beside the reference (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 molecules, 1 warm-up, 2 rounds")
    parser.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; choose from {list(SETTINGS)}")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*no neighbour.*")
    warnings.filterwarnings("ignore", message=".*Lazy modules.*")
    ref = import_reference(reference_source(args.reference_dir))
    import geognn

    tuned = False
    if args.tune_allocator:
        from geognn.runtime import tune_allocator

        tuned = tune_allocator(force=True)

    global N_MOLECULES
    if args.quick:
        N_MOLECULES, args.warmup, args.repeats = 4, 1, 2
    batch = geognn.collate(qm9_graphs(N_MOLECULES, CUTOFF))
    payload = {
        "benchmark": "bench_ponita_reference",
        "reference": {"repo": "github.com/ebekkers/ponita", "commit": REFERENCE_COMMIT},
        "quick": args.quick,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "machine": device_info(torch.device("cpu")),
        "allocator_env": {k: v for k, v in os.environ.items() if k.startswith(("GLIBC_TUNABLES", "MALLOC_"))},
        "allocator_tuned": tuned,
        "reference_self_loops": args.reference_self_loops,
        "n_molecules": N_MOLECULES,
        "n_atoms": int(batch.z.numel()),
        "n_edges": int(batch.edge_index.shape[1]),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "settings": {},
    }
    for name in names:
        payload["settings"][name] = run_setting(
            name,
            ref,
            batch,
            args.warmup,
            args.repeats,
            args.reference_self_loops,
            [g.strip() for g in args.geognn_grids.split(",") if g.strip()],
        )
    payload["load_average_end"] = list(os.getloadavg())
    name = "bench_ponita_reference" + ("_tuned" if tuned else "") + ("_quick" if args.quick else "")
    out = Path(args.out) if args.out else RESULTS / f"{name}.json"
    written = write_results(payload, out)
    sys.stdout.write(markdown(payload) + f"\n\nresults: {written}\n")
    return payload


if __name__ == "__main__":
    main()
