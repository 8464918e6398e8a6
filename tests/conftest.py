"""Shared test helpers: where the real third-party data lives, and cached loaders for it.

The data folder is ``/work/shared/data`` next to the repository (``<repo>/../shared/data``),
described in its ``SOURCES.md``. Set ``GEOGNN_SHARED_DATA`` to use another copy. Tests that
need it FAIL (not skip) when it is missing: CI always has it, so a silent skip would hide a
broken checkout.

Loaders are plain functions so that any test module can ``from conftest import ...``; each
returns fresh copies (``ase.Atoms.copy()``), so tests may modify what they get.
"""

from __future__ import annotations

import ast
import functools
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

#: The shared data folder (may not exist; use :func:`shared_data_dir` to get it checked).
SHARED_DATA = Path(os.environ.get("GEOGNN_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")

#: Small hand-made (broken) files for error tests.
TEST_DATA = Path(__file__).resolve().parent / "data"


def shared_data_dir() -> Path:
    """The shared data folder; fails the calling test with a clear message if it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.fail(
            f"shared test data not found at {SHARED_DATA}: check out the shared data "
            "folder next to the repository (../shared/data) or set GEOGNN_SHARED_DATA",
            pytrace=False,
        )
    return SHARED_DATA


@pytest.fixture
def shared_data() -> Path:
    """Path of the shared data folder (the test fails if it is missing)."""
    return shared_data_dir()


def _copies(frames):
    return [a.copy() for a in frames]


# --------------------------------------------------------------------------- loaders
@functools.lru_cache(maxsize=None)
def _qm9(n: int):
    import pandas as pd
    from ase import Atoms

    path = shared_data_dir() / "qm9" / "qm9pack_subset_stride26.csv"
    df = pd.read_csv(path, nrows=n, usecols=["Index", "Elements", "XYZ_Ang"])
    out = []
    for idx, el, xyz in zip(df["Index"], df["Elements"], df["XYZ_Ang"]):
        a = Atoms(ast.literal_eval(el), positions=ast.literal_eval(xyz))  # not json: "0." values
        a.info["source"] = f"{path.name}:qm9-{idx}"
        out.append(a)
    return tuple(out)


def load_qm9_molecules(n: int):
    """The first ``n`` QM9 molecules of the qm9pack subset, as ``ase.Atoms`` (no PBC, Å)."""
    return _copies(_qm9(n))


@functools.lru_cache(maxsize=None)
def _mp20(n: int):
    import pandas as pd
    from ase import Atoms
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    path = shared_data_dir() / "cif" / "mp20_subset" / "train.csv"
    df = pd.read_csv(path, nrows=n, usecols=["material_id", "cif"])
    out = []
    for mid, cif in zip(df["material_id"], df["cif"]):
        with warnings.catch_warnings():  # "fractional coordinates rounded to ideal values"
            warnings.simplefilter("ignore", UserWarning)
            s = AseAtomsAdaptor.get_atoms(Structure.from_str(cif, fmt="cif"))
        a = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)  # no site props
        a.info["source"] = f"{path.name}:{mid}"
        out.append(a)
    return tuple(out)


def load_mp20_crystals(n: int):
    """The first ``n`` MP-20 crystals (P1 CIFs written by pymatgen, 1-20 atoms), as ``ase.Atoms``."""
    return _copies(_mp20(n))


@functools.lru_cache(maxsize=None)
def _jarvis(n: int | None):
    import ase.io

    files = sorted((shared_data_dir() / "cif" / "jarvis_alignn_sample").glob("*.vasp"))[:n]
    out = []
    for f in files:
        a = ase.io.read(f, format="vasp")
        a.info["source"] = f.name
        out.append(a)
    return tuple(out)


def load_jarvis(n: int | None = None):
    """The first ``n`` (default all 50) JARVIS POSCARs, sorted by file name, as ``ase.Atoms``."""
    return _copies(_jarvis(n))


@functools.lru_cache(maxsize=None)
def _oc20():
    import torch
    from ase import Atoms

    path = shared_data_dir() / "oc20" / "faenet_is2re_bs8.pt"
    graphs = torch.load(path, weights_only=False).to_data_list()
    out = []
    for g in graphs:
        a = Atoms(
            numbers=g.atomic_numbers.long().numpy(),
            positions=g.pos.numpy(),
            cell=g.cell[0].numpy(),
            pbc=True,
            tags=g.tags.numpy(),
        )
        a.info["source"] = f"{path.name}:sid-{int(g.sid)}"
        out.append(a)
    return tuple(out), tuple(graphs)


def load_oc20_slabs():
    """The 8 real OC20 IS2RE systems (initial positions), pbc=(T,T,T) as OC20 uses, with tags."""
    return _copies(_oc20()[0])


def load_oc20_reference_graphs():
    """The 8 PyG graphs as stored by faenet (with their precomputed 6 Å radius graph)."""
    return list(_oc20()[1])


def oblique_angles(atoms, tol_deg: float = 1.0) -> int:
    """How many of the cell angles (alpha, beta, gamma) differ from 90 degrees by more than ``tol_deg``.

    3 means a triclinic-shaped cell (no right angle), 0 an orthogonal one.
    """
    return int(np.sum(np.abs(atoms.cell.angles() - 90.0) > tol_deg))


def exit_code_in_child(fn, *args, timeout: float = 60.0) -> int | None:
    """Run ``fn(*args)`` in a child process and return its exit code.

    For inputs that may kill the interpreter (a signal from compiled code: SIGFPE gives -8),
    which would otherwise take the whole pytest run down. ``fn`` must be a module-level function;
    an uncaught Python exception gives exit code 1.
    """
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    proc = ctx.Process(target=fn, args=args)
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
    return proc.exitcode


@pytest.fixture
def one_thread():
    """Tiny graphs: torch's intra-op threads only contend (measured 30x slower with 2 threads on a
    loaded 2-core machine). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``;
    the thread count is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def short_grid_ladder(monkeypatch):
    """The expressivity probe refines grid backbones (PΘNITA) on 384, 1,536 and 3,072
    orientations (``models.GRID_LADDER``), minutes a probe on a CPU; tests use 96 and 384, which
    resolve the tiny graphs they probe (tests/test_expressivity_grid.py sets its own)."""
    from geognn.expressivity import models

    monkeypatch.setattr(models, "GRID_LADDER", (96, 384))
