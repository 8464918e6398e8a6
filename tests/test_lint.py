"""ruff lint and format checks, configured in pyproject.toml, run in CI with the ruff of the test extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "command", [["check", "--no-cache"], ["format", "--check", "--no-cache"]], ids=["lint", "format"]
)
def test_ruff(command):
    result = subprocess.run([sys.executable, "-m", "ruff", *command, "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"ruff {' '.join(command)} found problems:\n{result.stdout}{result.stderr}"


def test_ruff_catches_a_planted_unused_import(tmp_path):
    """The check can fail: the same configuration flags an unused import (F401)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n")
    config = ROOT / "pyproject.toml"
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(config), str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "F401" in result.stdout
