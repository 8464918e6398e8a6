"""Plots of a training run folder: ``geognn plot RUN_DIR``.

- :func:`plot_learning_curves` -> ``RUN_DIR/learning_curves.png`` from ``metrics.csv``: the
  training loss per epoch (the loss the optimizer minimised: L1 or MSE of the errors divided by
  each target's scale, see geognn/train/losses.py, so it has no unit) and each validation MAE
  column (``val_<name>_mae_<unit>``, and ``val_forces_mae_meV_A`` when forces are trained), on
  log scales when they span over a decade. ``metrics.csv`` holds no validation loss and no
  training MAE, so neither is drawn. For an ensemble folder (no ``metrics.csv`` of its own,
  ``member_k/metrics.csv`` inside) every member is drawn.
- :func:`plot_parity` -> ``RUN_DIR/parity.png`` from ``test_predictions.csv``: prediction vs
  truth on the test split, one panel per target, MAE and R² (:func:`parity_statistics`) in each
  panel's title, the errors (prediction - truth) below; error bars of one ensemble standard
  deviation when the file has ``<name>_std``.

Both draw with matplotlib's Agg canvas (no display, no pyplot state, the global backend is left
alone); matplotlib is imported only here (``pip install matplotlib``; the ``test`` and ``report``
extras have it). Bad input raises :class:`PlotError` with a one-line message naming the file.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

METRICS = "metrics.csv"
PREDICTIONS = "test_predictions.csv"  # geognn.train.predictions.FILE_NAME (not imported: no torch here)
LEARNING_CURVES = "learning_curves.png"
PARITY = "parity.png"


class PlotError(ValueError):
    """A run folder that cannot be plotted (one-line message naming the file and the problem)."""


def _run_dir(run_dir) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PlotError(f"{run_dir}: no such run folder")
    return run_dir


def _matplotlib():
    """(Figure, FigureCanvasAgg), or PlotError if matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError("matplotlib is not installed: pip install matplotlib (or geognn[report])") from None
    return Figure, FigureCanvasAgg


def _save(fig, canvas_class, path: Path) -> Path:
    canvas_class(fig)
    fig.savefig(path, dpi=120)
    return path


def _describe(run_dir: Path) -> str:
    """``schnet on qm9 (runs/default)`` from the run's config.json, or the folder name alone."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
        return f"{config['backbone']} on {config['dataset']} ({run_dir.resolve().name})"
    except (OSError, ValueError, KeyError, TypeError):
        return run_dir.resolve().name


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


# --------------------------------------------------------------------------- learning curves
def read_metrics(path) -> dict[str, np.ndarray]:
    """The columns of a ``metrics.csv`` as float arrays [epochs] (empty cells -> NaN).

    PlotError if the file is missing, has no header or no ``epoch``/``train_loss`` column, or
    holds no epoch yet.
    """
    path = Path(path)
    if not path.is_file():
        raise PlotError(f"{path}: not found (not a geognn train run folder?)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = reader.fieldnames or []
    missing = [c for c in ("epoch", "train_loss") if c not in columns]
    if missing:
        raise PlotError(f"{path}: no column {missing[0]!r} (columns: {', '.join(columns) or 'none'})")
    if not rows:
        raise PlotError(f"{path}: no epoch logged yet (the run stopped before its first epoch ended)")
    return {c: np.array([_float(r.get(c)) for r in rows]) for c in columns}


def _curve_sources(run_dir: Path) -> list[tuple[str, Path]]:
    """(label, metrics.csv) of the run, or of each member of an ensemble folder."""
    own = run_dir / METRICS
    if own.exists():
        return [("", own)]
    members = [p for p in run_dir.glob(f"member_*/{METRICS}") if p.parent.name.removeprefix("member_").isdigit()]
    members.sort(key=lambda p: int(p.parent.name.removeprefix("member_")))
    if members:
        return [(p.parent.name, p) for p in members]
    return [("", own)]  # read_metrics reports it missing


def _mae_columns(columns) -> list[str]:
    """The validation MAE columns of metrics.csv, in file order (``val_<name>_mae_<unit>``)."""
    return [c for c in columns if c.startswith("val_") and "_mae_" in c]


def plot_learning_curves(run_dir) -> Path:
    """Write ``learning_curves.png`` (train loss | validation MAEs, per epoch) into ``run_dir``; returns its path."""
    run_dir = _run_dir(run_dir)
    sources = [(label, read_metrics(path)) for label, path in _curve_sources(run_dir)]
    Figure, Canvas = _matplotlib()
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_mae = fig.subplots(1, 2)
    for label, m in sources:
        prefix = f"{label} " if label else ""
        _line(ax_loss, m["epoch"], m["train_loss"], f"{prefix}train loss")
        for col in _mae_columns(m):
            _line(ax_mae, m["epoch"], m[col], prefix + col.removeprefix("val_").replace("_mae_", " MAE (") + ")")
    ax_loss.set(xlabel="epoch", ylabel="training loss (errors / target scale, no unit)", title="training loss")
    ax_mae.set(xlabel="epoch", ylabel="validation MAE", title="validation MAE")
    for ax in (ax_loss, ax_mae):
        values = np.concatenate([line.get_ydata() for line in ax.get_lines()] or [np.zeros(0)])
        if len(values) and (values > 0).all() and values.max() > 10 * values.min():  # log only over a decade
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"{_describe(run_dir)}: learning curves")
    return _save(fig, Canvas, run_dir / LEARNING_CURVES)


def _line(ax, x, y, label) -> None:
    ok = np.isfinite(y)
    ax.plot(x[ok], y[ok], marker="o" if ok.sum() < 30 else None, ms=3, label=label)


# --------------------------------------------------------------------------- parity
def read_predictions(run_dir) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """``test_predictions.csv`` of ``run_dir`` as ({name: {"true", "pred"[, "std"]} arrays [n]}, {name: unit}).

    Units come from ``result.json`` (``test_predictions`` -> ``units``); "" when it is missing.
    """
    run_dir = _run_dir(run_dir)
    path = run_dir / PREDICTIONS
    if not path.is_file():
        raise PlotError(
            f"{path}: not found; geognn train writes it at the end of a run since this version: "
            f"re-run the training, or finish this run again with: geognn train --resume {run_dir}"
        )
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = reader.fieldnames or []
    names = [c[: -len("_pred")] for c in columns if c.endswith("_pred") and c[: -len("_pred")] in columns]
    if not names:
        raise PlotError(f"{path}: no '<name>' and '<name>_pred' column pair (columns: {', '.join(columns) or 'none'})")
    if not rows:
        raise PlotError(f"{path}: no rows (the run had no test structures)")
    data = {}
    for name in names:
        data[name] = {
            "true": np.array([_float(r[name]) for r in rows]),
            "pred": np.array([_float(r[name + "_pred"]) for r in rows]),
        }
        if name + "_std" in columns:
            data[name]["std"] = np.array([_float(r[name + "_std"]) for r in rows])
    units = {}
    result = run_dir / "result.json"
    if result.is_file():
        try:
            units = json.loads(result.read_text()).get("test_predictions", {}).get("units", {})
        except json.JSONDecodeError:
            units = {}
    return data, {name: units.get(name, "") for name in names}


def parity_statistics(run_dir) -> dict[str, dict[str, float]]:
    """Per target of ``test_predictions.csv``: ``n``, ``mae`` (the target's unit, eV for energies),
    ``r2`` (1 - Σ(pred - true)² / Σ(true - mean true)²; NaN with fewer than 2 structures or constant
    truth) and ``unit``. Rows with a non-finite value are left out. These are the numbers in the
    titles of :func:`plot_parity`."""
    data, units = read_predictions(run_dir)
    stats = {}
    for name, d in data.items():
        ok = np.isfinite(d["true"]) & np.isfinite(d["pred"])
        t, p = d["true"][ok], d["pred"][ok]
        ss_tot = float(((t - t.mean()) ** 2).sum()) if len(t) else 0.0
        r2 = 1.0 - float(((p - t) ** 2).sum()) / ss_tot if len(t) > 1 and ss_tot > 0 else math.nan
        stats[name] = {
            "n": int(ok.sum()),
            "mae": float(np.abs(p - t).mean()) if len(t) else math.nan,
            "r2": r2,
            "unit": units[name],
        }
    return stats


def format_r2(r2: float) -> str:
    """R² with 4 decimals, or as many as it takes to show 1 - R² to two digits when R² is closer
    to 1 (total energies: ``0.99999960``, never a rounded ``1``; at most 12 decimals)."""
    if not math.isfinite(r2):
        return "n/a"
    gap = 1.0 - r2
    decimals = 4 if gap <= 0 or gap >= 1e-3 else min(12, math.ceil(-math.log10(gap)) + 1)
    return f"{r2:.{decimals}f}"


def parity_title(name: str, s: dict) -> str:
    """The panel title: ``U0: MAE 12.3 meV, R² = 0.99999960 (n = 100)`` (eV errors shown in meV)."""
    unit, factor = ("meV", 1000.0) if s["unit"] == "eV" else (s["unit"], 1.0)
    return f"{name}: MAE {s['mae'] * factor:.4g} {unit}".rstrip() + f", R² = {format_r2(s['r2'])} (n = {s['n']})"


def _baseline_maes(run_dir: Path) -> dict[str, float]:
    """Test MAE of the composition-only baseline per target (``result.json`` -> ``per_target``), if any."""
    try:
        per_target = json.loads((run_dir / "result.json").read_text()).get("per_target") or {}
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: v["baseline_test_mae"] for k, v in per_target.items() if "baseline_test_mae" in v}


def plot_parity(run_dir) -> Path:
    """Write ``parity.png`` into ``run_dir``; returns its path.

    One column per target: top, prediction vs truth on the test split with MAE and R² in the title
    (and the composition-only baseline's MAE from ``result.json``: for total energies R² is close
    to 1 from composition alone, the baseline is the number to compare with); bottom, the error
    (prediction - truth) vs truth, in meV for eV targets.
    """
    run_dir = _run_dir(run_dir)
    data, units = read_predictions(run_dir)
    stats = parity_statistics(run_dir)
    baseline = _baseline_maes(run_dir)
    Figure, Canvas = _matplotlib()
    n = len(data)
    fig = Figure(figsize=(5.6 * n, 7.2), layout="constrained")
    axes = np.array(fig.subplots(2, n, height_ratios=[3, 1.4], squeeze=False))
    for k, (name, d) in enumerate(data.items()):
        ax, ax_err = axes[0, k], axes[1, k]
        unit = f" ({units[name]})" if units[name] else ""
        err_unit, factor = ("meV", 1000.0) if units[name] == "eV" else (units[name], 1.0)
        ok = np.isfinite(d["true"]) & np.isfinite(d["pred"])
        t, p = d["true"][ok], d["pred"][ok]
        std = d["std"][ok] if "std" in d else None
        if std is not None:
            ax.errorbar(t, p, yerr=std, fmt="o", ms=3, alpha=0.6, elinewidth=0.8, label="prediction ± 1 σ (ensemble)")
            ax_err.errorbar(t, (p - t) * factor, yerr=std * factor, fmt="o", ms=3, alpha=0.6, elinewidth=0.8)
        else:
            ax.plot(t, p, "o", ms=3, alpha=0.6, label="prediction")
            ax_err.plot(t, (p - t) * factor, "o", ms=3, alpha=0.6)
        if len(t):
            lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
            pad = 0.03 * (hi - lo) or 1.0
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8, label="y = x")
        ax_err.axhline(0.0, color="k", lw=0.8, ls="--")
        title = parity_title(name, stats[name])
        if name in baseline:
            title += f"\ncomposition-only baseline: MAE {baseline[name] * factor:.4g} {err_unit}".rstrip()
        ax.set(xlabel=f"{name} true{unit}", ylabel=f"{name} predicted{unit}")
        ax.set_title(title, fontsize="medium")
        ax_err.set(xlabel=f"{name} true{unit}", ylabel=f"error{f' ({err_unit})' if err_unit else ''}")
        ax.legend(fontsize="small", loc="upper left")
        for a in (ax, ax_err):
            a.grid(alpha=0.3)
    fig.suptitle(f"{_describe(run_dir)}: test split")
    return _save(fig, Canvas, run_dir / PARITY)
