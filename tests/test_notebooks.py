"""The tutorials in notebooks/ are committed executed, and still execute.

Two tests per notebook:

- ``test_committed_with_outputs``: the committed file was executed top to bottom in one kernel
  (every code cell has an execution count, 1, 2, 3, ... in order), shows its results, and holds
  no error output, no warning on stderr and no path of the machine that ran it. A notebook saved
  without running it, or after an error, fails here.
- ``test_notebook_executes``: the notebook is run again through a real Jupyter kernel (nbclient,
  kernel ``python3``, i.e. the interpreter running pytest), as a user would run it: working
  directory ``notebooks/``, so that its relative paths to ``../data`` and ``../../shared/data``
  work. Any exception fails the test with the cell number, the cell's first line and the error.
  Notebooks write only into a temporary folder of their own (each changes into one in its first
  code cell); the test checks that notebooks/ is left as it was.

``test_checks_catch_planted_defects`` runs both checks on small notebooks with planted defects.

Each notebook runs in its own kernel and temporary folder, so the tests may run in parallel
(pytest-xdist); their scratch folders (``TMPDIR``) are pytest's ``tmp_path``. All eight notebooks
execute in about 3 minutes on a 2-core machine shared with other jobs (166 s at load average 5,
213 s at 7); 10-15 s of each is starting the kernel and importing torch and geognn.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

#: The tutorials the docs and the README link to: each must exist under this name.
EXPECTED = (
    "quickstart",
    "01_train_qm9",
    "02_train_oc20",
    "03_crystals_predict_cifs",
    "04_expressivity",
    "05_md_and_relaxation_ase",
    "06_symmetry_errors",
    "07_oc20_slab_relaxation",
)

#: Seconds one cell may run before the test fails (the longest cell takes ~30 s on a busy 2-core machine).
CELL_TIMEOUT = 600

#: Absolute paths that must not appear in committed outputs (they tie the file to one machine).
MACHINE_PATH = re.compile(r"(/work/|/tmp/|/home/|/Users/|/root/|[A-Za-z]:\\Users\\)")


def _outputs_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif out["output_type"] in ("execute_result", "display_data"):
            data = out.get("data", {})
            parts += [str(data.get(kind, "")) for kind in ("text/plain", "text/html", "text/markdown")]
        elif out["output_type"] == "error":
            parts.append("\n".join(out.get("traceback", [])))
    return "\n".join(parts)


def committed_problems(nb, name: str) -> list[str]:
    """What is wrong with a notebook as committed (empty list: nothing)."""
    code = [(k, c) for k, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    if not code:
        return [f"{name}: no code cells"]
    counts = [c.get("execution_count") for _, c in code]
    unrun = [k for (k, _), n in zip(code, counts) if n is None]
    if unrun:
        return [
            f"{name}: code cell(s) {unrun} were never executed: run the notebook top to bottom "
            "(Restart & Run All) and save it with its outputs"
        ]
    problems = []
    if counts != list(range(1, len(code) + 1)):
        problems.append(f"{name}: execution counts {counts}: save it after one clean run top to bottom")
    if sum(bool(c.get("outputs")) for _, c in code) < len(code) / 2:
        problems.append(f"{name}: most code cells have no output: save it with its outputs")
    for k, cell in code:
        for out in cell.get("outputs", []):
            if out["output_type"] == "error":
                problems.append(f"{name}: cell {k} was saved with an error: {out['ename']}: {out['evalue']}")
            elif out["output_type"] == "stream" and out["name"] == "stderr" and "Warning" in out["text"]:
                problems.append(f"{name}: cell {k} was saved with a warning: {out['text'].strip()[:200]}")
        found = MACHINE_PATH.search(_outputs_text(cell))
        if found:
            problems.append(
                f"{name}: cell {k}'s output shows a path of the machine that ran it "
                f"({found.group(0)!r}...): print paths relative to the notebook's folder"
            )
    return problems


def execution_failure(nb, name: str, cwd: Path) -> str | None:
    """Execute ``nb`` in place in a fresh ``python3`` kernel with working directory ``cwd``;
    None if every cell ran, else one line naming the cell and the error."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", record_timing=False, resources={"metadata": {"path": str(cwd)}}
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        for k, cell in enumerate(nb.cells):
            errors = [o for o in cell.get("outputs", []) if o["output_type"] == "error"]
            if cell.cell_type == "code" and errors:
                first = cell.source.strip().splitlines()[0][:80]
                return f"{name}: cell {k} ({first!r}) raised {errors[0]['ename']}: {errors[0]['evalue']}"
        return f"{name}: {str(exc).strip().splitlines()[-1]}"
    return None


def test_the_tutorials_are_there():
    names = {p.stem for p in NOTEBOOKS}
    missing = [n for n in EXPECTED if n not in names]
    assert not missing, f"notebooks/ lacks {missing}: the docs and the README link to them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_with_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    problems = committed_problems(nb, path.name)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's scratch folders go where pytest cleans up
    before = sorted(p.name for p in NOTEBOOK_DIR.iterdir())
    failure = execution_failure(nbformat.read(path, as_version=4), path.name, NOTEBOOK_DIR)
    if failure:
        pytest.fail(failure, pytrace=False)
    after = sorted(p.name for p in NOTEBOOK_DIR.iterdir())
    assert after == before, (
        f"{path.name} wrote into notebooks/: {sorted(set(after) - set(before))}; "
        "notebooks must write into their temporary folder"
    )


def test_checks_catch_planted_defects(tmp_path):
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    def notebook(*sources):
        return new_notebook(cells=[new_markdown_cell("# planted")] + [new_code_cell(s) for s in sources])

    # an exception in the second code cell (notebook cell 2) is reported with its number and error
    nb = notebook("x = 1", "y = x / 0", "print(y)")
    failure = execution_failure(nb, "bad.ipynb", tmp_path)
    assert failure is not None and "cell 2" in failure and "ZeroDivisionError" in failure, failure
    # the same notebook, as executed, is not committable: it holds the error and an unrun cell
    assert any("never executed" in p for p in committed_problems(nb, "bad.ipynb"))

    good = notebook("x = 1\nprint(x)", "print(x + 1)")
    assert execution_failure(good, "good.ipynb", tmp_path) is None
    assert committed_problems(good, "good.ipynb") == []
    assert [o["text"] for c in good.cells[1:] for o in c.outputs] == ["1\n", "2\n"]

    unexecuted = notebook("x = 1", "print(x)")
    assert "never executed" in committed_problems(unexecuted, "u.ipynb")[0]

    for output, expected in [
        (new_output("stream", name="stdout", text="wrote /tmp/run/model.pt\n"), "path"),
        (new_output("stream", name="stderr", text="x.py:1: FutureWarning: old\n"), "warning"),
        (new_output("error", ename="ValueError", evalue="bad", traceback=[]), "error"),
    ]:
        nb = notebook("print(1)")
        nb.cells[1].execution_count = 1
        nb.cells[1].outputs = [output]
        problems = committed_problems(nb, "p.ipynb")
        assert len(problems) == 1 and expected in problems[0], (expected, problems)

    out_of_order = notebook("print(1)", "print(2)")
    for count, cell in zip((2, 1), out_of_order.cells[1:]):
        cell.execution_count = count
        cell.outputs = [new_output("stream", name="stdout", text="1\n")]
    assert "execution counts [2, 1]" in committed_problems(out_of_order, "o.ipynb")[0]
