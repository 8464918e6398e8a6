"""What both benchmark scripts share: where data and results live, machine facts, QM9 input."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("GEOGNN_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
RESULTS = HERE / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_state() -> dict:
    """Commit of the checkout and which geognn files differ from it (results depend on them)."""

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except Exception:  # pragma: no cover - informational only
            return ""

    changed = git("status", "--porcelain", "--", "geognn").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            "geognn_changed_files": [line.split(None, 1)[1] for line in changed]}


def machine_info(modules=("numpy", "torch", "torch_geometric", "geognn")) -> dict:
    """CPU, cores, Python, versions of ``modules``, load average, git state and date."""
    versions = {}
    for mod in modules:
        try:
            versions[mod.split(".")[0]] = __import__(mod, fromlist=["__version__"]).__version__
        except Exception:  # pragma: no cover - informational only
            pass
    return {"cpu": cpu_name(), "cores_logical": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions,
            "load_average_1_5_15": list(os.getloadavg()), "git": git_state(),
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}


def load_qm9(n: int):
    """The first ``n`` molecules of the shared QM9 subset, read by geognn's own QM9 reader."""
    from geognn.datasets.qm9 import read_qm9pack_csv

    return read_qm9pack_csv(DATA / "qm9" / "qm9pack_subset_stride26.csv", limit=n)
