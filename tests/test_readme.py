"""The README's two set-up commands are exactly what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commands(text: str) -> list[str]:
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip().startswith(("python3 -m venv", ".venv/bin/python -m pytest"))
    ]


def test_ci_runs_the_readme_commands_verbatim():
    readme = commands((ROOT / "README.md").read_text())
    ci = commands((ROOT / ".ci" / "run").read_text())
    assert len(readme) == 2 and readme == ci
