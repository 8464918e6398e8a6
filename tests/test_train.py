"""The trainer: the default QM9 job, configuration, losses, schedule, EMA, accumulation, early
stopping, bad data, every dataset kind from the command line. Kill-and-resume and torchrun have
their own files (test_train_resume.py, test_train_ddp.py)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

import geognn
from geognn.cli import main
from geognn.train.config import DEFAULT_QM9, TrainConfig
from geognn.train.data import StructureList
from geognn.train.loop import split_indices, train
from geognn.train.losses import LossSpec, combine, compute_loss, loss_counts, loss_sums
from geognn.train.optim import EMA, LRSchedule, auto_warmup


def test_shipped_subset_is_present_and_attributed():
    assert DEFAULT_QM9.is_file()
    readme = (DEFAULT_QM9.parent / "README.md").read_text()
    assert "Ramakrishnan" in readme and "qm9pack" in readme


def test_training_beats_composition_baseline(tmp_path):
    """A short run (1,500 molecules, 300 steps of 16) already beats the linear-on-composition baseline 2x."""
    config = TrainConfig(limit=1500, time_limit=0, epochs=4, batch_size=16, out=str(tmp_path / "run"), threads=2)
    result = train(config, progress=False)
    assert result.test_mae < 0.5 * result.baseline_test_mae, result.summary("U0")
    assert 0.2 < result.baseline_test_mae < 2.0  # eV: the known scale of this baseline on QM9 U0
    model = geognn.load_model(result.model_path)
    assert model.metadata["periodic"] is False and 6 in model.metadata["elements"]


def test_summary_names_the_baseline_it_compares_with(tmp_path):
    """Without reference energies (fit_reference off, the OC20 IS2RE recipe) the baseline predicts
    0 and the summary says so instead of claiming a composition fit."""
    config = TrainConfig(limit=60, time_limit=0, epochs=1, batch_size=16, out=str(tmp_path / "run"), threads=1)
    fitted = train(config, progress=False)
    assert "linear fit on composition" in fitted.summary("U0")
    unfitted = train(replace(config, fit_reference=False, out=str(tmp_path / "zero")), progress=False)
    assert "no reference energies (predicting 0)" in unfitted.summary("U0")
    assert "composition" not in unfitted.summary("U0")
    assert unfitted.baseline_test_mae > 100 * fitted.baseline_test_mae  # |U0| ~ 1e4 eV vs a fit within ~1 eV


def test_run_folder_and_resume(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--limit", "120", "--epochs", "2", "--time-limit", "0", "--out", str(out)]) == 0
    for name in ("config.json", "split.json", "metrics.csv", "state.pt", "model.pt", "result.json"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["epoch"] == 2
    # resume continues at epoch 3 with the same split and config
    assert main(["train", "--resume", str(out), "--epochs", "4"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert json.loads((out / "config.json").read_text())["epochs"] == 4
    assert torch.load(out / "state.pt", weights_only=True)["epoch"] == 4


def test_split_is_seeded_and_disjoint():
    a = split_indices(100, 0.1, 0.2, seed=3)
    assert a == split_indices(100, 0.1, 0.2, seed=3)
    assert a != split_indices(100, 0.1, 0.2, seed=4)
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(100))
    assert (len(a["val"]), len(a["test"])) == (10, 20)


def test_train_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--target", "nope", "--out", str(tmp_path / "x"), "--limit", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown QM9 target 'nope'") and err.count("\n") == 1
    assert main(["train", "--resume", str(tmp_path / "missing")]) == 2
    assert "not a geognn run folder" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    assert main(["train", "--resume", str(tmp_path / "run"), "--out", str(tmp_path / "other")]) == 2
    assert "drop --out/--config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "imagenet"])


# --------------------------------------------------------------------------- configuration

TINY = {"hidden_channels": 8, "num_filters": 8, "num_layers": 1, "num_gaussians": 8}


def test_yaml_config_then_options_then_set(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "limit: 40\nlr: 0.01\nbatch_size: 8\nepochs: 1\ntime_limit: 0\nseed: 3\n"
        "backbone_kwargs: {hidden_channels: 8, num_filters: 8, num_layers: 1, num_gaussians: 8}\n"
    )
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--config",
                str(cfg),
                "--lr",
                "0.002",
                "--set",
                "batch_size=4",
                "--set",
                "ema-decay=0.9",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["lr"] == 0.002  # option beats file
    assert resolved["batch_size"] == 4 and resolved["ema_decay"] == 0.9  # --set beats file
    assert resolved["seed"] == 3 and resolved["limit"] == 40  # from the file
    assert resolved["weight_decay"] == 0.0  # default
    assert TrainConfig.from_file(out / "config.json") == TrainConfig(**resolved)  # config.json reruns the run
    assert "test MAE of U0" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "learning_rate=0.1"], "unknown config keys ['learning_rate']; known: ["),
        (["--set", "scheduler=linear"], "scheduler='linear': choose one of ['plateau', 'cosine', 'constant']"),
        (["--set", "batch_size=0"], "batch_size=0 must be > 0"),
        (["--set", "nothing"], "expected KEY=VALUE"),
    ],
)
def test_bad_config_is_one_line_error(tmp_path, capsys, args, message):
    assert main(["train", *args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_unknown_key_in_yaml_file(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 2\nbatchsize: 8\n")
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: unknown config keys ['batchsize']" in err and "'batch_size'" in err
    assert main(["train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err


# --------------------------------------------------------------------------- losses
def _batch_with_labels():
    """Two structures: H2 (atom 0 fixed) and a 1-atom structure, with labels and fake predictions."""
    from geognn.graph.build import collate

    g1 = geognn.build_graph(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.8]]), 2.0)
    g2 = geognn.build_graph(Atoms("He", positions=[[0, 0, 0]], cell=np.eye(3) * 3, pbc=True), 2.0)
    g1.energy, g2.energy = torch.tensor([1.0]), torch.tensor([-2.0])
    g1.forces, g2.forces = torch.zeros(2, 3), torch.zeros(1, 3)
    g1.fixed, g2.fixed = torch.tensor([True, False]), torch.tensor([False])
    g1.stress = torch.full((1, 3, 3), float("nan"))  # no label
    g2.stress = torch.zeros(1, 3, 3)
    batch = collate([g1, g2])
    out = {
        "energy": torch.tensor([3.0, -1.0]),
        "forces": torch.tensor([[9.0, 9, 9], [1, 0, 0], [0, 2, 0]]),  # atom 0 is fixed: ignored
        "stress": torch.full((2, 3, 3), 0.5),
    }
    return batch, out


def test_loss_by_hand_fixed_atoms_excluded():
    batch, out = _batch_with_labels()
    spec = LossSpec(energy_weight=2.0, forces_weight=10.0, stress_weight=3.0, per_atom=True, kind="mse", scale=2.0)
    # energy per atom / scale: (3-1)/2/2 = 0.5, (-1+2)/1/2 = 0.5 -> mean of squares 0.25
    # forces of free atoms / scale: components (0.5,0,0), (0,1,0) -> mean over 6 of squares = 1.25/6
    # stress of the labelled structure only: 0.5/2 = 0.25 on 9 components -> 0.0625
    expected = 2.0 * 0.25 + 10.0 * 1.25 / 6 + 3.0 * 0.0625
    assert float(compute_loss(out, batch, spec)) == pytest.approx(expected, rel=1e-6)
    assert loss_counts(batch, spec) == {"energy": 2.0, "forces": 6.0, "stress": 9.0}
    per_structure = LossSpec(energy_weight=1.0, per_atom=False, kind="mae", scale=1.0)
    assert float(compute_loss(out, batch, per_structure)) == pytest.approx((2.0 + 1.0) / 2)


def test_accumulated_loss_normalises_by_the_whole_step():
    batch, out = _batch_with_labels()
    spec = LossSpec(energy_weight=1.0, forces_weight=1.0)
    sums, counts = loss_sums(out, batch, spec), loss_counts(batch, spec)
    doubled = combine({k: 2 * v for k, v in sums.items()}, {k: 2 * v for k, v in counts.items()}, spec)
    assert float(doubled) == pytest.approx(float(compute_loss(out, batch, spec)))


# --------------------------------------------------------------------------- schedule, EMA
def test_warmup_cosine_and_plateau_values():
    s = LRSchedule(1e-3, "cosine", warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert s.lr(0) == pytest.approx(1e-4) and s.lr(4) == pytest.approx(5e-4) and s.lr(9) == pytest.approx(1e-3)
    assert s.lr(10) == pytest.approx(1e-3)
    assert s.lr(60) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half way: cos(pi/2) = 0
    assert s.lr(110) == pytest.approx(1e-4) and s.lr(500) == pytest.approx(1e-4)
    p = LRSchedule(1.0, "plateau", patience=1, factor=0.5)
    for val in (3.0, 2.0, 2.5, 2.4):  # two epochs without a new best > patience 1: halve
        p.epoch_end(val)
    assert p.lr(100) == 0.5 and p.bad_epochs == 0
    p.load_state_dict(LRSchedule(1.0).state_dict())
    assert p.lr(0) == 1.0


def test_ema_update_rule():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.75)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(4.0)
    ema.update(model)
    torch.testing.assert_close(ema.model.weight, before + 1.0)  # 0.75 * w + 0.25 * (w + 4)


# --------------------------------------------------------------------------- runs on tiny data
def emt_structures(n: int, seed: int = 0, fixed: bool = True):
    """Rattled Cu crystals and clusters of different sizes with EMT energy, forces, stress."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=bool(k % 2)).repeat((1, 1, 1 + k % 2))
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        if fixed and len(atoms) > 2:
            atoms.set_constraint(FixAtoms(indices=[0]))
        atoms.calc = EMT()
        energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)
        atoms.calc = None
        atoms.info.update(energy=energy, stress=stress, id=f"cu-{k}")
        atoms.arrays["forces"] = forces
        out.append(atoms)
    return StructureList(out, {"energy": "eV"})


def tiny_config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        dataset="extxyz",
        data_root=str(tmp_path),
        backbone_kwargs=TINY,
        cutoff=3.0,
        batch_size=4,
        epochs=2,
        time_limit=0,
        out=str(tmp_path / "run"),
        val_fraction=0.2,
        test_fraction=0.2,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_forces_and_stress_run_writes_all_metrics(tmp_path):
    data = emt_structures(10)
    result = train(tiny_config(tmp_path, forces_weight=10.0, stress_weight=1.0), progress=False, dataset=data)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert len(rows) == 2
    for col in (
        "val_energy_mae_meV",
        "val_energy_rmse_meV",
        "val_energy_ewt",
        "val_forces_mae_meV_A",
        "val_forces_rmse_meV_A",
        "val_forces_cos",
        "val_efwt",
        "val_stress_mae_meV_A3",
    ):
        assert np.isfinite(float(rows[-1][col])), col
    assert -1 <= float(rows[-1]["val_forces_cos"]) <= 1
    assert set(result.test_metrics) >= {"forces_mae_meV_A", "efwt", "stress_mae_meV_A3"}
    model = geognn.load_model(result.model_path)
    assert model.metadata["periodic"] is True and model.compute_stress


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """One step of 4 structures == one step of 2 x 2 accumulated (forces: atom counts differ per batch)."""
    data = emt_structures(6)  # 4 train, 1 val, 1 test
    common = dict(epochs=1, val_fraction=1 / 6, test_fraction=1 / 6, forces_weight=5.0, grad_clip=0, seed=1)
    train(tiny_config(tmp_path, out=str(tmp_path / "big"), batch_size=4, **common), progress=False, dataset=data)
    train(
        tiny_config(tmp_path, out=str(tmp_path / "acc"), batch_size=2, accumulate=2, **common),
        progress=False,
        dataset=data,
    )
    big = torch.load(tmp_path / "big" / "state.pt", weights_only=True, map_location="cpu")
    acc = torch.load(tmp_path / "acc" / "state.pt", weights_only=True, map_location="cpu")
    assert big["step"] == acc["step"] == 1
    start = geognn.build_model("schnet", cutoff=3.0, **TINY).state_dict()
    moved = 0
    for name, value in big["model"].items():
        torch.testing.assert_close(acc["model"][name], value, rtol=1e-5, atol=1e-6)
        moved += int(name in start and value.shape == start[name].shape and not torch.equal(value, start[name]))
    assert moved > 0


def test_ema_weights_are_validated_and_saved(tmp_path):
    data = emt_structures(10)
    train(tiny_config(tmp_path, epochs=1, ema_decay=0.5, lr=0.01), progress=False, dataset=data)
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True, map_location="cpu")
    saved = geognn.load_model(tmp_path / "run" / "model.pt")
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(value, state["ema"][name])
    assert any(not torch.equal(state["ema"][k], v) for k, v in state["model"].items())
    # the logged validation MAE is the EMA model's
    from geognn.train.data import GraphDataset
    from geognn.train.distributed import Dist
    from geognn.train.loop import evaluate

    config = TrainConfig.from_file(tmp_path / "run" / "config.json")
    val = json.loads((tmp_path / "run" / "split.json").read_text())["val"]
    metrics = evaluate(saved, GraphDataset(data, config), val, config, Dist())
    row = next(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert float(row["val_energy_mae_meV"]) == pytest.approx(metrics.mae * 1000, rel=1e-4)


def test_early_stopping(tmp_path):
    data = emt_structures(10)
    train(
        tiny_config(tmp_path, epochs=20, lr=1e-12, early_stopping=2, scheduler="constant"), progress=False, dataset=data
    )
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert len(rows) == 3  # best at epoch 1, no improvement in epochs 2 and 3


def test_cosine_schedule_is_applied_per_step(tmp_path):
    data = emt_structures(10)  # 6 train structures, batch 2: 3 steps per epoch
    train(
        tiny_config(tmp_path, epochs=2, batch_size=2, scheduler="cosine", warmup_steps=2, min_lr_ratio=0.1),
        progress=False,
        dataset=data,
    )
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    schedule = LRSchedule(1e-3, "cosine", warmup_steps=2, total_steps=6, min_lr_ratio=0.1)
    assert [int(r["step"]) for r in rows] == [3, 6]
    assert [float(r["lr"]) for r in rows] == pytest.approx([schedule.lr(2), schedule.lr(5)], rel=1e-5)


def test_time_budget_cosine_values():
    """Time budget T = 100 s, 10 warmup steps, 1000 steps in the epoch budget, lr 1e-3 -> 1e-4."""
    s = LRSchedule(1e-3, "cosine", warmup_steps=10, total_steps=1010, min_lr_ratio=0.1, time_budget=100.0)
    assert s.lr(0, 0.0) == pytest.approx(1e-4)  # warmup 1/10, no progress yet
    assert s.lr(4, 0.0) == pytest.approx(5e-4)
    assert s.lr(50, 50.0) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half the time: cos(pi/2) = 0
    # a quarter of the time: 0.1 + 0.9 * (1 + cos(pi/4)) / 2 = 0.1 + 0.9 * 0.853553 = 0.868198
    assert s.lr(60, 25.0) == pytest.approx(0.868198e-3, rel=1e-6)
    # the epochs run out faster than the time (505 steps = half of them): the epoch progress counts
    assert s.lr(510, 25.0) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert s.lr(60, 100.0) == pytest.approx(1e-4) and s.lr(60, 1e6) == pytest.approx(1e-4)  # budget spent
    with pytest.raises(ValueError, match="elapsed"):
        s.lr(60)
    s.apply(torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0), 60, 25.0)
    assert s.state_dict()["progress"] == pytest.approx(0.25) and s.state_dict()["elapsed"] == 25.0
    t = LRSchedule(1e-3, "cosine", time_budget=100.0)
    t.load_state_dict(s.state_dict())
    assert t.progress == pytest.approx(0.25)


def test_automatic_warmup():
    assert auto_warmup(None, 100_000) == 100 and auto_warmup(None, 60) == 3  # at most 1/20 of the epochs
    assert auto_warmup(7, 60) == 7 and auto_warmup(0, 100_000) == 0
    config = TrainConfig()
    assert config.loss == "mae" and config.scheduler == "cosine" and config.warmup_steps is None
    with pytest.raises(ValueError, match="warmup_steps=-1"):
        TrainConfig(warmup_steps=-1).validate()


class FakeClock:
    """``time`` of the training loop: perf_counter() advances 0.25 s per call."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 0.25
        return self.now


def _record_schedule(monkeypatch) -> list:
    calls = []
    apply = LRSchedule.apply

    def spy(self, optimizer, step, elapsed=None):
        lr = apply(self, optimizer, step, elapsed)
        calls.append((step, elapsed, lr))
        return lr

    monkeypatch.setattr(LRSchedule, "apply", spy)
    return calls


def _cosine(lr, ratio, p):
    return lr * (ratio + (1 - ratio) * 0.5 * (1 + np.cos(np.pi * min(p, 1.0))))


def test_schedule_anneals_over_the_epochs_without_a_time_limit(tmp_path, monkeypatch):
    calls = _record_schedule(monkeypatch)
    data = emt_structures(10)  # 6 train structures, batch 2: 3 steps per epoch, 9 in all
    train(
        tiny_config(tmp_path, epochs=3, batch_size=2, warmup_steps=0, min_lr_ratio=0.1, time_limit=0),
        progress=False,
        dataset=data,
    )
    assert [c[0] for c in calls] == list(range(9)) and all(c[1] is None for c in calls)  # no clock read
    assert [c[2] for c in calls] == pytest.approx([_cosine(1e-3, 0.1, s / 9) for s in range(9)], rel=1e-9)


def test_schedule_anneals_over_the_time_limit_and_resumes_from_the_stored_time(tmp_path, monkeypatch):
    from geognn.train import loop

    calls = _record_schedule(monkeypatch)
    monkeypatch.setattr(loop, "time", FakeClock())
    data = emt_structures(10)  # 3 steps per epoch; 1000 epochs would be 3000 steps: the 6 s limit ends it
    config = tiny_config(tmp_path, epochs=1000, batch_size=2, warmup_steps=0, min_lr_ratio=0.1, time_limit=6.0)
    train(config, progress=False, dataset=data)
    steps, elapsed, lrs = zip(*calls)
    assert all(0 < a < b < 6.0 for a, b in zip(elapsed, elapsed[1:]))
    assert lrs == pytest.approx([_cosine(1e-3, 0.1, t / 6.0) for t in elapsed], rel=1e-9)
    assert elapsed[-1] > 5.0 and lrs[-1] < 0.12e-3  # annealed to ~min_lr_ratio when the time is up
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["schedule"]["elapsed"] == pytest.approx(elapsed[-1])
    assert state["schedule"]["progress"] == pytest.approx(elapsed[-1] / 6.0)
    # resumed with a longer limit: the anneal goes on from the stored training time, not from 0
    calls.clear()
    longer = tiny_config(tmp_path, epochs=1000, batch_size=2, warmup_steps=0, min_lr_ratio=0.1, time_limit=9.0)
    train(longer, resume=True, progress=False, dataset=data)
    assert calls and calls[0][0] == steps[-1] + 1 and calls[0][1] > state["elapsed"] >= elapsed[-1]
    assert [c[2] for c in calls] == pytest.approx([_cosine(1e-3, 0.1, c[1] / 9.0) for c in calls], rel=1e-9)


class FlakyStructures(StructureList):
    """Items 3 and 7 cannot be read (as an LMDB record that fails to decode)."""

    def __getitem__(self, i):
        if i in (3, 7):
            raise geognn.StructureError(f"cu-{i}", "corrupt record")
        return super().__getitem__(i)


def test_bad_structures_skipped_and_logged_or_stop_the_run(tmp_path, capsys):
    data = FlakyStructures(emt_structures(12).structures)
    train(tiny_config(tmp_path, on_error="skip", cache_graphs=False), progress=False, dataset=data)
    skipped = list(csv.DictReader((tmp_path / "run" / "skipped.csv").open()))
    assert {r["id"] for r in skipped} <= {"cu-3", "cu-7"} and skipped
    assert all(r["reason"] == "corrupt record" for r in skipped)
    with pytest.raises(geognn.StructureError, match=r"cu-[37]: corrupt record \(state.pt holds the last good step"):
        train(
            tiny_config(tmp_path, out=str(tmp_path / "r2"), cache_graphs=False, batch_size=2, epochs=1),
            progress=False,
            dataset=data,
        )
    assert (tmp_path / "r2" / "state.pt").is_file()


def test_tensorboard_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    data = emt_structures(10)
    train(tiny_config(tmp_path, epochs=1), progress=False, dataset=data)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


# --------------------------------------------------------------------------- every dataset kind from the CLI
def _write_dataset(kind: str, root: Path) -> Path:
    """Tiny data of ``kind`` in ``root`` from EMT-labelled Cu structures; returns --data-root."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = emt_structures(10).structures
    for a in frames:
        a.set_tags(np.where(np.arange(len(a)) == 0, 0, 1))
    if kind == "extxyz":
        for a in frames:
            a.calc = SinglePointCalculator(
                a,
                energy=a.info.pop("energy"),
                forces=a.arrays.pop("forces"),
                stress=a.info.pop("stress")[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]],
            )
        write(root / "data.extxyz", frames)
        return root / "data.extxyz"
    if kind == "cif-folder":
        rows = []
        for k, a in enumerate(frames):
            write(root / f"cu{k}.cif", a)
            rows.append(f"cu{k},{a.info['energy'] / len(a):.6f}")
        (root / "id_prop.csv").write_text("\n".join(rows) + "\n")
        return root
    from geognn.datasets.oc20 import write_lmdb

    task = kind.split("-")[1]
    write_lmdb(root / "data.lmdb", frames, task=task, progress=False)
    return root / "data.lmdb"


@pytest.mark.parametrize(
    "kind, extra, column",
    [
        ("extxyz", ["--forces-weight", "10", "--stress-weight", "1"], "val_stress_mae_meV_A3"),
        ("cif-folder", ["--set", "energy_normalisation=per_structure"], "val_energy_mae_meV"),
        (
            "oc20-is2re",
            ["--set", "energy_normalisation=per_structure", "--set", "fit_reference=false"],
            "val_energy_ewt",
        ),
        ("oc20-s2ef", ["--forces-weight", "10", "--num-workers", "1"], "val_efwt"),
    ],
)
def test_train_each_dataset_kind_from_the_command_line(tmp_path, kind, extra, column, capsys):
    root = _write_dataset(kind, tmp_path)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--dataset",
            kind,
            "--data-root",
            str(root),
            "--epochs",
            "2",
            "--time-limit",
            "0",
            "--cutoff",
            "3",
            "--batch-size",
            "4",
            "--out",
            str(out),
            *extra,
            "--set",
            "backbone_kwargs={hidden_channels: 8, num_filters: 8, num_layers: 1, num_gaussians: 8}",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "test MAE of energy" in captured.out
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 2 and np.isfinite(float(rows[-1][column]))
    assert json.loads((out / "config.json").read_text())["dataset"] == kind


def test_shipped_example_configs_are_valid():
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        config = TrainConfig.from_file(path).validate()
        assert config.time_limit == 0 and config.backbone in geognn.BACKBONES, path
        geognn.build_model(config.backbone, cutoff=config.cutoff, **config.resolved_backbone_kwargs())


def test_frame_averaging_reaches_the_model(tmp_path):
    result = train(
        tiny_config(tmp_path, epochs=1, frame_averaging="det", val_fraction=0.25, test_fraction=0.25),
        progress=False,
        dataset=emt_structures(4),
    )
    assert geognn.load_model(result.model_path).frame_averaging is not None
    assert TrainConfig().frame_averaging is None  # default: the plain backbone


def test_separate_validation_source(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    train_file, val_file = _write_dataset("extxyz", tmp_path / "a"), _write_dataset("extxyz", tmp_path / "b")
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                "extxyz",
                "--data-root",
                str(train_file),
                "--val-data-root",
                str(val_file),
                "--limit",
                "6",
                "--epochs",
                "1",
                "--time-limit",
                "0",
                "--cutoff",
                "3",
                "--out",
                str(out),
                "--set",
                "backbone_kwargs={hidden_channels: 8, num_filters: 8, num_layers: 1, num_gaussians: 8}",
            ]
        )
        == 0
    )
    split = json.loads((out / "split.json").read_text())
    assert {k: split[k] for k in ("train", "val", "test")} == {
        "train": list(range(6)),
        "val": list(range(6, 12)),
        "test": [],
    }
    result = json.loads((out / "result.json").read_text())
    assert result["test_mae_eV"] == pytest.approx(result["val_mae_eV"], rel=1e-5)  # no test set: val reported


def test_elements_only_in_validation_or_test_are_named():
    """A fluorine molecule that lands in validation with no fluorine in training (D's finding: a
    136 eV validation error at --limit 600 on QM9) is named in one warning; nothing is said when
    training covers every element, or when graphs are read lazily (no cache to look at)."""
    from types import SimpleNamespace

    from geognn.train.loop import UnseenElementWarning, unseen_elements, warn_unseen_elements

    def graph(zs):
        return {"z": torch.tensor(zs)}  # what unseen_elements reads of a cached graph

    graphs = SimpleNamespace(graphs=[graph([6, 1, 1]), graph([8, 1, 1]), graph([9, 6, 1]), graph([9, 9])])
    split = {"train": [0, 1], "val": [2], "test": [3]}
    unseen = unseen_elements(graphs, split)
    assert unseen == {"val": {9: 1}, "test": {9: 1}}
    with pytest.warns(UnseenElementWarning, match=r"val: F in 1 structure; test: F in 1 structure"):
        warn_unseen_elements(unseen)
    assert unseen_elements(graphs, {"train": [0, 1, 2], "val": [3], "test": []}) == {}
    assert unseen_elements(SimpleNamespace(graphs=None), split) == {}
