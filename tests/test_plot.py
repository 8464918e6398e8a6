"""test_predictions.csv (written by geognn train) and geognn plot (learning curves, parity plot).

One tiny training run on the shipped QM9 subset (module fixture) feeds most tests; a second,
an ensemble of 2, checks the ``_std`` columns. Numbers shown by the plots are checked against
numpy computations from the CSV files, and the titles drawn are read back from the figures.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import struct
import sys

import numpy as np
import pytest

from geognn.cli import main
from geognn.plot import (
    PlotError,
    format_r2,
    parity_statistics,
    parity_title,
    plot_learning_curves,
    plot_parity,
    read_metrics,
)
from geognn.train.predictions import FILE_NAME


def _train(out, *extra) -> None:
    args = [
        "train",
        "--limit",
        "40",
        "--epochs",
        "2",
        "--time-limit",
        "0",
        "--threads",
        "1",
        "--batch-size",
        "8",
        "--out",
        str(out),
        *extra,
    ]
    assert main(args) == 0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("plot") / "run"
    _train(out)
    return out


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG header; fails unless the file starts with the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# --------------------------------------------------------------------------- test_predictions.csv
def test_predictions_file_matches_split_and_result(run):
    rows = _rows(run / FILE_NAME)
    split = json.loads((run / "split.json").read_text())
    result = json.loads((run / "result.json").read_text())
    assert list(rows[0]) == ["id", "U0", "U0_pred"]
    # one row per test structure, in the split's order, with the split's ids
    assert [r["id"] for r in rows] == split["ids"]["test"] and len(rows) == len(split["test"]) > 0
    truth = np.array([float(r["U0"]) for r in rows])
    pred = np.array([float(r["U0_pred"]) for r in rows])
    # the MAE of the file is the run's test MAE (eV): both from the same float32 values, summed in
    # float64 in a different order, so they agree to ~1e-12 eV
    assert np.abs(pred - truth).mean() == pytest.approx(result["test_mae_eV"], abs=1e-9)
    assert result["test_predictions"] == {"file": FILE_NAME, "n": len(rows), "units": {"U0": "eV"}}
    # truth is the label in eV (QM9 U0 of these molecules: -1e4..-1e3 eV), within float32 rounding
    assert np.all((truth < -1000) & (truth > -20000))


def test_ensemble_predictions_have_std(tmp_path):
    out = tmp_path / "ens"
    _train(out, "--ensemble", "2", "--epochs", "1")
    rows = _rows(out / FILE_NAME)
    assert list(rows[0]) == ["id", "U0", "U0_pred", "U0_std"]
    # the ensemble's std is that of its members' predictions (ddof=1), from their own files
    m0, m1 = (_rows(out / f"member_{k}" / FILE_NAME) for k in (0, 1))
    assert [r["id"] for r in m0] == [r["id"] for r in rows]
    p = np.array([[float(r["U0_pred"]) for r in m] for m in (m0, m1)])
    std = np.array([float(r["U0_std"]) for r in rows])
    mean = np.array([float(r["U0_pred"]) for r in rows])
    # float32 predictions of ~-8000 eV: mean and std agree to the float32 spacing there (1e-3 eV)
    np.testing.assert_allclose(mean, p.mean(0), atol=2e-3)
    np.testing.assert_allclose(std, p.std(0, ddof=1), atol=2e-3)
    result = json.loads((out / "result.json").read_text())
    truth = np.array([float(r["U0"]) for r in rows])
    assert np.abs(mean - truth).mean() == pytest.approx(result["test_mae_eV"], abs=1e-9)
    # an ensemble folder: learning curves of every member, parity with error bars
    assert plot_learning_curves(out).is_file() and plot_parity(out).is_file()


# --------------------------------------------------------------------------- plots
def test_plot_command_writes_valid_pngs(run, capsys):
    assert main(["plot", str(run)]) == 0
    printed = capsys.readouterr().out.splitlines()
    for name in ("learning_curves.png", "parity.png"):
        path = run / name
        assert str(path) in printed
        width, height = _png_size(path)
        assert width > 200 and height > 200 and path.stat().st_size > 5000


def test_parity_numbers_equal_numpy(run, monkeypatch):
    rows = _rows(run / FILE_NAME)
    t = np.array([float(r["U0"]) for r in rows])
    p = np.array([float(r["U0_pred"]) for r in rows])
    mae = np.mean(np.abs(p - t))
    r2 = 1 - np.sum((p - t) ** 2) / np.sum((t - t.mean()) ** 2)
    stats = parity_statistics(run)["U0"]
    assert stats["n"] == len(rows) and stats["unit"] == "eV"
    assert stats["mae"] == pytest.approx(mae, rel=1e-12) and stats["r2"] == pytest.approx(r2, rel=1e-12)
    # the title drawn on the figure carries these numbers (MAE in meV)
    from matplotlib.figure import Figure

    titles = []
    save = Figure.savefig
    monkeypatch.setattr(
        Figure,
        "savefig",
        lambda fig, *a, **k: (titles.extend(ax.get_title() for ax in fig.axes), save(fig, *a, **k))[1],
    )
    plot_parity(run)
    assert titles[0].startswith(parity_title("U0", stats))
    assert f"MAE {mae * 1000:.4g} meV" in titles[0]
    shown = float(re.search(r"R² = ([-0-9.]+)", titles[0]).group(1))
    assert abs(shown - r2) <= 0.05 * abs(1 - r2)  # 1 - R² to two digits: a total-energy R² never shows as 1


def test_r2_format_keeps_the_distance_from_one():
    assert format_r2(0.9999996) == "0.99999960" and format_r2(0.87654) == "0.8765"
    assert format_r2(1.0) == "1.0000" and format_r2(-2.5) == "-2.5000" and format_r2(math.nan) == "n/a"


def test_parity_r2_of_a_perfect_and_a_mean_prediction(tmp_path):
    """R² is 1 for exact predictions and 0 for predicting the mean; MAE by hand."""
    run = tmp_path / "r"
    run.mkdir()
    (run / FILE_NAME).write_text("id,gap,gap_pred,e,e_pred\na,1.0,1.0,1.0,2.0\nb,2.0,2.0,2.0,2.0\nc,3.0,3.0,3.0,2.0\n")
    stats = parity_statistics(run)
    assert stats["gap"]["r2"] == 1.0 and stats["gap"]["mae"] == 0.0
    assert stats["e"]["r2"] == pytest.approx(0.0, abs=1e-15) and stats["e"]["mae"] == pytest.approx(2 / 3)
    assert stats["e"]["unit"] == ""  # no result.json: no units
    assert _png_size(plot_parity(run))[0] > 400  # two panels side by side


def test_learning_curves_read_the_real_columns(run):
    m = read_metrics(run / "metrics.csv")
    assert list(m["epoch"]) == [1.0, 2.0]
    assert {"train_loss", "val_U0_mae_meV"} <= set(m)
    assert np.all(m["val_U0_mae_meV"] > 0)


# --------------------------------------------------------------------------- errors
def test_errors_are_one_line(run, tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nope"
    assert main(["plot", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {missing}: no such run folder"

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PlotError, match=r"metrics\.csv: not found"):
        plot_learning_curves(empty)

    header_only = tmp_path / "header"
    header_only.mkdir()
    (header_only / "metrics.csv").write_text("epoch,step,train_loss,lr,elapsed_s,val_U0_mae_meV\n")
    with pytest.raises(PlotError, match="no epoch logged yet"):
        plot_learning_curves(header_only)
    (header_only / "metrics.csv").write_text("")
    with pytest.raises(PlotError, match="no column 'epoch'"):
        plot_learning_curves(header_only)

    old = tmp_path / "old_run"  # a run from before test_predictions.csv: learning curves still come out
    shutil.copytree(run, old)
    (old / FILE_NAME).unlink()
    (old / "learning_curves.png").unlink(missing_ok=True)
    assert main(["plot", str(old)]) == 2
    captured = capsys.readouterr()
    assert str(old / "learning_curves.png") in captured.out
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and FILE_NAME in err and f"geognn train --resume {old}" in err

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    with pytest.raises(PlotError, match="matplotlib is not installed"):
        plot_learning_curves(run)
    monkeypatch.undo()

    (old / FILE_NAME).write_text("id,U0\n1,2.0\n")
    with pytest.raises(PlotError, match="no '<name>' and '<name>_pred' column pair"):
        plot_parity(old)


def test_resume_of_a_finished_run_writes_the_predictions(run, tmp_path):
    """The fix the error message proposes: --resume re-evaluates a finished run (no more training)."""
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / FILE_NAME).unlink()
    before = (old / "model.pt").read_bytes()
    assert main(["train", "--resume", str(old)]) == 0
    assert _rows(old / FILE_NAME) == _rows(run / FILE_NAME)
    assert (old / "model.pt").read_bytes() == before
