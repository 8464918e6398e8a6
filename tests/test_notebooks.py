"""Every notebook in notebooks/ runs top to bottom (its code cells, in order, in one namespace).

Executed with plain ``exec`` rather than a Jupyter kernel, so the test needs no extra packages;
notebooks must therefore avoid IPython magics. Each runs in a fresh temporary working directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ should hold at least the quickstart"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")  # figures render off-screen
    monkeypatch.chdir(tmp_path)
    cells = json.loads(path.read_text())["cells"]
    namespace: dict = {"__name__": "__main__"}
    for number, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        assert not any(line.lstrip().startswith(("%", "!")) for line in source.splitlines()), \
            f"{path.name} cell {number}: IPython magics cannot run here"
        exec(compile(source, f"{path.name}[cell {number}]", "exec"), namespace)
