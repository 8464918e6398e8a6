"""geognn doctor: versions, code paths, and a forward + backward of every backbone.

The whole doctor run (all nine backbones at geognn.backbones.SMALL_SETTINGS) is done once per module, ~5 s of
CPU on a 2-core machine; the other tests check one or two backbones. Planted
failures (a backbone that raises, one whose energy depends on absolute positions, one with NaN
output) must each give exit status 1 and name the backbone.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import io
import json
import platform

import pytest
import torch

from geognn import doctor
from geognn.backbones import BACKBONES, SchNet
from geognn.cli import main


@pytest.fixture(scope="module")
def report():
    return doctor.run_doctor(device="cpu")


def test_doctor_passes_here_and_names_everything(report):
    assert report["ok"] is True
    text = doctor.format_report(report)
    lines = text.splitlines()
    assert len(lines) <= 40, "short enough to paste into a bug report"
    for name in BACKBONES:
        assert any(line.split()[:2] == [name, "ok"] for line in lines), name
    # versions as the installed distributions report them
    assert f"  python          {platform.python_version()}" in lines
    for shown, dist in [
        ("torch", "torch"),
        ("torch-geometric", "torch_geometric"),
        ("e3nn", "e3nn"),
        ("ase", "ase"),
        ("pymatgen", "pymatgen"),
        ("vesin", "vesin"),
        ("numpy", "numpy"),
    ]:
        assert f"  {shown:<16}{importlib.metadata.version(dist)}" in lines, shown
    assert lines[-1] == f"all {len(BACKBONES)} backbones pass"


def test_doctor_command_exit_0(capsys):
    assert main(["doctor", "--device", "cpu", "--backbones", "schnet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "geognn doctor" and lines[-1] == "all 1 backbones pass"
    assert any(line.split()[:2] == ["schnet", "ok"] for line in lines)


def test_report_paths_match_this_machine(report):
    from geognn.nn.scatter import torch_scatter_enabled

    f = report["features"]
    assert f["scatter"].startswith("torch-scatter" if torch_scatter_enabled() else "pure torch")
    assert f["cuda"].startswith("yes" if torch.cuda.is_available() else "no")
    try:
        importlib.import_module("torch.utils.tensorboard")
        tensorboard = True
    except ImportError:
        tensorboard = False
    assert f["tensorboard"].startswith("yes" if tensorboard else "no")
    assert report["neighbours"]["ok"], report["neighbours"]
    assert [b["name"] for b in report["backbones"]] == list(BACKBONES)
    assert all(b["ok"] and b["seconds"] > 0 for b in report["backbones"]), report["backbones"]


def test_missing_package_says_not_installed(monkeypatch):
    real = importlib.metadata.version

    def version(dist):
        if dist == "vesin":
            raise importlib.metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert doctor.versions()["vesin"] == "not installed"


def test_json_output(capsys):
    assert main(["doctor", "--json", "--device", "cpu", "--backbones", "schnet,egnn"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] is True and [b["name"] for b in payload["backbones"]] == ["schnet", "egnn"]
    assert payload["versions"]["torch"] == importlib.metadata.version("torch")


class _Raises(SchNet):
    def forward(self, batch):
        raise RuntimeError("planted failure")


class _Absolute(SchNet):
    """Energy depends on where the molecule is (breaks translation invariance): sum F != 0."""

    def forward(self, batch):
        out = super().forward(batch)
        out["node_features"] = out["node_features"] + batch["pos"][:, :1]
        return out


class _NaN(SchNet):
    def forward(self, batch):
        out = super().forward(batch)
        out["node_features"] = out["node_features"] * float("nan")
        return out


@pytest.mark.parametrize(
    "broken, message",
    [(_Raises, "RuntimeError: planted failure"), (_Absolute, "molecule forces sum to"), (_NaN, "energy not finite")],
)
def test_planted_failure_gives_exit_1_and_names_the_backbone(monkeypatch, broken, message):
    monkeypatch.setitem(BACKBONES, "egnn", broken)
    stream = io.StringIO()
    assert doctor.main(device="cpu", backbones=["schnet", "egnn"], stream=stream) == 1
    text = stream.getvalue()
    egnn = [line for line in text.splitlines() if line.split()[:2] == ["egnn", "FAIL"]]
    assert len(egnn) == 1 and message in egnn[0], text
    assert any(line.split()[:2] == ["schnet", "ok"] for line in text.splitlines())
    assert text.splitlines()[-1] == "FAILED: backbones egnn"


def test_broken_neighbour_list_fails(monkeypatch):
    import geognn.graph.neighbours as nb

    real = nb.neighbour_list
    monkeypatch.setattr(nb, "neighbour_list", lambda *a, **k: tuple(x[1:] for x in real(*a, **k)))  # drops a pair
    result = doctor.check_neighbours()
    assert not result["ok"] and "differ" in result["detail"]
