"""Every ``geognn`` command given bad input: one ``error: ...`` line naming the file or option,
exit status 2 (bad arguments/input, as argparse) and no traceback; Ctrl-C/SIGTERM during
``geognn train`` saves ``state.pt`` and prints the resume command (status 130/143).

Runs ``main(argv)`` in-process; only the real Ctrl-C test starts a subprocess.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from geognn.cli import DEFAULT_CHECKPOINT, main

QUICK = ["--limit", "30", "--epochs", "1", "--time-limit", "0", "--threads", "1", "--batch-size", "8"]


def run(argv, capsys) -> tuple[int, str]:
    """Exit status and stderr of ``geognn *argv`` (argparse's SystemExit turned into its status)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def fill(argv, files) -> list[str]:
    """``argv`` with ``{name}`` replaced by the path ``files[name]`` (other braces kept)."""
    return [re.sub(r"\{(\w+)\}", lambda m: str(files.get(m.group(1), m.group(0))), str(a)) for a in argv]


def assert_one_error(err: str, *needles: str) -> str:
    """Exactly one ``error:`` message, on one line, naming each of ``needles``; no traceback."""
    assert "Traceback" not in err, err
    messages = re.findall(r"error: (.*)", err)
    assert len(messages) == 1, err
    for needle in needles:
        assert needle in messages[0], f"{needle!r} not named in: {messages[0]}"
    return messages[0]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run from a temporary folder: the default --out (runs/default) must not land in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Broken inputs of every kind, made once."""
    d = tmp_path_factory.mktemp("bad")
    f = {
        "dir": d / "folder",
        "file": d / "plain.txt",
        "malformed": d / "malformed.yaml",
        "unknown": d / "unknown.yaml",
        "mol": d / "water.xyz",
        "text_pt": d / "text.pt",
        "state_dict": d / "state_dict.pt",
        "future": d / "future.pt",
        "newer_config": d / "newer_config.pt",
        "notrun": d / "notrun",
    }
    f["dir"].mkdir()
    f["notrun"].mkdir()
    f["file"].write_text("just text\n")
    f["malformed"].write_text("epochs: [1,\n")
    f["unknown"].write_text("epochz: 3\n")
    f["mol"].write_text("3\n\nO 0 0 0\nH 0 0 0.96\nH 0.93 0 -0.24\n")
    f["text_pt"].write_text("not a checkpoint\n")
    torch.save({"weight": torch.zeros(2)}, f["state_dict"])
    shipped = torch.load(DEFAULT_CHECKPOINT, weights_only=True)
    torch.save({**shipped, "format_version": 99}, f["future"])
    torch.save({**shipped, "config": {**shipped["config"], "option_from_the_future": 1}}, f["newer_config"])
    return f


# --------------------------------------------------------------------------- train
TRAIN_CASES = {  # id: (argv with {placeholders}, exit status, what the message names)
    "config missing": (["--config", "{dir}/nope.yaml"], 2, ["nope.yaml", "no such"]),
    "config is a folder": (["--config", "{dir}"], 2, ["folder"]),
    "config malformed": (["--config", "{malformed}"], 2, ["malformed.yaml", "YAML"]),
    "config unknown key": (["--config", "{unknown}"], 2, ["unknown.yaml", "epochz"]),
    "set without =": (["--set", "epochs"], 2, ["--set", "KEY=VALUE"]),
    "set unknown key": (["--set", "epochz=3"], 2, ["epochz"]),
    "set wrong type": (["--set", "epochs=many"], 2, ["epochs", "integer"]),
    "set float for int": (["--set", "batch_size=2.5"], 2, ["batch_size", "integer"]),
    "set malformed YAML": (["--set", "backbone_kwargs={a: [1"], 2, ["--set", "YAML"]),
    "set unknown dataset": (["--set", "dataset=qm10"], 2, ["dataset", "qm10"]),
    "epochs 0": (["--epochs", "0"], 2, ["epochs"]),
    "epochs negative": (["--epochs", "-3"], 2, ["epochs"]),
    "batch size 0": (["--batch-size", "0"], 2, ["batch_size"]),
    "cutoff negative": (["--cutoff", "-1"], 2, ["cutoff"]),
    "time limit negative": (["--time-limit", "-5"], 2, ["time_limit"]),
    "threads negative": (["--threads", "-1"], 2, ["threads"]),
    "lr 0": (["--lr", "0"], 2, ["lr"]),
    "limit 0": (["--limit", "0"], 2, ["limit"]),
    "ensemble 0": (["--ensemble", "0"], 2, ["ensemble"]),
    "epochs not a number": (["--epochs", "x"], 2, ["--epochs"]),
    "unknown dataset kind": (["--dataset", "qm10"], 2, ["--dataset", "qm10"]),
    "unknown backbone": (["--backbone", "schnot"], 2, ["schnot"]),
    "unknown backbone kwarg": (["--set", "backbone_kwargs={hidden: 8}"], 2, ["backbone_kwargs", "hidden"]),
    "negative backbone size": (["--set", "backbone_kwargs={hidden_channels: -1}"], 2, ["backbone_kwargs", "-1"]),
    "data root missing": (["--data-root", "{dir}/qm9.csv", *QUICK], 2, ["qm9.csv"]),
    "qm9 root a text file": (["--data-root", "{file}", *QUICK], 2, ["plain.txt", "QM9"]),
    "extxyz root without files": (["--dataset", "extxyz", "--data-root", "{dir}", *QUICK], 2, ["folder", ".xyz"]),
    "cif-folder root a file": (
        ["--dataset", "cif-folder", "--data-root", "{file}", *QUICK],
        2,
        ["plain.txt", "id_prop"],
    ),
    "oc20 root a text file": (["--dataset", "oc20-is2re", "--data-root", "{file}", *QUICK], 2, ["plain.txt", "LMDB"]),
    "dataset needs a root": (["--dataset", "extxyz", *QUICK], 2, ["--data-root"]),
    "split file missing": (["--split", "{dir}/split.json", *QUICK], 2, ["split.json"]),
    "out under a file": (["--out", "{file}/run", *QUICK], 2, ["--out", "plain.txt"]),
    "device unknown": (["--device", "tpu"], 2, ["device", "tpu"]),
    "resume missing folder": (["--resume", "{dir}/gone"], 2, ["--resume", "gone"]),
    "resume not a run": (["--resume", "{notrun}"], 2, ["notrun", "config.json"]),
    "resume a file": (["--resume", "{file}"], 2, ["--resume", "plain.txt"]),
}


@pytest.mark.parametrize("case", TRAIN_CASES, ids=list(TRAIN_CASES))
def test_train_bad_input(case, files, capsys):
    argv, status, needles = TRAIN_CASES[case]
    code, err = run(["train", *fill(argv, files)], capsys)
    assert code == status, err
    if code == 2 and "usage:" in err:  # argparse's own message
        assert "Traceback" not in err and any(n in err for n in needles), err
        return
    assert_one_error(err, *needles)


def test_set_number_in_yaml_exponent_form_is_a_number(tmp_path):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: number-valued keys take it as the number."""
    from geognn.train.config import TrainConfig, parse_assignment

    (tmp_path / "c.yaml").write_text("lr: 5e-4\n")
    config = TrainConfig.from_file(tmp_path / "c.yaml").updated(dict([parse_assignment("ema_decay=9e-1")]))
    assert (config.validate().lr, config.ema_decay) == (5e-4, 0.9)
    with pytest.raises(ValueError, match="config target=3: expected a string or a list of strings or null"):
        TrainConfig(target=3).validate()


def make_run(folder: Path, **config) -> Path:
    """A run folder as ``geognn train`` leaves it before its first save: config.json only."""
    folder.mkdir(parents=True, exist_ok=True)
    base = {"limit": 24, "epochs": 1, "time_limit": 0, "batch_size": 8, "threads": 1, "out": str(folder)}
    (folder / "config.json").write_text(json.dumps({**base, **config}))
    return folder


RESUME_CASES = {  # a run folder whose config.json or state.pt is from another version, or broken
    "config.json from another version": ("config", ["config.json", "removed_option"]),
    "config.json malformed": ("config_text", ["config.json", "YAML"]),
    "state.pt of a future format": ("future_state", ["state.pt", "format 99"]),
    "state.pt not a torch file": ("text_state", ["state.pt", "not a readable training state"]),
}


@pytest.mark.parametrize("case", RESUME_CASES, ids=list(RESUME_CASES))
def test_resume_of_another_version_or_broken_state(case, tmp_path, capsys):
    kind, needles = RESUME_CASES[case]
    run_dir = make_run(tmp_path / "run", **({"removed_option": 1} if kind == "config" else {}))
    if kind == "config_text":
        (run_dir / "config.json").write_text("{not json")
    if kind == "future_state":
        torch.save({"format": 99, "model": {}}, run_dir / "state.pt")
    if kind == "text_state":
        (run_dir / "state.pt").write_text("state\n")
    code, err = run(["train", "--resume", run_dir], capsys)
    assert code == 2, err
    assert_one_error(err, *needles)


# --------------------------------------------------------------------------- predict
PREDICT_CASES = {
    "no inputs": ([], 2, ["no input files"]),
    "checkpoint missing": (["--checkpoint", "{dir}/model.pt", "{mol}"], 2, ["model.pt", "no such"]),
    "checkpoint a folder": (["--checkpoint", "{dir}", "{mol}"], 2, ["folder", "not a checkpoint"]),
    "checkpoint a text file": (["--checkpoint", "{text_pt}", "{mol}"], 2, ["text.pt", "torch.save"]),
    "checkpoint a plain state_dict": (["--checkpoint", "{state_dict}", "{mol}"], 2, ["state_dict.pt", "config"]),
    "checkpoint of a future format": (["--checkpoint", "{future}", "{mol}"], 2, ["future.pt", "version 99"]),
    "checkpoint from another version": (
        ["--checkpoint", "{newer_config}", "{mol}"],
        2,
        ["newer_config.pt", "option_from_the_future"],
    ),
    "output in a missing folder": (["--output", "{dir}/nowhere/out.csv", "{mol}"], 2, ["--output", "nowhere"]),
    "output a folder": (["--output", "{dir}", "{mol}"], 2, ["--output", "folder"]),
    "batch size 0": (["--batch-size", "0", "{mol}"], 2, ["--batch-size"]),
    "device unknown": (["--device", "tpu", "{mol}"], 2, ["--device", "tpu"]),
    "uncertainty frames of a plain model": (["--uncertainty", "frames", "{mol}"], 2, ["--uncertainty frames"]),
    "input missing": (["{dir}/nope.xyz"], 1, ["nope.xyz", "no such"]),
    "input not a structure": (["{file}"], 1, ["plain.txt"]),
}


@pytest.mark.parametrize("case", PREDICT_CASES, ids=list(PREDICT_CASES))
def test_predict_bad_input(case, files, capsys):
    argv, status, needles = PREDICT_CASES[case]
    code, err = run(["predict", *fill(argv, files)], capsys)
    assert code == status, err
    assert_one_error(err, *needles)


# --------------------------------------------------------------------------- expressivity
EXPRESSIVITY_CASES = {
    "unknown backbone": (["--backbones", "schnot", "--pairs", "2-chain"], ["schnot"]),
    "unknown pair": (["--backbones", "schnet", "--pairs", "9-chain"], ["9-chain"]),
    "max layers 0": (["--max-layers", "0"], ["--max-layers"]),
    "seeds 0": (["--seeds", "0"], ["--seeds"]),
    "k 1": (["--train", "--k", "1"], ["--k"]),
    "epochs 0": (["--train", "--epochs", "0"], ["--epochs"]),
    "graph cutoff negative": (["--pair", "{mol}", "{mol}", "--graph-cutoff", "-1"], ["--graph-cutoff"]),
    "pair file missing": (["--pair", "{dir}/a.pt", "{mol}"], ["a.pt", "no such"]),
    "pair not a torch file": (["--pair", "{text_pt}", "{mol}"], ["text.pt"]),
    "pair not a graph": (["--pair", "{state_dict}", "{state_dict}"], ["state_dict.pt"]),
    "pair structures without cutoff": (["--pair", "{mol}", "{mol}"], ["water.xyz", "--graph-cutoff"]),
    "out under a file": (["--pairs", "2-chain", "--out", "{file}/report"], ["--out", "plain.txt"]),
}


@pytest.mark.parametrize("case", EXPRESSIVITY_CASES, ids=list(EXPRESSIVITY_CASES))
def test_expressivity_bad_input(case, files, capsys):
    argv, needles = EXPRESSIVITY_CASES[case]
    out = ["--out", files["dir"] / "report"] if "--out" not in argv else []
    code, err = run(["expressivity", "--backbones", "schnet", *fill(argv, files), *out], capsys)
    assert code == 2, err
    assert_one_error(err, *needles)


# --------------------------------------------------------------------------- interrupts
def signal_after(monkeypatch, steps: int, signals) -> None:
    """Make training send itself ``signals`` right after optimizer step number ``steps``."""
    from geognn.train.loop import _Run

    step = _Run._step

    def patched(self, group):
        loss = step(self, group)
        if self.step == steps:
            for s in signals:
                os.kill(os.getpid(), s)
        return loss

    monkeypatch.setattr(_Run, "_step", patched)


def test_sigterm_saves_the_state_of_that_step_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"

    def unhandled(signum, frame):  # what SIGTERM would meet if training did not handle it (instead of dying)
        raise RuntimeError("SIGTERM not handled by the training loop")

    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        signal_after(monkeypatch, 2, [signal.SIGTERM])
        code, err = run(["train", *QUICK, "--limit", "60", "--epochs", "3", "--out", out], capsys)
        assert signal.getsignal(signal.SIGTERM) is unhandled  # the loop restored the handler it found
    finally:
        signal.signal(signal.SIGTERM, before)
    assert code == 128 + signal.SIGTERM
    assert f"geognn train --resume {out}" in err and "Traceback" not in err
    state = torch.load(out / "state.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 2)  # saved after step 2, mid-epoch 1 (6 steps per epoch)
    assert not (out / "result.json").exists()


def test_second_signal_stops_at_once(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    signal_after(monkeypatch, 1, [signal.SIGINT, signal.SIGINT])
    code, err = run(["train", *QUICK, "--out", out], capsys)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert "SIGINT: stopping after this step" in err  # the first one was heard and would have waited
    assert not (out / "state.pt").exists()  # stopped before any save: nothing claims otherwise
    assert "no state.pt yet" in err


def test_ctrl_c_in_predict_is_one_line(files, monkeypatch, capsys):
    from geognn import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "predict_structures", interrupted)
    code, err = run(["predict", files["mol"]], capsys)
    assert code == 130 and "Traceback" not in err and err.strip().endswith("interrupted")


def test_ctrl_c_during_training_then_resume_continues_from_the_saved_step(tmp_path, capsys):
    """A real SIGINT to a ``geognn train`` process after its first epoch is logged."""
    out = tmp_path / "run"
    args = [
        "--limit",
        "200",
        "--batch-size",
        "4",
        "--epochs",
        "3",
        "--time-limit",
        "0",
        "--threads",
        "1",
        "--seed",
        "3",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "geognn.cli", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    metrics, deadline = out / "metrics.csv", time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:  # header + epoch 1
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, f"the run ended before the signal (status {proc.returncode}): {err[-2000:]}"
    assert "Traceback" not in err
    assert f"resume with: geognn train --resume {out}" in err
    saved = torch.load(out / "state.pt", weights_only=True)
    # 160 training structures, 40 steps per epoch: stopped in epoch 2 (or 3 on a slow machine), or
    # right after an epoch's validation
    assert saved["epoch"] in (1, 2) and 40 * saved["epoch"] <= saved["step"] < 120

    code = main(["train", "--resume", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"step {saved['step']}," in printed  # "resuming ... at epoch 2, batch B (step S, ...)"
    final = torch.load(out / "state.pt", weights_only=True)
    assert (final["epoch"], final["step"]) == (3, 3 * 40)
    rows = list(csv.DictReader(metrics.open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and [int(r["step"]) for r in rows] == [40, 80, 120]
