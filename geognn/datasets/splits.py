"""Train/validation/test splits: seeded, disjoint, and written to a file so a run can be repeated.

A split is ``{"train": [...], "val": [...], "test": [...]}`` of dataset indices. The file is JSON
(``write_split``/``read_split``); given the dataset's ids, it also records them, and reading it
back against a dataset whose ids differ is an error, not a silently different split.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

#: QM9's standard split (SchNet, DimeNet, PaiNN): 110,000 train, 10,000 validation, the rest test,
#: of the 130,831 characterised molecules.
QM9_TRAIN, QM9_VAL, QM9_SIZE = 110_000, 10_000, 130_831

SPLIT_NAMES = ("train", "val", "test")
_FORMAT = "geognn-split"
_VERSION = 1


def _check_n(n: int) -> int:
    if int(n) != n or n < 1:
        raise ValueError(f"a split needs a positive number of structures, got {n}")
    return int(n)


def _split_by_sizes(n: int, n_train: int, n_val: int, seed: int) -> dict[str, list[int]]:
    perm = np.random.default_rng(seed).permutation(n).tolist()
    return {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}


def random_split(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict[str, list[int]]:
    """Seeded random split of ``range(n)`` with ``(train, val, test)`` fractions summing to 1.

    val and test get ``round(n * fraction)`` indices, train the rest. ValueError if a split
    with a non-zero fraction would be empty.
    """
    n = _check_n(n)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative numbers (train, val, test) summing to 1, got {fractions}")
    n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
    n_train = n - n_val - n_test
    sizes = dict(zip(SPLIT_NAMES, (n_train, n_val, n_test)))
    empty = [k for k, f in zip(SPLIT_NAMES, fractions) if f > 0 and sizes[k] < 1]
    if empty or n_train < 0:
        raise ValueError(f"{n} structures are too few for fractions {tuple(fractions)} ({', '.join(empty)} empty)")
    return _split_by_sizes(n, n_train, n_val, seed)


def qm9_standard_split(n: int = QM9_SIZE, seed: int = 0) -> dict[str, list[int]]:
    """QM9's standard split: 110,000 train, 10,000 val, the rest test (seeded permutation).

    Exact whenever ``n > 120,000`` (the test set is then ``n - 120,000``, 10,831 for full QM9).
    For a smaller dataset (a subset, a ``limit``), the sizes are scaled by ``n / 130,831`` with
    a warning, keeping the proportions (84.1 / 7.6 / 8.3 %).
    """
    n = _check_n(n)
    if n > QM9_TRAIN + QM9_VAL:
        if n != QM9_SIZE:
            warnings.warn(
                f"QM9 standard split of {n} molecules (full QM9 has {QM9_SIZE}): "
                f"110,000 / 10,000 / {n - QM9_TRAIN - QM9_VAL}",
                stacklevel=2,
            )
        return _split_by_sizes(n, QM9_TRAIN, QM9_VAL, seed)
    n_train, n_val = round(n * QM9_TRAIN / QM9_SIZE), round(n * QM9_VAL / QM9_SIZE)
    if n_train < 1 or n_val < 1 or n - n_train - n_val < 1:
        raise ValueError(f"{n} molecules are too few for the QM9 standard split proportions")
    warnings.warn(
        f"QM9 standard split needs > 120,000 molecules, got {n}: sizes scaled to "
        f"{n_train} / {n_val} / {n - n_train - n_val} (same proportions)",
        stacklevel=2,
    )
    return _split_by_sizes(n, n_train, n_val, seed)


def check_split(split: dict, n: int | None = None) -> None:
    """ValueError unless ``split`` maps names to lists of distinct, disjoint indices (< n if given)."""
    seen: set[int] = set()
    for name, idx in split.items():
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in idx):
            raise ValueError(f"split {name!r} holds non-integer indices")
        s = set(int(i) for i in idx)
        if len(s) != len(idx):
            raise ValueError(f"split {name!r} holds repeated indices")
        if seen & s:
            raise ValueError(f"split {name!r} overlaps another split (index {min(seen & s)})")
        if s and (min(s) < 0 or (n is not None and max(s) >= n)):
            raise ValueError(f"split {name!r} has indices outside 0..{'n-1' if n is None else n - 1}")
        seen |= s


def write_split(path: str | Path, split: dict[str, list[int]], *, ids: Sequence[str] | None = None, **meta) -> Path:
    """Write ``split`` as JSON (with ``ids[i]`` of each index when ``ids`` is given, and any
    ``meta`` such as seed=...); returns the path."""
    check_split(split, len(ids) if ids is not None else None)
    payload = {
        "format": _FORMAT,
        "version": _VERSION,
        "meta": meta,
        "splits": {k: [int(i) for i in v] for k, v in split.items()},
    }
    if ids is not None:
        payload["n"] = len(ids)
        payload["ids"] = {k: [str(ids[i]) for i in v] for k, v in split.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload) + "\n")
    return path


def read_split(path: str | Path, ids: Sequence[str] | None = None) -> dict[str, list[int]]:
    """A split written by ``write_split``. With ``ids`` (the dataset's), checks that the file's
    indices still point at the same structures (ValueError naming the first mismatch)."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable split file ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a geognn split file")
    split = {k: list(v) for k, v in payload["splits"].items()}
    try:
        check_split(split, len(ids) if ids is not None else payload.get("n"))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if ids is not None and "ids" in payload:
        for name, stored in payload["ids"].items():
            for i, sid in zip(split[name], stored):
                if str(ids[i]) != sid:
                    raise ValueError(
                        f"{path}: split {name!r} index {i} was structure {sid!r} but the "
                        f"dataset has {ids[i]!r} there: the dataset changed since the split was written"
                    )
    return split


def load_split_by_ids(path: str | Path, ids: Sequence[str]) -> dict[str, list[int]]:
    """The split in ``path`` as indices into a dataset whose ids are ``ids``, matched **by id**.

    Reads ``write_split``'s files and a run's ``split.json`` (``{"train": [indices], ..., "ids":
    {"train": [ids], ...}}``); the dataset may hold the structures
    in another order or hold more of them. An id of the file that the dataset lacks is a
    ValueError naming the first few; so is an id the dataset holds twice. A file without ids
    (``write_split`` without ``ids``, or a plain ``{"train": [...], ...}`` of indices from an
    older run) is taken by index, checked against ``len(ids)``.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable split file ({exc})") from exc
    if isinstance(payload, dict) and payload.get("format") == _FORMAT:
        by_index = {k: list(v) for k, v in payload.get("splits", {}).items()}
        by_id = payload.get("ids")
    elif isinstance(payload, dict) and set(SPLIT_NAMES) & set(payload):  # a run's split.json
        by_index = {k: list(payload[k]) for k in SPLIT_NAMES if k in payload}
        by_id = payload.get("ids")
    else:
        raise ValueError(f"{path}: not a geognn split file (write_split's format or a run's split.json)")
    unknown = sorted(set(by_index) - set(SPLIT_NAMES))
    if unknown:
        raise ValueError(f"{path}: unknown split name(s) {unknown}; expected {list(SPLIT_NAMES)}")
    if by_id is not None and (not isinstance(by_id, dict) or set(by_id) - set(SPLIT_NAMES)):
        raise ValueError(f"{path}: 'ids' must map {list(SPLIT_NAMES)} to lists of ids")
    if by_id is None:
        try:
            check_split(by_index, len(ids))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc} (the file has no ids; this dataset has {len(ids)} structures)") from None
        return {k: [int(i) for i in by_index.get(k, [])] for k in SPLIT_NAMES}
    position: dict[str, int] = {}
    repeated: set[str] = set()
    for k, sid in enumerate(ids):
        sid = str(sid)
        if sid in position:
            repeated.add(sid)
        position[sid] = k
    wanted = [str(s) for name in SPLIT_NAMES for s in by_id.get(name, [])]
    missing = [s for s in wanted if s not in position]
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} id(s) of the split are not in the data: "
            f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
        )
    twice = [s for s in wanted if s in repeated]
    if twice:
        raise ValueError(f"{path}: id(s) {', '.join(twice[:5])} occur more than once in the data: cannot split by id")
    split = {name: [position[str(s)] for s in by_id.get(name, [])] for name in SPLIT_NAMES}
    try:
        check_split(split, len(ids))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return split
