"""The expressivity report behind ``geognn expressivity``: every hard pair against GWL, IGWL,
IGWL_(k) and every backbone, with the theoretical expectation beside each result.

For each pair (``pairs.load_pairs``):

- the tests GWL, IGWL, IGWL_(2..4) (``gwl.gwl_test``, group O(3)): the first iteration that
  separates the pair, or ✗; expected value from ``HardPair.expected``.
- each backbone (``models.layers_needed`` with ``PROBE_SETTINGS``): the fewest layers that
  separate the pair at random initialisation, or ✗ within ``max_layers``. Its expectation is the
  test that bounds its class: GWL for backbones with an equivariant readout (tensor order >= 1),
  IGWL for invariant ones, IGWL_(2) for distance-only ones (``DISTANCE_ONLY``); evaluated in
  SO(3) for backbones that are not reflection-invariant. A backbone separating a pair with fewer
  layers than GWL needs iterations (or one that GWL never separates) violates the theorem that
  geometric GNNs are bounded by GWL: the report flags it ("⚠") as a bug.
- rotationally symmetric pairs: whether a 1-layer model's equivariant readout identifies the
  orientation (✓/✗); expected ✓ iff the backbone's tensor order >= the fold.

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
from .gwl import gwl_test
from .models import build_backbone, layers_needed, readout_order, uses_global_frame
from .pairs import TESTS, HardPair, load_pairs

#: Small, CPU-friendly settings per backbone (num_layers and cutoff are set by the probe).
#: The e3nn backbones use tensor order 2 (MACE with hidden irreps up to l = 2 as well).
PROBE_SETTINGS = {
    "schnet": dict(hidden_channels=16, num_filters=16, num_gaussians=12),
    "dimenetpp": dict(hidden_channels=16, out_emb_channels=16, int_emb_size=8, basis_emb_size=4,
                      num_spherical=3, num_radial=4, num_output_layers=2),
    "egnn": dict(hidden_channels=16),
    "painn": dict(hidden_channels=16),
    "nequip": dict(hidden_channels=8, max_ell=2, radial_hidden=(16,)),
    "mace": dict(hidden_channels=8, max_ell=2, hidden_max_ell=2, correlation=2, radial_hidden=(16,)),
    "faenet": dict(hidden_channels=16, num_filters=16, num_gaussians=12, pg_hidden_channels=4),
    "ponita": dict(hidden_channels=8, num_ori=6, basis_dim=8, degree=2, widening_factor=2),
    "pnita": dict(hidden_channels=8, basis_dim=8, degree=2, widening_factor=2),
}
#: Settings for a backbone not listed above.
DEFAULT_PROBE_SETTINGS = dict(hidden_channels=16)
#: Invariant backbones that see distances only: bounded by IGWL_(2).
DISTANCE_ONLY = {"schnet"}
TEST_LABELS = {"GWL": "GWL", "IGWL": "IGWL", "IGWL_(2)": "IGWL₂", "IGWL_(3)": "IGWL₃", "IGWL_(4)": "IGWL₄"}
_TEST_OPTIONS = {"GWL": (False, None), "IGWL": (True, None), "IGWL_(2)": (True, 2), "IGWL_(3)": (True, 3),
                 "IGWL_(4)": (True, 4)}


@dataclass
class Cell:
    """One result: ``measured`` and ``expected`` are iterations/layers (None = never) or, for
    orientation pairs, True/False; ``status`` is "ok", "differs", "violates GWL" or "error"."""

    measured: object
    expected: object
    status: str = "ok"
    note: str = ""

    def text(self) -> str:
        """"3 (3)", "✗ (✗)", "✓ (✓)", with † when it differs from theory and ⚠ for a GWL violation."""
        if self.status == "error":
            return "error"
        mark = {"ok": "", "differs": " †", "violates GWL": " ⚠", "violates tensor-order bound": " ⚠",
                "beyond GWL (global frame)": " ‡"}[self.status]
        return f"{_symbol(self.measured)} ({_symbol(self.expected)}){mark}"


def _symbol(value) -> str:
    if value is True:
        return "✓"
    if value is None or value is False:
        return "✗"
    return str(value)


@dataclass
class ReportRow:
    """Results for one pair: ``tests`` by test name (O(3)), ``backbones`` by backbone name."""

    pair: HardPair
    tests: dict = field(default_factory=dict)
    backbones: dict = field(default_factory=dict)
    note: str = ""


@dataclass
class BackboneInfo:
    """What the report needs to know about one backbone: its settings and theory class."""

    name: str
    settings: dict
    order: int | None = None
    bound: str = "GWL"
    group: str = "O3"
    rotation_symmetry: str = "exact"
    global_frame: bool = False
    error: str = ""
    warnings: set = field(default_factory=set)


def describe_backbone(name: str) -> BackboneInfo:
    """Settings, tensor order, bounding test and group of a backbone (error message if it fails to build)."""
    settings = dict(PROBE_SETTINGS.get(name, DEFAULT_PROBE_SETTINGS))
    info = BackboneInfo(name, settings)
    try:
        model = build_backbone(name, 1, 3.0, 0, settings)
        info.order = readout_order(model)
    except Exception as exc:  # a backbone that cannot be probed is reported, not fatal
        info.error = f"{type(exc).__name__}: {exc}"
        return info
    info.bound = "IGWL_(2)" if name in DISTANCE_ONLY else ("GWL" if info.order >= 1 else "IGWL")
    info.group = "O3" if getattr(model, "reflection_invariant", True) else "SO3"
    info.rotation_symmetry = getattr(model, "rotation_symmetry", "exact")
    info.global_frame = uses_global_frame(model)
    if info.global_frame:
        info.rotation_symmetry += " (frame-averaged)"
    return info


def run_expressivity(backbones=None, pair_names=None, max_layers: int = 6, seeds: int = 3,
                     progress: bool = True) -> tuple[list[ReportRow], list[BackboneInfo]]:
    """Run every test and backbone on every pair. ``backbones``: names (default: all of BACKBONES);
    ``pair_names``: names from ``load_pairs`` (default: all). Returns (rows, backbone infos)."""
    from tqdm import tqdm

    names = list(BACKBONES) if backbones is None else list(backbones)
    unknown = [n for n in names if n not in BACKBONES]
    if unknown:
        raise ValueError(f"unknown backbone(s) {', '.join(unknown)}; choose from: {', '.join(BACKBONES)}")
    if int(max_layers) != max_layers or max_layers < 1:
        raise ValueError(f"max_layers must be a positive integer, got {max_layers}")
    pairs = load_pairs(pair_names)
    infos = [describe_backbone(n) for n in names]
    rows = []
    bar = tqdm(total=len(pairs) * (1 + len(infos)), desc="expressivity", unit="probe", disable=not progress,
               file=sys.stderr)
    for pair in pairs:
        row = ReportRow(pair)
        gwl = {(group, test): gwl_test(pair.g1, pair.g2, *_TEST_OPTIONS[test], group=group).iterations
               for group in ("O3", "SO3") for test in TESTS}
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


def _probe(info: BackboneInfo, pair: HardPair, gwl: dict, max_layers: int, seeds: int) -> Cell:
    """One backbone on one pair, with its expectation and status."""
    if info.error:
        return Cell(None, None, "error", info.error)
    try:
        if pair.is_orientation_pair:
            measured = layers_needed(info.name, pair, max_layers=1, seeds=seeds, **info.settings) is not None
            expected = info.order >= pair.orientation_order
            status = "ok" if measured == expected else ("violates tensor-order bound" if measured else "differs")
            return Cell(measured, expected, status)
        measured = layers_needed(info.name, pair, max_layers=max_layers, seeds=seeds, **info.settings)
    except Exception as exc:
        return Cell(None, None, "error", f"{type(exc).__name__}: {exc}")
    expected = gwl[(info.group, info.bound)]
    bound = gwl[(info.group, "GWL")]
    if measured is not None and (bound is None or measured < bound):
        status = "beyond GWL (global frame)" if info.global_frame else "violates GWL"
    else:
        status = "ok" if measured == expected else "differs"
    return Cell(measured, expected, status)


# --------------------------------------------------------------------------- outputs
def format_markdown(rows: list[ReportRow], infos: list[BackboneInfo], max_layers: int, seeds: int) -> str:
    """The report table (pairs x tests x backbones) with its legend, as Markdown."""
    header = ["pair"] + [TEST_LABELS[t] for t in TESTS] + [i.name for i in infos] + ["note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = ([row.pair.name] + [row.tests[t].text() for t in TESTS]
                 + [row.backbones[i.name].text() for i in infos] + [row.note])
        lines.append("| " + " | ".join(cells) + " |")
    legend = [
        "",
        "Each cell: measured (theory). Tests: first GWL iteration that separates the pair; backbones: fewest "
        f"layers (1..{max_layers}) that separate it at random initialisation (any of {seeds} seeds, "
        "float64, threshold 100x the isometric-copy noise). ✗ = never. Rotationally symmetric pairs "
        "(L-fold): ✓ if a 1-layer model's equivariant readout tells the structure from its rotated copy, "
        "expected iff tensor order ≥ L. † differs from theory; ⚠ separates beyond GWL (a bug); ‡ beyond GWL "
        "by a frame-averaged model, whose frame is global (not message passing: the bound does not apply).",
        "",
        "Backbones (theory class, tensor order of the readout, symmetry):",
    ]
    for info in infos:
        if info.error:
            legend.append(f"- {info.name}: could not be built: {info.error}")
            continue
        seen = f"; warnings while probing: {', '.join(sorted(info.warnings))}" if info.warnings else ""
        legend.append(f"- {info.name}: bounded by {TEST_LABELS[info.bound]} ({info.group}), order {info.order}, "
                      f"rotation symmetry {info.rotation_symmetry}; settings {info.settings}{seen}")
    errors = [(row.pair.name, name, cell.note) for row in rows for name, cell in row.backbones.items()
              if cell.status == "error" and cell.note and not any(i.error for i in infos if i.name == name)]
    legend += [f"- error {b} on {p}: {note}" for p, b, note in errors]
    return "\n".join(lines + legend) + "\n"


def write_csv(rows: list[ReportRow], infos: list[BackboneInfo], path: Path) -> None:
    """One line per pair and column: pair, family, column, kind, measured, expected, status."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["pair", "family", "column", "kind", "measured", "expected", "status"])
        for row in rows:
            for test in TESTS:
                c = row.tests[test]
                writer.writerow([row.pair.name, row.pair.family, test, "test", _csv(c.measured), _csv(c.expected),
                                 c.status])
            for info in infos:
                c = row.backbones[info.name]
                kind = "orientation" if row.pair.is_orientation_pair else "layers"
                writer.writerow([row.pair.name, row.pair.family, info.name, kind, _csv(c.measured),
                                 _csv(c.expected), c.status])


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


def write_report(out_dir, backbones=None, pair_names=None, max_layers: int = 6, seeds: int = 3,
                 progress: bool = True) -> dict:
    """Run the report and write report.md, report.csv and heatmap.png into ``out_dir``.

    Returns {"markdown": path, "csv": path, "heatmap": path or None, "seconds": wall time,
    "violations": [(pair, backbone)], "rows": rows}.
    """
    start = time.perf_counter()
    rows, infos = run_expressivity(backbones, pair_names, max_layers, seeds, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds = time.perf_counter() - start
    markdown = format_markdown(rows, infos, max_layers, seeds)
    (out / "report.md").write_text(markdown + f"\nRun time: {seconds:.0f} s.\n")
    write_csv(rows, infos, out / "report.csv")
    heatmap = out / "heatmap.png" if write_heatmap(rows, infos, out / "heatmap.png") else None
    violations = [(row.pair.name, name) for row in rows for name, c in row.backbones.items()
                  if c.status.startswith("violates")]
    return {"markdown": out / "report.md", "csv": out / "report.csv", "heatmap": heatmap, "seconds": seconds,
            "violations": violations, "rows": rows}
