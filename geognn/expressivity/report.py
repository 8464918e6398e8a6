"""The expressivity report behind ``geognn expressivity``: every hard pair against GWL, IGWL,
IGWL_(k) and every backbone, with the theoretical expectation beside each result.

For each pair (``pairs.load_pairs``):

- the tests GWL, GWL_(l<=1), GWL_(l<=2), IGWL, IGWL_(2..4) (``gwl.gwl_test``, group O(3)): the first iteration that
  separates the pair, or ✗; expected value from ``HardPair.expected``.
- each column of ``COLUMNS`` (a backbone with its ``PROBE_SETTINGS``, or a variant such as EGNN
  with fixed coordinates; ``models.layers_scan``): the fewest layers that separate the pair at
  random initialisation, or ✗ within ``max_layers``, with the margin (gap / noise threshold) of
  every layer count tried. Its expectation is the test that bounds the geometry the backbone
  *declares* (``Backbone.geometry`` and ``Backbone.feature_order``, ``bounds_of``): IGWL_(2) for
  "distances", IGWL_(3) for "angles" (and GWL_(l<=L) for an angular basis of degree L, the
  later of the two), GWL_(l<=L) for equivariant features of order <= L, GWL for orientation
  grids; evaluated in SO(3) for backbones that are not reflection-invariant. "frame" backbones (inside frame averaging, whose frame is global) are
  expected to separate at 1 layer whatever GWL separates at all. A backbone separating a pair
  with fewer layers than GWL needs (or one that GWL never separates) violates the theorem that
  geometric GNNs are bounded by GWL: the report flags it ("⚠") as a bug. A backbone whose
  first layer sees less (``Backbone.first_layer_geometry``, e.g. PaiNN's "vector sums") is
  expected at 2 layers where its test says 1 but ``first_layer.first_layer_separates`` says no.
- rotationally symmetric pairs: whether a 1-layer model's equivariant readout identifies the
  orientation (✓/✗); expected ✓ iff the declared tensor order (``Backbone.tensor_order``) >= the fold.

Outputs: report.md (the table and a legend), report.csv (one line per pair and column) and
heatmap.png (needs matplotlib: ``pip install geognn[report]``).
"""

from __future__ import annotations

import csv
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..backbones import BACKBONES
from .first_layer import first_layer_separates
from .gwl import gwl_test, test_options
from .models import (
    CONTINUUM_NOISE_FACTOR,
    CONVERGENCE,
    GRID_LADDER,
    build_backbone,
    layers_scan,
    separation,
    uses_global_frame,
)
from .pairs import TESTS, HardPair, load_pairs

#: Small, CPU-friendly settings per backbone (num_layers and cutoff are set by the probe).
#: The e3nn backbones use tensor order 2 (MACE with hidden irreps up to l = 2 as well).
PROBE_SETTINGS = {
    "schnet": dict(hidden_channels=16, num_filters=16, num_gaussians=12),
    "dimenetpp": dict(
        hidden_channels=16,
        out_emb_channels=16,
        int_emb_size=8,
        basis_emb_size=4,
        num_spherical=3,
        num_radial=4,
        num_output_layers=2,
    ),
    # coords_weight 30: phi_x is ~0.02 at its plain init, so atoms would move ~1e-3 Å per layer and
    # the k-chain signal (second order in the displacements) would sit under a float32 input's
    # noise floor; with w = 30 they move ~0.3 Å per layer, the regime of the dojo's EGNN
    "egnn": dict(hidden_channels=16, coords_weight=30.0),
    "painn": dict(hidden_channels=16),
    "nequip": dict(hidden_channels=8, max_ell=2, radial_hidden=(16,)),
    "mace": dict(hidden_channels=8, max_ell=2, hidden_max_ell=2, correlation=2, radial_hidden=(16,)),
    "faenet": dict(hidden_channels=16, num_filters=16, num_gaussians=12, pg_hidden_channels=4),
    "ponita": dict(hidden_channels=8, num_ori=6, basis_dim=8, degree=2, widening_factor=2),
    "pnita": dict(hidden_channels=8, basis_dim=8, degree=2, widening_factor=2),
}
#: Settings for a backbone not listed above.
DEFAULT_PROBE_SETTINGS = dict(hidden_channels=16)
#: Report columns: name -> (backbone in BACKBONES, settings on top of PROBE_SETTINGS). Every
#: backbone has its own column; variants whose theory class differs get one more.
VARIANTS = {"egnn": {"egnn-fixed": dict(update_coords=False)}}  # the paper's QM9 setting, distance-only
COLUMNS = {
    column: (name, settings)
    for name in BACKBONES
    for column, settings in [(name, {})] + list(VARIANTS.get(name, {}).items())
}
#: The test that bounds each declared ``Backbone.geometry`` when the backbone declares no
#: ``feature_order`` ("frame": see module docstring); ``bounds_of`` refines it.
BOUND_OF_GEOMETRY = {
    "distances": "IGWL_(2)",
    "angles": "IGWL_(3)",
    "vectors": "GWL",
    "spherical tensors": "GWL",
    "orientation grid": "GWL",
    "frame": "GWL",
}


def bounds_of(geometry: str, feature_order: int | None) -> list[str]:
    """The tests that bound a backbone of this declared geometry and ``Backbone.feature_order``;
    it cannot separate a pair before the last of them does. Equivariant features of order <= L:
    GWL_(l<=L); an invariant model with an angular basis of degree L: IGWL_(3) and GWL_(l<=L)."""
    if feature_order is not None and geometry in ("vectors", "spherical tensors"):
        return [f"GWL_(l<={feature_order})"]
    if feature_order is not None and geometry == "angles":
        return [BOUND_OF_GEOMETRY[geometry], f"GWL_(l<={feature_order})"]
    return [BOUND_OF_GEOMETRY[geometry]]


def test_label(test: str) -> str:
    """Short label of a test name for the tables: "GWL_ℓ≤1", "IGWL₃", ..."""
    subscripts = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
    if test.startswith("GWL_(l<="):
        return "GWL_ℓ≤" + test[len("GWL_(l<=") : -1]
    if test.startswith("IGWL_("):
        return "IGWL" + test[len("IGWL_(") : -1].translate(subscripts)
    return test


TEST_LABELS = {t: test_label(t) for t in TESTS}


@dataclass
class Cell:
    """One result: ``measured`` and ``expected`` are iterations/layers (None = never) or, for
    orientation pairs, True/False; ``status`` is "ok", "differs", "above body-order test",
    "violates GWL", "violates tensor-order bound", "beyond GWL (global frame)" or "error";
    ``margins`` {num_layers: gap / threshold} of the probes behind the verdict (backbones only)."""

    measured: object
    expected: object
    status: str = "ok"
    note: str = ""
    margins: dict = field(default_factory=dict)

    def text(self) -> str:
        """ "3 (3)", "✗ (✗)", "✓ (✓)", with † when it differs from theory and ⚠ for a GWL violation."""
        if self.status == "error":
            return "error"
        return f"{_symbol(self.measured)} ({_symbol(self.expected)}){MARKS[self.status]}"

    def margin_text(self) -> str:
        """The verdict's margins: "54 / 0.01" = gap/threshold at the reported layer count / one
        fewer; "<0.3" = the largest over all counts tried when none separated."""
        if not self.margins:
            return ""
        if self.measured is None or self.measured is False:
            largest = max(self.margins.values())
            return "0" if largest == 0 else "<" + _number(largest)
        if self.measured is True:
            return _number(max(self.margins.values()))
        below = self.margins.get(self.measured - 1)
        return _number(self.margins[self.measured]) + ("" if below is None else " / " + _number(below))


#: Mark appended to a cell for each status.
MARKS = {
    "ok": "",
    "differs": " †",
    "above body-order test": " °",
    "violates GWL": " ⚠",
    "violates tensor-order bound": " ⚠",
    "beyond GWL (global frame)": " ‡",
}


def _number(x: float) -> str:
    return "inf" if x == float("inf") else f"{x:.2g}"


def _symbol(value) -> str:
    if value is True:
        return "✓"
    if value is None or value is False:
        return "✗"
    return str(value)


@dataclass
class ReportRow:
    """Results for one pair: ``tests`` by test name (O(3)), ``backbones`` by column name."""

    pair: HardPair
    tests: dict = field(default_factory=dict)
    backbones: dict = field(default_factory=dict)
    note: str = ""


@dataclass
class BackboneInfo:
    """What the report needs to know about one column: backbone, settings and declared theory class."""

    name: str
    settings: dict
    backbone: str = ""
    geometry: str = ""
    first_layer: str = ""
    order: int | None = None
    bound: str = "GWL"
    bounds: list = field(default_factory=lambda: ["GWL"])
    group: str = "O3"
    rotation_symmetry: str = "exact"
    global_frame: bool = False
    error: str = ""
    warnings: set = field(default_factory=set)


def describe_backbone(column: str) -> BackboneInfo:
    """Settings, declared geometry, tensor order, bounding test and group of a report column
    (a name in ``COLUMNS``; an error message instead if it fails to build)."""
    backbone, extra = COLUMNS.get(column, (column, {}))
    settings = {**PROBE_SETTINGS.get(backbone, DEFAULT_PROBE_SETTINGS), **extra}
    info = BackboneInfo(column, settings, backbone)
    try:
        model = build_backbone(backbone, 1, 3.0, 0, settings)
        info.global_frame = uses_global_frame(model)
        inner = model.backbone if info.global_frame else model
        info.geometry = inner.geometry
        info.first_layer = getattr(inner, "first_layer_geometry", "")
        info.order = inner.tensor_order  # ValueError if the backbone declares no valid geometry
        feature_order = inner.feature_order
    except Exception as exc:  # a backbone that cannot be probed is reported, not fatal
        info.error = f"{type(exc).__name__}: {exc}"
        return info
    info.bounds = bounds_of(info.geometry, feature_order)
    info.bound = info.bounds[0]
    info.group = "O3" if getattr(model, "reflection_invariant", True) else "SO3"
    info.rotation_symmetry = getattr(model, "rotation_symmetry", "exact")
    if info.global_frame:
        info.rotation_symmetry += " (frame-averaged)"
    return info


def run_expressivity(
    backbones=None, pair_names=None, max_layers: int = 6, seeds: int = 3, progress: bool = True, pairs=None, dtype=None
) -> tuple[list[ReportRow], list[BackboneInfo]]:
    """Run every test and backbone on every pair. ``backbones``: column names (``COLUMNS``: every
    backbone of BACKBONES and variants such as "egnn-fixed"; default: all); ``pair_names``: names
    from ``load_pairs`` (default: all); ``pairs``: HardPair objects instead (e.g. a user's pair);
    ``dtype``: round the pairs' positions and cells to it first (``torch.float32``: the dojo's
    precision; the noise floor follows). Returns (rows, column infos)."""
    from tqdm import tqdm

    names = list(COLUMNS) if backbones is None else list(backbones)
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown backbone(s) {', '.join(unknown)}; choose from: {', '.join(COLUMNS)}")
    if int(max_layers) != max_layers or max_layers < 1:
        raise ValueError(f"max_layers must be a positive integer, got {max_layers}")
    pairs = load_pairs(pair_names) if pairs is None else list(pairs)
    if dtype is not None:
        pairs = [_rounded_pair(pair, dtype) for pair in pairs]
    infos = [describe_backbone(n) for n in names]
    rows = []
    bar = tqdm(
        total=len(pairs) * (1 + len(infos)), desc="expressivity", unit="probe", disable=not progress, file=sys.stderr
    )
    for pair in pairs:
        row = ReportRow(pair)
        needed = list(TESTS) + sorted({b for info in infos for b in info.bounds} - set(TESTS))
        gwl = {
            (group, test): gwl_test(pair.g1, pair.g2, group=group, **test_options(test)).iterations
            for group in ("O3", "SO3")
            for test in needed
        }
        for test in TESTS:
            measured, expected = gwl[("O3", test)], pair.expected["O3"][test]
            row.tests[test] = Cell(measured, expected, "ok" if measured == expected else "differs")
        if pair.expected["SO3"] != pair.expected["O3"]:
            row.note = "SO(3): " + ", ".join(f"{TEST_LABELS[t]} {_symbol(gwl[('SO3', t)])}" for t in TESTS)
        if pair.is_orientation_pair:
            row.note = f"orientation needs tensor order ≥ {pair.orientation_order}"
        bar.update()
        for info in infos:
            bar.set_postfix_str(f"{pair.name} / {info.name}")
            with warnings.catch_warnings(record=True) as caught:  # e.g. degenerate frames: listed, not printed
                warnings.simplefilter("always")
                row.backbones[info.name] = _probe(info, pair, gwl, max_layers, seeds)
            info.warnings.update(type(w.message).__name__ for w in caught)
            bar.update()
        rows.append(row)
    bar.close()
    return rows, infos


def _rounded_pair(pair: HardPair, dtype) -> HardPair:
    """``pair`` with positions and cell stored in ``dtype`` (shifts stay integers)."""
    from dataclasses import replace

    graphs = []
    for g in (pair.g1, pair.g2):
        g = g.clone()
        g.pos, g.cell, g.edge_shift = g.pos.to(dtype), g.cell.to(dtype), g.edge_shift.to(dtype)
        graphs.append(g)
    return replace(pair, g1=graphs[0], g2=graphs[1])


def _probe(info: BackboneInfo, pair: HardPair, gwl: dict, max_layers: int, seeds: int) -> Cell:
    """One column on one pair, with its expectation, status and margins."""
    if info.error:
        return Cell(None, None, "error", info.error)
    try:
        if pair.is_orientation_pair:
            result = separation(info.backbone, pair.g1, pair.g2, 1, seeds, "equivariant", **info.settings)
            measured = result.distinguished
            expected = info.order >= pair.orientation_order
            status = "ok" if measured == expected else ("violates tensor-order bound" if measured else "differs")
            return Cell(measured, expected, status, margins={1: result.margin})
        measured, margins = layers_scan(info.backbone, pair, max_layers=max_layers, seeds=seeds, **info.settings)
    except Exception as exc:
        return Cell(None, None, "error", f"{type(exc).__name__}: {exc}")
    bound = gwl[(info.group, "GWL")]
    if info.global_frame:  # global frame: everything GWL tells apart, at once
        expected = None if bound is None else 1
    else:
        results = [gwl[(info.group, b)] for b in info.bounds]
        expected = None if None in results else max(results)  # the last bound to separate
        if expected == 1 and info.first_layer and not first_layer_separates(pair.g1, pair.g2, info.first_layer):
            expected = 2  # one layer sees too little (first_layer.py); GWL's bound from the second on
    if measured is not None and (bound is None or measured < bound):
        status = "beyond GWL (global frame)" if info.global_frame else "violates GWL"
    elif measured == expected:
        status = "ok"
    elif (
        measured is not None
        and info.bound.startswith("IGWL_(")
        and gwl[(info.group, "IGWL")] is not None
        and (expected is None or measured < expected)
    ):
        status = "above body-order test"  # more than the k-body test, within IGWL (nested aggregation)
    else:
        status = "differs"
    return Cell(measured, expected, status, margins=margins)


# --------------------------------------------------------------------------- a user's pair
def load_user_pair(path1, path2, graph_cutoff: float | None = None) -> HardPair:
    """A user's two graphs as a pair for the report (``geognn expressivity --pair``).

    Each file is either a ``torch.save``d graph (``.pt``/``.pth``: a PyG ``Data`` in any layout
    ``inputs.as_graph`` accepts; loaded with ``weights_only=False``, so only for trusted files) or
    a structure file ``geognn.io.read_structures`` reads (its first structure, radius graph with
    ``graph_cutoff`` Å). There is no published theory for a user's pair: the expected value of
    each test is the one measured here, and backbones are compared with their bounding test.
    ValueError naming the file on any problem.
    """
    import torch

    from ..io import read_structures
    from .inputs import as_graph

    graphs = []
    for path in (Path(path1), Path(path2)):
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        if path.suffix in (".pt", ".pth"):
            try:
                obj = torch.load(path, weights_only=False)
            except Exception as exc:
                raise ValueError(f"{path}: not a torch.save file ({type(exc).__name__})") from exc
        else:
            if graph_cutoff is None:
                raise ValueError(f"{path}: a structure file needs --graph-cutoff (Å) to build its graph")
            obj = read_structures(path)[0]
        graphs.append(as_graph(obj, path.name, graph_cutoff))
    measured = {
        group: {t: gwl_test(*graphs, group=group, **test_options(t)).iterations for t in TESTS}
        for group in ("O3", "SO3")
    }
    expected = {"O3": measured["O3"], "SO3": measured["SO3"]}
    return HardPair(
        f"{Path(path1).name} vs {Path(path2).name}",
        "user",
        graphs[0],
        graphs[1],
        expected,
        description="a user's pair (expected values: the tests as measured)",
    )


# --------------------------------------------------------------------------- outputs
def format_markdown(rows: list[ReportRow], infos: list[BackboneInfo], max_layers: int, seeds: int) -> str:
    """The report table (pairs x tests x backbones) with its legend, as Markdown."""
    header = ["pair"] + [TEST_LABELS[t] for t in TESTS] + [i.name for i in infos] + ["note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = (
            [row.pair.name]
            + [row.tests[t].text() for t in TESTS]
            + [row.backbones[i.name].text() for i in infos]
            + [row.note]
        )
        lines.append("| " + " | ".join(cells) + " |")
    margins = [
        "",
        "Margins (gap / noise threshold; > 1 = separated) behind each backbone verdict: at the reported "
        'layer count / at one layer fewer; "<m" = the largest over every count tried when none separated.',
        "",
        "| pair | " + " | ".join(i.name for i in infos) + " |",
        "|" + "---|" * (1 + len(infos)),
    ]
    for row in rows:
        margins.append("| " + " | ".join([row.pair.name] + [row.backbones[i.name].margin_text() for i in infos]) + " |")
    legend = [
        "",
        "Each cell: measured (theory). Tests: first GWL iteration that separates the pair; backbones: fewest "
        f"layers (1..{max_layers}) that separate it at random initialisation (any of {seeds} seeds, "
        "models in float64, cutoff 3x the longest edge, avg_num_neighbors the pair's mean degree; threshold 10x "
        "the noise of isometric copies rounded to the input's dtype, 100x for approximately equivariant "
        "backbones, plus 1e-9 of the embedding's norm; backbones on an orientation grid: the continuous model, "
        f"the same weights on {', '.join(map(str, GRID_LADDER[:-1]))} and {GRID_LADDER[-1]} orientations, a gap "
        f"above {CONTINUUM_NOISE_FACTOR:g}x the copy noise and converged to within {CONVERGENCE:.0%} between grids; "
        "for inputs less precise than float64 and exact backbones, "
        "gaps and noise are first projected off the coordinates' Jacobians and the floor is 1e-13 "
        "(geognn/expressivity/models.py)). ✗ = never. "
        "Rotationally symmetric pairs (L-fold): ✓ if a 1-layer model's equivariant readout tells the structure "
        "from its rotated copy, expected iff tensor order ≥ L. Theory for a backbone: the test bounding the "
        "geometry it declares (Backbone.geometry; GWL_ℓ≤L for features of order ≤ L, Backbone.feature_order, "
        "expressivity/tensor_gwl.py; the later of two bounds where two apply), one layer later where that test separates at 1 but its "
        "first layer cannot (Backbone.first_layer_geometry, expressivity/first_layer.py). † differs from theory; ° separates where its k-body test "
        "does not but IGWL does (nested aggregation reads more than the flat k-body multiset); ⚠ separates "
        "beyond GWL (a bug); ‡ beyond GWL by a frame-averaged model, whose frame is global (not message "
        "passing: the bound does not apply; expected: 1 layer wherever GWL separates).",
        "",
        "Backbones (declared geometry and theory class, tensor order of the readout, symmetry):",
    ]
    for info in infos:
        if info.error:
            legend.append(f"- {info.name}: could not be built: {info.error}")
            continue
        seen = f"; warnings while probing: {', '.join(sorted(info.warnings))}" if info.warnings else ""
        tests = " and ".join(test_label(b) for b in info.bounds)
        bound = "global frame" if info.global_frame else f"bounded by {tests} ({info.group})"
        first = f', first layer "{info.first_layer}"' if info.first_layer else ""
        legend.append(
            f'- {info.name}: {info.backbone}, geometry "{info.geometry}"{first}, {bound}, order {info.order}, '
            f"rotation symmetry {info.rotation_symmetry}; settings {info.settings}{seen}"
        )
    errors = [
        (row.pair.name, name, cell.note)
        for row in rows
        for name, cell in row.backbones.items()
        if cell.status == "error" and cell.note and not any(i.error for i in infos if i.name == name)
    ]
    legend += [f"- error {b} on {p}: {note}" for p, b, note in errors]
    return "\n".join(lines + margins + legend) + "\n"


def write_csv(rows: list[ReportRow], infos: list[BackboneInfo], path: Path) -> None:
    """One line per pair and column: pair, family, column, kind, measured, expected, status and,
    for backbones, ``margins`` ("layers:gap/threshold" for each layer count tried, ";"-separated)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["pair", "family", "column", "kind", "measured", "expected", "status", "margins"])
        for row in rows:
            for test in TESTS:
                c = row.tests[test]
                writer.writerow(
                    [row.pair.name, row.pair.family, test, "test", _csv(c.measured), _csv(c.expected), c.status, ""]
                )
            for info in infos:
                c = row.backbones[info.name]
                kind = "orientation" if row.pair.is_orientation_pair else "layers"
                writer.writerow(
                    [
                        row.pair.name,
                        row.pair.family,
                        info.name,
                        kind,
                        _csv(c.measured),
                        _csv(c.expected),
                        c.status,
                        ";".join(f"{k}:{v:.4g}" for k, v in c.margins.items()),
                    ]
                )


def _csv(value) -> str:
    return "" if value is None else str(value)


def write_heatmap(rows: list[ReportRow], infos: list[BackboneInfo], path: Path) -> bool:
    """Heatmap PNG of the table (colour = iterations/layers, grey = never). False if no matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return False
    columns = [TEST_LABELS[t] for t in TESTS] + [i.name for i in infos]
    values = np.full((len(rows), len(columns)), np.nan)
    labels = [["" for _ in columns] for _ in rows]
    for r, row in enumerate(rows):
        cells = [row.tests[t] for t in TESTS] + [row.backbones[i.name] for i in infos]
        for c, cell in enumerate(cells):
            m = cell.measured
            if m is True:
                values[r, c] = 1
            elif isinstance(m, int) and not isinstance(m, bool):
                values[r, c] = m
            labels[r][c] = cell.text()
    fig, ax = plt.subplots(figsize=(1.0 + 1.1 * len(columns), 1.0 + 0.42 * len(rows)))
    cmap = matplotlib.colormaps["Blues"].copy()
    cmap.set_bad("#e4e4e4")
    top = np.nanmax(values) if np.isfinite(values).any() else 1.0
    # light-to-medium blues only (vmax above the largest value), so the black labels stay readable
    ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=top + 2.0, aspect="auto")
    for r in range(len(rows)):
        for c in range(len(columns)):
            ax.text(c, r, labels[r][c], ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [row.pair.name for row in rows])
    ax.set_title("iterations / layers to separate (grey: never); cell: measured (theory)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(
    out_dir,
    backbones=None,
    pair_names=None,
    max_layers: int = 6,
    seeds: int = 3,
    progress: bool = True,
    pairs=None,
    dtype=None,
) -> dict:
    """Run the report (``run_expressivity``; ``pairs``: HardPairs instead of library names;
    ``dtype``: the pairs' precision) and write report.md, report.csv and heatmap.png into ``out_dir``.

    Returns {"markdown": path, "csv": path, "heatmap": path or None, "seconds": wall time,
    "violations": [(pair, backbone)], "rows": rows}.
    """
    start = time.perf_counter()
    rows, infos = run_expressivity(backbones, pair_names, max_layers, seeds, progress, pairs, dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds = time.perf_counter() - start
    markdown = format_markdown(rows, infos, max_layers, seeds)
    (out / "report.md").write_text(markdown + f"\nRun time: {seconds:.0f} s.\n")
    write_csv(rows, infos, out / "report.csv")
    heatmap = out / "heatmap.png" if write_heatmap(rows, infos, out / "heatmap.png") else None
    violations = [
        (row.pair.name, name) for row in rows for name, c in row.backbones.items() if c.status.startswith("violates")
    ]
    return {
        "markdown": out / "report.md",
        "csv": out / "report.csv",
        "heatmap": heatmap,
        "seconds": seconds,
        "violations": violations,
        "rows": rows,
    }
