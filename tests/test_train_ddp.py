"""Data-parallel training with torchrun: 2 CPU processes (gloo) on a tiny QM9 run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from geognn.model import Model, load_checkpoint
from geognn.train.config import TrainConfig
from geognn.train.data import GraphDataset, open_structures
from geognn.train.distributed import Dist
from geognn.train.loop import evaluate

COMMON = [
    "--limit",
    "64",
    "--epochs",
    "2",
    "--time-limit",
    "0",
    "--threads",
    "1",
    "--seed",
    "2",
    "--set",
    "backbone_kwargs={hidden_channels: 16, num_filters: 16, num_layers: 2, num_gaussians: 16}",
]


def run(cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def final_model(run_dir) -> Model:
    config = TrainConfig.from_file(run_dir / "config.json")
    state = torch.load(run_dir / "state.pt", weights_only=True)
    species = load_checkpoint(run_dir / "model.pt")["config"]["backbone_kwargs"]["species"]  # filled from the data
    model = Model(
        "schnet",
        cutoff=config.cutoff,
        forces=False,
        backbone_kwargs={**config.backbone_kwargs, "species": species},
        targets=[{"name": "U0", "unit": "eV", "readout": "sum"}],
    )  # the run's target: heads are stored by name
    model.load_state_dict(state["model"])
    return model


def test_two_process_torchrun_equals_one_process_with_the_global_batch(tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    done = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "geognn.cli",
            "train",
            *COMMON,
            "--batch-size",
            "4",
            "--out",
            str(ddp),
        ]
    )
    run([sys.executable, "-m", "geognn.cli", "train", *COMMON, "--batch-size", "8", "--out", str(single)])

    # rank 0 alone logs and writes
    assert done.stdout.count("test MAE of U0") == 1
    assert (done.stdout + done.stderr).count("train loss") == 2  # one line per epoch
    rows = list(csv.DictReader((ddp / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    state = torch.load(ddp / "state.pt", weights_only=True)
    assert state["world"] == 2 and state["step"] == 2 * 7  # 52 training molecules, 2 x 4 per step

    # 2 processes x batch 4 take the same steps as 1 process x batch 8: same weights
    a, b = final_model(ddp).state_dict(), final_model(single).state_dict()
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)

    # the logged validation MAE (reduced over ranks) is that of one process evaluating the checkpoint
    config = TrainConfig.from_file(ddp / "config.json")
    val = json.loads((ddp / "split.json").read_text())["val"]
    graphs = GraphDataset(open_structures(config), config)
    mae = evaluate(final_model(ddp), graphs, val, config, Dist(), "eV").mae
    assert float(rows[-1]["val_U0_mae_meV"]) == pytest.approx(mae * 1000, rel=1e-5)
    result = json.loads((ddp / "result.json").read_text())
    assert result["test_mae_eV"] > 0
