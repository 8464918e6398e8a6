"""``geognn.runtime.tune_allocator``: after it, memory freed by a model call stays in the process, so
the next call does not fault its pages in again; ``GEOGNN_TUNE_ALLOCATOR=0`` leaves glibc alone.

The allocator setting is per process and cannot be undone, so the checks run in child processes,
which load ``geognn/runtime.py`` by path (it imports nothing from geognn) to start fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geognn.runtime import ENV_VAR, glibc_version

pytestmark = pytest.mark.skipif(glibc_version() is None, reason="tune_allocator acts on glibc only")

RUNTIME = Path(__file__).resolve().parents[1] / "geognn" / "runtime.py"

#: Allocate, write and free a 64 MiB torch tensor a few times before and after tune_allocator();
#: report the minor page faults of the last cycle of each. torch allocates with posix_memalign, and
#: glibc places the first few aligned blocks after the previous one before it reuses the freed
#: space (measured: 4 to 7 cycles, the heap then holds that many 64 MiB blocks), hence 12 cycles.
CHILD = r"""
import importlib.util, json, resource, sys, torch
spec = importlib.util.spec_from_file_location("runtime", sys.argv[1])
runtime = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runtime)

def cycle():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 2**20)  # 64 MiB of float32, every page written
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

before = [cycle() for _ in range(6)][-1]
tuned = runtime.tune_allocator()
again = runtime.tune_allocator()
after = [cycle() for _ in range(12)][-1]
print(json.dumps({"tuned": tuned, "again": again, "before": before, "after": after, "state": runtime.allocator_state()}))
"""


def run_child(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, "GLIBC_TUNABLES")}
    if env_value is not None:
        env[ENV_VAR] = env_value
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(RUNTIME)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_tuned_allocator_reuses_freed_memory_without_page_faults():
    r = run_child(None)
    assert r["tuned"] is True and r["again"] is True  # a second call: still in force, nothing more to do
    assert r["state"]["tuned"] and r["state"]["settings"]["mmap_max"] == 0 and r["state"]["glibc"] == glibc_version()
    # glibc's default: a 64 MiB block is its own mmap, unmapped on free, so every page faults
    # again (measured 16,385 faults: one per 4 KiB page; with transparent huge pages set to
    # "always" it would be one per 2 MiB page, 32, hence the lower bound)
    assert r["before"] >= 32, r
    # tuned: the block comes back from the heap, already mapped (measured 0)
    assert r["after"] <= 16 and r["after"] < r["before"] / 2, r


def test_environment_variable_disables_it():
    r = run_child("0")
    assert r["tuned"] is False and r["state"]["disabled_by_env"] and not r["state"]["tuned"]
    assert r["after"] >= 32, r  # glibc left as it was: the block still faults in again


def test_the_calculator_tunes_the_allocator_only_when_asked(monkeypatch):
    """GeoGNNCalculator runs inside the user's process: the process-wide setting is opt-in there."""
    import geognn
    from geognn import calculator as calculator_module

    calls = []
    monkeypatch.setattr(calculator_module, "tune_process_allocator", lambda: calls.append(1))
    model = geognn.build_model("schnet", cutoff=3.0, hidden_channels=8, num_filters=8, num_gaussians=8, num_layers=1)
    calculator_module.GeoGNNCalculator(model)
    assert calls == []
    calculator_module.GeoGNNCalculator(model, tune_allocator=True)
    assert calls == [1]
