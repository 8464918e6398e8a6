"""Datasets: QM9, OC20 LMDBs and the user's own folders, as ``StructureDataset`` of ``ase.Atoms``.

    ds = open_dataset("qm9", "data/qm9/dsgdb9nsd.xyz.tar.bz2", target="U0")
    atoms = ds[0]          # ase.Atoms; atoms.info["energy"] in eV, atoms.info["id"] == ds.ids[0]

Kinds (``DATASETS``): "qm9", "oc20-is2re", "oc20-s2ef", "cif-folder", "extxyz", "ase-db"; each
kind's options are the keyword arguments of its opener (``DATASETS[kind]``).

Bad data (``on_error``): "raise" (default) stops with a ``geognn.io.StructureError`` naming the
id and the problem. "skip": the eager kinds (qm9, cif-folder, extxyz, ase-db) check everything at
open time, leave bad items out, list them in ``dataset.skipped`` as ``(id, reason)`` and warn
once with the count. The OC20 LMDBs are read lazily: a bad entry raises ``StructureError`` from
``dataset[i]`` whatever ``on_error`` is, and a training loop that wants to skip catches it there.

Loading data never imports a model.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, Sequence

from .base import ON_ERROR, StructureDataset, check_on_error
from .folders import cif_table_to_folder, open_ase_db, open_cif_folder, open_extxyz, write_cif_folder
from .oc20 import OC20LmdbDataset, write_lmdb
from .qm9 import QM9_TARGETS, QM9Dataset
from .splits import load_split_by_ids, qm9_standard_split, random_split, read_split, write_split

#: Dataset kinds -> opener ``f(root, *, target, on_error, limit, **options)``.
DATASETS: dict[str, Callable[..., StructureDataset]] = {
    "qm9": QM9Dataset,
    "oc20-is2re": partial(OC20LmdbDataset, task="is2re"),
    "oc20-s2ef": partial(OC20LmdbDataset, task="s2ef"),
    "cif-folder": open_cif_folder,
    "extxyz": open_extxyz,
    "ase-db": open_ase_db,
}

#: Valid ``target`` values for kinds with a fixed set (others take any label name).
TARGETS: dict[str, tuple[str, ...]] = {
    "qm9": tuple(QM9_TARGETS),
    "oc20-is2re": ("energy", "y_relaxed"),
    "oc20-s2ef": ("energy", "y"),
}


def open_dataset(
    kind: str,
    root: str | Path,
    *,
    target: str | Sequence[str] | None = None,
    on_error: str = "raise",
    limit: int | None = None,
    **options,
) -> StructureDataset:
    """Open the dataset of ``kind`` at ``root`` (see the module docstring and ``DATASETS``).

    Raises ValueError for an unknown kind, target or on_error value (listing the valid ones) or a
    bad limit, FileNotFoundError when ``root`` does not exist, StructureError for bad data.
    """
    if kind not in DATASETS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {list(DATASETS)}")
    check_on_error(on_error)
    names = [target] if isinstance(target, str) else list(target or [])
    if kind in TARGETS:
        unknown = [t for t in names if t not in TARGETS[kind]]
        if unknown:
            raise ValueError(f"unknown target {unknown[0]!r} for {kind}; choose one of {list(TARGETS[kind])}")
        if len(names) > 1 and kind == "qm9":  # every QM9 item carries all 19 properties in info
            target = names[0]
        elif len(names) > 1:
            raise ValueError(f"{kind} has one fixed label; several targets {names} are not available")
    if limit is not None and (int(limit) != limit or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
    opener = DATASETS[kind]
    known = _options(opener)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {kind}; valid: {sorted(known)}")
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder ({kind} dataset)")
    if kind.startswith("oc20"):
        return DATASETS[kind](root, on_error=on_error, limit=limit, **options)  # target is fixed by the task
    return DATASETS[kind](root, target=target, on_error=on_error, limit=limit, **options)


def _options(opener) -> set[str]:
    import inspect

    fixed = set(opener.keywords) if isinstance(opener, partial) else set()
    func = opener.func if isinstance(opener, partial) else opener
    params = inspect.signature(func).parameters
    return {name for name, p in params.items() if p.kind == p.KEYWORD_ONLY} - fixed - {"target", "on_error", "limit"}


__all__ = [
    "DATASETS",
    "ON_ERROR",
    "OC20LmdbDataset",
    "QM9Dataset",
    "QM9_TARGETS",
    "StructureDataset",
    "TARGETS",
    "cif_table_to_folder",
    "load_split_by_ids",
    "open_dataset",
    "qm9_standard_split",
    "random_split",
    "read_split",
    "write_cif_folder",
    "write_lmdb",
    "write_split",
]
