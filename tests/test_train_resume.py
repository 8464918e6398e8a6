"""A training process killed with SIGKILL mid-epoch resumes to exactly the state of an uninterrupted run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ARGS = [
    "--limit",
    "150",
    "--batch-size",
    "4",
    "--epochs",
    "3",
    "--time-limit",
    "0",
    "--threads",
    "1",
    "--checkpoint-every",
    "7",
    "--ema-decay",
    "0.9",
    "--scheduler",
    "cosine",
    "--warmup-steps",
    "5",
    "--seed",
    "5",
]


def geognn_train(*args) -> list[str]:
    return [sys.executable, "-m", "geognn.cli", "train", *args]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def rows(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in csv.DictReader((run / "metrics.csv").open())]


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    proc = subprocess.Popen(
        geognn_train(*ARGS, "--out", str(killed)), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state = killed / "state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    at_kill = torch.load(state, weights_only=True)
    assert at_kill["batch_in_epoch"] > 0 and at_kill["epoch"] < 3  # killed mid-epoch, not at its end
    assert not (killed / "result.json").exists()

    subprocess.run(geognn_train("--resume", str(killed)), env=env(), check=True, capture_output=True)
    subprocess.run(geognn_train(*ARGS, "--out", str(whole)), env=env(), check=True, capture_output=True)

    a, b = (torch.load(run / "state.pt", weights_only=True) for run in (killed, whole))
    assert a["step"] == b["step"] == 3 * 30 and a["epoch"] == 3
    for part in ("model", "ema"):
        for name, value in b[part].items():
            assert torch.equal(a[part][name], value), f"{part}.{name} differs after resume"
    for ga, gb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(ga[k], gb[k]) for k in gb)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert rows(killed) == rows(whole) and len(rows(whole)) == 3
    best_a = torch.load(killed / "model.pt", weights_only=True)["state_dict"]
    best_b = torch.load(whole / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(best_a[k], v) for k, v in best_b.items())
